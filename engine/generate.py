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

from engine.checks import check_request
from engine.errors import GenerationFailed, InvalidRequest, JobCancelled, Phrase
from engine.infotext import create_infotext
from engine.models import LoadedModel
from engine.models.vae import decode
from engine.prompting.conditioning import encode_conditioning
from engine.prompting.networks import networks_of, without_networks
from engine.request import (
    BATCH_KEYS,
    RNG_SOURCES,
    GenerationRequest,
    GenerationResult,
    Limits,
    RngSource,
    Timings,
)
from engine.sampling.kdiffusion import CFGDenoiser, NoiseSchedule
from engine.sampling.loop import sample, total_steps
from engine.sampling.samplers import SAMPLERS, canonical_sampler
from engine.sampling.seeds import SEED_LIMIT as SEED_LIMIT  # re-exported: the random seed range
from engine.sampling.seeds import ImageRNG, NoiseSpec, random_seed
from engine.version import __version__

log = logging.getLogger(__name__)

# Where a NaN showed up, in the error's words.
_DENOISING, _VAE = Phrase("denoising", "stage_denoising"), Phrase("the VAE", "stage_vae")

StepCallback = Callable[[int, int, torch.Tensor], None]
"""Called after each denoising step with (step done, total steps, denoised latents x0)."""


def _check_finite(images: torch.Tensor, stage: Phrase) -> None:
    """A1111 `devices.test_for_nans`, stricter: any NaN or inf in an image fails it (it would
    come out black or blotched), instead of being sent as a success."""
    bad = ~torch.isfinite(images.flatten(1)).all(dim=1)
    if bad.any():
        log.warning("%s made NaN/inf in image(s) %s", stage, bad.nonzero().flatten().tolist())
        raise GenerationFailed(
            f"The picture came out empty (NaN) in {stage}: lower the prompt weights or the CFG "
            "scale, or try another sampler or seed.",
            key="nan_image",
            stage=stage,
        )


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
        if networks_of(r.prompt) != networks_of(first.prompt):
            differing.append("extra networks")
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
            key="clip_skip_model",
            clip_skip=first.clip_skip,
            model=model.name,
            max=layers,
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
            # 5. Add-ons: the batch's VAE, LoRAs and hypernetworks (loaded and checked first;
            #    a bad file changes nothing). Encode prompts without their extra-network tags:
            #    75-token chunks with embeddings, A1111 clip skip, emphasis after the encoder,
            #    one schedule per distinct prompt for prompt editing ([from:to:when], [a|b]).
            t0 = time.perf_counter()
            in_use = model.addons.use(first)
            conditioning = encode_conditioning(
                pipe.tokenizer,
                pipe.text_encoder,
                [without_networks(r.prompt) for r, _ in items],
                [r.negative_prompt for r, _ in items],
                clip_skip=first.clip_skip,
                # Second-order samplers count two model calls a step, as A1111 does.
                steps=steps * row.conditioning_steps,
                device=model.device,
                emphasis=[r.emphasis or "Original" for r, _ in items],
                embeddings=model.addons.embeddings(),
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
                    raise JobCancelled("cancelled", key="cancelled")

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
            _check_finite(latents, _DENOISING)

            # 7. Decode with the VAE (again in fp32 if fp16 made NaN: A1111's --no-half-vae).
            decoded = decode(pipe.vae, latents)
            _check_finite(decoded, _VAE)
            images: list[Image.Image] = pipe.image_processor.postprocess(decoded, output_type="pil")
            t3 = time.perf_counter()
    except torch.cuda.OutOfMemoryError as e:
        log.warning(
            "out of memory drawing %d images at %dx%d", len(items), first.width, first.height
        )
        raise GenerationFailed(
            "Out of GPU memory: try a smaller size or fewer images at once.", key="out_of_memory"
        ) from e

    # 8. Encode PNGs with their infotext.
    results = []
    for i, ((req, spec), image) in enumerate(zip(items, images, strict=True)):
        in_prompt, in_negative = conditioning.embeddings_used(i)
        text = infotext_for(
            req,
            spec,
            model,
            vae=in_use.vae,
            lora_hashes=in_use.lora_hashes,
            ti_hashes=model.addons.ti_hashes([*in_prompt, *in_negative]),
        )
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


def infotext_for(req: GenerationRequest, spec: NoiseSpec, model: LoadedModel, **addons: Any) -> str:
    """The A1111 infotext of one image (A1111's key order); `addons` are create_infotext's
    `vae`, `lora_hashes` and `ti_hashes`."""
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
        **addons,
    )
