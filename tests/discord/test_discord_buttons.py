"""The Discord job buttons end to end (tests/discord/world.py): reroll, variations, the edit
modal, cancel and delete, also after a restart."""

from __future__ import annotations

import pytest

from bot.settings import BotSettings
from engine.infotext import parse_infotext
from tests.discord.world import (
    ADMIN_ID,
    OTHER_ID,
    World,
    final,
    status_edits,
)
from tests.fakes import FakeDiscord

pytestmark = pytest.mark.timeout(10)


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


async def test_vary_subtle_and_strong_use_their_strengths_and_say_so(
    world: World, dc: FakeDiscord
) -> None:
    engine = await world.start()
    message = await final(dc, await dc.slash("draw", {"prompt": "a cat --seed 42"}))
    labels = {
        c["custom_id"]: c["label"] for row in message["components"] for c in row["components"]
    }
    assert labels["aidraw:vary:1"] == "Vary (subtle)"  # the id of the old 🔀, still subtle
    assert labels["aidraw:vary_strong:1"] == "Vary (strong)"

    bot = BotSettings()
    clicks = [("aidraw:vary:1", bot.variation_strength)]
    clicks.append(("aidraw:vary_strong:1", bot.strong_variation_strength))
    for job, (custom_id, strength) in enumerate(clicks, start=2):
        varied = await final(dc, await dc.click(message, custom_id))
        record = engine.record(job)
        assert record is not None and record.request.seed == 42
        assert record.request.subseed_strength == strength
        subseed = parse_infotext(record.images[0].infotext).params["Variation seed"]
        assert varied["content"].startswith(f"Job {job} · Seed 42 · alpha · ")
        assert f" · variation seed {subseed} at {strength:g}" in varied["content"]

    zh = await final(dc, await dc.slash("draw", {"prompt": "a dog"}, locale="zh-CN"))
    labels = {c["custom_id"]: c["label"] for row in zh["components"] for c in row["components"]}
    assert (labels["aidraw:vary:4"], labels["aidraw:vary_strong:4"]) == ("微调变体", "大幅变体")
    strong = await final(dc, await dc.click(zh, "aidraw:vary_strong:4", locale="zh-CN"))
    assert f"，强度 {bot.strong_variation_strength:g}" in strong["content"]
