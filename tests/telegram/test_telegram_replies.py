"""What a Telegram chat sees of a job, through the real PTB client and the fake Bot API: the
caption, albums, the two Vary buttons, the status message with previews, the size warning;
and what /settings shows and refuses (bot/telegram/replies.py, results.py, captions.py,
markup.py, settings_text.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from bot.settings import BotSettings
from engine.infotext import format_number
from engine.request import GenerationResult
from engine.sampling.samplers import V19_SAMPLERS
from tests.engine_fakes import FakeGenerate
from tests.fakes import FakeTelegram
from tests.telegram.harness import OTHER, QUALITY, USER, Harness, buttons, eventually

pytestmark = pytest.mark.timeout(10)

SUBSEED = 4242  # the variation seed VaryingGenerate "draws"


class VaryingGenerate(FakeGenerate):
    """FakeGenerate whose infotexts have A1111's settings line, with the variation seed and
    strength when the request asks for a variation (as generate() writes them)."""

    def __call__(self, *args: Any, **kwargs: Any) -> list[GenerationResult]:
        return [
            dataclasses.replace(r, infotext=_infotext(r)) for r in super().__call__(*args, **kwargs)
        ]


def _infotext(result: GenerationResult) -> str:
    r = result.request
    line = f"Steps: {r.num_inference_steps}, Seed: {result.seed}"
    if r.subseed_strength:
        strength = format_number(r.subseed_strength)
        line += f", Variation seed: {SUBSEED}, Variation seed strength: {strength}"
    return f"{r.prompt}\n{line}"


def labels(call: Any) -> list[list[str]]:
    return [[b["text"] for b in row] for row in call.params["reply_markup"]["inline_keyboard"]]


def media_files(call: Any) -> list[Any]:
    """The uploads of a sendMediaGroup, in the album's order."""
    return [call.files[m["media"].removeprefix("attach://")] for m in call.params["media"]]


# --- variations ----------------------------------------------------------------------------------


async def test_vary_subtle_and_strong_use_their_strengths_and_the_caption_says_so(
    tg: FakeTelegram, tmp_path: Path
) -> None:
    h = Harness(tg, tmp_path, fake=VaryingGenerate())
    await h.start()
    try:
        tg.push_text(USER, USER, "a cat --seed 9")
        photo = await tg.wait_for("sendPhoto")
        assert labels(photo) == [
            ["🎲 Reroll", "🔍 Upscale ×2", "📄 PNG"],
            ["🔀 Vary (subtle)", "🔀 Vary (strong)"],
        ]
        assert buttons(photo) == ["r:1", "u:1:0", "d:1:0", "v:1:0", "v:1:0:s"]
        (result,) = [m for m in tg.sent(USER) if "photo" in m]
        bot = BotSettings()
        # "v:1:0" is also what the one 🔀 Variations button sent: in old chats it is subtle.
        for job, data, strength in [
            (2, "v:1:0", bot.variation_strength),
            (3, "v:1:0:s", bot.strong_variation_strength),
        ]:
            tg.push_callback(USER, OTHER, result["message_id"], data)
            varied = await tg.wait_for("sendPhoto")
            (request,) = h.fake.calls[-1]
            assert (request.seed, request.subseed_strength) == (9, strength)
            assert varied.params["caption"].split("\n")[0] == (
                f"Job {job} · Seed 9 · alpha · 4 steps · variation seed {SUBSEED} at "
                f"{format_number(strength)}"
            )
        assert bot.variation_strength < bot.strong_variation_strength
    finally:
        await h.stop()


# --- captions and albums -------------------------------------------------------------------------


