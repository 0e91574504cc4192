"""The web chat's HTTP and WebSocket API over a real Engine with a fake generate() (no torch
drawing): parse → submit → progress → images, cancel, reroll, variations, settings, model
swap, errors in both languages, access rules, start-up and restart."""

from __future__ import annotations

import asyncio
import dataclasses
import io
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from bot.prefs import UserSettingsStore
from bot.settings import Settings, SettingsError, WebSettings, from_dict
from bot.web import app as web
from bot.web.chat import PREF_FIELDS, USER
from engine.request import GenerationRequest
from engine.sampling.samplers import SAMPLER_GROUPS
from engine.sampling.schedules import SCHEDULE_LABELS
from tests.web.harness import JSON, TIMEOUT_S, Chat, of, post, socket, until

# --- the page ----------------------------------------------------------------------------------


async def test_the_page_and_its_files_are_served(chat: Chat) -> None:
    client = await chat.start()
    page = await client.get("/")
    assert page.status == 200 and "/static/app.js" in await page.text()
    for name in ("app.js", "style.css"):
        assert (await client.get(f"/static/{name}")).status == 200


async def test_state_lists_models_defaults_choices_and_strings(chat: Chat) -> None:
    client = await chat.start()
    state = await (await client.get("/api/state?lang=en-US")).json()
    assert state["admin"] is True and state["locale"] == "en"
    assert state["models"] == ["alpha", "beta", "gamma"] and state["model"] == "alpha"
    assert (state["vae"], state["hypernet"]) == ("Automatic", "")  # the default model's
    assert state["vaes"] == [] and state["hypernets"] == []
    assert state["defaults"]["width"] == 64  # the default model's own defaults
    groups = state["choices"]["sampler"]  # A1111 v1.9's names, grouped, common first
    assert [group["label"] for group in groups] == ["Common", "More", "Special"]
    assert [group["names"] for group in groups] == [list(g) for g in SAMPLER_GROUPS.values()]
    assert state["choices"]["schedule_type"] == list(SCHEDULE_LABELS)
    assert state["defaults"]["schedule_type"] == "Automatic"  # Euler a's own schedule
    assert state["sampler_help"]["samplers"].startswith("common: Euler a, Euler, DPM++ 2M, ")
    assert state["prefs"] == dict.fromkeys(PREF_FIELDS)
    assert "send_as_document" not in state["prefs"]
    assert state["strings"]["web_reroll"] == "↻ Reroll"
    zh = await (await client.get("/api/state", headers={"Accept-Language": "zh-CN,zh"})).json()
    assert zh["locale"] == "zh" and zh["strings"]["web_reroll"] == "↻ 换种子"


# --- drawing -----------------------------------------------------------------------------------


async def test_a_prompt_with_flags_is_drawn_with_progress_over_the_socket(chat: Chat) -> None:
    client = await chat.start()
    ws = await socket(client)
    reply = await post(client, "/api/draw", {"text": "1girl, smile --seed 5 --steps 3 --n 2"})
    job = reply["job"]
    assert reply["notes"] == []
    assert job["state"] == "queued" and job["request"] == {
        "prompt": "masterpiece, best quality, 1girl, smile",
        "negative_prompt": job["request"]["negative_prompt"],
        "width": 64,
        "height": 64,
        "num_inference_steps": 3,
        "guidance_scale": 11.0,
        "sampler": "Euler a",
        "seed": 5,
        "model": "alpha",
        "batch_size": 2,
        "subseed_strength": 0.0,
        "extras_upscale": False,
        "hr_scale": 2.0,
        "hr_upscaler": "Latent",
    }
    assert job["request"]["negative_prompt"].startswith("lowres, bad anatomy")
    events = await until(ws, of(job["id"], "done"))
    steps = [e["job"]["step"] for e in events if e["type"] == "progress"]
    assert 3 in steps
    drawing = next(e["job"] for e in events if e["type"] == "progress" and e["job"]["step"] == 3)
    assert drawing["state"] == "running" and drawing["status"].startswith("Drawing… step 3/3")
    done = events[-1]["job"]
    assert done["status"] == "Done."
    assert [(i["seed"], i["url"]) for i in done["images"]] == [
        (5, f"/images/{job['id']}/1.png"),
        (6, f"/images/{job['id']}/2.png"),
    ]
    assert done["images"][0]["caption"] == "Seed 5 · alpha · 3 steps"
    png = await client.get(done["images"][1]["url"])
    assert png.status == 200 and png.content_type == "image/png"
    assert await png.read() == b"masterpiece, best quality, 1girl, smile|6"  # the saved file
    await ws.close()
    await chat.settled()
    assert chat.engine is not None
    record = chat.engine.record(job["id"])
    assert record is not None and record.delivered


