"""Telegram end to end with the moderation layer (bot/policy.py): a stub image check that flags
every result drives the spoiler and withheld paths per chat; /quota; the moderation log's
/who and an admin's /delete; cooldowns across a restart; /styles."""

from __future__ import annotations

from pathlib import Path

from bot.modlog import ModLog
from bot.places import PlaceRules
from bot.settings import ModerationSettings
from tests.classifier_stub import FLAG_ALL
from tests.telegram.harness import ADMIN, GROUP, USER, Harness, eventually

FLAGGING = ModerationSettings(image_check=FLAG_ALL)
WITHHELD = (
    "Job 1: the image check flagged the result (FEMALE_BREAST_EXPOSED, 0.91), and NSFW "
    "images are not shown here."
)


async def test_a_flagged_result_is_spoilered_or_withheld_by_chat(h: Harness) -> None:
    refusing = {f"telegram:chat:{GROUP}": PlaceRules(nsfw="refuse")}
    await h.start(moderation=FLAGGING, places=refusing)
    try:
        h.tg.push_text(GROUP, USER, "/draw a cat --seed 1", chat_type="supergroup")
        withheld = await h.tg.wait_for(
            "editMessageText",
            lambda c: c.params["chat_id"] == GROUP and "flagged" in c.params["text"],
        )
        assert withheld.params["text"] == WITHHELD
        assert h.tg.count("sendPhoto") == 0

        h.tg.push_text(USER, USER, "a cat --seed 2")  # a private chat: spoiler (the default)
        photo = await h.tg.wait_for("sendPhoto", lambda c: c.params["chat_id"] == USER)
        assert photo.params["has_spoiler"] is True
        assert "Image check: FEMALE_BREAST_EXPOSED (0.91)." in photo.params["caption"]
    finally:
        await h.stop()


async def test_who_and_delete_find_and_remove_a_result(h: Harness) -> None:
    engine = await h.start(admins=(f"telegram:{ADMIN}",))
    try:
        h.tg.push_text(GROUP, USER, "/draw a lighthouse --seed 3", chat_type="supergroup")
        photo = await h.tg.wait_for("sendPhoto", lambda c: c.params["chat_id"] == GROUP)
        result = next(m for m in h.tg.sent(GROUP) if "photo" in m)
        log = ModLog(h.tmp_path / "modlog.sqlite3", days=30)  # the bot's, read beside it
        await eventually(lambda: log.get(1) is not None)
        log.close()
        record = engine.record(1)
        assert record is not None and record.delivered
        stored = Path(record.images[0].path)

        h.tg.push_text(GROUP, USER, "/who", chat_type="supergroup", reply_to=result["message_id"])
        assert await h.reply(GROUP, lambda t: "admins" in t) == "Only the bot's admins can do that."
        h.tg.push_text(GROUP, ADMIN, "/who", chat_type="supergroup", reply_to=result["message_id"])
        said = await h.reply(GROUP, lambda t: t.startswith("Job 1 by"))
        assert said.startswith(f"Job 1 by telegram:{USER} in telegram:chat:{GROUP} at ")
        assert "a lighthouse'" in said and "(image check: unchecked 0.00, send)" in said
        assert photo.params["has_spoiler"] in (None, False)

        h.tg.push_text(
            GROUP, ADMIN, "/delete", chat_type="supergroup", reply_to=result["message_id"]
        )
        assert await h.reply(GROUP, lambda t: "deleted" in t) == (
            "Job 1: the reply and its stored images are deleted."
        )
        assert (GROUP, result["message_id"]) not in h.tg.messages
        assert not stored.is_file()  # noqa: ASYNC240
    finally:
        await h.stop()


async def test_quota_and_cooldown_across_a_restart(h: Harness) -> None:
    rules = {"telegram": PlaceRules(daily_quota=3, cooldown_s=600)}
    await h.start(places=rules)
    try:
        h.tg.push_text(USER, USER, "/quota")
        assert await h.reply(USER) == "Quota: 0 image(s) in the last 24 hours of 3. Cooldown: " + (
            "600 s between drawings (0 s left)."
        )
        h.tg.push_text(USER, USER, "a cat")
        await h.tg.wait_for("sendPhoto")
    finally:
        await h.stop()
    await h.start(places=rules)
    try:
        h.tg.push_text(USER, USER, "a dog")
        assert (await h.reply(USER, lambda t: "wait" in t)).startswith("Error: Please wait ")
        h.tg.push_text(USER, USER, "/quota")
        said = await h.reply(USER, lambda t: t.startswith("Quota"))
        assert said.startswith("Quota: 1 image(s) in the last 24 hours of 3.")
    finally:
        await h.stop()


