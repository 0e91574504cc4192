"""Discord end to end with the moderation layer (bot/policy.py): a stub image check that flags
every result drives the spoiler, withheld and age-restricted paths; [places] rules by server,
channel and role; the moderation log's lookup and an admin's delete; cooldowns across a
restart."""

from __future__ import annotations

from pathlib import Path

from bot.modlog import ModLog
from bot.places import PlaceRules
from bot.settings import DiscordSettings, ModerationSettings
from tests.classifier_stub import FLAG_ALL, FlagAll
from tests.discord.world import ADMIN_ID, USER, World, final
from tests.fakes import FakeDiscord
from tests.fakes.discord import CHANNEL_ID, GUILD_ID, USER_ID

FLAGGING = ModerationSettings(image_check=FLAG_ALL)
NSFW_CHANNEL = 1200000000000000077


async def _answer(dc: FakeDiscord, interaction: dict) -> str:  # type: ignore[type-arg]
    call = await dc.wait_for("interaction_callback", dc.of(interaction))
    return str(call.payload["data"]["content"])


async def test_a_flagged_result_is_spoilered_withheld_or_sent_by_place(
    world: World, dc: FakeDiscord
) -> None:
    world.moderation = FLAGGING
    world.places = {f"discord:channel:{CHANNEL_ID}": PlaceRules(nsfw="refuse")}
    await world.start()

    # The server's default: spoiler (the prompt has no NSFW word; the image check flags it).
    elsewhere = await dc.slash("draw", {"prompt": "a cat --seed 3"}, channel_id=42)
    message = await final(dc, elsewhere)
    assert message["attachments"][0]["filename"] == "SPOILER_aidraw-1-3.png"
    assert "Image check: FEMALE_BREAST_EXPOSED (0.91)." in message["content"]
    assert FlagAll.threads and all(n.startswith("aidraw-image-check") for n in FlagAll.threads)

    # This channel refuses NSFW: the reply says why and carries no image.
    refused = await dc.slash("draw", {"prompt": "a cat --seed 4"})
    await dc.wait_until(lambda: "flagged" in (dc.original(refused) or {}).get("content", ""))
    message = dc.original(refused)
    assert message is not None and message["attachments"] == []
    assert message["content"] == (
        "Job 2: the image check flagged the result (FEMALE_BREAST_EXPOSED, 0.91), and NSFW "
        "images are not shown here."
    )

    # An age-restricted channel shows it as it is.
    adult = await dc.slash("draw", {"prompt": "a cat --seed 5"}, channel_id=NSFW_CHANNEL, nsfw=True)
    message = await final(dc, adult)
    assert message["attachments"][0]["filename"] == "aidraw-3-5.png"


async def test_allow_outside_an_age_restricted_channel_is_a_refusal(
    world: World, dc: FakeDiscord
) -> None:
    world.places = {"discord": PlaceRules(nsfw="allow")}
    await world.start()
    plain = await dc.slash("draw", {"prompt": "nsfw, a cat"})
    assert await _answer(dc, plain) == (
        "This channel is not marked NSFW, so the bot does not draw 'nsfw' here."
    )
    adult = await dc.slash("draw", {"prompt": "nsfw, a cat --seed 2"}, nsfw=True)
    message = await final(dc, adult)
    assert message["attachments"][0]["filename"] == "aidraw-1-2.png"


async def test_roles_limits_and_place_defaults(world: World, dc: FakeDiscord) -> None:
    world.places = {
        f"discord:guild:{GUILD_ID}": PlaceRules(roles=(77,), max_count=2, steps=7),
    }
    engine = await world.start()
    no_role = await dc.slash("draw", {"prompt": "a cat"})
    assert await _answer(dc, no_role) == (
        "Only members with one of this server's drawing roles may draw here."
    )
    dc.member_roles[USER_ID] = [77]
    many = await dc.slash("draw", {"prompt": "a cat", "count": 3})
    assert await _answer(dc, many) == "At most 2 image(s) per request here; you asked for 3."
    ok = await dc.slash("draw", {"prompt": "a cat --seed 1"})
    await final(dc, ok)
    record = engine.record(1)
    assert record is not None and record.request.num_inference_steps == 7


