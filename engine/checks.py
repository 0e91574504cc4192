"""What a request must satisfy before it is queued (`check_request`, the engine's door).

No torch here: the settings check, the CLI's flag errors and every frontend's submit run it
without loading the model stack.
"""

from __future__ import annotations

import dataclasses

from engine.errors import NEGATIVE_PROMPT, PROMPT, InvalidRequest, Phrase
from engine.infotext import format_number
from engine.prompting import check_weights
from engine.prompting.networks import networks_of, with_hypernet
from engine.prompting.presets import ModelPresets
from engine.request import (
    HIRES_ONLY_UPSCALERS,
    RNG_SOURCES,
    GenerationRequest,
    Limits,
    RequestDefaults,
)
from engine.sampling.samplers import sampler_and_schedule
from engine.sampling.steps import UNIPC_ORDER, unipc_short_pass

MIN_SIDE = 64
MAX_GUIDANCE = 30.0
_WIDTH, _HEIGHT = Phrase("width", "word_width"), Phrase("height", "word_height")


def check_request(
    request: GenerationRequest,
    limits: Limits,
    defaults: RequestDefaults | None = None,
    presets: ModelPresets | None = None,
) -> GenerationRequest:
    """Fill defaults and validate; InvalidRequest names what was wrong and what is allowed.

    `presets`: the model's own; a request's named size and NAI presets become the model's
    where it has its own (the request says which it used: `size_name`, `preset_*`)."""
    if presets is not None:
        request = _with_model_presets(request, presets)
    if request.vae is not None and request.vae.lower() in ("automatic", "auto"):
        request = dataclasses.replace(request, vae=None)  # the model's default
    req = (defaults or RequestDefaults()).apply(request)
    assert req.width is not None and req.height is not None
    assert req.num_inference_steps is not None and req.guidance_scale is not None
    assert req.sampler is not None and req.clip_skip is not None
    for side, value in ((_WIDTH, req.width), (_HEIGHT, req.height)):
        if value % 8 or not MIN_SIDE <= value <= limits.max_side:
            raise InvalidRequest(
                f"{side} {value} is not allowed: use a multiple of 8 "
                f"from {MIN_SIDE} to {limits.max_side}.",
                field=str(side),
                key="side_range",
                side=side,
                value=value,
                min=MIN_SIDE,
                max=limits.max_side,
            )
    if req.width * req.height > limits.max_pixels:
        example = _largest_square(limits.max_pixels)
        raise InvalidRequest(
            f"{req.width}x{req.height} is too large: at most {limits.max_pixels:,} pixels "
            f"(e.g. {example}).",
            field="size",
            key="size_too_large",
            width=req.width,
            height=req.height,
            max_pixels=limits.max_pixels,
            example=example,
        )
    if not 1 <= req.num_inference_steps <= limits.max_steps:
        raise InvalidRequest(
            f"steps {req.num_inference_steps} is not allowed: use 1 to {limits.max_steps}.",
            field="num_inference_steps",
            key="steps_range",
            steps=req.num_inference_steps,
            max=limits.max_steps,
        )
    if not 1.0 <= req.guidance_scale <= MAX_GUIDANCE:
        scale, most = format_number(req.guidance_scale), format_number(MAX_GUIDANCE)
        raise InvalidRequest(
            f"CFG scale {scale} is not allowed: use 1 to {most}.",
            field="guidance_scale",
            key="cfg_range",
            scale=scale,
            max=most,
        )
    if not 1 <= req.batch_size <= limits.max_batch_size:
        raise InvalidRequest(
            f"count {req.batch_size} is not allowed: use 1 to {limits.max_batch_size}.",
            field="batch_size",
            key="count_range",
            count=req.batch_size,
            max=limits.max_batch_size,
        )
    if req.seed is not None and not 0 <= req.seed < 2**32:
        raise InvalidRequest(
            f"seed {req.seed} is not allowed: use 0 to {2**32 - 1}, or -1 for random.",
            field="seed",
            key="seed_range",
            seed=req.seed,
            max=2**32 - 1,
        )
    if not 1 <= req.clip_skip <= 12:
        raise InvalidRequest(
            f"clip skip {req.clip_skip} is not allowed: use 1 to 12.",
            field="clip_skip",
            key="clip_skip_range",
            clip_skip=req.clip_skip,
            max=12,
        )
    for name, text in ((PROMPT, req.prompt), (NEGATIVE_PROMPT, req.negative_prompt)):
        if len(text) > limits.max_prompt_chars:
            raise InvalidRequest(
                f"The {name} is {len(text)} characters long: at most "
                f"{limits.max_prompt_chars} are allowed.",
                field="prompt",
                key="prompt_too_long",
                name=name,
                length=len(text),
                max=limits.max_prompt_chars,
            )
    if (req.emphasis or "Original") in ("Original", "No norm"):  # the modes that use weights
        check_weights(req.prompt, req.num_inference_steps)
        check_weights(req.negative_prompt, req.num_inference_steps, NEGATIVE_PROMPT)
    networks_of(req.prompt)  # the tags' types and weights (their files: the registry's check)
    if req.vae is not None and not req.vae.strip():
        raise InvalidRequest(
            "The VAE name is empty: name a file in models/VAE, or None for the model's own.",
            field="vae",
            key="vae_empty",
        )
    _check_noise(req, limits)
    _check_pictures(req, limits)
    hypernet = (defaults or RequestDefaults()).hypernet
    sampler, schedule_type = sampler_and_schedule(req.sampler, req.schedule_type)
    checked = dataclasses.replace(
        req,
        sampler=sampler,
        schedule_type=schedule_type,
        prompt=with_hypernet(req.prompt, hypernet),
    )
    short = unipc_short_pass(checked)
    if short is not None:
        raise InvalidRequest(
            f"UniPC runs at least {UNIPC_ORDER} steps a pass; this request gives it {short}: "
            "use more steps (or, for a picture, a higher denoising strength).",
            field="num_inference_steps",
            key="unipc_steps",
            sampler="UniPC",
            steps=short,
            min=UNIPC_ORDER,
        )
    return checked


