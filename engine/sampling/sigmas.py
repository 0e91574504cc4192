"""The sigmas of every A1111 v1.9.4 schedule type (`engine.sampling.schedules`), by name.

Each is A1111 v1.9.4 `modules/sd_schedulers.py`'s function for that row, called as its
`KDiffusionSampler.get_sigmas` calls it: σ_min and σ_max are the model's (`model_wrap.sigmas[0]`
and `[-1]`, A1111's defaults with the "sigma min/max" options at 0) and rho the row's
`default_rho` (the "rho" option at 0). Results are float32, on the schedule's device.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from engine.sampling.denoiser import NoiseSchedule, Tensor, append_zero


def uniform(schedule: NoiseSchedule, n: int) -> Tensor:
    """A1111 `uniform`: the model's own `get_sigmas(n)` (t evenly from T-1 to 0)."""
    return schedule.get_sigmas(n)


def karras(schedule: NoiseSchedule, n: int) -> Tensor:
    """k-diffusion `get_sigmas_karras` with rho 7 (A1111's `default_rho`)."""
    return schedule.get_sigmas_karras(n, rho=7.0)


def exponential(schedule: NoiseSchedule, n: int) -> Tensor:
    """k-diffusion `get_sigmas_exponential`: log σ evenly from log σ_max to log σ_min."""
    log_max, log_min = math.log(schedule.sigma_max), math.log(schedule.sigma_min)
    sigmas = torch.linspace(log_max, log_min, n, device=schedule.sigmas.device).exp()
    return append_zero(sigmas)


def polyexponential(schedule: NoiseSchedule, n: int, rho: float = 1.0) -> Tensor:
    """k-diffusion `get_sigmas_polyexponential` with rho 1 (A1111's `default_rho`):
    log σ = log σ_min + ramp^rho · (log σ_max - log σ_min), ramp evenly from 1 to 0."""
    ramp = torch.linspace(1, 0, n, device=schedule.sigmas.device) ** rho
    log_max, log_min = math.log(schedule.sigma_max), math.log(schedule.sigma_min)
    return append_zero(torch.exp(ramp * (log_max - log_min) + log_min))


def sgm_uniform(schedule: NoiseSchedule, n: int) -> Tensor:
    """A1111 `sgm_uniform`: n + 1 continuous timesteps evenly from t(σ_max) to t(σ_min), the
    last dropped, each back to σ; then a final 0 (a float32 tensor built from the list)."""
    start = schedule.sigma_to_t(torch.tensor(schedule.sigma_max))
    end = schedule.sigma_to_t(torch.tensor(schedule.sigma_min))
    sigmas = [float(schedule.t_to_sigma(t)) for t in torch.linspace(start, end, n + 1)[:-1]]
    return torch.tensor([*sigmas, 0.0], dtype=torch.float32, device=schedule.sigmas.device)


SIGMAS: dict[str, Callable[[NoiseSchedule, int], Tensor]] = {
    "uniform": uniform,
    "karras": karras,
    "exponential": exponential,
    "polyexponential": polyexponential,
    "sgm_uniform": sgm_uniform,
}
