"""img2img on the demo model: A1111's cut schedule and start latent, resize modes, strength,
progress, batching, and pasting an img2img infotext back."""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from engine.demo.model import SCHEDULER_CONFIG
from engine.generate import generate
from engine.infotext import request_from_infotext
from engine.pictures import resize_image
from engine.request import GenerationRequest, Limits
from engine.sampling import loop
from engine.sampling.denoiser import CFGDenoiser, NoiseSchedule
from engine.sampling.loop import img2img_sigmas, sample, sample_img2img
from engine.sampling.samplers import SAMPLERS
from engine.sampling.steps import img2img_total_steps, planned_steps
from tests.conftest import png_pixels

pytestmark = pytest.mark.slow
LIMITS = Limits()
SCHEDULE = NoiseSchedule.from_config(SCHEDULER_CONFIG)
BASE = GenerationRequest(
    prompt="1girl, silver hair, smile",
    negative_prompt="lowres, bad anatomy",
    width=64,
    height=64,
    num_inference_steps=10,
    seed=1234,
)


@pytest.fixture(scope="module")
def init_path(demo_model, tmp_path_factory: pytest.TempPathFactory) -> str:  # type: ignore[no-untyped-def]
    """The demo model's own 80x72 drawing (a picture its small VAE knows; not the drawing
    size, so it is resized as A1111 does)."""
    request = dataclasses.replace(BASE, width=80, height=72, seed=99, prompt="1girl, red eyes")
    path = tmp_path_factory.mktemp("img2img") / "init.png"
    path.write_bytes(generate(demo_model, [request], limits=LIMITS)[0].png)
    return str(path)


def draw(model, **changes: Any):  # type: ignore[no-untyped-def]
    return generate(model, [dataclasses.replace(BASE, **changes)], limits=LIMITS)


