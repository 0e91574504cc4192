"""Inpainting on the demo model: A1111's mask blur (OpenCV's, bit for bit), "Only masked" crop
regions, masked content, the latent blend at every model call, the overlay, an inpainting
(9-channel) UNet's conditioning, and pasting an inpainting infotext back."""

from __future__ import annotations

import dataclasses
import hashlib
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from PIL import Image

from engine.errors import InvalidRequest
from engine.generate import generate, noise_specs
from engine.infotext import request_from_infotext
from engine.latents import init_latents
from engine.models.vae import encode_scaled
from engine.pictures import (
    blur_mask,
    crop_region,
    expand_crop_region,
    gaussian_kernel_fixed,
    open_picture,
)
from engine.request import GenerationRequest, Limits
from engine.sampling.seeds import ImageRNG
from tests.conftest import png_pixels

pytestmark = pytest.mark.slow
LIMITS = Limits()
BASE = GenerationRequest(
    prompt="1girl, silver hair, smile",
    negative_prompt="lowres, bad anatomy",
    width=64,
    height=64,
    num_inference_steps=8,
    seed=1234,
    rng="NV",
)


@pytest.fixture(scope="module")
def files(demo_model, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """The demo model's 64x64 and 96x80 drawings, and masks for them (white = redraw)."""
    folder = tmp_path_factory.mktemp("inpaint")
    paths = {}
    for name, (width, height) in {"init": (64, 64), "wide": (96, 80)}.items():
        request = dataclasses.replace(BASE, width=width, height=height, seed=99)
        paths[name] = folder / f"{name}.png"
        paths[name].write_bytes(generate(demo_model, [request], limits=LIMITS)[0].png)
    masks = {"mask": ((64, 64), (24, 20, 44, 40)), "wide_mask": ((96, 80), (60, 10, 76, 26))}
    for name, (size, box) in masks.items():
        mask = Image.new("L", size)
        mask.paste(255, box)
        paths[name] = folder / f"{name}.png"
        mask.save(paths[name])
    Image.new("L", (64, 64)).save(folder / "blank.png")
    paths["blank"] = folder / "blank.png"
    return {k: str(v) for k, v in paths.items()}


def draw(model, files: dict[str, str], **changes: Any):  # type: ignore[no-untyped-def]
    pictures = {"init_image": files["init"], "mask_image": files["mask"]}
    request = dataclasses.replace(BASE, **{**pictures, **changes})
    return generate(model, [request], limits=LIMITS)


def pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


# --- OpenCV's mask blur, ported -----------------------------------------------------------------


def _golden_mask() -> np.ndarray:
    mask = np.zeros((40, 56), np.uint8)
    mask[10:25, 20:50] = 255
    mask[33, 3] = 255
    mask[0, 55] = 128
    return mask


# cv2.GaussianBlur(cv2.GaussianBlur(m, (k, 1), blur), (1, k), blur), k = 2·int(2.5·blur+.5)+1,
# as A1111 blurs; the same with opencv-python-headless 4.10.0 and 5.1.0.
GOLDEN_BLURS = {
    1: ("f81a7a630d357549", [15, 77, 178, 240, 254, 255]),
    4: ("0954c135551b5c02", [85, 109, 132, 156, 178, 196]),
    13: ("96675542d28aaae1", [52, 56, 59, 62, 65, 68]),
    64: ("ab25317987752e5b", [53, 52, 54, 54, 52, 53]),  # kernel far wider than the mask
}


@pytest.mark.parametrize("blur", sorted(GOLDEN_BLURS))
def test_mask_blur_is_opencvs(blur: int) -> None:
    digest, row = GOLDEN_BLURS[blur]
    out = np.array(blur_mask(Image.fromarray(_golden_mask()), blur))
    assert out[17, 18:24].tolist() == row
    assert hashlib.sha256(out.tobytes()).hexdigest()[:16] == digest


def test_mask_blur_matches_cv2_where_installed() -> None:
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    for blur in (1, 2, 3, 4, 7, 16, 33, 64):
        for shape in ((64, 64), (37, 91), (200, 13)):
            mask = rng.integers(0, 256, shape, dtype=np.uint8)
            k = 2 * int(2.5 * blur + 0.5) + 1
            want = cv2.GaussianBlur(cv2.GaussianBlur(mask, (k, 1), blur), (1, k), blur)
            assert np.array_equal(np.array(blur_mask(Image.fromarray(mask), blur)), want)


def test_fixed_point_kernels_sum_to_one() -> None:
    for blur in range(1, 65):
        kernel = gaussian_kernel_fixed(2 * int(2.5 * blur + 0.5) + 1, blur)
        assert kernel.sum() == 256 and np.array_equal(kernel, kernel[::-1])
    assert blur_mask(Image.new("L", (8, 8), 77), 0).getextrema() == (77, 77)


# --- "Only masked" crop regions -----------------------------------------------------------------


def test_crop_region_and_its_expansion_follow_a1111() -> None:
    mask = Image.new("L", (512, 512))
    assert crop_region(mask, 32) is None
    mask.paste(255, (200, 240, 328, 272))  # "a 128x32 region"
    assert crop_region(mask) == (200, 240, 328, 272)
    assert crop_region(mask, 32) == (168, 208, 360, 304)
    # A1111's docstring: a 128x32 mask for 512x512 processing grows to 128x128.
    assert expand_crop_region((200, 240, 328, 272), 512, 512, 512, 512) == (200, 192, 328, 320)
    # Near an edge it is shifted back inside; a wide drawing widens the region instead.
    assert expand_crop_region((0, 500, 64, 512), 64, 64, 512, 512) == (0, 448, 64, 512)
    assert expand_crop_region((10, 10, 20, 40), 128, 64, 30, 512) == (0, 10, 30, 40)


# --- inpainting end to end ----------------------------------------------------------------------


def test_pixels_outside_the_blurred_mask_stay_the_pictures(demo_model, files) -> None:  # type: ignore[no-untyped-def]
    # A user inpaints to change something: the face is redrawn with other eyes and mouth.
    result = draw(demo_model, files, prompt="1girl, silver hair, frown, red eyes")[0]
    out, original = png_pixels(result.png), pixels(files["init"])
    blurred = np.array(blur_mask(Image.open(files["mask"]), 4))
    assert (blurred == 0).sum() > 1000
    assert np.array_equal(out[blurred == 0], original[blurred == 0])
    assert np.abs(out - original)[blurred > 200].mean() > 5
    assert "Denoising strength: 0.75, Clip skip: 2, ENSD: 31337, RNG: NV, Mask blur: 4," in (
        result.infotext
    )


def test_the_init_latents_are_kept_at_every_model_call(demo_model, files) -> None:  # type: ignore[no-untyped-def]
    """A1111 v1.9.4 blends the denoised prediction of every call (`mask_before_denoising` off)."""
    request = dataclasses.replace(BASE, init_image=files["init"], mask_image=files["mask"])
    seen: list[torch.Tensor] = []
    generate(demo_model, [request], limits=LIMITS, on_step=lambda s, t, d: seen.append(d))
    picture = open_picture(request)
    assert picture is not None and picture.mask is not None
    init = init_latents(
        demo_model.pipe.vae,
        picture,
        noise_specs(request),
        inpainting_fill=1,
        inpainting_unet=False,
        device=torch.device("cpu"),
    )
    assert init.blend is not None
    keep = init.blend.mask.bool()
    assert 0 < keep[0].sum() < 64
    for denoised in seen:
        assert torch.equal(denoised[:, keep], init.latents[:, keep])
        assert not torch.equal(denoised, init.latents)


def test_only_masked_redraws_the_box_and_keeps_the_pictures_size(demo_model, files) -> None:  # type: ignore[no-untyped-def]
    result = draw(
        demo_model,
        files,
        init_image=files["wide"],
        mask_image=files["wide_mask"],
        inpaint_full_res=True,
        inpaint_full_res_padding=8,
    )[0]
    out, original = png_pixels(result.png), pixels(files["wide"])
    assert out.shape == original.shape == (80, 96, 3)  # the picture's size, not 64x64
    # The mask box (60,10)-(76,26), blurred (±10 px), padded by 8, made square: x 46..90.
    region = crop_region(blur_mask(Image.open(files["wide_mask"]), 4), 8)
    assert region is not None
    x1, y1, x2, y2 = expand_crop_region(region, 64, 64, 96, 80)
    outside = np.ones(out.shape[:2], bool)
    outside[y1:y2, x1:x2] = False
    assert np.array_equal(out[outside], original[outside])
    assert np.abs(out - original)[14:22, 64:72].mean() > 5
    assert "Mask blur: 4, Inpaint area: Only masked, Masked area padding: 8, Version" in (
        result.infotext
    )


def test_a_blank_mask_with_only_masked_is_plain_img2img(demo_model, files) -> None:  # type: ignore[no-untyped-def]
    blank = draw(demo_model, files, mask_image=files["blank"], inpaint_full_res=True)[0]
    plain = draw(demo_model, files, mask_image=None)[0]
    assert np.array_equal(png_pixels(blank.png), png_pixels(plain.png))
    assert "Mask blur: 4" in blank.infotext and "Inpaint area" not in blank.infotext


def test_masked_content_modes(demo_model, files) -> None:  # type: ignore[no-untyped-def]
    results = [draw(demo_model, files, inpainting_fill=fill)[0] for fill in range(4)]
    assert len({r.png for r in results}) == 4
    assert "Masked content: fill," in results[0].infotext
    assert "Masked content" not in results[1].infotext  # "original": A1111 writes nothing
    assert "Masked content: latent noise," in results[2].infotext
    assert "Masked content: latent nothing," in results[3].infotext


def test_latent_noise_is_each_seeds_first_draw(demo_model, files) -> None:  # type: ignore[no-untyped-def]
    request = dataclasses.replace(
        BASE, init_image=files["init"], mask_image=files["mask"], inpainting_fill=2,
        batch_size=2, subseed=5, subseed_strength=0.5,
    )  # fmt: skip
    picture = open_picture(request)
    assert picture is not None
    specs = noise_specs(request)
    init = init_latents(
        demo_model.pipe.vae, picture, specs, inpainting_fill=2, inpainting_unet=False,
        device=torch.device("cpu"),
    )  # fmt: skip
    assert init.blend is not None
    redraw = init.blend.nmask.bool()
    for i, spec in enumerate(specs):  # the plain seed's noise: no variation (A1111)
        plain = ImageRNG((4, 8, 8), [dataclasses.replace(spec, subseed_strength=0)], "cpu")  # type: ignore[arg-type]
        assert torch.equal(init.latents[i][redraw], plain.first()[0][redraw])


def test_pasted_inpainting_infotext_reproduces_the_png(demo_model, files) -> None:  # type: ignore[no-untyped-def]
    first = draw(
        demo_model, files, inpainting_fill=2, mask_blur=6, inpaint_full_res=True,
        inpaint_full_res_padding=4, denoising_strength=0.55, sampler="DPM++ 2M Karras",
    )[0]  # fmt: skip
    again = request_from_infotext(
        first.infotext, init_image=files["init"], mask_image=files["mask"]
    )
    assert (again.mask_blur, again.inpainting_fill, again.inpaint_full_res) == (6, 2, True)
    assert again.inpaint_full_res_padding == 4 and again.denoising_strength == 0.55
    assert generate(demo_model, [again], limits=LIMITS)[0].png == first.png


# --- an inpainting UNet (9 input channels) ------------------------------------------------------


def _inpainting_model(model: Any, extra: str) -> Any:
    """The demo model with its UNet's conv_in grown to 9 channels: the extra 5 weigh `extra`
    ("zero": they change nothing; "random")."""
    unet = UNet2DConditionModel.from_config({**model.pipe.unet.config, "in_channels": 9})
    state = model.pipe.unet.state_dict()
    weight = state["conv_in.weight"]
    grown = torch.zeros(weight.shape[0], 9, *weight.shape[2:])
    if extra == "random":
        grown[:, 4:] = torch.randn(grown[:, 4:].shape, generator=torch.Generator().manual_seed(0))
    grown[:, :4] = weight
    unet.load_state_dict({**state, "conv_in.weight": grown})
    unet.eval()
    pipe = SimpleNamespace(
        unet=unet, vae=model.pipe.vae, tokenizer=model.pipe.tokenizer,
        text_encoder=model.pipe.text_encoder,
    )  # fmt: skip
    return dataclasses.replace(model, pipe=pipe)


def test_an_inpainting_unet_gets_mask_and_masked_picture(demo_model, files) -> None:  # type: ignore[no-untyped-def]
    zero = _inpainting_model(demo_model, "zero")
    for changes in ({}, {"init_image": None, "mask_image": None}):
        plain, nine = draw(demo_model, files, **changes)[0], draw(zero, files, **changes)[0]
        assert np.array_equal(png_pixels(plain.png), png_pixels(nine.png))
        assert "Conditional mask weight: 1.0, Clip skip: 2" in nine.infotext
        assert "Conditional mask weight" not in plain.infotext

    model = _inpainting_model(demo_model, "random")
    seen: list[torch.Tensor] = []
    unet = model.pipe.unet
    original_forward = unet.forward

    def spy(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        seen.append(x[:, 4:].clone())
        return original_forward(x, *args, **kwargs)

    unet.forward = spy
    draw(model, files)
    vae = demo_model.pipe.vae
    picture = np.asarray(Image.open(files["init"]).convert("RGB"), dtype=np.float32) / 255
    source = torch.from_numpy(np.moveaxis(picture, 2, 0).copy())[None] * 2 - 1
    mask = np.round(np.array(blur_mask(Image.open(files["mask"]), 4)) / 255)
    weight = torch.from_numpy(mask.astype(np.float32))[None, None]
    masked_latents = encode_scaled(vae, source * (1 - weight))
    small = torch.nn.functional.interpolate(weight, size=(8, 8))
    want = torch.cat([small, masked_latents], dim=1)
    assert all(torch.equal(x, torch.cat([want, want])) for x in seen)
    # txt2img: an all-grey picture, all masked (A1111 `txt2img_image_conditioning`).
    seen.clear()
    draw(model, files, init_image=None, mask_image=None)
    grey = torch.cat([torch.ones(1, 1, 8, 8), encode_scaled(vae, torch.zeros(1, 3, 64, 64))], 1)
    assert all(torch.equal(x, torch.cat([grey, grey])) for x in seen)


def test_a1111_inpainting_infotext_reads_back() -> None:
    text = (
        "x\nSteps: 20, Sampler: Euler a, Seed: 5, Size: 512x512, Denoising strength: 0.6, "
        "Conditional mask weight: 1.0, Mask blur: 8, Inpaint area: Only masked, "
        "Masked area padding: 40, Masked content: latent nothing, Version: v1.9.4"
    )
    request = request_from_infotext(text, init_image="a.png", mask_image="m.png")
    assert (request.mask_blur, request.inpainting_fill, request.inpaint_full_res) == (8, 3, True)
    assert request.inpaint_full_res_padding == 40 and request.denoising_strength == 0.6
    plain = request_from_infotext("x\nSteps: 20, Seed: 5, Denoising strength: 0.6")
    assert (plain.mask_blur, plain.inpainting_fill, plain.inpaint_full_res) == (4, 1, False)
    assert plain.inpaint_full_res_padding == 32
    with pytest.raises(InvalidRequest, match="Masked content 'smear'"):
        request_from_infotext("x\nSteps: 20, Seed: 5, Masked content: smear")