def _check_noise(req: GenerationRequest, limits: Limits) -> None:
    """Validate the seed-related fields (ENSD, RNG source, variation, seed resize)."""
    if req.ensd is not None and not 0 <= req.ensd < 2**32:
        raise InvalidRequest(
            f"ENSD {req.ensd} is not allowed: use 0 to {2**32 - 1}.",
            field="ensd",
            key="ensd_range",
            ensd=req.ensd,
            max=2**32 - 1,
        )
    if req.rng is not None and req.rng not in ("auto", *RNG_SOURCES):
        raise InvalidRequest(
            f"RNG source {req.rng!r} is not allowed: use GPU, CPU or NV.",
            field="rng",
            key="rng_source",
            rng=req.rng,
        )
    if req.subseed is not None and not 0 <= req.subseed < 2**32:
        raise InvalidRequest(
            f"variation seed {req.subseed} is not allowed: use 0 to {2**32 - 1}, or -1 for random.",
            field="subseed",
            key="subseed_range",
            seed=req.subseed,
            max=2**32 - 1,
        )
    if not 0.0 <= req.subseed_strength <= 1.0:
        strength = format_number(req.subseed_strength)
        raise InvalidRequest(
            f"variation strength {strength} is not allowed: use 0 to 1.",
            field="subseed_strength",
            key="subseed_strength_range",
            strength=strength,
        )
    resize = (req.seed_resize_from_w, req.seed_resize_from_h)
    if resize != (0, 0) and not all(MIN_SIDE <= side <= limits.max_side for side in resize):
        raise InvalidRequest(
            f"seed resize from {resize[0]}x{resize[1]} is not allowed: use sides from "
            f"{MIN_SIDE} to {limits.max_side}, or 0x0 for off.",
            field="seed_resize_from",
            key="seed_resize_range",
            width=resize[0],
            height=resize[1],
            min=MIN_SIDE,
            max=limits.max_side,
        )


