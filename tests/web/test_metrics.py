"""/metrics and /healthz on the web server, over a real Engine with a fake generate(): the
text parses with prometheus_client's own parser, its counters move as jobs are drawn,
cancelled and fail, and /healthz turns unhealthy once the engine loop stops."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from bot.api.access import Credentials
from engine.errors import GenerationFailed, JobCancelled
from engine.request import GenerationRequest
from tests.web.harness import TIMEOUT_S, Chat, post

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(client: TestClient[Any, Any], **headers: str) -> Samples:
    response = await client.get("/metrics", headers=headers)
    assert response.status == 200, await response.text()
    assert response.content_type == "text/plain"
    samples: Samples = {}
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def request(prompt: str, user: str = "discord:1", steps: int = 2) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, num_inference_steps=steps, requester=user)


async def test_counters_move_as_jobs_are_drawn_cancelled_and_fail(chat: Chat) -> None:
    client = await chat.start(max_queued_per_user=10)
    engine = chat.engine
    assert engine is not None
    before = await scrape(client)
    assert value(before, "aidraw_engine_up") == 1.0
    assert value(before, "aidraw_queue_length", model="alpha") == 0.0
    assert value(before, "aidraw_jobs_total", outcome="done", frontend="discord") == 0.0

    # Drawn: one from Discord (2 images), one from the web chat.
    drawn = engine.submit(GenerationRequest(prompt="cat", batch_size=2, requester="discord:1"))
    await asyncio.wait_for(drawn.result(), TIMEOUT_S)
    web_job = (await post(client, "/api/draw", {"text": "dog --steps 2"}))["job"]
    web = engine.job(web_job["id"])
    if web is not None:
        await asyncio.wait_for(web.result(), TIMEOUT_S)
    # Failed: the fake raises for this prompt.
    chat.fake.failing.add("doomed")
    doomed = engine.submit(request("doomed"))
    with pytest.raises(GenerationFailed):
        await asyncio.wait_for(doomed.result(), TIMEOUT_S)
    # Cancelled: one while drawing, one still waiting (it shows in the queue length first).
    chat.fake.hold()
    drawing = engine.submit(request("long", steps=20))
    waiting = engine.submit(request("next", user="telegram:7"))
    async for progress in drawing.updates():
        if progress.state == "running":
            break
    during = await scrape(client)
    assert value(during, "aidraw_queue_length", model="alpha") == 1.0
    assert value(during, "aidraw_jobs_running") == 1.0
    assert engine.cancel(waiting.id, by="telegram:7")
    assert engine.cancel(drawing.id, by="discord:1")
    chat.fake.release()
    for job in (drawing, waiting):
        with pytest.raises(JobCancelled):
            await asyncio.wait_for(job.result(), TIMEOUT_S)

    after = await scrape(client)
    assert value(after, "aidraw_jobs_total", outcome="done", frontend="discord") == 1.0
    assert value(after, "aidraw_jobs_total", outcome="done", frontend="web") == 1.0
    assert value(after, "aidraw_jobs_total", outcome="failed", frontend="discord") == 1.0
    assert value(after, "aidraw_jobs_total", outcome="cancelled", frontend="discord") == 1.0
    assert value(after, "aidraw_jobs_total", outcome="cancelled", frontend="telegram") == 1.0
    assert value(after, "aidraw_jobs_submitted_total", frontend="discord") == 3.0
    assert value(after, "aidraw_images_total") == 3.0
    assert value(after, "aidraw_queue_length", model="alpha") == 0.0
    # Waits: every job that started drawing (the cancelled waiting one never did).
    assert value(after, "aidraw_job_wait_seconds_count") == 4.0
    assert value(after, "aidraw_job_wait_seconds_bucket", le="+Inf") == 4.0
    assert value(after, "aidraw_job_run_seconds_count") == 4.0
    # Batch sizes: two calls that drew (2 images, then 1).
    assert value(after, "aidraw_batch_images_count") == 2.0
    assert value(after, "aidraw_batch_images_sum") == 3.0
    assert value(after, "aidraw_batch_images_bucket", le="1.0") == 1.0
    assert value(after, "aidraw_model_loads_total", model="alpha") == 1.0
    assert value(after, "aidraw_model_load_seconds_count") == 1.0
    assert value(after, "aidraw_journal_bytes") > 0
    assert value(after, "aidraw_worker_busy_seconds_total") > value(
        before, "aidraw_worker_busy_seconds_total"
    )
    assert value(after, "aidraw_event_loop_lag_seconds_count") >= 0.0


async def test_a_model_swap_and_a_failed_load_are_counted(chat: Chat) -> None:
    chat.loader.broken.add("gamma")
    client = await chat.start()
    engine = chat.engine
    assert engine is not None
    await asyncio.wait_for(engine.submit(request("cat")).result(), TIMEOUT_S)
    await engine.swap_model("beta", by="web:local")
    with pytest.raises(GenerationFailed):
        await engine.swap_model("gamma", by="web:local")
    samples = await scrape(client)
    assert value(samples, "aidraw_model_loads_total", model="beta") == 1.0
    assert value(samples, "aidraw_model_swaps_total") == 1.0
    assert value(samples, "aidraw_model_load_failures_total", model="gamma") == 1.0


async def test_the_event_loop_lag_is_measured(chat: Chat) -> None:
    client = await chat.start()
    async with asyncio.timeout(TIMEOUT_S):  # a sample every 0.5 s
        while value(await scrape(client), "aidraw_event_loop_lag_seconds_count") < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    samples = await scrape(client)
    assert value(samples, "aidraw_event_loop_lag_seconds_bucket", le="+Inf") >= 2
    assert 0 <= value(samples, "aidraw_event_loop_lag_last_seconds") < TIMEOUT_S


async def test_healthz_turns_unhealthy_when_the_engine_loop_stops(chat: Chat) -> None:
    client = await chat.start()
    healthy = await client.get("/healthz")
    body = await healthy.json()
    assert healthy.status == 200
    assert (body["status"], body["engine"], body["queued"]) == ("ok", "running", 0)
    assert chat.task is not None
    chat.task.cancel()  # the loop dies (as a crash would end it)
    with pytest.raises(asyncio.CancelledError):
        await chat.task
    chat.task = None
    sick = await client.get("/healthz")
    assert sick.status == 503
    assert (await sick.json())["status"] == "unhealthy"
    assert value(await scrape(client), "aidraw_engine_up") == 0.0


async def test_metrics_share_the_apis_access(chat: Chat) -> None:
    client = await chat.start()
    # No credentials configured: this machine only (a foreign Host is another site's page).
    refused = await client.get("/metrics", headers={"Host": "evil.example"})
    assert refused.status == 403
    assert (await client.get("/healthz", headers={"Host": "evil.example"})).status == 403


async def test_with_an_api_token_metrics_need_it(chat: Chat) -> None:
    await chat.start()
    from aiohttp.test_utils import TestServer

    from bot.settings import from_dict
    from bot.web import app as web

    assert chat.engine is not None
    settings = from_dict({}, root=chat.tmp_path)
    app = web.create_app(
        chat.engine, settings, chat.store, api_credentials=Credentials(token="s3cret")
    )
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        assert (await client.get("/metrics")).status == 401
        assert (await client.get("/healthz")).status == 401
        samples = await scrape(client, Authorization="Bearer s3cret")
        assert value(samples, "aidraw_engine_up") == 1.0
    finally:
        await client.close()


@pytest.mark.gpu
async def test_gpu_memory_in_use_and_its_peak_are_reported(chat: Chat) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    client = await chat.start()
    block = torch.empty(64 * 1024 * 1024, dtype=torch.uint8, device="cuda")
    samples = await scrape(client)
    used = {k[1]: v for k, v in samples.items() if k[0] == "aidraw_gpu_memory_bytes"}
    peak = {k[1]: v for k, v in samples.items() if k[0] == "aidraw_gpu_memory_peak_bytes"}
    [(labels, in_use)] = [(k, v) for k, v in used.items() if k[0][1].startswith("0:")]
    assert in_use >= block.numel() and peak[labels] >= in_use
    del block
