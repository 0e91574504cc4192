"""The LCM sampler of A1111 v1.9.4 (`modules/sd_samplers_lcm.py`): Latent Consistency Models
(Luo et al. 2023, "Latent Consistency Models", arXiv:2310.04378), sampled on the 50 timesteps
an LCM is distilled on.

A1111's `LCMSampler` is a k-diffusion sampler with its own model wrapper: `LCMCompVisDenoiser`
sees the model's schedule only at every 20th timestep (t = 19, 39, … 999: `LCMSchedule`, so
every schedule type's σ_min and σ_max are that table's), gives the UNet the table's timestep
nearest to σ, and puts each branch's denoised prediction through the consistency model's
boundary condition (`boundary_scalings`) before CFG (`LCMDenoiser`). `sample_lcm` jumps to
that prediction and noises it to the next σ with the images' generators.
"""

from __future__ import annotations

from typing import Any

import torch

from engine.sampling.denoiser import (
    CFGDenoiser,
    Denoise,
    NoiseSampler,
    NoiseSchedule,
    StepCallback,
    Tensor,
    UNetFn,
    append_zero,
)

TRAIN_STEPS = 1000  # A1111 assumes a 1000-step model
ORIGINAL_STEPS = 50  # the distillation schedule's length (A1111's "LCM Original Timesteps")
SKIP = TRAIN_STEPS // ORIGINAL_STEPS  # Luo et al.'s skipping step k
SIGMA_DATA = 0.5  # the boundary condition's σ_data and timestep scale (A1111 `get_scaled_out`)
TIMESTEP_SCALING = 10.0


class LCMSchedule(NoiseSchedule):
    """A1111 `LCMCompVisDenoiser`'s discrete schedule: the model's ᾱ at t = 19, 39, … 999.

    Its timestep for a σ is the table's nearest (in log σ), as a whole training timestep; a
    timestep maps back to σ through the table's index (t - 19) / 20, interpolated as k-diffusion
    interpolates. Build it with `of` or `from_config`.
    """

    @classmethod
    def of(cls, schedule: NoiseSchedule) -> LCMSchedule:
        """LCM's table from a model's schedule (A1111 `LCMCompVisDenoiser.__init__`): float32,
        as A1111's table is, even where the model's ᾱ is fp16 ("Downcast alphas_cumprod")."""
        if isinstance(schedule, LCMSchedule):
            return schedule
        ac = schedule.alphas_cumprod[SKIP - 1 : TRAIN_STEPS : SKIP].float()
        return cls(ac, schedule.prediction_type)

    @classmethod
    def from_config(cls, config: Any, *, downcast: bool = False) -> LCMSchedule:
        """LCM's table over a diffusers scheduler config's schedule."""
        return cls.of(NoiseSchedule.from_config(config, downcast=downcast))

    def to(self, device: torch.device) -> LCMSchedule:
        """The same table with its tensors on `device`."""
        return LCMSchedule(self.alphas_cumprod.to(device), self.prediction_type)

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """A1111 `LCMCompVisDenoiser.sigma_to_t`: the training timestep (int64) of the table's
        entry nearest to σ in log σ."""
        dists = sigma.log() - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape) * SKIP + (SKIP - 1)

    def t_to_sigma(self, t: Tensor) -> Tensor:
        """A1111 `LCMCompVisDenoiser.t_to_sigma`: the table index (t - 19) / 20, clamped to the
        table, then k-diffusion's interpolation of log σ."""
        index = ((t - (SKIP - 1)) / SKIP).float().clamp(min=0, max=len(self.sigmas) - 1)
        return super().t_to_sigma(index)

    def get_sigmas(self, n: int) -> Tensor:
        """A1111 `LCMCompVisDenoiser.get_sigmas`: n timesteps evenly from t(σ_max) = 999 to
        t(σ_min) = 19, each back to σ, then a final 0 (its "Automatic" and "Uniform")."""
        start, end = self.sigma_to_t(self.sigmas[-1]), self.sigma_to_t(self.sigmas[0])
        t = torch.linspace(start, end, n, device=self.sigmas.device)
        return append_zero(self.t_to_sigma(t))


def boundary_scalings(timestep: Tensor) -> tuple[Tensor, Tensor]:
    """(c_skip, c_out) of the consistency model's boundary condition f = c_skip·x + c_out·x̂₀
    (Luo et al. 2023, after Song et al. 2023's consistency models; A1111 `get_scaled_out`):
    s = 10·t, c_skip = σ_d² / (s² + σ_d²), c_out = s / √(s² + σ_d²), σ_d = 0.5."""
    scaled = timestep * TIMESTEP_SCALING
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2) ** 0.5
    return c_skip, c_out


class LCMDenoiser(CFGDenoiser):
    """A1111 `CFGDenoiserLCM`: our CFGDenoiser over LCM's table (the model's schedule is
    turned into `LCMSchedule`), each branch's denoised prediction put through the boundary
    condition, with the un-scaled latents as x, before CFG combines them.

    A1111's wrapper is ε-only (a k-diffusion `DiscreteEpsDDPMDenoiser`); a v-prediction
    model's output is read as v here, as `CFGDenoiser` reads it, not as ε.
    """

    def __init__(self, unet: UNetFn, schedule: NoiseSchedule, *args: Any, **kwargs: Any) -> None:
        super().__init__(unet, LCMSchedule.of(schedule), *args, **kwargs)

    def to_denoised(self, x: Tensor, out: Tensor, sigma: Tensor) -> Tensor:
        c_skip, c_out = boundary_scalings(self.schedule.sigma_to_t(sigma))
        return c_out * super().to_denoised(x, out, sigma) + c_skip * x


def sample_lcm(
    model: Denoise, x: Tensor, sigmas: Tensor, noise: NoiseSampler, callback: StepCallback
) -> Tensor:
    """A1111 `sample_lcm`, Luo et al.'s multistep consistency sampling: x becomes the model's
    prediction, then is noised to the next σ with a fresh draw (none at σ = 0)."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        x = denoised
        if sigmas[i + 1] > 0:
            x = denoised + sigmas[i + 1] * noise(sigmas[i], sigmas[i + 1])
        callback(i, x, denoised)
    return x