async def test_the_caption_leads_with_the_job_and_names_the_uc_preset(h: Harness) -> None:
    await h.start()
    h.tg.push_text(USER, USER, "a cat --seed 3 --uc lq --neg blurry hands")
    photo = await h.tg.wait_for("sendPhoto")
    assert photo.params["caption"] == (
        "Job 1 · Seed 3 · alpha · 4 steps\nUC: Low Quality\n\n"
        f"{QUALITY}a cat\nNegative prompt: blurry hands"
    )
    h.tg.push_text(USER, USER, "a dog --seed 4 --uc none")  # no preset, no negative: no lines
    photo = await h.tg.wait_for("sendPhoto")
    assert photo.params["caption"] == f"Job 2 · Seed 4 · alpha · 4 steps\n\n{QUALITY}a dog"

    # Long prompts: the head stays whole, the prompt is cut at the end; the preset's 200
    # characters are not in the caption at all.
    h.tg.push_text(USER, USER, "long hair, " * 100 + "--seed 5 --neg " + "bad, " * 100)
    photo = await h.tg.wait_for("sendPhoto")
    caption = photo.params["caption"]
    assert caption.startswith(
        "Job 3 · Seed 5 · alpha · 4 steps\nUC: Low Quality + Bad Anatomy\n\n"
        f"{QUALITY}long hair, long hair"
    )
    assert caption.endswith("…") and len(caption.encode("utf-16-le")) // 2 == 1024
    assert "bad anatomy" not in caption


async def test_several_pictures_come_as_one_album_with_the_buttons_right_after(
    h: Harness,
) -> None:
    await h.start(send_as_document=True)
    prompt = h.tg.push_text(USER, USER, "a cat --seed 10 --n 3")
    album = await h.tg.wait_for("sendMediaGroup")
    keys = await h.tg.wait_for("sendMessage", lambda c: bool(buttons(c)))
    files = await h.tg.wait_for("sendMediaGroup")
    await h.tg.wait_for("deleteMessage")  # the status, once the pictures are there
    assert h.tg.count("sendPhoto") == 0 and h.tg.count("sendDocument") == 0

    media = album.params["media"]
    assert [m["type"] for m in media] == ["photo"] * 3
    assert [f.data for f in media_files(album)] == [
        f"{QUALITY}a cat|{seed}".encode() for seed in (10, 11, 12)
    ]
    assert media[0]["caption"].startswith("Job 1 · Seed 10, 11, 12 · alpha · 4 steps\nUC: ")
    assert [m.get("caption") for m in media[1:]] == [None, None]
    assert album.params["reply_parameters"]["message_id"] == prompt["message"]["message_id"]

    # The buttons: the next message, answering the album; one row per picture, numbered.
    chat = h.tg.sent(USER)
    pictures = [m for m in chat if "photo" in m]
    assert len(pictures) == 3 and len({m["media_group_id"] for m in pictures}) == 1
    (message,) = [m for m in chat if "text" in m]
    assert message["message_id"] == pictures[-1]["message_id"] + 1
    assert keys.params["reply_parameters"]["message_id"] == pictures[0]["message_id"]
    assert message["text"] == "Job 1, pictures 1–3, numbered in the album's order:"
    assert labels(keys) == [
        ["🎲 Reroll"],
        ["1 🔀 subtle", "1 🔀 strong", "1 🔍 ×2"],
        ["2 🔀 subtle", "2 🔀 strong", "2 🔍 ×2"],
        ["3 🔀 subtle", "3 🔀 strong", "3 🔍 ×2"],
    ]
    assert buttons(keys) == [
        "r:1",
        *("v:1:0", "v:1:0:s", "u:1:0"),
        *("v:1:1", "v:1:1:s", "u:1:1"),
        *("v:1:2", "v:1:2:s", "u:1:2"),
    ]

    # The original PNGs (doc=on): one album of files after the buttons.
    assert [m["type"] for m in files.params["media"]] == ["document"] * 3
    assert [f.filename for f in media_files(files)] == [
        f"aidraw-1-{seed}.png" for seed in (10, 11, 12)
    ]
    assert files.params["reply_parameters"]["message_id"] == pictures[0]["message_id"]

    # A picture's own button varies that picture.
    h.tg.push_callback(USER, OTHER, message["message_id"], "v:1:2:s")
    await h.tg.wait_for("sendMediaGroup")
    request = h.fake.calls[-1][0]
    assert (request.seed, request.subseed_strength) == (12, BotSettings().strong_variation_strength)


