"""The Discord end-to-end harness: the real discord.py client (bot.discord.bot.run_discord)
against tests/fakes/discord.py, over a real Engine whose generate() is a fast fake that makes
real PNGs with an A1111 infotext; the fixtures are in conftest.py."""

from __future__ import annotations

import asyncio
import dataclasses
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from bot.discord.bot import run_discord
from bot.places import PlaceRules
from bot.prefs import UserSettingsStore
from bot.settings import BotSettings, DiscordSettings, ModerationSettings, Settings
from engine.engine import Engine
from engine.infotext import create_infotext, infotext_from_image
from engine.job import Job
from engine.queue import QueueConfig
from engine.request import GenerationRequest, GenerationResult, Limits
from engine.sampling.samplers import infotext_sampler
from tests.engine_fakes import FakeGenerate, FakeLoader, FakeModel, FakeRegistry
from tests.fakes import FakeDiscord
from tests.fakes.discord import USER_ID

ADMIN_ID = 1300000000000000009
OTHER_ID = 1300000000000000005
USER = f"discord:{USER_ID}"
ADMIN = f"discord:{ADMIN_ID}"


class PngGenerate(FakeGenerate):
    """FakeGenerate whose images are real PNGs carrying an A1111 infotext, and whose steps hand
    the engine latents (so it makes previews); an upscale of a picture (A1111's Extras) is the
    engine's own (FakeGenerate's)."""

    def __init__(self) -> None:
        super().__init__(latents=True)

    def __call__(  # type: ignore[override]
        self,
        model: FakeModel,
        requests: Sequence[GenerationRequest],
        *,
        limits: Limits,
        on_step: Callable[[int, int, Any], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
        finish_early: Callable[[], bool] | None = None,
    ) -> list[GenerationResult]:
        results = super().__call__(
            model,
            requests,
            limits=limits,
            on_step=on_step,
            cancelled=cancelled,
            finish_early=finish_early,
        )
        if results and results[0].request.extras_upscale:
            return results  # the engine's own upscale (FakeGenerate): a real PNG already
        return [_with_png(result) for result in results]


def _with_png(result: GenerationResult) -> GenerationResult:
    request = result.request
    subseed = None
    if request.subseed_strength:  # generate() draws a random one where the request has none
        subseed = 2000 + result.seed if request.subseed is None else request.subseed
    infotext = create_infotext(
        request,
        seed=result.seed,
        subseed=subseed,
        model_hash="0123456789",
        model_name=request.model or "",
        uses_ensd=False,
        sampler=infotext_sampler(request.sampler or "Euler a", request.schedule_type),
        version="test",
    )
    info = PngInfo()
    info.add_text("parameters", infotext)
    buffer = io.BytesIO()
    color = (result.seed % 256, 80, 160)
    Image.new("RGB", (request.width or 8, request.height or 8), color).save(
        buffer, format="PNG", pnginfo=info
    )
    return dataclasses.replace(result, png=buffer.getvalue(), infotext=infotext)


def infotext_of(png: bytes) -> str:
    with Image.open(io.BytesIO(png)) as image:
        text = infotext_from_image(image)
    assert text is not None
    return text


@dataclass
class World:
    """A fake Discord, and the bot with its engine, started and restarted over one journal."""

    dc: FakeDiscord
    tmp: Path
    gen: PngGenerate = field(default_factory=PngGenerate)
    discord: DiscordSettings = field(default_factory=DiscordSettings)
    bot: dict[str, Any] = field(default_factory=dict)  # [bot] settings besides the interval
    places: dict[str, PlaceRules] = field(default_factory=dict)
    moderation: ModerationSettings = field(default_factory=ModerationSettings)
    interval_s: float = 0.05
    engine: Engine[Any] | None = None
    store: UserSettingsStore | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        queue = QueueConfig(
            journal=str(self.tmp / "journal.sqlite3"),
            results_dir=str(self.tmp / "results"),
            warm_up=False,
            max_batch=1,
            preview_every_steps=1,
            admins=(ADMIN,),
        )
        bot = BotSettings(progress_interval_s=self.interval_s, **self.bot)
        return Settings(
            queue=queue,
            bot=bot,
            discord=self.discord,
            places=self.places,
            moderation=self.moderation,
            root=self.tmp,
        )

    async def start(self, *, paused: bool = False) -> Engine[Any]:
        settings = self.settings
        engine: Engine[Any] = Engine(
            settings.queue,
            registry=FakeRegistry(),
            load=FakeLoader(),
            generate=self.gen,
            limits=Limits(max_steps=50),
        )
        if paused:
            engine.pause()
        self.engine = engine
        self.store = UserSettingsStore(self.tmp / "users.sqlite3")
        self._tasks = [
            asyncio.create_task(engine.run()),
            asyncio.create_task(
                run_discord(
                    engine,
                    settings,
                    self.store,
                    self.dc.token,
                    guild_ready_timeout=0.05,
                )
            ),
        ]
        await self.dc.wait_for("gateway_identify")
        return engine

    async def stop(self) -> None:
        """What the launcher does: the frontend first, then the engine."""
        engine_task, bot_task = self._tasks
        bot_task.cancel()
        await asyncio.wait({bot_task})
        assert bot_task.cancelled(), bot_task.exception()
        assert self.engine is not None and self.store is not None
        await self.engine.close()
        await engine_task
        self.store.close()
        self._tasks = []

    async def restart(self, *, paused: bool = False) -> Engine[Any]:
        await self.stop()
        return await self.start(paused=paused)

    @property
    def jobs(self) -> list[Job]:
        assert self.engine is not None
        return self.engine.jobs()


def status_edits(dc: FakeDiscord, slash: dict[str, Any]) -> list[str]:
    return [
        c.payload["content"]
        for c in dc.calls
        if c.route == "webhook_message_edit"
        and c.params["token"] == slash["token"]
        and c.status == 200
    ]


async def final(dc: FakeDiscord, interaction: dict[str, Any], what: str = ".png") -> dict[str, Any]:
    """The interaction's message once it holds a result whose file name ends with `what`."""

    def done() -> bool:
        message = dc.original(interaction)
        return message is not None and any(
            "aidraw-" in a["filename"] and a["filename"].endswith(what)
            for a in message["attachments"]
        )

    await dc.wait_until(done)
    message = dc.original(interaction)
    assert message is not None
    return message


def last_sent(dc: FakeDiscord) -> dict[str, Any]:
    """The newest message the bot posted in a channel (not an interaction's)."""
    return [m for m in dc.messages.values() if not m.get("interaction_metadata")][-1]
