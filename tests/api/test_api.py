"""The A1111 API on a fake generate (real PNGs at once; `hold()` keeps a job drawing): the
lists, A1111's error shape and codes, access, progress, interrupt, skip, and a caller that
hangs up."""

from __future__ import annotations

import asyncio
import base64
import json

import aiohttp
import pytest

from bot.api.access import Credentials
from tests.api.harness import TIMEOUT_S, TINY, Api

LISTS = {
    "samplers": list,
    "schedulers": list,
    "upscalers": list,
    "sd-models": list,
    "sd-vae": list,
    "hypernetworks": list,
    "loras": list,
    "face-restorers": list,
    "realesrgan-models": list,
    "prompt-styles": list,
    "cmd-flags": dict,
    "options": dict,
}


async def test_lists_answer_in_a1111_shapes(api: Api) -> None:
    await api.start()
    for name, kind in LISTS.items():
        assert isinstance(await api.call("GET", f"/sdapi/v1/{name}"), kind), name
    samplers = await api.call("GET", "/sdapi/v1/samplers")
    assert "Euler" in [s["name"] for s in samplers]
    assert await api.call("GET", "/sdapi/v1/embeddings") == {"loaded": {}, "skipped": {}}
    assert await api.call("GET", "/sdapi/v1/scripts") == {"txt2img": [], "img2img": []}
    assert await api.call("GET", "/internal/ping") == {}
    idle = await api.call("GET", "/sdapi/v1/progress")
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0
    flags = await api.call("GET", "/sdapi/v1/cmd-flags")
    assert flags["api_auth"] is None  # never a credential


@pytest.mark.parametrize(
    ("body", "status", "named"),
    [
        ({"sampler_name": "Euler z"}, 404, "Euler"),
        ({"width": "wide"}, 422, "width"),
        ({"width": 100}, 422, "multiple of 8"),
        ({"restore_faces": True}, 422, "restore_faces"),
        ({"tiling": True}, 422, "tiling"),
        ({"scheduler": "Align Your Steps"}, 422, "schedule type"),
        ({"override_settings": {"sd_model_checkpoint": "nope"}}, 404, "alpha"),
        ({"steps": 9999}, 422, "steps"),
    ],
)
async def test_refusals_name_the_field_in_a1111_shape(
    api: Api, body: dict[str, object], status: int, named: str
) -> None:
    await api.start()
    answer = await api.call("POST", "/sdapi/v1/txt2img", {**TINY, **body}, status=status)
    assert set(answer) == {"error", "detail", "body", "errors"}
    assert named in answer["detail"]


async def test_what_clients_send_is_accepted(api: Api) -> None:
    await api.start()
    body = {
        **TINY,
        "sampler_index": "Euler a",
        "scheduler": "Automatic",
        "mask": None,
        "script_name": None,
        "hr_sampler_name": None,
        "hr_checkpoint_name": None,
        "hr_scheduler": None,
        "firstphase_width": 0,
        "eta": 1.0,
        "s_churn": 0,
        "denoising_strength": 0,  # txt2img without hires: unused, as in A1111
        "seed": -1,
    }
    drawn = await api.call("POST", "/sdapi/v1/txt2img", body)
    info = json.loads(drawn["info"])
    assert info["sampler_name"] == "Euler a" and info["seed"] >= 0
    hires = await api.call(
        "POST", "/sdapi/v1/txt2img", {**TINY, "enable_hr": True, "denoising_strength": 0}
    )
    assert json.loads(hires["info"])["width"] == 64  # hr_scale 2 by default
    karras = await api.call(
        "POST", "/sdapi/v1/txt2img", {**TINY, "sampler_name": "DPM++ 2M", "scheduler": "karras"}
    )
    assert json.loads(karras["info"])["sampler_name"] == "DPM++ 2M"  # as A1111's p.sampler_name


