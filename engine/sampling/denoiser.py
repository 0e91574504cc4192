"""The model around a sampler: the noise schedule (k-diffusion's `DiscreteSchedule`), A1111's
`CFGDenoiser` around a diffusers UNet, inpainting's latent blend, and the types the samplers share.

Written from k-diffusion's `external.py` (the version A1111 v1.9.4 pins) and A1111's
`sd_samplers_cfg_denoiser.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

Tensor = torch.Tensor
UNetFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""(latent input, timesteps (B,), text context) → the UNet's raw output (eps or v)."""
CondFn = Callable[[int], tuple[Tensor, Tensor]]
"""Prompt conditioning (cond, uncond) for a 0-based step (`Conditioning.at`)."""
NoiseSampler = Callable[[Tensor, Tensor], Tensor]
"""(sigma, sigma_next) → standard-normal noise shaped like the latents."""
StepCallback = Callable[[int, Tensor, Tensor], None]
"""Called after each sampler step with (0-based step, latents after it, denoised prediction)."""


Denoise = Callable[[Tensor, Tensor], Tensor]
"""(x, σ) → the denoised prediction: a CFGDenoiser, or any such function in tests."""


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


# A1111's last ᾱ after the rescale: not 0, so that σ_max stays finite.
ZERO_SNR_LAST = 4.8973451890853435e-08


def rescale_zero_terminal_snr(alphas_cumprod: Tensor) -> Tensor:
    """A1111 v1.9.4 `sd_models.rescale_zero_terminal_snr_abar` (Lin et al. 2023, algorithm 1,
    on ᾱ): √ᾱ shifted so the last is 0 and scaled so the first keeps its value; the last ᾱ
    is then set to ZERO_SNR_LAST."""
    root = alphas_cumprod.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    rescaled = root**2
    rescaled[-1] = ZERO_SNR_LAST
    return rescaled


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
        if config.get("rescale_betas_zero_snr", False):
            ac = rescale_zero_terminal_snr(ac)
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
