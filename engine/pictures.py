"""Init pictures for img2img and inpainting, prepared as A1111 v1.9.4 prepares them.

Pillow, numpy and scipy, no torch: A1111's resize modes (`modules/images.py`
`resize_image`), its mask blur (OpenCV's `GaussianBlur` on the 8-bit mask, ported bit-exactly),
the "Only masked" crop region (`modules/masking.py`), the "fill" masked content, and the
overlay that puts the original back outside the mask (`modules/processing.py`
`apply_overlay`). `prepare_picture` runs them in the order of
`StableDiffusionProcessingImg2Img.init`; the latents are `engine.latents`'. Hires fix's image
upscale (`upscale_picture`, A1111's `resize_image` with an upscaler) is here too.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFilter, ImageOps
from scipy import ndimage

from engine.errors import GenerationFailed
from engine.infotext import MASKED_CONTENT
from engine.request import GenerationRequest

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]
Resize = Callable[[Image.Image, int, int], Image.Image]
"""(image, width, height) → the image at exactly that size."""


def lanczos(image: Image.Image, width: int, height: int) -> Image.Image:
    """A1111's `resize_image` inner `resize` without an img2img upscaler (its default)."""
    return image.resize((width, height), resample=Image.Resampling.LANCZOS)


def resize_image(
    mode: int, image: Image.Image, width: int, height: int, resize: Resize = lanczos
) -> Image.Image:
    """A1111 `images.resize_image`: 0 just resize, 1 crop and resize, 2 resize and fill.

    The canvas of modes 1 and 2 takes the image's own mode (A1111 makes it RGB, which changes
    nothing for a grey mask: every use converts it back to L exactly).
    """
    if mode == 0:
        return resize(image, width, height)
    ratio, src_ratio = width / height, image.width / image.height
    if mode == 1:
        src_w = width if ratio > src_ratio else image.width * height // image.height
        src_h = height if ratio <= src_ratio else image.height * width // image.width
    else:
        src_w = width if ratio < src_ratio else image.width * height // image.height
        src_h = height if ratio >= src_ratio else image.height * width // image.width
    resized = resize(image, src_w, src_h)
    out = Image.new(resized.mode, (width, height))
    out.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if mode == 2 and ratio < src_ratio:
        # Stretch the first and last rows over the bands left above and below.
        fill = height // 2 - src_h // 2
        if fill > 0:
            out.paste(resized.resize((width, fill), box=(0, 0, width, 0)), box=(0, 0))
            bottom = (0, resized.height, width, resized.height)
            out.paste(resized.resize((width, fill), box=bottom), box=(0, fill + src_h))
    elif mode == 2 and ratio > src_ratio:
        fill = width // 2 - src_w // 2
        if fill > 0:
            out.paste(resized.resize((fill, height), box=(0, 0, 0, height)), box=(0, 0))
            right = (resized.width, 0, resized.width, height)
            out.paste(resized.resize((fill, height), box=right), box=(fill + src_w, 0))
    return out


Upscale = Callable[[Image.Image, int, int, str], Image.Image]
"""(image, width, height, upscaler name) → the upscaler's picture at exactly that size
(`engine.upscalers.upscale_image`)."""
BUILTIN_UPSCALERS = ("lanczos", "nearest")  # A1111's "Lanczos" and "Nearest", any case


