"""k-diffusion's DPM-Solver (Lu et al. 2022) as A1111 v1.9.4 runs it: "DPM fast" (DPM-Solver-Fast)
and "DPM adaptive" (DPM-Solver-23 with step size control), from k-diffusion ab527a9
`sampling.py` `DPMSolver`, `sample_dpm_fast`, `sample_dpm_adaptive`.
"""

from __future__ import annotations

import math

import torch

from engine.sampling.denoiser import (
    Denoise,
    NoiseSampler,
    StepCallback,
    Tensor,
)
from engine.sampling.kdiffusion import get_ancestral_step


class _DPMSolver:
    """k-diffusion `DPMSolver` (Lu et al. 2022, DPM-Solver-1/2/3 steps) in t = -log σ, ε read
    off the denoiser; each step's ε values are cached by name as k-diffusion's `eps_cache`."""

    def __init__(self, model: Denoise) -> None:
        self.model = model

    @staticmethod
    def sigma(t: Tensor) -> Tensor:
        return t.neg().exp()

    @staticmethod
    def t(sigma: Tensor) -> Tensor:
        return -sigma.log()

    def eps(self, cache: dict[str, Tensor], key: str, x: Tensor, t: Tensor) -> Tensor:
        if key not in cache:
            cache[key] = (x - self.model(x, self.sigma(t))) / self.sigma(t)
        return cache[key]

    def step_1(self, x: Tensor, t: Tensor, t_next: Tensor, cache: dict[str, Tensor]) -> Tensor:
        h = t_next - t
        return x - self.sigma(t_next) * h.expm1() * self.eps(cache, "eps", x, t)

    def step_2(
        self, x: Tensor, t: Tensor, t_next: Tensor, cache: dict[str, Tensor], r1: float = 1 / 2
    ) -> Tensor:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        sigma_next = self.sigma(t_next)
        return x - sigma_next * h.expm1() * eps - sigma_next / (2 * r1) * h.expm1() * (eps_r1 - eps)

    def step_3(self, x: Tensor, t: Tensor, t_next: Tensor, cache: dict[str, Tensor]) -> Tensor:
        r1, r2 = 1 / 3, 2 / 3
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        u2 = (
            x
            - self.sigma(s2) * (r2 * h).expm1() * eps
            - self.sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps)
        )
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        sigma_next = self.sigma(t_next)
        return (
            x
            - sigma_next * h.expm1() * eps
            - sigma_next / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)
        )

    def ancestral(self, s: Tensor, t: Tensor, t_end: Tensor) -> tuple[Tensor, Tensor]:
        """(where the deterministic step ends, σ of the noise added) for eta 1."""
        sigma_down, _ = get_ancestral_step(self.sigma(s), self.sigma(t))
        t_down = torch.minimum(t_end, self.t(sigma_down))
        return t_down, (self.sigma(t) ** 2 - self.sigma(t_down) ** 2) ** 0.5


def _t_range(solver: _DPMSolver, sigmas: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """t of σ_max = sigmas[0] and σ_min = sigmas[-2], float32 as `torch.tensor(σ)` makes them."""
    start = solver.t(torch.tensor(float(sigmas[0]), dtype=torch.float32))
    end = solver.t(torch.tensor(float(sigmas[-2]), dtype=torch.float32))
    return start, end


def sample_dpm_fast(
    model: Denoise, x: Tensor, sigmas: Tensor, noise: NoiseSampler, callback: StepCallback
) -> Tensor:
    """k-diffusion `sample_dpm_fast` with eta 1 (A1111's `eta_ancestral`): DPM-Solver-Fast with
    `len(sigmas) - 1` model calls from σ = sigmas[0] to sigmas[-2] (A1111's `n`, `sigma_max`,
    `sigma_min`), steps evenly spaced in t, of order 3 but the last (2 and 1, or nfe mod 3);
    fresh noise after every step, the last too (drawn, times 0)."""
    solver = _DPMSolver(model)
    t_start, t_end = _t_range(solver, sigmas, x)
    nfe = len(sigmas) - 1
    m = nfe // 3 + 1
    ts = torch.linspace(float(t_start), float(t_end), m + 1, device=x.device)
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
    t_end = t_end.to(x.device)
    for i, order in enumerate(orders):
        cache: dict[str, Tensor] = {}
        t, t_next = ts[i], ts[i + 1]
        t_down, sigma_up = solver.ancestral(t, t_next, t_end)
        denoised = x - solver.sigma(t) * solver.eps(cache, "eps", x, t)
        step = (solver.step_1, solver.step_2, solver.step_3)[order - 1]
        x = step(x, t, t_down, cache)
        x = x + sigma_up * noise(solver.sigma(t), solver.sigma(t_next))
        callback(i, x, denoised)
    return x


def sample_dpm_adaptive(
    model: Denoise, x: Tensor, sigmas: Tensor, noise: NoiseSampler, callback: StepCallback
) -> Tensor:
    """k-diffusion `sample_dpm_adaptive` with A1111's arguments (order 3, rtol 0.05, atol
    0.0078, h_init 0.05, an I controller of order 1.5 for eta 1, accept safety 0.81): DPM-
    Solver-23 from σ = sigmas[0] to sigmas[-2], the step size chosen from the error of the
    whole batch, as k-diffusion does (so a batch-mate changes an image's steps); noise after
    each accepted step; `callback` after every try, rejected ones too."""
    solver = _DPMSolver(model)
    t_start, t_end = _t_range(solver, sigmas, x)
    t_end = t_end.to(x.device)
    atol = torch.tensor(0.0078).to(x.device)
    rtol = torch.tensor(0.05).to(x.device)
    h, errs = 0.05, [0.0, 0.0, 0.0]  # k-diffusion `PIDStepSizeController` (pcoeff = dcoeff = 0)
    b1, b2, b3 = 1 / 1.5, -0 / 1.5, 0 / 1.5
    s, x_prev, tries = t_start.to(x.device), x, 0
    while s < t_end - 1e-5:
        cache: dict[str, Tensor] = {}
        t = torch.minimum(t_end, s + h)
        t_down, sigma_up = solver.ancestral(s, t, t_end)
        denoised = x - solver.sigma(s) * solver.eps(cache, "eps", x, s)
        x_low = solver.step_2(x, s, t_down, cache, r1=1 / 3)
        x_high = solver.step_3(x, s, t_down, cache)
        delta = torch.maximum(atol, rtol * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        inv_error = 1 / (float(error) + 1e-8)
        if tries == 0:
            errs = [inv_error, inv_error, inv_error]
        errs[0] = inv_error
        factor = 1 + math.atan(errs[0] ** b1 * errs[1] ** b2 * errs[2] ** b3 - 1)
        if factor >= 0.81:
            errs[2], errs[1] = errs[1], errs[0]
            x_prev = x_low
            x = x_high + sigma_up * noise(solver.sigma(s), solver.sigma(t))
            s = t
        h *= factor
        callback(tries, x, denoised)
        tries += 1
    return x
