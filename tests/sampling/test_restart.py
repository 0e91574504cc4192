"""The Restart sampler (A1111 v1.9.4 `sd_samplers_extra.restart_sampler`): against a reference
written here from A1111's function, its step count, its noise per image, and its infotext."""

from __future__ import annotations

import dataclasses
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
from engine.sampling.kdiffusion import get_sigmas_karras, restart_steps, sample_restart, to_d
from engine.sampling.loop import LOOPS, sample, sampler_sigmas
from engine.sampling.samplers import SAMPLERS, canonical_sampler, infotext_sampler, run_row
from engine.sampling.seeds import ImageRNG, NoiseSpec
from tests.sampling.test_samplers import OracleUNet, conditioning

SCHEDULE = NoiseSchedule.from_config(SCHEDULER_CONFIG)
LATENT = (4, 8, 8)


def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A smooth, per-image denoiser (not exact, so the Heun corrections matter)."""
    return 0.5 * torch.tanh(x / (sigma + 1)) + 0.1 * x / (sigma**2 + 1)


def a1111_restart(model: Any, x: Any, sigmas: Any, randn_like: Any, s_noise: float = 1.0) -> Any:
    """A1111 v1.9.4 `restart_sampler` with its default restart list, transcribed step by step
    (`randn_like` stands for A1111's hijacked `torch.randn_like`, the images' generators)."""
    s_in = x.new_ones([x.shape[0]])

    def heun_step(x: Any, old_sigma: Any, new_sigma: Any) -> Any:
        denoised = model(x, (old_sigma * s_in)[0])
        d = to_d(x, old_sigma, denoised)
        dt = new_sigma - old_sigma
        if new_sigma == 0:
            return x + d * dt
        x_2 = x + d * dt
        d_2 = to_d(x_2, new_sigma, model(x_2, (new_sigma * s_in)[0]))
        return x + (d + d_2) / 2 * dt

    steps = sigmas.shape[0] - 1
    restart_list: dict[float, list[float]] = {}
    if steps >= 20:
        restart_steps, restart_times = 9, 1
        if steps >= 36:
            restart_steps, restart_times = steps // 4, 2
        sigmas = get_sigmas_karras(
            steps - restart_steps * restart_times, sigmas[-2].item(), sigmas[0].item()
        )
        restart_list = {0.1: [restart_steps + 1, restart_times, 2]}
    by_index = {int(torch.argmin(abs(sigmas - k), dim=0)): v for k, v in restart_list.items()}
    step_list = []
    for i in range(len(sigmas) - 1):
        step_list.append((sigmas[i], sigmas[i + 1]))
        if i + 1 in by_index:
            rs, times, restart_max = by_index[i + 1]
            min_idx = i + 1
            max_idx = int(torch.argmin(abs(sigmas - restart_max), dim=0))
            if max_idx < min_idx:
                sigma_restart = get_sigmas_karras(
                    int(rs), sigmas[min_idx].item(), sigmas[max_idx].item()
                )[:-1]
                while times > 0:
                    times -= 1
                    step_list.extend(zip(sigma_restart[:-1], sigma_restart[1:], strict=True))
    last_sigma = None
    for old_sigma, new_sigma in step_list:
        if last_sigma is None:
            last_sigma = old_sigma
        elif last_sigma < old_sigma:
            x = x + randn_like(x) * s_noise * (old_sigma**2 - last_sigma**2) ** 0.5
        x = heun_step(x, old_sigma, new_sigma)
        last_sigma = new_sigma
    return x, len(step_list)


def draws(batch: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randn((batch, *LATENT), generator=g) for _ in range(4)]


@pytest.mark.parametrize(
    ("steps", "schedule"), [(12, "Karras"), (20, "Karras"), (25, "Uniform"), (40, "Karras")]
)
def test_restart_is_a1111s(steps: int, schedule: str) -> None:
    sigmas = sampler_sigmas(run_row("Restart", schedule), SCHEDULE, steps)
    x_first = torch.randn((1, *LATENT), generator=torch.Generator().manual_seed(1)) * sigmas[0]
    asked: list[tuple[float, float]] = []
    ours_noise, ref_noise = iter(draws()), iter(draws())

    def noise(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        asked.append((float(sigma), float(sigma_next)))
        return next(ours_noise)

    calls: list[int] = []
    ours = sample_restart(denoiser, x_first, sigmas, noise, lambda i, x, d: calls.append(i))
    ref, ref_steps = a1111_restart(denoiser, x_first, sigmas, lambda x: next(ref_noise))
    assert torch.equal(ours, ref)
    # A1111 runs exactly `steps` steps with its default restarts; one noise draw per restart.
    assert ref_steps == steps and calls == list(range(steps))
    assert len(asked) == (0 if steps < 20 else 2 if steps >= 36 else 1)
    assert all(up > down for down, up in asked)


def test_the_restart_steps() -> None:
    pairs = restart_steps(sampler_sigmas(SAMPLERS["Restart"], SCHEDULE, 20))
    sigmas = [float(a) for a, _ in pairs] + [float(pairs[-1][1])]
    ups = [i for i in range(1, len(sigmas) - 1) if sigmas[i + 1] > sigmas[i]]
    assert (
        len(pairs) == 20 and len(ups) == 1
    )  # 11 Karras steps, then 9 back down from near 2 (the σ nearest 0.1 of 11 steps: 0.17)
    assert sigmas[ups[0]] == pytest.approx(0.1, abs=0.08) and sigmas[ups[0] + 1] > 1.5


def test_the_row_is_a1111s() -> None:
    row = SAMPLERS["Restart"]
    assert canonical_sampler("restart") == "Restart" and row.function in LOOPS
    assert row.schedule == "karras" and row.conditioning_steps == 2  # "second_order"
    # Its restart noise is the images' generators' (ENSD too), yet A1111 writes no ENSD.
    assert row.noise == "ancestral" and not row.uses_ensd
    assert run_row("Restart", "Automatic") == row  # v1.9's 'scheduler': 'karras'
    assert infotext_sampler("Restart", None) == ("Restart", "Karras")
    assert run_row("Restart", "Exponential").schedule == "exponential"


def run(seeds: list[int], x0: torch.Tensor, ensd: int = 0) -> torch.Tensor:
    model = CFGDenoiser(
        OracleUNet(x0, SCHEDULE), SCHEDULE, conditioning(batch=len(seeds)), 1.0,
        dtype=torch.float32,
    )  # fmt: skip
    specs = [NoiseSpec(seed=s, ensd=ensd) for s in seeds]
    rng = ImageRNG(LATENT, specs, torch.device("cpu"))
    first = rng.first()
    return sample(
        SAMPLERS["Restart"], model, first, 20, lambda s, n: rng.next(), lambda i, x, d: None
    )


def test_each_image_gets_what_it_gets_alone() -> None:
    x0 = torch.randn((2, *LATENT), generator=torch.Generator().manual_seed(0))
    together = run([5, 9], x0 * 0.5)
    for i, seed in enumerate([5, 9]):
        alone = run([seed], x0[i : i + 1] * 0.5)
        torch.testing.assert_close(together[i : i + 1], alone, atol=1e-5, rtol=1e-5)
    assert not torch.equal(run([5, 9], x0 * 0.5, ensd=31337), together)


MODEL = SimpleNamespace(hash="80ec94bbee", name="aidraw-demo")


def test_a_pasted_infotext_reproduces_the_request() -> None:
    chat = read_request("1girl --sampler restart --steps 24 --seed 7").request
    asked = dataclasses.replace(check_request(chat, Limits()), rng="GPU")
    assert asked.sampler == "Restart"
    text = infotext_for(asked, noise_specs(asked)[0], MODEL)  # type: ignore[arg-type]
    assert "Sampler: Restart, Schedule type: Karras, CFG scale" in text and "ENSD" not in text
    again = check_request(read_request(text).request, Limits())
    assert (again.sampler, again.schedule_type, again.num_inference_steps, again.seed) == (
        "Restart",
        "Karras",
        24,
        7,
    )
    uniform = check_request(read_request(text + " --schedule uniform").request, Limits())
    uniform = dataclasses.replace(uniform, rng="GPU")
    text = infotext_for(uniform, noise_specs(uniform)[0], MODEL)  # type: ignore[arg-type]
    assert "Sampler: Restart, Schedule type: Uniform," in text
