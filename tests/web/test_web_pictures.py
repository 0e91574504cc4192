"""Pictures in, in the web chat (the HTTP API over a real Engine with a fake generate()): a
drawing's body may carry a picture to draw from (img2img) and a mask painted over it
(inpainting), checked by their size before they are read and by the engine's door after;
"/upscale" with a picture makes it bigger without drawing (A1111's Extras); the Upscale button
redraws an image at twice its size (or, with [bot] upscale_with = "extras", upscales it)."""

from __future__ import annotations

import base64
import dataclasses
import io
from typing import Any

import pytest
from PIL import Image

from bot.settings import Settings
from tests.pictures import MB, PngGenerate, picture, pixels, png_bomb
from tests.web.harness import JSON, Chat, of, post, socket, until


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


async def test_a_picture_sent_with_the_prompt_is_drawn_from(chat: Chat) -> None:
    client = await chat.start()
    ws = await socket(client)
    sent = picture()
    body = {"text": "make it blue --seed 4 --strength 0.5", "image": data_url(sent)}
    job = (await post(client, "/api/draw", body))["job"]
    assert job["said"] == body["text"] and job["picture"] == f"/pictures/{job['id']}.png"
    [*_, done] = await until(ws, of(job["id"], "done"))
    assert done["job"]["images"][0]["caption"] == (
        "Seed 4 · alpha · 4 steps · from a picture, strength 0.5"
    )
    (call,) = chat.fake.calls
    request = call[0]
    assert request.init_image is not None and request.denoising_strength == 0.5
    assert pixels(request.init_image) == pixels(sent)
    # The page shows what was sent with it, also after a reload (plain base64 works too).
    shown = await client.get(job["picture"])
    assert shown.status == 200 and pixels(await shown.read()) == pixels(sent)
    state = await (await client.get("/api/state")).json()
    assert state["history"][0]["picture"] == job["picture"]
    assert state["max_image_bytes"] == 20 * MB
    plain = {"text": "blue", "image": base64.b64encode(picture("JPEG")).decode()}
    assert (await post(client, "/api/draw", plain))["job"]["picture"] is not None
    for missing in ("/pictures/999.png", "/pictures/x.png"):
        assert (await client.get(missing)).status == 404


async def test_an_animated_webp_is_drawn_from_its_first_frame(chat: Chat) -> None:
    client = await chat.start()
    frames = [Image.new("RGB", (16, 16), c) for c in ((200, 10, 10), (10, 10, 200))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    body = {"text": "blue", "image": data_url(buffer.getvalue(), "image/webp")}
    reply = await post(client, "/api/draw", body)
    assert reply["notes"] == ["Your picture is animated: only its first frame is used."]


async def test_pictures_the_door_refuses_are_a_chat_error(chat: Chat) -> None:
    client = await chat.start()
    too_many = await post(client, "/api/draw", {"text": "x", "image": data_url(png_bomb())}, 400)
    assert too_many["error"].startswith("Error: The image is ")  # e.g. "far too large"
    assert too_many["error"].endswith(": at most 1,048,576 pixels are allowed.")
    unreadable = "Error: That is not a PNG, JPEG or WebP image this bot can read."
    junk = {"text": "x", "image": data_url(b"not a picture")}
    assert await post(client, "/api/draw", junk, 400) == {"error": unreadable}
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, "GIF")
    for mime in ("image/gif", "image/png"):  # said to be a GIF, or a GIF said to be a PNG
        body = {"text": "x", "image": data_url(gif.getvalue(), mime)}
        assert await post(client, "/api/draw", body, 400) == {"error": unreadable}
    zh = await client.post("/api/draw?lang=zh", json={"text": "x", "image": data_url(png_bomb())})
    assert (await zh.json())["error"].startswith("出错了：图片")
    bad = await client.post("/api/draw", json={"text": "x", "image": "!!not base64!!"})
    assert bad.status == 400
    # A bad prompt is refused before the picture is looked at.
    flag = await post(
        client, "/api/draw", {"text": "x --sede 1", "image": data_url(png_bomb())}, 400
    )
    assert flag["error"].startswith("Error: Unknown flag --sede.")
    assert chat.engine is not None and chat.engine.jobs() == [] and chat.fake.calls == []
    assert not (chat.tmp_path / "results" / "inputs").exists()


async def test_a_picture_over_the_limit_is_refused_by_its_size(chat: Chat) -> None:
    client = await chat.start(limits={"max_image_bytes": 64 * 1024})
    # Under the body's cap, over the picture's: the door says so.
    over = {"text": "x", "image": data_url(b"\0" * (70 * 1024))}
    assert await post(client, "/api/draw", over, 400) == {
        "error": "Error: The image is 0.1 MB: at most 0.1 MB is allowed."
    }
    # Over the body's cap: refused by what it says it is, unread.
    huge = io.BytesIO(b'{"text": "x", "image": "' + b"A" * (2 * MB) + b'"}')
    response = await client.post("/api/draw", data=huge, headers=JSON)
    assert response.status == 413
    assert (await response.json())["error"].startswith("Error: The image is 1.4 MB")
    assert chat.engine is not None and chat.engine.jobs() == []


