"""Latents of pictures: decoded to images and encoded back, img2img's init latents, hires fix's
latent upscale, and an inpainting UNet's image conditioning, as A1111 v1.9.4 makes them.

Sources: `modules/processing.py` (`StableDiffusionProcessingImg2Img.init`,
`txt2img_image_conditioning`, `inpainting_image_conditioning`, `sample_hr_pass`,
`process_images_inner`'s 8-bit conversion) and `modules/shared.py` (`latent_upscale_modes`).
The VAE calls themselves are `engine.models.vae`'s `encode` / `decode`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image

from engine.models.vae import encode, encode_scaled
from engine.pictures import PreparedPicture
from engine.sampling.denoiser import LatentBlend
from engine.sampling.seeds import ImageRNG, NoiseSpec

OPT_F = 8  # A1111's `opt_f`: pixels per latent cell
# A1111 `shared.latent_upscale_modes`: hires fix's latent upscalers → torch interpolate options.
# engine.request.LATENT_UPSCALERS names them for the door; both lists must stay the same.
LATENT_UPSCALE_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}


def to_images(decoded: torch.Tensor) -> list[Image.Image]:
    """RGB pictures from decoded images (B, 3, H, W) in [-1, 1], as A1111 makes them:
    clamp((x + 1) / 2), times 255, truncated to 8 bits (not rounded)."""
    pixels = torch.clamp((decoded.float() + 1.0) / 2.0, min=0.0, max=1.0)
    arrays = 255.0 * np.moveaxis(pixels.cpu().numpy(), 1, 3)
    return [Image.fromarray(a.astype(np.uint8)) for a in arrays]


def from_images(images: Sequence[Image.Image]) -> torch.Tensor:
    """Images (B, 3, H, W) in [0, 1], float32, from RGB pictures (A1111: `np.array / 255`).

    Contiguous, as A1111's `np.array(batch)` makes them: the VAE's convolutions give other
    last bits for a channels-last tensor.
    """
    arrays = [
        np.moveaxis(np.array(i.convert("RGB")).astype(np.float32) / 255.0, 2, 0) for i in images
    ]
    return torch.from_numpy(np.array(arrays))


def image_conditioning(
    vae: AutoencoderKL,
    source: torch.Tensor | None,
    mask: Image.Image | None,
    latent_size: tuple[int, int],
    batch: int,
) -> torch.Tensor:
    """An inpainting UNet's extra input (B, 5, h, w): the mask at latent size, then the latents
    of the picture with the masked part greyed out (A1111 `inpainting_image_conditioning`, mask
    weight 1, the mask rounded to 0/1). `source` is the picture in [-1, 1] (1, 3, H, W); None,
    as for txt2img and hires fix (A1111 `txt2img_image_conditioning`), is an all-grey picture
    of `latent_size` × 8 pixels, all masked."""
    height, width = latent_size
    if source is None:
        source = torch.zeros(1, 3, height * OPT_F, width * OPT_F, dtype=vae.dtype)
    if mask is None:
        weight = source.new_ones(1, 1, *source.shape[-2:])
    else:
        weight = torch.from_numpy(np.array(mask.convert("L")).astype(np.float32) / 255.0)
        weight = torch.round(weight[None, None]).to(source)
    masked = torch.lerp(source, source * (1.0 - weight), 1.0)
    latents = encode_scaled(vae, masked)
    weight = torch.nn.functional.interpolate(weight.float(), size=latent_size)
    conditioning = torch.cat([weight.to(latents.device), latents], dim=1)
    return conditioning.expand(batch, -1, -1, -1)


@dataclass(frozen=True)
class InitLatents:
    """img2img's start: `latents` (B, 4, h, w) float32, the inpainting `blend` (None without a
    mask), and the UNet's image conditioning (None for an ordinary 4-channel UNet)."""

    latents: torch.Tensor
    blend: LatentBlend | None
    image_cond: torch.Tensor | None


def init_latents(
    vae: AutoencoderKL,
    picture: PreparedPicture,
    specs: Sequence[NoiseSpec],
    *,
    inpainting_fill: int,
    inpainting_unet: bool,
    device: torch.device,
) -> InitLatents:
    """A1111 `StableDiffusionProcessingImg2Img.init` from the VAE on, for a batch of one
    picture: its latents, the latent mask (the picture's mask at latent size, bicubic, rounded
    to 0/1), masked content "latent noise" (each image's own seed's first draw, without
    variation, as A1111's `create_random_tensors(shape, all_seeds)`) or "latent nothing" (0),
    and an inpainting UNet's conditioning."""
    pixels = from_images([picture.image]).to(device)
    # One encode serves the batch: A1111 encodes each copy alone, and they are the same image.
    latents = encode(vae, pixels).to(device).expand(len(specs), -1, -1, -1)
    blend = None
    if picture.mask is not None:
        size = (latents.shape[3], latents.shape[2])
        small = np.array(picture.mask.convert("RGB").resize(size), dtype=np.float32) / 255
        keep_init = 1.0 - torch.from_numpy(np.around(small[:, :, 0])).to(device)
        mask = keep_init.expand(latents.shape[1], -1, -1)
        nmask = 1.0 - mask
        if inpainting_fill == 2:
            plain = [NoiseSpec(seed=s.seed, source=s.source) for s in specs]
            noise = ImageRNG(tuple(latents.shape[1:]), plain, device).first()  # type: ignore[arg-type]
            latents = latents * mask + noise * nmask
        elif inpainting_fill == 3:
            latents = latents * mask
        blend = LatentBlend(latents, mask, nmask)
    image_cond = None
    if inpainting_unet:
        source = pixels.to(vae.dtype) * 2 - 1
        size = (latents.shape[2], latents.shape[3])
        image_cond = image_conditioning(vae, source, picture.mask, size, len(specs))
    return InitLatents(latents.contiguous(), blend, image_cond)


def hires_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """A1111 `calculate_target_resolution` with "Upscale by": int(width · scale) x
    int(height · scale) (the latents are that // 8, so the image is a multiple of 8 below)."""
    return int(width * scale), int(height * scale)


def upscale_latents(latents: torch.Tensor, mode: str, width: int, height: int) -> torch.Tensor:
    """A1111's latent hires upscale: `interpolate` to (height // 8, width // 8) with the mode's
    method and antialiasing."""
    method, antialias = LATENT_UPSCALE_MODES[mode]
    size = (height // OPT_F, width // OPT_F)
    return torch.nn.functional.interpolate(latents, size=size, mode=method, antialias=antialias)