async def test_slash_draw_is_the_same_as_a_plain_prompt(chat: Chat) -> None:
    client = await chat.start()
    reply = await post(client, "/api/draw", {"text": "/draw  cat ears --seed 1 --no-quality"})
    assert reply["job"]["request"]["prompt"] == "cat ears"
    error = await post(client, "/api/draw", {"text": "/imagine cat"}, status=400)
    assert error == {
        "error": "Error: Unknown command /imagine: type a prompt, or /draw and a prompt (or "
        "/upscale with a picture)."
    }


async def test_a_pasted_infotext_and_full_width_commas_come_back_as_notes(chat: Chat) -> None:
    client = await chat.start()
    reply = await post(client, "/api/draw", {"text": "1girl，smile --seed 3"})
    assert reply["notes"] == ["Replaced full-width ， with ASCII."]
    infotext = (
        "1girl, smile\nNegative prompt: lowres\nSteps: 7, Sampler: Euler, CFG scale: 6, Seed: 9"
    )
    reply = await post(client, "/api/draw", {"text": infotext})
    request = reply["job"]["request"]
    assert (request["prompt"], request["negative_prompt"]) == ("1girl, smile", "lowres")
    assert (request["num_inference_steps"], request["sampler"], request["seed"]) == (7, "Euler", 9)
    assert any("pasted A1111 infotext" in note for note in reply["notes"])


@pytest.mark.parametrize(
    ("lang", "text", "error"),
    [
        ("en", "cat --sed 5", "Error: Unknown flag --sed. Did you mean --seed? Known flags: "),
        ("zh-CN", "cat --sed 5", "出错了：未知参数 --sed。你是不是想写 --seed？"),
        ("en", "cat --steps 51", "Error: steps 51 is not allowed: use 1 to 50"),
        ("en", "cat --model zeta", "Error: Unknown model 'zeta'."),
        ("en", "--seed 3", "Error: The prompt is empty"),
    ],
)
async def test_bad_input_is_a_chat_error_and_nothing_is_queued(
    chat: Chat, lang: str, text: str, error: str
) -> None:
    client = await chat.start()
    response = await client.post(f"/api/draw?lang={lang}", json={"text": text})
    assert response.status == 400
    assert (await response.json())["error"].startswith(error)
    assert chat.engine is not None and chat.engine.jobs() == []


async def test_a_full_queue_is_said_in_the_chat(chat: Chat) -> None:
    client = await chat.start(paused=True, max_queued_per_user=1, web_table={"local_admin": False})
    await post(client, "/api/draw", {"text": "one"})
    error = await post(client, "/api/draw", {"text": "two"}, status=429)
    assert error == {
        "error": "You already have 1 unfinished drawings (the limit is 1); wait for one to finish."
    }


async def test_a_failed_drawing_is_an_apology_not_a_traceback(chat: Chat) -> None:
    client = await chat.start()
    chat.fake.failing.add("masterpiece, best quality, doomed")
    ws = await socket(client)
    job = (await post(client, "/api/draw", {"text": "doomed"}))["job"]
    [*_, failed] = await until(ws, of(job["id"], "failed"))
    assert failed["job"]["state"] == "failed"
    assert failed["job"]["status"] == (
        "Error: Something went wrong while drawing; the admin can find the details in the log."
    )
    assert "secret" not in str(failed)


# --- buttons -----------------------------------------------------------------------------------


