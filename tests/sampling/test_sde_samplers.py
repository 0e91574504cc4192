"""DPM++ 2M SDE (midpoint and Heun) and DPM++ 3M SDE: against diffusers' SDE-DPM-Solver++ and a
reference written here from the algorithm, their Brownian noise as A1111 draws it, per image."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from engine.demo.model import SCHEDULER_CONFIG
from engine.request import RngSource
from engine.sampling.denoiser import CFGDenoiser, NoiseSchedule
from engine.sampling.kdiffusion import sample_dpmpp_2m_sde, sample_dpmpp_3m_sde
from engine.sampling.loop import LOOPS, sample, sampler_sigmas
from engine.sampling.samplers import SAMPLERS, canonical_sampler
from tests.sampling.test_samplers import OracleUNet, conditioning
from tests.sampling.test_sde_noise import A1111BrownianNoise, quiet_torchsde

SCHEDULE = NoiseSchedule.from_config(SCHEDULER_CONFIG)
LATENT = (4, 8, 8)
STEPS = 28  # uniform: t = 999 - 37k, whole timesteps diffusers can be given


def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A smooth, per-image denoiser (not exact, so higher-order terms matter)."""
    return 0.5 * torch.tanh(x / (sigma + 1)) + 0.1 * x / (sigma**2 + 1)


def draws(n: int, batch: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randn((batch, *LATENT), generator=g) for _ in range(n)]


class Replay:
    """A noise sampler giving prepared draws in order, recording what it was asked."""

    def __init__(self, noises: list[torch.Tensor]) -> None:
        self.noises, self.asked = noises, []  # type: ignore[var-annotated]

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        self.asked.append((float(sigma), float(sigma_next)))
        return self.noises[len(self.asked) - 1]


@pytest.mark.parametrize("solver", ["midpoint", "heun"])
def test_dpmpp_2m_sde_matches_diffusers_sde_dpmsolver(solver: Any) -> None:
    x_first = torch.randn((1, *LATENT), generator=torch.Generator().manual_seed(1))
    noises = draws(STEPS)
    sigmas = SCHEDULE.get_sigmas(STEPS)
    replay = Replay(noises)
    ours = sample_dpmpp_2m_sde(
        denoiser, x_first * sigmas[0], sigmas, replay, lambda *a: None, solver_type=solver
    )
    # Brownian draws for every step but the last (a plain denoising step), k-diffusion's σ pairs.
    pairs = zip(sigmas[:-2], sigmas[1:-1], strict=True)
    assert replay.asked == [(float(a), float(b)) for a, b in pairs]
    scheduler = DPMSolverMultistepScheduler.from_config(
        SCHEDULER_CONFIG, algorithm_type="sde-dpmsolver++", solver_order=2, solver_type=solver,
        final_sigmas_type="zero", lower_order_final=False,
    )  # fmt: skip
    scheduler.set_timesteps(timesteps=[999 - 37 * k for k in range(STEPS)])
    ve = scheduler.sigmas.double()
    x = x_first.double() * ve[0] / (ve[0] ** 2 + 1) ** 0.5  # diffusers' VP latents
    for i, t in enumerate(scheduler.timesteps):
        x_ve = x * (ve[i] ** 2 + 1) ** 0.5
        eps = (x_ve - denoiser(x_ve, ve[i])) / ve[i]
        x = scheduler.step(eps.float(), t, x.float(), variance_noise=noises[i]).prev_sample
        x = x.double()
    assert ours.abs().max() > 0.1
    torch.testing.assert_close(ours, x.float(), atol=2e-4, rtol=2e-4)


def reference_3m_sde(
    x: torch.Tensor, sigmas: torch.Tensor, noises: list[torch.Tensor]
) -> torch.Tensor:
    """DPM-Solver++(3M) SDE (Lu et al. 2022; k-diffusion's eta 1) in λ = -log σ, float64:
    x' = e^{-2h}x + (1 - e^{-2h})·D + c₁·D₁ + c₂·D₂ + σ'√(1 - e^{-2h})·z, the multistep
    corrections from divided differences in λ, c₁ = 1 - (1 - e^{-2h})/(2h) and
    c₂ = ½ - (e^{-2h} - 1 + 2h)/(2h)²; orders 1, 2, 3 over the first steps, D at σ = 0."""
    lam = (-sigmas[:-1].double().log()).tolist()
    history: list[tuple[float, torch.Tensor]] = []
    x = x.double()
    for i in range(len(sigmas) - 1):
        d = denoiser(x, sigmas[i].double())
        if sigmas[i + 1] == 0:
            return d
        h = lam[i + 1] - lam[i]
        e = torch.tensor(-2 * h, dtype=torch.float64).exp()
        c1 = 1 - (1 - e) / (2 * h)
        c2 = 0.5 - (e - 1 + 2 * h) / (2 * h) ** 2
        x_next = e * x + (1 - e) * d
        if len(history) >= 1:
            (l1, d1) = history[-1]
            slope0 = (d - d1) / ((lam[i] - l1) / h)
            if len(history) >= 2:
                (l2, d2) = history[-2]
                slope1 = (d1 - d2) / ((l1 - l2) / h)
                r0, r1 = (lam[i] - l1) / h, (l1 - l2) / h
                x_next = x_next + c1 * (slope0 + (slope0 - slope1) * r0 / (r0 + r1))
                x_next = x_next + c2 * (slope0 - slope1) / (r0 + r1)
            else:
                x_next = x_next + c1 * slope0
        x = x_next + noises[i].double() * float(sigmas[i + 1]) * (1 - e).sqrt()
        history.append((lam[i], d))
    return x


