"""Our port of k-diffusion's samplers (crowsonkb/k-diffusion `k_diffusion/sampling.py`, the
version A1111 v1.9.4 pins), run with churn 0, eta 1 and s_noise 1 as A1111 runs them, plus
A1111's Restart sampler. One short function per published algorithm.

The denoiser they call is engine/sampling/denoiser.py; DPM fast/adaptive are dpm_solver.py,
the Brownian noise of the SDE samplers brownian.py, A1111's timesteps samplers (DDIM, PLMS,
UniPC) timesteps.py and unipc.py, LCM lcm.py; the table of names users pick is samplers.py.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from scipy import integrate

from engine.sampling.denoiser import (
    Denoise,
    NoiseSampler,
    StepCallback,
    Tensor,
    append_zero,
)

# --- samplers (k-diffusion `sampling.py`, churn 0, eta 1, s_noise 1 as A1111 runs them) ---------


def to_d(x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    """k-diffusion `to_d`: the Karras ODE derivative."""
    return (x - denoised) / sigma


def get_ancestral_step(sigma_from: Tensor, sigma_to: Tensor, eta: float = 1.0) -> tuple[Any, Any]:
    """k-diffusion `get_ancestral_step`: (σ_down, σ_up) of an ancestral step."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = torch.minimum(
        sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
    )
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def sample_euler(
    model: Denoise, x: Tensor, sigmas: Tensor, noise: NoiseSampler, callback: StepCallback
) -> Tensor:
    """k-diffusion `sample_euler` (Karras et al. 2022, Algorithm 2, Euler steps, no churn)."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
        callback(i, x, denoised)
    return x


def sample_euler_ancestral(
    model: Denoise, x: Tensor, sigmas: Tensor, noise: NoiseSampler, callback: StepCallback
) -> Tensor:
    """k-diffusion `sample_euler_ancestral`: Euler steps plus fresh noise (none at σ=0)."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1])
        x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * sigma_up
        callback(i, x, denoised)
    return x


def sample_heun(
    model: Denoise, x: Tensor, sigmas: Tensor, noise: NoiseSampler, callback: StepCallback
) -> Tensor:
    """k-diffusion `sample_heun` (Karras et al. 2022, Algorithm 2, no churn)."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        d = to_d(x, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt  # Euler method
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1]))
            x = x + (d + d_2) / 2 * dt
        callback(i, x, denoised)
    return x


def sample_dpm_2(
    model: Denoise, x: Tensor, sigmas: Tensor, noise: NoiseSampler, callback: StepCallback
) -> Tensor:
    """k-diffusion `sample_dpm_2`: DPM-Solver-2 midpoint steps (geometric-mean midpoint)."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        d = to_d(x, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigmas[i])  # Euler method
        else:
            sigma_mid = sigmas[i].log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid))
            x = x + d_2 * (sigmas[i + 1] - sigmas[i])
        callback(i, x, denoised)
    return x


def sample_dpm_2_ancestral(
    model: Denoise, x: Tensor, sigmas: Tensor, noise: NoiseSampler, callback: StepCallback
) -> Tensor:
    """k-diffusion `sample_dpm_2_ancestral`: DPM-Solver-2 steps to σ_down, then noise."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1])
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])  # Euler method
        else:
            sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid))
            x = x + d_2 * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:  # σ_up is 0 at the end: the draw would change nothing
            x = x + noise(sigmas[i], sigmas[i + 1]) * sigma_up
        callback(i, x, denoised)
    return x


def linear_multistep_coeff(order: int, t: np.ndarray[Any, Any], i: int, j: int) -> float:
    """k-diffusion `linear_multistep_coeff`: ∫ of a Lagrange basis polynomial over a step."""

    def fn(tau: float) -> float:
        prod = 1.0
        for k in range(order):
            if j != k:
                prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod

    value: float = integrate.quad(fn, t[i], t[i + 1], epsrel=1e-4)[0]
    return value


def sample_lms(
    model: Denoise, x: Tensor, sigmas: Tensor, noise: NoiseSampler, callback: StepCallback
) -> Tensor:
    """k-diffusion `sample_lms`: linear multistep, order 4."""
    order = 4
    sigmas_cpu = sigmas.detach().cpu().numpy()
    ds: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        ds.append(to_d(x, sigmas[i], denoised))
        if len(ds) > order:
            ds.pop(0)
        cur_order = min(i + 1, order)
        coeffs = [linear_multistep_coeff(cur_order, sigmas_cpu, i, j) for j in range(cur_order)]
        x = x + sum(coeff * d for coeff, d in zip(coeffs, reversed(ds), strict=False))
        callback(i, x, denoised)
    return x


def _t_fn(sigma: Tensor) -> Tensor:
    return sigma.log().neg()


def _sigma_fn(t: Tensor) -> Tensor:
    return t.neg().exp()


def sample_dpmpp_2s_ancestral(
    model: Denoise, x: Tensor, sigmas: Tensor, noise: NoiseSampler, callback: StepCallback
) -> Tensor:
    """k-diffusion `sample_dpmpp_2s_ancestral`: DPM-Solver++(2S) steps to σ_down, then noise."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1])
        if sigma_down == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])  # Euler method
        else:
            t, t_next = _t_fn(sigmas[i]), _t_fn(sigma_down)
            h = t_next - t
            s = t + h / 2
            x_2 = (_sigma_fn(s) / _sigma_fn(t)) * x - (-h / 2).expm1() * denoised
            denoised_2 = model(x_2, _sigma_fn(s))
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * sigma_up
        callback(i, x, denoised)
    return x


