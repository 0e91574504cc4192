"""generate() on the tiny demo model: determinism, seeds, infotext, batching, limits, cancel."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from PIL import Image

from engine.device import DeviceOptions
from engine.errors import GenerationFailed, InvalidRequest, JobCancelled
from engine.generate import SEED_LIMIT, generate
from engine.models import ModelRegistry
from engine.request import GenerationRequest, Limits
from engine.sampling.samplers import SAMPLERS, infotext_sampler
from tests.conftest import png_pixels

pytestmark = pytest.mark.slow
LIMITS = Limits()
BASE = GenerationRequest(
    prompt="1girl, silver hair, smile",
    negative_prompt="lowres, bad anatomy",
    width=64,
    height=64,
    num_inference_steps=4,
    seed=1234,
)


def draw(model, **changes):  # type: ignore[no-untyped-def]
    return generate(model, [dataclasses.replace(BASE, **changes)], limits=LIMITS)


def test_same_request_and_seed_give_identical_png(demo_model) -> None:  # type: ignore[no-untyped-def]
    assert draw(demo_model)[0].png == draw(demo_model)[0].png


def test_different_seeds_give_different_images(demo_model) -> None:  # type: ignore[no-untyped-def]
    a, b = png_pixels(draw(demo_model)[0].png), png_pixels(draw(demo_model, seed=1235)[0].png)
    assert np.abs(a - b).mean() > 2


def test_prompt_and_clip_skip_change_the_image(demo_model) -> None:  # type: ignore[no-untyped-def]
    base = png_pixels(draw(demo_model)[0].png)
    assert np.abs(base - png_pixels(draw(demo_model, prompt="1boy, frown")[0].png)).max() > 0
    assert np.abs(base - png_pixels(draw(demo_model, clip_skip=1)[0].png)).max() > 0


def test_png_carries_a1111_infotext(demo_model) -> None:  # type: ignore[no-untyped-def]
    result = draw(demo_model, guidance_scale=7.5)[0]
    image = Image.open(io.BytesIO(result.png))
    assert image.size == (64, 64)
    text = image.info["parameters"]
    assert text == result.infotext
    assert text == (
        "1girl, silver hair, smile\n"
        "Negative prompt: lowres, bad anatomy\n"
        "Steps: 4, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.5, Seed: 1234, "
        "Size: 64x64, "
        f"Model hash: {demo_model.hash}, Model: aidraw-demo, Clip skip: 2, ENSD: 31337, "
        "RNG: NV, Version: aidraw 0.1.0"
    )
    assert len(demo_model.hash) == 10


def test_cjk_prompt_survives_the_png(demo_model) -> None:  # type: ignore[no-untyped-def]
    result = draw(demo_model, prompt="初音ミク, smile")[0]
    assert Image.open(io.BytesIO(result.png)).info["parameters"].startswith("初音ミク, smile\n")


def test_random_seed_is_drawn_and_reported(demo_model) -> None:  # type: ignore[no-untyped-def]
    first, second = draw(demo_model, seed=None)[0], draw(demo_model, seed=None)[0]
    assert 0 <= first.seed < SEED_LIMIT and first.seed != second.seed
    assert f"Seed: {first.seed}," in first.infotext
    # The reported seed reproduces the image.
    assert draw(demo_model, seed=first.seed)[0].png == first.png


def test_model_defaults_fill_what_the_request_leaves_out(demo_model) -> None:  # type: ignore[no-untyped-def]
    request = GenerationRequest(prompt="cat", seed=1, num_inference_steps=2)
    result = generate(demo_model, [request], limits=LIMITS)[0]
    # The demo model's own models/aidraw-demo.toml says 128x128; settings say 11 / Euler a.
    assert (result.request.width, result.request.height) == (128, 128)
    assert result.request.guidance_scale == 11.0 and result.request.sampler == "Euler a"
    assert Image.open(io.BytesIO(result.png)).size == (128, 128)


def test_batch_images_equal_their_solo_runs(demo_model) -> None:  # type: ignore[no-untyped-def]
    batch = draw(demo_model, batch_size=2)
    assert [r.seed for r in batch] == [1234, 1235]
    for result in batch:
        solo = draw(demo_model, seed=result.seed)[0]
        assert np.abs(png_pixels(solo.png) - png_pixels(result.png)).max() <= 1


def test_requests_batched_together_do_not_affect_each_other(demo_model) -> None:  # type: ignore[no-untyped-def]
    other = dataclasses.replace(BASE, prompt="1boy, frown", negative_prompt="", seed=99)
    together = generate(demo_model, [BASE, other], limits=LIMITS)
    assert [r.request.prompt for r in together] == [BASE.prompt, other.prompt]
    for request, result in zip([BASE, other], together, strict=True):
        solo = generate(demo_model, [request], limits=LIMITS)[0]
        assert np.abs(png_pixels(solo.png) - png_pixels(result.png)).max() <= 1


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_draws(demo_model, sampler: str) -> None:  # type: ignore[no-untyped-def]
    result = draw(demo_model, sampler=sampler)[0]
    name, label = infotext_sampler(sampler, None)  # v1.9 writes "DPM++ 2M Karras" in two
    assert f"Sampler: {name}, Schedule type: {label}," in result.infotext
    assert png_pixels(result.png).std() > 0


def test_sampler_names_are_read_loosely(demo_model) -> None:  # type: ignore[no-untyped-def]
    assert draw(demo_model, sampler="dpmpp_2m_karras")[0].request.sampler == "DPM++ 2M Karras"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"width": 4096, "height": 4096}, r"width 4096 is not allowed: .* 64 to 2048"),
        ({"width": 2048, "height": 2048}, r"2048x2048 is too large: at most 1,048,576 pixels"),
        ({"width": 100}, r"width 100 is not allowed: use a multiple of 8"),
        ({"num_inference_steps": 0}, r"steps 0 is not allowed: use 1 to 150"),
        ({"num_inference_steps": -3}, r"steps -3 is not allowed"),
        ({"num_inference_steps": 151}, r"steps 151 is not allowed"),
        ({"guidance_scale": 0.5}, r"CFG scale 0.5 is not allowed: use 1 to 30"),
        ({"batch_size": 5}, r"count 5 is not allowed: use 1 to 4"),
        ({"seed": 2**32}, r"seed 4294967296 is not allowed"),
        ({"sampler": "Eulerr a"}, r"Unknown sampler 'Eulerr a'. Did you mean 'Euler a'"),
        ({"clip_skip": 5}, r"clip skip 5 is not allowed for aidraw-demo: use 1 to 3"),
        ({"prompt": "x" * 4001}, r"prompt is 4001 characters long: at most 4000"),
    ],
)
def test_bad_requests_get_a_clear_error(demo_model, changes, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidRequest, match=message):
        draw(demo_model, **changes)


def test_progress_is_reported_every_step(demo_model) -> None:  # type: ignore[no-untyped-def]
    seen: list[tuple[int, int, tuple[int, ...]]] = []
    generate(
        demo_model,
        [BASE],
        limits=LIMITS,
        on_step=lambda step, total, latents: seen.append((step, total, tuple(latents.shape))),
    )
    assert seen == [(i, 4, (1, 4, 8, 8)) for i in range(1, 5)]


def test_finish_early_draws_the_last_denoised_prediction(demo_model) -> None:  # type: ignore[no-untyped-def]
    """A1111's interrupt: sampling stops after the step, and the picture is that step's
    denoised prediction decoded (its `last_latent`), with the request's own infotext."""
    from engine.generate import decode
    from engine.latents import to_images

    steps: list[int] = []
    predictions: list[torch.Tensor] = []

    def on_step(step: int, total: int, denoised: torch.Tensor) -> None:
        steps.append(step)
        predictions.append(denoised.clone())

    request = dataclasses.replace(BASE, num_inference_steps=8, batch_size=2)
    [first, second] = generate(
        demo_model,
        [request],
        limits=LIMITS,
        on_step=on_step,
        finish_early=lambda: len(steps) >= 3,
    )
    assert steps == [1, 2, 3]
    expected = to_images(decode(demo_model.pipe.vae, predictions[-1]))
    for result, image in zip((first, second), expected, strict=True):
        assert np.array_equal(png_pixels(result.png), np.asarray(image.convert("RGB")))
    assert "Steps: 8," in first.infotext and (first.seed, second.seed) == (1234, 1235)
    whole = png_pixels(draw(demo_model, num_inference_steps=8)[0].png)
    assert np.abs(png_pixels(first.png).astype(int) - whole).mean() > 1  # not the full drawing


