"""generate(): the only code that calls a pipeline."""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL.PngImagePlugin import PngInfo

from engine.checks import check_request
from engine.errors import GenerationFailed, InvalidRequest, JobCancelled, Phrase
from engine.extras import upscale_results
from engine.hires import check_hires, hires_pass
from engine.infotext import create_infotext
from engine.latents import hires_size, image_conditioning, init_latents, to_images
from engine.models import LoadedModel
from engine.models.vae import decode
from engine.pictures import apply_overlay, open_picture
from engine.prompting.conditioning import Conditioning, encode_conditioning
from engine.prompting.networks import networks_of, without_networks
from engine.prompting.sdxl import SdxlEncoders, encode_sdxl_conditioning, unet_inputs
from engine.request import (
    BATCH_KEYS,
    RNG_SOURCES,
    GenerationRequest,
    GenerationResult,
    Limits,
    RngSource,
    Timings,
)
from engine.sampling.denoiser import CFGDenoiser, LatentBlend, NoiseSchedule
from engine.sampling.loop import denoiser_class, sample, sample_img2img
from engine.sampling.samplers import infotext_sampler, run_row
from engine.sampling.seeds import SEED_LIMIT as SEED_LIMIT  # re-exported: the random seed range
from engine.sampling.seeds import ImageRNG, NoiseSpec, random_seed
from engine.sampling.steps import denoising_strength, planned_steps, total_steps
from engine.upscalers import upscale_image
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


class _StopEarly(Exception):
    """From the step callback: finish with what the steps so far have drawn."""


