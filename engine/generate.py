"""generate(): the only code that calls a pipeline."""

from __future__ import annotations

import dataclasses
import io
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from engine.errors import GenerationFailed, InvalidRequest, JobCancelled
from engine.infotext import create_infotext, format_number
from engine.models import LoadedModel
from engine.prompting import check_weights, extra_networks
from engine.prompting.conditioning import encode_conditioning
from engine.request import GenerationRequest, GenerationResult, Limits, RequestDefaults, Timings
from engine.sampling.kdiffusion import CFGDenoiser, NoiseSchedule
from engine.sampling.samplers import SAMPLERS, canonical_sampler, sample, total_steps
from engine.sampling.seeds import RNG_SOURCES, ImageRNG, NoiseSpec, RngSource, random_seed
from engine.sampling.seeds import SEED_LIMIT as SEED_LIMIT  # re-exported: the random seed range
from engine.version import __version__

log = logging.getLogger(__name__)

MIN_SIDE = 64
MAX_GUIDANCE = 30.0
# Everything that must agree for requests to share one sampling loop. Seeds, ENSD, RNG source
# and variations may differ: every image draws its noise from generators of its own.
BATCH_KEYS = (
    "width",
    "height",
    "num_inference_steps",
    "guidance_scale",
    "sampler",
    "clip_skip",
    "model",
    "downcast_alphas_cumprod",
)

StepCallback = Callable[[int, int, torch.Tensor], None]
"""Called after each denoising step with (step done, total steps, denoised latents x0)."""


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
    if (req.emphasis or "Original") in ("Original", "No norm"):  # the modes that use weights
        check_weights(req.prompt, req.num_inference_steps)
        check_weights(req.negative_prompt, req.num_inference_steps, "negative prompt")
    _, networks = extra_networks(req.prompt)
    if networks:
        raise InvalidRequest(
            f"<{networks[0][0]}:{':'.join(networks[0][1])}>: LoRA and hypernetworks are not "
            "available in this version yet; remove the tag.",
            field="prompt",
        )
    _check_noise(req, limits)
    return dataclasses.replace(req, sampler=canonical_sampler(req.sampler))


def _check_noise(req: GenerationRequest, limits: Limits) -> None:
    """Validate the seed-related fields (ENSD, RNG source, variation, seed resize)."""
    if req.ensd is not None and not 0 <= req.ensd < 2**32:
        raise InvalidRequest(f"ENSD {req.ensd} is not allowed: use 0 to {2**32 - 1}.", field="ensd")
    if req.rng is not None and req.rng not in ("auto", *RNG_SOURCES):
        raise InvalidRequest(
            f"RNG source {req.rng!r} is not allowed: use GPU, CPU or NV.", field="rng"
        )
    if req.subseed is not None and not 0 <= req.subseed < 2**32:
        raise InvalidRequest(
            f"variation seed {req.subseed} is not allowed: use 0 to {2**32 - 1}, or -1 for random.",
            field="subseed",
        )
    if not 0.0 <= req.subseed_strength <= 1.0:
        raise InvalidRequest(
            f"variation strength {format_number(req.subseed_strength)} is not allowed: use 0 to 1.",
            field="subseed_strength",
        )
    resize = (req.seed_resize_from_w, req.seed_resize_from_h)
    if resize != (0, 0) and not all(MIN_SIDE <= side <= limits.max_side for side in resize):
        raise InvalidRequest(
            f"seed resize from {resize[0]}x{resize[1]} is not allowed: use sides from "
            f"{MIN_SIDE} to {limits.max_side}, or 0x0 for off.",
            field="seed_resize_from",
        )