def sample_dpmpp_sde(
    model: Denoise, x: Tensor, sigmas: Tensor, noise: NoiseSampler, callback: StepCallback
) -> Tensor:
    """k-diffusion `sample_dpmpp_sde`: DPM-Solver++ (stochastic, r = 1/2), Brownian noise."""
    r = 0.5
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])  # Euler method
        else:
            t, t_next = _t_fn(sigmas[i]), _t_fn(sigmas[i + 1])
            h = t_next - t
            s = t + h * r
            fac = 1 / (2 * r)
            # Step 1
            sd, su = get_ancestral_step(_sigma_fn(t), _sigma_fn(s))
            s_ = _t_fn(sd)
            x_2 = (_sigma_fn(s_) / _sigma_fn(t)) * x - (t - s_).expm1() * denoised
            x_2 = x_2 + noise(_sigma_fn(t), _sigma_fn(s)) * su
            denoised_2 = model(x_2, _sigma_fn(s))
            # Step 2
            sd, su = get_ancestral_step(_sigma_fn(t), _sigma_fn(t_next))
            t_next_ = _t_fn(sd)
            denoised_d = (1 - fac) * denoised + fac * denoised_2
            x = (_sigma_fn(t_next_) / _sigma_fn(t)) * x - (t - t_next_).expm1() * denoised_d
            x = x + noise(_sigma_fn(t), _sigma_fn(t_next)) * su
        callback(i, x, denoised)
    return x


