"""Pictures in, on Telegram, through the real PTB client and the fake Bot API: a photo or an
image file with the prompt as its caption, or a prompt replying to a picture, is an img2img job
(the picture goes through the engine's door first; nothing too big is downloaded); /upscale as
a picture's caption or a reply to one makes it bigger without drawing (A1111's Extras); and the
🔍 Upscale button under every result redraws that image with hires fix (or, with [bot]
upscale_with = "extras", upscales its PNG)."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot.settings import BotSettings
from engine.request import GenerationRequest
from tests.pictures import MB, PngGenerate, picture, pixels
from tests.telegram.harness import GROUP, OTHER, QUALITY, USER, Harness, buttons

pytestmark = pytest.mark.timeout(10)
SIZE = (48, 32)  # the sent picture's size


def animated(fmt: str, **save: Any) -> bytes:
    frames = [Image.new("RGB", (16, 16), color) for color in ((200, 10, 10), (10, 10, 200))]
    buffer = io.BytesIO()
    frames[0].save(
        buffer, format=fmt, save_all=True, append_images=frames[1:], duration=100, **save
    )
    return buffer.getvalue()


def drawn(h: Harness, n: int = -1) -> GenerationRequest:
    """The request of the n-th generate() call's first job."""
    return h.fake.calls[n][0]


# --- pictures in ---------------------------------------------------------------------------------


async def test_a_photo_with_a_caption_is_drawn_from(h: Harness) -> None:
    await h.start()
    sent = picture(size=SIZE)
    update = h.tg.push_photo(USER, USER, sent, caption="make it blue --seed 3")
    photo = await h.tg.wait_for("sendPhoto")

    request = drawn(h)
    assert request.prompt == QUALITY + "make it blue" and request.seed == 3
    assert request.init_image is not None
    stored = Path(request.init_image)
    assert stored.parent == h.tmp_path / "results" / "inputs"
    assert pixels(str(stored)) == pixels(sent)  # the door's PNG of exactly the sent picture
    # The largest size was the one downloaded, once.
    largest = update["message"]["photo"][-1]["file_id"]
    (get_file,) = [c for c in h.tg.calls if c.method == "getFile"]
    assert get_file.params["file_id"] == largest
    assert h.tg.count("downloadFile") == 1
    assert photo.params["caption"].startswith(
        "Job 1 · Seed 3 · alpha · 4 steps · from a picture, strength 0.75\n"
    )
    assert photo.params["reply_parameters"]["message_id"] == update["message"]["message_id"]


async def test_an_image_file_with_draw_in_a_group_takes_its_flags(h: Harness) -> None:
    await h.start()
    sent = picture("WEBP", size=SIZE, lossless=True)
    h.tg.push_photo(GROUP, USER, sent, caption="a holiday photo", chat_type="supergroup")
    h.tg.push_photo(GROUP, USER, sent, caption="/draw@other_bot blue", chat_type="supergroup")
    h.tg.push_photo(
        GROUP,
        USER,
        sent,
        caption="/draw@aidraw_test_bot blue --strength 0.4",
        as_document=True,
        filename="holiday.webp",
        chat_type="supergroup",
    )
    photo = await h.tg.wait_for("sendPhoto")
    assert "from a picture, strength 0.4" in photo.params["caption"]
    (call,) = h.fake.calls  # the two other pictures were not for this bot
    request = call[0]
    assert request.prompt == QUALITY + "blue" and request.denoising_strength == 0.4
    assert request.init_image is not None and pixels(request.init_image) == pixels(sent)


async def test_a_prompt_replying_to_a_picture_draws_from_it(h: Harness) -> None:
    await h.start()
    sent = picture("JPEG", size=SIZE, quality=95)
    shared = h.tg.push_photo(USER, USER, sent)  # no caption: how to use it
    hint = await h.reply(USER)
    assert hint.startswith("To draw from this picture, send it again with the prompt as its")
    assert h.tg.count("getFile") == 0 and h.fake.calls == []

    h.tg.push_text(USER, USER, "1girl --seed 8", reply_to=shared["message"]["message_id"])
    await h.tg.wait_for("sendPhoto")
    request = drawn(h)
    assert request.init_image is not None and request.seed == 8
    with Image.open(io.BytesIO(sent)) as original, Image.open(request.init_image) as stored:
        assert stored.size == original.size and stored.format == "PNG"

    # /draw with a prompt, replying to a picture, in a group too.
    in_group = h.tg.push_photo(GROUP, OTHER, sent, chat_type="supergroup")  # not for the bot
    h.tg.push_text(
        GROUP,
        USER,
        "/draw a fox",
        chat_type="supergroup",
        reply_to=in_group["message"]["message_id"],
    )
    await h.tg.wait_for("sendPhoto", lambda c: c.params["chat_id"] == GROUP)
    assert drawn(h).prompt == QUALITY + "a fox" and drawn(h).init_image == request.init_image


