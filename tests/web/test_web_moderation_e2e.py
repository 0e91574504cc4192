"""The web chat page in headless Chromium with the moderation layer: a result the image check
flags (a stub that flags everything) is blurred until clicked; the settings dialog shows the
user's quota and the styles."""

from __future__ import annotations

import pytest

from tests.classifier_stub import FLAG_ALL
from tests.web.harness import TIMEOUT_S, Chat
from tests.web.test_web_e2e import CHROMIUM, CHROMIUM_ARGS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"needs Debian's chromium at {CHROMIUM}"),
]


async def test_a_flagged_result_is_blurred_until_clicked(chat: Chat) -> None:
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=TIMEOUT_S * 1000)
    tables = {
        "moderation": {"image_check": FLAG_ALL},
        "web": {"local_admin": False},
        "places": {"web": {"daily_quota": 5}},
    }
    client = await chat.start(tables=tables)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            page = await browser.new_page(viewport={"width": 900, "height": 900}, locale="en-US")
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            await page.goto(str(client.make_url("/")))
            await page.fill("#input", "a cat --seed 3")
            await page.click("#send")
            image = page.locator("img.result").first
            await expect(image).to_have_class("result spoiler")
            assert "blur" in await image.evaluate("img => getComputedStyle(img).filter")
            await expect(page.locator(".job .status").last).to_contain_text(
                "Image check: FEMALE_BREAST_EXPOSED (0.91)."
            )
            await image.click()
            await expect(image).to_have_class("result")

            await page.reload()  # the state after the drawing: a page opened now
            await page.click("#open-settings")
            await expect(page.locator("#quota")).to_have_text(
                "Quota: 1 image(s) in the last 24 hours of 5."
            )
            await expect(page.locator("#styles")).to_contain_text("No styles yet.")
            assert errors == []
        finally:
            await browser.close()
