"""generate(): the only code that calls a pipeline."""

from __future__ import annotations

import dataclasses
import io
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from engine import __version__
from engine.errors import GenerationFailed, InvalidRequest, JobCancelled
from engine.infotext import format_infotext, format_number
from engine.models import LoadedModel
from engine.prompts import encode_conditioning
from engine.request import GenerationRequest, GenerationResult, Limits, RequestDefaults, Timings
from engine.samplers import canonical_sampler, make_scheduler

log = logging.getLogger(__name__)

# A1111 draws random seeds with `random.randrange(4294967294)`.
SEED_LIMIT = 4294967294
MIN_SIDE = 64
MAX_GUIDANCE = 30.0
# Everything that must agree for requests to share one pipeline call.
BATCH_KEYS = (
    "width",
    "height",
    "num_inference_steps",
    "guidance_scale",
    "sampler",
    "clip_skip",
    "model",
)

StepCallback = Callable[[int, int, torch.Tensor], None]
"""Called after each denoising step with (step done, total steps, latents)."""


def check_request(
    request: GenerationRequest, limits: Limits, defaults: RequestDefaults | None = None
) -> GenerationRequest:
    """Fill defaults and validate; InvalidRequest names what was wrong and what is allowed."""
    req = (defaults or RequestDefaults()).apply(request)
    assert req.width is not None and req.height is not None
    assert req.num_inference_steps is not None and req.guidance_scale is not None
    assert req.sampler is not None and req.clip_skip is not None
    for side, value in (("width", req.width), ("height", req.height)):
        if value % 8 or not MIN_SIDE <= value <= limits.max_side:
            raise InvalidRequest(
                f"{side} {value} is not allowed: use a multiple of 8 "
                f"from {MIN_SIDE} to {limits.max_side}.",
                field=side,
            )
    if req.width * req.height > limits.max_pixels:
        raise InvalidRequest(
            f"{req.width}x{req.height} is too large: at most {limits.max_pixels:,} pixels "
            f"(e.g. {_largest_square(limits.max_pixels)}).",
            field="size",
        )
    if not 1 <= req.num_inference_steps <= limits.max_steps:
        raise InvalidRequest(
            f"steps {req.num_inference_steps} is not allowed: use 1 to {limits.max_steps}.",
            field="num_inference_steps",
        )
    if not 1.0 <= req.guidance_scale <= MAX_GUIDANCE:
        raise InvalidRequest(
            f"CFG scale {format_number(req.guidance_scale)} is not allowed: "
            f"use 1 to {format_number(MAX_GUIDANCE)}.",
            field="guidance_scale",
        )
    if not 1 <= req.batch_size <= limits.max_batch_size:
        raise InvalidRequest(
            f"count {req.batch_size} is not allowed: use 1 to {limits.max_batch_size}.",
            field="batch_size",
        )
    if req.seed is not None and not 0 <= req.seed < 2**32:
        raise InvalidRequest(
            f"seed {req.seed} is not allowed: use 0 to {2**32 - 1}, or -1 for random.",
            field="seed",
        )
    if not 1 <= req.clip_skip <= 12:
        raise InvalidRequest(
            f"clip skip {req.clip_skip} is not allowed: use 1 to 12.", field="clip_skip"
        )
    for name, text in (("prompt", req.prompt), ("negative prompt", req.negative_prompt)):
        if len(text) > limits.max_prompt_chars:
            raise InvalidRequest(
                f"The {name} is {len(text)} characters long: at most "
                f"{limits.max_prompt_chars} are allowed.",
                field="prompt",
            )
    return dataclasses.replace(req, sampler=canonical_sampler(req.sampler))


def _largest_square(max_pixels: int) -> str:
    side = int(max_pixels**0.5) // 8 * 8
    return f"{side}x{side}"


