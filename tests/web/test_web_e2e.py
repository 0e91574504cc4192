"""`aidraw run` with no bot token, on the demo model, driven in headless Chromium as a new user
would: a bad flag, a drawing and its PNG infotext, a reroll, progress, cancelling; and the chat
keeping its newest message in view, at desktop and phone widths. `make screenshot` writes the
README's docs/screenshot.png."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
# No browser can be downloaded here: Debian's chromium, kept off the network it cannot reach.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
# `make screenshot` sets this to refresh the README's picture; other runs keep it untouched.
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "screenshot.png"
UPDATE_SCREENSHOT = os.environ.get("AIDRAW_UPDATE_SCREENSHOT") == "1"
TIMEOUT_S = 120  # the CPU may be shared with other test runs
ADDRESS = re.compile(r"aidraw web chat: (http://\S+/)$")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"needs Debian's chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)",
    ),
]


@pytest.fixture
def server(tmp_path: Path, demo_models_dir: Path) -> Iterator[str]:
    """`aidraw run` in a subprocess; yields the address it printed, then stops it with SIGINT."""
    settings = tmp_path / "settings.toml"
    settings.write_text(
        f'[engine]\nmodels_dir = "{demo_models_dir}"\n'
        f'[queue]\njournal = "{tmp_path / "journal.sqlite3"}"\n'
        f'results_dir = "{tmp_path / "results"}"\npreview_every_steps = 2\n'
        "[web]\nport = 0\n",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIDRAW_")}
    env |= {"HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    script = Path(sys.executable).with_name("aidraw")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "bot.cli"]
    proc = subprocess.Popen(
        [*command, "--settings", str(settings), "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    output: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        while True:
            try:
                line = lines.get(timeout=TIMEOUT_S)
            except queue.Empty:
                pytest.fail("aidraw run printed no address:\n" + "".join(output))
            if line is None:
                pytest.fail("aidraw run ended:\n" + "".join(output))
            if match := ADDRESS.search(line.strip()):
                break
        yield match[1]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        reader.join(TIMEOUT_S)
        assert proc.stdout is not None
        proc.stdout.close()
    assert code == 0, "".join(output)


DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
# The chat log scrolled to its end, with the end of its newest message inside it.
NEWEST_IN_VIEW = """() => {
    const log = document.querySelector("#log");
    const newest = log.lastElementChild.getBoundingClientRect();
    const shown = log.getBoundingClientRect();
    const left = log.scrollHeight - log.scrollTop - log.clientHeight;
    return left <= 2 && newest.bottom > shown.top && newest.bottom <= shown.bottom + 1;
}"""


def late_images(route: Any) -> None:
    """Images that arrive after the chat has drawn (and scrolled): a busy server's."""
    response = route.fetch()
    time.sleep(0.3)
    route.fulfill(response=response)


def settle(page: Any) -> None:
    """Every image in the chat has loaded (its height known), then two frames went by."""
    page.wait_for_function("() => [...document.images].every(image => image.complete)")
    page.evaluate(
        "() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))"
    )


def scroll_top(page: Any) -> float:
    return float(page.locator("#log").evaluate("log => log.scrollTop"))


def send(page: Any, text: str) -> None:
    page.fill("#input", text)
    page.press("#input", "Enter")


def downloaded_infotext(page: Any, link: Any) -> str:
    with page.expect_download() as download:
        link.click()
    with Image.open(download.value.path()) as image:
        assert image.format == "PNG"
        return str(image.info["parameters"])


