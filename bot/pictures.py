"""Pictures in: what every chat frontend does with a user's image before it is an img2img job,
and what the Upscale button under a result asks for.

The engine's door is `Engine.store_image` (formats, byte and pixel caps, EXIF, alpha); here
is only what a frontend checks before it downloads anything (the size and type the chat
service announces: `check_announced`), the door run off the event loop (`store_picture`), and
the Upscale button's request (`upscale_request`). A1111's own defaults for the strength are in
bot/messages.py (`caption`).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from bot.messages import Locale, text
from engine.engine import Engine
from engine.images import not_an_image, too_big
from engine.infotext import parse_infotext
from engine.request import GenerationRequest, Limits

# What the door reads (engine/images.py FORMATS), as the MIME types chat services announce.
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")
UPSCALE = 2.0  # the Upscale button's factor


def check_announced(size: int | None, content_type: str | None, limits: Limits) -> None:
    """Refuse a file by what the chat service says of it, before it is downloaded: over
    `max_image_bytes`, or not PNG, JPEG or WebP (None: not said; the door judges later)."""
    if size is not None and size > limits.max_image_bytes:
        raise too_big(size, limits)
    mime = (content_type or "").split(";")[0].strip().lower()
    if mime and mime not in IMAGE_TYPES:
        raise not_an_image()


async def store_picture(
    engine: Engine[Any], data: bytes, locale: Locale
) -> tuple[str, tuple[str, ...]]:
    """The door (in a thread: decoding a big JPEG takes a while): the stored image's path for
    `init_image`, and the notes to show (an animated picture's first frame is used)."""
    stored = await asyncio.to_thread(engine.store_image, bytes(data))
    notes = (text("picture_first_frame", locale),) if stored.first_frame_only else ()
    return stored.path, notes


def one_image(request: GenerationRequest, seed: int, infotext: str) -> GenerationRequest:
    """The request that draws this one image of a job again: its seed, and for a variation its
    variation seed (the job's may have been left to chance; the image's infotext has it)."""
    subseed = request.subseed
    if request.subseed_strength:
        found = parse_infotext(infotext).params.get("Variation seed", "")
        if found.isdigit():
            subseed = int(found)
    return dataclasses.replace(request, seed=seed, subseed=subseed, batch_size=1)


def _side(value: float) -> int:
    return max(64, int(value) // 8 * 8)


async def upscale_request(
    engine: Engine[Any],
    request: GenerationRequest,
    *,
    seed: int,
    infotext: str,
    strength: float,
    png: Callable[[], Awaitable[bytes]],
    from_picture: bool = False,
) -> GenerationRequest:
    """The Upscale button: one image of a job drawn again at twice its size.

    A plain text-to-image drawing is drawn again with hires fix (A1111's: its seed at its
    size, upscaled ×2, then a second pass at `strength`), which keeps it as it was. One that
    already came from a picture or from hires fix (or `from_picture`: its job is forgotten,
    only its PNG is left) is redrawn from its own picture (`png()`), twice the size, at
    `strength`: its request's strength is the img2img one, and hires fix again would start
    from the wrong picture. The engine refuses sizes over its limits (hires_too_large,
    size_too_large)."""
    one = one_image(request, seed, infotext)
    if not (from_picture or one.init_image is not None or one.enable_hr):
        return dataclasses.replace(
            one, enable_hr=True, hr_scale=UPSCALE, denoising_strength=strength
        )
    width, height = one.width or 512, one.height or 512
    if one.enable_hr:
        width, height = int(width * one.hr_scale), int(height * one.hr_scale)
    path, _ = await store_picture(engine, await png(), "en")
    return dataclasses.replace(
        one,
        init_image=path,
        mask_image=None,
        width=_side(width * UPSCALE),
        height=_side(height * UPSCALE),
        denoising_strength=strength,
        resize_mode=0,
        enable_hr=False,
    )
