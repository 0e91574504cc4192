"""The Redis pool with real processes: a bot (tests/scaleout/botproc.py, a PoolEngine as `aidraw
run` builds it) and `aidraw worker`s on the demo model, through a real redis-server.

Heavy (each worker loads torch and the model): run alone with
`.venv/bin/python -m pytest -q tests/scaleout`.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.scaleout.conftest import Pool, RedisServer

pytestmark = pytest.mark.slow
TIMEOUT_S = 420  # processes start torch and a model each, on CPU cores others share


def settings_text(models_dir: Path, redis_url: str, **queue: object) -> str:
    table = {"max_queued_per_user": 50, **queue}
    lines = [
        "[engine]",
        f'models_dir = "{models_dir}"',
        'default_model = "aidraw-demo"',
        "[queue]",
        'backend = "redis"',
        f'redis_url = "{redis_url}"',
        "claim_timeout_s = 5",
        'journal = "journal.sqlite3"',
        'results_dir = "results"',
        "warm_up = false",
        *(f"{k} = {json.dumps(v)}" for k, v in table.items()),
    ]
    return "\n".join(lines) + "\n"


def requests(
    count: int, *, steps: int, users: int = 2, **fields: object
) -> list[dict[str, object]]:
    return [
        {
            "prompt": f"1girl, smile, {i}",
            "width": 64,
            "height": 64,
            "num_inference_steps": steps,
            "seed": 100 + i,
            "requester": f"test:user{i % users}",
            **fields,
        }
        for i in range(count)
    ]


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[Callable[[str], Pool]]:
    made: list[Pool] = []

    def make(settings: str) -> Pool:
        made.append(Pool(tmp_path, settings))
        return made[-1]

    yield make
    for p in made:
        p.close()


def wait_for(what: str, check: Callable[[], bool], pool: Pool, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if any(process.poll() not in (None, 0, -signal.SIGKILL) for process in pool.processes):
            break  # a process failed: its log says why
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}\n{pool.logs()}")


def ready(client: redis.Redis, count: int) -> Callable[[], bool]:
    def check() -> bool:
        beats = heartbeats(client).values()
        return len(beats) == count and all(b["state"] == "idle" for b in beats)

    return check


def heartbeats(client: redis.Redis) -> dict[str, dict[str, object]]:
    beats = {}
    for name in client.smembers("aidraw:workers"):
        raw = client.get(f"aidraw:worker:{name.decode()}")
        if raw is not None:
            beats[name.decode()] = json.loads(raw)
    return beats


def cpu_seconds(pid: int, *, over: float) -> float:
    """CPU time (user + system) process `pid` uses during the next `over` seconds."""

    def used() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    before = used()
    time.sleep(over)
    return used() - before


def submit(pool: Pool, jobs: list[dict[str, object]]) -> None:
    path = pool.folder / "jobs.json"
    path.write_text(json.dumps(jobs))
    pool.bot(str(path))


def assert_each_answered_once(pool: Pool, count: int) -> list[dict[str, object]]:
    replies = pool.replies()
    per_job = Counter(str(r["reply_to"]) for r in replies)
    assert per_job == Counter(f"test:{i}" for i in range(count)), pool.logs()
    assert not [r for r in replies if "error" in r], replies
    return replies


@pytest.mark.timeout(TIMEOUT_S)
def test_a_killed_workers_job_is_drawn_by_the_other_and_answered_once(
    pool: Callable[[str], Pool], redis_url: str, demo_models_dir: Path
) -> None:
    p = pool(settings_text(demo_models_dir, redis_url, max_batch=2))
    client = redis.Redis.from_url(redis_url)
    workers = {name: p.worker(name) for name in ("w1", "w2")}
    wait_for("two workers", ready(client, 2), p)
    jobs = requests(8, steps=60)
    submit(p, jobs)
    held: dict[str, list[str]] = {}  # worker -> keys of the jobs it holds (drawing them)

    def someone_drawing() -> bool:
        held.clear()
        for key in client.keys("aidraw:inflight:*"):
            owner = client.get(key)
            if owner is not None:
                held.setdefault(owner.decode(), []).append(key.decode().split(":")[-1])
        beats = heartbeats(client)
        return any(beats.get(name, {}).get("state") == "busy" for name in held)

    wait_for("a worker drawing", someone_drawing, p)
    victim = next(name for name in held if heartbeats(client)[name]["state"] == "busy")
    mine = held[victim]
    os.kill(workers[victim].pid, signal.SIGKILL)
    wait_for("every reply", lambda: len(p.replies()) >= len(jobs), p)
    time.sleep(2)  # a second answer for a job would come now
    replies = assert_each_answered_once(p, len(jobs))
    assert [r["seeds"] for r in sorted(replies, key=lambda r: str(r["reply_to"]))] == [
        [jobs[int(str(r["reply_to"]).split(":")[1])]["seed"]]
        for r in sorted(replies, key=lambda r: str(r["reply_to"]))
    ]
    log = (p.folder / "bot.log").read_text()
    survivor = "w2" if victim == "w1" else "w1"
    # Idle, the survivor blocks on Redis: well under a tenth of a core.
    assert cpu_seconds(workers[survivor].pid, over=5.0) < 0.5
    job_ids = [key.split("-")[0] for key in mine]
    for job_id in job_ids:
        assert f"job {job_id} drawn by worker {survivor}" in log, p.logs()


@pytest.mark.timeout(TIMEOUT_S)
def test_a_killed_bot_answers_every_job_once_after_its_restart(
    pool: Callable[[str], Pool], redis_url: str, redis_server: RedisServer, demo_models_dir: Path
) -> None:
    p = pool(settings_text(demo_models_dir, redis_url, max_batch=1))
    client = redis.Redis.from_url(redis_url)
    p.worker("w1")
    wait_for("a worker", ready(client, 1), p)
    jobs = requests(8, steps=30)
    submit(p, jobs)
    wait_for("a first reply", lambda: len(p.replies()) >= 1, p)
    bot = p.processes[-1]
    os.kill(bot.pid, signal.SIGKILL)
    bot.wait()
    assert len(p.replies()) < len(jobs), "the bot died mid-queue"
    # Redis dies too: what its append-only file kept must be enough.
    redis_server.restart()
    p.bot()
    wait_for("every reply", lambda: len(p.replies()) >= len(jobs), p)
    time.sleep(2)
    assert_each_answered_once(p, len(jobs))


@pytest.mark.timeout(TIMEOUT_S)
def test_fair_share_caps_and_model_affinity_hold_across_the_pool(
    pool: Callable[[str], Pool], redis_url: str, demo_models_dir: Path, tmp_path: Path
) -> None:
    import shutil

    models = tmp_path / "models"
    shutil.copytree(demo_models_dir, models)
    for other in ("aidraw-demo-b", "aidraw-demo-c"):
        shutil.copytree(models / "aidraw-demo", models / other)
    p = pool(settings_text(models, redis_url, max_batch=1, max_queued_per_user=6))
    client = redis.Redis.from_url(redis_url)
    p.worker("w1")
    p.worker("w2")
    wait_for("two workers", ready(client, 2), p)

    # 1. A heavy user queues six, then a light one two: fair share serves the light user's
    # jobs among the first five, whichever worker draws them. The cap holds for the pool: a
    # seventh job of the heavy user is refused by the bot.
    heavy = [{**r, "requester": "test:heavy"} for r in requests(6, steps=8)]
    light = [{**r, "requester": "test:light"} for r in requests(2, steps=8)]
    submit(p, [*heavy, *light, {**heavy[0], "seed": 999}])
    wait_for("every reply", lambda: len(p.replies()) >= 9, p)
    replies = p.replies()
    refused = [r for r in replies if "error" in r]
    assert [r["reply_to"] for r in refused] == ["test:8"], replies
    assert "6 unfinished drawings" in str(refused[0]["error"])
    order = [str(r["requester"]) for r in replies if "error" not in r]
    assert max(i for i, who in enumerate(order) if who == "test:light") <= 4, order
    # The light user's first request is the heavy user's first (same prompt and seed): the
    # same picture, though the two go out at once to the two idle workers.
    sha = {r["reply_to"]: r["sha"] for r in replies if "sha" in r}
    assert sha["test:0"] == sha["test:6"]
    p.processes[-1].terminate()
    p.processes[-1].wait(30)
    (p.folder / "replies.jsonl").rename(p.folder / "replies-fair.jsonl")

    # 2. Nine jobs over three models, interleaved (a, b, c, a, b, c...). Dealt to the two
    # workers in turn, as a pool without affinity would, every job but one would swap the
    # model (8 swaps); with affinity each worker keeps to the models it has loaded.
    before = sum(int(str(b["swaps"])) for b in heartbeats(client).values())
    names = ("aidraw-demo", "aidraw-demo-b", "aidraw-demo-c")
    mixed = [
        {**r, "requester": f"test:mixed{i % 2}", "model": names[i % 3]}
        for i, r in enumerate(requests(9, steps=8))
    ]
    submit(p, mixed)
    wait_for("every reply", lambda: len(p.replies()) >= len(mixed), p)
    assert_each_answered_once(p, len(mixed))
    swaps = sum(int(str(b["swaps"])) for b in heartbeats(client).values()) - before
    assert swaps <= 4, (swaps, p.logs())


@pytest.mark.timeout(TIMEOUT_S)
def test_aidraw_run_with_a_worker_answers_the_a1111_api_through_redis(
    pool: Callable[[str], Pool], redis_url: str, demo_models_dir: Path
) -> None:
    import base64
    import io
    import urllib.request

    from PIL import Image

    from tests.scaleout.conftest import free_port

    port = free_port()
    p = pool(settings_text(demo_models_dir, redis_url) + f"[web]\nport = {port}\n")
    for token in ("AIDRAW_DISCORD_TOKEN", "AIDRAW_TELEGRAM_TOKEN"):
        p.env.pop(token, None)
    run = p.start(["-m", "bot.cli", "run", "--worker"], "run.log")
    client = redis.Redis.from_url(redis_url)
    wait_for("the run's worker", ready(client, 1), p)
    body = json.dumps({"prompt": "1girl", "width": 64, "height": 64, "steps": 4, "seed": 5})
    call = urllib.request.Request(
        f"http://127.0.0.1:{port}/sdapi/v1/txt2img",
        data=body.encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(call, timeout=120) as answer:
        images = json.loads(answer.read())["images"]
    picture = Image.open(io.BytesIO(base64.b64decode(images[0])))
    assert picture.size == (64, 64) and "Seed: 5" in picture.info["parameters"]
    run.send_signal(signal.SIGTERM)  # the bot stops its worker too
    assert run.wait(60) == 0
    assert heartbeats(client) == {}
