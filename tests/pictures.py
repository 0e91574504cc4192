"""Pictures for the picture-input tests (every frontend and the door): a test picture, its
pixels, a decompression bomb, and a fake generate() whose results are real PNGs."""

from __future__ import annotations

import dataclasses
import io
import struct
import zlib
from typing import Any

from PIL import Image

from engine.request import GenerationRequest, GenerationResult
from tests.engine_fakes import FakeGenerate

MB = 1024 * 1024


def picture(fmt: str = "PNG", *, size: tuple[int, int] = (40, 24), **save: Any) -> bytes:
    """A picture whose neighbouring pixels all differ, so that a stored copy can be compared."""
    width, height = size
    data = bytes(
        v
        for y in range(height)
        for x in range(width)
        for v in (x * 6 % 256, y * 10 % 256, (x + y) % 256)
    )
    buffer = io.BytesIO()
    Image.frombytes("RGB", size, data).save(buffer, format=fmt, **save)
    return buffer.getvalue()


def pixels(data_or_path: bytes | str) -> bytes:
    """A PNG's (or a file's) RGB pixels."""
    source = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path
    with Image.open(source) as image:
        return image.convert("RGB").tobytes()


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid little PNG whose header claims a huge picture (a decompression bomb): one
    compressed row of zeros stands for all of it."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\0" * (1 + 3 * width))
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


class PngGenerate(FakeGenerate):
    """FakeGenerate whose images are real PNGs of the requested size (so that they can be
    sent back as pictures)."""

    def __call__(self, *args: Any, **kwargs: Any) -> list[GenerationResult]:
        results = super().__call__(*args, **kwargs)
        if results and results[0].request.extras_upscale:
            return results  # the engine's own upscale: a real PNG already
        return [dataclasses.replace(r, png=_png(r.request, r.seed)) for r in results]


def _png(request: GenerationRequest, seed: int) -> bytes:
    buffer = io.BytesIO()
    size = (request.width or 64, request.height or 64)
    Image.new("RGB", size, (seed % 256, 90, 30)).save(buffer, format="PNG")
    return buffer.getvalue()