def test_a_new_user_draws_rerolls_and_cancels_in_the_browser(server: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_S * 1000)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(
                viewport={"width": 900, "height": 1240}, locale="en-US", accept_downloads=True
            )
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(server)
            expect(page.locator("#model")).to_have_text("Model: aidraw-demo")
            jobs = page.locator(".job")

            # A prompt with flags: the image's PNG carries the infotext that was asked for.
            send(page, "1girl, silver hair, smile --seed 1234 --steps 20 --sampler Euler")
            first = jobs.nth(0)
            expect(first).to_have_attribute("data-state", "done")
            expect(first.locator(".status")).to_have_text("Done.")
            infotext = downloaded_infotext(page, first.locator("a.download"))
            assert infotext.startswith("masterpiece, best quality, 1girl, silver hair, smile\n")
            assert (
                "\nSteps: 20, Sampler: Euler, Schedule type: Automatic, CFG scale: 11, Seed: 1234, "
                "Size: 128x128, " in infotext
            )
            assert "Model: aidraw-demo" in infotext
            expect(first.locator("pre.infotext")).to_have_text(infotext)
            expect(first.locator("figcaption")).to_have_text("Seed 1234 · aidraw-demo · 20 steps")

            # Reroll: the same request with another seed.
            first.locator("button.reroll").click()
            second = jobs.nth(1)
            expect(second).to_have_attribute("data-state", "done")
            seed = int(second.locator("figure").get_attribute("data-seed") or "")
            assert seed != 1234
            rerolled = downloaded_infotext(page, second.locator("a.download"))
            assert rerolled == infotext.replace("Seed: 1234,", f"Seed: {seed},")
            shot = page.screenshot(
                path=str(SCREENSHOT if UPDATE_SCREENSHOT else tmp_path / "shot.png")
            )
            assert shot.startswith(b"\x89PNG")

            # A bad flag: a clear error in the chat, and nothing queued.
            send(page, "1girl --sed 5")
            expect(page.locator(".msg.error")).to_contain_text(
                "Error: Unknown flag --sed. Did you mean --seed?"
            )
            expect(jobs).to_have_count(2)

            # A picture to draw from: chosen, sent with the prompt, shown in the user's message;
            # then that drawing upscaled (its own picture at twice the size).
            picture = tmp_path / "picture.png"
            Image.new("RGB", (96, 64), (200, 60, 40)).save(picture)
            page.set_input_files("#picture", str(picture))
            expect(page.locator("#attached")).to_be_visible()
            send(page, "1girl, red dress --seed 5 --steps 4 --strength 0.6")
            expect(page.locator("#attached")).to_be_hidden()
            expect(page.locator(".msg.user img.picture")).to_have_count(1)
            drawn = jobs.nth(2)
            expect(drawn).to_have_attribute("data-state", "done")
            expect(drawn.locator("figcaption")).to_contain_text("from a picture, strength 0.6")
            drawn.locator("button.upscale").click()
            upscaled = jobs.nth(3)
            expect(upscaled).to_have_attribute("data-state", "done")
            expect(upscaled.locator(".title")).to_contain_text("job 3, image 1 upscaled")
            expect(upscaled.locator("figcaption")).to_contain_text("strength 0.45")

            # Progress of a long drawing (bar, step count, latent preview); a job queued behind
            # it is cancelled, then the drawing one too.
            send(page, "1girl, long hair --seed 7 --size 128x128 --steps 100")
            long = jobs.nth(4)
            expect(long).to_have_attribute("data-state", "running")
            expect(long.locator(".status")).to_contain_text("Drawing… step")
            expect(long.locator("img.preview")).to_be_visible()
            assert long.locator("progress").evaluate("bar => bar.value") > 0
            send(page, "cat ears --size 64x64 --steps 4")
            waiting = jobs.nth(5)
            expect(waiting.locator(".status")).to_contain_text("Queued: #1 in line")
            waiting.locator("button.cancel").click()
            expect(waiting).to_have_attribute("data-state", "cancelled")
            expect(waiting.locator(".status")).to_have_text("Cancelled.")
            expect(waiting.locator("button.reroll")).to_be_visible()
            long.locator("button.cancel").click()
            expect(long).to_have_attribute("data-state", "cancelled")
            assert long.locator("img.result").count() == 0
            assert errors == []
        finally:
            browser.close()


def test_the_newest_message_stays_in_view_unless_the_user_scrolled_up(server: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_S * 1000)
    typed = ["1girl, smile --seed 1 --steps 4", "/draw cat ears --seed 2 --steps 4"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=DESKTOP, locale="en-US")
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.route("**/images/**", late_images)
            page.goto(server)
            jobs = page.locator(".job")
            # History that overflows the log at both widths even before its images load: a
            # drawing, its reroll and another drawing.
            send(page, typed[0])
            expect(jobs.nth(0)).to_have_attribute("data-state", "done")
            jobs.nth(0).locator("button.reroll").click()
            expect(jobs.nth(1)).to_have_attribute("data-state", "done")
            send(page, typed[1])
            expect(jobs.nth(2)).to_have_attribute("data-state", "done")
            settle(page)
            assert page.evaluate(NEWEST_IN_VIEW), "a new drawing landed out of view"

            for viewport, count in [(DESKTOP, 3), (PHONE, 4)]:
                page.set_viewport_size(viewport)
                page.reload()
                # History shows what was typed, not the prompt with its quality tags; a reroll
                # is a button's job, as before the reload.
                expect(jobs).to_have_count(count)
                expect(page.locator(".msg.user")).to_have_text(typed)
                expect(jobs.nth(1).locator(".title")).to_contain_text("new seed for job 1")
                settle(page)
                log = page.locator("#log")
                assert log.evaluate("log => log.scrollHeight > log.clientHeight + 400")
                assert page.evaluate(NEWEST_IN_VIEW), f"{viewport}: reloaded out of view"

                # Scrolled up to reroll an old drawing: its answer does not pull the user down,
                # a button points at it.
                log.hover()
                page.mouse.wheel(0, -10000)
                page.wait_for_function("() => document.querySelector('#log').scrollTop === 0")
                old = jobs.nth(0).locator("button.reroll")
                old.scroll_into_view_if_needed()
                reading = scroll_top(page)
                old.click()
                expect(jobs.nth(count)).to_have_attribute("data-state", "done")
                settle(page)
                assert scroll_top(page) == reading, f"{viewport}: yanked down"
                expect(page.locator("#newer")).to_be_visible()
                page.locator("#newer").click()
                expect(page.locator("#newer")).to_be_hidden()
                settle(page)
                assert page.evaluate(NEWEST_IN_VIEW), f"{viewport}: the reroll is out of view"

                # What the user sends, and its answer, is in view wherever they had scrolled.
                page.mouse.wheel(0, -10000)
                page.wait_for_function("() => document.querySelector('#log').scrollTop === 0")
                send(page, "1girl --sed 5")
                expect(page.locator(".msg.error")).to_have_count(1)
                settle(page)
                assert page.evaluate(NEWEST_IN_VIEW), f"{viewport}: the error is out of view"
            assert errors == []
        finally:
            browser.close()
