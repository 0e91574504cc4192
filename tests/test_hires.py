"""Hires fix on the demo model: A1111's hires size, latent modes and image upscale, the second
pass's noise, steps and prompt schedule, progress, infotext, and pasting it back."""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import engine.hires
from engine.errors import InvalidRequest, ModelNotFound
from engine.generate import generate, noise_specs
from engine.infotext import request_from_infotext
from engine.latents import LATENT_UPSCALE_MODES, upscale_latents
from engine.pictures import upscale_picture
from engine.prompting import prompt_schedule
from engine.request import GenerationRequest, Limits
from engine.sampling.seeds import ImageRNG
from engine.sampling.steps import planned_steps
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
    enable_hr=True,
)


def draw(model, **changes: Any):  # type: ignore[no-untyped-def]
    return generate(model, [dataclasses.replace(BASE, **changes)], limits=LIMITS)


def size_of(png: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(png)).size


def test_size_and_infotext_are_a1111s(demo_model) -> None:  # type: ignore[no-untyped-def]
    result = draw(demo_model)[0]
    assert size_of(result.png) == (128, 128)
    assert result.request.denoising_strength == 0.7  # A1111's hires default, resolved
    assert ", Size: 64x64, " in result.infotext  # the first pass's size
    assert (
        "Model: aidraw-demo, Denoising strength: 0.7, Clip skip: 2, ENSD: 31337, RNG: NV, "
        "Hires upscale: 2, Hires upscaler: Latent, Version: aidraw 0.1.0"
    ) in result.infotext
    other = draw(demo_model, hr_scale=1.3, hr_second_pass_steps=3, hr_upscaler="Lanczos")[0]
    # int(64 · 1.3) = 83: the Lanczos picture is 83x83, its latents 10x10, the image 80x80.
    assert size_of(other.png) == (80, 80)
    assert "Hires upscale: 1.3, Hires steps: 3, Hires upscaler: Lanczos," in other.infotext


def test_progress_counts_both_passes(demo_model) -> None:  # type: ignore[no-untyped-def]
    seen: list[tuple[int, int]] = []
    request = dataclasses.replace(BASE, sampler="Euler a", hr_second_pass_steps=3)
    generate(demo_model, [request], limits=LIMITS, on_step=lambda s, t, d: seen.append((s, t)))
    # The hires pass runs exactly its 3 steps (of a schedule for int(3 / 0.7) = 4 steps).
    assert seen == [(i, 7) for i in range(1, 8)]
    assert planned_steps(request) == 7
    assert planned_steps(dataclasses.replace(request, denoising_strength=0.0)) == 4


def test_second_pass_is_a1111s(demo_model, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """`sample_hr_pass`: a new ImageRNG at the hires shape with the same seeds (variation
    included), `hr_second_pass_steps or steps` given as `steps` (the fixed-steps branch)."""
    calls: list[dict[str, Any]] = []
    real = engine.hires.sample_img2img

    def spy(*args: Any, **kwargs: Any) -> Any:
        _, _, init, noise, steps, strength = args[:6]
        calls.append({"init": init, "noise": noise, "steps": steps, "strength": strength})
        calls[-1].update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine.hires, "sample_img2img", spy)
    request = dataclasses.replace(
        BASE, batch_size=2, subseed=77, subseed_strength=0.3, rng="NV", denoising_strength=0.55
    )
    draw(demo_model, batch_size=2, subseed=77, subseed_strength=0.3, denoising_strength=0.55)
    (call,) = calls
    assert call["init"].shape == (2, 4, 16, 16)
    want = ImageRNG((4, 16, 16), noise_specs(request), torch.device("cpu")).first()
    assert torch.equal(call["noise"], want)
    assert (call["steps"], call["strength"], call["fixed_steps"]) == (4, 0.55, True)
    assert call["seeds"] == [1234, 1234]  # a variation keeps the seed (A1111 `all_seeds`)