async def test_an_album_telegram_refuses_comes_as_files_with_its_buttons(h: Harness) -> None:
    engine = await h.start()
    h.tg.fail_next("sendMediaGroup", 400, "Bad Request: PHOTO_INVALID_DIMENSIONS")
    h.tg.push_text(USER, USER, "a cat --seed 10 --n 2")
    files = await h.tg.wait_for("sendMediaGroup")
    keys = await h.tg.wait_for("sendMessage", lambda c: bool(buttons(c)))
    assert [m["type"] for m in files.params["media"]] == ["document"] * 2
    assert buttons(keys) == [
        "r:1",
        *("v:1:0", "v:1:0:s", "u:1:0", "d:1:0"),
        *("v:1:1", "v:1:1:s", "u:1:1", "d:1:1"),
    ]
    assert labels(keys)[1] == ["1 🔀 subtle", "1 🔀 strong", "1 🔍 ×2", "1 📄 PNG"]
    await eventually(lambda: (r := engine.record(1)) is not None and r.delivered)
    assert h.tg.count("sendMediaGroup", status=None) == 2  # the refused album, then the files


# --- the status message --------------------------------------------------------------------------


async def test_a_status_with_previews_is_sent_anew_at_most_once(
    tg: FakeTelegram, tmp_path: Path
) -> None:
    h = Harness(tg, tmp_path, fake=FakeGenerate(latents=True))
    engine = await h.start(queue={"preview_every_steps": 1})
    kinds = ("sendMessage", "sendPhoto", "deleteMessage")
    try:
        # Cancelled with a preview showing: the photo stays, with the last words as caption
        # (it used to be deleted for a text message: the status flickered back).
        h.fake.hold()
        tg.push_text(USER, USER, "a cat --seed 1")
        h.fake.allow(1)
        await tg.wait_for("sendPhoto")
        h.fake.allow(1)
        await tg.wait_for("editMessageMedia")
        (status,) = [m for m in tg.sent(USER) if "photo" in m]
        tg.push_callback(USER, USER, status["message_id"], "c:1")
        last = await tg.wait_for(
            "editMessageCaption", lambda c: c.params["caption"] == "Cancelled."
        )
        assert "reply_markup" not in last.params
        await eventually(lambda: (r := engine.record(1)) is not None and r.delivered)
        assert [c.method for c in tg.calls if c.method in kinds] == [
            "sendMessage",  # "Queued…"
            "sendPhoto",  # the first preview
            "deleteMessage",  # the text it replaced; then only edits
        ]
        assert tg.messages[(USER, status["message_id"])]["caption"] == "Cancelled."

        # Drawn to the end: text, one photo (the text goes), the result (the photo goes).
        before = len(tg.calls)
        tg.push_text(USER, USER, "a dog --seed 2")
        h.fake.allow(1)
        await tg.wait_for("sendPhoto")
        h.fake.allow(1)
        await tg.wait_for("editMessageMedia")
        h.fake.release()
        await tg.wait_for("sendPhoto", lambda c: c.params["caption"].startswith("Job 2"))
        await eventually(lambda: (r := engine.record(2)) is not None and r.delivered)
        # Both deletes of this job (the text, then the photo after the result), not the earlier
        # job's: wait_for would hand that one out first.
        await eventually(lambda: sum(c.method == "deleteMessage" for c in tg.calls[before:]) == 2)
        assert [c.method for c in tg.calls[before:] if c.method in kinds] == [
            "sendMessage",
            "sendPhoto",
            "deleteMessage",
            "sendPhoto",
            "deleteMessage",
        ]
    finally:
        await h.stop()


