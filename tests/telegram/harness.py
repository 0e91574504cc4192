"""The Telegram frontend as `aidraw run` starts it, for the tests: the real PTB Application
(`run_telegram`) against tests/fakes/telegram.py, over a real Engine with a fake generate().
The fixtures `tg` and `h` are in conftest.py."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from bot.places import PlaceRules
from bot.prefs import UserSettingsStore
from bot.settings import BotSettings, ModerationSettings, Settings, TelegramSettings
from bot.telegram.app import run_telegram
from engine.engine import Engine
from engine.queue import QueueConfig
from engine.request import Limits
from tests.engine_fakes import FakeGenerate, FakeLoader, FakeRegistry
from tests.fakes import FakeTelegram

USER = 42  # a private chat's id is the user's id
OTHER = 43
ADMIN = 7
GROUP = -1001234
QUALITY = "masterpiece, best quality, "
STATUS = ("Queued…", "排队中…")  # a job's status message as first sent


@dataclass
class Harness:
    """One bot as `aidraw run` starts it: engine task + run_telegram task, stopped in order."""

    tg: FakeTelegram
    tmp_path: Path
    fake: FakeGenerate = field(default_factory=FakeGenerate)
    engine: Engine[Any] | None = None
    store: UserSettingsStore | None = None
    settings: Settings = field(default_factory=Settings)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(
        self,
        *,
        admins: tuple[str, ...] = (),
        paused: bool = False,
        queue: dict[str, Any] | None = None,
        bot: dict[str, Any] | None = None,
        places: dict[str, PlaceRules] | None = None,
        moderation: ModerationSettings | None = None,
        **telegram: Any,
    ) -> Engine[Any]:
        limits = Limits(max_steps=50)
        config = QueueConfig(
            journal=str(self.tmp_path / "journal.sqlite3"),
            results_dir=str(self.tmp_path / "results"),
            warm_up=False,
            max_batch=1,
            admins=admins,
            **(queue or {}),
        )
        engine: Engine[Any] = Engine(
            config, registry=FakeRegistry(), load=FakeLoader(), generate=self.fake, limits=limits
        )
        if paused:
            engine.pause()
        self.settings = Settings(
            limits=limits,
            bot=BotSettings(progress_interval_s=0.1, **(bot or {})),
            telegram=TelegramSettings(**telegram),
            places=places or {},
            moderation=moderation or ModerationSettings(),
            root=self.tmp_path,
        )
        self.engine = engine
        self.store = UserSettingsStore(self.tmp_path / "users.sqlite3")
        polls = self.tg.count("getUpdates")
        self._tasks = [
            asyncio.create_task(engine.run()),
            asyncio.create_task(run_telegram(engine, self.settings, self.store, self.tg.token)),
        ]
        await self.tg.wait_until(lambda: self.tg.count("getUpdates") > polls)
        return engine

    async def stop(self) -> None:
        """As bot/launcher.py: the frontend first, then the engine."""
        if not self._tasks:
            return
        engine_task, bot_task = self._tasks
        self._tasks = []
        bot_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await bot_task
        assert self.engine is not None and self.store is not None
        await self.engine.close(grace_s=0)
        with contextlib.suppress(asyncio.CancelledError):
            await engine_task
        self.store.close()

    async def reply(
        self,
        chat_id: int,
        predicate: Callable[[str], bool] | None = None,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 - the deadline for the whole wait, like wait_for's
    ) -> str:
        """The text of the bot's next sendMessage to `chat_id` matching `predicate` (by
        default: any but a job's first status message)."""
        wanted = predicate or (lambda text: text not in STATUS)
        call = await self.tg.wait_for(
            "sendMessage",
            lambda c: c.params["chat_id"] == chat_id and wanted(c.params["text"]),
            timeout=timeout,
        )
        return str(call.params["text"])


async def eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll a condition of the bot's own state, which no fake call announces."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition still false"
        await asyncio.sleep(0.01)


def buttons(call: Any) -> list[str]:
    """The callback_data of every inline button a call sent."""
    markup = call.params.get("reply_markup") or {}
    return [b["callback_data"] for row in markup.get("inline_keyboard", []) for b in row]


def png(width: int = 64, height: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()
