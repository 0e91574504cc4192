"""Our samplers: the σ schedules, CFG, the per-step hook, and reference runs against diffusers."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    StableDiffusionPipeline,
)

import engine.generate
from engine.demo.model import SCHEDULER_CONFIG
from engine.errors import InvalidRequest
from engine.generate import generate
from engine.request import GenerationRequest, Limits
from engine.sampling.denoiser import CFGDenoiser, NoiseSchedule
from engine.sampling.loop import LOOPS, TIMESTEPS_LOOPS, sample, sampler_sigmas
from engine.sampling.samplers import SAMPLERS, canonical_sampler
from engine.sampling.steps import total_steps
from engine.sampling.timesteps import ddim_timesteps
from tests.conftest import png_pixels

SCHEDULE = NoiseSchedule.from_config(SCHEDULER_CONFIG)
LATENT = (4, 8, 8)


# --- σ schedules ---------------------------------------------------------------------------------


def test_every_row_names_a_loop_we_have() -> None:
    named = {row.function for row in SAMPLERS.values()}
    assert named == set(LOOPS) | set(TIMESTEPS_LOOPS)
    assert {row.function for row in SAMPLERS.values() if row.timesteps} == set(TIMESTEPS_LOOPS)


def test_sigmas_are_k_diffusions_for_sd1() -> None:
    sigmas = SCHEDULE.get_sigmas(28)
    assert sigmas.shape == (29,) and sigmas[-1] == 0 and sigmas.dtype == torch.float32
    # shared/notes/a1111-nai.md §3.3: A1111's 28-step "Euler a" schedule.
    expected = [14.6146, 11.7434, 9.5436, 7.8399]
    np.testing.assert_allclose(sigmas[:4].numpy(), expected, atol=1e-4)
    np.testing.assert_allclose(sigmas[-4:].numpy(), [0.2843, 0.1907, 0.0292, 0.0], atol=1e-4)


@pytest.mark.parametrize("steps", [20, 28, 50])
def test_sigmas_match_diffusers_linspace_euler(steps: int) -> None:
    scheduler = EulerDiscreteScheduler.from_config(SCHEDULER_CONFIG, timestep_spacing="linspace")
    scheduler.set_timesteps(steps)
    # Equal where t is an integer (28 steps); diffusers interpolates σ, not log σ, in between.
    rtol = 5e-6 if steps == 28 else 1e-4  # diffusers' ᾱ is a float32 cumprod, ours float64
    np.testing.assert_allclose(
        SCHEDULE.get_sigmas(steps).numpy(), scheduler.sigmas.numpy(), rtol=rtol
    )


def test_karras_sigmas_match_diffusers() -> None:
    scheduler = EulerDiscreteScheduler.from_config(
        SCHEDULER_CONFIG, timestep_spacing="linspace", use_karras_sigmas=True
    )
    scheduler.set_timesteps(20)
    ours = SCHEDULE.get_sigmas_karras(20)
    np.testing.assert_allclose(ours.numpy(), scheduler.sigmas.numpy(), rtol=1e-5)
    assert ours[0] == pytest.approx(SCHEDULE.sigma_max) and ours[-2] == pytest.approx(
        0.0292, abs=1e-4
    )


def test_sigma_to_t_inverts_t_to_sigma() -> None:
    t = torch.tensor([999.0, 962.0, 500.5, 37.25, 0.0])
    torch.testing.assert_close(SCHEDULE.sigma_to_t(SCHEDULE.t_to_sigma(t)), t, atol=2e-3, rtol=0)


def test_downcast_alphas_cumprod_gives_a1111s_old_sigmas() -> None:
    old = NoiseSchedule.from_config(SCHEDULER_CONFIG, downcast=True)
    # shared/notes/a1111-nai.md §3.2 (5): σmax 14.6146 → 14.6123, σmin 0.02917 → 0.03127 (those
    # from fp16 ᾱ in fp32; k-diffusion computes σ from the fp16 buffer in fp16, within 0.1 %).
    assert SCHEDULE.sigma_max == pytest.approx(14.6146, abs=1e-4)
    assert SCHEDULE.sigma_min == pytest.approx(0.02917, abs=1e-5)
    assert old.sigma_max == pytest.approx(14.6123, rel=1e-3) and old.sigma_max != SCHEDULE.sigma_max
    assert old.sigma_min == pytest.approx(0.03127, rel=1e-3)
    sigmas = old.get_sigmas(28)
    assert sigmas.dtype == torch.float32 and sigmas[-2] == pytest.approx(0.03127, rel=2e-3)


def test_discard_penultimate_and_ddim_timesteps() -> None:
    dpm2 = sampler_sigmas(SAMPLERS["DPM2 a"], SCHEDULE, 10)
    full = SCHEDULE.get_sigmas(11)
    assert torch.equal(dpm2, torch.cat([full[:-2], full[-1:]])) and len(dpm2) == 11
    # A1111 DDIM: timesteps range(0, 1000, 1000 // steps) + 1, run from the top, len - 1 steps.
    assert ddim_timesteps(20).tolist() == list(range(1, 1000, 50))
    assert total_steps(SAMPLERS["DDIM"], 20) == 19 and total_steps(SAMPLERS["DDIM"], 28) == 28
    assert total_steps(SAMPLERS["Heun"], 20) == 20


def test_the_table_has_a1111s_names_and_aliases() -> None:
    required = ["Euler a", "Euler", "DPM++ 2M", "DPM++ 2M Karras", "DPM++ SDE Karras"]
    required += ["DPM++ 2S a", "DPM2 a", "Heun", "LMS", "DDIM"]
    assert set(required) <= set(SAMPLERS)
    assert canonical_sampler("k_euler_ancestral") == "Euler a"
    assert canonical_sampler("dpmpp_2m_karras") == "DPM++ 2M Karras"
    assert canonical_sampler("k_dpmpp_sde_ka") == "DPM++ SDE Karras"
    # A1111's `uses_ensd` rows: the ancestral samplers and DPM fast/adaptive (eta 1).
    assert {n for n, s in SAMPLERS.items() if s.uses_ensd} == {
        "Euler a", "DPM2 a", "DPM++ 2S a", "DPM2 a Karras", "DPM++ 2S a Karras",
        "DPM fast", "DPM adaptive",
    }  # fmt: skip
    with pytest.raises(InvalidRequest, match="Did you mean 'DPM\\+\\+ 2M'"):
        canonical_sampler("DPM++ 2N")


# --- CFG, the hook, and every sampler on an exact denoiser ------------------------------------


class OracleUNet:
    """A UNet that knows the clean latent x0: it returns the exact ε (or v) for its input."""

    def __init__(self, x0: torch.Tensor, schedule: NoiseSchedule) -> None:
        self.x0, self.schedule = x0, schedule
        self.calls: list[tuple[int, int, float]] = []  # (batch, context length, context value)

    def __call__(self, x_in: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        self.calls.append((x_in.shape[0], ctx.shape[1], float(ctx[0, 0, 0])))
        sigma = self.schedule.t_to_sigma(t).view(-1, 1, 1, 1).double()
        x = x_in.double() * (sigma**2 + 1) ** 0.5  # back to σ-scaled latents
        x0 = self.x0.double().repeat(x_in.shape[0] // self.x0.shape[0], 1, 1, 1)
        eps = (x - x0) / sigma
        if self.schedule.prediction_type == "v_prediction":
            alpha, sigma_vp = 1 / (sigma**2 + 1) ** 0.5, sigma / (sigma**2 + 1) ** 0.5
            return (alpha * eps - sigma_vp * x0).float()
        return eps.float()


def conditioning(cond_len: int = 77, uncond_len: int = 77, batch: int = 1) -> Any:
    cond, uncond = torch.ones(batch, cond_len, 32), torch.zeros(batch, uncond_len, 32)
    return lambda step: (cond, uncond)


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_every_sampler_lands_on_the_data_with_an_exact_denoiser(name: str, prediction: str) -> None:
    schedule = NoiseSchedule.from_config({**SCHEDULER_CONFIG, "prediction_type": prediction})
    x0 = torch.randn((2, *LATENT), generator=torch.Generator().manual_seed(0))
    model = CFGDenoiser(
        OracleUNet(x0, schedule), schedule, conditioning(batch=2), 7.0,
        dtype=torch.float32,
    )  # fmt: skip
    seen: list[tuple[int, torch.Tensor]] = []
    noise = torch.randn((2, *LATENT), generator=torch.Generator().manual_seed(1))
    ancestral = torch.Generator().manual_seed(2)
    out = sample(
        SAMPLERS[name], model, noise, 10,
        lambda s, sn: torch.randn((2, *LATENT), generator=ancestral),
        lambda i, x, denoised: seen.append((i, denoised)),
        seeds=[5, 6],
    )  # fmt: skip
    row = SAMPLERS[name]
    if row.function != "sample_dpm_adaptive":  # its tries depend on its error estimates
        assert [i for i, _ in seen] == list(range(total_steps(row, 10)))
    torch.testing.assert_close(seen[-1][1], x0, atol=1e-3, rtol=1e-3)
    if row.function in ("sample_dpm_fast", "sample_dpm_adaptive"):
        # k-diffusion's DPM-Solver stops at σ_min, its last noise still in (A1111's too).
        assert (out - x0).abs().max() < 6 * schedule.sigma_min
    elif row.schedule != "ddim":  # A1111's DDIM stops at t = 1, a hair above the data
        torch.testing.assert_close(out, x0, atol=1e-3, rtol=1e-3)


def test_cfg_is_on_the_denoised_prediction_in_one_batch() -> None:
    x = torch.randn((2, *LATENT))
    unet_calls: list[tuple[int, ...]] = []

    def unet(x_in: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        unet_calls.append(tuple(x_in.shape))
        return ctx.mean(dim=(1, 2)).view(-1, 1, 1, 1) + torch.zeros_like(x_in)  # ε = 1 or 0

    sigma = torch.tensor(2.0)
    model = CFGDenoiser(unet, SCHEDULE, conditioning(batch=2), 7.0, dtype=torch.float32)
    denoised = model(x, sigma)
    assert unet_calls == [(4, *LATENT)]  # cond and uncond together
    cond, uncond = x - sigma * 1.0, x - sigma * 0.0
    torch.testing.assert_close(denoised, uncond + (cond - uncond) * 7.0)
    # Different token lengths (a long prompt, a short negative): two UNet calls.
    unet_calls.clear()
    model = CFGDenoiser(unet, SCHEDULE, conditioning(154, 77, batch=2), 7.0, dtype=torch.float32)
    torch.testing.assert_close(model(x, sigma), denoised)
    assert unet_calls == [(2, *LATENT), (2, *LATENT)]


@pytest.mark.parametrize(("name", "asked"), [("Euler", [0, 1, 2, 3]), ("Heun", list(range(7)))])
def test_conditioning_is_asked_for_at_every_model_call(name: str, asked: list[int]) -> None:
    """Prompt editing: A1111 counts model calls (Heun makes two a step but one at the end)."""
    steps: list[int] = []
    a, b = torch.ones(1, 77, 32), torch.full((1, 77, 32), 2.0)

    def cond_at(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        steps.append(step)
        return (a if step < 2 else b), torch.zeros(1, 77, 32)

    unet = OracleUNet(torch.zeros(1, *LATENT), SCHEDULE)
    model = CFGDenoiser(unet, SCHEDULE, cond_at, 7.0, dtype=torch.float32)
    sample(SAMPLERS[name], model, torch.randn(1, *LATENT), 4, lambda s, n: s, lambda *a: None)
    assert steps == asked
    assert [value for _, _, value in unet.calls] == [1.0 if s < 2 else 2.0 for s in asked]


def test_brownian_noise_is_per_seed() -> None:
    x0 = torch.zeros(2, *LATENT)
    runs = []
    for seeds in ([5, 6], [5, 7]):
        model = CFGDenoiser(
            OracleUNet(x0, SCHEDULE), SCHEDULE, conditioning(batch=2), 1.0,
            dtype=torch.float32,
        )  # fmt: skip
        trace: list[torch.Tensor] = []
        noise = torch.randn((2, *LATENT), generator=torch.Generator().manual_seed(1))
        sample(
            SAMPLERS["DPM++ SDE Karras"], model, noise, 5, lambda s, n: s,
            lambda i, x, d, trace=trace: trace.append(x), seeds=seeds,
        )  # fmt: skip
        runs.append(trace[-2])
    assert torch.equal(runs[0][0], runs[1][0])  # same seed, same Brownian path
    assert not torch.equal(runs[0][1], runs[1][1])


# --- reference runs on the demo model ----------------------------------------------------------

pipeline_tests = pytest.mark.slow
STEPS, SCALE, SEEDS = 28, 7.5, [1234, 99]


def assert_latents_close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    """Equal to 1e-4 of the latents' scale (at least 1e-4).

    A random UNet (the demo model before it was trained) drove latents to about ±46 and
    amplified float rounding; a scale-relative bound holds for both.
    """
    torch.testing.assert_close(ours, ref, atol=1e-4 * max(1.0, float(ref.abs().max())), rtol=0)


BASE = GenerationRequest(
    prompt="1girl, silver hair, smile",
    negative_prompt="lowres, bad anatomy",
    width=64,
    height=64,
    num_inference_steps=STEPS,
    guidance_scale=SCALE,
    seed=SEEDS[0],
    rng="CPU",
    ensd=0,
)


def draw_latents(
    model: Any, monkeypatch: pytest.MonkeyPatch, requests: list[GenerationRequest]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[Any]]:
    """generate()'s final latents (what the VAE decodes), the (cond, uncond) it used, and its
    results. (Not the step callback's: that gets the denoised prediction, for previews, which
    only equals the final latents where the last step is an Euler step to σ = 0.)"""
    recorded: list[Any] = []
    encode = engine.generate.encode_conditioning

    def recording(*args: Any, **kwargs: Any) -> Any:
        recorded.append(encode(*args, **kwargs))
        return recorded[-1]

    monkeypatch.setattr(engine.generate, "encode_conditioning", recording)
    vae, latents = model.pipe.vae, []
    decode = vae.decode

    def decoding(z: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        latents.append(z * vae.config.scaling_factor)
        return decode(z, *args, **kwargs)

    monkeypatch.setattr(vae, "decode", decoding)
    results = generate(model, requests, limits=Limits())
    cond, uncond = recorded[0].at(0)
    return torch.cat(latents), cond, uncond, results  # the VAE decodes one image at a time


def diffusers_latents(
    model: Any, scheduler: Any, cond: torch.Tensor, uncond: torch.Tensor, latents: torch.Tensor,
    generator: Any = None, scale: float = SCALE, **kwargs: Any,
) -> torch.Tensor:  # fmt: skip
    pipe = model.pipe
    reference = StableDiffusionPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    reference.set_progress_bar_config(disable=True)
    out: torch.Tensor = reference(
        prompt_embeds=cond, negative_prompt_embeds=uncond, width=64, height=64,
        guidance_scale=scale, latents=latents, generator=generator, output_type="latent",
        **kwargs,
    ).images  # fmt: skip
    return out


def seed_noise(seed: int) -> tuple[torch.Tensor, torch.Generator]:
    """The seed's first (4, 8, 8) draw and its generator, moved on past that draw."""
    g = torch.Generator("cpu").manual_seed(seed)
    return torch.randn(LATENT, generator=g)[None], g