def generate(
    model: LoadedModel,
    requests: Sequence[GenerationRequest],
    *,
    limits: Limits,
    on_step: StepCallback | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> list[GenerationResult]:
    """Draw every image of `requests` (which must share BATCH_KEYS) in one pipeline call.

    Returns one GenerationResult per image, in order (request by request, seed by seed). Each
    image draws its noise from its own generator, so it does not depend on its batch-mates.
    Raises InvalidRequest, JobCancelled (when `cancelled()` turns true) or GenerationFailed.
    """
    pipe = model.pipe
    started = time.perf_counter()

    # 1. Check inputs: fill the model's defaults, validate, and make sure the batch is uniform.
    reqs = [
        check_request(dataclasses.replace(r, model=model.name), limits, model.defaults)
        for r in requests
    ]
    if not reqs:
        return []
    first = reqs[0]
    for r in reqs[1:]:
        differing = [k for k in BATCH_KEYS if getattr(r, k) != getattr(first, k)]
        if differing:
            raise ValueError(f"requests cannot share a batch: they differ in {differing}")
    assert first.width is not None and first.height is not None
    assert first.num_inference_steps is not None and first.guidance_scale is not None
    assert first.sampler is not None and first.clip_skip is not None
    layers = int(pipe.text_encoder.config.num_hidden_layers)
    if first.clip_skip > layers:
        raise InvalidRequest(
            f"clip skip {first.clip_skip} is not allowed for {model.name}: use 1 to {layers}.",
            field="clip_skip",
        )

    # 2. Seeds: a random one where none was given; image i of a request uses seed + i (A1111).
    reqs = [r if r.seed is not None else dataclasses.replace(r, seed=_random_seed()) for r in reqs]
    items = [(r, r.seed + i) for r in reqs for i in range(r.batch_size) if r.seed is not None]

    # 3. Sampler: a fresh scheduler from the model's own config for each call.
    pipe.scheduler = make_scheduler(first.sampler, model.scheduler_config)

    # 4. Initial noise: one fp32 draw per image from its own CPU generator, which then also
    #    feeds that image's ancestral noise, so a batch-mate never shifts another's noise.
    generators = [torch.Generator("cpu").manual_seed(seed) for _, seed in items]
    latent_shape = (pipe.unet.config.in_channels, first.height // 8, first.width // 8)
    latents = torch.stack(
        [torch.randn(latent_shape, generator=g, dtype=torch.float32) for g in generators]
    ).to(model.device, model.dtype)

    try:
        with torch.inference_mode():
            # 5. Encode prompts (A1111 clip skip; per-step conditioning for prompt editing).
            t0 = time.perf_counter()
            conditioning = encode_conditioning(
                pipe.tokenizer,
                pipe.text_encoder,
                [r.prompt for r, _ in items],
                [r.negative_prompt for r, _ in items],
                clip_skip=first.clip_skip,
                steps=first.num_inference_steps,
                device=model.device,
            )
            prompt_embeds, negative_embeds = conditioning.at(0)
            t1 = time.perf_counter()

            # 6. Denoise, checking for cancellation after every step.
            def step_end(p: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> Any:
                if on_step is not None:
                    on_step(step + 1, first.num_inference_steps or 0, kwargs["latents"])
                if cancelled is not None and cancelled():
                    p._interrupt = True
                return kwargs

            out = pipe(
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_embeds,
                width=first.width,
                height=first.height,
                num_inference_steps=first.num_inference_steps,
                guidance_scale=first.guidance_scale,
                latents=latents,
                generator=generators,
                output_type="latent",
                callback_on_step_end=step_end,
            )
            if cancelled is not None and cancelled():
                raise JobCancelled("cancelled")
            t2 = time.perf_counter()

            # 7. Decode with the VAE.
            decoded = pipe.vae.decode(
                out.images / pipe.vae.config.scaling_factor, return_dict=False
            )[0]
            images: list[Image.Image] = pipe.image_processor.postprocess(decoded, output_type="pil")
            t3 = time.perf_counter()
    except torch.cuda.OutOfMemoryError as e:
        log.warning(
            "out of memory drawing %d images at %dx%d", len(items), first.width, first.height
        )
        raise GenerationFailed(
            "Out of GPU memory: try a smaller size or fewer images at once."
        ) from e

    # 8. Encode PNGs with their infotext.
    results = []
    for (req, seed), image in zip(items, images, strict=True):
        text = infotext_for(req, seed, model)
        info = PngInfo()
        info.add_text("parameters", text)
        buf = io.BytesIO()
        image.save(buf, format="PNG", pnginfo=info)
        results.append(
            GenerationResult(
                png=buf.getvalue(),
                seed=seed,
                request=req,
                infotext=text,
                timings=Timings(
                    encode_s=t1 - t0,
                    denoise_s=t2 - t1,
                    decode_s=t3 - t2,
                    total_s=time.perf_counter() - started,
                ),
            )
        )
    return results


def _random_seed() -> int:
    return secrets.randbelow(SEED_LIMIT)


def infotext_for(req: GenerationRequest, seed: int, model: LoadedModel) -> str:
    """The A1111 infotext of one image (A1111's key order)."""
    assert req.guidance_scale is not None and req.clip_skip is not None
    params: dict[str, object] = {
        "Steps": req.num_inference_steps,
        "Sampler": req.sampler,
        "CFG scale": format_number(req.guidance_scale),
        "Seed": seed,
        "Size": f"{req.width}x{req.height}",
        "Model hash": model.hash,
        "Model": model.name,
        "Clip skip": req.clip_skip if req.clip_skip > 1 else None,
        "Version": f"aidraw {__version__}",
    }
    return format_infotext(req.prompt, req.negative_prompt, params)
