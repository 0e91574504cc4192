"""Running a row of the sampler table (`engine.sampling.samplers`): its sigmas, its loop from
the initial noise as A1111's `KDiffusionSampler` / DDIM sampler do, and its step count."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from engine.request import RngSource
from engine.sampling.kdiffusion import (
    BrownianNoise,
    CFGDenoiser,
    Denoise,
    NoiseSampler,
    NoiseSchedule,
    StepCallback,
    Tensor,
    ddim_timesteps,
    sample_ddim,
    sample_dpm_2,
    sample_dpm_2_ancestral,
    sample_dpmpp_2m,
    sample_dpmpp_2s_ancestral,
    sample_dpmpp_sde,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
    sample_lms,
)
from engine.sampling.samplers import SAMPLERS, Sampler, canonical_sampler

SampleFn = Callable[[Denoise, Tensor, Tensor, NoiseSampler, StepCallback], Tensor]
# The loops the table names, by their (k-diffusion) function names.
LOOPS: dict[str, SampleFn] = {
    fn.__name__: fn
    for fn in (
        sample_euler,
        sample_euler_ancestral,
        sample_lms,
        sample_heun,
        sample_dpm_2,
        sample_dpm_2_ancestral,
        sample_dpmpp_2s_ancestral,
        sample_dpmpp_2m,
        sample_dpmpp_sde,
    )
}


def sampler_sigmas(row: Sampler, schedule: NoiseSchedule, steps: int) -> Tensor:
    """A1111 `KDiffusionSampler.get_sigmas` for a row (or DDIM's timesteps)."""
    if row.schedule == "ddim":
        return ddim_timesteps(steps, len(schedule.alphas_cumprod))
    n = steps + 1 if row.discard_penultimate else steps
    sigmas = schedule.get_sigmas_karras(n) if row.schedule == "karras" else schedule.get_sigmas(n)
    if row.discard_penultimate:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas


def sample(
    row: Sampler,
    model: CFGDenoiser,
    noise_first: Tensor,
    steps: int,
    noise: NoiseSampler,
    callback: StepCallback,
    *,
    seeds: Sequence[int] = (),
    sources: Sequence[RngSource] = (),
) -> Tensor:
    """Run a row from the initial noise (unscaled, float32) to the final latents.

    k-diffusion rows start from noise × σ_max; DDIM starts from the noise itself. `seeds` seed
    the Brownian trees of the "brownian" rows, one per image, and `sources` are the images' RNG
    sources their draws come from (A1111's; torchsde's own generator where none are given).
    """
    schedule = model.schedule
    sigmas = sampler_sigmas(row, schedule, steps).to(noise_first.device)
    if row.function is None:
        return sample_ddim(model, noise_first, sigmas, noise, callback)
    x = noise_first * sigmas[0]
    if row.noise == "brownian":
        noise = BrownianNoise(x, sigmas, seeds, sources)
    return LOOPS[row.function](model, x, sigmas, noise, callback)


def total_steps(row: Sampler, steps: int) -> int:
    """How many sampler steps (callbacks) a row runs for `steps` (DDIM: one fewer, as A1111)."""
    if row.schedule == "ddim":
        return len(ddim_timesteps(steps)) - 1
    return steps


def make_scheduler(name: str, base_config: Any) -> Any:
    """The closest stock diffusers scheduler for a row (for benchmarks and reference tests)."""
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        DPMSolverSDEScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
        HeunDiscreteScheduler,
        KDPM2AncestralDiscreteScheduler,
        KDPM2DiscreteScheduler,
        LMSDiscreteScheduler,
    )

    row = SAMPLERS[canonical_sampler(name)]
    options: dict[str, Any] = {"timestep_spacing": "linspace"}
    if row.schedule == "karras":
        options["use_karras_sigmas"] = True
    base = row.name.removesuffix(" Karras")
    classes: dict[str, Any] = {
        "Euler a": EulerAncestralDiscreteScheduler,
        "Euler": EulerDiscreteScheduler,
        "LMS": LMSDiscreteScheduler,
        "Heun": HeunDiscreteScheduler,
        "DPM2": KDPM2DiscreteScheduler,
        "DPM2 a": KDPM2AncestralDiscreteScheduler,
        "DPM++ 2S a": DPMSolverSDEScheduler,  # diffusers has no 2S a; the closest in cost
        "DPM++ SDE": DPMSolverSDEScheduler,
        "DPM++ 2M": DPMSolverMultistepScheduler,
        "DDIM": DDIMScheduler,
    }
    if base == "DPM++ 2M":
        options |= {"algorithm_type": "dpmsolver++", "solver_order": 2, "final_sigmas_type": "zero"}
    if base == "DDIM":
        options = {"timestep_spacing": "leading", "set_alpha_to_one": False, "clip_sample": False}
    return classes[base].from_config(base_config, **options)
