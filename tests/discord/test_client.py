"""bot/discord/client.py: the client the cogs share, as an operator meets it at start-up."""

from __future__ import annotations

import logging
from pathlib import Path

import discord
import pytest

from bot.discord.client import AidrawBot
from bot.prefs import UserSettingsStore
from bot.settings import Settings
from engine.engine import Engine
from engine.queue import QueueConfig
from tests.engine_fakes import FakeGenerate, FakeLoader, FakeRegistry


async def _no_cogs(bot: AidrawBot) -> None:
    return None


async def test_no_voice_library_warnings_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # discord.py warns once per process that PyNaCl and davey are missing: as if first here.
    monkeypatch.setattr(discord.VoiceClient, "warn_nacl", True)
    monkeypatch.setattr(discord.VoiceClient, "warn_dave", True)
    queue = QueueConfig(journal=":memory:", results_dir=str(tmp_path / "results"))
    engine = Engine(queue, registry=FakeRegistry(), load=FakeLoader(), generate=FakeGenerate())
    store = UserSettingsStore(tmp_path / "users.sqlite3")
    caplog.set_level(logging.INFO)
    bot = AidrawBot(engine, Settings(queue=queue, root=tmp_path), store, _no_cogs)
    try:
        assert not [r for r in caplog.records if "voice" in r.getMessage()]
    finally:
        await bot.close()
        store.close()
        await engine.close()
