"""Our port of k-diffusion's sampling around a diffusers UNet: σ schedule, CFG denoiser, samplers.

Written from k-diffusion's published algorithms (crowsonkb/k-diffusion `k_diffusion/sampling.py`
and `external.py`, the version A1111 v1.9.4 pins) and A1111's `CFGDenoiser`; run with churn 0,
eta 1 and s_noise 1, as A1111 runs them. A1111's timesteps samplers (DDIM, PLMS, UniPC) are
engine/sampling/timesteps.py; the table of names users pick is engine/sampling/samplers.py.
About 830 lines: one short function per published algorithm, kept together as k-diffusion does.
"""

from __future__ import annotations

import contextlib
import math
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from scipy import integrate

from engine.request import RngSource
from engine.sampling.seeds import create_generator

Tensor = torch.Tensor
UNetFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""(latent input, timesteps (B,), text context) → the UNet's raw output (eps or v)."""
CondFn = Callable[[int], tuple[Tensor, Tensor]]
"""Prompt conditioning (cond, uncond) for a 0-based step (`Conditioning.at`)."""
NoiseSampler = Callable[[Tensor, Tensor], Tensor]
"""(sigma, sigma_next) → standard-normal noise shaped like the latents."""
StepCallback = Callable[[int, Tensor, Tensor], None]
"""Called after each sampler step with (0-based step, latents after it, denoised prediction)."""


# --- noise schedule and denoiser ----------------------------------------------------------------


def alphas_cumprod_from_config(config: Any) -> Tensor:
    """LDM `make_beta_schedule` + cumprod in float64, then float32 as LDM's buffer holds it."""
    steps = int(config.get("num_train_timesteps", 1000))
    trained = config.get("trained_betas")
    schedule = config.get("beta_schedule", "scaled_linear")
    start, end = float(config.get("beta_start", 0.00085)), float(config.get("beta_end", 0.012))
    if trained is not None:
        betas = torch.tensor(trained, dtype=torch.float64)
    elif schedule == "scaled_linear":  # LDM's "linear": linear in sqrt(beta)
        betas = torch.linspace(start**0.5, end**0.5, steps, dtype=torch.float64) ** 2
    elif schedule == "linear":
        betas = torch.linspace(start, end, steps, dtype=torch.float64)
    else:
        raise ValueError(f"unsupported beta_schedule {schedule!r}")
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float32)


@dataclass
class NoiseSchedule:
    """k-diffusion `DiscreteSchedule` over a CompVis model's alphas_cumprod.

    With `downcast`, alphas_cumprod is rounded to float16 first and σ computed in float16,
    as A1111 before v1.7 did (its "Downcast alphas_cumprod" switch).
    """

    alphas_cumprod: Tensor
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    sigmas: Tensor = field(init=False)
    log_sigmas: Tensor = field(init=False)

    def __post_init__(self) -> None:
        ac = self.alphas_cumprod
        self.sigmas = ((1 - ac) / ac) ** 0.5
        self.log_sigmas = self.sigmas.log()

    @classmethod
    def from_config(cls, config: Any, *, downcast: bool = False) -> NoiseSchedule:
        """The schedule of a diffusers scheduler config (SD-1 "scaled_linear" by default)."""
        ac = alphas_cumprod_from_config(config)
        if downcast:
            ac = ac.half()
        prediction = config.get("prediction_type", "epsilon")
        if prediction not in ("epsilon", "v_prediction"):
            raise ValueError(f"unsupported prediction_type {prediction!r}")
        return cls(ac, prediction)

    def to(self, device: torch.device) -> NoiseSchedule:
        """The same schedule with its tensors on `device`."""
        return NoiseSchedule(self.alphas_cumprod.to(device), self.prediction_type)

    @property
    def sigma_min(self) -> float:
        """σ at t = 0 (A1111's `model_wrap.sigmas[0].item()`, the Karras lower bound)."""
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        """σ at the last training timestep (the Karras upper bound)."""
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """k-diffusion `DiscreteSchedule.sigma_to_t`: continuous t, linear in log σ."""
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas[:, None]
        low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        high_idx = low_idx + 1
        low, high = self.log_sigmas[low_idx], self.log_sigmas[high_idx]
        w = ((low - log_sigma) / (low - high)).clamp(0, 1)
        t = (1 - w) * low_idx + w * high_idx
        return t.view(sigma.shape)

    def t_to_sigma(self, t: Tensor) -> Tensor:
        """k-diffusion `DiscreteSchedule.t_to_sigma`: log σ interpolated between integer t."""
        t = t.float()
        low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]
        return log_sigma.exp()

    def get_sigmas(self, n: int) -> Tensor:
        """k-diffusion `DiscreteSchedule.get_sigmas`: t = linspace(T-1, 0, n), then a final 0."""
        t_max = len(self.sigmas) - 1
        t = torch.linspace(t_max, 0, n, device=self.sigmas.device)
        return append_zero(self.t_to_sigma(t))

    def get_sigmas_karras(self, n: int, rho: float = 7.0) -> Tensor:
        """k-diffusion `get_sigmas_karras` between the model's σ_min and σ_max (A1111's bounds)."""
        ramp = torch.linspace(0, 1, n)
        min_inv_rho = self.sigma_min ** (1 / rho)
        max_inv_rho = self.sigma_max ** (1 / rho)
        sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
        return append_zero(sigmas).to(self.sigmas.device)


