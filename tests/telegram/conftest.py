"""Fixtures of the Telegram tests: the fake Bot API, and a bot over it (harness.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fakes import FakeTelegram
from tests.telegram.harness import Harness


@pytest.fixture
async def tg(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeTelegram]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # httpx honours proxies for loopback
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("PTB_TIMEDELTA", "true")  # else RetryAfter warns (filterwarnings=error)
    async with FakeTelegram() as fake:
        monkeypatch.setenv("AIDRAW_TELEGRAM_API_URL", fake.base_url)
        yield fake


@pytest.fixture
async def h(tg: FakeTelegram, tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tg, tmp_path)
    try:
        yield harness
    finally:
        await harness.stop()