async def test_the_moderation_log_finds_the_author_and_an_admin_deletes(
    world: World, dc: FakeDiscord
) -> None:
    engine = await world.start()
    slash = await dc.slash("draw", {"prompt": "a lighthouse --seed 8"})
    message = await final(dc, slash)
    record = engine.record(1)
    assert record is not None
    stored = Path(record.images[0].path)
    assert stored.is_file()  # noqa: ASYNC240
    log = ModLog(world.tmp / "modlog.sqlite3", days=30)  # the bot's log, read beside it
    await dc.wait_until(lambda: log.get(1) is not None)
    log.close()

    link = f"https://discord.com/channels/{GUILD_ID}/{CHANNEL_ID}/{message['id']}"
    who = await dc.slash("mod who", {"message": link}, user_id=ADMIN_ID)
    said = await _answer(dc, who)
    assert said.startswith(f"Job 1 by {USER} in discord:channel:{CHANNEL_ID} at ")
    assert "a lighthouse'" in said and "(image check: safe 0.00, send)" in said
    refused = await dc.slash("mod who", {"message": message["id"]})
    assert await _answer(dc, refused) == "Only the bot's admins can do that."

    delete = await dc.slash("mod delete", {"message": message["id"]}, user_id=ADMIN_ID)
    assert await _answer(dc, delete) == "Job 1: the reply and its stored images are deleted."
    assert int(message["id"]) not in dc.messages
    assert not stored.is_file()  # noqa: ASYNC240


async def test_cooldown_holds_across_a_restart(world: World, dc: FakeDiscord) -> None:
    world.discord = DiscordSettings(cooldown_s=60)
    await world.start()
    await final(dc, await dc.slash("draw", {"prompt": "a cat"}))
    await world.restart()
    again = await dc.slash("draw", {"prompt": "a dog"})
    assert "Please wait" in await _answer(dc, again)


async def test_output_modes_and_auto_delete_in_a_server(world: World, dc: FakeDiscord) -> None:
    world.places = {
        f"discord:channel:{CHANNEL_ID}": PlaceRules(output="minimal", delete_after_s=0.3),
        "discord:channel:43": PlaceRules(output="verbose"),
    }
    await world.start()
    minimal = await dc.slash("draw", {"prompt": "a cat --seed 1"})
    message = await final(dc, minimal)
    assert message["content"] == "Job 1"
    verbose = await dc.slash("draw", {"prompt": "a cat --seed 2"}, channel_id=43)
    shown = await final(dc, verbose)
    assert shown["content"].endswith("\nImage check: safe (0.00).")
    await dc.wait_until(lambda: int(message["id"]) not in dc.messages)  # recalled
    assert int(shown["id"]) in dc.messages  # kept where delete_after_s is 0


async def test_an_admins_delete_button_removes_the_stored_images_too(
    world: World, dc: FakeDiscord
) -> None:
    engine = await world.start()
    mine = await final(dc, await dc.slash("draw", {"prompt": "a cat --seed 1"}))
    theirs = await final(dc, await dc.slash("draw", {"prompt": "a dog --seed 2"}))
    first, second = engine.record(1), engine.record(2)
    assert first is not None and second is not None
    await dc.click(mine, "aidraw:delete:1")  # its author: the message goes, the PNG stays
    await dc.wait_until(lambda: int(mine["id"]) not in dc.messages)
    assert Path(first.images[0].path).is_file()  # noqa: ASYNC240
    await dc.click(theirs, "aidraw:delete:2", user_id=ADMIN_ID)  # a moderator's: both go
    await dc.wait_until(lambda: int(theirs["id"]) not in dc.messages)
    await dc.wait_until(lambda: not Path(second.images[0].path).is_file())
