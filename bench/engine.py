"""The engine on the demo model: the four numbers of the engine issue, from one run each.

(a) batching speed-up for 4 compatible jobs vs one by one, at the demo model's native size and
    at 512x512, and what the engine's per-size batch limit (max_batch_pixels = auto) does;
(b) asyncio loop lag (p50/p99) while the engine draws, and with the pipeline on the loop;
(c) model swaps for 12 jobs over 3 models, interleaved, vs FIFO order;
(d) engine overhead vs calling generate() directly (same thread, same jobs, interleaved).

Everything torch does runs on the engine's one worker thread (torch slows down when it hops
threads), so every number here comes from the same thread.
Usage: python bench/engine.py [--steps N] [--big-steps N] [--rounds N] [--jobs N] [--skip-big]
"""

# ruff: noqa: E402  (the path fix below must come before the engine imports)
from __future__ import annotations

import sys
from pathlib import Path

# `python bench/engine.py` puts bench/ first on sys.path, where this file would shadow the
# engine package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import argparse
import asyncio
import dataclasses
import functools
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import torch

from engine.demo.model import DEMO_NAME, save_demo_model
from engine.device import DeviceOptions
from engine.engine import AUTO_BATCH_PIXELS, Engine
from engine.generate import generate
from engine.models import LoadedModel, ModelRegistry
from engine.queue import QueueConfig
from engine.request import GenerationRequest, Limits

NATIVE = 128  # the demo model's own size (models/aidraw-demo.toml)


def request(i: int, size: int, steps: int, model: str = DEMO_NAME) -> GenerationRequest:
    return GenerationRequest(
        prompt=f"1girl, silver hair, smile, {i}",
        negative_prompt="lowres",
        width=size,
        height=size,
        num_inference_steps=steps,
        seed=1000 + i,
        model=model,
        requester=f"user{i}",
    )