def append_zero(x: Tensor) -> Tensor:
    """k-diffusion `append_zero`."""
    return torch.cat([x, x.new_zeros([1])])


@dataclass(frozen=True)
class LatentBlend:
    """A1111's inpainting blend `latents · nmask + init_latent · mask` (mask 1 = keep the init
    latent, nmask = 1 - mask), which its `CFGDenoiser` applies at every model call."""

    init_latent: Tensor
    mask: Tensor
    nmask: Tensor

    def __call__(self, latents: Tensor) -> Tensor:
        return latents * self.nmask + self.init_latent * self.mask


class CFGDenoiser:
    """A1111 `CFGDenoiser` around a k-diffusion `CompVisDenoiser` (or `CompVisVDenoiser`).

    Called with latents x (B, C, H, W) in σ-scaled space and a σ; returns the guided denoised
    prediction `uncond + (cond - uncond) * scale`, each branch converted to a denoised
    prediction first. Cond and uncond run as one UNet batch (cond first) when their token
    lengths match, as two calls otherwise. The step given to `cond_at` counts model calls, as
    A1111's `CFGDenoiser.step` does: second-order samplers advance prompt editing twice a step.

    `image_cond` (B, 5, H, W), an inpainting UNet's mask and masked-image latents, is joined
    to the UNet input's channels for both branches (LDM's "hybrid" `c_concat`). `blend`
    (inpainting) is applied to the guided denoised prediction of every call (A1111's default,
    `mask_before_denoising` False), and for DDIM to the input x before the UNet (A1111's
    `CFGDenoiserTimesteps` sets `mask_before_denoising`).
    """

    def __init__(
        self,
        unet: UNetFn,
        schedule: NoiseSchedule,
        cond_at: CondFn,
        guidance_scale: float,
        *,
        dtype: torch.dtype,
        image_cond: Tensor | None = None,
        blend: LatentBlend | None = None,
    ) -> None:
        self.unet = unet
        self.schedule = schedule
        self.cond_at = cond_at
        self.guidance_scale = guidance_scale
        self.dtype = dtype
        self.image_cond = image_cond
        self.blend = blend
        self.step = 0

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        """The guided denoised prediction at noise level `sigma` (a 0-dim tensor)."""
        sigma_in = sigma.reshape(1).expand(x.shape[0])
        c_in = 1 / (sigma**2 + 1) ** 0.5
        t = self.schedule.sigma_to_t(sigma_in)
        out_cond, out_uncond = self._both(x * c_in, t)
        cond, uncond = self.to_denoised(x, out_cond, sigma), self.to_denoised(x, out_uncond, sigma)
        denoised = self._guide(cond, uncond)
        return denoised if self.blend is None else self.blend(denoised)

    def to_denoised(self, x: Tensor, out: Tensor, sigma: Tensor) -> Tensor:
        """One branch's denoised prediction from its UNet output (k-diffusion `CompVisDenoiser`,
        `CompVisVDenoiser`); LCM's wrapper adds its boundary condition (`engine.sampling.lcm`)."""
        if self.schedule.prediction_type == "v_prediction":
            c_skip, c_out = 1 / (sigma**2 + 1), -sigma / (sigma**2 + 1) ** 0.5
            return out * c_out + x * c_skip
        return x + out * -sigma

    def eps_at(self, x: Tensor, timestep: float) -> Tensor:
        """The guided ε prediction for VP latents at a timestep (A1111's timesteps samplers,
        engine/sampling/timesteps.py: whole for DDIM and PLMS, fractional for UniPC).

        A v-prediction becomes ε with ᾱ at the whole timestep at or below (A1111
        `CompVisTimestepsVDenoiser`: `t.to(torch.int)`, its √ᾱ and √(1 - ᾱ) in ᾱ's dtype).
        """
        if self.blend is not None:
            x = self.blend(x)
        t = torch.full((x.shape[0],), float(timestep), device=x.device)
        out_cond, out_uncond = self._both(x, t)
        if self.schedule.prediction_type == "v_prediction":
            ac, whole = self.schedule.alphas_cumprod, int(timestep)
            sqrt_a, sqrt_one_minus_a = torch.sqrt(ac)[whole], torch.sqrt(1 - ac)[whole]
            out_cond = sqrt_a * out_cond + sqrt_one_minus_a * x
            out_uncond = sqrt_a * out_uncond + sqrt_one_minus_a * x
        return self._guide(out_cond, out_uncond)

    def _guide(self, cond: Tensor, uncond: Tensor) -> Tensor:
        self.step += 1
        return uncond + (cond - uncond) * self.guidance_scale

    def _both(self, x_in: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        cond, uncond = self.cond_at(self.step)
        x_in = x_in.to(self.dtype)
        if self.image_cond is not None:
            x_in = torch.cat([x_in, self.image_cond.to(x_in)], dim=1)
        if cond.shape[1] == uncond.shape[1]:
            out = self.unet(torch.cat([x_in, x_in]), torch.cat([t, t]), torch.cat([cond, uncond]))
            out_cond, out_uncond = out.float().chunk(2)
            return out_cond, out_uncond
        return self.unet(x_in, t, cond).float(), self.unet(x_in, t, uncond).float()


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


Denoise = Callable[[Tensor, Tensor], Tensor]


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


# --- Brownian noise (DPM++ SDE) -----------------------------------------------------------------

TreeRandn = Callable[[int, tuple[int, ...]], Tensor]
"""(a seed torchsde derived for one draw, shape) → float32 standard-normal noise."""


def randn_local(source: RngSource, device: torch.device) -> TreeRandn:
    """A1111 `rng.randn_local` (`rng.py:22-33`): the first draw of a fresh generator of `source`.

    As everywhere here, "GPU" off CUDA is CUDA's randn emulated (`seeds.create_generator`), where
    A1111 on a CPU-only host would fall back to the CPU generator.
    """
    return lambda seed, shape: create_generator(seed, source, device).randn(shape)


class BrownianNoise:
    """k-diffusion `BrownianTreeNoiseSampler` with one torchsde Brownian tree per image seed.

    A1111 v1.9.4 seeds each image's tree with its seed alone, never seed + ENSD or the variation
    seed (`sd_samplers_common.py:334-342`, `all_seeds`), which keeps an image independent of its
    batch-mates. Its torchsde patch (`sd_samplers_common.py:146-155`) answers every draw a tree
    makes, `_randn(size, dtype, device, seed)` with a 32-bit seed torchsde derives from the
    tree's entropy, with `rng.randn_local(seed, size)` for the chosen RNG source; `sources`
    (one per tree) do the same here. Without `sources` the trees draw as torchsde does, from a
    torch generator on the latents' device. Queries a float ulp outside [σ_min, σ_max] make
    torchsde warn (in A1111 too); the answer is the same, so those warnings are silenced here.
    """

    def __init__(
        self,
        x: Tensor,
        sigmas: Tensor,
        seeds: Sequence[int],
        sources: Sequence[RngSource] = (),
    ) -> None:
        import torchsde

        if len(seeds) != x.shape[0] or (sources and len(sources) != len(seeds)):
            raise ValueError(
                f"{x.shape[0]} latents need as many seeds (got {len(seeds)}) and sources "
                f"(got {len(sources)})"
            )
        positive = sigmas[sigmas > 0]
        t0, t1 = positive.min(), sigmas.max()
        w0 = torch.zeros_like(x[0])
        self.draws: list[TreeRandn | None] = [randn_local(s, x.device) for s in sources]
        self.draws = self.draws or [None] * len(seeds)
        self.trees = []
        for seed, draw in zip(seeds, self.draws, strict=True):
            # The tree draws its first increments as it is built: route those too.
            with _tree_draws(draw):
                self.trees.append(torchsde.BrownianTree(t0, w0, t1, entropy=seed))

    def __call__(self, sigma: Tensor, sigma_next: Tensor) -> Tensor:
        t0, t1 = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        low, high, sign = (t0, t1, 1) if t0 < t1 else (t1, t0, -1)
        ws = []
        for tree, draw in zip(self.trees, self.draws, strict=True):
            with _tree_draws(draw):
                ws.append(tree(low, high))
        return torch.stack(ws) * sign / (t1 - t0).abs().sqrt()


# torchsde draws every Brownian increment through its module-level `_randn`, so that is the
# only seam: route it once, as A1111 does, but per thread and only while one of our trees is
# building or answering; other users of torchsde (diffusers' DPMSolverSDEScheduler) keep theirs.
_routing = threading.local()
_routing_lock = threading.Lock()
_torchsde_randn: list[Callable[..., Tensor]] = []  # torchsde's own, kept for everyone else


def _routed_randn(size: Any, dtype: torch.dtype, device: torch.device, seed: Any) -> Tensor:
    draw: TreeRandn | None = getattr(_routing, "draw", None)
    if draw is None:
        return _torchsde_randn[0](size, dtype, device, seed)
    return draw(int(seed), tuple(size)).to(device=device, dtype=dtype)


@contextlib.contextmanager
def _tree_draws(draw: TreeRandn | None) -> Iterator[None]:
    from torchsde._brownian import brownian_interval

    with _routing_lock:
        if brownian_interval._randn is not _routed_randn:
            _torchsde_randn[:] = [brownian_interval._randn]
            brownian_interval._randn = _routed_randn
    previous = getattr(_routing, "draw", None)
    _routing.draw = draw
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Should have t", category=UserWarning)
            yield
    finally:
        _routing.draw = previous
