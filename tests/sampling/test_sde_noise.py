"""DPM++ SDE's Brownian noise against A1111's, rebuilt in this file from A1111 v1.9.4's code.

A1111 seeds one torchsde Brownian tree per image with the image's seed (`all_seeds`, so the
plain seed for every image under a variation seed, never seed + ENSD;
`sd_samplers_common.py:334-342`) and patches torchsde's `_randn(size, dtype, device, seed)` to
return `rng.randn_local(seed, size)`, the first draw of a fresh generator of the RNG source
(`sd_samplers_common.py:146-155`, `rng.py:22-33`). The reference below does exactly that, with
PhiloxGenerator (checked against CUDA's known vector in test_seeds.py) for CUDA's randn.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest
import torch
import torchsde
from torchsde._brownian import brownian_interval

from engine.request import RngSource
from engine.sampling.brownian import BrownianNoise
from engine.sampling.denoiser import NoiseSchedule
from engine.sampling.seeds import PhiloxGenerator
from tests.sampling.test_samplers import BASE, assert_latents_close, draw_latents
from tests.sampling.test_seeds import reference_slerp

SOURCES: list[RngSource] = ["CPU", "NV", "GPU"]
LATENT = (4, 8, 8)
CPU = torch.device("cpu")
# Queries a float ulp outside [σ_min, σ_max] make torchsde warn, in A1111 too.
quiet_torchsde = pytest.mark.filterwarnings("ignore:Should have t:UserWarning")


def a1111_randn_local(source: str, seed: int, shape: Sequence[int], device: torch.device) -> Any:
    """A1111 `rng.randn_local(seed, shape)` with `randn_source = source` on `device`.

    "GPU" is the model device's generator; off CUDA that is CUDA's randn as this project
    defines it (engine/sampling/seeds.py `create_generator`), i.e. the Philox emulation.
    """
    if source == "NV" or (source == "GPU" and device.type != "cuda"):
        return torch.asarray(PhiloxGenerator(int(seed)).randn(tuple(shape)), device=device)
    local_device = CPU if source == "CPU" else device
    generator = torch.Generator(local_device).manual_seed(int(seed))
    return torch.randn(tuple(shape), device=local_device, generator=generator).to(device)


@contextmanager
def a1111_torchsde(source: str, device: torch.device) -> Iterator[None]:
    """A1111 `replace_torchsde_browinan()`: every Brownian draw comes from `randn_local`."""

    def torchsde_randn(size: Any, dtype: torch.dtype, device_: torch.device, seed: Any) -> Any:
        return a1111_randn_local(source, seed, size, device).to(device=device_, dtype=dtype)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(brownian_interval, "_randn", torchsde_randn)
        yield


class A1111BrownianNoise:
    """k-diffusion `BrownianTreeNoiseSampler(x, σ_min, σ_max, seed=seeds)`, batched trees."""

    def __init__(self, x: torch.Tensor, sigmas: torch.Tensor, seeds: list[int], source: str):
        self.source, self.device = source, x.device
        t0, t1 = torch.as_tensor(sigmas[sigmas > 0].min()), torch.as_tensor(sigmas.max())
        w0 = torch.zeros_like(x)[0]
        with a1111_torchsde(source, x.device):
            self.trees = [torchsde.BrownianTree(t0, w0, t1, entropy=s) for s in seeds]

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        t0, t1 = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        low, high, sign = (t0, t1, 1) if t0 < t1 else (t1, t0, -1)
        with a1111_torchsde(self.source, self.device):
            w = torch.stack([tree(low, high) for tree in self.trees]) * sign
        return w / (t1 - t0).abs().sqrt()


def sde_queries(sigmas: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (σ, σ_next) pairs k-diffusion `sample_dpmpp_sde` asks for, in order (r = 1/2)."""
    queries = []
    for i in range(len(sigmas) - 1):
        if sigmas[i + 1] > 0:
            t, t_next = sigmas[i].log().neg(), sigmas[i + 1].log().neg()
            s = t + (t_next - t) * 0.5
            queries += [(sigmas[i], s.neg().exp()), (sigmas[i], sigmas[i + 1])]
    return queries


def run_queries(noise: Any, sigmas: torch.Tensor) -> torch.Tensor:
    return torch.stack([noise(s, s_next) for s, s_next in sde_queries(sigmas)])


SCHEDULE = NoiseSchedule.from_config(
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
)