async def test_a_picture_over_the_limit_is_refused_without_downloading_it(h: Harness) -> None:
    engine = await h.start()
    h.tg.push_photo(USER, USER, picture(size=SIZE), caption="make it blue", file_size=50 * MB)
    refused = await h.reply(USER)
    assert refused == "Error: The image is 50.0 MB: at most 20.0 MB is allowed."
    h.tg.push_photo(
        USER, USER, picture(size=SIZE), caption="blue", as_document=True, file_size=21 * MB
    )
    assert (await h.reply(USER)).startswith("Error: The image is 21.0 MB")
    assert h.tg.count("getFile", status=None) == 0 and h.tg.count("downloadFile") == 0
    assert engine.jobs() == [] and h.fake.calls == []


async def test_a_bad_prompt_downloads_nothing(h: Harness) -> None:
    await h.start()
    h.tg.push_photo(USER, USER, picture(size=SIZE), caption="blue --sede 5")
    assert (await h.reply(USER)).startswith("Error: Unknown flag --sede.")
    assert h.tg.count("getFile", status=None) == 0


async def test_files_that_are_no_picture_it_reads_are_refused_in_one_line(h: Harness) -> None:
    engine = await h.start()
    unreadable = "Error: That is not a PNG, JPEG or WebP image this bot can read."
    # Named .png, but not a picture: downloaded, then refused by the door.
    h.tg.push_photo(USER, USER, b"not a picture at all", caption="blue", as_document=True)
    assert await h.reply(USER) == unreadable
    assert h.tg.count("downloadFile") == 1
    # An animated GIF said to be one: refused before downloading (GIF is not read).
    gif = animated("GIF")
    h.tg.push_photo(USER, USER, gif, caption="blue", as_document=True, filename="cat.gif")
    assert await h.reply(USER) == unreadable
    assert h.tg.count("downloadFile") == 1
    # The same GIF named .png: the door knows it is a GIF.
    h.tg.push_photo(USER, USER, gif, caption="blue", as_document=True, filename="cat.png")
    assert await h.reply(USER) == unreadable
    assert engine.jobs() == [] and h.fake.calls == []


async def test_an_animated_webp_is_drawn_from_its_first_frame_and_says_so(h: Harness) -> None:
    await h.start()
    webp = animated("WEBP", lossless=True)
    h.tg.push_photo(USER, USER, webp, caption="blue", as_document=True, filename="a.webp")
    photo = await h.tg.wait_for("sendPhoto")
    assert "Your picture is animated: only its first frame is used." in photo.params["caption"]
    request = drawn(h)
    assert request.init_image is not None
    assert pixels(request.init_image) == bytes([200, 10, 10]) * 16 * 16  # the first frame


# --- the Upscale button --------------------------------------------------------------------------


async def test_upscale_redraws_that_image_with_hires_fix(h: Harness) -> None:
    engine = await h.start()
    h.tg.push_text(USER, USER, "a cat --seed 10 --n 2 --size 256x384")
    keys = await h.tg.wait_for("sendMessage", lambda c: "u:1:1" in buttons(c))
    (message,) = [m for m in h.tg.sent(USER) if "u:1:1" in str(m.get("reply_markup"))]
    assert keys.params["text"].startswith("Job 1, pictures 1–2")

    h.tg.push_callback(USER, OTHER, message["message_id"], "u:1:1")  # the second picture
    await h.tg.wait_for("answerCallbackQuery")
    photo = await h.tg.wait_for("sendPhoto")
    request = drawn(h)
    first = engine.record(1)
    assert first is not None
    assert request == dataclasses.replace(
        first.request,
        seed=11,  # that image's own
        batch_size=1,
        enable_hr=True,
        hr_scale=2.0,
        denoising_strength=BotSettings().upscale_strength,
        requester=f"telegram:{OTHER}",
    )
    assert "hires ×2, strength 0.45" in photo.params["caption"]
    assert "u:2:0" in buttons(photo)  # an upscale can be upscaled again (from its picture)


