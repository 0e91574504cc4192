"""Pictures in, on Discord (tests/discord/world.py): /draw's `image` option is an img2img job
(what Discord says of the file is checked before it is downloaded, the picture goes through
the engine's door), and the 🔍 Upscale button redraws a result at twice its size."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from bot.settings import BotSettings
from tests.discord.world import World, final, status_edits
from tests.fakes import FakeDiscord
from tests.pictures import MB, picture, pixels

pytestmark = pytest.mark.timeout(10)


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


# --- inpainting: /draw with a mask ---------------------------------------------------------------


def mask_png(mode: str = "RGBA") -> bytes:
    """A 40x24 mask as a paint program saves it: white strokes on black, in colour."""
    image = Image.new(mode, (40, 24), "black")
    image.paste("white", (10, 4, 30, 20))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


async def test_draw_with_an_image_and_a_mask_inpaints(world: World, dc: FakeDiscord) -> None:
    engine = await world.start()
    slash = await dc.slash(
        "draw",
        {
            "prompt": "a red hat --seed 5 --strength 0.8",
            "image": ("cat.png", picture()),
            "mask": ("mask.png", mask_png()),
        },
    )
    message = await final(dc, slash)
    assert message["content"].startswith(
        "Job 1 · Seed 5 · alpha · 4 steps · inpainted from your picture, strength 0.8"
    )
    record = engine.record(1)
    assert record is not None
    request = record.request
    assert request.init_image is not None and request.mask_image is not None
    assert request.init_image != request.mask_image
    with Image.open(request.mask_image) as kept:  # the door keeps a mask in grey levels
        assert kept.mode == "L" and kept.size == (40, 24)
        assert kept.getpixel((0, 0)) == 0 and kept.getpixel((20, 12)) == 255
    assert pixels(request.init_image) == pixels(picture())
    (drawn,) = world.gen.calls
    assert (drawn[0].init_image, drawn[0].mask_image) == (request.init_image, request.mask_image)
    assert dc.count("cdn_download") == 2


async def test_a_mask_without_an_image_is_refused_before_it_is_read(
    world: World, dc: FakeDiscord
) -> None:
    engine = await world.start()
    slash = await dc.slash("draw", {"prompt": "a red hat", "mask": ("mask.png", mask_png())})
    callback = await dc.wait_for("interaction_callback", dc.of(slash))
    assert callback.payload["data"]["flags"] == 64
    assert callback.payload["data"]["content"] == "Error: A mask needs the image it belongs to."
    assert dc.count("cdn_download", status=None) == 0 and engine.record(1) is None


# --- /upscale: a picture made bigger without drawing ---------------------------------------------


def labels(message: dict[str, Any]) -> list[str]:
    return [c["custom_id"] for row in message["components"] for c in row["components"]]


async def test_upscale_a_picture_without_drawing(world: World, dc: FakeDiscord) -> None:
    world.gen.hold()
    engine = await world.start()
    slash = await dc.slash(
        "upscale", {"image": ("cat.png", picture()), "scale": 3, "upscaler": "nearest"}
    )
    await dc.wait_until(lambda: any("Upscaling…" in s for s in status_edits(dc, slash)))
    world.gen.release()
    message = await final(dc, slash)
    assert message["content"] == "Job 1 · Upscaled ×3 with Nearest"
    record = engine.record(1)
    assert record is not None
    request = record.request
    assert (request.extras_upscale, request.hr_scale, request.hr_upscaler) == (True, 3.0, "Nearest")
    assert request.init_image is not None and pixels(request.init_image) == pixels(picture())
    (attachment,) = message["attachments"]
    with Image.open(io.BytesIO(dc.attachment_data(attachment))) as image:
        assert image.size == (120, 72)
        assert image.info["postprocessing"] == (
            "Postprocess upscale by: 3, Postprocess upscaler: Nearest"
        )
    # Nothing was drawn: nothing to reroll, vary or edit; it can be upscaled again.
    assert labels(message) == ["aidraw:upscale:1", "aidraw:delete:1"]
    again = await final(dc, await dc.click(message, "aidraw:upscale:1"))
    second = engine.record(2)
    assert second is not None and second.request.extras_upscale
    assert (second.request.hr_scale, second.request.hr_upscaler) == (2.0, "Nearest")
    assert again["content"] == "Job 2 · Upscaled ×2 with Nearest"
    (attachment,) = again["attachments"]
    with Image.open(io.BytesIO(dc.attachment_data(attachment))) as image:
        assert image.size == (240, 144)


async def test_upscale_defaults_and_its_upscaler_choices(world: World, dc: FakeDiscord) -> None:
    world.bot = {"upscaler": "Nearest"}
    engine = await world.start()
    payload = dc.autocomplete_payload(
        "upscale", {"image": picture(), "upscaler": "LAN"}, "upscaler"
    )
    await dc.dispatch("INTERACTION_CREATE", payload)
    callback = await dc.wait_for("interaction_callback", dc.of(payload))
    assert [c["value"] for c in callback.payload["data"]["choices"]] == ["Lanczos"]

    message = await final(dc, await dc.slash("upscale", {"image": picture()}))
    assert message["content"] == "Job 1 · Upscaled ×2 with Nearest"  # [bot] upscaler
    record = engine.record(1)
    assert record is not None and record.request.hr_scale == 2.0


@pytest.mark.parametrize(
    ("options", "refusal"),
    [
        (
            {"upscaler": "R-ESRGAN 4x+"},
            "Error: Unknown upscaler 'R-ESRGAN 4x+'. Installed: Lanczos, Nearest.",
        ),
        ({"upscaler": "Latent"}, "Error: Latent upscales latents while drawing: to upscale a"),
        ({"scale": 9}, "Error: Upscaling ×9 is not possible: use 1 to 4, e.g. 2."),
    ],
)
async def test_upscale_refusals_are_one_line_before_the_picture_is_read(
    world: World, dc: FakeDiscord, options: dict[str, Any], refusal: str
) -> None:
    engine = await world.start()
    # Discord itself keeps the scale within 1-4; the bot checks again.
    slash = await dc.slash("upscale", {"image": picture(), **options}, validate=False)
    callback = await dc.wait_for("interaction_callback", dc.of(slash))
    if callback.payload["type"] == 5:  # the door's refusals come after the download
        said = (await dc.wait_for("webhook_message_edit", dc.of(slash))).payload["content"]
    else:
        said = callback.payload["data"]["content"]
    assert said.startswith(refusal) and "\n" not in said
    assert engine.record(1) is None


async def test_an_upscale_too_large_is_refused(world: World, dc: FakeDiscord) -> None:
    engine = await world.start()
    big = io.BytesIO()
    Image.new("RGB", (800, 600)).save(big, format="PNG")
    slash = await dc.slash("upscale", {"image": big.getvalue(), "scale": 2})
    edit = await dc.wait_for("webhook_message_edit", dc.of(slash))
    assert edit.payload["content"] == (
        "Error: Upscaling 800x600 ×2 would make 1600x1200: at most 1,048,576 pixels and 2048 "
        "per side are allowed."
    )
    assert engine.record(1) is None


async def test_upscale_with_extras_upscales_the_result_without_drawing(
    world: World, dc: FakeDiscord
) -> None:
    world.bot = {"upscale_with": "extras", "upscaler": "Nearest"}
    engine = await world.start()
    message = await final(dc, await dc.slash("draw", {"prompt": "a cat --seed 42 --size 64x96"}))
    upscaled = await final(dc, await dc.click(message, "aidraw:upscale:1"))
    first, record = engine.record(1), engine.record(2)
    assert first is not None and record is not None
    request = record.request
    assert (request.extras_upscale, request.hr_scale, request.hr_upscaler) == (True, 2.0, "Nearest")
    assert request.init_image is not None
    assert pixels(request.init_image) == pixels(first.images[0].path)
    assert upscaled["content"] == "Job 2 · Upscaled ×2 with Nearest"
    (attachment,) = upscaled["attachments"]
    with Image.open(io.BytesIO(dc.attachment_data(attachment))) as image:
        assert image.size == (128, 192)
    assert len(world.gen.calls) == 2 and world.gen.calls[1][0].extras_upscale
