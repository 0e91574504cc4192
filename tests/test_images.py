"""The image door and store: what users send for img2img is checked before anything is queued,
hostile files are refused in one line, and kept pictures go with the jobs that name them."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest
from PIL import Image

from engine.errors import InvalidRequest
from engine.images import ImageStore, read_image
from engine.journal import Journal
from engine.request import GenerationRequest, Limits
from tests.pictures import png_bomb

LIMITS = Limits(max_pixels=512 * 512, max_image_bytes=1024 * 1024)


def encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\0" * (LIMITS.max_image_bytes + 1), r"The image is 1\.0 MB: at most 1\.0 MB is allowed"),
        (png_bomb(100_000, 100_000), r"The image is far too large: at most 262,144 pixels"),
        (png_bomb(1000, 1000), r"The image is 1000x1000: at most 262,144 pixels are allowed"),
        (encode(Image.new("RGB", (8, 8)), "GIF"), r"not a PNG, JPEG or WebP image"),
        (b"this is not a picture, only named .png", r"not a PNG, JPEG or WebP image"),
        (encode(Image.new("RGB", (64, 64)))[:60], r"not a PNG, JPEG or WebP image"),
    ],
    ids=["50 MB", "decompression bomb", "too many pixels", "GIF", "not an image", "truncated"],
)
def test_hostile_images_are_refused_in_one_line(data: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message) as caught:
        read_image(data, LIMITS)
    assert "\n" not in str(caught.value) and caught.value.key is not None


def test_what_passes_is_upright_opaque_rgb() -> None:
    # EXIF orientation 6 (rotate 90° clockwise to view): an 8x4 file is a 4x8 picture.
    exif = Image.Exif()
    exif[0x0112] = 6
    upright = read_image(encode(Image.new("RGB", (8, 4), "red"), "JPEG", exif=exif), LIMITS)
    assert upright.image.size == (4, 8) and upright.image.mode == "RGB"
    # Transparency is flattened on white, as A1111 does.
    clear = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert read_image(encode(clear), LIMITS).image.getpixel((0, 0)) == (255, 255, 255)
    # A mask is grey levels.
    assert (
        read_image(encode(Image.new("RGB", (4, 4), "white")), LIMITS, mask=True).image.mode == "L"
    )


def test_an_animated_webp_gives_its_first_frame_and_says_so() -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in ("red", "blue")]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    checked = read_image(data, LIMITS)
    assert checked.first_frame_only
    assert checked.image.getpixel((4, 4)) == (255, 0, 0)
    assert not read_image(encode(frames[1], "WEBP"), LIMITS).first_frame_only


def test_the_store_keeps_one_file_per_picture_and_cleans_up_with_history(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "inputs")
    red = read_image(encode(Image.new("RGB", (8, 8), "red")), LIMITS)
    blue = read_image(encode(Image.new("RGB", (8, 8), "blue")), LIMITS)
    first, again, other = store.put(red), store.put(red), store.put(blue)
    assert first == again != other and first.is_file()
    assert store.owns(str(first)) and not store.owns(str(tmp_path / "elsewhere.png"))
    assert not store.owns("/etc/passwd")
    # Only files no remembered job names, and not kept in the last hour, go.
    assert store.remove_unused(set()) == 0
    hour_ago = time.time() - 3700
    for path in (first, other):
        os.utime(path, (hour_ago, hour_ago))
    assert store.remove_unused({str(first)}) == 1
    assert first.is_file() and not other.exists()


def test_the_journal_names_the_pictures_its_jobs_use(tmp_path: Path) -> None:
    journal = Journal(str(tmp_path / "journal.sqlite3"))
    try:
        for init, mask in (("/x/a.png", None), ("/x/b.png", "/x/m.png"), (None, None)):
            request = GenerationRequest(prompt="cat", init_image=init, mask_image=mask)
            journal.add(request, reply_to="", submitted_at=0.0)
        assert journal.input_images() == {"/x/a.png", "/x/b.png", "/x/m.png"}
    finally:
        journal.close()