def test_dpmpp_3m_sde_follows_the_algorithm() -> None:
    sigmas = sampler_sigmas(SAMPLERS["DPM++ 3M SDE Exponential"], SCHEDULE, 12)
    assert len(sigmas) == 13  # A1111 discards the penultimate σ of 13 + 1
    noises = draws(12)
    x_first = torch.randn((1, *LATENT), generator=torch.Generator().manual_seed(1)) * sigmas[0]
    ours = sample_dpmpp_3m_sde(denoiser, x_first, sigmas, Replay(noises), lambda *a: None)
    ref = reference_3m_sde(x_first, sigmas, noises)
    assert ours.abs().max() > 0.1
    torch.testing.assert_close(ours, ref.float(), atol=1e-4, rtol=1e-4)


def test_the_sde_rows_are_a1111s() -> None:
    assert canonical_sampler("k_dpmpp_2m_sde") == "DPM++ 2M SDE"
    assert canonical_sampler("k_dpmpp_2m_sde_heun_exp") == "DPM++ 2M SDE Heun Exponential"
    assert canonical_sampler("dpmpp_3m_sde_karras") == "DPM++ 3M SDE Karras"
    for name in ("DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE"):
        named = [("", "uniform"), (" Karras", "karras"), (" Exponential", "exponential")]
        for suffix, schedule in named:
            row = SAMPLERS[name + suffix]
            assert row.noise == "brownian" and not row.uses_ensd and row.conditioning_steps == 1
            assert row.schedule == schedule and row.base == name
            assert row.discard_penultimate == name.startswith("DPM++ 3M")
            assert row.function in LOOPS


def oracle_run(
    name: str, seeds: list[int], sources: list[RngSource], x0: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    model = CFGDenoiser(
        OracleUNet(x0, SCHEDULE), SCHEDULE, conditioning(batch=len(seeds)), 1.0,
        dtype=torch.float32,
    )  # fmt: skip
    trace: list[torch.Tensor] = []
    sample(
        SAMPLERS[name], model, noise, 6, lambda s, n: s,
        lambda i, x, d: trace.append(x), seeds=seeds, sources=sources,
    )  # fmt: skip
    return trace[-2]  # the last latents with Brownian noise in them


SDE_ROWS = ["DPM++ 2M SDE", "DPM++ 2M SDE Heun Karras", "DPM++ 3M SDE Exponential"]


@quiet_torchsde
@pytest.mark.parametrize("name", SDE_ROWS)
@pytest.mark.parametrize("source", ["CPU", "NV"])
def test_brownian_noise_is_a1111s_for_the_rng_source(name: str, source: RngSource) -> None:
    x0 = torch.randn((2, *LATENT), generator=torch.Generator().manual_seed(0))
    noise = torch.randn((2, *LATENT), generator=torch.Generator().manual_seed(1))
    ours = oracle_run(name, [5, 6], [source, source], x0, noise)
    # The same loop with A1111's Brownian sampler (k-diffusion's, A1111's torchsde patch).
    row = SAMPLERS[name]
    sigmas = sampler_sigmas(row, SCHEDULE, 6)
    model = CFGDenoiser(
        OracleUNet(x0, SCHEDULE), SCHEDULE, conditioning(batch=2), 1.0, dtype=torch.float32
    )
    trace: list[torch.Tensor] = []
    x = noise * sigmas[0]
    LOOPS[row.function or ""](
        model, x, sigmas, A1111BrownianNoise(x, sigmas, [5, 6], source),
        lambda i, x, d: trace.append(x),
    )  # fmt: skip
    assert torch.equal(ours, trace[-2])


@quiet_torchsde
@pytest.mark.parametrize("name", SDE_ROWS)
def test_each_image_gets_what_it_gets_alone(name: str) -> None:
    x0 = torch.randn((2, *LATENT), generator=torch.Generator().manual_seed(0))
    noise = torch.randn((2, *LATENT), generator=torch.Generator().manual_seed(1))
    together = oracle_run(name, [5, 9], ["NV", "CPU"], x0, noise)
    images: list[tuple[int, RngSource]] = [(5, "NV"), (9, "CPU")]
    for i, (seed, source) in enumerate(images):
        alone = oracle_run(name, [seed], [source], x0[i : i + 1], noise[i : i + 1])
        torch.testing.assert_close(together[i : i + 1], alone, atol=1e-6, rtol=1e-6)
    other = oracle_run(name, [5, 10], ["NV", "CPU"], x0, noise)
    assert torch.equal(other[0], together[0]) and not torch.equal(other[1], together[1])


def test_chat_flag_and_pasted_infotext_name_the_rows() -> None:
    from bot.parse import parse_request
    from engine.checks import check_request
    from engine.request import Limits

    asked = parse_request("1girl --sampler dpmpp_2m_sde_heun")
    assert canonical_sampler(asked.sampler or "") == "DPM++ 2M SDE Heun"
    pasted = parse_request(
        "1girl\nSteps: 20, Sampler: DPM++ 2M SDE, Schedule type: Karras, CFG scale: 7, Seed: 1"
    )
    assert (pasted.sampler, pasted.schedule_type) == ("DPM++ 2M SDE", "Karras")
    pasted = parse_request("1girl\nSteps: 20, Sampler: DPM++ 3M SDE, Seed: 1")
    checked = check_request(pasted, Limits())
    assert checked.sampler == "DPM++ 3M SDE"