async def test_upscale_over_the_pixel_limit_is_refused_as_an_alert(h: Harness) -> None:
    await h.start()
    h.tg.push_text(USER, USER, "a cat --seed 10 --size 768x768")
    await h.tg.wait_for("sendPhoto")
    (result,) = [m for m in h.tg.sent(USER) if "photo" in m]
    h.tg.push_callback(USER, USER, result["message_id"], "u:1:0")
    alert = await h.tg.wait_for("answerCallbackQuery")
    assert alert.params["show_alert"] is True
    assert alert.params["text"].startswith("Error: Hires fix would draw 1536x1536: at most")
    assert len(h.fake.calls) == 1


async def test_upscale_of_a_picture_drawn_from_a_picture_starts_from_that_result(
    h: Harness,
) -> None:
    h.fake = PngGenerate()
    engine = await h.start()
    h.tg.push_photo(
        USER, USER, picture(size=SIZE), caption="blue --size 128x96 --seed 4 --strength 0.6"
    )
    await h.tg.wait_for("sendPhoto")
    (result,) = [m for m in h.tg.sent(USER) if "photo" in m]
    h.tg.push_callback(USER, USER, result["message_id"], "u:1:0")
    photo = await h.tg.wait_for("sendPhoto")
    request = drawn(h)
    first = engine.record(1)
    assert first is not None and request.init_image != first.request.init_image
    assert request.init_image is not None
    assert pixels(request.init_image) == pixels(first.images[0].path)  # the result itself
    assert (request.width, request.height, request.seed) == (256, 192, 4)
    assert request.denoising_strength == 0.45 and not request.enable_hr
    assert "from a picture, strength 0.45" in photo.params["caption"]


# --- /upscale: a picture made bigger without drawing ---------------------------------------------


def sent_photo(call: Any) -> Image.Image:
    """The picture a sendPhoto call uploaded."""
    return Image.open(io.BytesIO(call.files["photo"].data))


async def test_upscale_as_a_photos_caption_upscales_it_without_drawing(h: Harness) -> None:
    h.fake = PngGenerate()
    h.fake.hold()
    engine = await h.start()
    sent = picture(size=SIZE)
    h.tg.push_photo(USER, USER, sent, caption="/upscale")
    await h.tg.wait_for("editMessageText", lambda c: c.params["text"] == "Upscaling…")
    h.fake.release()
    photo = await h.tg.wait_for("sendPhoto")
    (call,) = h.fake.calls
    request = call[0]
    assert (request.extras_upscale, request.hr_scale, request.hr_upscaler) == (True, 2.0, "Lanczos")
    assert request.init_image is not None and pixels(request.init_image) == pixels(sent)
    assert request.requester == f"telegram:{USER}"
    assert photo.params["caption"] == "Job 1 · Upscaled ×2 with Lanczos"
    with sent_photo(photo) as image:
        assert image.size == (96, 64)
    assert buttons(photo) == ["u:1:0", "d:1:0"]  # nothing drawn: no reroll or variations
    record = engine.record(1)
    assert record is not None and record.images[0].infotext == (
        "Postprocess upscale by: 2, Postprocess upscaler: Lanczos"
    )


async def test_upscale_replying_to_a_picture_takes_a_scale_and_an_upscaler(h: Harness) -> None:
    h.fake = PngGenerate()
    await h.start()
    sent = picture("JPEG", size=SIZE, quality=95)
    shared = h.tg.push_photo(GROUP, OTHER, sent, chat_type="supergroup")
    h.tg.push_text(
        GROUP,
        USER,
        "/upscale 3 nearest",
        chat_type="supergroup",
        reply_to=shared["message"]["message_id"],
    )
    photo = await h.tg.wait_for("sendPhoto")
    request = drawn(h)
    assert (request.extras_upscale, request.hr_scale, request.hr_upscaler) == (True, 3.0, "Nearest")
    assert photo.params["caption"] == "Job 1 · Upscaled ×3 with Nearest"
    with sent_photo(photo) as image:
        assert image.size == (144, 96)


