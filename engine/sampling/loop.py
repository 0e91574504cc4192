"""Running a row of the sampler table (`engine.sampling.samplers`): its sigmas, its loop from
the initial noise as A1111's `KDiffusionSampler` / `CompVisSampler` (DDIM, PLMS, UniPC) do,
and its step count."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from engine.request import RngSource
from engine.sampling.brownian import BrownianNoise
from engine.sampling.denoiser import (
    CFGDenoiser,
    Denoise,
    NoiseSampler,
    NoiseSchedule,
    StepCallback,
    Tensor,
)
from engine.sampling.dpm_solver import sample_dpm_adaptive, sample_dpm_fast
from engine.sampling.kdiffusion import (
    sample_dpm_2,
    sample_dpm_2_ancestral,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_dpmpp_2m_sde_heun,
    sample_dpmpp_2s_ancestral,
    sample_dpmpp_3m_sde,
    sample_dpmpp_sde,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
    sample_lms,
    sample_restart,
)
from engine.sampling.lcm import LCMDenoiser, sample_lcm
from engine.sampling.samplers import SAMPLERS, Sampler, canonical_sampler
from engine.sampling.sigmas import SIGMAS
from engine.sampling.steps import img2img_steps
from engine.sampling.timesteps import ddim_timesteps, sample_ddim, sample_plms
from engine.sampling.unipc import sample_unipc

# A1111's default denoising strengths: img2img's UI and API (0.75), hires fix's UI (0.7).

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
        sample_dpmpp_2m_sde,
        sample_dpmpp_2m_sde_heun,
        sample_dpmpp_3m_sde,
        sample_restart,
        sample_dpm_fast,
        sample_dpm_adaptive,
        sample_lcm,
    )
}
# The CFG denoiser a loop runs with where it is not k-diffusion's CompVis wrapper: A1111's own
# sampler classes' (`LCMSampler`'s `CFGDenoiserLCM`, over LCM's 50-timestep table).
DENOISERS: dict[str, type[CFGDenoiser]] = {"sample_lcm": LCMDenoiser}
TimestepsFn = Callable[[CFGDenoiser, Tensor, Tensor, NoiseSampler, StepCallback], Tensor]
# A1111's timesteps samplers (`Sampler.timesteps` rows), over `ddim_timesteps`.
TIMESTEPS_LOOPS: dict[str, TimestepsFn] = {
    fn.__name__: fn for fn in (sample_ddim, sample_plms, sample_unipc)
}
# The loops that read only σ_max = sigmas[0], σ_min = sigmas[-2] and n = len(sigmas) - 1
# (k-diffusion's `sigma_min`, `sigma_max`, `n` arguments).
_RANGE_LOOPS = frozenset({"sample_dpm_fast", "sample_dpm_adaptive"})


def denoiser_class(row: Sampler) -> type[CFGDenoiser]:
    """The CFG denoiser to build for a row (given the model's schedule, LCM's builds its own)."""
    return DENOISERS.get(row.function or "", CFGDenoiser)


def sampler_sigmas(row: Sampler, schedule: NoiseSchedule, steps: int) -> Tensor:
    """A1111 `KDiffusionSampler.get_sigmas` for a row (`samplers.run_row`), or a timesteps
    sampler's timesteps (`CompVisSampler.get_timesteps`)."""
    if row.timesteps:
        return ddim_timesteps(steps, len(schedule.alphas_cumprod))
    n = steps + 1 if row.discard_penultimate else steps
    sigmas = SIGMAS[row.schedule](schedule, n)
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

    k-diffusion rows start from noise × σ_max; timesteps rows (DDIM, PLMS, UniPC) from the noise
    itself. `seeds` seed the Brownian trees of the "brownian" rows, one per image, and `sources`
    are the images' RNG sources their draws come from (A1111's; torchsde's own generator where
    none are given).
    """
    schedule = model.schedule
    sigmas = sampler_sigmas(row, schedule, steps).to(noise_first.device)
    if row.timesteps:
        return TIMESTEPS_LOOPS[row.function](model, noise_first, sigmas, noise, callback)
    x = noise_first * sigmas[0]
    if row.noise == "brownian":
        noise = BrownianNoise(x, sigmas, seeds, sources)
    if row.function in _RANGE_LOOPS:
        # A1111's txt2img gives them the model's own σ range (`model_wrap.sigmas[0]`, `[-1]`)
        # and n = steps, though x starts at the schedule's sigmas[0] (img2img: the cut one's).
        sigmas = sigmas.clone()
        sigmas[0], sigmas[-2] = schedule.sigma_max, schedule.sigma_min
    return LOOPS[row.function](model, x, sigmas, noise, callback)


def img2img_sigmas(
    row: Sampler, schedule: NoiseSchedule, steps: int, strength: float, *, fixed: bool = False
) -> tuple[Tensor, Tensor]:
    """(the sampler's whole schedule, the part an img2img run takes) as A1111's
    `sample_img2img` cuts them: `sigmas[steps - t_enc - 1:]` for k-diffusion rows (t_enc + 1
    steps), `timesteps[:t_enc]` for timesteps rows (DDIM and PLMS: t_enc - 1 steps; UniPC
    t_enc steps of its own below the last of them)."""
    steps, t_enc = img2img_steps(steps, strength, fixed=fixed)
    if row.timesteps:
        if steps == 0:  # A1111 divides by zero here (hires at strength 0): nothing to run
            empty = torch.zeros(0, dtype=torch.long)
            return empty, empty
        timesteps = sampler_sigmas(row, schedule, steps)
        return timesteps, timesteps[:t_enc]
    sigmas = sampler_sigmas(row, schedule, steps)
    return sigmas, sigmas[steps - t_enc - 1 :]


def sample_img2img(
    row: Sampler,
    model: CFGDenoiser,
    init_latent: Tensor,
    noise_first: Tensor,
    steps: int,
    strength: float,
    noise: NoiseSampler,
    callback: StepCallback,
    *,
    fixed_steps: bool = False,
    seeds: Sequence[int] = (),
    sources: Sequence[RngSource] = (),
) -> Tensor:
    """A1111 `sample_img2img`: noise the init latents to where the cut schedule starts, then run
    the rest of it (see `img2img_sigmas`; `fixed_steps` for the hires pass).

    k-diffusion rows start from `init_latent + noise · σ_start`; timesteps rows from
    `init_latent · √ᾱ + noise · √(1 - ᾱ)` at `timesteps[t_enc]`, one step above where DDIM's and
    PLMS's loops start, as A1111 does (UniPC starts just above `timesteps[t_enc - 1]`, A1111's
    `is_img2img`). Brownian trees span the whole schedule, as A1111's do.
    """
    schedule = model.schedule
    sigmas, run = img2img_sigmas(row, schedule, steps, strength, fixed=fixed_steps)
    sigmas, run = sigmas.to(init_latent.device), run.to(init_latent.device)
    if row.timesteps:
        if len(sigmas) == 0:
            return init_latent
        _, t_enc = img2img_steps(steps, strength, fixed=fixed_steps)
        a = schedule.alphas_cumprod.to(init_latent.device)[sigmas[t_enc]]
        x = init_latent * a.sqrt() + noise_first * (1 - a).sqrt()
        if row.function == "sample_unipc":  # its own timesteps: A1111 says where they start
            return sample_unipc(model, x, run, noise, callback, img2img=True)
        if len(run) < 2:
            return x
        return TIMESTEPS_LOOPS[row.function](model, x, run, noise, callback)
    x = init_latent + noise_first * run[0]
    if len(run) < 2:
        return x
    if row.noise == "brownian":
        noise = BrownianNoise(init_latent, sigmas, seeds, sources)
    return LOOPS[row.function](model, x, run, noise, callback)


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
        LCMScheduler,
        LMSDiscreteScheduler,
        PNDMScheduler,
        UniPCMultistepScheduler,
    )

    row = SAMPLERS[canonical_sampler(name)]
    options: dict[str, Any] = {"timestep_spacing": "linspace"}
    if row.schedule == "karras":
        options["use_karras_sigmas"] = True
    if row.schedule == "exponential":
        options["use_exponential_sigmas"] = True
    base = row.base
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
        "DPM++ 2M SDE": DPMSolverMultistepScheduler,
        "DPM++ 2M SDE Heun": DPMSolverMultistepScheduler,
        "DPM++ 3M SDE": DPMSolverMultistepScheduler,
        "DDIM": DDIMScheduler,
        "PLMS": PNDMScheduler,
        "UniPC": UniPCMultistepScheduler,
        "LCM": LCMScheduler,
    }
    if base == "DPM++ 2M":
        options |= {"algorithm_type": "dpmsolver++", "solver_order": 2, "final_sigmas_type": "zero"}
    if base.startswith(("DPM++ 2M SDE", "DPM++ 3M SDE")):
        options |= {
            "algorithm_type": "sde-dpmsolver++",
            "solver_order": 3 if base.startswith("DPM++ 3M") else 2,
            "solver_type": "heun" if base.endswith("Heun") else "midpoint",
            "final_sigmas_type": "zero",
        }
    if base == "DDIM":
        options = {"timestep_spacing": "leading", "set_alpha_to_one": False, "clip_sample": False}
    if base == "PLMS":
        # A1111's timesteps (range(0, 1000, 1000 // steps) + 1, where that has `steps` of them)
        # and its pseudo improved Euler start (tests/sampling/test_timesteps.py).
        options = {"timestep_spacing": "leading", "steps_offset": 1, "skip_prk_steps": True}
        options["set_alpha_to_one"] = False
    if base == "UniPC":
        # A1111's defaults; diffusers rounds UniPC's timesteps (999·k/N) to whole ones and its
        # ᾱ is a float32 cumprod (tests/sampling/test_timesteps.py).
        options = {
            "solver_type": "bh1",
            "solver_order": 3,
            "lower_order_final": True,
            "predict_x0": True,
            "timestep_spacing": "linspace",
            "final_sigmas_type": "sigma_min",
        }
    if base == "LCM":
        # A1111's constants (`LCMCompVisDenoiser`); diffusers picks other timesteps for most
        # step counts and starts from unit noise (tests/sampling/test_lcm.py).
        options = {"original_inference_steps": 50, "timestep_scaling": 10.0, "clip_sample": False}
    return classes[base].from_config(base_config, **options)
