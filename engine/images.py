"""Input images (img2img, inpainting masks, upscales): checked at the door and kept for the job.

`read_image` is the door: PNG, JPEG or WebP only, at most `max_image_bytes` and `max_pixels`
(Pillow's decompression-bomb limit is set from them, so a small file that unpacks to a huge
picture is refused before it is decoded), EXIF orientation applied, transparency flattened on
white (A1111's `img2img_background_color`), an animated image's first frame (said in the
note). `ImageStore` keeps the checked image as a PNG named by its content's sha256 beside the
results, so the journal can replay the job after a restart; a job names the file by path.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from engine.errors import InvalidRequest
from engine.request import Limits

log = logging.getLogger(__name__)

FORMATS = ("PNG", "JPEG", "WEBP")
BACKGROUND = (255, 255, 255)  # A1111's default img2img_background_color
INPUTS = "inputs"  # the store's folder inside results_dir


@dataclass(frozen=True)
class CheckedImage:
    """An image that passed the door: RGB (or L for a mask), upright, one frame."""

    image: Image.Image
    first_frame_only: bool  # it was animated: only its first frame is used


def too_big(size: int, limits: Limits) -> InvalidRequest:
    """The refusal of a file of `size` bytes over `max_image_bytes` (frontends say it before
    downloading, from the size a chat service announces)."""
    return InvalidRequest(
        f"The image is {_mib(size)}: at most {_mib(limits.max_image_bytes)} is allowed.",
        field="image",
        key="image_too_big",
        size=_mib(size),
        max=_mib(limits.max_image_bytes),
    )


def not_an_image() -> InvalidRequest:
    """The refusal of a file that is not a PNG, JPEG or WebP picture."""
    return InvalidRequest(
        "That is not a PNG, JPEG or WebP image this bot can read.",
        field="image",
        key="image_unreadable",
    )


def read_image(data: bytes, limits: Limits, *, mask: bool = False) -> CheckedImage:
    """The door for a user's image; InvalidRequest (one line) says what was wrong."""
    if len(data) > limits.max_image_bytes:
        raise too_big(len(data), limits)
    try:
        with warnings.catch_warnings():
            # Over the limit Pillow only warns (up to twice it): make that a refusal too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
            _check_pixels(image.size, limits)
            animated = bool(getattr(image, "is_animated", False))
            image.seek(0)
            image.load()
    except InvalidRequest:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidRequest(
            f"The image is far too large: at most {limits.max_pixels:,} pixels are allowed.",
            field="image",
            key="image_far_too_large",
            max_pixels=limits.max_pixels,
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        log.info("unreadable image: %s", e)
        raise not_an_image() from None
    upright = ImageOps.exif_transpose(image) or image
    _check_pixels(upright.size, limits)
    return CheckedImage(_flatten(upright, mask), first_frame_only=animated)


def _check_pixels(size: tuple[int, int], limits: Limits) -> None:
    width, height = size
    if width * height > limits.max_pixels or max(width, height) > 4 * limits.max_side:
        raise InvalidRequest(
            f"The image is {width}x{height}: at most {limits.max_pixels:,} pixels are allowed.",
            field="image",
            key="image_too_many_pixels",
            width=width,
            height=height,
            max_pixels=limits.max_pixels,
        )


def upscale_size(size: tuple[int, int], scale: float, limits: Limits) -> tuple[int, int]:
    """The size of a picture upscaled by `scale` (A1111's Extras); InvalidRequest past the
    size limits, so an upscale is refused at the door."""
    width, height = size
    out = (int(width * scale), int(height * scale))
    if out[0] * out[1] > limits.max_pixels or max(out) > limits.max_side:
        raise InvalidRequest(
            f"Upscaling {width}x{height} ×{scale:g} would make {out[0]}x{out[1]}: at most "
            f"{limits.max_pixels:,} pixels and {limits.max_side} per side are allowed.",
            field="hr_scale",
            key="upscale_too_large",
            width=width,
            height=height,
            scale=f"{scale:g}",
            out_width=out[0],
            out_height=out[1],
            max_pixels=limits.max_pixels,
            max_side=limits.max_side,
        )
    return out


def stored_size(path: str) -> tuple[int, int]:
    """A kept picture's size, from its header."""
    with Image.open(path) as image:
        return image.size


def _flatten(image: Image.Image, mask: bool) -> Image.Image:
    """RGB on white (transparency flattened, as A1111's `flatten`); a mask in grey levels."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        background.alpha_composite(rgba)
        image = background
    return image.convert("L" if mask else "RGB")


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


@dataclass(frozen=True)
class StoredImage:
    """A kept input image: `path` for a request, and whether only its first frame is used."""

    path: str
    first_frame_only: bool


class ImageStore:
    """Checked input images as PNG files under `folder`, named by their content's sha256."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def put(self, checked: CheckedImage) -> Path:
        """Keep the image (once per content) and return its path for a request."""
        buf = io.BytesIO()
        checked.image.save(buf, format="PNG")
        data = buf.getvalue()
        path = self.folder / f"{hashlib.sha256(data).hexdigest()}.png"
        if path.is_file():
            os.utime(path)  # fresh again: cleanup spares it until its job is remembered
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            # A temporary name of its own: two stores of one picture at once never share one.
            fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        return path

    def owns(self, path: str) -> bool:
        """Whether a request's image path is one of this store's files (never a user's path)."""
        try:
            return Path(path).resolve().parent == self.folder.resolve()
        except (OSError, ValueError):
            return False

    def remove_unused(self, used: set[str], *, older_than_s: float = 3600.0) -> int:
        """Delete the files no remembered job names (history cleanup); returns how many. A file
        kept in the last `older_than_s` is spared: its job may be on its way to the journal."""
        if not self.folder.is_dir():
            return 0
        removed, now = 0, time.time()
        for path in self.folder.glob("*.png"):
            try:
                if str(path) not in used and now - path.stat().st_mtime > older_than_s:
                    path.unlink(missing_ok=True)
                    removed += 1
            except OSError as e:  # only space is lost
                log.warning("cannot remove %s: %s", path, e)
        return removed