async def test_a_preview_telegram_refuses_leaves_one_text_status(
    tg: FakeTelegram, tmp_path: Path
) -> None:
    h = Harness(tg, tmp_path, fake=FakeGenerate(latents=True))
    engine = await h.start(queue={"preview_every_steps": 1})
    try:
        h.fake.hold()
        tg.fail_next("sendPhoto", 400, "Bad Request: PHOTO_INVALID_DIMENSIONS")
        tg.push_text(USER, USER, "a cat --seed 1")
        h.fake.allow(1)
        await tg.wait_for("sendPhoto", status=400)
        h.fake.allow(1)
        await tg.wait_for("editMessageText", lambda c: "step 2/4" in c.params["text"])
        h.fake.release()
        await tg.wait_for("sendPhoto")  # the result
        await eventually(lambda: (r := engine.record(1)) is not None and r.delivered)
        await tg.wait_for("deleteMessage")
        # One status message all along (no second one left behind), and only the result.
        assert tg.count("sendMessage") == 1 and tg.count("sendPhoto") == 1
        assert [("photo" in m, "text" in m) for m in tg.sent(USER)] == [(True, False)]
    finally:
        await h.stop()


async def test_a_size_far_above_the_models_own_is_flagged_with_the_queued_status(
    h: Harness,
) -> None:
    engine = await h.start(paused=True)
    h.tg.push_text(USER, USER, "a cat --seed 1 --size 256x256")
    status = await h.tg.wait_for("editMessageText", lambda c: "Queued: #1" in c.params["text"])
    queued, warning = status.params["text"].split("\n")
    assert queued.startswith("Queued: #1 in line")
    assert warning.startswith("Heads-up: 256x256 is 16 times this model's own 64x64.")
    h.tg.push_text(OTHER, OTHER, "a cat --size 256x256", language_code="zh")
    status = await h.tg.wait_for("editMessageText", lambda c: "第 2 位" in c.params["text"])
    assert (
        status.params["text"]
        .split("\n")[1]
        .startswith("提示：256x256 是此模型原生尺寸 64x64 的 16 倍")
    )
    h.tg.push_text(USER, USER, "a cat --size 128x128")  # 4 times: fine
    status = await h.tg.wait_for("editMessageText", lambda c: "Queued: #3" in c.params["text"])
    assert "\n" not in status.params["text"]

    engine.resume()  # the warning is for before the drawing: not in the caption
    photo = await h.tg.wait_for("sendPhoto", lambda c: c.params["chat_id"] == USER)
    assert "Heads-up" not in photo.params["caption"]


# --- /settings -----------------------------------------------------------------------------------


async def test_settings_show_the_values_a_prompt_gets_now(h: Harness) -> None:
    await h.start()
    h.tg.push_text(USER, USER, "/settings")
    shown = (await h.reply(USER)).split("\n\n")[0].split("\n")
    assert shown[1:] == [
        "size: 64x64",  # the model's own
        "steps: 4",
        "scale: 11",
        "sampler: Euler a",
        "schedule: Automatic",  # what A1111 v1.9 calls Euler a's own schedule
        "neg: (none)",
        "uc: Low Quality + Bad Anatomy",
        "quality: on",
        "syntax: a1111",
        "doc: off",
        "lang: en",
    ]
    assert "default" not in "\n".join(shown)

    h.tg.push_text(USER, USER, "/settings steps=3 neg=“bad hands” lang=zh")  # a phone's quotes
    assert await h.reply(USER) == "已保存：steps=3, neg=bad hands, lang=zh。"
    h.tg.push_text(USER, USER, "/settings")
    shown = (await h.reply(USER)).split("\n\n")[0].split("\n")
    assert shown[0] == "你的设置（✎ = 你保存的，其余为机器人的）："
    assert {"steps: 3 ✎", "neg: bad hands ✎", "lang: zh ✎", "size: 64x64"} <= set(shown)
    h.tg.push_text(USER, USER, "/settings neg=default")
    assert await h.reply(USER) == "已保存：neg=（无）。"