def generate(
    model: LoadedModel,
    requests: Sequence[GenerationRequest],
    *,
    limits: Limits,
    on_step: StepCallback | None = None,
    cancelled: Callable[[], bool] | None = None,
    finish_early: Callable[[], bool] | None = None,
) -> list[GenerationResult]:
    """Draw every image of `requests` (which must share BATCH_KEYS) in one sampling loop.

    txt2img, img2img and inpainting (an `init_image`, a `mask_image`), and hires fix
    (`enable_hr`: a second pass at the upscaled size), as A1111 v1.9.4 draws them.
    Returns one GenerationResult per image, in order (request by request, seed by seed). Each
    image draws its noise from its own generator, so it does not depend on its batch-mates.
    When `finish_early()` turns true, sampling stops after that step and the images are the
    last step's denoised prediction, decoded (A1111's interrupt and skip; no hires pass after).
    Raises InvalidRequest, JobCancelled (when `cancelled()` turns true) or GenerationFailed.
    """
    pipe = model.pipe
    started = time.perf_counter()

    # 1. Check inputs: fill the model's defaults, validate, and make sure the batch is uniform.
    reqs = [
        check_request(
            dataclasses.replace(r, model=model.name), limits, model.defaults, model.entry.presets
        )
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
    if first.extras_upscale:  # A1111's Extras: the picture upscaled, nothing drawn
        return upscale_results(model, reqs, limits)
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
    hypernets = networks_of(first.prompt).hypernets
    if hypernets and model.architecture.family != "SD-1.x":  # A1111's work on SD-1.x only
        raise InvalidRequest(
            f"Hypernetworks work on SD-1.x models only; {model.name} is "
            f"{model.architecture.family}: remove <hypernet:{hypernets[0].name}:…>.",
            field="prompt",
            key="hypernet_sd1_only",
            model=model.name,
            family=model.architecture.family,
            name=hypernets[0].name,
        )
    picture = open_picture(first)  # img2img: the init picture prepared (before any work)
    if first.enable_hr:
        check_hires(first, model.addons.library)

    # 2. Seeds (A1111): a random seed (and variation seed) where none was given; image i of a
    #    request uses seed + i, or the plain seed and subseed + i with a variation strength.
    #    RNG "auto" is CUDA's generator on CUDA and its NV emulation elsewhere. The denoising
    #    strength is A1111's default for img2img or hires fix where none was given.
    auto_rng: RngSource = "GPU" if model.device.type == "cuda" else "NV"
    reqs = [_resolve(r, auto_rng) for r in reqs]
    items = [(r, spec) for r in reqs for spec in noise_specs(r)]
    specs = [spec for _, spec in items]

    # 3. Sampler: our own loop for the table's row, over the model's noise schedule.
    row = run_row(first.sampler, first.schedule_type)
    schedule = NoiseSchedule.from_config(
        model.scheduler_config, downcast=first.downcast_alphas_cumprod
    ).to(model.device)
    steps = first.num_inference_steps
    total = planned_steps(first)

    # 4. Initial noise: one fp32 draw per image from its own generator; ancestral noise later
    #    comes from that image's generators only, so a batch-mate never shifts another's noise.
    channels = int(pipe.vae.config.latent_channels)
    latent_size = (first.height // 8, first.width // 8)
    rng = ImageRNG((channels, *latent_size), specs, model.device)
    noise = rng.first()
    # An inpainting UNet (9 input channels) also reads a mask and masked-picture latents.
    inpainting_unet = int(pipe.unet.config.in_channels) == channels + 5
    sdxl = SdxlEncoders.of(pipe) if model.architecture.is_sdxl else None

    try:
        with torch.inference_mode():
            # 5. Add-ons: the batch's VAE, LoRAs and hypernetworks (loaded and checked first;
            #    a bad file changes nothing). Encode prompts without their extra-network tags:
            #    75-token chunks with embeddings, A1111 clip skip, emphasis after the encoder,
            #    one schedule per distinct prompt for prompt editing ([from:to:when], [a|b]).
            t0 = time.perf_counter()
            in_use = model.addons.use(first)

            def encode_prompts(hires_steps: int | None = None) -> Conditioning:
                if sdxl is not None:  # A1111's SDXL conditioner, at the pass's image size
                    assert first.width is not None and first.height is not None
                    width, height = (
                        hires_size(first.width, first.height, first.hr_scale)
                        if hires_steps is not None
                        else (first.width, first.height)
                    )
                    return encode_sdxl_conditioning(
                        sdxl,
                        [without_networks(r.prompt) for r, _ in items],
                        [r.negative_prompt for r, _ in items],
                        size=(height, width),
                        steps=steps * row.conditioning_steps,
                        hires_steps=hires_steps,
                        device=model.device,
                        emphasis=[r.emphasis or "Original" for r, _ in items],
                        embeddings=model.addons.embeddings(),
                    )
                return encode_conditioning(
                    pipe.tokenizer,
                    pipe.text_encoder,
                    [without_networks(r.prompt) for r, _ in items],
                    [r.negative_prompt for r, _ in items],
                    # A1111 ignores clip skip for SD-2.x: OpenCLIP's penultimate layer, which
                    # is the last of diffusers' 23-layer SD-2 text encoder.
                    clip_skip=1 if model.architecture.family == "SD-2.x" else first.clip_skip or 1,
                    # Second-order samplers count two model calls a step, as A1111 does.
                    steps=steps * row.conditioning_steps,
                    hires_steps=hires_steps,
                    device=model.device,
                    emphasis=[r.emphasis or "Original" for r, _ in items],
                    embeddings=model.addons.embeddings(),
                )

            conditioning = encode_prompts()
            t1 = time.perf_counter()

            # 6. Denoise with our sampler; CFG on the denoised prediction, conditioning asked
            #    for at every model call; progress and cancellation after every step.
            def unet(x_in: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
                added: dict[str, Any] = {}
                if sdxl is not None:  # the pooled vector and sizes ride in front of the context
                    context, added = unet_inputs(context, sdxl.pooled_dim)
                    added = {"added_cond_kwargs": added}
                out: torch.Tensor = pipe.unet(
                    x_in, t, encoder_hidden_states=context, return_dict=False, **added
                )[0]
                return out

            def denoiser(
                cond: Conditioning,
                image_cond: torch.Tensor | None = None,
                blend: LatentBlend | None = None,
            ) -> CFGDenoiser:
                return denoiser_class(row)(  # LCM: its own wrapper and table
                    unet,
                    schedule,
                    cond.at,
                    first.guidance_scale or 1.0,
                    dtype=model.dtype,
                    image_cond=image_cond,
                    blend=blend,
                )

            done = [0]  # steps of the passes before this one (hires fix)
            last: list[torch.Tensor | None] = [None]  # A1111's `last_latent`

            def step_end(step: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
                last[0] = denoised
                if on_step is not None:
                    # The denoised prediction, not the noisy x: what A1111's live preview shows.
                    on_step(done[0] + step + 1, total, denoised)
                if cancelled is not None and cancelled():
                    raise JobCancelled("cancelled", key="cancelled")
                if finish_early is not None and finish_early():
                    raise _StopEarly

            def denoise() -> torch.Tensor:
                """The sampling passes: txt2img or img2img, then hires fix."""
                seeds, sources = [s.seed for s in specs], [s.source for s in specs]
                if picture is not None:
                    # 6a. img2img: the picture's latents, noised to where the cut schedule starts;
                    #     inpainting keeps the init latents outside the mask at every model call.
                    init = init_latents(
                        pipe.vae,
                        picture,
                        specs,
                        inpainting_fill=first.inpainting_fill,
                        inpainting_unet=inpainting_unet,
                        device=model.device,
                    )
                    latents = sample_img2img(
                        row,
                        denoiser(conditioning, init.image_cond, init.blend),
                        init.latents,
                        noise,
                        steps,
                        denoising_strength(first),
                        lambda sigma, sigma_next: rng.next(),
                        step_end,
                        seeds=seeds,
                        sources=sources,
                    )
                    if init.blend is not None:
                        latents = init.blend(latents)
                else:
                    image_cond = (
                        image_conditioning(pipe.vae, None, None, latent_size, len(items))
                        if inpainting_unet
                        else None
                    )
                    latents = sample(
                        row,
                        denoiser(conditioning, image_cond),
                        noise,
                        steps,
                        lambda sigma, sigma_next: rng.next(),
                        step_end,
                        seeds=seeds,
                        sources=sources,
                    )
                _check_finite(latents, _DENOISING)
                if first.enable_hr:
                    # 6b. Hires fix: upscale (latents, or the decoded pictures), then an img2img
                    #     pass at the new size with fresh noise from the same seeds.
                    done[0] = total_steps(row, steps)
                    latents = hires_pass(
                        first,
                        latents,
                        row=row,
                        vae=pipe.vae,
                        denoiser=denoiser,
                        conditioning=encode_prompts(
                            (first.hr_second_pass_steps or steps) * row.conditioning_steps
                        ),
                        specs=specs,
                        step_end=step_end,
                        inpainting_unet=inpainting_unet,
                        upscale=functools.partial(
                            upscale_image,
                            library=model.addons.library,
                            device=model.device,
                            cache=model.addons.upscalers,
                        ),
                    )
                    _check_finite(latents, _DENOISING)
                return latents

            try:
                latents = denoise()
            except _StopEarly:  # A1111's interrupt/skip: the last denoised prediction
                assert last[0] is not None
                latents = last[0]
            t2 = time.perf_counter()

            # 7. Decode with the VAE (again in fp32 if fp16 made NaN: A1111's --no-half-vae),
            #    then inpainting puts the original back outside the mask (A1111's overlay).
            decoded = decode(pipe.vae, latents)
            _check_finite(decoded, _VAE)
            images = to_images(decoded)
            if picture is not None and picture.overlay is not None:
                overlay = picture.overlay
                images = [apply_overlay(image, picture.paste_to, overlay) for image in images]
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
            picture_params=picture.params if picture is not None else None,
            mask_weight=1.0 if inpainting_unet else None,
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


def _resolve(req: GenerationRequest, auto_rng: RngSource) -> GenerationRequest:
    """Fill the random seed, the random variation seed (if used), the "auto" RNG source, and
    the denoising strength of img2img and hires fix (A1111's defaults)."""
    changes: dict[str, Any] = {}
    if req.denoising_strength is None and (req.init_image is not None or req.enable_hr):
        changes["denoising_strength"] = denoising_strength(req)
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
    `vae`, `lora_hashes`, `ti_hashes`, `picture_params` and `mask_weight`."""
    assert req.sampler is not None
    return create_infotext(
        req,
        seed=spec.seed,
        subseed=spec.subseed if spec.subseed_strength else None,
        model_hash=model.hash,
        model_name=model.name,
        uses_ensd=run_row(req.sampler, req.schedule_type).uses_ensd,
        sampler=infotext_sampler(req.sampler, req.schedule_type),
        version=f"aidraw {__version__}",
        **addons,
    )
