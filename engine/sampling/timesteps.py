"""A1111's timesteps samplers (v1.9.4 `modules/sd_samplers_timesteps.py` and `_impl.py`): DDIM,
PLMS and UniPC on VP latents, at A1111's own timesteps whatever the schedule type.

`ddim_timesteps` is `CompVisSampler.get_timesteps`; the loops step from the last timestep down
to the first with `CFGDenoiser.eps_at`. Their arithmetic is A1111's in A1111's dtypes (ᾱ in the
schedule's dtype, float16 when downcast; the coefficients float32 tensors on the latents'
device), so the latents are A1111's bit for bit. UniPC is `engine.sampling.unipc`.
"""

from __future__ import annotations

import torch

from engine.sampling.denoiser import CFGDenoiser, NoiseSampler, StepCallback, Tensor


def ddim_timesteps(steps: int, train_steps: int = 1000) -> Tensor:
    """A1111 `CompVisSampler.get_timesteps`: range(0, T, T // steps) + 1, clipped to T-1."""
    return torch.clip(torch.arange(0, train_steps, train_steps // steps) + 1, 0, train_steps - 1)


class _Alphas:
    """ᾱ at each timestep, at the one below it (the first's: ᾱ_0) and √(1 - ᾱ), as A1111's
    loops index them (`alphas`, `alphas_prev`, `sqrt_one_minus_alphas`): worked out in the
    schedule's dtype, then held as float32 tensors on the latents' device (not Python floats:
    CUDA divides by a host scalar as a multiplication by its reciprocal; A1111 divides by a
    device tensor)."""

    def __init__(self, model: CFGDenoiser, timesteps: Tensor, like: Tensor) -> None:
        alphas_cumprod = model.schedule.alphas_cumprod
        timesteps = timesteps.to(alphas_cumprod.device)
        alphas = alphas_cumprod[timesteps]
        below = torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))
        self.a = alphas.to(like)
        self.a_prev = alphas_cumprod[below].to(like)
        self.sqrt_one_minus_a = torch.sqrt(1 - alphas).to(like)

    def step(self, x: Tensor, e_t: Tensor, index: int) -> tuple[Tensor, Tensor]:
        """A deterministic DDIM step (Song et al. 2020, eq. 12 with σ = 0) from the timestep at
        `index` to the one below: (the latents there, the x0 prediction)."""
        a_t, a_prev = self.a[index], self.a_prev[index]
        pred_x0 = (x - self.sqrt_one_minus_a[index] * e_t) / a_t.sqrt()
        return a_prev.sqrt() * pred_x0 + (1.0 - a_prev).sqrt() * e_t, pred_x0


def sample_ddim(
    model: CFGDenoiser, x: Tensor, timesteps: Tensor, noise: NoiseSampler, callback: StepCallback
) -> Tensor:
    """A1111 `sd_samplers_timesteps_impl.ddim` (Song et al. 2020, "Denoising Diffusion Implicit
    Models") with eta 0, A1111's default `eta_ddim`: len(timesteps) - 1 steps, from the last
    timestep down to the first. It draws no noise (A1111 draws some and multiplies it by 0)."""
    alphas = _Alphas(model, timesteps, x)
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        x, pred_x0 = alphas.step(x, model.eps_at(x, int(timesteps[index])), index)
        callback(i, x, pred_x0)
    return x


def _adams_bashforth(e_t: Tensor, old_eps: list[Tensor]) -> Tensor:
    """The linear multistep ε of PLMS (Liu et al. 2022, eq. 12): Adams-Bashforth of order 2,
    3 or 4 over the current ε and the one, two or three before it (newest last)."""
    if len(old_eps) == 1:
        return (3 * e_t - old_eps[-1]) / 2
    if len(old_eps) == 2:
        return (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
    return (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24


def sample_plms(
    model: CFGDenoiser, x: Tensor, timesteps: Tensor, noise: NoiseSampler, callback: StepCallback
) -> Tensor:
    """A1111 `sd_samplers_timesteps_impl.plms` (Liu et al. 2022, "Pseudo Numerical Methods for
    Diffusion Models on Manifolds", without the Runge-Kutta start): len(timesteps) - 1 DDIM
    steps, each with a multistep ε.

    The first step is a pseudo improved Euler step: a trial DDIM step with ε, ε again at the
    timestep below (a second model call), then the step with their mean. The later ones use
    Adams-Bashforth over the model's ε at each earlier step's start (never the mean).
    """
    alphas = _Alphas(model, timesteps, x)
    old_eps: list[Tensor] = []
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model.eps_at(x, int(timesteps[index]))
        if old_eps:
            e_prime = _adams_bashforth(e_t, old_eps)
        else:
            x_trial, _ = alphas.step(x, e_t, index)
            e_next = model.eps_at(x_trial, int(timesteps[max(index - 1, 0)]))
            e_prime = (e_t + e_next) / 2
        x, pred_x0 = alphas.step(x, e_prime, index)
        old_eps = [*old_eps, e_t][-3:]
        callback(i, x, pred_x0)
    return x
