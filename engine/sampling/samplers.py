"""The sampler table: A1111's user-facing names → our own samplers (engine/sampling/kdiffusion.py).

The names and schedules are A1111's before v1.9 ("DPM++ 2M" = uniform sigmas, "DPM++ 2M Karras");
`sample()` runs a row from the initial noise as A1111's `KDiffusionSampler` / DDIM sampler do.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from engine.errors import InvalidRequest
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
from engine.sampling.seeds import RngSource

SampleFn = Callable[[Denoise, Tensor, Tensor, NoiseSampler, StepCallback], Tensor]
# A1111's "second_order" samplers: two model calls per step, so prompt-editing schedules are
# built for twice the steps (A1111 `SamplerData.total_steps`, `p.step_multiplier`).
_SECOND_ORDER: frozenset[SampleFn] = frozenset(
    {sample_heun, sample_dpm_2, sample_dpm_2_ancestral, sample_dpmpp_2s_ancestral, sample_dpmpp_sde}
)


@dataclass(frozen=True)
class Sampler:
    """One row: an A1111 sampler name and how we run it.

    `noise` says where extra noise comes from: "ancestral" (the images' ENSD generators,
    A1111's `uses_ensd`), "brownian" (per-seed Brownian trees) or "none". `schedule_type` is
    what to write as A1111 v1.9's "Schedule type" where its "Automatic" would mean another
    schedule for this name.
    """

    name: str
    function: SampleFn | None
    schedule: Literal["uniform", "karras", "ddim"] = "uniform"
    noise: Literal["none", "ancestral", "brownian"] = "none"
    discard_penultimate: bool = False
    aliases: tuple[str, ...] = ()
    schedule_type: str | None = None

    @property
    def uses_ensd(self) -> bool:
        return self.noise == "ancestral"

    @property
    def conditioning_steps(self) -> int:
        """Model calls per step that prompt editing counts (A1111's step multiplier)."""
        return 2 if self.function in _SECOND_ORDER else 1


def _row(name: str, function: SampleFn | None, *aliases: str, **options: Any) -> Sampler:
    return Sampler(name, function, aliases=aliases, **options)


_K, _U = {"schedule": "karras"}, {"schedule_type": "Uniform"}
SAMPLERS: dict[str, Sampler] = {
    s.name: s
    for s in (
        _row(
            "Euler a", sample_euler_ancestral, "k_euler_a", "k_euler_ancestral", noise="ancestral"
        ),
        _row("Euler", sample_euler, "k_euler"),
        _row("LMS", sample_lms, "k_lms"),
        _row("Heun", sample_heun, "k_heun"),
        _row("DPM2", sample_dpm_2, "k_dpm_2", discard_penultimate=True, **_U),
        _row(
            "DPM2 a",
            sample_dpm_2_ancestral,
            "k_dpm_2_a",
            noise="ancestral",
            discard_penultimate=True,
            **_U,
        ),
        _row("DPM++ 2S a", sample_dpmpp_2s_ancestral, "k_dpmpp_2s_a", noise="ancestral", **_U),
        _row("DPM++ 2M", sample_dpmpp_2m, "k_dpmpp_2m", **_U),
        _row("DPM++ SDE", sample_dpmpp_sde, "k_dpmpp_sde", noise="brownian", **_U),
        _row("LMS Karras", sample_lms, "k_lms_ka", **_K),
        _row("DPM2 Karras", sample_dpm_2, "k_dpm_2_ka", discard_penultimate=True, **_K),
        _row(
            "DPM2 a Karras",
            sample_dpm_2_ancestral,
            "k_dpm_2_a_ka",
            noise="ancestral",
            discard_penultimate=True,
            **_K,
        ),
        _row(
            "DPM++ 2S a Karras",
            sample_dpmpp_2s_ancestral,
            "k_dpmpp_2s_a_ka",
            noise="ancestral",
            **_K,
        ),
        _row("DPM++ 2M Karras", sample_dpmpp_2m, "k_dpmpp_2m_ka", **_K),
        _row("DPM++ SDE Karras", sample_dpmpp_sde, "k_dpmpp_sde_ka", noise="brownian", **_K),
        _row("DDIM", None, "ddim", schedule="ddim"),
    )
}


def _key(name: str) -> str:
    """Loose spelling: "euler_a", "Euler A", "dpmpp_2m_karras" all name a row."""
    return re.sub(r"[\s_\-]+", "", name.lower().replace("++", "pp"))


_BY_KEY = {_key(n): s.name for s in SAMPLERS.values() for n in (s.name, *s.aliases)}


def canonical_sampler(name: str) -> str:
    """The table's spelling of a sampler name or alias, or InvalidRequest listing the choices."""
    found = _BY_KEY.get(_key(name))
    if found is None:
        close = difflib.get_close_matches(_key(name), list(_BY_KEY), n=1, cutoff=0.5)
        hint = f" Did you mean {_BY_KEY[close[0]]!r}?" if close else ""
        raise InvalidRequest(
            f"Unknown sampler {name!r}.{hint} Choose one of: {', '.join(SAMPLERS)}.",
            field="sampler",
        )
    return found


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
    return row.function(model, x, sigmas, noise, callback)


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