@pipeline_tests
def test_euler_a_matches_diffusers_with_ensd_0(demo_model: Any, monkeypatch: Any) -> None:
    ours, cond, uncond, _ = draw_latents(demo_model, monkeypatch, [BASE])
    noise, g = seed_noise(SEEDS[0])
    scheduler = EulerAncestralDiscreteScheduler.from_config(
        demo_model.scheduler_config, timestep_spacing="linspace"
    )
    ref = diffusers_latents(
        demo_model, scheduler, cond, uncond, noise, g, num_inference_steps=STEPS
    )
    assert ours.abs().max() > 0.1
    # Two torch threads round the UNet's matmuls differently from one: 1e-4 of the scale.
    assert_latents_close(ours, ref)


@pipeline_tests
@pytest.mark.parametrize(
    ("sampler", "scheduler_class", "options"),
    [
        ("Euler", EulerDiscreteScheduler, {}),
        ("Heun", HeunDiscreteScheduler, {}),
        ("LMS", LMSDiscreteScheduler, {}),
        (
            "DPM++ 2M",
            DPMSolverMultistepScheduler,
            {"algorithm_type": "dpmsolver++", "solver_order": 2, "final_sigmas_type": "zero"},
        ),
    ],
)
def test_deterministic_samplers_match_diffusers(
    demo_model: Any, monkeypatch: Any, sampler: str, scheduler_class: Any, options: Any
) -> None:
    # CFG 3: at 7.5 a random UNet turned float rounding into 1e-3 of Heun's result.
    request = dataclasses.replace(BASE, sampler=sampler, guidance_scale=3.0)
    ours, cond, uncond, _ = draw_latents(demo_model, monkeypatch, [request])
    noise, _ = seed_noise(SEEDS[0])
    scheduler = scheduler_class.from_config(
        demo_model.scheduler_config, timestep_spacing="linspace", **options
    )
    kwargs: dict[str, Any] = {"num_inference_steps": STEPS}
    if sampler == "DPM++ 2M":
        # DPM-Solver works on VP latents: start from σ_max·noise / sqrt(σ_max² + 1), k-diffusion's
        # starting point, on k-diffusion's 28 timesteps (999, 962, … 0, all integers).
        sigma_max = SCHEDULE.sigma_max
        noise = noise * sigma_max / (sigma_max**2 + 1) ** 0.5
        kwargs = {"timesteps": [999 - 37 * k for k in range(STEPS)]}
    ref = diffusers_latents(demo_model, scheduler, cond, uncond, noise, scale=3.0, **kwargs)
    assert_latents_close(ours, ref)


