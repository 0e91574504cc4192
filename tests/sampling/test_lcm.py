"""LCM (A1111 v1.9.4 `sd_samplers_lcm`): its table, sigmas, boundary condition and loop against a
reference written here from A1111's `LCMCompVisDenoiser` and `sample_lcm`, against diffusers'
LCMScheduler where the two agree, per-image noise and prompt editing on the demo model, and the
infotext round trip."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch

import engine.generate
from engine.demo.model import SCHEDULER_CONFIG
from engine.generate import generate
from engine.infotext import request_from_infotext
from engine.request import GenerationRequest, Limits, RngSource
from engine.sampling.denoiser import CFGDenoiser, NoiseSchedule
from engine.sampling.lcm import LCMDenoiser, LCMSchedule, boundary_scalings, sample_lcm
from engine.sampling.loop import (
    LOOPS,
    denoiser_class,
    make_scheduler,
    sample,
    sample_img2img,
    sampler_sigmas,
)
from engine.sampling.samplers import SAMPLERS, canonical_sampler, infotext_sampler, run_row
from engine.sampling.seeds import ImageRNG, NoiseSpec
from engine.sampling.steps import planned_steps, total_steps
from tests.conftest import png_pixels

SCHEDULE = NoiseSchedule.from_config(SCHEDULER_CONFIG)
LATENT = (4, 8, 8)


def unet(x_in: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
    """A smooth stand-in for the UNet's ε, per image, reading its timestep and its context."""
    scale = 1 + t.float().view(-1, 1, 1, 1) / 1000
    return torch.tanh(x_in * scale + ctx.mean(dim=(1, 2)).view(-1, 1, 1, 1))


def append_dims(x: torch.Tensor, ndim: int) -> torch.Tensor:
    return x[(...,) + (None,) * (ndim - x.ndim)]