def test_cancel_stops_at_the_next_step(demo_model) -> None:  # type: ignore[no-untyped-def]
    steps: list[int] = []
    with pytest.raises(JobCancelled):
        generate(
            demo_model,
            [dataclasses.replace(BASE, num_inference_steps=20)],
            limits=LIMITS,
            on_step=lambda step, total, latents: steps.append(step),
            cancelled=lambda: len(steps) >= 3,
        )
    assert steps == [1, 2, 3]


@pytest.mark.parametrize("vram", ["medvram", "lowvram"])
def test_memory_profiles_draw_the_same_image_on_cpu(demo_models_dir, demo_model, vram) -> None:  # type: ignore[no-untyped-def]
    model = ModelRegistry(demo_models_dir).load(
        "aidraw-demo", DeviceOptions(device="cpu", vram=vram)
    )
    assert "attention_slicing" in model.memory
    assert not any("offload" in m for m in model.memory)  # offload needs a separate device memory
    sliced = generate(model, [BASE], limits=LIMITS)[0]
    plain = draw(demo_model)[0]
    assert np.abs(png_pixels(sliced.png) - png_pixels(plain.png)).max() <= 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("vram", ["normal", "medvram", "lowvram"])
def test_cuda_fp16_profiles(demo_models_dir, vram) -> None:  # type: ignore[no-untyped-def]
    model = ModelRegistry(demo_models_dir).load("aidraw-demo", DeviceOptions(vram=vram))
    assert model.device.type == "cuda" and model.dtype == torch.float16
    if vram != "normal":
        assert any("offload" in m for m in model.memory)
    first, second = (generate(model, [BASE], limits=LIMITS)[0] for _ in range(2))
    assert first.png == second.png
    assert png_pixels(first.png).std() > 0