async def test_upscale_replying_to_a_result_starts_from_its_png(h: Harness) -> None:
    h.fake = PngGenerate()
    engine = await h.start(bot={"upscaler": "Nearest"})
    h.tg.push_text(USER, USER, "a cat --seed 9 --size 64x96")
    await h.tg.wait_for("sendPhoto")
    (result,) = [m for m in h.tg.sent(USER) if "photo" in m]
    downloads = h.tg.count("downloadFile")
    h.tg.push_text(USER, USER, "/upscale ×1.5", reply_to=result["message_id"])
    photo = await h.tg.wait_for("sendPhoto", lambda c: "Upscaled" in c.params["caption"])
    first = engine.record(1)
    request = drawn(h)
    assert first is not None and request.init_image is not None
    assert pixels(request.init_image) == pixels(first.images[0].path)  # the PNG, not the JPEG
    assert h.tg.count("downloadFile") == downloads
    assert photo.params["caption"] == "Job 2 · Upscaled ×1.5 with Nearest"  # [bot] upscaler
    with sent_photo(photo) as image:
        assert image.size == (96, 144)


@pytest.mark.parametrize(
    ("caption", "refusal"),
    [
        ("/upscale 9", "Error: Upscaling ×9 is not possible: use 1 to 4, e.g. 2."),
        (
            "/upscale 2 R-ESRGAN 4x+",
            "Error: Unknown upscaler 'R-ESRGAN 4x+'. Installed: Lanczos, Nearest.",
        ),
        (
            "/upscale Lanczso",
            "Error: Unknown upscaler 'Lanczso'. Did you mean: Lanczos? Installed: Lanczos, "
            "Nearest.",
        ),
        (
            "/upscale Latent",
            "Error: Latent upscales latents while drawing: to upscale a picture use Lanczos, "
            "Nearest or an upscaler file.",
        ),
    ],
)
async def test_upscale_refusals_are_one_line_and_download_nothing(
    h: Harness, caption: str, refusal: str
) -> None:
    engine = await h.start()
    h.tg.push_photo(USER, USER, picture(size=SIZE), caption=caption)
    assert await h.reply(USER) == refusal
    assert h.tg.count("getFile", status=None) == 0 and engine.jobs() == []


async def test_upscale_without_a_picture_says_how(h: Harness) -> None:
    await h.start()
    h.tg.push_text(USER, USER, "/upscale 2")
    usage = await h.reply(USER)
    assert usage.startswith("Send /upscale [SCALE] [UPSCALER] as the caption of a picture")
    assert usage.endswith("Upscalers here: Lanczos, Nearest.")
    assert h.fake.calls == []


async def test_an_upscale_too_large_is_refused_in_one_line(h: Harness) -> None:
    engine = await h.start()
    big = io.BytesIO()
    Image.new("RGB", (800, 600)).save(big, format="PNG")
    h.tg.push_photo(USER, USER, big.getvalue(), caption="/upscale", as_document=True)
    assert await h.reply(USER) == (
        "Error: Upscaling 800x600 ×2 would make 1600x1200: at most 1,048,576 pixels and 2048 "
        "per side are allowed."
    )
    assert engine.jobs() == [] and engine.record(1) is None


async def test_the_upscale_button_with_extras_upscales_the_result(h: Harness) -> None:
    h.fake = PngGenerate()
    engine = await h.start(bot={"upscale_with": "extras"})
    h.tg.push_text(USER, USER, "a cat --seed 10 --size 64x96")
    await h.tg.wait_for("sendPhoto")
    (result,) = [m for m in h.tg.sent(USER) if "photo" in m]
    h.tg.push_callback(USER, USER, result["message_id"], "u:1:0")
    photo = await h.tg.wait_for("sendPhoto", lambda c: "Upscaled" in c.params["caption"])
    request = drawn(h)
    first = engine.record(1)
    assert first is not None and request.init_image is not None
    assert (request.extras_upscale, request.hr_scale, request.hr_upscaler) == (True, 2.0, "Lanczos")
    assert pixels(request.init_image) == pixels(first.images[0].path)
    assert request.requester == f"telegram:{USER}"
    assert photo.params["caption"] == "Job 2 · Upscaled ×2 with Lanczos"
    with sent_photo(photo) as image:
        assert image.size == (128, 192)
    # An upscale's own button upscales it again, with its upscaler.
    (again,) = [
        m for m in h.tg.sent(USER) if "photo" in m and m["message_id"] != result["message_id"]
    ]
    h.tg.push_callback(USER, USER, again["message_id"], "u:2:0")
    third = await h.tg.wait_for("sendPhoto", lambda c: c.params["caption"].startswith("Job 3"))
    with sent_photo(third) as image:
        assert image.size == (256, 384)