# A1111's ranges (its UI sliders) for the img2img, inpainting and hires fields.
_PICTURE_RANGES: dict[str, tuple[float, float, Phrase]] = {
    "denoising_strength": (0.0, 1.0, Phrase("denoising strength", "word_denoising")),
    "resize_mode": (0, 2, Phrase("resize mode", "word_resize_mode")),
    "mask_blur": (0, 64, Phrase("mask blur", "word_mask_blur")),
    "inpainting_fill": (0, 3, Phrase("masked content", "word_masked_content")),
    "inpaint_full_res_padding": (0, 256, Phrase("only-masked padding", "word_mask_padding")),
    "hr_scale": (1.0, 4.0, Phrase("hires upscale", "word_hires_scale")),
}


def _check_pictures(req: GenerationRequest, limits: Limits) -> None:
    """The img2img, inpainting and hires fields: in A1111's ranges, a mask only with an
    image, and a hires output within the size limits."""
    for name, (low, high, label) in _PICTURE_RANGES.items():
        value = getattr(req, name)
        if value is not None and not low <= value <= high:
            shown, lo, hi = format_number(value), format_number(low), format_number(high)
            raise InvalidRequest(
                f"{label} {shown} is not allowed: use {lo} to {hi}.",
                field=name,
                key="picture_range",
                label=label,
                value=shown,
                min=lo,
                max=hi,
            )
    if not 0 <= req.hr_second_pass_steps <= limits.max_steps:
        raise InvalidRequest(
            f"hires steps {req.hr_second_pass_steps} is not allowed: use 0 (the same as steps) "
            f"to {limits.max_steps}.",
            field="hr_second_pass_steps",
            key="hires_steps_range",
            steps=req.hr_second_pass_steps,
            max=limits.max_steps,
        )
    if req.denoising_strength is not None and req.init_image is None and not req.enable_hr:
        raise InvalidRequest(
            "The denoising strength is for an image (img2img) or hires fix: send an image with "
            "the prompt, or add --hires.",
            field="denoising_strength",
            key="strength_without_image",
        )
    if req.mask_image is not None and req.init_image is None:
        raise InvalidRequest(
            "A mask needs the image it belongs to.", field="mask_image", key="mask_without_image"
        )
    if req.extras_upscale and (req.init_image is None or req.enable_hr):
        raise InvalidRequest(
            "An upscale needs a picture (and no hires fix).",
            field="extras_upscale",
            key="upscale_needs_picture",
        )
    if req.extras_upscale and req.hr_upscaler in HIRES_ONLY_UPSCALERS:
        raise InvalidRequest(
            f"{req.hr_upscaler} upscales latents while drawing: to upscale a picture use "
            "Lanczos, Nearest or an upscaler file.",
            field="hr_upscaler",
            key="upscale_latent",
            upscaler=req.hr_upscaler,
        )
    if req.enable_hr and req.init_image is not None:
        raise InvalidRequest(
            "Hires fix is for drawing from text: leave it out when drawing from a picture.",
            field="enable_hr",
            key="hires_with_picture",
        )
    if req.enable_hr:
        assert req.width is not None and req.height is not None
        width, height = int(req.width * req.hr_scale), int(req.height * req.hr_scale)
        if width * height > limits.max_pixels or max(width, height) > limits.max_side:
            raise InvalidRequest(
                f"Hires fix would draw {width}x{height}: at most {limits.max_pixels:,} pixels "
                f"and {limits.max_side} per side are allowed; use a smaller size or scale.",
                field="hr_scale",
                key="hires_too_large",
                width=width,
                height=height,
                max_pixels=limits.max_pixels,
                max_side=limits.max_side,
            )


def _largest_square(max_pixels: int) -> str:
    side = int(max_pixels**0.5) // 8 * 8
    return f"{side}x{side}"


def _with_model_presets(request: GenerationRequest, presets: ModelPresets) -> GenerationRequest:
    """The model's own size for a named size, and its quality tags and negative preset where
    the parser put NAI's; the markers cleared (the request now says what it draws)."""
    changes: dict[str, object] = {"size_name": None, "preset_quality": False}
    changes["preset_negative"] = None
    name = request.size_name
    if name is not None and name in presets.sizes:
        changes["width"], changes["height"] = presets.sizes[name]
    changes["prompt"], changes["negative_prompt"] = presets.apply(
        request.prompt, request.negative_prompt, request.preset_quality, request.preset_negative
    )
    return dataclasses.replace(request, **changes)  # type: ignore[arg-type]
