"""The Discord commands besides /draw end to end (tests/discord/world.py): /settings,
/queue, /cancel, /history, /help and the admin commands."""

from __future__ import annotations

from typing import Any

import pytest

from bot.discord.draw import help_text
from bot.messages import LOCALES, MESSAGES
from bot.settings import BotSettings
from engine.sampling.samplers import V19_SAMPLERS
from engine.sampling.schedules import SCHEDULE_LABELS
from tests.discord.world import (
    ADMIN,
    ADMIN_ID,
    OTHER_ID,
    USER,
    World,
    final,
)
from tests.fakes import FakeDiscord
from tests.fakes.discord import ADMINISTRATOR

pytestmark = pytest.mark.timeout(10)


# --- other commands ------------------------------------------------------------------------------


async def test_settings_are_saved_and_used_by_the_next_draw(world: World, dc: FakeDiscord) -> None:
    engine = await world.start()
    options = {"steps": 7, "sampler": "DPM++ 2M", "size": "512x512", "negative": "lowres"}
    saved = await dc.slash("settings", options | {"quality_tags": False})
    answer = await dc.wait_for("interaction_callback", dc.of(saved))
    assert answer.payload["data"]["flags"] == 64
    assert "steps = 7 ✎" in answer.payload["data"]["content"].splitlines()

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
    assert answer.payload["data"]["content"].startswith("Your saved settings are cleared.")
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


# A1111 v1.9.4's sampler dropdown: the most /draw's fixed choices and the help texts will list.
A1111_V19_SAMPLERS = (
    *("DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE"),
    *("Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM fast", "DPM adaptive"),
    *("Restart", "DDIM", "PLMS", "UniPC", "LCM"),
)


async def test_draw_and_settings_offer_a1111_v19s_samplers_and_schedule_types(
    world: World, dc: FakeDiscord
) -> None:
    """Fixed choices within Discord's 25 (the fake refuses more); an old name and a saved
    schedule type still work through the prompt's flags."""
    engine = await world.start()
    await dc.wait_for("commands_put")
    commands = {c["name"]: c for c in dc.commands}
    for name in ("draw", "settings"):
        options = {o["name"]: o for o in commands[name]["options"]}
        assert [c["value"] for c in options["sampler"]["choices"]] == list(V19_SAMPLERS)
        assert [c["value"] for c in options["schedule"]["choices"]] == list(SCHEDULE_LABELS)
        zh = options["schedule"]["description_localizations"]["zh-CN"]
        assert zh == MESSAGES["discord_opt_schedule"]["zh"]
    assert set(V19_SAMPLERS) <= set(A1111_V19_SAMPLERS) and len(A1111_V19_SAMPLERS) <= 25
    assert V19_SAMPLERS[:3] == ("Euler a", "Euler", "DPM++ 2M")  # the common ones first

    def pair(job: int) -> tuple[str | None, str | None]:
        record = engine.record(job)
        assert record is not None
        return record.request.sampler, record.request.schedule_type

    draws = [
        {"sampler": "DPM++ 2M", "schedule": "Karras"},
        {"sampler": "DPM++ 2M"},  # as before A1111 v1.9: uniform
        {"prompt": "a cat --sampler 'DPM++ 2M Karras'"},  # an old name, as a flag
        {"schedule": "SGM Uniform"},
    ]
    for options in draws:
        await final(dc, await dc.slash("draw", {"prompt": "a cat"} | options))
    assert [pair(job) for job in (1, 2, 3, 4)] == [
        ("DPM++ 2M", "Karras"),
        ("DPM++ 2M", None),
        ("DPM++ 2M Karras", None),
        ("Euler a", "SGM Uniform"),
    ]

    saved = await dc.slash("settings", {"sampler": "DPM++ 2M", "schedule": "Exponential"})
    lines = (await dc.wait_for("interaction_callback", dc.of(saved))).payload["data"]["content"]
    assert {"sampler = DPM++ 2M ✎", "schedule = Exponential ✎"} <= set(lines.splitlines())
    await final(dc, await dc.slash("draw", {"prompt": "a dog"}))
    # An old name carries its own schedule: the saved schedule type does not replace it.
    await final(dc, await dc.slash("draw", {"prompt": "a dog --sampler 'DPM++ 2M Karras'"}))
    assert [pair(5), pair(6)] == [("DPM++ 2M", "Exponential"), ("DPM++ 2M Karras", None)]
    reset = await dc.slash("settings", {"reset": True, "sampler": "DPM++ 2M"})
    lines = (await dc.wait_for("interaction_callback", dc.of(reset))).payload["data"]["content"]
    assert "schedule = Uniform" in lines.splitlines()  # what "DPM++ 2M" alone means


