"""The Redis pool on the demo model: throughput with 1 and 2 `aidraw worker` processes, and the
latency the Redis path adds to a job compared with drawing in-process.

Starts its own redis-server (Debian's) on a free loopback port in a temporary folder, builds the
demo model there, and runs, one after the other:
  local    the in-process Engine (backend "local");
  pool x1  a PoolEngine here and one worker process;
  pool x2  two worker processes;
each process with OMP_NUM_THREADS torch threads (default 1).
Throughput: `--jobs` jobs submitted at once (two users), until the last answer. Latency: one
job at a time, submit to answer, median of `--rounds`. On a 2-core CPU two workers only split
the same cores, so expect little gain there: the pool is for more GPUs and machines.
Usage: python -m bench.scaleout [--jobs N] [--steps N] [--size PX] [--rounds N]
"""

# ruff: noqa: E402  (the thread count must be set before torch is imported)
from __future__ import annotations

import os

# One torch thread per process everywhere (here and in each worker), so that the rows compare
# like with like: on a shared CPU, OpenMP threads that wait for each other can be many times
# slower than one thread.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from bot.launcher import build_engine
from bot.settings import Settings, load
from engine.demo.model import DEMO_NAME, save_demo_model
from engine.request import GenerationRequest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings_file(folder: Path, models: Path, backend: str, url: str) -> Path:
    path = folder / f"settings-{backend}.toml"
    path.write_text(
        "\n".join(
            [
                "[engine]",
                f'models_dir = "{models}"',
                f'default_model = "{DEMO_NAME}"',
                "[queue]",
                f'backend = "{backend}"',
                f'redis_url = "{url}"',
                f'journal = "journal-{backend}.sqlite3"',
                f'results_dir = "results-{backend}"',
                "max_queued_per_user = 1000",
                "history_size = 0",
            ]
        )
        + "\n"
    )
    return path


def request(i: int, args: argparse.Namespace) -> GenerationRequest:
    return GenerationRequest(
        prompt=f"1girl, silver hair, smile, {i}",
        width=args.size,
        height=args.size,
        num_inference_steps=args.steps,
        seed=1000 + i,
        requester=f"bench:user{i % 2}",
    )


async def measure(settings: Settings, args: argparse.Namespace) -> tuple[float, float]:
    """(jobs per second with --jobs at once, median seconds of one job alone)."""
    engine, store = build_engine(settings)
    task = asyncio.create_task(engine.run())
    try:
        # Warm: each worker (or the local engine) has drawn once before the clock starts.
        warm = [engine.submit(request(-1 - i, args)) for i in range(2)]
        await asyncio.gather(*(job.result() for job in warm))
        started = time.perf_counter()
        jobs = [engine.submit(request(i, args)) for i in range(args.jobs)]
        await asyncio.gather(*(job.result() for job in jobs))
        throughput = args.jobs / (time.perf_counter() - started)
        alone = []
        for i in range(args.rounds):
            t0 = time.perf_counter()
            await engine.submit(request(10_000 + i, args)).result()
            alone.append(time.perf_counter() - t0)
        return throughput, statistics.median(alone)
    finally:
        await engine.close()
        await task
        store.close()


def start_workers(count: int, settings: Path, folder: Path) -> list[Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workers = []
    for n in range(count):
        with (folder / f"worker{n}.log").open("ab") as log:
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "bot.cli", "--settings", str(settings), "worker"]
                    + ["--name", f"bench{n}", "--device", "cpu"],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    return workers


def wait_ready(url: str, count: int) -> None:
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        names = client.smembers("aidraw:workers")
        beats = [client.get(f"aidraw:worker:{n.decode()}") for n in names]
        if len(beats) == count and all(b is not None and b'"idle"' in b for b in beats):
            return
        time.sleep(0.2)
    raise SystemExit("the workers did not start within 5 minutes (see their logs)")


def stop(workers: list[Any]) -> None:
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="aidraw-bench-") as tmp:
        folder = Path(tmp)
        port = free_port()
        server = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", tmp, "--save", ""],
            stdout=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/0"
        try:
            save_demo_model(folder / "models")
            local = load(settings_file(folder, folder / "models", "local", url))
            pool_path = settings_file(folder, folder / "models", "redis", url)
            pool = load(pool_path)
            print(
                f"{args.jobs} jobs at {args.size}x{args.size}, {args.steps} steps; "
                f"{cores} CPU core(s), {os.environ['OMP_NUM_THREADS']} torch thread(s) per "
                f"process; latency: median of {args.rounds} jobs alone"
            )
            rows = [("local (in-process)", *asyncio.run(measure(local, args)))]
            for count in (1, 2):
                workers = start_workers(count, pool_path, folder)
                try:
                    wait_ready(url, count)
                    label = f"pool x{count}"
                    rows.append((label, *asyncio.run(measure(pool, args))))
                finally:
                    stop(workers)
        finally:
            server.terminate()
            server.wait(10)
    print(f"{'':28} {'jobs/s':>8} {'one job (s)':>12}")
    for label, throughput, alone in rows:
        print(f"{label:28} {throughput:8.2f} {alone:12.3f}")
    one, two = rows[1][1], rows[2][1]
    print(f"2 workers vs 1: x{two / one:.2f} throughput")
    print(f"the Redis path adds {1000 * (rows[1][2] - rows[0][2]):+.0f} ms to a job alone")


if __name__ == "__main__":
    main()
