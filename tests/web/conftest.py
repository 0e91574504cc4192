"""The web chat tests' fixture: `chat`, a web chat over a real Engine (harness.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.web.harness import Chat


@pytest.fixture
async def chat(tmp_path: Path) -> AsyncIterator[Chat]:
    harness = Chat(tmp_path)
    yield harness
    await harness.stop()
    harness.store.close()