def test_help_fits_one_message_with_every_a1111_v19_sampler() -> None:
    """/help lists the samplers in groups; it must stay one message once every v1.9 row is in."""
    room = sum(len(name) + 2 for name in A1111_V19_SAMPLERS if name not in V19_SAMPLERS)
    for locale in LOCALES:
        said = help_text(locale, BotSettings())
        assert len(said) + room <= 2000, (locale, len(said), room)
        assert all(name in said for name in V19_SAMPLERS) and "--schedule" in said


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


async def test_settings_show_the_values_draw_uses_never_default(
    world: World, dc: FakeDiscord
) -> None:
    await world.start()

    async def shown(options: dict[str, Any] | None = None, locale: str = "en-US") -> list[str]:
        ask = await dc.slash("settings", options, locale=locale)
        answer = await dc.wait_for("interaction_callback", dc.of(ask))
        content = answer.payload["data"]["content"]
        assert "default" not in content.lower() and "默认" not in content
        return content.splitlines()

    lines = await shown()
    assert lines == [
        "What /draw uses for you (✎ = saved by you):",
        "size = 64x64",  # the model's own (tests/engine_fakes.py), over [defaults]' 512x768
        "steps = 4",
        "scale = 11",
        "sampler = Euler a",
        "schedule = Automatic",  # what A1111 v1.9 calls Euler a's own schedule
        "negative = (none)",
        "uc_preset = Low Quality + Bad Anatomy",
        "quality_tags = True",
        "syntax = a1111",
        "language = en",
        "Quota: 0 image(s) in the last 24 hours of no limit.",  # this place's, and today's use
    ]
    lines = await shown({"steps": 7, "negative": "lowres", "language": "zh"})
    assert lines[0] == "/draw 对你使用的设置（✎ = 你保存的）："
    assert "steps = 7 ✎" in lines and "negative = lowres ✎" in lines
    assert "language = zh ✎" in lines and "size = 64x64" in lines
    lines = await shown({"reset": True}, locale="zh-CN")
    assert lines[0] == "已清除你保存的设置。"
    assert "steps = 4" in lines and "negative = （无）" in lines and "language = zh" in lines
    assert not any(line.endswith("✎") for line in lines)


async def test_help_lists_the_flags_and_buttons_in_the_users_language(
    world: World, dc: FakeDiscord
) -> None:
    await world.start()
    texts = {}
    for locale in ("en-US", "zh-CN"):
        ask = await dc.slash("help", locale=locale)
        answer = await dc.wait_for("interaction_callback", dc.of(ask))
        texts[locale] = answer.payload["data"]["content"]
        assert len(texts[locale]) <= 2000
    en, zh = texts["en-US"], texts["zh-CN"]
    assert "`--steps` (denoising steps)" in en and "`--seed` (seed (-1 = random))" in en
    assert "Vary (subtle)" in en and "Vary (strong)" in en
    assert "`--seed`（种子（-1 = 随机））、`--steps`（采样步数）、" in zh
    assert "`--uc`（反向预设：lqba、lq、none 之一）" in zh
    assert "微调变体" in zh and "大幅变体" in zh
    assert "denoising" not in zh and "random" not in zh and "preset" not in zh