async def test_cancel_a_queued_job_and_a_drawing_one(chat: Chat) -> None:
    client = await chat.start()
    chat.fake.hold()
    ws = await socket(client)
    first = (await post(client, "/api/draw", {"text": "long --steps 20"}))["job"]
    await until(ws, of(first["id"], "progress", "running"))
    second = (await post(client, "/api/draw", {"text": "short --steps 2"}))["job"]
    assert second["state"] == "queued" and second["status"] == "Queued: #1 in line."
    assert await post(client, f"/api/jobs/{second['id']}/cancel", {}) == {"cancelled": True}
    [*_, cancelled] = await until(ws, of(second["id"], "failed"))
    assert (cancelled["job"]["state"], cancelled["job"]["status"]) == ("cancelled", "Cancelled.")
    chat.fake.allow(1)
    await until(ws, lambda e: e["type"] == "progress" and e["job"]["step"] == 1)
    assert await post(client, f"/api/jobs/{first['id']}/cancel", {}) == {"cancelled": True}
    [*_, stopped] = await until(ws, of(first["id"], "failed"))
    assert stopped["job"]["state"] == "cancelled"
    # Cancelling again is not an error: the page says it had finished already.
    assert await post(client, f"/api/jobs/{first['id']}/cancel", {}) == {"cancelled": False}
    missing = await post(client, "/api/jobs/999/cancel", {}, status=400)
    assert missing == {"error": "Error: There is no job #999."}


async def test_reroll_is_the_same_request_with_a_new_seed(chat: Chat) -> None:
    client = await chat.start()
    ws = await socket(client)
    job = (await post(client, "/api/draw", {"text": "cat --seed 5 --steps 2 --scale 6"}))["job"]
    await until(ws, of(job["id"], "done"))
    again = (await post(client, f"/api/jobs/{job['id']}/reroll", {}))["job"]
    assert again["request"] == {**job["request"], "seed": None}
    [*_, done] = await until(ws, of(again["id"], "done"))
    assert done["job"]["images"][0]["seed"] == 1000  # the fake's stand-in for a random seed
    assert chat.engine is not None
    original = chat.engine.record(job["id"])
    rerolled = chat.engine.record(again["id"])
    assert original is not None and rerolled is not None
    assert rerolled.request == dataclasses.replace(original.request, seed=None)


async def test_variations_keep_the_images_seed_and_add_a_variation_seed(chat: Chat) -> None:
    client = await chat.start()
    ws = await socket(client)
    job = (await post(client, "/api/draw", {"text": "cat --seed 5 --n 2 --steps 2"}))["job"]
    await until(ws, of(job["id"], "done"))
    varied = (await post(client, f"/api/jobs/{job['id']}/variations", {"image": 2}))["job"]
    assert chat.engine is not None
    record = chat.engine.record(varied["id"])
    assert record is not None
    assert (record.request.seed, record.request.subseed) == (6, None)  # image 2's seed
    assert record.request.subseed_strength == Settings().bot.variation_strength
    assert record.request.batch_size == 2
    error = await post(client, f"/api/jobs/{job['id']}/variations", {"image": 3}, status=400)
    assert error == {"error": f"Error: Job {job['id']} has no image 3."}
    gone = await post(client, "/api/jobs/4242/reroll", {}, status=400)
    assert gone == {"error": "Error: Job 4242 is no longer in the history."}


async def test_images_outside_the_history_are_not_found(chat: Chat) -> None:
    client = await chat.start()
    for path in ("/images/1/1.png", "/images/x/1.png", "/images/1/x.png", "/images/1/0.png"):
        assert (await client.get(path)).status == 404


async def test_only_a_jobs_own_image_numbers_serve_its_images(chat: Chat) -> None:
    client = await chat.start()
    ws = await socket(client)
    job = (await post(client, "/api/draw", {"text": "cat --seed 5 --n 2 --steps 1"}))["job"]
    await until(ws, of(job["id"], "done"))
    for index, seed in [("1", 5), ("2", 6)]:
        png = await client.get(f"/images/{job['id']}/{index}.png")
        assert png.status == 200 and (await png.read()).endswith(b"|%d" % seed)
    # 1-based: 0 and -1 must not be Python's last image, nor another spelling of 1 be served.
    for index in ("0", "-1", "-2", "3", "01", "+1", "1_0", "\u0661", " 1", "99999999999999999999"):
        response = await client.get(f"/images/{job['id']}/{index}.png")
        assert response.status == 404, index
    for job_id in (f"0{job['id']}", f"+{job['id']}", "99999999999999999999999"):
        assert (await client.get(f"/images/{job_id}/1.png")).status == 404, job_id


