"""What add-ons cost: a hypernetwork, one LoRA, three LoRAs and an embedding vs plain generation.

The demo model, add-on files written for it in A1111's formats (tests/addon_files.py), the
same request and seeds for every case. For each case it prints the first drawing (loading the
files and merging the LoRAs) and the median of the next runs (files cached; a LoRA set that
stays merged costs nothing more), each also as a ratio to plain, plus what switching between
two LoRA sets costs per batch (unmerge + merge).
Usage: python -m bench.addons [--runs N] [--steps N] [--size N]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

from engine.demo.model import DEMO_NAME, save_demo_model
from engine.device import DeviceOptions
from engine.generate import generate
from engine.models import LoadedModel, ModelRegistry
from engine.request import GenerationRequest, Limits
from tests.addon_files import (
    word_vectors,
    write_embedding,
    write_hypernetwork,
    write_lora,
)

CASES = {
    "plain": "",
    "hypernetwork": "<hypernet:anime:1>",
    "1 LoRA": "<lora:a:0.8>",
    "3 LoRAs": "<lora:a:0.8><lora:b:0.5><lora:c:0.3>",
    "embedding": ", redhead",
}


def build(tmp: Path) -> LoadedModel:
    save_demo_model(tmp / "demo")
    models = tmp / "models"
    models.mkdir()
    os.symlink(tmp / "demo" / DEMO_NAME, models / DEMO_NAME)
    pipe = ModelRegistry(tmp / "demo").load(DEMO_NAME, DeviceOptions()).pipe
    width = int(pipe.text_encoder.config.hidden_size)
    write_hypernetwork(models / "hypernetworks" / "anime.pt", (width,))
    for seed, name in enumerate("abc"):
        write_lora(models / "Lora" / f"{name}.safetensors", pipe, seed=seed)
    write_embedding(models / "embeddings" / "redhead.pt", word_vectors(pipe, "red hair"))
    return ModelRegistry(models).load(DEMO_NAME, DeviceOptions())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = build(Path(tmp))
        base = GenerationRequest(
            prompt="1girl, silver hair, smile",
            negative_prompt="lowres, bad anatomy",
            width=args.size,
            height=args.size,
            num_inference_steps=args.steps,
            seed=42,
        )

        def seconds(suffix: str) -> float:
            request = dataclasses.replace(base, prompt=base.prompt + suffix)
            started = time.perf_counter()
            generate(model, [request], limits=Limits())
            return time.perf_counter() - started

        seconds("")  # warm-up: first-call costs that are not the add-ons'
        first = {name: seconds(suffix) for name, suffix in CASES.items() if name != "plain"}
        first["plain"] = seconds("")
        runs: dict[str, list[float]] = {name: [] for name in CASES}
        for _ in range(args.runs):
            for name, suffix in CASES.items():  # interleaved: drift hits every case alike
                seconds(suffix)  # the set is merged now: the next run is steady state
                runs[name].append(seconds(suffix))
        switching = [
            seconds(CASES["1 LoRA"] if i % 2 else "<lora:b:0.8>") for i in range(2 * args.runs)
        ]

    plain = statistics.median(runs["plain"])
    print(f"demo model, {args.size}x{args.size}, {args.steps} steps Euler a, {args.runs} runs")
    print(f"{'case':14} {'first (s)':>10} {'x plain':>8} {'median (s)':>11} {'x plain':>8}")
    for name in CASES:
        median = statistics.median(runs[name])
        print(
            f"{name:14} {first[name]:10.3f} {first[name] / plain:8.2f} "
            f"{median:11.3f} {median / plain:8.2f}"
        )
    switch = statistics.median(switching)
    print(f"{'LoRA switch':14} {'':>10} {'':>8} {switch:11.3f} {switch / plain:8.2f}")


if __name__ == "__main__":
    main()
