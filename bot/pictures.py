"""Pictures in: what every chat frontend does with a user's image (and mask) before it is an
img2img or inpainting job, or an upscale of the picture alone (A1111's Extras tab), and what
the Upscale button under a result asks for.

The engine's door is `Engine.store_image` (formats, byte and pixel caps, EXIF, alpha; masks in
grey levels); here is only what a frontend checks before it downloads anything (the size and
type the chat service announces: `check_announced`; the scale and upscaler of an upscale:
`upscale_choice`), the door run off the event loop (`store_picture`), the Extras request
(`extras_request`), and the Upscale button's request (`upscale_request`, [bot] upscale_with).
A1111's own defaults for the strength are in bot/messages.py (`caption`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
import re
from collections.abc import Awaitable, Callable
from typing import Any

from bot.messages import Locale, text
from engine.checks import check_request
from engine.engine import Engine
from engine.errors import InvalidRequest, ModelNotFound
from engine.images import not_an_image, stored_size, too_big, upscale_size
from engine.infotext import format_number, parse_infotext
from engine.request import HIRES_ONLY_UPSCALERS, GenerationRequest, Limits
from engine.upscalers import BUILTIN

# What the door reads (engine/images.py FORMATS), as the MIME types chat services announce.
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")
UPSCALE = 2.0  # the Upscale button's factor, and an upscale's when none is given
SCALES = (1.0, 4.0)  # an Extras upscale's factors (A1111's hires scale range)


def check_announced(size: int | None, content_type: str | None, limits: Limits) -> None:
    """Refuse a file by what the chat service says of it, before it is downloaded: over
    `max_image_bytes`, or not PNG, JPEG or WebP (None: not said; the door judges later)."""
    if size is not None and size > limits.max_image_bytes:
        raise too_big(size, limits)
    mime = (content_type or "").split(";")[0].strip().lower()
    if mime and mime not in IMAGE_TYPES:
        raise not_an_image()


async def store_picture(
    engine: Engine[Any], data: bytes, locale: Locale, *, mask: bool = False
) -> tuple[str, tuple[str, ...]]:
    """The door (in a thread: decoding a big JPEG takes a while): the stored image's path for
    `init_image` (or, with `mask`, for `mask_image`: kept in grey levels), and the notes to
    show (an animated picture's first frame is used)."""
    stored = await asyncio.to_thread(engine.store_image, bytes(data), mask=mask)
    first_frame = stored.first_frame_only and not mask
    notes = (text("picture_first_frame", locale),) if first_frame else ()
    return stored.path, notes


# --- upscaling a picture without drawing (A1111's Extras tab) -----------------------------------


def picture_upscalers(engine: Engine[Any]) -> list[str]:
    """What a picture may be upscaled with: Lanczos, Nearest, then the files in models/ESRGAN
    (the latent modes and None are hires fix's only)."""
    builtin = {name.lower() for name in BUILTIN}
    files = [name for name in engine.addon_names("upscaler") if name.lower() not in builtin]
    return [*BUILTIN, *files]


def picture_upscaler(engine: Engine[Any], name: str) -> str:
    """`name` as it is installed (any case will do). A latent mode or None is left to the
    engine's door, which says what they are for; any other unknown name is ModelNotFound,
    listing what there is."""
    name = name.strip()
    if name in HIRES_ONLY_UPSCALERS:
        return name
    installed = picture_upscalers(engine)
    lowered = {known.lower(): known for known in installed}
    if name.lower() in lowered:
        return lowered[name.lower()]
    close = difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.5)
    raise ModelNotFound(
        name, kind="upscaler", suggestions=[lowered[c] for c in close], installed=installed
    )


def upscale_scale(value: float) -> float:
    """An upscale's factor, 1 to 4 (InvalidRequest otherwise)."""
    low, high = SCALES
    if not low <= value <= high:
        raise InvalidRequest(
            f"Upscaling ×{format_number(value)} is not possible: use 1 to 4, e.g. 2.",
            field="hr_scale",
            key="upscale_scale",
            scale=format_number(value),
        )
    return value


_SCALE = re.compile(r"[x×]?([0-9]+(?:\.[0-9]+)?|\.[0-9]+)[x×]?", re.IGNORECASE)


def read_upscale(args: str) -> tuple[float | None, str | None]:
    """`/upscale [SCALE] [UPSCALER]`'s words ("3 Nearest", "x2.5", "4x-UltraSharp 2", ""):
    the scale (first or last, "2", "2x", "×2") and the upscaler's name (the other words);
    None for what was not given. A scale out of range is InvalidRequest."""
    words = args.split()
    scale = None
    for index in (0, -1) if words else ():
        match = _SCALE.fullmatch(words[index])
        if match is not None:
            scale = upscale_scale(float(match[1]))
            del words[index]
            break
    return scale, " ".join(words) or None


def upscale_choice(engine: Engine[Any], args: str, default_upscaler: str) -> tuple[float, str]:
    """The scale and upscaler `/upscale`'s words ask for (defaults: ×2, `default_upscaler`),
    checked before any picture is downloaded."""
    scale, name = read_upscale(args)
    return scale or UPSCALE, picture_upscaler(engine, name or default_upscaler)


def extras_request(path: str, *, scale: float, upscaler: str, requester: str) -> GenerationRequest:
    """The kept picture at `path` upscaled by `scale` with `upscaler`, nothing drawn."""
    return GenerationRequest(
        prompt="",
        init_image=path,
        extras_upscale=True,
        hr_scale=scale,
        hr_upscaler=upscaler,
        requester=requester,
    )


def check_extras(request: GenerationRequest, limits: Limits) -> None:
    """The door's checks of an upscale that need no picture (its scale, a latent upscaler),
    before one is downloaded."""
    check_request(dataclasses.replace(request, init_image=request.init_image or "-"), limits)


def check_upscale_size(request: GenerationRequest, limits: Limits) -> None:
    """An Extras upscale whose result would be over the size limits: InvalidRequest now (the
    engine's door says the same at submit; a button wants it before it answers)."""
    if request.extras_upscale and request.init_image is not None:
        upscale_size(stored_size(request.init_image), request.hr_scale, limits)


async def extras_of(
    engine: Engine[Any],
    png: bytes,
    *,
    upscaler: str,
    requester: str,
    scale: float = UPSCALE,
) -> GenerationRequest:
    """A result's own PNG through the door, then upscaled without drawing."""
    path, _ = await store_picture(engine, png, "en")
    return extras_request(path, scale=scale, upscaler=upscaler, requester=requester)


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
    extras: str | None = None,
) -> GenerationRequest:
    """The Upscale button: one image of a job at twice its size.

    With `extras` (an upscaler's name: [bot] upscale_with = "extras"), and for a result that
    was an upscale itself, the image's PNG is upscaled without drawing (A1111's Extras; an
    upscale again with its own upscaler). Otherwise it is drawn again: a plain text-to-image
    drawing with hires fix (A1111's: its seed at its size, upscaled ×2, then a second pass at
    `strength`), which keeps it as it was. One that already came from a picture or from hires
    fix (or `from_picture`: its job is forgotten, only its PNG is left) is redrawn from its
    own picture (`png()`), twice the size, at `strength`: its request's strength is the
    img2img one, and hires fix again would start from the wrong picture. The engine refuses
    sizes over its limits (hires_too_large, size_too_large, upscale_too_large)."""
    if request.extras_upscale or extras is not None:
        upscaler = request.hr_upscaler if request.extras_upscale else extras
        assert upscaler is not None
        return await extras_of(engine, await png(), upscaler=upscaler, requester=request.requester)
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