class A1111LCM:
    """A1111 v1.9.4 `LCMCompVisDenoiser` on k-diffusion ab527a9's `DiscreteEpsDDPMDenoiser` and
    `DiscreteSchedule`, transcribed step by step (`unet` stands for `apply_model`)."""

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        timesteps, original_timesteps = 1000, 50
        self.skip_steps = timesteps // original_timesteps
        valid = torch.zeros(original_timesteps, dtype=torch.float32)
        for x in range(original_timesteps):
            valid[original_timesteps - 1 - x] = alphas_cumprod[timesteps - 1 - x * self.skip_steps]
        self.sigmas = ((1 - valid) / valid) ** 0.5  # DiscreteEpsDDPMDenoiser.__init__
        self.log_sigmas = self.sigmas.log()
        self.sigma_data = 1.0

    def get_sigmas(self, n: int) -> torch.Tensor:
        start = self.sigma_to_t(self.sigmas[-1])
        end = self.sigma_to_t(self.sigmas[0])
        t = torch.linspace(start, end, n)  # type: ignore[arg-type]
        return torch.cat([self.t_to_sigma(t), torch.zeros(1)])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape) * self.skip_steps + (self.skip_steps - 1)

    def t_to_sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        t = torch.clamp(
            ((timestep - (self.skip_steps - 1)) / self.skip_steps).float(),
            min=0,
            max=(len(self.sigmas) - 1),
        )
        t = t.float()  # DiscreteSchedule.t_to_sigma
        low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]
        return log_sigma.exp()

    def get_scaled_out(
        self, sigma: torch.Tensor, output: torch.Tensor, input: torch.Tensor
    ) -> torch.Tensor:
        sigma_data = 0.5
        scaled_timestep = append_dims(self.sigma_to_t(sigma), output.ndim) * 10.0
        c_skip = sigma_data**2 / (scaled_timestep**2 + sigma_data**2)
        c_out = scaled_timestep / (scaled_timestep**2 + sigma_data**2) ** 0.5
        return c_out * output + c_skip * input

    def forward(self, input: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        c_out = append_dims(-sigma, input.ndim)  # DiscreteEpsDDPMDenoiser.get_scalings
        c_in = append_dims(1 / (sigma**2 + self.sigma_data**2) ** 0.5, input.ndim)
        eps = unet(input * c_in, self.sigma_to_t(sigma), cond)
        return self.get_scaled_out(sigma, input + eps * c_out, input)


def a1111_cfg(lcm: A1111LCM, scale: float, cond: torch.Tensor, uncond: torch.Tensor) -> Any:
    """A1111 `CFGDenoiser.forward` for plain prompts of equal length: cond and uncond in one
    batch, then `combine_denoised`."""

    def model(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        x_in, sigma_in = torch.cat([x, x]), torch.cat([sigma, sigma])
        x_out = lcm.forward(x_in, sigma_in, torch.cat([cond, uncond]))
        denoised_uncond = x_out[-uncond.shape[0] :]
        denoised = torch.clone(denoised_uncond)
        for i in range(x.shape[0]):
            denoised[i] += (x_out[i] - denoised_uncond[i]) * (1.0 * scale)
        return denoised

    return model


def a1111_sample_lcm(model: Any, x: torch.Tensor, sigmas: torch.Tensor, randn_like: Any) -> Any:
    """A1111 `sample_lcm` (`randn_like`: its hijacked `torch.randn_like`, the images' RNG)."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        x = denoised
        if sigmas[i + 1] > 0:
            x += sigmas[i + 1] * randn_like(x)
    return x


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """k-diffusion `get_sigmas_karras`, as A1111's "Karras" schedule type calls it."""
    ramp = torch.linspace(0, 1, n)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def contexts(batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    return torch.randn(batch, 77, 32, generator=g), torch.randn(batch, 77, 32, generator=g)


def draws(n: int, batch: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randn((batch, *LATENT), generator=g) for _ in range(n)]


# --- A1111's table, sigmas, boundary condition and loop ---------------------------------------


def test_the_row_is_a1111s() -> None:
    row = SAMPLERS["LCM"]
    assert canonical_sampler("k_lcm") == "LCM" and LOOPS[row.function or ""] is sample_lcm
    # No 'scheduler' option: "Automatic" is LCM's own get_sigmas, which "Uniform" calls too.
    assert run_row("LCM", "Automatic") == run_row("LCM", "Uniform") == row
    assert row.schedule == "uniform" and row.conditioning_steps == 1
    # Its noise is the images' generators' (ENSD too), yet A1111 writes no ENSD.
    assert row.noise == "ancestral" and not row.uses_ensd
    assert denoiser_class(row) is LCMDenoiser and denoiser_class(SAMPLERS["Euler a"]) is CFGDenoiser
    assert infotext_sampler("LCM", None) == infotext_sampler("k_lcm", "Automatic")
    assert infotext_sampler("LCM", None) == ("LCM", "Automatic")
    assert total_steps(row, 6) == 6


@pytest.mark.parametrize("downcast", [False, True])
def test_the_table_is_a1111s(downcast: bool) -> None:
    schedule = NoiseSchedule.from_config(SCHEDULER_CONFIG, downcast=downcast)
    ours, ref = LCMSchedule.of(schedule), A1111LCM(schedule.alphas_cumprod)
    assert ours.sigmas.dtype == torch.float32 and torch.equal(ours.sigmas, ref.sigmas)
    assert (ours.sigma_min, ours.sigma_max) == (ref.sigmas[0].item(), ref.sigmas[-1].item())
    assert torch.equal(ours.sigma_to_t(ours.sigmas), torch.arange(19, 1000, 20))
    t = torch.tensor([999.0, 672.5, 30.0, 19.0, 3.0])
    assert torch.equal(ours.t_to_sigma(t), ref.t_to_sigma(t))
    assert LCMSchedule.of(ours) is ours and type(ours.to(torch.device("cpu"))) is LCMSchedule


@pytest.mark.parametrize("schedule_type", ["Automatic", "Karras", "Exponential", "SGM Uniform"])
@pytest.mark.parametrize("steps", [1, 2, 4, 7, 8, 30])
def test_sigmas_are_a1111s(schedule_type: str, steps: int) -> None:
    ref = A1111LCM(SCHEDULE.alphas_cumprod)
    ours = sampler_sigmas(run_row("LCM", schedule_type), LCMSchedule.of(SCHEDULE), steps)
    # A1111's get_sigmas: other schedule types get the model wrapper's σ range, LCM's table's.
    sigma_min, sigma_max = ref.sigmas[0].item(), ref.sigmas[-1].item()
    if schedule_type == "Automatic":
        expected = ref.get_sigmas(steps)
    elif schedule_type == "Karras":
        expected = karras(steps, sigma_min, sigma_max)
    elif schedule_type == "Exponential":
        expected = torch.linspace(np.log(sigma_max), np.log(sigma_min), steps).exp()
        expected = torch.cat([expected, torch.zeros(1)])
    else:  # A1111 `sgm_uniform` over the inner model (need_inner_model)
        start = ref.sigma_to_t(torch.tensor(sigma_max))
        end = ref.sigma_to_t(torch.tensor(sigma_min))
        sigs = [ref.t_to_sigma(ts) for ts in torch.linspace(start, end, steps + 1)[:-1]]  # type: ignore[arg-type]
        expected = torch.FloatTensor([*sigs, 0.0])
    assert torch.equal(ours, expected)
    # σ_max itself, or exp(log σ_max) where the timestep went back to σ.
    assert float(ours[0]) == pytest.approx(sigma_max, rel=1e-6) and ours[-1] == 0


def test_automatic_ends_on_the_last_table_timestep() -> None:
    lcm = LCMSchedule.of(SCHEDULE)
    sigmas = sampler_sigmas(SAMPLERS["LCM"], lcm, 8)
    # Table indices 49 - 7k: t = 999 - 140k, every one of them on the table.
    assert lcm.sigma_to_t(sigmas[:-1]).tolist() == [999 - 140 * k for k in range(8)]
    on_table = lcm.sigmas[[49 - 7 * k for k in range(8)]]
    torch.testing.assert_close(sigmas[:-1], on_table, rtol=1e-6, atol=0)  # exp(log σ)
    four = sampler_sigmas(SAMPLERS["LCM"], lcm, 4)
    assert lcm.sigma_to_t(four[:-1]).tolist() == [999, 679, 339, 19]  # indices 49, 32⅔, …
    assert four[1] not in lcm.sigmas  # interpolated: the UNet is given the nearest timestep


@pytest.mark.parametrize("downcast", [False, True])
@pytest.mark.parametrize("scale", [1.0, 7.5])
def test_the_denoiser_is_a1111s(downcast: bool, scale: float) -> None:
    schedule = NoiseSchedule.from_config(SCHEDULER_CONFIG, downcast=downcast)
    cond, uncond = contexts(2)
    ours = LCMDenoiser(unet, schedule, lambda step: (cond, uncond), scale, dtype=torch.float32)
    assert isinstance(ours.schedule, LCMSchedule)
    ref = a1111_cfg(A1111LCM(schedule.alphas_cumprod), scale, cond, uncond)
    x = torch.randn((2, *LATENT), generator=torch.Generator().manual_seed(1))
    lcm = LCMSchedule.of(schedule)
    sigmas = [*lcm.get_sigmas(7)[:-1], *lcm.get_sigmas_karras(5)[:-1], lcm.sigmas[0]]
    for sigma in sigmas:
        expected = ref(x * sigma, sigma * x.new_ones([2]))
        assert torch.equal(ours(x * sigma, sigma), expected)


def test_the_boundary_condition_matters() -> None:
    """At t = 19 the consistency scalings are (7e-6, 0.999997): tiny, but in every step."""
    cond, uncond = contexts()
    plain = CFGDenoiser(unet, LCMSchedule.of(SCHEDULE), lambda s: (cond, uncond), 7.5,
                        dtype=torch.float32)  # fmt: skip
    lcm = LCMDenoiser(unet, SCHEDULE, lambda s: (cond, uncond), 7.5, dtype=torch.float32)
    x, sigma = torch.randn((1, *LATENT)), LCMSchedule.of(SCHEDULE).sigmas[0]
    c_skip, c_out = boundary_scalings(torch.tensor(19))
    torch.testing.assert_close(lcm(x, sigma), c_out * plain(x, sigma) + c_skip * x)
    assert not torch.equal(lcm(x, sigma), plain(x, sigma))


@pytest.mark.parametrize(("schedule_type", "steps"), [("Automatic", 4), ("Automatic", 7),
                                                       ("Karras", 6)])  # fmt: skip
def test_the_loop_is_a1111s(schedule_type: str, steps: int) -> None:
    cond, uncond = contexts(2)
    row = run_row("LCM", schedule_type)
    model = denoiser_class(row)(unet, SCHEDULE, lambda s: (cond, uncond), 5.0, dtype=torch.float32)
    first = torch.randn((2, *LATENT), generator=torch.Generator().manual_seed(1))
    mine, theirs = iter(draws(steps, 2)), iter(draws(steps, 2))
    asked: list[tuple[float, float]] = []

    def noise(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        asked.append((float(sigma), float(sigma_next)))
        return next(mine)

    calls: list[int] = []
    ours = sample(row, model, first, steps, noise, lambda i, x, d: calls.append(i))
    ref_model = a1111_cfg(A1111LCM(SCHEDULE.alphas_cumprod), 5.0, cond, uncond)
    sigmas = sampler_sigmas(row, LCMSchedule.of(SCHEDULE), steps)
    ref = a1111_sample_lcm(ref_model, first * sigmas[0], sigmas, lambda x: next(theirs))
    assert torch.equal(ours, ref)
    assert calls == list(range(steps)) and len(asked) == steps - 1  # none after the last step


def test_img2img_enters_the_cut_schedule() -> None:
    cond, uncond = contexts()
    model = LCMDenoiser(unet, SCHEDULE, lambda s: (cond, uncond), 5.0, dtype=torch.float32)
    init, first = torch.randn((2, 1, *LATENT), generator=torch.Generator().manual_seed(1))
    mine, theirs = iter(draws(8)), iter(draws(8))
    calls: list[int] = []
    ours = sample_img2img(SAMPLERS["LCM"], model, init, first, 8, 0.5, lambda s, n: next(mine),
                          lambda i, x, d: calls.append(i))  # fmt: skip
    # A1111 `sample_img2img`: t_enc = 4, sigmas[8 - 4 - 1:], x = init + noise·σ there.
    sigmas = A1111LCM(SCHEDULE.alphas_cumprod).get_sigmas(8)[3:]
    ref_model = a1111_cfg(A1111LCM(SCHEDULE.alphas_cumprod), 5.0, cond, uncond)
    ref = a1111_sample_lcm(ref_model, init + first * sigmas[0], sigmas, lambda x: next(theirs))
    assert torch.equal(ours, ref) and calls == list(range(5))


# --- diffusers' LCMScheduler ------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 50])
def test_timesteps_match_diffusers_where_they_pick_the_same(steps: int) -> None:
    # diffusers takes floor(linspace(0, 50, n, endpoint=False)) of the reversed table and ends
    # above t = 19 (4 steps: 999, 759, 499, 259); A1111 spreads the table index evenly from 49 to
    # 0 and rounds to the nearest entry, always ending at 19 (999, 679, 339, 19). They agree at 1
    # step and at all 50.
    scheduler = make_scheduler("LCM", SCHEDULER_CONFIG)
    scheduler.set_timesteps(steps)
    lcm = LCMSchedule.of(SCHEDULE)
    ours = lcm.sigma_to_t(sampler_sigmas(SAMPLERS["LCM"], lcm, steps)[:-1])
    assert torch.equal(ours, scheduler.timesteps)


def test_boundary_scalings_match_diffusers() -> None:
    scheduler = make_scheduler("LCM", SCHEDULER_CONFIG)
    for t in range(19, 1000, 20):
        c_skip, c_out = boundary_scalings(torch.tensor(t))
        expected = scheduler.get_scalings_for_boundary_condition_discrete(t)
        np.testing.assert_allclose([float(c_skip), float(c_out)], expected, rtol=1e-6)


@pytest.mark.parametrize("steps", [2, 8])
def test_the_loop_matches_diffusers_on_whole_table_timesteps(steps: int) -> None:
    """With A1111's timesteps given to diffusers (2 and 8 steps land on table entries: A1111's
    σ_next is then the table's σ that diffusers noises to) and A1111's start, σ_max·noise,
    which is √ᾱ·σ_max·noise = 0.9977·noise in diffusers' VP latents, not diffusers' unit noise.

    Still not bit-equal: A1111 applies the boundary condition to the σ-scaled latents
    x_t/√ᾱ, diffusers (and Luo et al.) to x_t; that differs by c_skip·x·(1 - √ᾱ), c_skip below
    7e-6 at every LCM timestep. And A1111 makes x̂₀ as x - σ·ε, diffusers as (x_t - √(1-ᾱ)·ε)/√ᾱ.
    """
    lcm = LCMSchedule.of(SCHEDULE)
    sigmas = sampler_sigmas(SAMPLERS["LCM"], lcm, steps)
    ctx = contexts()[0]
    model = LCMDenoiser(unet, SCHEDULE, lambda s: (ctx, ctx), 1.0, dtype=torch.float32)
    first = torch.randn((1, *LATENT), generator=torch.Generator().manual_seed(1))
    mine, theirs = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)

    def noise(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        return torch.randn((1, *LATENT), generator=mine)  # diffusers' draw (`randn_tensor`)

    ours = sample_lcm(model, first * sigmas[0], sigmas, noise, lambda *a: None)

    scheduler = make_scheduler("LCM", SCHEDULER_CONFIG)
    scheduler.set_timesteps(timesteps=lcm.sigma_to_t(sigmas[:-1]).tolist())
    sigma_max = sigmas[0]
    x = first * sigma_max / (sigma_max**2 + 1) ** 0.5
    for t in scheduler.timesteps:
        eps = unet(x, t.repeat(1), ctx)
        x = scheduler.step(eps, t, x, generator=theirs).prev_sample
    assert ours.abs().max() > 0.1
    # Two float32 ulps at |x| ≈ 30 (without the boundary condition: 1e-4).
    torch.testing.assert_close(ours, x, atol=2e-5, rtol=0)


# --- per-image noise, prompt editing and the infotext, on the demo model ----------------------


def run(seeds: list[int], ensd: int = 0) -> torch.Tensor:
    cond, uncond = (c.repeat(len(seeds), 1, 1) for c in contexts())
    model = LCMDenoiser(unet, SCHEDULE, lambda s: (cond, uncond), 3.0, dtype=torch.float32)
    rng = ImageRNG(LATENT, [NoiseSpec(seed=s, ensd=ensd) for s in seeds], torch.device("cpu"))
    first = rng.first()
    return sample(SAMPLERS["LCM"], model, first, 6, lambda s, n: rng.next(), lambda *a: None)


def test_each_image_gets_its_own_noise_ensd_too() -> None:
    together = run([5, 9])
    for i, seed in enumerate([5, 9]):
        torch.testing.assert_close(together[i : i + 1], run([seed])[:1], atol=1e-6, rtol=0)
    assert not torch.equal(run([5, 9], ensd=31337), together)


pipeline_tests = pytest.mark.slow
BASE = GenerationRequest(
    prompt="[cat:dog:0.5], 1girl",
    negative_prompt="lowres",
    width=64,
    height=64,
    num_inference_steps=4,
    guidance_scale=2.0,
    seed=1234,
    sampler="LCM",
    schedule_type="Automatic",
)


def spy(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Record the denoiser generate() builds and the steps prompt editing is asked for."""
    seen: dict[str, Any] = {"models": [], "asked": []}
    real_sample, real_img2img = engine.generate.sample, engine.generate.sample_img2img
    encode = engine.generate.encode_conditioning

    def sampling(row: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
        seen["models"].append(model)
        return real_sample(row, model, *args, **kwargs)

    def sampling_img2img(row: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
        seen["models"].append(model)
        return real_img2img(row, model, *args, **kwargs)

    def encoding(*args: Any, **kwargs: Any) -> Any:
        seen["steps"] = kwargs["steps"]
        conditioning = encode(*args, **kwargs)
        at = conditioning.at

        def asked(step: int, images: Any = None) -> Any:
            seen["asked"].append(step)
            return at(step, images)

        object.__setattr__(conditioning, "at", asked)
        return conditioning

    monkeypatch.setattr(engine.generate, "sample", sampling)
    monkeypatch.setattr(engine.generate, "sample_img2img", sampling_img2img)
    monkeypatch.setattr(engine.generate, "encode_conditioning", encoding)
    return seen


@pipeline_tests
@pytest.mark.parametrize("rng", ["CPU", "NV"])
def test_a_batch_draws_each_image_as_alone(
    demo_model: Any, monkeypatch: pytest.MonkeyPatch, rng: RngSource
) -> None:
    seen = spy(monkeypatch)
    request = dataclasses.replace(BASE, rng=rng, batch_size=2)
    progress: list[tuple[int, int]] = []
    together = generate(demo_model, [request], limits=Limits(),
                        on_step=lambda done, total, x: progress.append((done, total)))  # fmt: skip
    assert [r.seed for r in together] == [1234, 1235]
    # LCM's own wrapper, its timesteps, and the prompt switched halfway through its 4 steps.
    assert all(type(m) is LCMDenoiser for m in seen["models"])
    assert seen["steps"] == 4 and seen["asked"] == [0, 1, 2, 3]
    total = planned_steps(together[0].request)
    assert progress == [(i + 1, total) for i in range(total)] and total == 4
    alone = [
        generate(demo_model, [dataclasses.replace(request, seed=s, batch_size=1)],
                 limits=Limits())[0]
        for s in (1234, 1235)
    ]  # fmt: skip
    for one, result in zip(alone, together, strict=True):
        assert np.abs(png_pixels(one.png) - png_pixels(result.png)).max() <= 1
    assert np.abs(png_pixels(alone[0].png) - png_pixels(alone[1].png)).max() > 8


@pipeline_tests
def test_img2img_runs_the_cut_schedule(
    demo_model: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from PIL import Image

    path = tmp_path / "init.png"
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    seen = spy(monkeypatch)
    request = dataclasses.replace(BASE, init_image=str(path), denoising_strength=0.5,
                                  num_inference_steps=6)  # fmt: skip
    progress: list[int] = []
    result = generate(demo_model, [request], limits=Limits(),
                      on_step=lambda done, total, x: progress.append(done))  # fmt: skip
    assert type(seen["models"][0]) is LCMDenoiser
    # t_enc = int(0.5 · 6) = 3: the last 4 steps of the 6-step schedule.
    assert planned_steps(result[0].request) == 4 and progress == [1, 2, 3, 4]


@pipeline_tests
def test_a_pasted_infotext_draws_the_same_picture(demo_model: Any) -> None:
    first = generate(demo_model, [dataclasses.replace(BASE, rng="CPU")], limits=Limits())[0]
    text = first.infotext
    assert "Sampler: LCM, Schedule type: Automatic, CFG scale: 2," in text
    # Drawn with the defaults' ENSD, which A1111 does not write for LCM: pasted, the ENSD is
    # left to the defaults again (as A1111's paste leaves its setting), not read as 0.
    assert "ENSD" not in text and "RNG: CPU" in text and first.request.ensd == 31337
    pasted = request_from_infotext(text, model=first.request.model)
    again = generate(demo_model, [pasted], limits=Limits())[0]
    assert again.request == first.request
    assert np.array_equal(png_pixels(again.png), png_pixels(first.png))