def test_extreme_weights_are_refused_at_the_door(demo_model) -> None:  # type: ignore[no-untyped-def]
    # 1,900 nested "(" is 1.1^1900 = inf: it drew an all-black PNG and reported success.
    with pytest.raises(InvalidRequest, match=r"weights must be from -100 to 100"):
        draw(demo_model, prompt="(" * 1900 + "girl")
    with pytest.raises(InvalidRequest, match=r"'girl' in the negative prompt is 1\.1e\+03"):
        draw(demo_model, negative_prompt="(girl:1100)")
    with pytest.raises(InvalidRequest, match=r"weight of 'hat'"):  # in any scheduled form
        draw(demo_model, prompt="1girl, [cat:(hat:500):0.5]")
    assert draw(demo_model, prompt="(girl:100)")  # the bound itself draws


def test_nan_latents_fail_the_job_instead_of_a_black_png(
    demo_model,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken_unet(sample: torch.Tensor, *args: object, **kwargs: object) -> tuple[torch.Tensor]:
        return (torch.full_like(sample, float("nan")),)

    monkeypatch.setattr(demo_model.pipe.unet, "forward", broken_unet)
    with pytest.raises(GenerationFailed, match=r"The picture came out empty \(NaN\)"):
        draw(demo_model)


def test_strong_variations_move_further_than_subtle_ones(demo_model) -> None:  # type: ignore[no-untyped-def]
    from bot.settings import BotSettings

    bot = BotSettings()
    subtle, strong = [], []
    for seed in range(1, 9):  # a small change of noise can flip a detail: over several seeds
        source = png_pixels(draw(demo_model, seed=seed)[0].png)
        for strength, found in (
            (bot.variation_strength, subtle),
            (bot.strong_variation_strength, strong),
        ):
            varied = draw(demo_model, seed=seed, subseed=seed + 100, subseed_strength=strength)
            found.append(np.abs(png_pixels(varied[0].png) - source).mean())
    assert 0 < np.mean(subtle) < np.mean(strong)
