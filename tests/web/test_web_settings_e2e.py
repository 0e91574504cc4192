"""The web chat's settings dialog in headless Chromium, over the test harness (a real Engine with
a fake generate(), so no model loads): A1111 v1.9's samplers in groups, the schedule type, and
an old sampler name saved before either."""

from __future__ import annotations

import pytest

from bot.web.chat import USER
from engine.sampling.samplers import SAMPLER_GROUPS
from engine.sampling.schedules import SCHEDULE_LABELS
from tests.web.harness import TIMEOUT_S, Chat
from tests.web.test_web_e2e import CHROMIUM, CHROMIUM_ARGS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"needs Debian's chromium at {CHROMIUM}"),
]

# What a <select> offers: (its optgroup's label, or None outside one; value; text), in order.
OPTIONS_JS = """select => [...select.options].map(o => [
    o.parentElement.tagName === "OPTGROUP" ? o.parentElement.label : null, o.value, o.text])"""


async def test_settings_offer_the_samplers_in_groups_and_the_schedule_types(chat: Chat) -> None:
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=TIMEOUT_S * 1000)
    client = await chat.start()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            page = await browser.new_page(viewport={"width": 900, "height": 900}, locale="en-US")
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            await page.goto(str(client.make_url("/")))
            welcome = page.locator(".msg").first
            await expect(welcome).to_contain_text("Samplers — common: Euler a, Euler, DPM++ 2M, ")
            await expect(welcome).to_contain_text("--schedule TYPE: Automatic, Uniform, Karras, ")

            await page.click("#open-settings")
            sampler = page.locator("select[name=sampler]")
            schedule = page.locator("select[name=schedule_type]")
            await expect(sampler).to_be_visible()
            labels = {"common": "Common", "more": "More", "special": "Special"}
            grouped = [
                [labels[group], name, name]
                for group, names in SAMPLER_GROUPS.items()
                for name in names
            ]
            offered = await sampler.evaluate(OPTIONS_JS)
            assert offered == [[None, "", "default (Euler a)"], *grouped]
            offered = await schedule.evaluate(OPTIONS_JS)
            assert offered == [[None, "", "default (Automatic)"]] + [
                [None, label, label] for label in SCHEDULE_LABELS
            ]

            await sampler.select_option("DPM++ 2M")
            await schedule.select_option("Karras")
            await page.click("#save-prefs")
            await expect(page.locator("#settings")).to_be_hidden()
            saved = chat.store.get(USER)
            assert (saved.sampler, saved.schedule_type) == ("DPM++ 2M", "Karras")

            # A name from before the groups (an old one, with its schedule) stays chosen.
            chat.store.update(USER, sampler="DPM++ 2M Karras")
            await page.reload()
            await page.click("#open-settings")
            await expect(sampler).to_have_value("DPM++ 2M Karras")
            await expect(schedule).to_have_value("")  # the old name carries its schedule
            await page.click("#save-prefs")
            await expect(page.locator("#settings")).to_be_hidden()
            assert chat.store.get(USER).sampler == "DPM++ 2M Karras"
            assert errors == []
        finally:
            await browser.close()
