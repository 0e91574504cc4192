"""The pool's protocol in one process, against a real redis-server: the bot's PoolEngine and a
PoolWorker over the fake generate() (no torch), and what a worker does with payloads that are
not what the bot writes (nothing from Redis is trusted, nothing is unpickled)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import pickle
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bot.messages import worker_lines
from engine.engine import Engine
from engine.errors import GenerationFailed, JobCancelled
from engine.pool import wire
from engine.pool.dispatcher import PoolEngine
from engine.pool.roster import WorkerInfo
from engine.pool.worker import PoolWorker
from engine.queue import QueueConfig
from engine.request import GenerationRequest
from tests.engine_fakes import FakeGenerate, FakeLoader, FakeRegistry

REQUEST = GenerationRequest(prompt="cat", width=64, height=64, num_inference_steps=4, seed=7)


def config(url: str, tmp: Path, name: str) -> QueueConfig:
    return QueueConfig(
        admins=("admin", wire.POOL_ADMIN),
        shutdown_grace_s=0.2,
        backend="redis",
        redis_url=url,
        claim_timeout_s=5,
        journal=":memory:",
        results_dir=str(tmp / name),
        warm_up=False,
    )


@dataclasses.dataclass
class Pool:
    bot: PoolEngine
    worker: PoolWorker
    generate: FakeGenerate
    client: aioredis.Redis
    stop: asyncio.Event
    url: str
    tmp: Path


def fake_worker(url: str, tmp: Path, name: str) -> tuple[PoolWorker, FakeGenerate]:
    generate = FakeGenerate()
    local: Engine[object] = Engine(
        config(url, tmp, name),
        registry=FakeRegistry(),
        load=FakeLoader(broken=["gamma"]),
        generate=generate,
    )
    return PoolWorker(local, name=name, device="cpu"), generate


async def until_idle(client: aioredis.Redis, name: str) -> None:
    for _ in range(200):
        beat = await client.get(wire.heartbeat(name))
        if beat is not None and json.loads(beat)["state"] == "idle":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"worker {name} is not idle")


@pytest.fixture
async def pool(redis_url: str, tmp_path: Path) -> AsyncIterator[Pool]:
    bot = PoolEngine(config(redis_url, tmp_path, "bot"), registry=FakeRegistry())
    worker, generate = fake_worker(redis_url, tmp_path, "w1")
    stop = asyncio.Event()
    tasks = [asyncio.create_task(bot.run()), asyncio.create_task(worker.run(stop))]
    client = aioredis.Redis.from_url(redis_url)
    await until_idle(client, "w1")
    yield Pool(bot, worker, generate, client, stop, redis_url, tmp_path)
    generate.release()
    stop.set()
    await bot.close(0)
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 20)
    await client.aclose()


@pytest.mark.timeout(60)
async def test_jobs_sent_to_a_worker_come_back_with_their_images_and_progress(pool: Pool) -> None:
    pool.generate.hold()
    jobs = [
        pool.bot.submit(dataclasses.replace(REQUEST, prompt=p, requester=f"u{i}"))
        for i, p in enumerate(["cat", "dog", "fox"])
    ]
    pool.generate.allow(2)
    for _ in range(200):  # the worker's steps reach the bot's job
        if jobs[0].progress.step == 2:
            break
        await asyncio.sleep(0.05)
    assert (jobs[0].progress.state, jobs[0].progress.step) == ("running", 2)
    assert jobs[0].progress.total == 4
    pool.generate.release()
    results = await asyncio.gather(*(job.result() for job in jobs))
    assert [[r.png for r in images] for images in results] == [
        [b"cat|7"],
        [b"dog|7"],
        [b"fox|7"],
    ]
    assert results[0][0].request.num_inference_steps == 4
    assert pool.bot.history(limit=3)[0].state == "done"
    (info,) = pool.bot.workers()
    assert info.name == "w1" and info.model == "alpha"
    status = pool.bot.status()
    assert (status.model, status.device, status.swaps) == ("alpha", "cpu", 0)
    # /queue (Discord, Telegram) and the web chat show the pool's workers.
    assert worker_lines(pool.bot.workers(), "zh")[1].startswith("- w1（cpu）：alpha，")
    assert await pool.client.keys(wire.result_key("*")) == []  # taken, then removed


@pytest.mark.timeout(60)
async def test_a_cancel_reaches_the_worker_drawing_the_job(pool: Pool) -> None:
    pool.generate.hold()
    job = pool.bot.submit(dataclasses.replace(REQUEST, requester="u1"))
    async for progress in job.updates():
        if progress.state == "running":
            break
    pool.generate.allow(1)
    for _ in range(100):
        if pool.generate.steps_run and pool.generate.steps_run[0]:
            break
        await asyncio.sleep(0.05)
    assert pool.bot.cancel(job.id, by="u1")
    with pytest.raises(JobCancelled):
        await job.result()
    for _ in range(100):  # the worker's own job stops at its next step, and it is free again
        beat = WorkerInfo.decode(await pool.client.get(wire.heartbeat("w1")) or b"")
        if beat is not None and beat.state == "idle":
            break
        await asyncio.sleep(0.05)
    assert len(pool.generate.steps_run[0]) < 4
    pool.generate.release()
    other = pool.bot.submit(dataclasses.replace(REQUEST, prompt="next", requester="u1"))
    assert [r.png for r in await other.result()] == [b"next|7"]


@pytest.mark.timeout(60)
async def test_a_worker_drops_what_is_not_json_and_fails_what_its_door_refuses(
    pool: Pool,
) -> None:
    stream = wire.stream("w1")
    # A pickle in the stream is never unpickled: the entry is dropped, the worker goes on.
    await pool.client.xadd(stream, {"batch": pickle.dumps({"jobs": []})})
    bad = dataclasses.replace(REQUEST, width=65, model="alpha")
    payload = wire.encode_batch([wire.WireJob(key="99-1", request=bad, images={})])
    await pool.client.xadd(stream, {"batch": payload})
    unknown = json.dumps(
        {"jobs": [{"key": "98-1", "request": {"prompt": "x", "shell": "rm"}, "images": {}}]}
    )
    await pool.client.xadd(stream, {"batch": unknown})
    for _ in range(100):
        if await pool.client.exists(wire.result_key("99-1")):
            break
        await asyncio.sleep(0.05)
    result = wire.decode_result(await pool.client.get(wire.result_key("99-1")))
    assert result.state == "failed" and "multiple of 8" in result.error
    for _ in range(100):
        if await pool.client.xlen(stream) == 0:
            break
        await asyncio.sleep(0.05)
    assert await pool.client.xlen(stream) == 0  # every entry acknowledged and removed
    assert not await pool.client.exists(wire.result_key("98-1"))
    job = pool.bot.submit(dataclasses.replace(REQUEST, requester="u1"))
    assert [r.png for r in await job.result()] == [b"cat|7"]


def test_payloads_are_checked_field_by_field() -> None:
    good = wire.encode_batch([wire.WireJob(key="1-2", request=REQUEST, images={})])
    (job,) = wire.decode_batch(good)
    assert job.request == REQUEST and job.key == "1-2"
    data = json.loads(good)
    for change, problem in [
        ({"width": "64"}, "width"),
        ({"num_inference_steps": True}, "num_inference_steps"),
        ({"extra": 1}, "unknown"),
    ]:
        bent = json.loads(good)
        bent["jobs"][0]["request"].update(change)
        with pytest.raises(wire.WireError, match=problem):
            wire.decode_batch(json.dumps(bent))
    data["jobs"][0]["images"] = {"init_image": "../../etc/passwd"}
    with pytest.raises(wire.WireError, match="images"):
        wire.decode_batch(json.dumps(data))
    with pytest.raises(wire.WireError, match="over"):
        wire.decode_batch(b"[" * (wire.MAX_PAYLOAD_BYTES + 1))
    with pytest.raises(wire.WireError, match="JSON"):
        wire.decode_batch(pickle.dumps(data))
    fake_png = {"seed": 1, "infotext": "", "png": "/etc/passwd"}
    result = wire.encode_result(wire.WireResult(state="done", images=()))
    bent_result = {**json.loads(result), "images": [fake_png]}
    with pytest.raises(wire.WireError, match="image"):
        wire.decode_result(json.dumps(bent_result))
    failed = json.loads(wire.encode_result(wire.WireResult(state="failed", error="x")))
    for params in ({"key": "x"}, {"reason": {"nested": 1}}):
        with pytest.raises(wire.WireError, match="params"):
            wire.decode_result(json.dumps({**failed, "params": params}))
    assert WorkerInfo.decode(b'{"name": 1}') is None


@pytest.mark.timeout(60)
async def test_a_generation_failure_on_the_worker_reaches_the_awaiting_frontend(
    pool: Pool,
) -> None:
    pool.generate.failing.add("boom")
    job = pool.bot.submit(dataclasses.replace(REQUEST, prompt="boom", requester="u1"))
    with pytest.raises(GenerationFailed) as e:
        await asyncio.wait_for(job.result(), 30)
    assert e.value.key == "drawing_crashed"  # translated by the frontends, as locally


@pytest.mark.timeout(60)
async def test_a_stopped_worker_hands_its_batch_back_and_another_draws_it(pool: Pool) -> None:
    pool.generate.hold()
    job = pool.bot.submit(dataclasses.replace(REQUEST, requester="u1"))
    async for progress in job.updates():
        if progress.state == "running":
            break
    pool.stop.set()  # SIGTERM: the batch may finish for shutdown_grace_s (0.2 s), it does not
    for _ in range(200):
        if job.progress.state == "queued":
            break
        await asyncio.sleep(0.05)
    assert job.progress.state == "queued"  # back in the bot's queue, nobody to draw it
    assert not await pool.client.exists(wire.heartbeat("w1"))  # w1 has left
    other, generate = fake_worker(pool.url, pool.tmp, "w2")
    stop = asyncio.Event()
    task = asyncio.create_task(other.run(stop))
    try:
        assert [r.png for r in await asyncio.wait_for(job.result(), 30)] == [b"cat|7"]
        assert generate.prompts == [["cat"]]
    finally:
        stop.set()
        await task


@pytest.mark.timeout(60)
async def test_a_picture_travels_to_the_worker_and_is_checked_there(pool: Pool) -> None:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buffer, "PNG")
    stored = pool.bot.store_image(buffer.getvalue())
    job = pool.bot.submit(dataclasses.replace(REQUEST, requester="u1", init_image=stored.path))
    (image,) = await asyncio.wait_for(job.result(), 30)
    assert image.request.init_image == stored.path  # the bot's own copy, as submitted
    (drawn,) = pool.generate.calls[-1]
    assert drawn.init_image is not None and drawn.init_image != stored.path
    assert same_bytes(drawn.init_image, stored.path)


def same_bytes(a: str, b: str) -> bool:
    return Path(a).read_bytes() == Path(b).read_bytes()


def test_the_queue_settings_of_a_pool(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from bot.settings import SettingsError, load

    path = tmp_path / "settings.toml"
    path.write_text(
        '[queue]\nbackend = "redis"\nredis_url = "rediss://:pw@redis.lan:6380/1"\n'
        "claim_timeout_s = 30\n"
    )
    monkeypatch.delenv("AIDRAW_REDIS_URL", raising=False)
    queue = load(path).queue
    assert (queue.backend, queue.redis_url, queue.claim_timeout_s) == (
        "redis",
        "rediss://:pw@redis.lan:6380/1",
        30,
    )
    monkeypatch.setenv("AIDRAW_REDIS_URL", "redis://:secret@10.0.0.5:6379/0")
    assert load(path).queue.redis_url == "redis://:secret@10.0.0.5:6379/0"
    monkeypatch.setenv("AIDRAW_REDIS_URL", "http://10.0.0.5")
    with pytest.raises(SettingsError, match="AIDRAW_REDIS_URL: not a Redis URL"):
        load(path)
    monkeypatch.delenv("AIDRAW_REDIS_URL")
    for bad, message in [
        ('backend = "celery"', "queue.backend: 'celery' is not allowed"),
        ("claim_timeout_s = 2.5", "queue.claim_timeout_s: expected int"),
        ("claim_timeout_s = 1", "queue.claim_timeout_s: 1 is out of range"),
        ('redis_url = "localhost:6379"', "queue.redis_url: not a Redis URL"),
    ]:
        path.write_text(f"[queue]\n{bad}\n")
        with pytest.raises(SettingsError, match=message):
            load(path)


@pytest.mark.timeout(30)
async def test_an_unreachable_redis_stops_start_up_without_showing_its_password(
    tmp_path: Path,
) -> None:
    from tests.scaleout.conftest import free_port

    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    bot = PoolEngine(config(url, tmp_path, "bot"), registry=FakeRegistry())
    with pytest.raises(wire.PoolUnreachable) as e:
        await bot.run()
    assert f"cannot reach Redis at redis://127.0.0.1:{url.rsplit(':', 1)[1]}" in str(e.value)
    assert "hunter2" not in str(e.value)
    await bot.close(0)


@pytest.mark.timeout(60)
async def test_an_admins_model_swap_is_loaded_by_a_worker_first(pool: Pool) -> None:
    assert await pool.bot.swap_model("beta", by="admin") == "beta"
    assert pool.worker.engine.status().model == "beta"  # loaded before the swap returned
    job = pool.bot.submit(dataclasses.replace(REQUEST, requester="u1"))  # names no model
    (image,) = await asyncio.wait_for(job.result(), 30)
    assert image.request.model == "beta"
    with pytest.raises(GenerationFailed, match="gamma"):
        await pool.bot.swap_model("gamma", by="admin")  # the worker cannot load it
    assert pool.bot.default_model == "beta"
    assert pool.worker.engine.status().model == "beta"  # still serving


@pytest.mark.timeout(90)
async def test_a_hung_workers_job_is_taken_over_and_answered_once(pool: Pool) -> None:
    pool.generate.hold()  # w1 hangs inside its first step: heartbeats go on, steps do not
    job = pool.bot.submit(dataclasses.replace(REQUEST, requester="u1"))
    async for progress in job.updates():
        if progress.state == "running":
            break
    other, generate = fake_worker(pool.url, pool.tmp, "w2")
    stop = asyncio.Event()
    task = asyncio.create_task(other.run(stop))
    try:
        # After claim_timeout_s (5 s) without progress, w2 takes the batch over.
        (image,) = await asyncio.wait_for(job.result(), 45)
        assert image.png == b"cat|7" and generate.prompts == [["cat"]]
        assert await pool.client.exists(wire.heartbeat("w1"))  # w1 was alive all along
        pool.generate.release()  # w1 wakes up and finishes the same job: nobody hears of it
        await until_idle(pool.client, "w1")
        await asyncio.sleep(0.5)
        assert [r.id for r in pool.bot.history()] == [job.id]
        assert job.state == "done"
    finally:
        stop.set()
        await task