def _check_finite(images: torch.Tensor, stage: str) -> None:
    """A1111 `devices.test_for_nans`, stricter: any NaN or inf in an image fails it (it would
    come out black or blotched), instead of being sent as a success."""
    bad = ~torch.isfinite(images.flatten(1)).all(dim=1)
    if bad.any():
        log.warning("%s made NaN/inf in image(s) %s", stage, bad.nonzero().flatten().tolist())
        raise GenerationFailed(
            f"The picture came out empty (NaN) in {stage}: lower the prompt weights or the CFG "
            "scale, or try another sampler or seed."
        )


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
    """Draw every image of `requests` (which must share BATCH_KEYS) in one sampling loop.

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

    # 2. Seeds (A1111): a random seed (and variation seed) where none was given; image i of a
    #    request uses seed + i, or the plain seed and subseed + i with a variation strength.
    #    RNG "auto" is CUDA's generator on CUDA and its NV emulation elsewhere.
    auto_rng: RngSource = "GPU" if model.device.type == "cuda" else "NV"
    reqs = [_resolve_seeds(r, auto_rng) for r in reqs]
    items = [(r, spec) for r in reqs for spec in noise_specs(r)]

    # 3. Sampler: our own loop for the table's row, over the model's noise schedule.
    row = SAMPLERS[first.sampler]
    schedule = NoiseSchedule.from_config(
        model.scheduler_config, downcast=first.downcast_alphas_cumprod
    ).to(model.device)
    steps = first.num_inference_steps
    total = total_steps(row, steps)

    # 4. Initial noise: one fp32 draw per image from its own generator; ancestral noise later
    #    comes from that image's generators only, so a batch-mate never shifts another's noise.
    latent_shape = (int(pipe.unet.config.in_channels), first.height // 8, first.width // 8)
    rng = ImageRNG(latent_shape, [spec for _, spec in items], model.device)
    noise = rng.first()

    try:
        with torch.inference_mode():
            # 5. Encode prompts: 75-token chunks, A1111 clip skip, emphasis after the encoder,
            #    one schedule per distinct prompt for prompt editing ([from:to:when], [a|b]).
            t0 = time.perf_counter()
            conditioning = encode_conditioning(
                pipe.tokenizer,
                pipe.text_encoder,
                [r.prompt for r, _ in items],
                [r.negative_prompt for r, _ in items],
                clip_skip=first.clip_skip,
                # Second-order samplers count two model calls a step, as A1111 does.
                steps=steps * row.conditioning_steps,
                device=model.device,
                emphasis=[r.emphasis or "Original" for r, _ in items],
            )
            t1 = time.perf_counter()

            # 6. Denoise with our sampler; CFG on the denoised prediction, conditioning asked
            #    for at every model call; progress and cancellation after every step.
            def unet(x_in: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
                out: torch.Tensor = pipe.unet(
                    x_in, t, encoder_hidden_states=context, return_dict=False
                )[0]
                return out

            denoiser = CFGDenoiser(
                unet,
                schedule,
                conditioning.at,
                first.guidance_scale,
                dtype=model.dtype,
            )

            def step_end(step: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
                if on_step is not None:
                    # The denoised prediction, not the noisy x: what A1111's live preview shows.
                    on_step(step + 1, total, denoised)
                if cancelled is not None and cancelled():
                    raise JobCancelled("cancelled")

            latents = sample(
                row,
                denoiser,
                noise,
                steps,
                lambda sigma, sigma_next: rng.next(),
                step_end,
                seeds=[spec.seed for _, spec in items],
                sources=[spec.source for _, spec in items],
            )
            t2 = time.perf_counter()
            _check_finite(latents, "denoising")

            # 7. Decode with the VAE.
            decoded = pipe.vae.decode(
                latents.to(model.dtype) / pipe.vae.config.scaling_factor, return_dict=False
            )[0]
            _check_finite(decoded, "the VAE")
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
    for (req, spec), image in zip(items, images, strict=True):
        text = infotext_for(req, spec, model)
        info = PngInfo()  # PIL writes an iTXt chunk for text Latin-1 cannot hold (CJK)
        info.add_text("parameters", text)
        buf = io.BytesIO()
        image.save(buf, format="PNG", pnginfo=info)
        results.append(
            GenerationResult(
                png=buf.getvalue(),
                seed=spec.seed,
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


def _resolve_seeds(req: GenerationRequest, auto_rng: RngSource) -> GenerationRequest:
    """Fill the random seed, the random variation seed (if used) and the "auto" RNG source."""
    changes: dict[str, Any] = {}
    if req.seed is None:
        changes["seed"] = random_seed()
    if req.subseed is None and req.subseed_strength:
        changes["subseed"] = random_seed()
    if req.rng in (None, "auto"):
        changes["rng"] = auto_rng
    return dataclasses.replace(req, **changes) if changes else req


def noise_specs(req: GenerationRequest) -> list[NoiseSpec]:
    """Each image's noise source of a resolved request (A1111 `all_seeds`, `all_subseeds`)."""
    assert req.seed is not None and req.rng in RNG_SOURCES
    strength = req.subseed_strength
    return [
        NoiseSpec(
            seed=req.seed + (0 if strength else i),
            source=req.rng,
            ensd=req.ensd or 0,
            subseed=(req.subseed or 0) + i,
            subseed_strength=strength,
            resize_from=(req.seed_resize_from_w, req.seed_resize_from_h),
        )
        for i in range(req.batch_size)
    ]


def infotext_for(req: GenerationRequest, spec: NoiseSpec, model: LoadedModel) -> str:
    """The A1111 infotext of one image (A1111's key order)."""
    row = SAMPLERS[canonical_sampler(req.sampler or "")]
    return create_infotext(
        req,
        seed=spec.seed,
        subseed=spec.subseed if spec.subseed_strength else None,
        model_hash=model.hash,
        model_name=model.name,
        uses_ensd=row.uses_ensd,
        schedule_type=row.schedule_type,
        version=f"aidraw {__version__}",
    )