async def test_upscale_redraws_an_image_with_hires_fix(chat: Chat) -> None:
    client = await chat.start()
    ws = await socket(client)
    job = (await post(client, "/api/draw", {"text": "cat --seed 5 --n 2 --steps 2"}))["job"]
    await until(ws, of(job["id"], "done"))
    upscaled = (await post(client, f"/api/jobs/{job['id']}/upscale", {"image": 2}))["job"]
    assert upscaled["origin"] == {"job": job["id"], "image": 2, "upscale": True}
    [*_, done] = await until(ws, of(upscaled["id"], "done"))
    assert done["job"]["images"][0]["caption"].endswith(" · hires ×2, strength 0.45")
    assert chat.engine is not None
    first, record = chat.engine.record(job["id"]), chat.engine.record(upscaled["id"])
    assert first is not None and record is not None
    assert record.request == dataclasses.replace(
        first.request,
        seed=6,  # image 2's
        batch_size=1,
        enable_hr=True,
        hr_scale=2.0,
        denoising_strength=Settings().bot.upscale_strength,
    )
    missing = await post(client, f"/api/jobs/{job['id']}/upscale", {"image": 3}, 400)
    assert missing == {"error": f"Error: Job {job['id']} has no image 3."}
    truly = await client.post(f"/api/jobs/{job['id']}/upscale", json={"image": True})
    assert truly.status == 400


async def test_upscale_over_the_pixel_limit_is_refused(chat: Chat) -> None:
    client = await chat.start()
    ws = await socket(client)
    job = (await post(client, "/api/draw", {"text": "cat --size 768x768 --steps 1"}))["job"]
    await until(ws, of(job["id"], "done"))
    refused = await post(client, f"/api/jobs/{job['id']}/upscale", {"image": 1}, 400)
    assert refused["error"].startswith("Error: Hires fix would draw 1536x1536: at most")
    assert chat.engine is not None and chat.engine.jobs() == []


async def test_upscale_of_a_picture_drawn_from_a_picture_starts_from_the_result(
    chat: Chat,
) -> None:
    chat.fake = PngGenerate()
    client = await chat.start()
    ws = await socket(client)
    body = {"text": "blue --size 128x96 --steps 1", "image": data_url(picture())}
    job = (await post(client, "/api/draw", body))["job"]
    await until(ws, of(job["id"], "done"))
    upscaled = (await post(client, f"/api/jobs/{job['id']}/upscale", {"image": 1}))["job"]
    assert upscaled["said"] is None and upscaled["picture"] is None  # a button's
    await until(ws, of(upscaled["id"], "done"))
    assert chat.engine is not None
    first, record = chat.engine.record(job["id"]), chat.engine.record(upscaled["id"])
    assert first is not None and record is not None
    request = record.request
    assert request.init_image is not None and request.init_image != first.request.init_image
    assert pixels(request.init_image) == pixels(first.images[0].path)
    assert (request.width, request.height, request.enable_hr) == (256, 192, False)


# --- inpainting: a mask painted over the picture -------------------------------------------------


def brush_mask() -> bytes:
    """What the page's brush sends: white strokes on black, RGBA, at the canvas's size."""
    image = Image.new("RGBA", (80, 48), (0, 0, 0, 255))
    image.paste((255, 255, 255, 255), (20, 8, 60, 40))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


async def test_a_mask_sent_with_the_picture_inpaints(chat: Chat) -> None:
    client = await chat.start()
    ws = await socket(client)
    body = {"text": "a hat --seed 3", "image": data_url(picture()), "mask": data_url(brush_mask())}
    job = (await post(client, "/api/draw", body))["job"]
    assert job["mask"] == f"/masks/{job['id']}.png"
    [*_, done] = await until(ws, of(job["id"], "done"))
    assert done["job"]["images"][0]["caption"] == (
        "Seed 3 · alpha · 4 steps · inpainted from your picture, strength 0.75"
    )
    (call,) = chat.fake.calls
    request = call[0]
    assert request.init_image is not None and request.mask_image is not None
    with Image.open(request.mask_image) as kept:  # grey levels, as the door keeps masks
        assert kept.mode == "L" and kept.size == (80, 48)
        assert kept.getpixel((0, 0)) == 0 and kept.getpixel((40, 24)) == 255
    shown = await client.get(job["mask"])
    assert shown.status == 200
    with Image.open(io.BytesIO(await shown.read())) as image:
        assert image.mode == "L"
    state = await (await client.get("/api/state")).json()
    assert state["history"][0]["mask"] == job["mask"]
    for missing in ("/masks/999.png", "/masks/x.png"):
        assert (await client.get(missing)).status == 404
    # A drawing without a mask has none to show.
    plain = (await post(client, "/api/draw", {"text": "x", "image": data_url(picture())}))["job"]
    assert plain["mask"] is None
    await until(ws, of(plain["id"], "done"))
    assert (await client.get(f"/masks/{plain['id']}.png")).status == 404


