"""aidraw's generate() vs a bare diffusers pipeline call: same model, seed, steps, size, sampler.

Prints seconds per image for each (median of interleaved runs) and the ratio (goal ≤ 1.03).
generate() also encodes the PNG with its infotext; the bare call returns a PIL image.
Usage: python -m bench.overhead [--runs N] [--steps N] [--size N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from engine.demo.model import DEMO_NAME, save_demo_model
from engine.device import DeviceOptions
from engine.generate import generate
from engine.models import ModelRegistry
from engine.request import GenerationRequest, Limits
from engine.sampling.loop import make_scheduler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        save_demo_model(Path(tmp))
        model = ModelRegistry(Path(tmp)).load(DEMO_NAME, DeviceOptions())
    request = GenerationRequest(
        prompt="1girl, silver hair, smile",
        negative_prompt="lowres, bad anatomy",
        width=args.size,
        height=args.size,
        num_inference_steps=args.steps,
        guidance_scale=11.0,
        sampler="Euler a",
        clip_skip=1,  # the bare pipeline's own clip skip breaks on transformers 5
        seed=42,
    )
    pipe = model.pipe

    def ours() -> None:
        generate(model, [request], limits=Limits())

    def bare() -> None:
        pipe.scheduler = make_scheduler("Euler a", model.scheduler_config)
        pipe(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            width=args.size,
            height=args.size,
            num_inference_steps=args.steps,
            guidance_scale=11.0,
            generator=torch.Generator("cpu").manual_seed(42),
        )

    for fn in (ours, bare):  # warm-up
        fn()
    times: dict[str, list[float]] = {"aidraw generate()": [], "bare diffusers": []}
    for _ in range(args.runs):
        for name, fn in (("aidraw generate()", ours), ("bare diffusers", bare)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    print(
        f"device {model.device}, {args.size}x{args.size}, {args.steps} steps, Euler a, "
        f"{args.runs} runs each (median), threads {torch.get_num_threads()}"
    )
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, value in medians.items():
        print(f"  {name:18s} {value:.3f} s/image")
    print(f"  ratio              {medians['aidraw generate()'] / medians['bare diffusers']:.3f}")


if __name__ == "__main__":
    main()