@pytest.mark.parametrize("job_id", ["99999999999999999999999", "9223372036854775808", "x", "1_0"])
@pytest.mark.parametrize("action", ["cancel", "reroll", "variations"])
async def test_a_job_number_that_cannot_be_a_job_is_a_chat_error(
    chat: Chat, action: str, job_id: str
) -> None:
    client = await chat.start()
    error = await post(client, f"/api/jobs/{job_id}/{action}", {}, status=400)
    assert error == {"error": f"Error: There is no job #{job_id}."}


async def test_a_long_job_number_is_cut_in_the_error(chat: Chat) -> None:
    client = await chat.start()
    error = await post(client, f"/api/jobs/{'9' * 500}/cancel", {}, status=400)
    assert error == {"error": f"Error: There is no job #{'9' * 29}…."}


async def test_variations_of_image_true_are_refused(chat: Chat) -> None:
    client = await chat.start()
    ws = await socket(client)
    job = (await post(client, "/api/draw", {"text": "cat --seed 5 --steps 1"}))["job"]
    await until(ws, of(job["id"], "done"))
    # JSON true is a Python int: it must not mean image 1.
    refused = await client.post(f"/api/jobs/{job['id']}/variations", json={"image": True})
    assert refused.status == 400
    assert chat.engine is not None and chat.engine.jobs() == []


async def test_history_and_running_jobs_come_back_when_the_page_opens(chat: Chat) -> None:
    client = await chat.start()
    ws = await socket(client)
    job = (await post(client, "/api/draw", {"text": "cat --seed 2"}))["job"]
    await until(ws, of(job["id"], "done"))
    chat.fake.hold()
    waiting = (await post(client, "/api/draw", {"text": "dog"}))["job"]
    await until(ws, of(waiting["id"], "progress", "running"))
    fresh = await socket(client)
    state = await (await client.get("/api/state")).json()
    assert [h["id"] for h in state["history"]] == [job["id"]]
    assert state["history"][0]["images"][0]["url"] == f"/images/{job['id']}/1.png"
    assert [(j["id"], j["state"]) for j in state["jobs"]] == [(waiting["id"], "running")]
    await fresh.close()


async def test_history_shows_what_was_typed_also_after_a_restart(chat: Chat) -> None:
    client = await chat.start()
    ws = await socket(client)
    typed = "/draw cat，smile --seed 2 --n 2"
    job = (await post(client, "/api/draw", {"text": typed}))["job"]
    assert job["request"]["prompt"] == "masterpiece, best quality, cat,smile"  # expanded
    assert (job["said"], job["origin"]) == (typed, None)
    await until(ws, of(job["id"], "done"))
    reroll = (await post(client, f"/api/jobs/{job['id']}/reroll", {}))["job"]
    await until(ws, of(reroll["id"], "done"))
    assert chat.engine is not None and chat.task is not None
    chat.engine.pause()
    varied = (await post(client, f"/api/jobs/{job['id']}/variations", {"image": 2}))["job"]
    await ws.close()
    await client.close()
    await chat.engine.close()
    await chat.task
    client = await chat.start(paused=True)  # the same journal
    state = await (await client.get("/api/state")).json()
    assert [(h["id"], h["said"], h["origin"]) for h in state["history"]] == [
        (job["id"], typed, None),
        (reroll["id"], None, {"job": job["id"], "image": None, "upscale": False}),  # a button
    ]
    [waiting] = state["jobs"]
    assert (waiting["id"], waiting["said"]) == (varied["id"], None)
    assert waiting["origin"] == {"job": job["id"], "image": 2, "upscale": False}


async def test_history_from_before_typed_text_was_kept_shows_the_prompt(chat: Chat) -> None:
    client = await chat.start()
    assert chat.engine is not None
    request = GenerationRequest(prompt="old cat", seed=1, requester=USER)
    await chat.engine.submit(request, reply_to=USER).result()
    state = await (await client.get("/api/state")).json()
    assert [(h["said"], h["origin"]) for h in state["history"]] == [("old cat", None)]


# --- settings and models -----------------------------------------------------------------------