async def test_a_mask_without_a_picture_is_refused(chat: Chat) -> None:
    client = await chat.start()
    refused = await post(client, "/api/draw", {"text": "x", "mask": data_url(brush_mask())}, 400)
    assert refused == {"error": "Error: A mask needs the image it belongs to."}
    bad = await client.post("/api/draw", json={"text": "x", "mask": 5})
    assert bad.status == 400 and "mask must be" in await bad.text()
    assert chat.engine is not None and chat.engine.jobs() == []


# --- /upscale: a picture made bigger without drawing ---------------------------------------------


async def size_of(client: Any, url: str) -> tuple[int, int]:
    response = await client.get(url)
    assert response.status == 200
    with Image.open(io.BytesIO(await response.read())) as image:
        return image.size


async def test_upscale_a_picture_without_drawing(chat: Chat) -> None:
    chat.fake = PngGenerate()
    chat.fake.hold()
    client = await chat.start()
    ws = await socket(client)
    body = {"text": "/upscale", "image": data_url(picture())}
    job = (await post(client, "/api/draw", body))["job"]
    assert job["said"] == "/upscale" and job["picture"] == f"/pictures/{job['id']}.png"
    assert job["request"]["extras_upscale"] is True
    running = await until(ws, of(job["id"], "progress", "running"))
    assert running[-1]["job"]["status"] == "Upscaling…"
    chat.fake.release()
    [*_, done] = await until(ws, of(job["id"], "done"))
    (image,) = done["job"]["images"]
    assert image["caption"] == "Upscaled ×2 with Lanczos"
    assert image["infotext"] == "Postprocess upscale by: 2, Postprocess upscaler: Lanczos"
    assert await size_of(client, image["url"]) == (80, 48)
    (call,) = chat.fake.calls
    request = call[0]
    assert (request.extras_upscale, request.hr_scale, request.hr_upscaler) == (True, 2.0, "Lanczos")
    assert request.init_image is not None and pixels(request.init_image) == pixels(picture())

    # A scale and an upscaler; its Upscale button upscales it again, with the same upscaler.
    body = {"text": "/upscale 3 nearest", "image": data_url(picture())}
    job = (await post(client, "/api/draw", body))["job"]
    [*_, done] = await until(ws, of(job["id"], "done"))
    assert done["job"]["images"][0]["caption"] == "Upscaled ×3 with Nearest"
    again = (await post(client, f"/api/jobs/{job['id']}/upscale", {"image": 1}))["job"]
    [*_, done] = await until(ws, of(again["id"], "done"))
    assert done["job"]["images"][0]["caption"] == "Upscaled ×2 with Nearest"
    assert await size_of(client, done["job"]["images"][0]["url"]) == (240, 144)


@pytest.mark.parametrize(
    ("text", "refusal"),
    [
        ("/upscale", "Error: /upscale needs a picture: add one with + Picture"),
        ("/upscale 0.5", "Error: Upscaling ×0.5 is not possible: use 1 to 4, e.g. 2."),
        ("/upscale 2 4x-Foo", "Error: Unknown upscaler '4x-Foo'. Installed: Lanczos, Nearest."),
    ],
)
async def test_upscale_refusals(chat: Chat, text: str, refusal: str) -> None:
    client = await chat.start()
    body: dict[str, Any] = {"text": text}
    if text != "/upscale":
        body["image"] = data_url(picture())
    refused = await post(client, "/api/draw", body, 400)
    assert refused["error"].startswith(refusal)
    assert chat.engine is not None and chat.engine.jobs() == []
    assert not (chat.tmp_path / "results" / "inputs").exists()


async def test_the_upscale_button_with_extras_upscales_the_image(chat: Chat) -> None:
    chat.fake = PngGenerate()
    client = await chat.start(bot={"upscale_with": "extras", "upscaler": "Nearest"})
    ws = await socket(client)
    job = (await post(client, "/api/draw", {"text": "cat --size 64x96 --steps 1"}))["job"]
    await until(ws, of(job["id"], "done"))
    upscaled = (await post(client, f"/api/jobs/{job['id']}/upscale", {"image": 1}))["job"]
    assert upscaled["origin"] == {"job": job["id"], "image": 1, "upscale": True}
    [*_, done] = await until(ws, of(upscaled["id"], "done"))
    assert done["job"]["images"][0]["caption"] == "Upscaled ×2 with Nearest"
    assert await size_of(client, done["job"]["images"][0]["url"]) == (128, 192)
    assert chat.engine is not None
    first, record = chat.engine.record(job["id"]), chat.engine.record(upscaled["id"])
    assert first is not None and record is not None
    assert record.request.extras_upscale and record.request.init_image is not None
    assert pixels(record.request.init_image) == pixels(first.images[0].path)
