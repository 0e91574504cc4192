"""The Discord frontend end to end: the real discord.py client (bot.discord.bot.run_discord)
against tests/fakes/discord.py, over a real Engine whose generate() is a fast fake that makes
real PNGs with an A1111 infotext (one test draws with the real demo model)."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from bot.discord import reply
from bot.discord.bot import run_discord
from bot.prefs import UserSettingsStore
from bot.settings import BotSettings, DiscordSettings, Settings
from engine.engine import Engine
from engine.infotext import create_infotext, infotext_from_image, parse_infotext
from engine.job import Job
from engine.queue import QueueConfig
from engine.request import GenerationRequest, GenerationResult, Limits
from tests.engine_fakes import FakeGenerate, FakeLoader, FakeModel, FakeRegistry
from tests.fakes import FakeDiscord, point_at
from tests.fakes.discord import ADMINISTRATOR, USER_ID

pytestmark = pytest.mark.timeout(10)

ADMIN_ID = 1300000000000000009
OTHER_ID = 1300000000000000005
USER = f"discord:{USER_ID}"
ADMIN = f"discord:{ADMIN_ID}"


class PngGenerate(FakeGenerate):
    """FakeGenerate whose images are real PNGs carrying an A1111 infotext, and whose steps hand
    the engine latents (so it makes previews)."""

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
    ) -> list[GenerationResult]:
        results = super().__call__(
            model, requests, limits=limits, on_step=on_step, cancelled=cancelled
        )
        return [_with_png(result) for result in results]


def _with_png(result: GenerationResult) -> GenerationResult:
    request = result.request
    infotext = create_infotext(
        request,
        seed=result.seed,
        subseed=request.subseed if request.subseed_strength else None,
        model_hash="0123456789",
        model_name=request.model or "",
        uses_ensd=False,
        schedule_type=None,
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
        bot = BotSettings(progress_interval_s=self.interval_s)
        return Settings(queue=queue, bot=bot, discord=self.discord, root=self.tmp)

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


# --- /draw ---------------------------------------------------------------------------------------


async def test_draw_defers_shows_progress_then_the_png(world: World, dc: FakeDiscord) -> None:
    engine = await world.start(paused=True)
    world.gen.hold()
    await dc.wait_for("commands_put")
    sent = time.monotonic()
    slash = await dc.slash("draw", {"prompt": "a cat --seed 42", "steps": 3})
    callback = await dc.wait_for("interaction_callback", dc.of(slash))
    assert time.monotonic() - sent < 0.3
    assert callback.payload == {"type": 5}  # defer(thinking=True)

    await dc.wait_until(lambda: any("Queued: #1" in e for e in status_edits(dc, slash)))
    queued = dc.original(slash)
    assert queued is not None and queued["components"][0]["components"][0]["custom_id"] == (
        "aidraw:cancel:1"
    )
    engine.resume()
    world.gen.allow(1)
    await dc.wait_until(lambda: any("step 1/3" in e for e in status_edits(dc, slash)))
    await dc.wait_until(lambda: bool((dc.original(slash) or {}).get("attachments")))
    preview = dc.original(slash)
    assert preview is not None and preview["attachments"][0]["filename"] == "preview.png"
    world.gen.release()

    message = await final(dc, slash, "-42.png")
    (attachment,) = message["attachments"]
    png = dc.attachment_data(attachment)
    assert png == (world.tmp / "results" / "000001-1.png").read_bytes()  # not recompressed
    info = parse_infotext(infotext_of(png))
    assert info.prompt == "masterpiece, best quality, a cat"
    assert info.params["Seed"] == "42" and info.params["Steps"] == "3"
    assert message["content"].startswith("Job 1 · Seed 42 · alpha · 3 steps")
    ids = [c["custom_id"] for row in message["components"] for c in row["components"]]
    assert ids == ["aidraw:reroll:1", "aidraw:vary:1", "aidraw:edit:1", "aidraw:delete:1"]
    edits = status_edits(dc, slash)
    assert "Queued: #1" in edits[0] and len(edits) == len(set(edits))  # each status once
    assert engine.record(1) is not None and engine.record(1).delivered  # type: ignore[union-attr]


async def test_bad_flag_is_an_ephemeral_error_and_queues_nothing(
    world: World, dc: FakeDiscord
) -> None:
    engine = await world.start()
    slash = await dc.slash("draw", {"prompt": "a cat --sed 4"})
    callback = await dc.wait_for("interaction_callback", dc.of(slash))
    data = callback.payload["data"]
    assert callback.payload["type"] == 4 and data["flags"] == 64
    assert "Unknown flag --sed. Did you mean --seed?" in data["content"]
    assert not engine.jobs() and not engine.history() and engine.record(1) is None
    assert not world.gen.calls and dc.count("followup_send", status=None) == 0


async def test_engine_refusal_is_ephemeral_too(world: World, dc: FakeDiscord) -> None:
    engine = await world.start()
    slash = await dc.slash("draw", {"prompt": "a cat", "model": "nope"})
    callback = await dc.wait_for("interaction_callback", dc.of(slash))
    assert callback.payload["data"]["flags"] == 64
    assert "Unknown model 'nope'" in callback.payload["data"]["content"]
    assert not engine.jobs()


async def test_typed_options_are_the_grammar_flags(world: World, dc: FakeDiscord) -> None:
    engine = await world.start(paused=True)
    options = {"prompt": "a fox", "negative": "lowres", "size": "square", "seed": 7}
    options |= {"steps": 5, "scale": 7.5, "sampler": "DPM++ 2M", "model": "beta", "count": 2}
    slash = await dc.slash("draw", options)
    await dc.wait_for("interaction_callback", dc.of(slash))
    (job,) = engine.jobs()
    r = job.request
    assert (r.width, r.height, r.seed, r.num_inference_steps) == (640, 640, 7, 5)
    assert (r.guidance_scale, r.sampler, r.model, r.batch_size) == (7.5, "DPM++ 2M", "beta", 2)
    assert r.negative_prompt.endswith(", lowres") and r.requester == USER
    assert job.reply_to == f"discord:{slash['channel_id']}:{USER_ID}"


async def test_chinese_locale(world: World, dc: FakeDiscord) -> None:
    await world.start(paused=True)
    slash = await dc.slash("draw", {"prompt": "a cat"}, locale="zh-CN")
    await dc.wait_until(lambda: any("已排队" in e for e in status_edits(dc, slash)))
    (put,) = [c for c in dc.calls if c.route == "commands_put"]
    (draw,) = [c for c in put.payload if c["name"] == "draw"]
    assert draw["description_localizations"]["zh-CN"].startswith("画一张图")


# --- buttons -------------------------------------------------------------------------------------


async def test_reroll_and_variations(world: World, dc: FakeDiscord) -> None:
    engine = await world.start()
    slash = await dc.slash("draw", {"prompt": "a cat --seed 42"})
    message = await final(dc, slash)

    reroll = await dc.click(message, "aidraw:reroll:1", user_id=OTHER_ID)
    assert (await dc.wait_for("interaction_callback", dc.of(reroll))).payload == {"type": 5}
    rerolled = await final(dc, reroll)
    first = engine.record(2)
    assert first is not None and first.requester == f"discord:{OTHER_ID}"
    assert first.request.seed is None  # a new seed (the fake draws 1000 for "random")
    assert rerolled["attachments"][0]["filename"] == "aidraw-2-1000.png"
    assert first.request.prompt == "masterpiece, best quality, a cat"

    vary = await dc.click(message, "aidraw:vary:1")
    await final(dc, vary)
    varied = engine.record(3)
    assert varied is not None and varied.request.seed == 42
    assert varied.request.subseed is None
    assert varied.request.subseed_strength == BotSettings().variation_strength
    info = parse_infotext(varied.images[0].infotext)
    assert info.params["Seed"] == "42" and "Variation seed strength" in info.params


async def test_edit_modal_draws_the_edited_prompt_with_the_same_seed(
    world: World, dc: FakeDiscord
) -> None:
    engine = await world.start()
    slash = await dc.slash("draw", {"prompt": "a cat --seed 42", "negative": "lowres"})
    message = await final(dc, slash)
    click = await dc.click(message, "aidraw:edit:1")
    opened = await dc.wait_for("interaction_callback", dc.of(click))
    assert opened.payload["type"] == 9
    inputs = [
        c.get("component") or c["components"][0] for c in opened.payload["data"]["components"]
    ]
    assert [i["value"] for i in inputs][0] == "masterpiece, best quality, a cat"
    submit = await dc.submit_modal(click, {inputs[0]["custom_id"]: "a dog --steps 2"})
    await final(dc, submit)
    record = engine.record(2)
    assert record is not None and record.request.prompt == "a dog"
    assert record.request.seed == 42 and record.request.num_inference_steps == 2
    assert record.request.negative_prompt == inputs[1]["value"]  # kept as it was


async def test_buttons_work_after_a_restart(world: World, dc: FakeDiscord) -> None:
    await world.start()
    slash = await dc.slash("draw", {"prompt": "a cat --seed 42"})
    message = await final(dc, slash)

    engine = await world.restart()  # a new client and a new Engine over the same journal
    click = await dc.click(message, "aidraw:reroll:1")
    rerolled = await final(dc, click)
    assert rerolled["attachments"][0]["filename"] == "aidraw-2-1000.png"
    record = engine.record(2)
    assert record is not None and record.request.prompt == "masterpiece, best quality, a cat"
    assert dc.count("message_send") == 0  # job 1 was delivered: nothing re-sent


async def test_reroll_reads_the_infotext_when_the_journal_forgot_the_job(
    world: World, dc: FakeDiscord
) -> None:
    await world.start()
    slash = await dc.slash("draw", {"prompt": "a cat --seed 42 --steps 3"})
    message = await final(dc, slash)
    world.tmp.joinpath("journal.sqlite3").unlink()  # e.g. trimmed by history_size
    for suffix in ("-wal", "-shm"):
        world.tmp.joinpath("journal.sqlite3" + suffix).unlink(missing_ok=True)
    engine = await world.restart()
    assert engine.record(1) is None
    click = await dc.click(message, "aidraw:vary:1")
    await final(dc, click)
    (record,) = engine.history()
    assert record.request.prompt == "masterpiece, best quality, a cat"
    assert record.request.seed == 42 and record.request.num_inference_steps == 3


async def test_cancel_button_while_queued(world: World, dc: FakeDiscord) -> None:
    engine = await world.start(paused=True)
    slash = await dc.slash("draw", {"prompt": "a cat"})
    await dc.wait_until(lambda: bool(status_edits(dc, slash)))
    status = dc.original(slash)
    assert status is not None

    refused = await dc.click(status, "aidraw:cancel:1", user_id=OTHER_ID)
    answer = await dc.wait_for("interaction_callback", dc.of(refused))
    assert answer.payload["data"]["flags"] == 64
    assert answer.payload["data"]["content"].startswith("Error: Only whoever asked for job #1")
    assert engine.jobs()

    click = await dc.click(status, "aidraw:cancel:1")
    answer = await dc.wait_for("interaction_callback", dc.of(click))
    assert answer.payload["type"] == 7
    assert not engine.jobs() and engine.record(1).state == "cancelled"  # type: ignore[union-attr]
    await dc.wait_until(lambda: engine.record(1).delivered)  # type: ignore[union-attr]
    assert status["content"] == "Cancelled." and status["components"] == []
    engine.resume()
    assert not world.gen.calls


async def test_delete_only_by_the_owner_or_an_admin(world: World, dc: FakeDiscord) -> None:
    await world.start()
    mine = await final(dc, await dc.slash("draw", {"prompt": "a cat"}))
    other = await final(dc, await dc.slash("draw", {"prompt": "a dog"}))

    refused = await dc.click(mine, "aidraw:delete:1", user_id=OTHER_ID)
    answer = await dc.wait_for("interaction_callback", dc.of(refused))
    assert answer.payload["data"]["flags"] == 64
    assert "Only whoever asked for this drawing" in answer.payload["data"]["content"]
    assert int(mine["id"]) in dc.messages

    await dc.click(mine, "aidraw:delete:1")
    await dc.wait_for("webhook_message_delete")
    assert int(mine["id"]) not in dc.messages

    await dc.click(other, "aidraw:delete:2", user_id=ADMIN_ID)
    await dc.wait_for("webhook_message_delete")
    assert int(other["id"]) not in dc.messages


# --- rate limits, restarts, long waits -----------------------------------------------------------


async def test_429_on_edits_is_retried_and_the_job_delivered(world: World, dc: FakeDiscord) -> None:
    engine = await world.start()
    world.gen.hold()
    dc.rate_limit_next("webhook_message_edit", retry_after=0.1)
    dc.rate_limit_next("webhook_message_edit", retry_after=0.1)
    slash = await dc.slash("draw", {"prompt": "a cat --seed 3"})
    await dc.wait_for("webhook_message_edit", status=429)
    await dc.wait_for("webhook_message_edit", status=429)
    world.gen.release()
    message = await final(dc, slash, "-3.png")
    assert dc.count("webhook_message_edit", status=429) == 2
    assert engine.record(1).delivered  # type: ignore[union-attr]
    assert infotext_of(dc.attachment_data(message["attachments"][0])).endswith("Version: test")


async def test_dropped_connections_neither_lose_nor_repeat_the_result(
    world: World, dc: FakeDiscord
) -> None:
    world.interval_s = 30.0  # one status edit, then the result
    engine = await world.start()
    world.gen.hold()
    dc.stall_next("webhook_message_edit", "drop")  # the status edit: best effort, skipped
    slash = await dc.slash("draw", {"prompt": "a cat --seed 3"})
    await dc.wait_for("webhook_message_edit", status=0)
    dc.stall_next("webhook_message_edit", "drop_done")  # the result is shown; the answer lost
    world.gen.release()
    message = await final(dc, slash, "-3.png")
    await dc.wait_until(lambda: engine.record(1).delivered)  # type: ignore[union-attr]
    assert [c.status for c in dc.calls if c.route == "webhook_message_edit"] == [0, 0, 200]
    assert message["content"].startswith("Job 1 · Seed 3 · alpha")
    assert len(message["attachments"]) == 1


async def test_a_reply_that_keeps_failing_is_left_for_the_restart_and_sent_once(
    world: World,
    dc: FakeDiscord,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(reply, "RETRY", reply.Backoff(first_s=0.02, max_s=0.05, total_s=0.3))
    world.interval_s = 30.0
    engine = await world.start()
    world.gen.hold()
    await dc.slash("draw", {"prompt": "a cat --seed 3"})
    await dc.wait_for("webhook_message_edit")  # the status
    dc.stall_next("webhook_message_edit", "drop", times=100)
    world.gen.release()
    await dc.wait_until(lambda: "reply failed, kept for later" in caplog.text)
    assert dc.count("webhook_message_edit", status=0) > 2
    record = engine.record(1)
    assert record is not None and record.state == "done" and not record.delivered

    dc.clear_faults()
    # After the restart, a 503 (discord.py does not retry it on the REST API), then a message
    # that is posted but whose answer is lost: the next try's nonce makes Discord return it.
    dc.fail_next("message_send", 503, 0, "Service Unavailable")
    dc.stall_next("message_send", "drop_done")
    engine = await world.restart()
    await dc.wait_until(lambda: engine.record(1).delivered, timeout=10)  # type: ignore[union-attr]
    assert [c.status for c in dc.calls if c.route == "message_send"] == [503, 0, 200]
    (posted,) = [m for m in dc.messages.values() if not m.get("interaction_metadata")]
    assert posted["content"].startswith(f"<@{USER_ID}> Job 1 · Seed 3 · alpha")
    assert posted["attachments"][0]["filename"] == "aidraw-1-3.png"


async def test_progress_edits_at_most_every_interval(
    world: World, dc: FakeDiscord, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.interval_s = 0.2
    edits: list[float] = []
    record = dc._record

    def stamp(call: Any) -> None:
        if call.route == "webhook_message_edit":
            edits.append(time.monotonic())
        record(call)

    monkeypatch.setattr(dc, "_record", stamp)
    await world.start()
    world.gen.hold()
    slash = await dc.slash("draw", {"prompt": "a cat", "steps": 12})
    for _ in range(12):  # a step every 50 ms: four times as often as the interval
        world.gen.allow(1)
        await asyncio.sleep(0.05)
    await final(dc, slash)
    statuses = edits[:-1]  # the last edit is the result, which never waits
    gaps = [b - a for a, b in zip(statuses, statuses[1:], strict=False)]
    assert len(statuses) >= 2 and min(gaps) >= 0.19
    assert len(statuses) < 12


async def test_unfinished_job_is_posted_after_a_restart(world: World, dc: FakeDiscord) -> None:
    await world.start(paused=True)
    slash = await dc.slash("draw", {"prompt": "a cat --seed 5"})
    await dc.wait_until(lambda: bool(status_edits(dc, slash)))
    await world.stop()
    status = dc.original(slash)
    assert status is not None and "restarting" in status["content"]
    assert status["components"] == []

    engine = await world.start()  # the journal still has job 1, queued
    sent = await dc.wait_for("message_send")
    assert sent.payload["content"].startswith(f"<@{USER_ID}> Job 1 · ")
    assert "before the restart" in sent.payload["content"]
    assert sent.payload["allowed_mentions"]["users"] == [USER_ID]
    await dc.wait_until(lambda: engine.record(1).delivered)  # type: ignore[union-attr]
    message = _last_sent(dc)
    assert message["content"].startswith(f"<@{USER_ID}> Job 1 · Seed 5 · alpha")
    assert message["attachments"][0]["filename"] == "aidraw-1-5.png"
    assert [m for m in dc.messages.values() if not m.get("interaction_metadata")] == [message]


def _last_sent(dc: FakeDiscord) -> dict[str, Any]:
    return [m for m in dc.messages.values() if not m.get("interaction_metadata")][-1]


async def test_after_the_token_expires_replies_go_to_the_channel(
    world: World, dc: FakeDiscord, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bot.discord.reply.TOKEN_MARGIN_S", 15 * 60.0)  # as if 15 minutes passed
    engine = await world.start()
    slash = await dc.slash("draw", {"prompt": "a cat --seed 9"})
    await dc.wait_until(lambda: engine.record(1) is not None and engine.record(1).delivered)  # type: ignore[union-attr]
    message = _last_sent(dc)
    assert message["content"].startswith(f"<@{USER_ID}> Job 1 · Seed 9")
    assert message["attachments"][0]["filename"] == "aidraw-1-9.png"
    thinking = dc.original(slash)  # its token is about to expire: it points below
    assert thinking is not None
    assert thinking["content"] == "Job 1 took a while: it goes on in a new message below."


# --- other commands ------------------------------------------------------------------------------


async def test_settings_are_saved_and_used_by_the_next_draw(world: World, dc: FakeDiscord) -> None:
    engine = await world.start()
    options = {"steps": 7, "sampler": "DPM++ 2M", "size": "512x512", "negative": "lowres"}
    saved = await dc.slash("settings", options | {"quality_tags": False})
    answer = await dc.wait_for("interaction_callback", dc.of(saved))
    assert answer.payload["data"]["flags"] == 64
    assert "num_inference_steps = 7" in answer.payload["data"]["content"]

    engine = await world.restart()  # stored in SQLite, not in the bot
    slash = await dc.slash("draw", {"prompt": "a cat"})
    await final(dc, slash)
    record = engine.record(1)
    assert record is not None
    r = record.request
    assert (r.num_inference_steps, r.sampler, r.width, r.height) == (7, "DPM++ 2M", 512, 512)
    assert r.prompt == "a cat" and r.negative_prompt.endswith("lowres")
    assert world.store is not None and world.store.get(USER).num_inference_steps == 7

    bad = await dc.slash("settings", {"steps": 500})  # over the bot's max_steps
    answer = await dc.wait_for("interaction_callback", dc.of(bad))
    assert "steps 500 is not allowed" in answer.payload["data"]["content"]
    reset = await dc.slash("settings", {"reset": True})
    answer = await dc.wait_for("interaction_callback", dc.of(reset))
    assert "back to the bot's defaults" in answer.payload["data"]["content"]
    assert world.store.get(USER).num_inference_steps is None


async def test_queue_cancel_history_and_help(world: World, dc: FakeDiscord) -> None:
    engine = await world.start(paused=True)
    for prompt in ("a cat", "a dog"):
        await dc.slash("draw", {"prompt": prompt})
    await dc.wait_until(lambda: len(engine.jobs()) == 2)

    queue = await dc.slash("queue")
    text = (await dc.wait_for("interaction_callback", dc.of(queue))).payload["data"]["content"]
    assert "Job 1: #1 in line" in text and "Job 2: #2 in line" in text
    assert "2 job(s) waiting in all (paused)." in text

    cancel = await dc.slash("cancel")  # the newest
    text = (await dc.wait_for("interaction_callback", dc.of(cancel))).payload["data"]["content"]
    assert text == "Cancelled job 2." and [j.id for j in engine.jobs()] == [1]
    again = await dc.slash("cancel", {"job": 2})
    text = (await dc.wait_for("interaction_callback", dc.of(again))).payload["data"]["content"]
    assert text == "Job 2 has already finished."

    engine.resume()
    await dc.wait_until(lambda: not engine.jobs() and bool(engine.history()))
    history = await dc.slash("history")
    text = (await dc.wait_for("interaction_callback", dc.of(history))).payload["data"]["content"]
    assert text.startswith("Job 1 · <t:") and "seed 1000" in text
    one = await dc.slash("history", {"job": 1})
    answer = await dc.wait_for("interaction_callback", dc.of(one))
    assert answer.payload["data"]["flags"] == 64
    assert answer.files[0].data == (world.tmp / "results" / "000001-1.png").read_bytes()
    theirs = await dc.slash("history", {"job": 1}, user_id=OTHER_ID)
    answer = await dc.wait_for("interaction_callback", dc.of(theirs))
    assert "no longer in the history" in answer.payload["data"]["content"]

    help_ = await dc.slash("help")
    text = (await dc.wait_for("interaction_callback", dc.of(help_))).payload["data"]["content"]
    assert "--seed" in text and "/settings" in text and len(text) <= 2000


# --- admin ---------------------------------------------------------------------------------------


async def test_admin_commands_need_an_admin(world: World, dc: FakeDiscord) -> None:
    engine = await world.start()
    await dc.wait_for("commands_put")
    admin = {c["name"]: c for c in dc.commands}
    for name in ("model", "queue-admin", "quota"):
        assert int(admin[name]["default_member_permissions"]) == 1 << 5  # Manage Server
    assert admin["draw"].get("default_member_permissions") is None

    refused = await dc.slash("model swap", {"name": "beta"})
    answer = await dc.wait_for("interaction_callback", dc.of(refused))
    assert answer.payload["data"]["flags"] == 64
    assert answer.payload["data"]["content"] == "Only the bot's admins can do that."
    assert engine.status().default_model == "alpha"

    swap = await dc.slash(
        "model swap", {"name": "beta"}, user_id=ADMIN_ID, permissions=ADMINISTRATOR
    )
    await dc.wait_for("interaction_callback", dc.of(swap))
    done = await dc.wait_for("followup_send", dc.of(swap))
    assert done.payload["content"] == "New jobs now draw with beta."
    assert engine.status().default_model == "beta"

    listed = await dc.slash("model list", user_id=ADMIN_ID)
    text = (await dc.wait_for("interaction_callback", dc.of(listed))).payload["data"]["content"]
    assert "★ beta ●" in text and "alpha" in text


async def test_admin_queue_pause_resume_clear(
    world: World, dc: FakeDiscord, caplog: pytest.LogCaptureFixture
) -> None:
    engine = await world.start()
    caplog.set_level("INFO", logger="bot.discord.admin")
    pause = await dc.slash("queue-admin pause", user_id=ADMIN_ID)
    await dc.wait_for("interaction_callback", dc.of(pause))
    assert engine.status().paused
    for prompt in ("a cat", "a dog"):
        await dc.slash("draw", {"prompt": prompt})
    await dc.wait_until(lambda: len(engine.jobs()) == 2)
    refused = await dc.slash("queue-admin clear")
    await dc.wait_for("interaction_callback", dc.of(refused))
    assert len(engine.jobs()) == 2
    clear = await dc.slash("queue-admin clear", user_id=ADMIN_ID)
    text = (await dc.wait_for("interaction_callback", dc.of(clear))).payload["data"]["content"]
    assert text == "Cancelled 2 waiting job(s)." and not engine.jobs()
    resume = await dc.slash("queue-admin resume", user_id=ADMIN_ID)
    await dc.wait_for("interaction_callback", dc.of(resume))
    assert not engine.status().paused
    logged = [r.getMessage() for r in caplog.records if r.name == "bot.discord.admin"]
    assert f"discord: admin {ADMIN}: /queue-admin clear " in logged
    assert f"discord: refused /queue-admin clear to {USER} (not an admin)" in logged


# --- safety --------------------------------------------------------------------------------------


async def test_quota_counts_images_and_refunds_cancelled_ones(
    world: World, dc: FakeDiscord
) -> None:
    world.discord = DiscordSettings(daily_quota=3)
    engine = await world.start()
    await final(dc, await dc.slash("draw", {"prompt": "a cat", "count": 2}))
    over = await dc.slash("draw", {"prompt": "a cat", "count": 2})
    answer = await dc.wait_for("interaction_callback", dc.of(over))
    assert "You have drawn 2 of your 3 images" in answer.payload["data"]["content"]
    engine.pause()
    await dc.slash("draw", {"prompt": "a dog"})
    await dc.wait_until(lambda: len(engine.jobs()) == 1)
    engine.cancel(engine.jobs()[0].id, USER)  # refunded
    again = await dc.slash("draw", {"prompt": "a fox"})
    assert (await dc.wait_for("interaction_callback", dc.of(again))).payload == {"type": 5}

    quota = await dc.slash("quota set", {"user": USER_ID, "images": 0}, user_id=ADMIN_ID)
    text = (await dc.wait_for("interaction_callback", dc.of(quota))).payload["data"]["content"]
    assert text == f"<@{USER_ID}>: 3 image(s) in the last 24 hours; quota: no limit."
    more = await dc.slash("draw", {"prompt": "an owl", "count": 4})
    assert (await dc.wait_for("interaction_callback", dc.of(more))).payload == {"type": 5}


async def test_banned_words_nsfw_cooldown_and_channels(world: World, dc: FakeDiscord) -> None:
    world.discord = DiscordSettings(
        banned_words=("gore",),
        nsfw_policy="spoiler",
        cooldown_s=60,
        allowed_channels=(1200000000000000002,),
        allow_dms=False,
    )
    engine = await world.start()
    banned = await dc.slash("draw", {"prompt": "Gore, a cat"})
    answer = await dc.wait_for("interaction_callback", dc.of(banned))
    assert answer.payload["data"]["content"] == "This bot does not draw prompts with 'gore'."

    nsfw = await dc.slash("draw", {"prompt": "nsfw, a cat --seed 1"})
    message = await final(dc, nsfw)
    assert message["attachments"][0]["filename"] == "SPOILER_aidraw-1-1.png"

    soon = await dc.slash("draw", {"prompt": "a dog"})
    answer = await dc.wait_for("interaction_callback", dc.of(soon))
    assert "Please wait" in answer.payload["data"]["content"]
    admin = await dc.slash("draw", {"prompt": "a dog"}, user_id=ADMIN_ID)
    assert (await dc.wait_for("interaction_callback", dc.of(admin))).payload == {"type": 5}

    elsewhere = await dc.slash("draw", {"prompt": "a dog"}, user_id=OTHER_ID, channel_id=42)
    answer = await dc.wait_for("interaction_callback", dc.of(elsewhere))
    assert answer.payload["data"]["content"] == "The bot does not draw in this channel."
    dm = await dc.slash("help", user_id=OTHER_ID, guild_id=None)
    answer = await dc.wait_for("interaction_callback", dc.of(dm))
    assert answer.payload["data"]["content"] == "The bot does not draw in direct messages."
    clicked = await dc.click(message, "aidraw:reroll:1")  # cooldown applies to buttons too
    answer = await dc.wait_for("interaction_callback", dc.of(clicked))
    assert "Please wait" in answer.payload["data"]["content"]
    assert len(engine.history()) + len(engine.jobs()) == 2