async def test_saved_defaults_shape_the_next_drawing(chat: Chat) -> None:
    client = await chat.start()
    values = {"num_inference_steps": 7, "negative_prompt": "lowres", "quality_tags": False}
    state = await post(client, "/api/settings", {"values": {**values, "uc_preset": "None"}})
    assert state["prefs"]["num_inference_steps"] == 7
    request = (await post(client, "/api/draw", {"text": "cat"}))["job"]["request"]
    assert (request["prompt"], request["negative_prompt"]) == ("cat", "lowres")
    assert request["num_inference_steps"] == 7
    state = await post(client, "/api/settings/reset", {})
    assert state["prefs"] == dict.fromkeys(PREF_FIELDS)


async def test_a_saved_schedule_type_goes_with_the_sampler(chat: Chat) -> None:
    client = await chat.start()
    values = {"sampler": "DPM++ 2M", "schedule_type": "Karras"}
    state = await post(client, "/api/settings", {"values": values})
    assert (state["prefs"]["sampler"], state["prefs"]["schedule_type"]) == ("DPM++ 2M", "Karras")
    request = (await post(client, "/api/draw", {"text": "cat"}))["job"]["request"]
    assert request["sampler"] == "DPM++ 2M"
    record = chat.engine.record(1) if chat.engine is not None else None
    assert record is not None and record.request.schedule_type == "Karras"
    state = await post(client, "/api/settings", {"values": {"schedule_type": None}})
    assert state["defaults"]["schedule_type"] == "Uniform"  # "DPM++ 2M" alone


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"width": 100}, "Error: width 100 is not allowed: use a multiple of 8"),
        ({"num_inference_steps": 99}, "Error: steps 99 is not allowed: use 1 to 50"),
        ({"width": "wide"}, "Error: width: "),
        ({"sampler": "Eulr a"}, "Error: Unknown sampler 'Eulr a'."),
        ({"schedule_type": "Beta"}, "Error: Unknown schedule type 'Beta'."),
        ({"send_as_document": True}, "Error: Unknown setting 'send_as_document'."),
        ({"locale": "fr"}, "Error: locale: "),
    ],
)
async def test_bad_defaults_are_refused_and_nothing_is_saved(
    chat: Chat, values: dict[str, Any], error: str
) -> None:
    client = await chat.start()
    reply = await post(client, "/api/settings", {"values": values}, status=400)
    assert reply["error"].startswith(error)
    assert chat.store.get("web:local") == chat.store.get("nobody")


async def test_the_saved_language_wins_over_the_browsers(chat: Chat) -> None:
    client = await chat.start()
    state = await post(client, "/api/settings", {"values": {"locale": "zh"}})
    assert state["locale"] == "zh"
    ws = await socket(client, lang="en-US")
    job = (await post(client, "/api/draw?lang=en", {"text": "cat --steps 1"}))["job"]
    assert job["status"] == "已排队：第 1 位。"
    [*_, done] = await until(ws, of(job["id"], "done"))
    assert done["job"]["status"] == "完成。"


async def test_the_local_admin_swaps_the_model(chat: Chat) -> None:
    client = await chat.start()
    ws = await socket(client)
    assert await post(client, "/api/model", {"name": "beta"}) == {
        "model": "beta",
        "status": "New jobs now draw with beta.",
    }
    [event] = await until(ws, lambda e: e["type"] == "model")
    assert event == {"type": "model", "model": "beta", "vae": "Automatic", "hypernet": ""}
    job = (await post(client, "/api/draw", {"text": "cat"}))["job"]
    assert job["request"]["model"] == "beta"
    error = await post(client, "/api/model", {"name": "zeta"}, status=400)
    assert error["error"].startswith("Error: Unknown model 'zeta'.")


async def test_a_model_that_fails_to_load_leaves_the_old_one_and_tells_the_admin(
    chat: Chat,
) -> None:
    client = await chat.start()
    chat.loader.broken.add("gamma")
    error = await post(client, "/api/model", {"name": "gamma"}, status=500)
    assert error["error"].startswith("Error: Could not load gamma: OSError: gamma: not a model")
    assert chat.engine is not None and chat.engine.default_model == "alpha"


async def test_without_local_admin_the_model_stays(chat: Chat) -> None:
    client = await chat.start(web_table={"local_admin": False})
    state = await (await client.get("/api/state")).json()
    assert state["admin"] is False
    error = await post(client, "/api/model", {"name": "beta"}, status=403)
    assert error == {"error": "Only the bot's admins can do that."}
    error = await post(client, "/api/addons", {"vae": "None"}, status=403)
    assert error == {"error": "Only the bot's admins can do that."}