@quiet_torchsde
@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("karras", [False, True])
def test_brownian_draws_come_from_a1111s_rng_source(source: RngSource, karras: bool) -> None:
    x = torch.zeros(2, *LATENT)
    sigmas = SCHEDULE.get_sigmas_karras(5) if karras else SCHEDULE.get_sigmas(5)
    seeds = [1234, 2870305590]
    ours = run_queries(BrownianNoise(x, sigmas, seeds, [source] * 2), sigmas)
    reference = run_queries(A1111BrownianNoise(x, sigmas, seeds, source), sigmas)
    assert ours.shape == (2 * (len(sigmas) - 2), 2, *LATENT)
    assert torch.equal(ours, reference)
    assert not torch.equal(ours[:, 0], ours[:, 1])  # a tree per seed


@quiet_torchsde
def test_each_image_draws_from_its_own_source() -> None:
    x, sigmas = torch.zeros(3, *LATENT), SCHEDULE.get_sigmas_karras(4)
    images = [(7, "NV"), (7, "CPU"), (8, "GPU")]
    together = run_queries(BrownianNoise(x, sigmas, [7, 7, 8], ["NV", "CPU", "GPU"]), sigmas)
    for i, (seed, source) in enumerate(images):
        alone = run_queries(A1111BrownianNoise(x[:1], sigmas, [seed], source), sigmas)
        assert torch.equal(together[:, i], alone[:, 0])
    assert not torch.equal(together[:, 0], together[:, 1])  # NV and CPU differ for one seed
    # On the CPU, "GPU" draws what a CUDA GPU draws: NV's numbers.
    nv = run_queries(A1111BrownianNoise(x[:1], sigmas, [8], "NV"), sigmas)
    assert torch.equal(together[:, 2], nv[:, 0])


