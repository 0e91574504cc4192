"""Cheap progress previews: latents → RGB through a linear map, no VAE decode.

SD-1.x models share A1111's map below; a model with latents of its own (the demo model) names
its own map in `models/<name>.toml` (`[preview]`), fitted with `fit_preview`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

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


@dataclass(frozen=True)
class PreviewMap:
    """RGB in [-1, 1] = latents (C, h, w) · `latent_rgb` (C x 3) + `bias`."""

    latent_rgb: tuple[tuple[float, float, float], ...] = LATENT_RGB
    bias: tuple[float, float, float] = (0.0, 0.0, 0.0)


SD1_PREVIEW = PreviewMap()
# SDXL's latents, A1111's map for `is_sdxl` (same file).
SDXL_PREVIEW = PreviewMap(
    latent_rgb=(
        (0.3448, 0.4168, 0.4395),
        (-0.1953, -0.0290, 0.0250),
        (0.1074, 0.0886, -0.0163),
        (-0.3730, -0.2499, -0.2088),
    )
)
SCALE = 4  # latents are 1/8 of the image: previews are half its size…
MAX_SIDE = 384  # …but small enough to send often


def preview_png(latent: torch.Tensor, mapping: PreviewMap = SD1_PREVIEW) -> bytes:
    """A PNG preview of one image's latents (C, h, w): A1111's cheap approximation by default."""
    channels = len(mapping.latent_rgb)
    if latent.ndim != 3 or latent.shape[0] != channels:
        raise ValueError(f"expected latents ({channels}, h, w), got {tuple(latent.shape)}")
    coefs = torch.tensor(mapping.latent_rgb, dtype=torch.float32)
    rgb = torch.einsum("lxy,lr->xyr", latent.detach().to("cpu", torch.float32), coefs)
    rgb = rgb + torch.tensor(mapping.bias, dtype=torch.float32)
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


def fit_preview(latents: torch.Tensor, images: torch.Tensor) -> PreviewMap:
    """The least-squares map from latents (N, C, h, w) to images (N, 3, 8h, 8w) in [-1, 1]."""
    pooled = torch.nn.functional.avg_pool2d(images.float(), 8)
    x = latents.float().permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    y = pooled.permute(0, 2, 3, 1).reshape(-1, 3)
    design = torch.cat([x, torch.ones(len(x), 1)], dim=1)
    solution = torch.linalg.lstsq(design, y).solution  # (C + 1, 3)
    rows = [(float(r[0]), float(r[1]), float(r[2])) for r in solution[:-1].tolist()]
    b = solution[-1].tolist()
    return PreviewMap(latent_rgb=tuple(rows), bias=(float(b[0]), float(b[1]), float(b[2])))
