"""The Discord frontend end to end (tests/discord/world.py): /draw, its status and result,
rate limits, dropped connections, restarts and long waits, and the safety settings."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from bot.discord import reply
from bot.settings import DiscordSettings
from engine.infotext import parse_infotext
from tests.discord.world import (
    ADMIN_ID,
    OTHER_ID,
    USER,
    World,
    final,
    infotext_of,
    last_sent,
    status_edits,
)
from tests.fakes import FakeDiscord
from tests.fakes.discord import USER_ID

pytestmark = pytest.mark.timeout(10)


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
    assert ids == [
        "aidraw:reroll:1",
        "aidraw:vary:1",
        "aidraw:vary_strong:1",
        "aidraw:upscale:1",
        "aidraw:edit:1",
        "aidraw:delete:1",
    ]
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


async def test_a_size_far_above_the_models_own_is_flagged_with_the_queued_status(
    world: World, dc: FakeDiscord
) -> None:
    engine = await world.start(paused=True)
    big = await dc.slash("draw", {"prompt": "a cat --seed 3", "size": "256x256"})
    small = await dc.slash("draw", {"prompt": "a dog", "size": "128x128"})  # 4 times: fine
    await dc.wait_until(lambda: bool(status_edits(dc, big) and status_edits(dc, small)))
    queued, *_ = status_edits(dc, big)
    assert queued.startswith("Job 1 · Queued: #1 in line")
    assert "\nHeads-up: 256x256 is 16 times this model's own 64x64." in queued
    assert "Heads-up" not in status_edits(dc, small)[0]
    engine.resume()
    message = await final(dc, big, "-3.png")
    assert "Heads-up" not in message["content"]  # the result is there: no more need to warn


@pytest.mark.parametrize("then", ["drop", "drop_done"])
async def test_a_defer_without_an_answer_still_delivers_the_job(
    world: World, dc: FakeDiscord, then: str
) -> None:
    engine = await world.start()
    dc.stall_next("interaction_callback", then)  # type: ignore[arg-type]
    slash = await dc.slash("draw", {"prompt": "a cat --seed 3"})
    await dc.wait_until(lambda: engine.record(1) is not None and engine.record(1).delivered)  # type: ignore[union-attr]
    if then == "drop":  # Discord never got the defer: the job goes on in the channel
        message = last_sent(dc)
        assert message["content"].startswith(f"<@{USER_ID}> Job 1 · Seed 3 · alpha")
    else:  # it did (only its answer was lost): the result replaces "thinking…"
        message = dc.original(slash)
        assert message is not None and message["content"].startswith("Job 1 · Seed 3 · alpha")
        assert dc.count("message_send") == 0
    assert message["attachments"][0]["filename"] == "aidraw-1-3.png"
    assert dc.count("interaction_callback") == 0  # and no apology on top


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
    message = last_sent(dc)
    assert message["content"].startswith(f"<@{USER_ID}> Job 1 · Seed 5 · alpha")
    assert message["attachments"][0]["filename"] == "aidraw-1-5.png"
    assert [m for m in dc.messages.values() if not m.get("interaction_metadata")] == [message]


async def test_after_the_token_expires_replies_go_to_the_channel(
    world: World, dc: FakeDiscord, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bot.discord.reply.TOKEN_MARGIN_S", 15 * 60.0)  # as if 15 minutes passed
    engine = await world.start()
    slash = await dc.slash("draw", {"prompt": "a cat --seed 9"})
    await dc.wait_until(lambda: engine.record(1) is not None and engine.record(1).delivered)  # type: ignore[union-attr]
    message = last_sent(dc)
    assert message["content"].startswith(f"<@{USER_ID}> Job 1 · Seed 9")
    assert message["attachments"][0]["filename"] == "aidraw-1-9.png"
    thinking = dc.original(slash)  # its token is about to expire: it points below
    assert thinking is not None
    assert thinking["content"] == "Job 1 took a while: it goes on in a new message below."


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
