"""The web chat with the moderation layer (bot/policy.py): a stub image check that flags every
result drives the spoiler and withheld paths; quotas and cooldowns hold for a user who is
not an admin, across a restart; styles from an A1111 styles.csv."""

from __future__ import annotations

from pathlib import Path

from tests.classifier_stub import FLAG_ALL
from tests.web.harness import Chat, of, post, socket, until

FLAGGING = {"moderation": {"image_check": FLAG_ALL}}


async def test_a_flagged_result_is_blurred_by_default(chat: Chat) -> None:
    client = await chat.start(tables=FLAGGING)
    ws = await socket(client)
    job = (await post(client, "/api/draw", {"text": "a cat --seed 1"}))["job"]
    done = (await until(ws, of(job["id"], "done")))[-1]["job"]
    assert done["spoiler"] is True and len(done["images"]) == 1
    assert (await client.get(done["images"][0]["url"])).status == 200
    await ws.close()


async def test_a_flagged_result_is_withheld_where_nsfw_is_refused(chat: Chat) -> None:
    client = await chat.start(tables={**FLAGGING, "places": {"web": {"nsfw": "refuse"}}})
    ws = await socket(client)
    job = (await post(client, "/api/draw", {"text": "a cat --seed 1"}))["job"]
    done = (await until(ws, of(job["id"], "done")))[-1]["job"]
    assert done["images"] == []
    assert done["status"] == (
        f"Job {job['id']}: the image check flagged the result (FEMALE_BREAST_EXPOSED, 0.91), "
        "and NSFW images are not shown here."
    )
    assert (await client.get(f"/images/{job['id']}/1.png")).status == 403
    await ws.close()
    await chat.settled()
    state = await (await client.get("/api/state")).json()  # a reload shows the same
    (kept,) = state["history"]
    assert kept["images"] == [] and "flagged" in kept["status"]


async def test_quota_and_cooldown_hold_across_a_restart(tmp_path: Path) -> None:
    tables = {"web": {"local_admin": False}, "places": {"web": {"cooldown_s": 600}}}
    first = Chat(tmp_path)
    client = await first.start(tables=tables)
    await post(client, "/api/draw", {"text": "a cat"})
    refused = await post(client, "/api/draw", {"text": "a dog"}, status=400)
    assert "Please wait" in str(refused)
    state = await (await client.get("/api/state")).json()
    assert state["quota"].startswith("Quota: 1 image(s) in the last 24 hours of no limit.")
    await first.settled()
    await first.stop()

    again = Chat(tmp_path)  # the same journal and databases: a restart
    client = await again.start(tables=tables)
    refused = await post(client, "/api/draw", {"text": "a dog"}, status=400)
    assert "Please wait" in str(refused)
    await again.stop()

    quota = {"web": {"local_admin": False}, "places": {"web": {"daily_quota": 1}}}
    third = Chat(tmp_path)
    client = await third.start(tables=quota)
    refused = await post(client, "/api/draw", {"text": "a dog"}, status=400)
    assert "You have drawn 1 of your 1 images" in str(refused)
    await third.stop()


async def test_styles_from_an_a1111_styles_csv(chat: Chat, tmp_path: Path) -> None:
    (tmp_path / "styles.csv").write_text(
        "name,prompt,negative_prompt\n"
        'anime,"anime screencap, {prompt}, cel shading",lowres\n'
        "soft,soft light,\n",
        encoding="utf-8-sig",
    )
    tables = {
        "moderation": {"styles_csv": "styles.csv"},
        "prompt": {"quality_tags": False, "uc_preset": "None"},
    }
    client = await chat.start(tables=tables)
    job = (await post(client, "/api/draw", {"text": "a cat --style anime, soft --seed 2"}))["job"]
    assert job["request"]["prompt"] == "anime screencap, a cat, cel shading, soft light"
    assert job["request"]["negative_prompt"] == "lowres"
    unknown = await post(client, "/api/draw", {"text": "a cat --style oil"}, status=400)
    assert "No style 'oil'; styles: anime, soft." in str(unknown)
    state = await (await client.get("/api/state")).json()
    assert "• anime: anime screencap, {prompt}, cel shading | lowres" in state["styles"]


async def test_output_modes(chat: Chat, tmp_path: Path) -> None:
    client = await chat.start(tables={"places": {"web": {"output": "verbose"}}})
    ws = await socket(client)
    job = (await post(client, "/api/draw", {"text": "a cat --seed 1"}))["job"]
    done = (await until(ws, of(job["id"], "done")))[-1]["job"]
    assert done["status"] == "Done. Image check: unchecked (0.00)."  # the fake's PNG is no image
    await ws.close()
    await chat.stop()

    again = Chat(tmp_path)
    client = await again.start(tables={"places": {"web": {"output": "minimal"}}})
    ws = await socket(client)
    job = (await post(client, "/api/draw", {"text": "a dog --seed 2"}))["job"]
    done = (await until(ws, of(job["id"], "done")))[-1]["job"]
    assert done["status"] == "Done." and done["images"][0]["caption"] == ""
    await ws.close()
    await again.stop()
