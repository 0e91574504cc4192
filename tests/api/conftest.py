"""The API tests' fixture: `api`, the A1111 API over a real Engine (harness.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.api.harness import Api


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    harness = Api(tmp_path)
    yield harness
    await harness.stop()