async def timed(fn: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await fn()
    return time.perf_counter() - started


async def draw(engine: Engine[Any], requests: Sequence[GenerationRequest]) -> None:
    """Queue all (paused, so the scheduler sees them together), then draw them."""
    engine.pause()
    jobs = [engine.submit(r) for r in requests]
    engine.resume()
    for job in jobs:
        await job.result()


async def batching(
    engine: Engine[Any], size: int, steps: int, rounds: int, *, warm_up: bool = True
) -> str:
    """4 jobs one by one, batched, and as max_batch_pixels=auto decides; the configurations
    alternate over `rounds` and the best time of each counts (the machine may be shared)."""
    requests = [request(i, size, steps) for i in range(4)]
    base = engine.config
    per_call = max(1, min(4, AUTO_BATCH_PIXELS["cpu"] // (size * size)))
    configs = {"one by one": (1, 0), "batched": (4, 1 << 40)}
    if per_call not in (1, 4):
        configs["engine auto"] = (4, 0)
    best: dict[str, float] = {}
    first = 0 if warm_up else 1  # round 0 warms up both batch shapes
    for round_ in range(first, rounds + 1):
        for label, (max_batch, pixels) in configs.items():
            engine.config = dataclasses.replace(base, max_batch=max_batch, max_batch_pixels=pixels)
            seconds = await timed(functools.partial(draw, engine, requests))
            if round_:
                best[label] = min(best.get(label, seconds), seconds)
    engine.config = base
    one, batched = best["one by one"], best["batched"]
    auto = {1: one, 4: batched}.get(per_call, best.get("engine auto", 0.0))
    return (
        f"{size}x{size}, {steps} steps: one by one {one:.2f} s, batched {batched:.2f} s "
        f"-> {one / batched:.2f}x; max_batch_pixels=auto draws {per_call} per call here "
        f"-> {one / auto:.2f}x (best of {rounds})"
    )


async def loop_lag(engine: Engine[Any], work: Callable[[], Awaitable[Any]]) -> list[float]:
    """Milliseconds the loop was late for a 5 ms timer while `work` ran."""
    lags: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            started = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append((time.perf_counter() - started - 0.005) * 1000)

    task = asyncio.create_task(ticker())
    await work()
    done.set()
    await task
    return lags


def percentiles(values: list[float]) -> str:
    cuts = statistics.quantiles(values, n=100)
    return f"p50 {cuts[49]:.1f} ms, p99 {cuts[98]:.1f} ms ({len(values)} samples)"


async def swaps(models_dir: Path, tmp: Path) -> str:
    names = [f"model-{c}" for c in "abc"]
    for name in names:
        shutil.copytree(models_dir / DEMO_NAME, models_dir / name)
        shutil.copy(models_dir / f"{DEMO_NAME}.toml", models_dir / f"{name}.toml")
    registry = ModelRegistry(models_dir)
    loads: list[str] = []

    def load(name: str) -> LoadedModel:
        loads.append(name)
        return registry.load(name, DeviceOptions())

    engine = make_engine(registry, load, tmp / "swaps", default_model=names[0])
    task = asyncio.create_task(engine.run())
    order = [names[i % 3] for i in range(12)]
    await draw(engine, [request(i, 64, 2, model=m) for i, m in enumerate(order)])
    fifo = 1 + sum(a != b for a, b in zip(order, order[1:], strict=False))
    await engine.close()
    await task
    return (
        f"12 jobs over 3 models, interleaved: engine {len(loads) - 1} swaps "
        f"({len(loads)} loads), FIFO would make {fifo - 1} ({fifo} loads)"
    )


async def overhead(
    engine: Engine[Any], model: LoadedModel, runs: int, steps: int
) -> tuple[float, float]:
    """Median seconds per job: generate() directly on the torch thread vs through the engine."""
    direct: list[float] = []
    through: list[float] = []
    for i in range(runs + 1):
        r = request(i, NATIVE, steps)
        call = functools.partial(generate, model, [r], limits=Limits())
        t_direct = await timed(functools.partial(engine.run_in_worker, call))
        job = engine.submit(r)
        t_engine = await timed(job.result)
        if i:  # the first pair is warm-up
            direct.append(t_direct)
            through.append(t_engine)
    return statistics.median(direct), statistics.median(through)


def make_engine(
    registry: ModelRegistry,
    load: Callable[[str], LoadedModel],
    folder: Path,
    **kwargs: Any,
) -> Engine[LoadedModel]:
    config = QueueConfig(
        journal=str(folder / "journal.sqlite3"),
        results_dir=str(folder / "results"),
        max_queued_per_user=1000,
    )
    return Engine(config, registry=registry, load=load, generate=generate, **kwargs)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=28, help="steps at the native size")
    parser.add_argument("--big-steps", type=int, default=28, help="steps at 512x512 (slow)")
    parser.add_argument("--jobs", type=int, default=6, help="jobs per side for (d)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of (a) at each size")
    parser.add_argument("--skip-big", action="store_true", help="no 512x512 measurement")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        models = tmp / "models"
        save_demo_model(models)
        registry = ModelRegistry(models)
        engine = make_engine(
            registry, lambda name: registry.load(name, DeviceOptions()), tmp / "main"
        )
        task = asyncio.create_task(engine.run())
        model = await engine.run_in_worker(registry.load, DEMO_NAME, DeviceOptions())
        print(
            f"aidraw engine bench: device {model.device}, torch threads "
            f"{torch.get_num_threads()}, demo model (native {NATIVE}x{NATIVE})"
        )

        print("(a) batching, 4 compatible jobs of 4 users")
        print("    " + await batching(engine, NATIVE, args.steps, args.rounds))
        lags = await loop_lag(
            engine,
            functools.partial(draw, engine, [request(i, NATIVE, args.steps) for i in range(4)]),
        )
        if not args.skip_big:
            print("    " + await batching(engine, 512, args.big_steps, 1, warm_up=False))

        direct, through = await overhead(engine, model, args.jobs, args.steps)

        print("(b) event-loop lag while the engine draws (5 ms timer)")
        print(f"    engine: {percentiles(lags)}")
        r = request(0, NATIVE, args.steps)
        await engine.close()
        await task
        blocked = await loop_lag(
            engine, _on_loop(functools.partial(generate, model, [r], limits=Limits()))
        )
        print(f"    pipeline on the loop thread (for contrast): max {max(blocked):.0f} ms")

        print("(c) model swaps")
        print("    " + await swaps(models, tmp))

        print("(d) engine overhead vs generate() directly, same thread, medians")
        extra = 100 * (through / direct - 1)
        print(
            f"    {NATIVE}x{NATIVE}, {args.steps} steps, {args.jobs} jobs: generate() "
            f"{direct:.3f} s/job, engine {through:.3f} s/job -> {extra:+.1f} %"
        )


def _on_loop(fn: Callable[[], Any]) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        await asyncio.sleep(0.02)  # let the ticker start
        fn()  # blocks the loop: what the engine avoids

    return run


if __name__ == "__main__":
    asyncio.run(main())
