"""The Telegram frontend end to end: the real PTB Application (`run_telegram`, the launcher's
entry point) against tests/fakes/telegram.py, over a real Engine with a fake generate()."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from telegram.error import RetryAfter
from telegram.warnings import PTBDeprecationWarning

from bot.messages import text
from bot.prefs import UserPrefs, UserSettingsStore
from bot.settings import BotSettings, Settings, TelegramSettings
from bot.telegram import retries
from bot.telegram.app import file_url, run_telegram
from bot.telegram.captions import cut
from bot.telegram.replies import ReplyTo
from bot.telegram.retries import retry_seconds
from bot.telegram.settings_text import read_settings
from bot.wordlist import find_word
from engine.engine import Engine
from engine.errors import InvalidRequest
from engine.queue import QueueConfig
from tests.engine_fakes import FakeGenerate
from tests.fakes import FakeTelegram
from tests.telegram.harness import (
    ADMIN,
    GROUP,
    OTHER,
    QUALITY,
    STATUS,
    USER,
    Harness,
    buttons,
    eventually,
)

pytestmark = pytest.mark.timeout(10)


# --- prompts -------------------------------------------------------------------------------------


async def test_private_prompt_shows_progress_then_photo_and_png(h: Harness) -> None:
    engine = await h.start(send_as_document=True)
    h.fake.hold()
    prompt = h.tg.push_text(USER, USER, "1girl, smile --seed 5\nNegative prompt: lowres")

    status = await h.tg.wait_for("sendMessage")
    assert status.params["text"] == "Queued…"
    assert status.params["reply_parameters"]["message_id"] == prompt["message"]["message_id"]
    first = await h.tg.wait_for("editMessageText")  # the position (or step 0) and a Cancel button
    assert buttons(first) == ["c:1"]
    h.fake.allow(2)
    drawing = await h.tg.wait_for("editMessageText", lambda c: "step 2/4" in c.params["text"])
    assert drawing.params["text"].startswith("Drawing… step 2/4")
    assert buttons(drawing) == ["c:1"]
    h.fake.release()

    photo = await h.tg.wait_for("sendPhoto")
    document = await h.tg.wait_for("sendDocument")
    await h.tg.wait_for(
        "deleteMessage", lambda c: c.params["message_id"] == first.params["message_id"]
    )

    (request,) = h.fake.calls[0]
    assert request.prompt == QUALITY + "1girl, smile"
    assert request.negative_prompt.startswith("lowres, ") and request.seed == 5
    assert request.requester == f"telegram:{USER}"
    infotext = QUALITY + "1girl, smile\nSeed: 5"  # FakeGenerate's infotext
    assert photo.params["caption"] == (
        "Job 1 · Seed 5 · alpha · 4 steps\nUC: Low Quality + Bad Anatomy\n\n"
        f"{QUALITY}1girl, smile\nNegative prompt: lowres"
    )
    assert document.params["caption"] == infotext
    assert (
        photo.files["photo"].data
        == document.files["document"].data
        == b"%s|5" % ((QUALITY + "1girl, smile").encode())
    )
    assert document.files["document"].filename == "aidraw-1-5.png"
    assert buttons(photo) == ["r:1", "u:1:0", "v:1:0", "v:1:0:s"]  # no PNG: it came as a file
    assert "has_spoiler" not in photo.params or not photo.params["has_spoiler"]
    # Only the photo and its file are left: the status message is gone.
    assert [("photo" in m, "document" in m) for m in h.tg.sent(USER)] == [
        (True, False),
        (False, True),
    ]
    record = engine.record(1)
    assert record is not None and record.delivered and record.state == "done"


async def test_group_draw_command_names_the_bot(h: Harness) -> None:
    await h.start()
    h.tg.push_text(GROUP, USER, "/draw@other_bot a dog", chat_type="supergroup")
    h.tg.push_text(GROUP, USER, "a dog, just chatting", chat_type="supergroup")
    h.tg.push_text(GROUP, USER, "/draw@aidraw_test_bot a cat --seed 3", chat_type="supergroup")
    photo = await h.tg.wait_for("sendPhoto")
    assert photo.params["chat_id"] == GROUP and "a cat" in photo.params["caption"]

    # /draw alone explains itself; a reply to the bot is a prompt too (to its pictures, a
    # prompt to draw from them: tests/telegram/test_telegram_pictures.py).
    h.tg.push_text(GROUP, OTHER, "/draw", chat_type="supergroup")
    assert (await h.reply(GROUP, lambda t: "/draw" in t)).startswith("Write what to draw")
    (usage,) = [m for m in h.tg.sent(GROUP) if m.get("text", "").startswith("Write what")]
    h.tg.push_text(
        GROUP, OTHER, "a fox --seed 4", chat_type="supergroup", reply_to=usage["message_id"]
    )
    await h.tg.wait_for("sendPhoto", lambda c: "a fox" in c.params["caption"])
    assert h.fake.prompts == [[QUALITY + "a cat"], [QUALITY + "a fox"]]
    assert h.fake.calls[1][0].requester == f"telegram:{OTHER}"


async def test_bad_flag_is_explained_and_nothing_is_queued(h: Harness) -> None:
    engine = await h.start()
    h.tg.push_text(USER, USER, "a cat --sede 5")
    answer = await h.reply(USER)
    assert answer.startswith("Error: Unknown flag --sede. Did you mean --seed?")
    h.tg.push_text(USER, USER, "a cat --steps 99")  # the engine's check: nothing queued either
    status = await h.tg.wait_for("editMessageText")
    assert status.params["text"] == "Error: steps 99 is not allowed: use 1 to 50."
    assert engine.jobs() == [] and h.fake.calls == []
    assert engine.record(1) is None and h.tg.count("sendPhoto") == 0


async def test_pasted_infotext_is_drawn_as_written(h: Harness) -> None:
    await h.start()
    h.tg.push_text(
        USER,
        USER,
        "1girl, {smile}\nNegative prompt: lowres\n"
        "Steps: 3, Sampler: Euler, CFG scale: 7, Seed: 77, Size: 64x96, Clip skip: 2",
    )
    await h.tg.wait_for("sendPhoto")
    (request,) = h.fake.calls[0]
    assert (request.prompt, request.negative_prompt) == ("1girl, {smile}", "lowres")
    assert (request.num_inference_steps, request.sampler, request.seed) == (3, "Euler", 77)
    assert (request.width, request.height, request.guidance_scale) == (64, 96, 7.0)


async def test_a_failed_drawing_is_told_in_the_status(h: Harness) -> None:
    engine = await h.start()
    h.fake.failing.add(QUALITY + "a cat")
    h.tg.push_text(USER, USER, "a cat")
    failed = await h.tg.wait_for("editMessageText", lambda c: "went wrong" in c.params["text"])
    assert "reply_markup" not in failed.params  # no Cancel button any more
    # Marked delivered once the edit's answer is back: nothing on the fake's side to wait for.
    await eventually(lambda: (r := engine.record(1)) is not None and r.delivered)
    record = engine.record(1)
    assert record is not None and record.state == "failed" and record.error is not None
    assert failed.params["text"] == text("error", message=record.error)  # no path leaks


# --- buttons and restarts ------------------------------------------------------------------------


async def test_buttons_still_work_after_a_restart(h: Harness) -> None:
    await h.start()
    h.tg.push_text(USER, USER, "a cat --seed 9")
    await h.tg.wait_for("sendPhoto")
    (result,) = [m for m in h.tg.sent(USER) if "photo" in m]
    await h.stop()

    engine = await h.start()  # a new Application and a new Engine over the same journal
    h.tg.push_callback(USER, USER, result["message_id"], "r:1")
    await h.tg.wait_for("answerCallbackQuery")
    reroll = await h.tg.wait_for("sendPhoto")
    assert reroll.params["reply_parameters"]["message_id"] == result["message_id"]
    assert h.fake.calls[1][0].prompt == QUALITY + "a cat"
    record = engine.record(2)
    assert record is not None and record.request.seed is None  # a new seed was drawn

    h.tg.push_callback(USER, OTHER, result["message_id"], "v:1:0")  # anyone may press it
    await h.tg.wait_for("answerCallbackQuery")
    await h.tg.wait_for("sendPhoto")
    variation = h.fake.calls[2][0]
    assert (variation.seed, variation.subseed_strength) == (9, BotSettings().variation_strength)
    assert variation.requester == f"telegram:{OTHER}"

    h.tg.push_callback(USER, USER, result["message_id"], "d:1:0")
    await h.tg.wait_for("answerCallbackQuery")
    document = await h.tg.wait_for("sendDocument")
    assert document.files["document"].data == (QUALITY + "a cat|9").encode()
    assert document.params["caption"] == QUALITY + "a cat\nSeed: 9"


async def test_unknown_job_button_answers_with_an_alert(h: Harness) -> None:
    await h.start()
    h.tg.push_text(USER, USER, "/history")
    assert await h.reply(USER) == "You have not drawn anything yet."
    h.tg.push_text(USER, USER, "a cat --seed 1")
    await h.tg.wait_for("sendPhoto")
    (result,) = [m for m in h.tg.sent(USER) if "photo" in m]
    (h.tmp_path / "results" / "000001-1.png").unlink()  # the image file is gone
    h.tg.push_callback(USER, USER, result["message_id"], "d:1:0")
    alert = await h.tg.wait_for("answerCallbackQuery")
    assert alert.params["show_alert"] is True
    assert alert.params["text"] == "Error: Job 1 is no longer in the history."


async def test_unanswered_jobs_are_answered_after_a_restart(h: Harness) -> None:
    await h.start()
    h.fake.hold()
    prompt = h.tg.push_text(USER, USER, "a cat --seed 2")
    status = await h.tg.wait_for("editMessageText", lambda c: "Drawing" in c.params["text"])
    await h.stop()  # interrupted: the job stays in the journal
    assert h.tg.count("sendPhoto") == 0

    h.fake.release()
    await h.start()
    photo = await h.tg.wait_for("sendPhoto")
    assert photo.params["reply_parameters"]["message_id"] == prompt["message"]["message_id"]
    await h.tg.wait_for(
        "deleteMessage", lambda c: c.params["message_id"] == status.params["message_id"]
    )
    assert h.fake.prompts[-1] == [QUALITY + "a cat"]
    await h.stop()
    await h.start()  # delivered: not sent again
    assert h.tg.count("sendPhoto") == 1


async def test_cancel_while_queued(h: Harness) -> None:
    engine = await h.start(paused=True)
    h.tg.push_text(USER, USER, "a cat")
    status = await h.tg.wait_for("editMessageText", lambda c: "Queued: #1" in c.params["text"])
    h.tg.push_callback(USER, OTHER, status.params["message_id"], "c:1")  # not theirs
    refused = await h.tg.wait_for("answerCallbackQuery")
    assert refused.params["show_alert"] is True and "Only whoever asked" in refused.params["text"]
    h.tg.push_callback(USER, USER, status.params["message_id"], "c:1")
    answer = await h.tg.wait_for("answerCallbackQuery")
    assert answer.params["text"] == "Cancelled."
    await h.tg.wait_for("editMessageText", lambda c: c.params["text"] == "Cancelled.")

    h.tg.push_text(USER, USER, "a dog")
    await h.tg.wait_for("editMessageText", lambda c: "Queued: #1" in c.params["text"])
    h.tg.push_text(USER, USER, "/queue")
    assert (
        await h.reply(USER, lambda t: "job" in t)
        == "1 job(s) waiting or drawing.\njob 2: #1 in line"
    )
    h.tg.push_text(USER, USER, "/cancel")
    assert await h.reply(USER, lambda t: "job(s) 2" in t) == "Cancelled job(s) 2."
    engine.resume()
    h.tg.push_text(USER, USER, "/cancel")
    assert await h.reply(USER, lambda t: "no job" in t) == "You have no job waiting or drawing."
    assert h.fake.calls == [] and h.tg.count("sendPhoto") == 0
    for job_id in (1, 2):
        await eventually(lambda: (r := engine.record(job_id)) is not None and r.delivered)  # noqa: B023
        record = engine.record(job_id)
        assert record is not None and record.state == "cancelled"


# --- transient failures: what is tried again, what is left for the restart ----------------------


async def test_photo_is_sent_once_through_5xx_answers(h: Harness) -> None:
    engine = await h.start()
    h.tg.fail_next("sendPhoto", 500, "Internal Server Error")
    h.tg.fail_next("sendPhoto", 502, "Bad Gateway")
    h.tg.push_text(USER, USER, "a cat --seed 1")
    photo = await h.tg.wait_for("sendPhoto")
    assert photo.files["photo"].data == (QUALITY + "a cat|1").encode()
    assert [c.status for c in h.tg.calls if c.method == "sendPhoto"] == [500, 502, 200]
    assert len([m for m in h.tg.sent(USER) if "photo" in m]) == 1
    await eventually(lambda: (r := engine.record(1)) is not None and r.delivered)


async def test_a_photo_that_may_have_arrived_is_not_sent_again(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    engine = await h.start()
    h.tg.stall_next("sendPhoto", "drop_done")  # Telegram took the photo; its answer is lost
    h.tg.push_text(USER, USER, "a cat --seed 1")
    await h.tg.wait_for("sendPhoto", status=0)
    apology = await h.reply(USER, lambda t: t.startswith("Sorry"))  # on_error, as before
    assert apology == text("failed")
    assert h.tg.count("sendPhoto", status=None) == 1
    assert len([m for m in h.tg.sent(USER) if "photo" in m]) == 1
    record = engine.record(1)
    assert record is not None and record.state == "done" and not record.delivered
    assert "job 1: pictures not delivered" in caplog.text


@pytest.mark.timeout(30)
async def test_a_timed_out_photo_is_not_sent_again(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    engine = await h.start()
    h.tg.hang_next("sendPhoto", done=True)  # done, but no answer within PTB's read timeout
    h.tg.push_text(USER, USER, "a cat --seed 1")
    await h.reply(USER, lambda t: t.startswith("Sorry"), timeout=15)
    assert h.tg.count("sendPhoto", status=None) == 1
    assert len([m for m in h.tg.sent(USER) if "photo" in m]) == 1
    record = engine.record(1)
    assert record is not None and not record.delivered
    assert "job 1: pictures not delivered (Timed out)" in caplog.text


async def test_dropped_edits_and_deletes_are_tried_again(h: Harness) -> None:
    engine = await h.start(paused=True)
    h.tg.push_text(USER, USER, "a dog")
    status = await h.tg.wait_for("editMessageText", lambda c: "Queued: #1" in c.params["text"])
    h.tg.stall_next("editMessageText", "drop")
    h.tg.push_callback(USER, USER, status.params["message_id"], "c:1")
    await h.tg.wait_for("editMessageText", status=0)
    await h.tg.wait_for("editMessageText", lambda c: c.params["text"] == "Cancelled.")
    await eventually(lambda: (r := engine.record(1)) is not None and r.delivered)

    engine.resume()
    h.tg.stall_next("deleteMessage", "drop_done")  # deleted, but the answer is lost
    h.tg.stall_next("deleteMessage", "drop")
    h.tg.push_text(USER, USER, "a cat --seed 1")
    await h.tg.wait_for("sendPhoto")
    await h.tg.wait_for("deleteMessage", status=400)  # the third try: "not found", i.e. done
    assert [m.get("text") for m in h.tg.sent(USER)] == ["Cancelled.", None]  # no status left


async def test_photo_retries_give_up_and_leave_the_job_for_the_restart(
    h: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(retries, "RETRY", retries.Backoff(first_s=0.02, max_s=0.05, total_s=0.3))
    engine = await h.start()
    for _ in range(100):
        h.tg.fail_next("sendPhoto", 500, "Internal Server Error")
    h.tg.push_text(USER, USER, "a cat --seed 1")
    await h.reply(USER, lambda t: t.startswith("Sorry"))
    assert h.tg.count("sendPhoto", status=500) > 2 and h.tg.count("sendPhoto") == 0
    record = engine.record(1)
    assert record is not None and record.state == "done" and not record.delivered
    assert "job 1: pictures not delivered (Internal Server Error)" in caplog.text
    assert "the next start sends them" in caplog.text

    await h.stop()
    h.tg.clear_faults()  # Telegram is back
    engine = await h.start()
    photo = await h.tg.wait_for("sendPhoto")
    assert photo.files["photo"].data == (QUALITY + "a cat|1").encode()
    await eventually(lambda: (r := engine.record(1)) is not None and r.delivered)
    assert h.tg.count("sendPhoto") == 1 and h.fake.prompts == [[QUALITY + "a cat"]]


async def test_flood_control_on_the_first_status_holds_up_no_update(h: Harness) -> None:
    # The update is confirmed only after its job is journaled (bot/telegram/polling.py), so
    # the handler does not wait out flood control: the job goes on and sends its status later.
    engine = await h.start()
    h.tg.rate_limit_next("sendMessage", retry_after=30)
    h.tg.push_text(USER, USER, "a cat --seed 1")
    await h.tg.wait_for("sendMessage", status=429)
    h.tg.push_text(OTHER, OTHER, "/help")
    assert (await h.reply(OTHER)).startswith("Send me a prompt")
    await h.tg.wait_for("sendPhoto")
    await eventually(lambda: (r := engine.record(1)) is not None and r.delivered)
    record = engine.record(1)
    assert record is not None
    assert ReplyTo.parse(record.reply_to) == ReplyTo(USER, 1, 0, "en", update_id=1)


def test_reply_to_keeps_the_update_and_reads_old_journals() -> None:
    reply = ReplyTo(USER, 5, 6, "zh", update_id=99)
    assert str(reply) == f"telegram:{USER}:5:6:zh:99"
    assert ReplyTo.parse(str(reply)) == reply
    assert ReplyTo.parse(f"telegram:{GROUP}:5:6:en") == ReplyTo(GROUP, 5, 6, "en", update_id=0)
    assert ReplyTo.parse(f"discord:{USER}:5") is None


# --- flood control and limits --------------------------------------------------------------------


async def test_retry_after_on_edits_and_photo_keeps_the_job(h: Harness) -> None:
    await h.start()
    h.fake.hold()
    h.tg.rate_limit_next("editMessageText", retry_after=0.5)
    h.tg.rate_limit_next("sendPhoto", retry_after=0.2)
    h.tg.push_text(USER, USER, "a cat --seed 1")
    await h.tg.wait_for("editMessageText", status=429)
    limited_at = time.monotonic()
    h.fake.allow(1)
    await h.tg.wait_for("editMessageText")  # not before Telegram allows it again
    assert time.monotonic() - limited_at >= 0.45
    h.fake.release()
    await h.tg.wait_for("sendPhoto", status=429)
    photo = await h.tg.wait_for("sendPhoto")
    assert photo.files["photo"].data == (QUALITY + "a cat|1").encode()
    assert len([m for m in h.tg.sent(USER) if "photo" in m]) == 1


async def test_caption_is_cut_at_1024_utf16_units(h: Harness) -> None:
    await h.start()
    h.tg.push_text(USER, USER, "🐱 cat, " * 200 + "--seed 1")  # 🐱 is two UTF-16 units
    photo = await h.tg.wait_for("sendPhoto")
    caption = photo.params["caption"]
    assert len(caption.encode("utf-16-le")) // 2 <= 1024 and caption.endswith("…")
    assert caption.startswith(
        "Job 1 · Seed 1 · alpha · 4 steps\nUC: Low Quality + Bad Anatomy\n\n" + QUALITY + "🐱 cat, "
    )
    assert cut("x" * 1024) == "x" * 1024 and cut("x" * 1025) == "x" * 1023 + "…"
    assert cut("🐱" * 600, 10) == "🐱" * 4 + "…"


async def test_banned_words_and_nsfw_policy(h: Harness) -> None:
    engine = await h.start(banned_words=("gore",), nsfw_policy="spoiler")
    h.tg.push_text(USER, USER, "a GORE scene")
    assert await h.reply(USER) == "Error: This bot does not draw prompts with 'gore'."
    h.tg.push_text(USER, USER, "gorgeous, 1girl, (nsfw:1.1) --seed 1 --neg nsfw")
    photo = await h.tg.wait_for("sendPhoto")
    assert photo.params["has_spoiler"] is True
    h.tg.push_text(USER, USER, "1girl, smile --neg nsfw, nude")  # the negative is not judged
    safe = await h.tg.wait_for("sendPhoto")
    assert not safe.params.get("has_spoiler")
    assert len(h.fake.calls) == 2
    await h.stop()

    engine = await h.start(nsfw_policy="refuse")
    h.tg.push_text(USER, USER, "1girl, nude")
    refused = await h.reply(USER, lambda t: t.startswith("Error"))
    assert refused == "Error: This bot does not draw NSFW prompts ('nude')."
    assert engine.jobs() == [] and len(h.fake.calls) == 2


def test_word_matching() -> None:
    assert find_word("1girl, (nsfw:1.2)", ["nsfw"]) == "nsfw"
    assert find_word("cum_on_body", ["cum"]) == "cum"
    assert find_word("sussex landscape, Nudel", ["sex", "nude"]) is None
    assert find_word("一个女孩，裸体", ["裸体"]) == "裸体"
    assert find_word("anything", ["", "  "]) is None


async def test_allowed_chats(h: Harness) -> None:
    await h.start(allowed_chats=(USER,), admins=(f"telegram:{ADMIN}",))
    h.tg.push_text(OTHER, OTHER, "a cat")
    h.tg.push_text(GROUP, OTHER, "/draw a cat", chat_type="supergroup")
    h.tg.push_text(ADMIN, ADMIN, "/help")  # an admin's private chat always works
    assert (await h.reply(ADMIN)).startswith("Send me a prompt")
    h.tg.push_text(USER, USER, "/help")
    assert (await h.reply(USER)).startswith("Send me a prompt")
    assert h.tg.sent(OTHER) == [] and h.tg.sent(GROUP) == [] and h.fake.calls == []


# --- commands ------------------------------------------------------------------------------------


async def test_admin_commands_are_refused_for_users(h: Harness) -> None:
    engine = await h.start(admins=(f"telegram:{ADMIN}",))
    for command in ("/pause", "/model beta", "/vae x"):
        h.tg.push_text(USER, USER, command)
        assert await h.reply(USER) == "Only the bot's admins can do that."
    assert not engine.status().paused and engine.default_model == "alpha"

    h.tg.push_text(ADMIN, ADMIN, "/pause")
    assert (await h.reply(ADMIN)).startswith("Paused")
    assert engine.status().paused
    h.tg.push_text(ADMIN, ADMIN, "/resume")
    assert await h.reply(ADMIN) == "Drawing again."
    h.tg.push_text(ADMIN, ADMIN, "/model beta")
    assert await h.reply(ADMIN) == "Loading beta…"
    assert await h.reply(ADMIN) == "New jobs now draw with beta."
    assert engine.default_model == "beta"
    h.tg.push_text(ADMIN, ADMIN, "/model")
    status = await h.reply(ADMIN, lambda t: "Model:" in t)
    assert status.startswith("Model: beta")
    assert status.endswith("\nModels: alpha, beta, gamma")
    h.tg.push_text(ADMIN, ADMIN, "/model gama")
    assert await h.reply(ADMIN) == "Loading gama…"
    assert await h.reply(ADMIN) == (
        "Error: Unknown model 'gama'. Did you mean: gamma? Installed: alpha, beta, gamma."
    )
    h.tg.push_text(ADMIN, ADMIN, "/hypernetwork")  # the default model's, and what is there
    assert (await h.reply(ADMIN)).split("\n")[:3] == [
        "beta draws with VAE: Automatic · hypernetwork: none.",
        "VAEs: -",
        "Hypernetworks: -",
    ]

    # The command menus: everyone's in two languages; admins' chats add theirs.
    everyone = [c["command"] for c in h.tg.my_commands[("default", "")]]
    assert everyone == [
        "draw",
        "upscale",
        "help",
        "queue",
        "cancel",
        "settings",
        "history",
        "quota",
        "styles",
        "start",
    ]
    assert h.tg.my_commands[("default", "zh")][0]["description"].startswith("画图")
    admin = [c["command"] for c in h.tg.my_commands[("chat", "")]]
    assert admin[-7:] == ["model", "vae", "hypernetwork", "pause", "resume", "who", "delete"]


async def test_settings_are_saved_and_applied(h: Harness) -> None:
    await h.start()
    h.tg.push_text(USER, USER, '/settings steps=3 size=64x128 sampler=euler neg="bad hands" doc=on')
    saved = await h.reply(USER)
    assert saved == "Saved: size=64x128, steps=3, sampler=Euler, neg=bad hands, doc=on."
    assert h.store is not None
    assert h.store.get(f"telegram:{USER}") == UserPrefs(
        width=64,
        height=128,
        num_inference_steps=3,
        sampler="Euler",
        negative_prompt="bad hands",
        send_as_document=True,
    )
    h.tg.push_text(USER, USER, "a cat")
    await h.tg.wait_for("sendDocument")
    (request,) = h.fake.calls[0]
    assert (request.num_inference_steps, request.width, request.height) == (3, 64, 128)
    assert request.sampler == "Euler" and request.negative_prompt.endswith(", bad hands")

    for command, error in [
        ("/settings steps=abc", "Error: steps needs a whole number, not 'abc'."),
        ("/settings steps=99", "Error: steps 99 is not allowed: use 1 to 50."),
        ("/settings sampler=eulr", "Error: Unknown sampler 'eulr'. Did you mean 'Euler'?"),
        ("/settings colour=red", "Error: Unknown setting 'colour'. Known: size, steps, scale,"),
        ("/settings quality=maybe", "Error: quality needs on or off, not 'maybe'."),
    ]:
        h.tg.push_text(USER, USER, command)
        assert (await h.reply(USER)).startswith(error)
    h.tg.push_text(USER, USER, "/settings")
    shown = await h.reply(USER)
    assert "steps: 3 ✎\n" in shown and "size: 64x128 ✎\n" in shown and "scale: 11\n" in shown
    assert "doc: on ✎\n" in shown and "quality: on\n" in shown
    h.tg.push_text(USER, USER, "/settings steps=default lang=zh")
    assert await h.reply(USER) == "已保存：steps=4, lang=zh。"  # the model's 4 steps again
    h.tg.push_text(USER, USER, "/settings reset")
    assert await h.reply(USER) == "Your settings are back to the bot's defaults."
    assert h.store.get(f"telegram:{USER}") == UserPrefs()


def test_read_settings() -> None:
    assert read_settings("size=portrait cfg=7 uc=lq quality=off syntax=NAI lang=ZH") == {
        "width": 512,
        "height": 768,
        "guidance_scale": 7.0,
        "uc_preset": "Low Quality",
        "quality_tags": False,
        "syntax": "nai",
        "locale": "zh",
    }
    assert read_settings("size=default") == {"width": None, "height": None}
    with pytest.raises(InvalidRequest, match=r"Write steps=VALUE"):
        read_settings("steps")
    with pytest.raises(InvalidRequest, match=r"check your quotes"):
        read_settings('neg="lowres')


async def test_chinese_users_get_chinese_replies(h: Harness) -> None:
    await h.start()
    h.tg.push_text(USER, USER, "a cat --sede 5", language_code="zh-hans")
    assert (await h.reply(USER)).startswith("出错了：未知参数 --sede。你是不是想写 --seed？")
    h.tg.push_text(USER, USER, "/help", language_code="zh-hans")
    assert (await h.reply(USER)).startswith("发给我提示词就画")
    h.tg.push_text(USER, USER, "a cat --seed 8", language_code="zh")
    status = await h.tg.wait_for("sendMessage", lambda c: c.params["text"] in STATUS)
    assert status.params["text"] == "排队中…"
    photo = await h.tg.wait_for("sendPhoto")
    assert photo.params["caption"].startswith("任务 1 · 种子 8 · alpha · 4 步\n反向预设：")
    keyboard = photo.params["reply_markup"]["inline_keyboard"]
    assert [[b["text"] for b in row] for row in keyboard] == [
        ["🎲 换种子", "🔍 放大 ×2", "📄 原图"],
        ["🔀 微调变体", "🔀 大幅变体"],
    ]


async def test_history_lists_drawings_with_buttons(h: Harness) -> None:
    await h.start()
    for seed in (1, 2):
        h.tg.push_text(USER, USER, f"a cat --seed {seed}")
        await h.tg.wait_for("sendPhoto")
    h.tg.push_text(USER, USER, "/history")
    listing = await h.tg.wait_for("sendMessage", lambda c: "job 2" in c.params["text"])
    assert listing.params["text"] == (
        f"job 2 · seed 2 · 64x64 · {QUALITY}a cat\njob 1 · seed 1 · 64x64 · {QUALITY}a cat"
    )
    assert buttons(listing) == ["d:2:0", "r:2", "d:1:0", "r:1"]


async def test_preview_replaces_the_status_text_in_private_chats(
    tg: FakeTelegram, tmp_path: Path
) -> None:
    h = Harness(tg, tmp_path, fake=FakeGenerate(latents=True))
    await h.start(queue={"preview_every_steps": 1})
    try:
        h.fake.hold()
        tg.push_text(USER, USER, "a cat --seed 1")
        await tg.wait_for("sendMessage")
        (text_status,) = tg.sent(USER)
        h.fake.allow(1)
        preview = await tg.wait_for("sendPhoto")  # the status becomes a photo
        assert preview.files["photo"].data.startswith(b"\x89PNG")
        assert preview.params["caption"].startswith("Drawing… step 1/4")
        assert buttons(preview) == ["c:1"]
        await tg.wait_for(
            "deleteMessage", lambda c: c.params["message_id"] == text_status["message_id"]
        )
        h.fake.allow(1)
        edit = await tg.wait_for("editMessageMedia")
        assert edit.params["media"]["caption"].startswith("Drawing… step 2/4")
        h.fake.release()
        result = await tg.wait_for("sendPhoto", lambda c: c.params["caption"].startswith("Job"))
        assert result.files["photo"].data == (QUALITY + "a cat|1").encode()
        await tg.wait_for("deleteMessage")  # the status photo
        [shown] = [m["caption"].split("\n")[0] for m in tg.sent(USER)]
        assert shown == "Job 1 · Seed 1 · alpha · 4 steps"
    finally:
        await h.stop()


def test_retry_after_is_read_as_int_or_timedelta(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTB_TIMEDELTA", "true")
    assert retry_seconds(RetryAfter(timedelta(seconds=1.5))) == 1.5
    monkeypatch.delenv("PTB_TIMEDELTA")  # PTB 22's default: an int, with a deprecation warning
    with pytest.warns(PTBDeprecationWarning):
        error = RetryAfter(3)
        assert retry_seconds(error) == 3.0


def test_file_url_is_derived_from_the_api_url() -> None:
    assert file_url("https://api.telegram.org/bot") == "https://api.telegram.org/file/bot"
    assert file_url("http://127.0.0.1:8081/bot/") == "http://127.0.0.1:8081/file/bot"


# --- the real demo model -------------------------------------------------------------------------


@pytest.mark.slow
async def test_demo_model_photo_carries_the_infotext(
    tg: FakeTelegram, tmp_path: Path, demo_models_dir: Path
) -> None:
    from engine.device import DeviceOptions
    from engine.generate import generate
    from engine.models import ModelRegistry

    registry = ModelRegistry(demo_models_dir)
    config = QueueConfig(
        journal=str(tmp_path / "journal.sqlite3"),
        results_dir=str(tmp_path / "results"),
        warm_up=False,
    )
    engine: Engine[Any] = Engine(
        config,
        registry=registry,
        load=lambda name: registry.load(name, DeviceOptions(device="cpu")),
        generate=generate,
    )
    settings = Settings(telegram=TelegramSettings(send_as_document=True), root=tmp_path)
    store = UserSettingsStore(":memory:")
    tasks = [
        asyncio.create_task(engine.run()),
        asyncio.create_task(run_telegram(engine, settings, store, tg.token)),
    ]
    try:
        tg.push_text(
            USER, USER, "1girl, smile --size 64x64 --steps 2 --seed 7\nNegative prompt: lowres"
        )
        photo = await tg.wait_for("sendPhoto", timeout=9)
        document = await tg.wait_for("sendDocument")
    finally:
        tasks[1].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tasks[1]
        await engine.close(grace_s=0)
        with contextlib.suppress(asyncio.CancelledError):
            await tasks[0]
        store.close()
    data = document.files["document"].data
    assert photo.files["photo"].data == data
    image = Image.open(io.BytesIO(data))
    assert image.size == (64, 64)
    infotext = image.info["parameters"]
    assert infotext.startswith(QUALITY + "1girl, smile\nNegative prompt: lowres, ")
    assert (
        "Steps: 2, Sampler: Euler a, Schedule type: Automatic, CFG scale: 11, Seed: 7, Size: 64x64"
    ) in infotext
    assert document.params["caption"] == infotext
    assert photo.params["caption"] == (
        "Job 1 · Seed 7 · aidraw-demo · 2 steps\nUC: Low Quality + Bad Anatomy\n\n"
        f"{QUALITY}1girl, smile\nNegative prompt: lowres"
    )


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_admin_sets_the_demo_models_vae_and_the_next_drawing_uses_it(
    tg: FakeTelegram, tmp_path: Path, demo_models_dir: Path
) -> None:
    from tests.demo_addons import DEMO, VAE_FILE, addon_models_dir, demo_engine, infotext, running

    engine = demo_engine(
        addon_models_dir(demo_models_dir, tmp_path), tmp_path, admins=(f"telegram:{ADMIN}",)
    )
    settings = Settings(telegram=TelegramSettings(send_as_document=True), root=tmp_path)
    store = UserSettingsStore(":memory:")

    async def reply(chat_id: int, timeout: float = 5.0) -> str:  # noqa: ASYNC109
        call = await tg.wait_for(
            "sendMessage", lambda c: c.params["chat_id"] == chat_id, timeout=timeout
        )
        return str(call.params["text"])

    async with running(engine):
        bot = asyncio.create_task(run_telegram(engine, settings, store, tg.token))
        try:
            tg.push_text(USER, USER, "/vae demo-vae")
            assert await reply(USER) == "Only the bot's admins can do that."

            tg.push_text(ADMIN, ADMIN, "/vae")
            shown = (await reply(ADMIN)).split("\n")
            assert shown[:3] == [
                f"{DEMO} draws with VAE: None (the model's own) · hypernetwork: none.",
                f"VAEs: {VAE_FILE}",
                "Hypernetworks: -",
            ]
            assert shown[3].startswith("Change: /vae NAME")

            tg.push_text(ADMIN, ADMIN, "/vae demo-vea")
            assert await reply(ADMIN) == (f"Loading {DEMO} and drawing a test image with demo-vea…")
            refused = await reply(ADMIN, timeout=30)
            assert refused.startswith("Error: Unknown VAE 'demo-vea'.")
            assert refused.endswith(f"Installed: {VAE_FILE}.")
            tg.push_text(ADMIN, ADMIN, "/hypernetwork anime:0.8")
            await reply(ADMIN)  # loading…
            refused = await reply(ADMIN, timeout=30)
            assert refused.startswith("Error: Unknown hypernetwork 'anime'.")
            assert engine.model_info(DEMO).defaults.vae == "None"

            tg.push_text(ADMIN, ADMIN, "/vae demo-vae")
            await reply(ADMIN)  # loading…
            confirmed = await reply(ADMIN, timeout=30)
            assert confirmed.startswith(f"New jobs on {DEMO} now draw with VAE: demo-vae")
            assert confirmed.endswith(" · hypernetwork: none.")

            tg.push_text(USER, USER, "1girl --size 64x64 --steps 2 --seed 7")
            document = await tg.wait_for("sendDocument", timeout=30)
        finally:
            bot.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await bot
            store.close()
    assert f"VAE: {VAE_FILE}" in infotext(document.files["document"].data)
