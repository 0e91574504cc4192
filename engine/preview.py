"""Cheap progress previews: latents → RGB through a fixed linear map, no VAE decode."""

from __future__ import annotations

import io

import torch
from PIL import Image

# SD-1.x latent channel → (R, G, B) weights, A1111's "Approx cheap" live preview.
# Adapted from AUTOMATIC1111/stable-diffusion-webui@0f1da661546bb165e47547bf8e368fd104d2b4a5:modules/sd_vae_approx.py  # noqa: E501
LATENT_RGB = (
    (0.298, 0.207, 0.208),
    (0.187, 0.286, 0.173),
    (-0.158, 0.189, 0.264),
    (-0.184, -0.271, -0.473),
)
SCALE = 4  # latents are 1/8 of the image: previews are half its size…
MAX_SIDE = 384  # …but small enough to send often


def preview_png(latent: torch.Tensor) -> bytes:
    """A PNG preview of one image's latents (4, h, w) by A1111's cheap approximation."""
    if latent.ndim != 3 or latent.shape[0] != len(LATENT_RGB):
        raise ValueError(f"expected SD-1.x latents (4, h, w), got {tuple(latent.shape)}")
    coefs = torch.tensor(LATENT_RGB, dtype=torch.float32)
    rgb = torch.einsum("lxy,lr->xyr", latent.detach().to("cpu", torch.float32), coefs)
    # A1111 samples_to_images_tensor: [-1, 1] → [0, 1].
    pixels = ((rgb + 1.0) / 2.0).clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8).numpy()
    image = Image.fromarray(pixels)
    height, width = pixels.shape[:2]
    scale = min(SCALE, MAX_SIDE / max(width, height))
    if scale > 1:
        image = image.resize(
            (round(width * scale), round(height * scale)), Image.Resampling.BILINEAR
        )
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
