"""DPM fast and DPM adaptive (k-diffusion ab527a9 `sample_dpm_fast`/`sample_dpm_adaptive`, as
A1111 v1.9.4 calls them: eta 1, the model's σ range, n = steps): against a reference written
here from k-diffusion's `DPMSolver`, their noise per image, and their infotext."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from bot.parse import read_request
from engine.checks import check_request
from engine.demo.model import SCHEDULER_CONFIG
from engine.generate import infotext_for, noise_specs
from engine.request import Limits
from engine.sampling.denoiser import CFGDenoiser, NoiseSchedule
from engine.sampling.kdiffusion import get_ancestral_step
from engine.sampling.loop import LOOPS, sample, sampler_sigmas
from engine.sampling.samplers import SAMPLERS, canonical_sampler
from engine.sampling.seeds import ImageRNG, NoiseSpec
from tests.sampling.test_samplers import OracleUNet, conditioning

SCHEDULE = NoiseSchedule.from_config(SCHEDULER_CONFIG)
LATENT = (4, 8, 8)


def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.tanh(x / (sigma + 1)) + 0.1 * x / (sigma**2 + 1)


class KDPMSolver:
    """k-diffusion ab527a9 `DPMSolver`, transcribed (eta 1, s_noise 1)."""

    def __init__(self, model: Any, randn_like: Any) -> None:
        self.model, self.randn_like, self.nfe = model, randn_like, 0

    def t(self, sigma: Any) -> Any:
        return -sigma.log()

    def sigma(self, t: Any) -> Any:
        return t.neg().exp()

    def eps(self, cache: Any, key: Any, x: Any, t: Any) -> Any:
        if key in cache:
            return cache[key], cache
        self.nfe += 1
        sigma = self.sigma(t) * x.new_ones([x.shape[0]])
        eps = (x - self.model(x, sigma[0])) / self.sigma(t)
        return eps, {key: eps, **cache}

    def s1(self, x: Any, t: Any, t_next: Any, cache: Any) -> Any:
        h = t_next - t
        eps, cache = self.eps(cache, "eps", x, t)
        return x - self.sigma(t_next) * h.expm1() * eps, cache

    def s2(self, x: Any, t: Any, t_next: Any, r1: float = 1 / 2, cache: Any = None) -> Any:
        h = t_next - t
        eps, cache = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1, cache = self.eps(cache, "eps_r1", u1, s1)
        x_2 = (
            x
            - self.sigma(t_next) * h.expm1() * eps
            - self.sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)
        )
        return x_2, cache

    def s3(self, x: Any, t: Any, t_next: Any, cache: Any) -> Any:
        r1, r2 = 1 / 3, 2 / 3
        h = t_next - t
        eps, cache = self.eps(cache, "eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1, cache = self.eps(cache, "eps_r1", u1, s1)
        u2 = (
            x
            - self.sigma(s2) * (r2 * h).expm1() * eps
            - self.sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps)
        )
        eps_r2, cache = self.eps(cache, "eps_r2", u2, s2)
        x_3 = (
            x
            - self.sigma(t_next) * h.expm1() * eps
            - self.sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)
        )
        return x_3, cache

    def fast(self, x: Any, sigma_min: float, sigma_max: float, nfe: int) -> Any:
        t_start, t_end = self.t(torch.tensor(sigma_max)), self.t(torch.tensor(sigma_min))
        m = math.floor(nfe / 3) + 1
        ts = torch.linspace(t_start, t_end, m + 1)
        orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
        for i in range(len(orders)):
            cache: dict[str, Any] = {}
            t, t_next = ts[i], ts[i + 1]
            sd, su = get_ancestral_step(self.sigma(t), self.sigma(t_next), 1.0)
            t_next_ = torch.minimum(t_end, self.t(sd))
            su = (self.sigma(t_next) ** 2 - self.sigma(t_next_) ** 2) ** 0.5
            eps, cache = self.eps(cache, "eps", x, t)
            step = {1: self.s1, 2: self.s2, 3: self.s3}[orders[i]]
            x, cache = step(x, t, t_next_, cache=cache)
            x = x + su * 1.0 * self.randn_like(x)
        return x

    def adaptive(self, x: Any, sigma_min: float, sigma_max: float) -> Any:
        t_start, t_end = self.t(torch.tensor(sigma_max)), self.t(torch.tensor(sigma_min))
        atol, rtol = torch.tensor(0.0078), torch.tensor(0.05)
        s, x_prev, h, b1, errs = t_start, x, 0.05, (0.0 + 1.0 + 0.0) / 1.5, []  # type: ignore[var-annotated]
        accepted = 0
        while s < t_end - 1e-5:
            cache: dict[str, Any] = {}
            t = torch.minimum(t_end, s + h)
            sd, su = get_ancestral_step(self.sigma(s), self.sigma(t), 1.0)
            t_ = torch.minimum(t_end, self.t(sd))
            su = (self.sigma(t) ** 2 - self.sigma(t_) ** 2) ** 0.5
            eps, cache = self.eps(cache, "eps", x, s)
            x_low, cache = self.s2(x, s, t_, r1=1 / 3, cache=cache)
            x_high, cache = self.s3(x, s, t_, cache)
            delta = torch.maximum(atol, rtol * torch.maximum(x_low.abs(), x_prev.abs()))
            error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
            inv_error = 1 / (float(error) + 1e-8)
            if not errs:
                errs = [inv_error, inv_error, inv_error]
            errs[0] = inv_error
            factor = errs[0] ** b1 * errs[1] ** (-0.0 / 1.5) * errs[2] ** (0.0 / 1.5)
            factor = 1 + math.atan(factor - 1)
            if factor >= 0.81:
                errs[2], errs[1] = errs[1], errs[0]
                x_prev = x_low
                x = x_high + su * 1.0 * self.randn_like(x)
                s = t
                accepted += 1
            h *= factor
        return x


def draws(n: int, batch: int = 1) -> Any:
    g = torch.Generator().manual_seed(3)
    return iter([torch.randn((batch, *LATENT), generator=g) for _ in range(n)])


@pytest.mark.parametrize("steps", [7, 9, 20])
def test_dpm_fast_is_k_diffusions(steps: int) -> None:
    sigmas = sampler_sigmas(SAMPLERS["DPM fast"], SCHEDULE, steps)
    noise_first = torch.randn((1, *LATENT), generator=torch.Generator().manual_seed(1))
    x = noise_first * sigmas[0]
    mine, theirs = draws(50), draws(50)
    calls: list[int] = []

    def counted(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return denoiser(x, sigma)

    bounds = sigmas.clone()
    bounds[0], bounds[-2] = SCHEDULE.sigma_max, SCHEDULE.sigma_min
    ours = LOOPS["sample_dpm_fast"](counted, x, bounds, lambda s, n: next(mine), lambda *a: None)
    ref_solver = KDPMSolver(denoiser, lambda x: next(theirs))
    ref = ref_solver.fast(x, SCHEDULE.sigma_min, SCHEDULE.sigma_max, steps)
    assert torch.equal(ours, ref)
    assert len(calls) == ref_solver.nfe == steps  # A1111's n = steps model calls


def test_dpm_adaptive_is_k_diffusions() -> None:
    sigmas = sampler_sigmas(SAMPLERS["DPM adaptive"], SCHEDULE, 20)
    x = torch.randn((2, *LATENT), generator=torch.Generator().manual_seed(1)) * sigmas[0]
    mine, theirs = draws(500, 2), draws(500, 2)
    bounds = sigmas.clone()
    bounds[0], bounds[-2] = SCHEDULE.sigma_max, SCHEDULE.sigma_min
    tries: list[int] = []
    ours = LOOPS["sample_dpm_adaptive"](
        denoiser, x, bounds, lambda s, n: next(mine), lambda i, x, d: tries.append(i)
    )
    ref = KDPMSolver(denoiser, lambda x: next(theirs)).adaptive(
        x, SCHEDULE.sigma_min, SCHEDULE.sigma_max
    )
    assert torch.equal(ours, ref) and len(tries) > 5


def test_the_rows_are_a1111s() -> None:
    assert canonical_sampler("k_dpm_fast") == "DPM fast"
    assert canonical_sampler("k_dpm_ad") == "DPM adaptive"
    for name in ("DPM fast", "DPM adaptive"):
        row = SAMPLERS[name]
        assert row.uses_ensd and row.schedule == "uniform" and row.conditioning_steps == 1


def run(name: str, seeds: list[int], x0: torch.Tensor) -> torch.Tensor:
    model = CFGDenoiser(
        OracleUNet(x0, SCHEDULE), SCHEDULE, conditioning(batch=len(seeds)), 1.0,
        dtype=torch.float32,
    )  # fmt: skip
    rng = ImageRNG(LATENT, [NoiseSpec(seed=s, ensd=31337) for s in seeds], torch.device("cpu"))
    first = rng.first()
    return sample(SAMPLERS[name], model, first, 9, lambda s, n: rng.next(), lambda *a: None)


def test_dpm_fast_gives_each_image_what_it_gets_alone() -> None:
    x0 = torch.randn((2, *LATENT), generator=torch.Generator().manual_seed(0)) * 0.5
    together = run("DPM fast", [5, 9], x0)
    for i, seed in enumerate([5, 9]):
        alone = run("DPM fast", [seed], x0[i : i + 1])
        torch.testing.assert_close(together[i : i + 1], alone, atol=1e-5, rtol=1e-5)


def test_dpm_adaptive_steps_on_the_whole_batchs_error_as_k_diffusion_does() -> None:
    x0 = torch.randn((2, *LATENT), generator=torch.Generator().manual_seed(0)) * 0.5
    together = run("DPM adaptive", [5, 9], x0)
    alone = run("DPM adaptive", [5], x0[:1])
    assert together.shape == (2, *LATENT) and alone.shape == (1, *LATENT)


MODEL = SimpleNamespace(hash="80ec94bbee", name="aidraw-demo")


@pytest.mark.parametrize("name", ["DPM fast", "DPM adaptive"])
def test_a_pasted_infotext_reproduces_the_request(name: str) -> None:
    chat = read_request(f"1girl --sampler '{name}' --steps 24 --seed 7").request
    asked = dataclasses.replace(check_request(chat, Limits()), rng="GPU", ensd=31337)
    text = infotext_for(asked, noise_specs(asked)[0], MODEL)  # type: ignore[arg-type]
    assert f"Sampler: {name}, Schedule type: Automatic, CFG scale" in text
    assert "ENSD: 31337" in text
    again = check_request(read_request(text).request, Limits())
    assert (again.sampler, again.schedule_type, again.num_inference_steps, again.seed) == (
        name,
        "Automatic",
        24,
        7,
    )
    assert again.ensd == 31337