def sample_dpmpp_2m(
    model: Denoise, x: Tensor, sigmas: Tensor, noise: NoiseSampler, callback: StepCallback
) -> Tensor:
    """k-diffusion `sample_dpmpp_2m`: DPM-Solver++(2M), first order at the start and the end."""
    old_denoised: Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        t, t_next = _t_fn(sigmas[i]), _t_fn(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised
        else:
            h_last = t - _t_fn(sigmas[i - 1])
            r = h_last / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
        callback(i, x, denoised)
    return x


def sample_dpmpp_2m_sde(
    model: Denoise,
    x: Tensor,
    sigmas: Tensor,
    noise: NoiseSampler,
    callback: StepCallback,
    solver_type: Literal["midpoint", "heun"] = "midpoint",
) -> Tensor:
    """k-diffusion `sample_dpmpp_2m_sde` (eta 1): DPM-Solver++(2M) SDE, first order at the
    start, the denoised prediction itself at the end; `noise` is A1111's Brownian sampler.

    With eta 1 the step's exponent is 2h: x ← σ'/σ·e^{-h}·x + (1 - e^{-2h})·D, plus the
    second-order correction on (D - D_prev)/r (r = h_prev/h) and σ'·√(1 - e^{-2h}) noise.
    """
    old_denoised: Tensor | None = None
    h_last: Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = _t_fn(sigmas[i + 1]) - _t_fn(sigmas[i])
            gain = (-2 * h).expm1().neg()  # 1 - e^{-2h}
            x = sigmas[i + 1] / sigmas[i] * (-h).exp() * x + gain * denoised
            if old_denoised is not None and h_last is not None:
                r = h_last / h  # k-diffusion's order of operations, for A1111's exact floats
                if solver_type == "heun":
                    x = x + (gain / (-2 * h) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * gain * (1 / r) * (denoised - old_denoised)
            x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * gain.sqrt()
            h_last = h
        old_denoised = denoised
        callback(i, x, denoised)
    return x


def sample_dpmpp_2m_sde_heun(
    model: Denoise, x: Tensor, sigmas: Tensor, noise: NoiseSampler, callback: StepCallback
) -> Tensor:
    """`sample_dpmpp_2m_sde` with A1111's `solver_type: heun` ("DPM++ 2M SDE Heun")."""
    return sample_dpmpp_2m_sde(model, x, sigmas, noise, callback, solver_type="heun")


def sample_dpmpp_3m_sde(
    model: Denoise, x: Tensor, sigmas: Tensor, noise: NoiseSampler, callback: StepCallback
) -> Tensor:
    """k-diffusion `sample_dpmpp_3m_sde` (eta 1): DPM-Solver++(3M) SDE, building up from first
    order over the first two steps, the denoised prediction itself at the end.

    With the step exponent 2h, φ₂ = (e^{-2h} - 1)/(2h) + 1 and φ₃ = φ₂/(2h) - ½ weigh the first
    and second divided differences of the last three denoised predictions.
    """
    d_1: Tensor | None = None
    d_2: Tensor | None = None
    h_1: Tensor | None = None
    h_2: Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = _t_fn(sigmas[i + 1]) - _t_fn(sigmas[i])
            h2 = 2 * h
            x = (-h2).exp() * x + (-h2).expm1().neg() * denoised
            phi_2 = (-h2).expm1() / h2 + 1
            if d_2 is not None and d_1 is not None and h_1 is not None and h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                slope_0, slope_1 = (denoised - d_1) / r0, (d_1 - d_2) / r1
                first = slope_0 + (slope_0 - slope_1) * r0 / (r0 + r1)
                second = (slope_0 - slope_1) / (r0 + r1)
                x = x + phi_2 * first - (phi_2 / h2 - 0.5) * second
            elif d_1 is not None and h_1 is not None:
                x = x + phi_2 * (denoised - d_1) / (h_1 / h)
            x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-h2).expm1().neg().sqrt()
            h_1, h_2 = h, h_1
        d_1, d_2 = denoised, d_1
        callback(i, x, denoised)
    return x


def get_sigmas_karras(
    n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, device: Any = None
) -> Tensor:
    """k-diffusion `get_sigmas_karras` between given bounds, computed on `device`."""
    ramp = torch.linspace(0, 1, n, device=device)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def restart_steps(sigmas: Tensor) -> list[tuple[Tensor, Tensor]]:
    """The (σ, σ_next) steps of A1111's `restart_sampler` with its default restart list.

    From 20 steps on, the main schedule is rebuilt as Karras between the given σ_max and the
    last σ before 0, shortened by the restart steps: one restart of 9 steps (2 of steps // 4
    from 36 steps) going back from the σ nearest 0.1 to the σ nearest 2 and down again on a
    Karras schedule, so the steps stay `len(sigmas) - 1` in all. Below 20: the steps as given.
    """
    steps = len(sigmas) - 1
    restarts: dict[int, tuple[int, int, float]] = {}
    if steps >= 20:
        count, times = (steps // 4, 2) if steps >= 36 else (9, 1)
        sigmas = get_sigmas_karras(
            steps - count * times, sigmas[-2].item(), sigmas[0].item(), device=sigmas.device
        )
        restarts = {int(torch.argmin(abs(sigmas - 0.1), dim=0)): (count + 1, times, 2.0)}
    pairs: list[tuple[Tensor, Tensor]] = []
    for i in range(len(sigmas) - 1):
        pairs.append((sigmas[i], sigmas[i + 1]))
        if i + 1 in restarts:
            n, times, restart_max = restarts[i + 1]
            top = int(torch.argmin(abs(sigmas - restart_max), dim=0))
            if top < i + 1:
                again = get_sigmas_karras(
                    n, sigmas[i + 1].item(), sigmas[top].item(), device=sigmas.device
                )[:-1]
                pairs.extend(list(zip(again[:-1], again[1:], strict=True)) * times)
    return pairs


def sample_restart(
    model: Denoise, x: Tensor, sigmas: Tensor, noise: NoiseSampler, callback: StepCallback
) -> Tensor:
    """A1111 v1.9.4 `sd_samplers_extra.restart_sampler` (Xu et al. 2023, "Restart Sampling"):
    Heun steps (Euler to σ=0) along `restart_steps`; where σ goes up again, fresh noise
    (A1111's `torch.randn_like`, i.e. the images' generators) lifts x to the higher σ."""
    last: Tensor | None = None
    for i, (sigma, sigma_next) in enumerate(restart_steps(sigmas)):
        if last is not None and last < sigma:
            x = x + noise(last, sigma) * (sigma**2 - last**2) ** 0.5
        denoised = model(x, sigma)
        d = to_d(x, sigma, denoised)
        dt = sigma_next - sigma
        if sigma_next == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigma_next, model(x_2, sigma_next))
            x = x + (d + d_2) / 2 * dt
        callback(i, x, denoised)
        last = sigma_next
    return x
