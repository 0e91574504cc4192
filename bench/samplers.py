"""Every sampler of the table against diffusers' scheduler loop on the same UNet.

The rows: each A1111 v1.9 sampler name (`V19_SAMPLERS`) with its "Automatic" schedule type,
then each other schedule type once on DPM++ 2M (`SCHEDULE_SAMPLER`); `--only` picks rows by
sampler name or schedule type, or adds an old name ("DPM++ 2M Karras") as it runs alone. Our
loop (CFGDenoiser + the row, as generate() runs it) and the diffusers pipeline with the closest
stock scheduler (`make_scheduler`, with the row's schedule) start from the same prompt
embeddings and noise, latents out (no VAE). Per row: seconds per image, UNet calls (one call
is cond and uncond together, in both), and the ratios to diffusers per image and per UNet call
(the loop's own overhead; goal ≤ 1.02). "—" where diffusers has no such sampler or schedule.
Machines are noisy: interleaved runs, median of --runs (after a warm-up); the load average is
printed, and a ratio only means something on an otherwise idle machine.
Usage: python -m bench.samplers [--runs N] [--steps N] [--size N] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionPipeline

from engine.demo.model import DEMO_NAME, save_demo_model
from engine.device import DeviceOptions
from engine.models import LoadedModel, ModelRegistry
from engine.sampling.denoiser import CFGDenoiser, NoiseSchedule
from engine.sampling.loop import make_scheduler, sample
from engine.sampling.samplers import SAMPLERS, V19_SAMPLERS, Sampler, canonical_sampler, run_row
from engine.sampling.schedules import AUTOMATIC, SCHEDULE_LABELS, schedule_label
from engine.sampling.seeds import ImageRNG, NoiseSpec

SCALE = 7.0
SCHEDULE_SAMPLER = "DPM++ 2M"  # the sampler each schedule type runs on
# Our schedules → diffusers' scheduler options for them (diffusers has no polyexponential).
DIFFUSERS_SCHEDULES: dict[str, dict[str, Any]] = {
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
    "sgm_uniform": {"timestep_spacing": "trailing"},  # diffusers' docs: A1111's "sgm_uniform"
}


@dataclass(frozen=True)
class Row:
    """A sampler name and the schedule type it is asked with (None: the name's own)."""

    sampler: str
    schedule_type: str | None

    @property
    def label(self) -> str:
        return self.schedule_type or "(its own)"


def table_rows() -> list[Row]:
    """Every v1.9 name with Automatic, then the other schedule types on SCHEDULE_SAMPLER."""
    rows = [Row(name, AUTOMATIC) for name in V19_SAMPLERS]
    others = [label for label in SCHEDULE_LABELS if label != AUTOMATIC]
    return rows + [Row(SCHEDULE_SAMPLER, label) for label in others]


def pick_rows(only: list[str]) -> list[Row]:
    """The table's rows for each name (a sampler or a schedule type); an old name alone."""
    rows = table_rows()
    picked: list[Row] = []
    for name in only:
        label = "Automatic" if name.lower() == "auto" else schedule_label(name)
        if label is not None:
            found = [row for row in rows if row.schedule_type == label]
        else:
            sampler = canonical_sampler(name)  # InvalidRequest lists the choices
            found = [row for row in rows if row.sampler == sampler] or [Row(sampler, None)]
        picked += [row for row in found if row not in picked]
    return picked


def reference_scheduler(row: Sampler, config: Any) -> Any | None:
    """diffusers' closest scheduler for a row as it runs (None: diffusers has none)."""
    same = [s.name for s in SAMPLERS.values() if s.base == row.base and s.schedule == row.schedule]
    try:
        if row.timesteps or same:  # a table row means it: make_scheduler knows its options
            return make_scheduler(row.name if row.timesteps else same[0], config)
        scheduler = make_scheduler(row.base, config)
    except KeyError:  # no diffusers scheduler for this sampler
        return None
    options = DIFFUSERS_SCHEDULES.get(row.schedule)
    accepted = inspect.signature(type(scheduler).__init__).parameters
    if options is None or not set(options) <= set(accepted):
        return None
    return type(scheduler).from_config(scheduler.config, **options)


def runners(
    model: LoadedModel, row: Sampler, steps: int, size: int
) -> tuple[Callable[[], None], Callable[[], None] | None]:
    """(ours, diffusers' or None) for one row: each draws one image's latents."""
    pipe = model.pipe
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

    scheduler = reference_scheduler(row, model.scheduler_config)
    if scheduler is None:
        return ours, None
    reference = StableDiffusionPipeline(
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        unet=pipe.unet,
        scheduler=scheduler,
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

    return ours, theirs


class UNetCalls:
    """Counts the UNet's forward calls (a hook on the module ours and diffusers' share)."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.count = 0
        unet.register_forward_pre_hook(self._called)

    def _called(self, *_: Any) -> None:
        self.count += 1

    def of(self, fn: Callable[[], None]) -> int:
        before = self.count
        fn()
        return self.count - before


def _ratio(ours: float, theirs: float | None) -> str:
    return "—" if theirs is None else f"{ours / theirs:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument(
        "--only",
        nargs="+",
        action="extend",
        default=[],
        metavar="NAME",
        help="sampler names or schedule types (e.g. 'DPM++ 2M' Karras); default: every row",
    )
    args = parser.parse_args()
    rows = pick_rows(args.only) if args.only else table_rows()

    with tempfile.TemporaryDirectory() as tmp:
        save_demo_model(Path(tmp))
        model = ModelRegistry(Path(tmp)).load(DEMO_NAME, DeviceOptions())
    calls = UNetCalls(model.pipe.unet)
    print(
        f"device {model.device}, {args.size}x{args.size}, {args.steps} steps, CFG {SCALE:g}, "
        f"{args.runs} run(s) each after a warm-up (median), threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"  {'sampler':18s} {'schedule type':33s} {'s/image':>8s} {'calls':>5s} "
        f"{'diffusers':>9s} {'calls':>5s} {'ratio/image':>11s} {'ratio/call':>10s}"
    )
    per_call = []
    for entry in rows:
        row = run_row(entry.sampler, entry.schedule_type)
        ours, theirs = runners(model, row, args.steps, args.size)
        our_calls = calls.of(ours)  # the warm-ups count the calls
        their_calls = calls.of(theirs) if theirs is not None else 0
        times: dict[str, list[float]] = {"ours": [], "theirs": []}
        for _ in range(args.runs):
            for key, fn in (("ours", ours), ("theirs", theirs)):
                if fn is not None:
                    t0 = time.perf_counter()
                    fn()
                    times[key].append(time.perf_counter() - t0)
        mine = statistics.median(times["ours"])
        other = statistics.median(times["theirs"]) if theirs is not None else None
        shown = "—" if other is None else f"{other:.3f}"
        counted = "—" if other is None else str(their_calls)
        call_ratio = "—"
        if other is not None and our_calls and their_calls:
            per_call.append((mine / our_calls) / (other / their_calls))
            call_ratio = f"{per_call[-1]:.3f}"
        schedule = f"{entry.label} ({row.schedule})"
        print(
            f"  {entry.sampler:18s} {schedule:33s} {mine:8.3f} {our_calls:5d} {shown:>9s} "
            f"{counted:>5s} {_ratio(mine, other):>11s} {call_ratio:>10s}"
        )
    if per_call:
        print(f"  median ratio per UNet call {statistics.median(per_call):.3f}")


if __name__ == "__main__":
    main()
