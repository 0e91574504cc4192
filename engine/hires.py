"""Hires fix: the second pass of txt2img, as A1111 v1.9.4's `sample_hr_pass` draws it.

The first pass's latents are upscaled to int(width · scale) x int(height · scale) (A1111's
`hr_upscale_to_x/y`): a "Latent…" mode interpolates the latents; any other upscaler decodes
them, upscales the 8-bit pictures (`engine.upscalers`) and encodes them again. Then an img2img
pass at that size: new noise from a fresh generator per image with the same seeds (variation
and seed resize too, ENSD again after the first draw), the prompts' hires schedule, and A1111's
hires step rule: `hr_second_pass_steps or steps` steps of a schedule made for
int(those steps / min(strength, 0.999)) steps (`setup_img2img_steps` with `steps` given).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from diffusers import AutoencoderKL

from engine.errors import InvalidRequest
from engine.latents import (
    LATENT_UPSCALE_MODES,
    from_images,
    hires_size,
    image_conditioning,
    to_images,
    upscale_latents,
)
from engine.models.library import AddonLibrary
from engine.models.vae import decode, encode
from engine.pictures import Upscale, upscale_picture
from engine.prompting.conditioning import Conditioning
from engine.request import GenerationRequest
from engine.sampling.denoiser import CFGDenoiser, LatentBlend, StepCallback
from engine.sampling.loop import sample_img2img
from engine.sampling.samplers import Sampler
from engine.sampling.seeds import ImageRNG, NoiseSpec
from engine.sampling.steps import denoising_strength
from engine.upscalers import check_hires_upscaler

Denoiser = Callable[[Conditioning, torch.Tensor | None, LatentBlend | None], CFGDenoiser]
"""(conditioning, image conditioning, blend) → generate()'s denoiser for a pass."""


def check_hires(request: GenerationRequest, library: AddonLibrary) -> None:
    """Before any work: hires fix is txt2img's (A1111's img2img has none; `check_request` says
    so at the door too), and its upscaler is one that is here."""
    if request.init_image is not None:
        raise InvalidRequest(
            "Hires fix is for drawing from text: leave it out when drawing from a picture.",
            field="enable_hr",
            key="hires_with_picture",
        )
    check_hires_upscaler(request.hr_upscaler, library)


def hires_pass(
    request: GenerationRequest,
    latents: torch.Tensor,
    *,
    row: Sampler,
    vae: AutoencoderKL,
    denoiser: Denoiser,
    conditioning: Conditioning,
    specs: Sequence[NoiseSpec],
    step_end: StepCallback,
    inpainting_unet: bool,
    upscale: Upscale,
) -> torch.Tensor:
    """The hires latents from the first pass's (B, 4, h, w) (see the module docstring).

    `conditioning` is the prompts encoded for the hires schedule; `upscale` is an image
    upscaler (`engine.upscalers.upscale_image` bound to the add-on library and device). An
    inpainting UNet gets A1111's all-grey, all-masked conditioning at the hires size (A1111
    would make it at the first pass's size and fail on the size mismatch).
    """
    assert request.width is not None and request.height is not None
    width, height = hires_size(request.width, request.height, request.hr_scale)
    name = request.hr_upscaler
    if name in LATENT_UPSCALE_MODES:
        latents = upscale_latents(latents, name, width, height)
    else:
        pictures = [
            upscale_picture(picture, width, height, name, upscale)
            for picture in to_images(decode(vae, latents))
        ]
        latents = encode(vae, from_images(pictures).to(latents.device)).to(latents.device)
    size = (latents.shape[2], latents.shape[3])
    image_cond = (
        image_conditioning(vae, None, None, size, latents.shape[0]) if inpainting_unet else None
    )
    rng = ImageRNG((latents.shape[1], *size), specs, latents.device)
    noise = rng.first()
    steps = request.hr_second_pass_steps or request.num_inference_steps or 0
    return sample_img2img(
        row,
        denoiser(conditioning, image_cond, None),
        latents,
        noise,
        steps,
        denoising_strength(request),
        lambda sigma, sigma_next: rng.next(),
        step_end,
        fixed_steps=True,
        seeds=[s.seed for s in specs],
        sources=[s.source for s in specs],
    )
