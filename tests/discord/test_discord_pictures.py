"""Pictures in, on Discord (tests/discord/world.py): /draw's `image` option is an img2img job
(what Discord says of the file is checked before it is downloaded, the picture goes through
the engine's door), and the 🔍 Upscale button redraws a result at twice its size."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from bot.settings import BotSettings
from tests.discord.world import World, final
from tests.fakes import FakeDiscord

pytestmark = pytest.mark.timeout(10)

MB = 1024 * 1024


def picture(fmt: str = "PNG", **save: Any) -> bytes:
    """A 40x24 picture whose pixels all differ, so that a stored copy can be compared."""
    data = bytes(v for y in range(24) for x in range(40) for v in (x * 6, y * 10, x + y))
    buffer = io.BytesIO()
    Image.frombytes("RGB", (40, 24), data).save(buffer, format=fmt, **save)
    return buffer.getvalue()


def pixels(data_or_path: bytes | str) -> bytes:
    source = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path
    with Image.open(source) as image:
        return image.convert("RGB").tobytes()


async def test_draw_with_an_image_is_drawn_from_it(world: World, dc: FakeDiscord) -> None:
    engine = await world.start()
    sent = picture()
    slash = await dc.slash(
        "draw", {"prompt": "make it blue --seed 7 --strength 0.6", "image": ("cat.png", sent)}
    )
    deferred = await dc.wait_for("interaction_callback", dc.of(slash))
    assert deferred.payload == {"type": 5}  # at once: the download may take a while
    message = await final(dc, slash)
    assert message["content"].startswith(
        "Job 1 · Seed 7 · alpha · 4 steps · from a picture, strength 0.6"
    )
    record = engine.record(1)
    assert record is not None and record.request.init_image is not None
    assert record.request.denoising_strength == 0.6
    assert pixels(record.request.init_image) == pixels(sent)
    assert dc.count("cdn_download") == 1
    (drawn,) = world.gen.calls
    assert drawn[0].init_image == record.request.init_image


async def test_an_image_over_the_limit_is_refused_before_it_is_read(
    world: World, dc: FakeDiscord
) -> None:
    engine = await world.start()
    slash = await dc.slash("draw", {"prompt": "blue", "image": ("big.png", picture(), 50 * MB)})
    callback = await dc.wait_for("interaction_callback", dc.of(slash))
    assert callback.payload["type"] == 4 and callback.payload["data"]["flags"] == 64
    assert callback.payload["data"]["content"] == (
        "Error: The image is 50.0 MB: at most 20.0 MB is allowed."
    )
    gif = await dc.slash("draw", {"prompt": "blue", "image": ("cat.gif", b"GIF89a...")})
    callback = await dc.wait_for("interaction_callback", dc.of(gif))
    assert callback.payload["data"]["content"] == (
        "Error: That is not a PNG, JPEG or WebP image this bot can read."
    )
    assert dc.count("cdn_download", status=None) == 0
    assert engine.jobs() == [] and engine.record(1) is None


async def test_a_file_the_door_refuses_turns_the_thinking_message_into_the_reason(
    world: World, dc: FakeDiscord
) -> None:
    engine = await world.start()
    slash = await dc.slash("draw", {"prompt": "blue", "image": ("cat.png", b"no picture")})
    edit = await dc.wait_for("webhook_message_edit", dc.of(slash))
    assert edit.payload["content"] == (
        "Error: That is not a PNG, JPEG or WebP image this bot can read."
    )
    assert dc.count("cdn_download") == 1 and engine.record(1) is None


async def test_an_animated_webp_is_drawn_from_its_first_frame(
    world: World, dc: FakeDiscord
) -> None:
    await world.start()
    frames = [Image.new("RGB", (16, 16), c) for c in ((200, 10, 10), (10, 10, 200))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    slash = await dc.slash("draw", {"prompt": "blue", "image": ("a.webp", buffer.getvalue())})
    message = await final(dc, slash)
    assert message["content"].endswith("Your picture is animated: only its first frame is used.")
    (drawn,) = world.gen.calls
    assert drawn[0].init_image is not None
    assert pixels(drawn[0].init_image) == bytes([200, 10, 10]) * 256


# --- the Upscale button --------------------------------------------------------------------------


async def test_upscale_redraws_the_first_image_with_hires_fix(
    world: World, dc: FakeDiscord
) -> None:
    engine = await world.start()
    message = await final(dc, await dc.slash("draw", {"prompt": "a cat --seed 42 --n 2"}))
    labels = {
        c["custom_id"]: c["label"] for row in message["components"] for c in row["components"]
    }
    assert labels["aidraw:upscale:1"] == "Upscale ×2"

    engine = await world.restart()  # the button works after a restart, as the others do
    upscaled = await final(dc, await dc.click(message, "aidraw:upscale:1"))
    record, first = engine.record(2), engine.record(1)
    assert record is not None and first is not None
    request = record.request
    assert (request.seed, request.batch_size, request.enable_hr) == (42, 1, True)
    assert request.hr_scale == 2.0
    assert request.denoising_strength == BotSettings().upscale_strength
    assert (request.width, request.height) == (first.request.width, first.request.height)
    assert request.init_image is None
    assert "· hires ×2, strength 0.45" in upscaled["content"]


async def test_upscale_over_the_limit_is_refused(world: World, dc: FakeDiscord) -> None:
    engine = await world.start()
    message = await final(dc, await dc.slash("draw", {"prompt": "a cat --size 768x768"}))
    click = await dc.click(message, "aidraw:upscale:1")
    callback = await dc.wait_for("interaction_callback", dc.of(click))
    assert callback.payload["data"]["flags"] == 64
    assert callback.payload["data"]["content"].startswith(
        "Error: Hires fix would draw 1536x1536: at most 1,048,576 pixels"
    )
    assert engine.record(2) is None


async def test_upscale_of_a_picture_drawn_from_a_picture_starts_from_the_result(
    world: World, dc: FakeDiscord
) -> None:
    engine = await world.start()
    slash = await dc.slash("draw", {"prompt": "blue --size 128x96", "image": picture()})
    message = await final(dc, slash)
    upscaled = await final(dc, await dc.click(message, "aidraw:upscale:1"))
    first, record = engine.record(1), engine.record(2)
    assert first is not None and record is not None
    request = record.request
    assert request.init_image not in (None, first.request.init_image)
    assert pixels(request.init_image) == pixels(first.images[0].path)
    assert (request.width, request.height, request.enable_hr) == (256, 192, False)
    assert "from a picture, strength 0.45" in upscaled["content"]