def upscale_picture(
    image: Image.Image, width: int, height: int, name: str, upscale: Upscale
) -> Image.Image:
    """A1111 `resize_image(0, image, width, height, upscaler_name=name)`, hires fix's image
    upscale: past a scale of 1 the upscaler (`Upscaler.upscale`) makes the size rounded down
    to a multiple of 8 (Lanczos and Nearest resize once by the scale, then Lanczos to that
    size), then Lanczos gives the exact size. A1111's "None" is Lanczos straight away."""
    if name == "None":
        return lanczos(image, width, height)
    scale = max(width / image.width, height / image.height)
    if scale > 1.0:
        dest = (int((image.width * scale) // 8 * 8), int((image.height * scale) // 8 * 8))
        if image.width < dest[0] or image.height < dest[1]:
            if name.lower() in BUILTIN_UPSCALERS:
                size = (int(image.width * scale), int(image.height * scale))
            else:
                size = dest  # the network's passes, then Lanczos to `dest`
            image = upscale(image, size[0], size[1], name)
        if image.size != dest:
            image = lanczos(image, *dest)
    if image.size != (width, height):
        image = lanczos(image, width, height)
    return image


# --- mask blur: OpenCV's bit-exact GaussianBlur for 8-bit images ---------------------------------


def gaussian_kernel_fixed(size: int, sigma: float) -> np.ndarray:
    """OpenCV `getGaussianKernelBitExact` then `getGaussianKernelFixedPoint_ED`: an odd kernel in
    8-bit fixed point (integers summing to 256), rounded with error diffusion (imgproc/smooth)."""
    half = (size - 1) // 2
    scale2 = -0.125 / (sigma * sigma)
    values = [math.exp(float(x * x) * scale2) for x in range(1 - size, 1 - size + 2 * half, 2)]
    total = 0.0
    for value in values:
        total += value
    total = total * 2 + 1.0
    mul = 1.0 / total
    err, used, raw = 0.0, 0, []
    for value in values:
        adjusted = value * mul * 256 + err
        rounded = round(adjusted)  # cvRound: to nearest, ties to even
        err = adjusted - rounded
        raw.append(rounded)
        used += rounded
    kernel: np.ndarray = np.array([*raw, 256 - 2 * used, *reversed(raw)], dtype=np.float64)
    return kernel


def _blur_axis(pixels: np.ndarray, size: int, sigma: float, axis: int) -> np.ndarray:
    """One separable pass of OpenCV's fixed-point GaussianBlur on uint8 (BORDER_REFLECT_101):
    Σ pixel·k in integers, then (Σ + 128) >> 8. The sums stay far below 2**53, so scipy's
    float64 correlation is exact."""
    if pixels.shape[axis] == 1:  # OpenCV then shrinks the kernel to 1: a copy
        return pixels
    sums = ndimage.correlate1d(
        pixels.astype(np.float64), gaussian_kernel_fixed(size, sigma), axis=axis, mode="mirror"
    )
    blurred: np.ndarray = np.minimum((sums.astype(np.int64) + 128) >> 8, 255).astype(np.uint8)
    return blurred


def blur_mask(mask: Image.Image, blur: int) -> Image.Image:
    """A1111's mask blur (`mask_blur_x`, then `mask_blur_y`): `cv2.GaussianBlur` with a
    (2·int(2.5·blur + 0.5) + 1)-tap kernel and σ = blur, across, then down."""
    if blur <= 0:
        return mask
    size = 2 * int(2.5 * blur + 0.5) + 1
    pixels = np.array(mask.convert("L"))
    pixels = _blur_axis(pixels, size, blur, axis=1)
    pixels = _blur_axis(pixels, size, blur, axis=0)
    return Image.fromarray(pixels)


# --- "Only masked": the crop region -----------------------------------------------------------


def crop_region(mask: Image.Image, pad: int = 0) -> Box | None:
    """A1111 `masking.get_crop_region_v2`: the mask's bounding box grown by `pad` (clipped to
    the mask), or None for an all-black mask."""
    box = mask.getbbox()
    if not box:
        return None
    x1, y1, x2, y2 = box
    if not pad:
        return x1, y1, x2, y2
    return max(x1 - pad, 0), max(y1 - pad, 0), min(x2 + pad, mask.width), min(y2 + pad, mask.height)


def expand_crop_region(region: Box, width: int, height: int, image_w: int, image_h: int) -> Box:
    """A1111 `masking.expand_crop_region`: grow the region to the drawing size's aspect ratio,
    shifted back inside the image where it sticks out."""
    x1, y1, x2, y2 = region
    ratio_region = (x2 - x1) / (y2 - y1)
    ratio = width / height
    if ratio_region > ratio:
        diff = int((x2 - x1) / ratio - (y2 - y1))
        y1 -= diff // 2
        y2 += diff - diff // 2
        if y2 >= image_h:
            y1 -= y2 - image_h
            y2 = image_h
        if y1 < 0:
            y2 -= y1
            y1 = 0
        y2 = min(y2, image_h)
    else:
        diff = int((y2 - y1) * ratio - (x2 - x1))
        x1 -= diff // 2
        x2 += diff - diff // 2
        if x2 >= image_w:
            x1 -= x2 - image_w
            x2 = image_w
        if x1 < 0:
            x2 -= x1
            x1 = 0
        x2 = min(x2, image_w)
    return x1, y1, x2, y2


# --- masked content "fill" and the overlay ----------------------------------------------------


def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111 `masking.fill`: the masked area painted from the colours around it (blurred copies
    of the unmasked image, 256 px down to 0, composited over each other)."""
    out = Image.new("RGBA", image.size)
    masked = Image.new("RGBa", image.size)
    masked.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    masked = masked.convert("RGBa")
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = masked.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            out.alpha_composite(blurred)
    return out.convert("RGB")


def overlay_of(image: Image.Image, mask_for_overlay: Image.Image) -> Image.Image:
    """A1111's overlay image: the original where the mask is not (RGBA, alpha = 255 - mask)."""
    overlay = Image.new("RGBa", image.size)
    overlay.paste(
        image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask_for_overlay.convert("L"))
    )
    return overlay.convert("RGBA")


def apply_overlay(image: Image.Image, paste_to: Box | None, overlay: Image.Image) -> Image.Image:
    """A1111 `apply_overlay` (with `uncrop`): put a drawn "Only masked" box back at its place
    (crop and resize to the box), then the original over everything outside the mask."""
    if paste_to is not None:
        x, y, w, h = paste_to
        base = Image.new("RGBA", overlay.size)
        base.paste(resize_image(1, image, w, h), (x, y))
        image = base
    image = image.convert("RGBA")
    image.alpha_composite(overlay)
    return image.convert("RGB")


# --- the whole preparation --------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedPicture:
    """An init picture ready for the VAE, and how the drawing goes back into the original.

    `image` (RGB, the drawing size) is what is encoded; `mask` (L, the drawing size; white =
    redraw) is A1111's `image_mask`, for the latent mask and an inpainting model's conditioning;
    `overlay` (RGBA) and `paste_to` (x, y, w, h of "Only masked") make the final picture;
    `params` are the infotext keys A1111 adds on the way, in its order.
    """

    image: Image.Image
    mask: Image.Image | None = None
    overlay: Image.Image | None = None
    paste_to: Box | None = None
    params: dict[str, object] = field(default_factory=dict)


def prepare_picture(
    init: Image.Image,
    mask: Image.Image | None,
    *,
    width: int,
    height: int,
    resize_mode: int = 0,
    mask_blur: int = 4,
    inpainting_fill: int = 1,
    inpaint_full_res: bool = False,
    inpaint_full_res_padding: int = 32,
) -> PreparedPicture:
    """A1111 `StableDiffusionProcessingImg2Img.init` up to the VAE, for one image and its mask
    (`init` RGB, `mask` L, white = redraw)."""
    params: dict[str, object] = {}
    region: Box | None = None
    paste_to: Box | None = None
    overlay_mask: Image.Image | None = None
    image_mask = mask
    if image_mask is not None:
        image_mask = blur_mask(image_mask.convert("L"), mask_blur)
        if mask_blur > 0:
            params["Mask blur"] = mask_blur
        if inpaint_full_res:
            overlay_mask = image_mask
            region = crop_region(image_mask, inpaint_full_res_padding)
            if region is not None:
                region = expand_crop_region(
                    region, width, height, image_mask.width, image_mask.height
                )
                x1, y1, x2, y2 = region
                image_mask = resize_image(2, image_mask.crop(region), width, height)
                paste_to = (x1, y1, x2 - x1, y2 - y1)
                params["Inpaint area"] = "Only masked"
                params["Masked area padding"] = inpaint_full_res_padding
            else:
                # A1111 then draws the whole picture as plain img2img (and says so in a comment).
                log.info('the mask is blank: no "Only masked" area, plain img2img instead')
                image_mask = overlay_mask = None
        else:
            image_mask = resize_image(resize_mode, image_mask, width, height)
            doubled = np.clip(np.array(image_mask).astype(np.float32) * 2, 0, 255)
            overlay_mask = Image.fromarray(doubled.astype(np.uint8))

    image = init.convert("RGB")
    if region is None:
        image = resize_image(resize_mode, image, width, height)
    overlay = None
    if image_mask is not None and overlay_mask is not None:
        if overlay_mask.size != image.size:
            overlay_mask = resize_image(resize_mode, overlay_mask, image.width, image.height)
        overlay = overlay_of(image, overlay_mask)
    if region is not None:
        image = resize_image(2, image.crop(region), width, height)
    if image_mask is not None and inpainting_fill != 1:
        # A1111 fills for "latent noise" and "latent nothing" too, before the VAE.
        image = fill(image, image_mask)
        params["Masked content"] = MASKED_CONTENT[inpainting_fill]
    return PreparedPicture(image, image_mask, overlay, paste_to, params)


def open_picture(request: GenerationRequest) -> PreparedPicture | None:
    """The request's init picture and mask (paths of `engine.images.ImageStore` files),
    prepared; None for txt2img. GenerationFailed when a file is gone or unreadable."""
    if request.init_image is None:
        return None
    assert request.width is not None and request.height is not None
    init = _read(request.init_image, "RGB")
    mask = _read(request.mask_image, "L") if request.mask_image is not None else None
    return prepare_picture(
        init,
        mask,
        width=request.width,
        height=request.height,
        resize_mode=request.resize_mode,
        mask_blur=request.mask_blur,
        inpainting_fill=request.inpainting_fill,
        inpaint_full_res=request.inpaint_full_res,
        inpaint_full_res_padding=request.inpaint_full_res_padding,
    )


def _read(path: str, mode: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert(mode)
    except (OSError, ValueError) as e:
        log.warning("cannot read the job's picture %s: %s", path, e)
        raise GenerationFailed(
            "The picture to draw from is gone from the bot's store; send it again.",
            key="picture_missing",
        ) from e
