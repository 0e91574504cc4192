"""Fixtures of the Discord end-to-end tests: a fake Discord the client points at, and a
`World` (tests/discord/world.py) over it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.discord.world import World
from tests.fakes import FakeDiscord, point_at


@pytest.fixture
async def dc(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(heartbeat_interval=0.5) as fake:
        point_at(monkeypatch, fake)
        yield fake


@pytest.fixture
async def world(dc: FakeDiscord, tmp_path: Path) -> AsyncIterator[World]:
    w = World(dc, tmp_path)
    yield w
    w.gen.release()
    if w._tasks:
        await w.stop()