async def test_addon_choices_that_cannot_be_tried_are_refused(chat: Chat) -> None:
    chat.loader.broken.add("alpha")  # the default model cannot load for its test image
    client = await chat.start()
    for body in ({}, {"vae": 1}, {"hypernet": None}):
        response = await client.post("/api/addons", json=body)
        assert response.status == 400
    error = await post(client, "/api/addons", {"vae": "None"}, status=500)
    assert error["error"] == (
        "Error: The model alpha could not be loaded; the admin can find details in the log."
    )


# --- access ------------------------------------------------------------------------------------


async def test_other_sites_cannot_use_the_local_chat(chat: Chat) -> None:
    client = await chat.start()
    # DNS rebinding: a page from evil.example whose name now points at 127.0.0.1.
    assert (await client.get("/api/state", headers={"Host": "evil.example:7860"})).status == 403
    # A cross-site request, and a form post that needs no CORS preflight.
    evil = {"Origin": "http://evil.example"}
    assert (await client.post("/api/draw", json={"text": "x"}, headers=evil)).status == 403
    form = await client.post("/api/draw", data="text=x", headers={"Content-Type": "text/plain"})
    assert form.status == 415
    assert chat.engine is not None and chat.engine.jobs() == []


async def test_nothing_big_can_be_uploaded(chat: Chat) -> None:
    client = await chat.start(limits={"max_image_bytes": 300 * 1024})
    body = b'{"values": {"negative_prompt": "' + b"x" * (200 * 1024) + b'"}}'
    response = await client.post("/api/settings", data=body, headers=JSON)
    assert response.status == 413
    # A drawing may carry a picture and its mask: up to their base64 (4/3 each) and the
    # text's room, no more.
    body = b'{"text": "x", "image": "' + b"A" * (1000 * 1024) + b'"}'
    response = await client.post("/api/draw", data=io.BytesIO(body), headers=JSON)
    assert response.status == 413
    error = (await response.json())["error"]
    assert error.startswith("Error: The image is ") and error.endswith("at most 0.3 MB is allowed.")
    assert chat.engine is not None and chat.engine.jobs() == []


async def test_a_token_guards_every_path_and_moves_into_a_cookie(chat: Chat) -> None:
    client = await chat.start(token="s3cret")
    assert (await client.get("/")).status == 403
    assert (await client.get("/?token=wrong")).status == 403
    assert (await client.get("/api/state")).status == 403
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await client.ws_connect("/ws")
    entered = await client.get("/?token=s3cret", allow_redirects=False)
    assert entered.status == 303 and entered.headers["Location"] == "/"
    assert entered.cookies["aidraw_web_token"]["httponly"]
    client.session.cookie_jar.update_cookies({"aidraw_web_token": "s3cret"})
    assert (await client.get("/api/state")).status == 200
    ws = await socket(client)
    await ws.close()


# --- start-up and restart ----------------------------------------------------------------------


async def test_run_web_prints_its_address_serves_and_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    printed: list[str] = []
    listening = asyncio.Event()

    def capture(*args: Any, **kwargs: Any) -> None:
        printed.append(" ".join(map(str, args)))
        listening.set()

    monkeypatch.setattr(web, "print", capture, raising=False)
    monkeypatch.delenv(web.TOKEN_ENV, raising=False)
    harness = Chat(tmp_path)
    await harness.start()  # for the engine; run_web makes its own server
    assert harness.engine is not None
    settings = dataclasses.replace(Settings(root=tmp_path), web=WebSettings(port=0))
    task = asyncio.create_task(web.run_web(harness.engine, settings, harness.store), name="web")
    try:
        async with asyncio.timeout(TIMEOUT_S):
            await listening.wait()
        [line] = printed
        assert line.startswith("aidraw web chat: http://127.0.0.1:") and line.endswith("/")
        url = line.split(": ", 1)[1]
        async with aiohttp.ClientSession() as session, session.get(url) as page:
            assert page.status == 200
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await harness.stop()
        harness.store.close()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(url)