def reference_euler_a(
    model: Any, cond: torch.Tensor, uncond: torch.Tensor, seeds: list[int], ensd: int
) -> torch.Tensor:
    """A1111 "Euler a" written out from shared/notes/a1111-nai.md §3.2–3.3, batch and all."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0).float()
    log_sigmas = (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).log()
    timesteps = torch.linspace(999, 0, STEPS)  # 999 - 37k: whole numbers
    sigmas = torch.cat([log_sigmas[timesteps.long()].exp(), torch.zeros(1)])
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    x = torch.stack([torch.randn(LATENT, generator=g) for g in generators]) * sigmas[0]
    if ensd:
        generators = [torch.Generator("cpu").manual_seed(seed + ensd) for seed in seeds]
    with torch.inference_mode():
        for i in range(STEPS):
            s, s_next = sigmas[i], sigmas[i + 1]
            x_in = torch.cat([x, x]) * (1 / (s**2 + 1) ** 0.5)
            t = timesteps[i].repeat(2 * len(seeds))
            eps = model.pipe.unet(x_in, t, encoder_hidden_states=torch.cat([cond, uncond])).sample
            eps_cond, eps_uncond = eps.chunk(2)
            d_cond, d_uncond = x - s * eps_cond, x - s * eps_uncond
            denoised = d_uncond + (d_cond - d_uncond) * SCALE
            s_up = min(s_next, (s_next**2 * (s**2 - s_next**2) / s**2) ** 0.5)
            s_down = (s_next**2 - s_up**2) ** 0.5
            x = x + (x - denoised) / s * (s_down - s)
            if s_next > 0:
                x = x + torch.stack([torch.randn(LATENT, generator=g) for g in generators]) * s_up
    return x


@pipeline_tests
def test_euler_a_with_ensd_31337_follows_a1111s_rule(demo_model: Any, monkeypatch: Any) -> None:
    requests = [dataclasses.replace(BASE, ensd=31337, batch_size=2)]
    ours, cond, uncond, results = draw_latents(demo_model, monkeypatch, requests)
    assert [r.seed for r in results] == [1234, 1235]
    assert "ENSD: 31337" in results[0].infotext and "RNG: CPU" in results[0].infotext
    ref = reference_euler_a(demo_model, cond, uncond, [1234, 1235], 31337)
    assert_latents_close(ours, ref)
    plain = reference_euler_a(demo_model, cond, uncond, [1234, 1235], 0)
    assert (ours - plain).abs().max() > 0.05  # ENSD changes the image


@pipeline_tests
@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ SDE Karras", "DPM++ 2S a", "DDIM"])
def test_images_do_not_depend_on_batch_mates(demo_model: Any, sampler: str) -> None:
    request = dataclasses.replace(
        BASE, sampler=sampler, num_inference_steps=8, rng="NV", ensd=31337
    )
    other = dataclasses.replace(request, prompt="1boy, frown", seed=77, ensd=0, rng="CPU")
    together = generate(demo_model, [request, other], limits=Limits())
    for req, result in zip([request, other], together, strict=True):
        solo = generate(demo_model, [req], limits=Limits())[0]
        assert np.abs(png_pixels(solo.png) - png_pixels(result.png)).max() <= 1


@pipeline_tests
def test_variation_seeds_in_a_batch(demo_model: Any) -> None:
    request = dataclasses.replace(
        BASE, num_inference_steps=6, batch_size=2, subseed=500, subseed_strength=0.3
    )
    results = generate(demo_model, [request], limits=Limits())
    # A1111: with a variation strength every image keeps the seed; subseeds count up.
    assert [r.seed for r in results] == [1234, 1234]
    assert "Variation seed: 500, Variation seed strength: 0.3" in results[0].infotext
    assert "Variation seed: 501," in results[1].infotext
    assert np.abs(png_pixels(results[0].png) - png_pixels(results[1].png)).max() > 0
    random_sub = generate(
        demo_model, [dataclasses.replace(request, subseed=None, batch_size=1)], limits=Limits()
    )[0]
    assert random_sub.request.subseed is not None
    assert f"Variation seed: {random_sub.request.subseed}," in random_sub.infotext


@pipeline_tests
def test_downcast_alphas_cumprod_changes_the_image(demo_model: Any) -> None:
    request = dataclasses.replace(BASE, num_inference_steps=6)
    plain = generate(demo_model, [request], limits=Limits())[0]
    old = generate(
        demo_model, [dataclasses.replace(request, downcast_alphas_cumprod=True)], limits=Limits()
    )[0]
    assert "Downcast alphas_cumprod: True" in old.infotext
    assert "Downcast" not in plain.infotext
    assert np.abs(png_pixels(old.png) - png_pixels(plain.png)).max() > 0