async def test_credentials_and_origin(api: Api) -> None:
    credentials = Credentials(users={"aiya": "secret"}, token="tok")
    await api.start(credentials=credentials)
    refused = await api.call("GET", "/sdapi/v1/samplers", status=401)
    assert refused["error"] and "credentials" in refused["detail"]
    basic = base64.b64encode(b"aiya:secret").decode()
    await api.call("GET", "/sdapi/v1/samplers", headers={"Authorization": f"Basic {basic}"})
    await api.call("GET", "/sdapi/v1/samplers", headers={"Authorization": "Bearer tok"})
    wrong = base64.b64encode(b"aiya:guess").decode()
    await api.call(
        "GET", "/sdapi/v1/samplers", status=401, headers={"Authorization": f"Basic {wrong}"}
    )
    # A credentialed caller is not an admin unless [queue] admins says so.
    await api.call(
        "POST",
        "/sdapi/v1/options",
        {"CLIP_stop_at_last_layers": 2},
        status=403,
        headers={"Authorization": "Bearer tok"},
    )
    await api.call(
        "GET",
        "/sdapi/v1/samplers",
        status=403,
        headers={"Authorization": "Bearer tok", "Origin": "http://evil.example"},
    )


async def test_progress_interrupt_and_the_next_job(api: Api) -> None:
    await api.start(preview_every_steps=1)
    api.fake.hold()
    body = {**TINY, "steps": 10, "n_iter": 3}
    drawing = asyncio.create_task(api.call("POST", "/sdapi/v1/txt2img", body))
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            api.fake.allow(1)
            now = await api.call("GET", "/sdapi/v1/progress")
            if now["state"]["sampling_step"] >= 2:
                break
            await asyncio.sleep(0.02)
    assert now["progress"] > 0 and isinstance(now["eta_relative"], float)
    assert now["state"]["job_count"] == 3 and now["state"]["sampling_steps"] == 10
    assert await api.call("POST", "/sdapi/v1/interrupt") == {}
    api.fake.allow(1)  # the drawing stops at the end of its next step, as generate() does
    stopped = await asyncio.wait_for(drawing, TIMEOUT_S)
    # A1111's answer: the drawing iteration with what it had drawn, none of the others.
    assert len(stopped["images"]) == 1
    assert api.fake.steps_run[0][-1] < 10 and len(api.fake.steps_run) == 1
    api.fake.release()
    after = await api.call("POST", "/sdapi/v1/txt2img", TINY)
    assert len(after["images"]) == 1  # the next job is not interrupted


async def test_skip_goes_on_with_the_next_iteration(api: Api) -> None:
    await api.start()
    api.fake.hold()
    drawing = asyncio.create_task(
        api.call("POST", "/sdapi/v1/txt2img", {**TINY, "steps": 10, "n_iter": 2})
    )
    async with asyncio.timeout(TIMEOUT_S):
        while (await api.call("GET", "/sdapi/v1/progress"))["state"]["sampling_steps"] == 0:
            api.fake.allow(1)
            await asyncio.sleep(0.02)
    await api.call("POST", "/sdapi/v1/skip")
    api.fake.release()
    drawn = await asyncio.wait_for(drawing, TIMEOUT_S)
    # The skipped iteration gives what it had drawn (A1111's), the next one all of it.
    assert len(drawn["images"]) == 2 and json.loads(drawn["info"])["all_seeds"] == [1234, 1235]
    first, second = api.fake.steps_run
    assert first[-1] < 10 and second[-1] == 10


async def test_a_caller_that_hangs_up_cancels_its_queued_job(api: Api) -> None:
    await api.start(paused=True)
    assert api.engine is not None
    async with aiohttp.ClientSession() as session:
        request = session.post(f"{api.url}/sdapi/v1/txt2img", json=TINY)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(request, 1.0)
    async with asyncio.timeout(TIMEOUT_S):
        for job in api.engine.jobs():
            async for _ in job.updates():  # until it ends
                pass
    record = api.engine.record(1)  # the journal's first job
    assert record is not None and record.state == "cancelled"