@pytest.mark.parametrize(
    ("token", "serve", "local_admin", "admins"),
    [
        (None, "auto", True, ("web:local", "api:local")),  # the API's loopback caller too
        (None, "always", False, ()),
        ("AIDRAW_TELEGRAM_TOKEN", "auto", True, ()),  # no web chat: no local user to trust
        ("AIDRAW_TELEGRAM_TOKEN", "always", True, ("web:local", "api:local")),  # beside the bot
        ("AIDRAW_DISCORD_TOKEN", "never", True, ()),
    ],
)
async def test_the_launcher_builds_the_engine_with_the_local_admin_only_for_the_web_chat(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    token: str | None,
    serve: str,
    local_admin: bool,
    admins: tuple[str, ...],
) -> None:
    from bot import launcher

    class Built(Exception):
        pass

    seen: list[tuple[str, ...]] = []

    def build_engine(settings: Settings, *, admins: tuple[str, ...] = ()) -> Any:
        seen.append(admins)
        raise Built

    for var in (launcher.DISCORD_TOKEN, launcher.TELEGRAM_TOKEN):
        monkeypatch.delenv(var, raising=False)
    if token is not None:
        monkeypatch.setenv(token, "123:abc")
    monkeypatch.setattr(launcher, "build_engine", build_engine)
    settings = from_dict({"web": {"local_admin": local_admin, "serve": serve}}, root=tmp_path)
    with pytest.raises(Built):
        await launcher.serve(settings)
    assert seen == [admins] and USER == "web:local"


async def test_the_launcher_refuses_to_serve_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot import launcher

    for var in (launcher.DISCORD_TOKEN, launcher.TELEGRAM_TOKEN):
        monkeypatch.delenv(var, raising=False)
    settings = from_dict({"web": {"serve": "never"}}, root=tmp_path)
    with pytest.raises(SettingsError, match='serve = "never" and no bot token'):
        await launcher.serve(settings)
    with pytest.raises(SettingsError, match="serve"):
        from_dict({"web": {"serve": "sometimes"}}, root=tmp_path)


def test_build_engine_adds_the_given_admins_to_the_configured_ones(tmp_path: Path) -> None:
    from bot.launcher import build_engine

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.safetensors").write_bytes(b"")  # listed, never loaded here
    queue = {"admins": ["telegram:1"], "journal": ":memory:"}
    settings = from_dict({"engine": {"models_dir": "models"}, "queue": queue}, root=tmp_path)
    for extra, admins in [((USER, "telegram:1"), ("telegram:1", USER)), ((), None)]:
        engine, store = build_engine(settings, admins=extra)
        store.close()
        assert engine.config.admins == (admins or ("telegram:1",))
        assert engine.models() == ["m"]


async def test_run_web_refuses_other_addresses_without_a_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(web.TOKEN_ENV, raising=False)
    settings = dataclasses.replace(Settings(), web=WebSettings(host="0.0.0.0"))
    with pytest.raises(SettingsError, match="set AIDRAW_WEB_TOKEN"):
        await web.run_web(None, settings, UserSettingsStore(":memory:"))  # type: ignore[arg-type]
    assert web.is_loopback("127.0.0.1") and web.is_loopback("::1")
    assert web.is_loopback("localhost") and not web.is_loopback("192.168.1.2")