async def test_styles_are_listed_and_applied(h: Harness, tmp_path: Path) -> None:
    (tmp_path / "styles.csv").write_text(
        'name,prompt,negative_prompt\nink,"ink drawing of {prompt}",color\n', encoding="utf-8"
    )
    engine = await h.start(moderation=ModerationSettings(styles_csv="styles.csv"))
    try:
        h.tg.push_text(USER, USER, "/styles")
        assert await h.reply(USER) == (
            "Styles (use with --style NAME):\n• ink: ink drawing of {prompt} | color"
        )
        h.tg.push_text(USER, USER, "a cat --style ink --no-quality --uc none")
        await h.tg.wait_for("sendPhoto")
        record = engine.record(1)
        assert record is not None
        assert (record.request.prompt, record.request.negative_prompt) == (
            "ink drawing of a cat",
            "color",
        )
    finally:
        await h.stop()


async def test_minimal_replies_and_auto_delete_in_a_group(h: Harness) -> None:
    rules = {f"telegram:chat:{GROUP}": PlaceRules(output="minimal", delete_after_s=0.3)}
    await h.start(places=rules)
    try:
        h.tg.push_text(GROUP, USER, "/draw a cat --seed 1", chat_type="supergroup")
        photo = await h.tg.wait_for("sendPhoto", lambda c: c.params["chat_id"] == GROUP)
        assert "caption" not in photo.params or not photo.params["caption"]
        message_id = next(m for m in h.tg.sent(GROUP) if "photo" in m)["message_id"]
        await eventually(lambda: (GROUP, message_id) not in h.tg.messages)  # recalled

        h.tg.push_text(USER, USER, "a cat --seed 2")  # a private chat keeps the default
        private = await h.tg.wait_for("sendPhoto", lambda c: c.params["chat_id"] == USER)
        assert private.params["caption"].startswith("Job 2 · Seed 2")
    finally:
        await h.stop()


async def test_a_styles_csv_is_imported_for_a_user_or_by_an_admin_for_a_chat(h: Harness) -> None:
    engine = await h.start(admins=(f"telegram:{ADMIN}",))
    try:
        mine = b"name,prompt,negative_prompt\nink,ink drawing of {prompt},\n"
        h.tg.push_photo(
            USER, USER, mine, caption="/styles", as_document=True, filename="styles.csv"
        )
        assert await h.reply(USER) == (
            "Imported 1 style(s).\nStyles (use with --style NAME):\n• ink: ink drawing of {prompt}"
        )
        chats = b"name,prompt,negative_prompt\nsoft,soft light,\n"
        group = {"chat_type": "supergroup", "as_document": True, "filename": "s.csv"}
        h.tg.push_photo(GROUP, USER, chats, caption="/styles chat", **group)
        assert await h.reply(GROUP) == "Only the bot's admins can do that."
        h.tg.push_photo(GROUP, ADMIN, chats, caption="/styles chat", **group)
        assert (await h.reply(GROUP)).startswith("Imported 1 style(s).")
        bad = b"title,body\nx,y\n"
        h.tg.push_photo(USER, USER, bad, caption="/styles", as_document=True, filename="x.csv")
        assert (await h.reply(USER)).startswith("Error: Cannot read that styles.csv: a styles")

        # In the group, the user has their own style and the chat's.
        h.tg.push_text(
            GROUP, USER, "/draw a cat --style ink, soft --no-quality", chat_type="supergroup"
        )
        await h.tg.wait_for("sendPhoto", lambda c: c.params["chat_id"] == GROUP)
        record = engine.record(1)
        assert record is not None and record.request.prompt == "ink drawing of a cat, soft light"
    finally:
        await h.stop()