def test_latent_modes_are_a1111s_table(demo_model) -> None:  # type: ignore[no-untyped-def]
    table = {
        "Latent": ("bilinear", False),
        "Latent (antialiased)": ("bilinear", True),
        "Latent (bicubic)": ("bicubic", False),
        "Latent (bicubic antialiased)": ("bicubic", True),
        "Latent (nearest)": ("nearest", False),
        "Latent (nearest-exact)": ("nearest-exact", False),
    }
    assert table == LATENT_UPSCALE_MODES
    latents = torch.randn(1, 4, 8, 8)
    for name, (mode, antialias) in table.items():
        want = torch.nn.functional.interpolate(latents, (10, 12), mode=mode, antialias=antialias)
        # A1111: (int(H · scale) // 8, int(W · scale) // 8), here for 99x83 pixels.
        assert torch.equal(upscale_latents(latents, name, 99, 83), want)
    pictures = {draw(demo_model, hr_upscaler=name)[0].png for name in table}
    assert len(pictures) == len(table)


def _a1111_resize(image: Image.Image, width: int, height: int, resample: Image.Resampling) -> Any:
    """A1111 `images.resize_image(0, …, upscaler_name="Lanczos"/"Nearest")`: its `resize` and
    `Upscaler.upscale` with `UpscalerLanczos/Nearest.do_upscale`, written out."""
    scale = max(width / image.width, height / image.height)
    if scale > 1.0:
        dest_w = int((image.width * scale) // 8 * 8)
        dest_h = int((image.height * scale) // 8 * 8)
        for _ in range(3):
            if image.width >= dest_w and image.height >= dest_h and scale != 1:
                break
            shape = (image.width, image.height)
            image = image.resize(
                (int(image.width * scale), int(image.height * scale)), resample=resample
            )
            if shape == (image.width, image.height):
                break
        if image.width != dest_w or image.height != dest_h:
            image = image.resize((dest_w, dest_h), resample=Image.Resampling.LANCZOS)
    if image.width != width or image.height != height:
        image = image.resize((width, height), resample=Image.Resampling.LANCZOS)
    return image


def test_image_upscale_is_a1111s_chain() -> None:
    from engine.upscalers import upscale_image

    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8))

    def upscale(picture: Image.Image, width: int, height: int, name: str) -> Image.Image:
        return upscale_image(picture, width, height, name, library=None, device="cpu")  # type: ignore[arg-type]

    for name, resample in (("Lanczos", Image.Resampling.LANCZOS), ("Nearest", Image.NEAREST)):
        for scale in (1.0, 1.3, 1.5, 2.0, 2.05):
            width, height = int(48 * scale), int(64 * scale)
            ours = upscale_picture(image, width, height, name, upscale)
            want = _a1111_resize(image, width, height, resample)
            assert ours.size == (width, height)
            assert np.array_equal(np.asarray(ours), np.asarray(want)), (name, scale)
    # An upscaler file runs to the size rounded down to 8 (A1111's `dest`), then Lanczos.
    asked: list[tuple[int, int]] = []

    def network(picture: Image.Image, width: int, height: int, name: str) -> Image.Image:
        asked.append((width, height))
        return picture.resize((width, height))

    assert upscale_picture(image, 83, 110, "4x-Anime", network).size == (83, 110)
    assert asked == [(80, 104)]
    # A1111's "None" upscaler: one Lanczos resize.
    plain = image.resize((83, 110), resample=Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(upscale_picture(image, 83, 110, "None", network)), plain)
    assert len(asked) == 1


def test_hires_prompt_schedule_is_a1111s() -> None:
    """A1111's doctests for `get_learned_conditioning_prompt_schedules([p], 10, 10)`, and whole
    steps counting on from the first pass."""
    assert prompt_schedule("a [b:.5] c", 10, 10) == [(10, "a b c")]
    assert prompt_schedule("a [b:1.5] c", 10, 10) == [(5, "a  c"), (10, "a b c")]
    assert prompt_schedule("a [b:12] c", 10, 10) == [(2, "a  c"), (10, "a b c")]
    assert prompt_schedule("a [b:c:3] d", 10, 8) == [(8, "a c d")]
    assert prompt_schedule("[x|y]", 4, 3) == [(1, "x"), (2, "y"), (3, "x")]


