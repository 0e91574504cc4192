"""The output image check's cost, and that drawing does not wait on it.

(a) NudeNet (bot/classifier.py: its ONNX detector on onnxruntime's CPU provider) per image,
    on PNGs the demo model drew, at the size asked: the first call (loading the model) and the
    median of the rest;
(b) the same jobs drawn by the engine (its one torch worker thread) twice, interleaved: with
    no check, and with every result checked as the frontends do it (on the check's own thread,
    while the engine draws the next job). It prints the drawing time per job from the engine's
    journal (started → finished) and the wall time until the last result, and until the last
    check. A check that held up drawing would lengthen the first two.
Usage: python -m bench.nsfw_check [--jobs N] [--steps N] [--size N] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bot.classifier import ImageCheck, NudeNetClassifier, Verdict
from engine.demo.model import save_demo_model
from engine.device import DeviceOptions
from engine.engine import Engine
from engine.generate import generate
from engine.models import ModelRegistry
from engine.queue import QueueConfig
from engine.request import GenerationRequest


def request(i: int, size: int, steps: int) -> GenerationRequest:
    return GenerationRequest(
        prompt=f"1girl, silver hair, smile, {i}",
        width=size,
        height=size,
        num_inference_steps=steps,
        seed=1000 + i,
        requester="bench",
    )


async def run(
    engine: Engine[Any], requests: list[GenerationRequest], check: ImageCheck | None
) -> tuple[list[float], float, float]:
    """Draw `requests` (queued together); with `check`, each result is checked in a task as
    soon as it is out, while the engine goes on. Returns each job's drawing seconds, the wall
    seconds until the last result and until the last check."""
    started = time.perf_counter()
    jobs = [engine.submit(r) for r in requests]
    checks: list[asyncio.Task[list[Verdict]]] = []
    for job in jobs:
        results = await job.result()
        if check is not None:
            checks.append(asyncio.create_task(check.check([r.png for r in results])))
    drawn = time.perf_counter() - started
    await asyncio.gather(*checks)
    checked = time.perf_counter() - started
    drawing = []
    for job in jobs:
        record = engine.record(job.id)
        assert record is not None and record.started_at and record.finished_at
        drawing.append(record.finished_at - record.started_at)
    return drawing, drawn, checked


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=6, help="jobs per run")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each side, interleaved")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        save_demo_model(tmp / "models")
        registry = ModelRegistry(tmp / "models")
        config = QueueConfig(
            journal=str(tmp / "journal.sqlite3"),
            results_dir=str(tmp / "results"),
            max_batch=1,
            max_queued_per_user=1000,
        )
        engine: Engine[Any] = Engine(
            config,
            registry=registry,
            load=lambda name: registry.load(name, DeviceOptions()),
            generate=generate,
        )
        loop_task = asyncio.create_task(engine.run())
        warm = [request(i, args.size, args.steps) for i in range(2)]
        await run(engine, warm, None)  # load the model, warm torch up

        # (a) the checker alone, on the demo model's images
        pngs = []
        for i in range(args.jobs):
            (result,) = await engine.submit(request(100 + i, args.size, args.steps)).result()
            pngs.append(result.png)
        nudenet = NudeNetClassifier()
        times = []
        for png in pngs:
            started = time.perf_counter()
            label = nudenet.classify(png).label
            times.append(time.perf_counter() - started)
        print(
            f"(a) NudeNet per {args.size}x{args.size} image: first {times[0] * 1000:.0f} ms "
            f"(loads the model), then median {statistics.median(times[1:]) * 1000:.1f} ms "
            f"over {len(times) - 1} images (label of the last: {label})"
        )

        # (b) drawing with and without the check, interleaved
        check = ImageCheck(NudeNetClassifier())
        await check.check(pngs[:1])  # its model loaded once, as at the first result of a bot
        sides: dict[str, list[tuple[list[float], float, float]]] = {"no check": [], "check": []}
        for round_ in range(args.rounds):
            for label, checker in (("no check", None), ("check", check)):
                base = 1000 * (round_ + 1) + (500 if checker else 0)
                requests = [request(base + i, args.size, args.steps) for i in range(args.jobs)]
                sides[label].append(await run(engine, requests, checker))
        check.close()
        print(
            f"(b) {args.jobs} jobs of {args.size}x{args.size}, {args.steps} steps, "
            f"best of {args.rounds}:"
        )
        for label, runs in sides.items():
            per_job = min(statistics.median(drawing) for drawing, _, _ in runs)
            drawn = min(d for _, d, _ in runs)
            checked = min(c for _, _, c in runs)
            line = (
                f"    {label:>8}: drawing per job {per_job:.3f} s (median), all drawn {drawn:.2f} s"
            )
            if label == "check":
                line += f", all checked {checked:.2f} s"
            rounds = ", ".join(f"{statistics.median(d):.3f}/{t:.2f}" for d, t, _ in runs)
            print(f"{line}  [each round, per job/all drawn: {rounds}]")
        await engine.close()
        await loop_task


if __name__ == "__main__":
    asyncio.run(main())