async def test_a_job_from_before_a_restart_is_still_answered(chat: Chat) -> None:
    client = await chat.start(paused=True)
    job = (await post(client, "/api/draw", {"text": "cat --seed 4"}))["job"]
    await client.close()
    assert chat.engine is not None and chat.task is not None
    await chat.engine.close()
    await chat.task
    client = await chat.start(paused=True)  # the same journal: the job is queued again
    ws = await socket(client)
    chat.engine.resume()
    [*_, done] = await until(ws, of(job["id"], "done"))
    assert done["job"]["images"][0]["seed"] == 4
    await chat.settled()
    record = chat.engine.record(job["id"])
    assert record is not None and record.delivered


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"port": 70000}, "web.port"),
        ({"host": 7860}, "web.host"),
        ({"token": "s3cret"}, "web.token: unknown key"),  # tokens come from the environment
    ],
)
def test_the_web_table_is_checked_at_start_up(table: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        from_dict({"web": table})
    assert from_dict({}).web == WebSettings(host="127.0.0.1", port=7860, local_admin=True)


async def test_a_size_far_above_the_models_own_is_flagged_before_drawing(chat: Chat) -> None:
    client = await chat.start()
    reply = await post(client, "/api/draw", {"text": "1girl --size 256x256 --steps 2"})
    [warning] = reply["notes"]
    assert warning.startswith("Heads-up: 256x256 is 16 times this model's own 64x64.")
    assert "On a CPU that is slow" in warning
    small = await post(client, "/api/draw", {"text": "1girl --size 128x128 --steps 2"})
    assert small["notes"] == []  # 4 times: fine


async def test_vary_subtle_and_strong_use_their_strengths_and_say_so(chat: Chat) -> None:
    client = await chat.start()
    ws = await socket(client)
    job = (await post(client, "/api/draw", {"text": "cat --seed 5 --steps 2"}))["job"]
    await until(ws, of(job["id"], "done"))
    bot = Settings().bot
    for strength, expected in (("subtle", bot.variation_strength), ("strong", None)):
        body = {"image": 1, "strength": strength}
        varied = (await post(client, f"/api/jobs/{job['id']}/variations", body))["job"]
        assert chat.engine is not None
        record = chat.engine.record(varied["id"])
        assert record is not None
        assert record.request.subseed_strength == (expected or bot.strong_variation_strength)
    assert bot.variation_strength < bot.strong_variation_strength
    refused = await post(
        client, f"/api/jobs/{job['id']}/variations", {"strength": "wild"}, status=400
    )
    assert "strength must be subtle or strong" in str(refused)


def test_a_variations_caption_names_its_variation_seed_and_strength() -> None:
    from bot.messages import caption
    from engine.request import GenerationRequest

    request = GenerationRequest(
        prompt="x", model="alpha", num_inference_steps=20, subseed_strength=0.7
    )
    infotext = "x\\nSteps: 20, Seed: 5, Variation seed: 77, Variation seed strength: 0.7"
    assert caption(request, [5], [infotext], "en") == (
        "Seed 5 · alpha · 20 steps · variation seed 77 at 0.7"
    )
    assert caption(request, [5], [infotext], "zh").endswith("变体种子 77，强度 0.7")


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_the_local_admin_sets_the_demo_models_vae_for_the_next_drawing(
    tmp_path: Path, demo_models_dir: Path
) -> None:
    from tests.demo_addons import DEMO, VAE_FILE, addon_models_dir, demo_engine, infotext, running

    engine = demo_engine(addon_models_dir(demo_models_dir, tmp_path), tmp_path, admins=(USER,))
    settings = from_dict({}, root=tmp_path)
    store = UserSettingsStore(":memory:")
    async with (
        running(engine),
        TestClient(TestServer(web.create_app(engine, settings, store))) as client,
    ):
        state = await (await client.get("/api/state")).json()
        assert (state["model"], state["vae"], state["hypernet"]) == (DEMO, "None", "")
        assert state["vaes"] == [VAE_FILE] and state["hypernets"] == []
        ws = await socket(client)

        error = await post(client, "/api/addons", {"vae": "demo-vea"}, status=400)
        assert error["error"].startswith("Error: Unknown VAE 'demo-vea'.")
        assert error["error"].endswith(f"Installed: {VAE_FILE}.")
        response = await client.post(
            "/api/addons", json={"hypernet": "anime:0.8"}, headers={"Accept-Language": "zh-CN"}
        )
        assert response.status == 400
        assert (await response.json())["error"] == "出错了：未知的超网络：'anime'。"
        assert engine.model_info(DEMO).defaults.vae == "None"

        reply = await post(client, "/api/addons", {"vae": VAE_FILE, "hypernet": "none"})
        assert reply == {
            "model": DEMO,
            "vae": VAE_FILE,
            "hypernet": "",
            "status": f"New jobs on {DEMO} now draw with VAE: {VAE_FILE} · hypernetwork: none.",
        }
        [*_, event] = await until(ws, lambda e: e["type"] == "addons")
        assert event == {"type": "addons", "model": DEMO, "vae": VAE_FILE, "hypernet": ""}
        state = await (await client.get("/api/state")).json()
        assert state["vae"] == VAE_FILE

        job = (await post(client, "/api/draw", {"text": "1girl --steps 2 --size 64x64"}))["job"]
        [*_, done] = await until(ws, of(job["id"], "done"))
        png = await (await client.get(done["job"]["images"][0]["url"])).read()
        await ws.close()
    store.close()
    assert f"VAE: {VAE_FILE}" in infotext(png)