async def test_a_schedule_type_is_a_setting_and_help_lists_the_samplers_in_groups(
    h: Harness,
) -> None:
    await h.start()
    h.tg.push_text(USER, USER, '/settings sampler="DPM++ 2M" schedule=karras')
    assert await h.reply(USER) == "Saved: sampler=DPM++ 2M, schedule=Karras."
    h.tg.push_text(USER, USER, "/settings")
    assert "schedule: Karras ✎" in (await h.reply(USER)).splitlines()
    h.tg.push_text(USER, USER, "/settings schedule=default")  # "DPM++ 2M" alone: uniform
    assert await h.reply(USER) == "Saved: schedule=Uniform."
    h.tg.push_text(USER, USER, "/settings schedule=beta")
    assert (await h.reply(USER)).startswith("Error: Unknown schedule type 'beta'.")

    h.tg.push_text(USER, USER, "/help")
    said = await h.reply(USER)
    assert "--sampler NAME, --schedule TYPE," in said
    assert "\nSamplers — common: Euler a, Euler, DPM++ 2M, " in said
    assert all(name in said for name in V19_SAMPLERS)
    assert "--schedule TYPE: Automatic, Uniform, Karras, " in said


async def test_unknown_settings_and_commands_are_answered_clearly_in_both_languages(
    h: Harness,
) -> None:
    await h.start()
    known = "size, steps, scale, sampler, schedule, neg, uc, quality, syntax, doc, lang"
    zh_known = known.replace(", ", "、")
    cases = [
        (
            "/settings stpes=20",
            f"Error: Unknown setting 'stpes'. Did you mean steps? Known: {known}.",
            f"出错了：未知设置 'stpes'。你是不是想写 steps？可用的设置：{zh_known}。",
        ),
        (
            "/settings colour=red",
            f"Error: Unknown setting 'colour'. Known: {known}.",
            f"出错了：未知设置 'colour'。可用的设置：{zh_known}。",
        ),
        (
            "/settings sampler",
            'Error: Write sampler=VALUE, e.g. sampler="DPM++ 2M Karras".',
            '出错了：请写 sampler=值，例如 sampler="DPM++ 2M Karras"。',
        ),
        (
            "/settings quality=maybe",
            "Error: quality needs on or off, not 'maybe'.",
            "出错了：quality 需要 on、off 之一，而不是 'maybe'。",
        ),
        (
            "/settings lang=fr",
            "Error: lang needs en or zh, not 'fr'.",
            "出错了：lang 需要 en、zh 之一，而不是 'fr'。",
        ),
        (
            '/settings neg="lowres',
            "Error: Cannot read the settings: No closing quotation (check your quotes).",
            "出错了：无法读取设置：引号没有闭合（请检查引号）。",
        ),
        (
            "/cancel soon",
            "Error: Write /cancel (your newest job), /cancel JOB (its number, e.g. 12) or "
            "/cancel all.",
            "出错了：请写 /cancel、/cancel 12、/cancel all：取消你最新的任务、某个编号的任务或你的"
            "全部任务。",
        ),
    ]
    cases.append(
        (
            "/colour red",  # no such command: in a private chat it is said, not ignored
            "There is no /colour command. Mine: /draw, /queue, /cancel, /settings, /history, "
            "/upscale, /help; any other text is a prompt.",
            "没有 /colour 这个命令。可用命令：/draw、/queue、/cancel、/settings、/history、"
            "/upscale、/help；其他文字都会当作提示词来画。",
        )
    )
    for command, en, zh in cases:
        h.tg.push_text(USER, USER, command)
        assert await h.reply(USER) == en
        h.tg.push_text(OTHER, OTHER, command, language_code="zh")
        assert await h.reply(OTHER) == zh
