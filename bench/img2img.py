"""What img2img, inpainting and hires fix cost next to txt2img at the same size.

The demo model, one request and seed. Cases: txt2img; img2img at strength 0.5 (A1111 runs
int(0.5 · steps) + 1 steps, plus a VAE encode); inpainting at 0.5 (mask blur, the blend at
every model call, the overlay); hires fix ×2 with the "Latent" and "Lanczos" upscalers
(the first pass, then `steps` more steps at 4x the pixels, Lanczos also decoding and encoding
in between). Each case's median of `--runs` interleaved runs, in seconds and as a ratio to
txt2img, with the sampler steps each ran.
Usage: python -m bench.img2img [--runs N] [--steps N] [--size N]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

from engine.demo.model import DEMO_NAME, save_demo_model
from engine.device import DeviceOptions
from engine.generate import generate
from engine.models import LoadedModel, ModelRegistry
from engine.request import GenerationRequest, Limits
from engine.sampling.steps import planned_steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        save_demo_model(tmp)
        model: LoadedModel = ModelRegistry(tmp).load(DEMO_NAME, DeviceOptions())
        base = GenerationRequest(
            prompt="1girl, silver hair, smile",
            negative_prompt="lowres, bad anatomy",
            width=args.size,
            height=args.size,
            num_inference_steps=args.steps,
            seed=42,
            sampler="Euler a",
        )
        picture = tmp / "picture.png"
        picture.write_bytes(generate(model, [base], limits=Limits())[0].png)
        mask = tmp / "mask.png"
        square = Image.new("L", (args.size, args.size))
        square.paste(255, (args.size // 4, args.size // 4, args.size * 3 // 4, args.size * 3 // 4))
        square.save(mask)
        cases: dict[str, dict[str, Any]] = {
            "txt2img": {},
            "img2img 0.5": {"init_image": str(picture), "denoising_strength": 0.5},
            "inpaint 0.5": {
                "init_image": str(picture),
                "mask_image": str(mask),
                "denoising_strength": 0.5,
            },
            "hires x2 Latent": {"enable_hr": True},
            "hires x2 Lanczos": {"enable_hr": True, "hr_upscaler": "Lanczos"},
        }
        requests = {name: dataclasses.replace(base, **changes) for name, changes in cases.items()}
        limits = Limits(max_pixels=4 * args.size * args.size, max_side=4 * args.size)

        def seconds(request: GenerationRequest) -> float:
            started = time.perf_counter()
            generate(model, [request], limits=limits)
            return time.perf_counter() - started

        seconds(base)  # warm-up
        runs: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.runs):
            for name, request in requests.items():  # interleaved: drift hits every case alike
                runs[name].append(seconds(request))

    plain = statistics.median(runs["txt2img"])
    print(f"demo model, {args.size}x{args.size}, {args.steps} steps Euler a, {args.runs} runs")
    print(f"{'case':18} {'steps':>6} {'median (s)':>11} {'x txt2img':>10}")
    for name, request in requests.items():
        median = statistics.median(runs[name])
        print(f"{name:18} {planned_steps(request):6} {median:11.3f} {median / plain:10.2f}")


if __name__ == "__main__":
    main()
