"""The web chat's picture tools in headless Chromium, over the test harness (a real Engine with a
fake generate(), so no model loads): a mask painted with the brush goes with the drawing, and
⤢ Upscale makes a picture bigger without drawing."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.web.harness import TIMEOUT_S, Chat
from tests.web.test_web_e2e import CHROMIUM, CHROMIUM_ARGS
from tests.web.test_web_pictures import PngGenerate

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"needs Debian's chromium at {CHROMIUM}"),
]


async def drag(page: Any, selector: str, points: list[tuple[float, float]]) -> None:
    """A stroke through `points` (fractions of the element's box)."""
    box = await page.locator(selector).bounding_box()
    assert box is not None
    at = [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in points]
    await page.mouse.move(*at[0])
    await page.mouse.down()
    for point in at[1:]:
        await page.mouse.move(*point, steps=5)
    await page.mouse.up()


async def test_paint_a_mask_then_draw_and_upscale_a_picture(chat: Chat, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=TIMEOUT_S * 1000)
    chat.fake = PngGenerate()
    client = await chat.start()
    picture = tmp_path / "picture.png"
    Image.new("RGB", (120, 80), (200, 60, 40)).save(picture)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            page = await browser.new_page(viewport={"width": 900, "height": 900}, locale="en-US")
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            await page.goto(str(client.make_url("/")))
            jobs = page.locator(".job")

            # A picture: ✎ Mask and ⤢ Upscale appear; a typed prompt hides ⤢ Upscale.
            await page.set_input_files("#picture", str(picture))
            await expect(page.locator("#paint")).to_be_visible()
            await expect(page.locator("#upscale-picture")).to_be_visible()

            # The brush: a stroke across the middle, cleared, then one on the left half.
            await page.click("#paint")
            await expect(page.locator("#mask-editor")).to_be_visible()
            await drag(page, "#mask-editor canvas", [(0.1, 0.5), (0.9, 0.5)])
            await page.click("#mask-clear")
            await page.fill("#brush", "60")
            await drag(page, "#mask-editor canvas", [(0.1, 0.2), (0.1, 0.8), (0.3, 0.8)])
            await page.click("#mask-done")
            await expect(page.locator("#mask-editor")).to_be_hidden()
            await expect(page.locator("#attached img.mask")).to_be_visible()

            await page.fill("#input", "a red hat --seed 3")
            await expect(page.locator("#upscale-picture")).to_be_hidden()
            await page.press("#input", "Enter")
            await expect(jobs.nth(0)).to_have_attribute("data-state", "done")
            await expect(jobs.nth(0).locator("figcaption")).to_have_text(
                "Seed 3 · alpha · 4 steps · inpainted from your picture, strength 0.75"
            )
            await expect(page.locator(".msg.user img.mask")).to_have_count(1)
            request = chat.fake.calls[0][0]
            assert request.init_image is not None and request.mask_image is not None
            with Image.open(request.mask_image) as mask:
                assert mask.mode == "L"
                assert mask.size[0] / mask.size[1] == pytest.approx(1.5, rel=0.02)
                width, height = mask.size
                assert mask.getpixel((int(width * 0.1), int(height * 0.5))) == 255  # painted
                assert mask.getpixel((int(width * 0.9), int(height * 0.5))) == 0  # cleared
                assert mask.getpixel((int(width * 0.9), int(height * 0.1))) == 0

            # ⤢ Upscale: the picture made bigger without drawing; nothing to vary or reroll.
            await page.set_input_files("#picture", str(picture))
            await expect(page.locator("#attached img.mask")).to_be_hidden()  # a new mask
            await page.click("#upscale-picture")
            upscaled = jobs.nth(1)
            await expect(upscaled).to_have_attribute("data-state", "done")
            await expect(upscaled.locator("figcaption")).to_have_text("Upscaled ×2 with Lanczos")
            await expect(upscaled.locator(".title")).to_contain_text("×2 · Lanczos")
            await expect(upscaled.locator("button.variations")).to_be_hidden()
            await expect(upscaled.locator("button.reroll")).to_be_hidden()
            await expect(upscaled.locator("button.upscale")).to_be_visible()
            src = await upscaled.locator("img.result").get_attribute("src")
            response = await client.get(src or "")
            with Image.open(io.BytesIO(await response.read())) as image:
                assert image.size == (240, 160)
            assert chat.fake.calls[1][0].extras_upscale
            # Its own ⤢ Upscale ×2: again, with its upscaler.
            await upscaled.locator("button.upscale").click()
            await expect(jobs.nth(2)).to_have_attribute("data-state", "done")
            await expect(jobs.nth(2).locator(".title")).to_contain_text("job 2, image 1 upscaled")
            assert chat.fake.calls[2][0].extras_upscale
            assert errors == []
        finally:
            await browser.close()