def pixels_of(path: str, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    image = Image.open(path).convert("RGB").resize(size, Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.int16)


# --- A1111's schedule and start latent, written out from its source ---------------------------


def a1111_img2img(
    row_name: str, steps: int, strength: float, x: torch.Tensor, noise: torch.Tensor, fixed: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """A1111 v1.9.4 `setup_img2img_steps` + `KDiffusionSampler.sample_img2img` (or
    `CompVisSampler`'s, DDIM's and PLMS's): the schedule the loop gets and its start `xi`."""
    # sd_samplers_common.setup_img2img_steps(p, steps): `steps` is given for the hires pass only.
    if fixed:
        requested = steps
        steps = int(requested / min(strength, 0.999)) if strength > 0 else 0
        t_enc = requested - 1
    else:
        t_enc = int(min(strength, 0.999) * steps)
    row = SAMPLERS[row_name]
    if row.timesteps:  # sd_samplers_timesteps.CompVisSampler.sample_img2img
        timesteps = torch.clip(torch.asarray(list(range(0, 1000, 1000 // steps))) + 1, 0, 999)
        a = SCHEDULE.alphas_cumprod[timesteps[t_enc]]
        return timesteps[:t_enc], x * torch.sqrt(a) + noise * torch.sqrt(1 - a)
    # KDiffusionSampler.get_sigmas: steps + 1 where the sampler discards the penultimate σ.
    n = steps + 1 if row.discard_penultimate else steps
    sigmas = SCHEDULE.get_sigmas_karras(n) if row.schedule == "karras" else SCHEDULE.get_sigmas(n)
    if row.discard_penultimate:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    sigma_sched = sigmas[steps - t_enc - 1 :]
    return sigma_sched, x + noise * sigma_sched[0]


def _fake_denoiser() -> CFGDenoiser:
    def unet(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    empty = torch.zeros(1, 77, 8)
    return CFGDenoiser(unet, SCHEDULE, lambda step: (empty, empty), 7.0, dtype=torch.float32)


@pytest.mark.parametrize("fixed", [False, True])
@pytest.mark.parametrize("strength", [0.0, 0.3, 0.5, 0.75, 1.0])
@pytest.mark.parametrize("steps", [1, 4, 20, 28])
@pytest.mark.parametrize("row_name", ["Euler a", "DPM++ 2M Karras", "DPM2", "DDIM", "PLMS"])
def test_schedule_and_start_are_a1111s(
    row_name: str, steps: int, strength: float, fixed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    row = SAMPLERS[row_name]
    if fixed and strength == 0 and row.timesteps:
        return  # A1111 divides by zero there (we run nothing)
    x, noise = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    want_sched, want_start = a1111_img2img(row_name, steps, strength, x, noise, fixed)
    _, sched = img2img_sigmas(row, SCHEDULE, steps, strength, fixed=fixed)
    torch.testing.assert_close(sched, want_sched, rtol=0, atol=0)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def fake_loop(model: Any, x: torch.Tensor, sigmas: torch.Tensor, *rest: Any) -> torch.Tensor:
        seen.append((x, sigmas))
        return x

    loops = loop.TIMESTEPS_LOOPS if row.timesteps else loop.LOOPS
    monkeypatch.setitem(loops, row.function, fake_loop)
    out = sample_img2img(
        row, _fake_denoiser(), x, noise, steps, strength, lambda a, b: noise, lambda *a: None,
        fixed_steps=fixed,
    )  # fmt: skip
    torch.testing.assert_close(out if not seen else seen[0][0], want_start, rtol=0, atol=0)
    runs = len(want_sched) - 1
    assert img2img_total_steps(row, steps, strength, fixed=fixed) == max(runs, 0)
    if fixed and steps * strength > 0 and not row.timesteps:
        assert runs == steps  # the hires pass runs exactly its steps


def test_strength_1_is_txt2img_plus_the_init_latent(demo_model) -> None:  # type: ignore[no-untyped-def]
    """A1111 caps the strength at 0.999: at 1 the whole schedule runs (t_enc + 1 = steps), from
    init + noise·σ_max, so img2img at strength 1 is txt2img only for an all-zero init latent."""
    from engine.generate import noise_specs
    from engine.prompting.conditioning import encode_conditioning
    from engine.sampling.seeds import ImageRNG

    pipe = demo_model.pipe
    req = dataclasses.replace(BASE, rng="NV", ensd=31337)
    cond = encode_conditioning(
        pipe.tokenizer, pipe.text_encoder, [req.prompt], [req.negative_prompt],
        clip_skip=2, steps=10, device=torch.device("cpu"),
    )  # fmt: skip

    def run(init: torch.Tensor | None) -> torch.Tensor:
        rng = ImageRNG((4, 8, 8), noise_specs(req), torch.device("cpu"))
        noise = rng.first()

        def unet(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            return pipe.unet(x, t, encoder_hidden_states=c, return_dict=False)[0]  # type: ignore[no-any-return]

        model = CFGDenoiser(unet, SCHEDULE, cond.at, 11.0, dtype=torch.float32)
        row = SAMPLERS["Euler a"]
        with torch.inference_mode():
            if init is None:
                return sample(row, model, noise, 10, lambda a, b: rng.next(), lambda *a: None)
            return sample_img2img(
                row, model, init, noise, 10, 1.0, lambda a, b: rng.next(), lambda *a: None
            )

    txt2img = run(None)
    assert torch.equal(run(torch.zeros(1, 4, 8, 8)), txt2img)
    assert not torch.allclose(run(torch.full((1, 4, 8, 8), 0.5)), txt2img, atol=1e-3)


# --- img2img end to end -------------------------------------------------------------------------


def test_low_strength_stays_close_to_the_picture(demo_model, init_path: str) -> None:  # type: ignore[no-untyped-def]
    # The picture's own prompt, as a user keeping it close would type it: another prompt moves
    # even a low strength far with a model that follows its prompt.
    original, own = pixels_of(init_path), {"init_image": init_path, "prompt": "1girl, red eyes"}
    low = png_pixels(draw(demo_model, denoising_strength=0.3, **own)[0].png)
    high = png_pixels(draw(demo_model, denoising_strength=0.9, **own)[0].png)
    close, far = np.abs(low - original).mean(), np.abs(high - original).mean()
    assert close < 30 and far > 2 * close, (close, far)


def test_progress_counts_the_cut_schedule(demo_model, init_path: str) -> None:  # type: ignore[no-untyped-def]
    seen: list[tuple[int, int]] = []
    request = dataclasses.replace(
        BASE, init_image=init_path, denoising_strength=0.45, sampler="Euler a"
    )
    generate(demo_model, [request], limits=LIMITS, on_step=lambda s, t, d: seen.append((s, t)))
    # t_enc = int(0.45 · 10) = 4: five steps of the 10-step schedule.
    assert seen == [(i, 5) for i in range(1, 6)]
    assert planned_steps(request) == 5
    assert planned_steps(dataclasses.replace(request, denoising_strength=None)) == 8  # 0.75


def test_result_request_and_infotext_carry_the_strength(demo_model, init_path: str) -> None:  # type: ignore[no-untyped-def]
    result = draw(demo_model, init_image=init_path)[0]
    assert result.request.denoising_strength == 0.75  # A1111's img2img default, resolved
    assert Image.open(io.BytesIO(result.png)).size == (64, 64)
    assert ", Size: 64x64, " in result.infotext
    assert "Model: aidraw-demo, Denoising strength: 0.75, Clip skip: 2," in result.infotext
    assert "Hires" not in result.infotext and "Mask blur" not in result.infotext


def test_pasted_infotext_and_picture_reproduce_the_png(demo_model, init_path: str) -> None:  # type: ignore[no-untyped-def]
    for sampler in ("Euler a", "DPM++ SDE Karras", "DDIM"):
        first = draw(demo_model, init_image=init_path, denoising_strength=0.6, sampler=sampler)[0]
        again = request_from_infotext(first.infotext, init_image=init_path)
        assert again.denoising_strength == 0.6 and not again.enable_hr
        second = generate(demo_model, [again], limits=LIMITS)[0]
        assert second.png == first.png, sampler


def test_batch_mates_do_not_change_an_image(demo_model, init_path: str) -> None:  # type: ignore[no-untyped-def]
    alone = draw(demo_model, init_image=init_path, seed=7)[0]
    batch = draw(demo_model, init_image=init_path, seed=6, batch_size=2)
    assert batch[1].seed == 7
    assert np.array_equal(png_pixels(batch[1].png), png_pixels(alone.png))


def test_resize_modes_change_the_picture(demo_model, init_path: str) -> None:  # type: ignore[no-untyped-def]
    images = [
        draw(demo_model, init_image=init_path, denoising_strength=0.2, resize_mode=m)[0].png
        for m in (0, 1, 2)
    ]
    assert len(set(images)) == 3


# --- A1111's resize modes -----------------------------------------------------------------------


def test_resize_image_modes_follow_a1111() -> None:
    wide = Image.new("RGB", (200, 100), (10, 20, 30))
    wide.paste((200, 0, 0), (0, 0, 20, 100))  # a red band on the left
    just = resize_image(0, wide, 64, 64)
    assert just.size == (64, 64)
    # Crop and resize: height fills, width cropped around the centre: the red band is gone.
    crop = np.asarray(resize_image(1, wide, 64, 64))
    assert crop.shape == (64, 64, 3) and crop[:, 0, 0].max() < 100
    # Resize and fill: width fits (64x32 in the middle), the edge rows stretched over the rest.
    filled = np.asarray(resize_image(2, wide, 64, 64))
    middle = np.asarray(wide.resize((64, 32), Image.Resampling.LANCZOS))
    assert np.array_equal(filled[16:48], middle)
    assert np.abs(filled[:16].astype(int) - middle[:1].astype(int)).max() <= 1
    # A tall picture for a wide size: the columns are stretched instead.
    tall = resize_image(2, wide.rotate(90, expand=True), 64, 32)
    assert tall.size == (64, 32)