def test_pasted_hires_infotext_reproduces_the_png(demo_model) -> None:  # type: ignore[no-untyped-def]
    cases: list[dict[str, Any]] = [
        {},
        {"hr_upscaler": "Lanczos", "hr_scale": 1.5, "hr_second_pass_steps": 3},
        {"sampler": "DPM++ SDE Karras", "denoising_strength": 0.45, "subseed_strength": 0.2},
        {"sampler": "DDIM", "hr_upscaler": "Latent (nearest-exact)"},
    ]
    for changes in cases:
        first = draw(demo_model, **changes)[0]
        again = request_from_infotext(first.infotext)
        assert again.enable_hr and again.init_image is None
        assert generate(demo_model, [again], limits=LIMITS)[0].png == first.png, changes


def test_batch_mates_do_not_change_a_hires_image(demo_model) -> None:  # type: ignore[no-untyped-def]
    alone = draw(demo_model, seed=8)[0]
    pair = draw(demo_model, seed=7, batch_size=2)
    assert pair[1].seed == 8 and np.array_equal(png_pixels(pair[1].png), png_pixels(alone.png))


def test_strength_0_runs_no_second_pass_steps(demo_model) -> None:  # type: ignore[no-untyped-def]
    seen: list[int] = []
    result = generate(
        demo_model,
        [dataclasses.replace(BASE, denoising_strength=0.0, sampler="DDIM")],
        limits=LIMITS,
        on_step=lambda s, t, d: seen.append(s),
    )[0]
    assert size_of(result.png) == (128, 128) and seen == [1, 2, 3]  # DDIM: 4 steps run 3


def test_bad_hires_requests_are_refused(demo_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelNotFound, match="Unknown upscaler 'Latnet'.*Latent"):
        draw(demo_model, hr_upscaler="Latnet")
    picture = tmp_path / "p.png"
    Image.new("RGB", (64, 64)).save(picture)
    with pytest.raises(InvalidRequest, match="Hires fix is for drawing from text"):
        draw(demo_model, init_image=str(picture))


def test_a1111_hires_infotext_reads_back() -> None:
    text = (
        "1girl\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 5, "
        "Size: 512x768, Model hash: abcdef1234, Denoising strength: 0.45, Clip skip: 2, "
        "Hires upscale: 1.5, Hires steps: 10, Hires upscaler: R-ESRGAN 4x+, Version: v1.9.4"
    )
    request = request_from_infotext(text)
    assert request.enable_hr and request.denoising_strength == 0.45
    assert (request.hr_scale, request.hr_second_pass_steps) == (1.5, 10)
    assert request.hr_upscaler == "R-ESRGAN 4x+" and (request.width, request.height) == (512, 768)
    # A1111 turns hires on only with a strength and a hires key (its paste rule).
    plain = request_from_infotext(text.replace("Denoising strength: 0.45, ", ""))
    assert not plain.enable_hr and plain.hr_scale == 1.5
    img2img = request_from_infotext("x\nSteps: 20, Seed: 5, Denoising strength: 0.3")
    assert not img2img.enable_hr and img2img.denoising_strength == 0.3
    defaults = request_from_infotext("x\nSteps: 20, Seed: 5, Size: 64x64")
    assert (defaults.hr_scale, defaults.hr_upscaler, defaults.hr_second_pass_steps) == (
        2.0,
        "Latent",
        0,
    )


def test_the_door_knows_every_latent_upscaler_hires_can_run() -> None:
    from engine.latents import LATENT_UPSCALE_MODES
    from engine.request import LATENT_UPSCALERS

    assert tuple(LATENT_UPSCALE_MODES) == LATENT_UPSCALERS
