"""Our sampler loops vs diffusers' scheduler loops on the same UNet: seconds per step, ratio.

For each row of engine.sampling.samplers.SAMPLERS: our loop (CFGDenoiser + the row's sampler, as
generate() runs it) against the diffusers pipeline with the closest stock scheduler
(`make_scheduler`), both from the same prompt embeddings and noise, latents out (no VAE).
Seconds per step = loop time / sampler steps (A1111's DDIM runs one step fewer). Goal: ratio
≤ 1.02. Machines are noisy: interleaved runs, median of --runs (after a warm-up); the load
average is printed, and a ratio only means something on an otherwise idle machine.
Usage: python -m bench.samplers [--runs N] [--steps N] [--size N] [--sampler NAME ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from engine.demo.model import DEMO_NAME, save_demo_model
from engine.device import DeviceOptions
from engine.models import LoadedModel, ModelRegistry
from engine.sampling.kdiffusion import CFGDenoiser, NoiseSchedule
from engine.sampling.loop import make_scheduler, sample
from engine.sampling.samplers import SAMPLERS
from engine.sampling.seeds import ImageRNG, NoiseSpec
from engine.sampling.steps import total_steps

SCALE = 7.0


def runners(
    model: LoadedModel, name: str, steps: int, size: int
) -> tuple[Callable[[], None], Callable[[], None], int, int]:
    """(ours, diffusers', our step count, diffusers' step count) for one sampler."""
    pipe = model.pipe
    row = SAMPLERS[name]
    with torch.inference_mode():
        cond, uncond = pipe.encode_prompt(
            "1girl, silver hair, smile", model.device, 1, True, "lowres, bad anatomy"
        )
    schedule = NoiseSchedule.from_config(model.scheduler_config).to(model.device)
    shape = (4, size // 8, size // 8)
    spec = NoiseSpec(seed=42, source="CPU", ensd=31337)

    def unet(x_in: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = pipe.unet(x_in, t, encoder_hidden_states=context, return_dict=False)[0]
        return out

    def ours() -> None:
        rng = ImageRNG(shape, [spec], model.device)
        noise = rng.first()
        denoiser = CFGDenoiser(unet, schedule, lambda _: (cond, uncond), SCALE, dtype=model.dtype)
        with torch.inference_mode():
            sample(row, denoiser, noise, steps, lambda *_: rng.next(), lambda *_: None, seeds=[42])

    reference = StableDiffusionPipeline(
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        unet=pipe.unet,
        scheduler=make_scheduler(name, model.scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    reference.set_progress_bar_config(disable=True)

    def theirs() -> None:
        g = torch.Generator("cpu").manual_seed(42)
        latents = torch.randn((1, *shape), generator=g).to(model.device, model.dtype)
        reference(
            prompt_embeds=cond,
            negative_prompt_embeds=uncond,
            width=size,
            height=size,
            num_inference_steps=steps,
            guidance_scale=SCALE,
            latents=latents,
            generator=g,
            output_type="latent",
        )

    return ours, theirs, total_steps(row, steps), steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--sampler", nargs="*", default=list(SAMPLERS))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        save_demo_model(Path(tmp))
        model = ModelRegistry(Path(tmp)).load(DEMO_NAME, DeviceOptions())
    print(
        f"device {model.device}, {args.size}x{args.size}, {args.steps} steps, CFG {SCALE:g}, "
        f"{args.runs} run(s) each after a warm-up (median), threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(f"  {'sampler':18s} {'ours s/step':>12s} {'diffusers':>10s} {'ratio':>6s}")
    ratios = []
    for name in args.sampler:
        ours, theirs, our_steps, their_steps = runners(model, name, args.steps, args.size)
        ours(), theirs()  # warm-up
        times: dict[str, list[float]] = {"ours": [], "theirs": []}
        for _ in range(args.runs):
            for key, fn in (("ours", ours), ("theirs", theirs)):
                t0 = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t0)
        per_step = statistics.median(times["ours"]) / our_steps
        reference = statistics.median(times["theirs"]) / their_steps
        ratios.append(per_step / reference)
        print(f"  {name:18s} {per_step:12.4f} {reference:10.4f} {per_step / reference:6.3f}")
    print(f"  {'median ratio':18s} {'':12s} {'':10s} {statistics.median(ratios):6.3f}")


if __name__ == "__main__":
    main()