@quiet_torchsde
def test_torchsde_outside_our_trees_keeps_its_own_draws() -> None:
    x, sigmas = torch.zeros(1, *LATENT), SCHEDULE.get_sigmas(4)
    run_queries(BrownianNoise(x, sigmas, [5], ["NV"]), sigmas)  # routes torchsde's `_randn`
    for seed in (3, 4):  # e.g. diffusers' DPMSolverSDEScheduler: a CPU generator per draw
        expected = torch.randn(LATENT, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(brownian_interval._randn(LATENT, torch.float32, CPU, seed), expected)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@quiet_torchsde
@pytest.mark.parametrize("source", SOURCES)
def test_brownian_draws_on_cuda_follow_a1111(source: RngSource) -> None:
    x, sigmas = torch.zeros(2, *LATENT, device="cuda"), SCHEDULE.get_sigmas_karras(5).cuda()
    ours = run_queries(BrownianNoise(x, sigmas, [1, 2], [source] * 2), sigmas)
    reference = run_queries(A1111BrownianNoise(x, sigmas, [1, 2], source), sigmas)
    assert ours.device.type == "cuda" and torch.equal(ours, reference)
    if source != "CPU":  # CUDA's own randn is what NV emulates
        nv = run_queries(A1111BrownianNoise(x.cpu(), sigmas.cpu(), [1, 2], "NV"), sigmas.cpu())
        torch.testing.assert_close(ours.cpu(), nv, atol=1e-5, rtol=0)


# --- the whole sampler on the demo model -------------------------------------------------------

STEPS = 4  # 999, 666, 333, 0: whole timesteps for the uniform schedule


def a1111_dpmpp_sde(
    model: Any,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    *,
    seeds: list[int],
    source: str,
    karras: bool,
    scale: float,
    subseeds: list[int] | None = None,
    subseed_strength: float = 0.0,
) -> torch.Tensor:
    """A1111 txt2img "DPM++ SDE (Karras)": `ImageRNG.first()`, k-diffusion `sample_dpmpp_sde`
    with A1111's Brownian noise sampler over `all_seeds`, `CFGDenoiser` + `CompVisDenoiser`."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0).float()
    model_sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
    log_sigmas = model_sigmas.log()
    if karras:  # k-diffusion `get_sigmas_karras` between the model's σ_min and σ_max
        ramp = torch.linspace(0, 1, STEPS)
        lo, hi = model_sigmas[0].item() ** (1 / 7), model_sigmas[-1].item() ** (1 / 7)
        sigmas = torch.cat([(hi + ramp * (lo - hi)) ** 7, torch.zeros(1)])
    else:  # `CompVisDenoiser.get_sigmas`: t = linspace(999, 0, n), whole numbers here
        sigmas = torch.cat([log_sigmas[torch.linspace(999, 0, STEPS).long()].exp(), torch.zeros(1)])

    def sigma_to_t(sigma: torch.Tensor) -> torch.Tensor:  # k-diffusion `DiscreteSchedule`
        log_sigma = sigma.log()
        dists = log_sigma - log_sigmas[:, None]
        low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=log_sigmas.shape[0] - 2)
        low, high = log_sigmas[low_idx], log_sigmas[low_idx + 1]
        w = ((low - log_sigma) / (low - high)).clamp(0, 1)
        return ((1 - w) * low_idx + w * (low_idx + 1)).view(sigma.shape)

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        x_in, sigma_in = torch.cat([x, x]), sigma.repeat(2 * len(seeds))
        eps: torch.Tensor = model.pipe.unet(
            x_in * (1 / (sigma**2 + 1) ** 0.5),
            sigma_to_t(sigma_in),
            encoder_hidden_states=torch.cat([cond, uncond]),
        ).sample.float()
        d_cond, d_uncond = (x_in + eps * -sigma).chunk(2)
        return d_uncond + (d_cond - d_uncond) * scale

    xs = []
    for i, seed in enumerate(seeds):
        noise = a1111_randn_local(source, seed, LATENT, CPU)
        if subseed_strength:
            assert subseeds is not None
            sub = a1111_randn_local(source, subseeds[i], LATENT, CPU)
            noise = reference_slerp(subseed_strength, noise, sub).float()
        xs.append(noise)
    x = torch.stack(xs) * sigmas[0]
    noise_sampler = A1111BrownianNoise(x, sigmas, seeds, source)

    def ancestral(s_from: torch.Tensor, s_to: torch.Tensor) -> tuple[Any, Any]:
        s_up = min(s_to, (s_to**2 * (s_from**2 - s_to**2) / s_from**2) ** 0.5)
        return (s_to**2 - s_up**2) ** 0.5, s_up

    r, fac = 0.5, 1 / (2 * 0.5)
    with torch.inference_mode():
        for i in range(STEPS):
            denoised = denoise(x, sigmas[i])
            if sigmas[i + 1] == 0:
                x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
                continue
            t, t_next = sigmas[i].log().neg(), sigmas[i + 1].log().neg()
            s = t + (t_next - t) * r
            sd, su = ancestral(t.neg().exp(), s.neg().exp())
            s_ = sd.log().neg()
            x_2 = (s_.neg().exp() / t.neg().exp()) * x - (t - s_).expm1() * denoised
            x_2 = x_2 + noise_sampler(t.neg().exp(), s.neg().exp()) * su
            denoised_2 = denoise(x_2, s.neg().exp())
            sd, su = ancestral(t.neg().exp(), t_next.neg().exp())
            t_next_ = sd.log().neg()
            denoised_d = (1 - fac) * denoised + fac * denoised_2
            x = (t_next_.neg().exp() / t.neg().exp()) * x - (t - t_next_).expm1() * denoised_d
            x = x + noise_sampler(t.neg().exp(), t_next.neg().exp()) * su
    return x


@pytest.mark.slow
@quiet_torchsde
@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("sampler", ["DPM++ SDE", "DPM++ SDE Karras"])
def test_dpmpp_sde_matches_a1111_for_every_rng_source(
    demo_model: Any, monkeypatch: pytest.MonkeyPatch, sampler: str, source: str
) -> None:
    # ENSD 31337 is set: A1111's trees ignore it (DPM++ SDE draws no ancestral noise).
    request = dataclasses.replace(
        BASE, sampler=sampler, rng=source, num_inference_steps=STEPS, batch_size=2, ensd=31337
    )
    ours, cond, uncond, results = draw_latents(demo_model, monkeypatch, [request])
    assert [r.seed for r in results] == [1234, 1235] and "ENSD" not in results[0].infotext
    reference = a1111_dpmpp_sde(
        demo_model, cond, uncond, seeds=[1234, 1235], source=source,
        karras=sampler.endswith("Karras"), scale=request.guidance_scale or 0.0,
    )  # fmt: skip
    assert ours.abs().max() > 0.1
    assert_latents_close(ours, reference)


@pytest.mark.slow
@quiet_torchsde
@pytest.mark.parametrize("source", ["NV", "CPU"])
def test_dpmpp_sde_with_a_variation_seed_matches_a1111(
    demo_model: Any, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    request = dataclasses.replace(
        BASE, sampler="DPM++ SDE Karras", rng=source, num_inference_steps=STEPS, batch_size=2,
        subseed=500, subseed_strength=0.3,
    )  # fmt: skip
    ours, cond, uncond, results = draw_latents(demo_model, monkeypatch, [request])
    # Every image keeps the seed, so both trees are seeded 1234; only the first noise varies.
    assert [r.seed for r in results] == [1234, 1234]
    reference = a1111_dpmpp_sde(
        demo_model, cond, uncond, seeds=[1234, 1234], source=source, karras=True,
        scale=request.guidance_scale or 0.0, subseeds=[500, 501], subseed_strength=0.3,
    )  # fmt: skip
    assert_latents_close(ours, reference)
    assert (ours[0] - ours[1]).abs().max() > 0.01
