"""The Discord bot on the real demo model: in-process through run_discord, and as the
`aidraw run` entry point in a subprocess (a /draw, then a reroll after restarting the process)."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot.discord.bot import run_discord
from bot.prefs import UserSettingsStore
from bot.settings import BotSettings, Settings
from engine.engine import Engine
from engine.generate import generate
from engine.infotext import infotext_from_image, parse_infotext
from engine.models import ModelRegistry
from engine.queue import QueueConfig
from tests.discord.world import ADMIN_ID
from tests.fakes import FakeDiscord, point_at
from tests.fakes.discord import ADMINISTRATOR

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def infotext_of(png: bytes) -> dict[str, str]:
    with Image.open(io.BytesIO(png)) as image:
        assert image.size == (64, 64)
        text = infotext_from_image(image)
    assert text is not None
    info = parse_infotext(text)
    return {"Prompt": info.prompt, **info.params}


async def result_of(dc: FakeDiscord, interaction: dict[str, Any]) -> dict[str, Any]:
    def done() -> bool:
        message = dc.original(interaction)
        return message is not None and any(
            a["filename"].startswith("aidraw-") for a in message["attachments"]
        )

    await dc.wait_until(done, timeout=30)
    message = dc.original(interaction)
    assert message is not None
    return message


@pytest.fixture
async def dc(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(heartbeat_interval=1.0) as fake:
        point_at(monkeypatch, fake)
        yield fake


@pytest.mark.timeout(60)
async def test_draw_on_the_demo_model(
    dc: FakeDiscord, demo_model: Any, demo_models_dir: Path, tmp_path: Path
) -> None:
    queue = QueueConfig(
        journal=str(tmp_path / "journal.sqlite3"),
        results_dir=str(tmp_path / "results"),
        warm_up=False,
    )
    settings = Settings(queue=queue, bot=BotSettings(progress_interval_s=0.1), root=tmp_path)
    registry = ModelRegistry(demo_models_dir)
    engine: Engine[Any] = Engine(
        queue, registry=registry, load=lambda name: demo_model, generate=generate
    )
    store = UserSettingsStore(":memory:")
    tasks = [
        asyncio.create_task(engine.run()),
        asyncio.create_task(run_discord(engine, settings, store, dc.token, guild_ready_timeout=0)),
    ]
    try:
        text = "1girl, silver hair --seed 5 --steps 3 --size 64x64 --sampler 'DPM++ 2M'"
        slash = await dc.slash("draw", {"prompt": text})
        message = await result_of(dc, slash)
    finally:
        tasks[1].cancel()
        await asyncio.wait({tasks[1]})
        await engine.close()
        await tasks[0]
        store.close()
    (attachment,) = message["attachments"]
    png = dc.attachment_data(attachment)
    info = infotext_of(png)
    assert info["Prompt"] == "masterpiece, best quality, 1girl, silver hair"
    assert info["Seed"] == "5" and info["Steps"] == "3" and info["Sampler"] == "DPM++ 2M"
    assert info["Size-1"] == "64" and info["Model"] == "aidraw-demo"
    assert png == (tmp_path / "results" / "000001-1.png").read_bytes()
    assert message["content"].startswith("Job 1 · Seed 5 · aidraw-demo · 3 steps")


async def _start_bot(env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", cwd=ROOT, env=env, stdout=out, stderr=out
        )


async def _stop_bot(process: asyncio.subprocess.Process) -> int:
    process.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(process.wait(), 20)


@pytest.mark.timeout(120)
async def test_aidraw_run_subprocess_draws_and_rerolls_after_a_restart(
    dc: FakeDiscord, demo_models_dir: Path, tmp_path: Path
) -> None:
    settings = tmp_path / "settings.toml"
    settings.write_text(
        f'[engine]\nmodels_dir = "{demo_models_dir}"\n'
        '[device]\ndevice = "cpu"\n'
        "[queue]\nwarm_up = false\n"
        "[bot]\nprogress_interval_s = 0.2\n",
        encoding="utf-8",
    )
    env = {
        **os.environ,
        **dc.env(),
        "AIDRAW_SETTINGS": str(settings),
        "OMP_NUM_THREADS": "1",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    env.pop("AIDRAW_TELEGRAM_TOKEN", None)
    log = tmp_path / "bot.log"
    process = await _start_bot(env, log)
    try:
        await dc.wait_for("gateway_identify", timeout=60)
        text = "1girl --seed 11 --steps 2 --size 64x64"
        slash = await dc.slash("draw", {"prompt": text})
        message = await result_of(dc, slash)
        assert infotext_of(dc.attachment_data(message["attachments"][0]))["Seed"] == "11"
    finally:
        code = await _stop_bot(process)
    assert code == 0, log.read_text(errors="replace")
    assert (tmp_path / "data" / "journal.sqlite3").is_file()  # beside settings.toml

    process = await _start_bot(env, log)
    try:
        await dc.wait_for("gateway_identify", timeout=60)
        click = await dc.click(message, "aidraw:reroll:1")
        rerolled = await result_of(dc, click)
    finally:
        code = await _stop_bot(process)
    assert code == 0, log.read_text(errors="replace")
    info = infotext_of(dc.attachment_data(rerolled["attachments"][0]))
    assert info["Prompt"] == "masterpiece, best quality, 1girl" and info["Seed"] != "11"
    assert info["Steps"] == "2"


@pytest.mark.timeout(90)
async def test_admin_sets_the_demo_models_vae_and_the_next_drawing_uses_it(
    dc: FakeDiscord, demo_models_dir: Path, tmp_path: Path
) -> None:
    from tests.demo_addons import DEMO, VAE_FILE, addon_models_dir, demo_engine, running

    admin = {"user_id": ADMIN_ID, "permissions": ADMINISTRATOR}
    engine = demo_engine(
        addon_models_dir(demo_models_dir, tmp_path), tmp_path, admins=(f"discord:{ADMIN_ID}",)
    )
    settings = Settings(bot=BotSettings(progress_interval_s=0.1), root=tmp_path)
    store = UserSettingsStore(":memory:")

    async def answer(interaction: dict[str, Any]) -> dict[str, Any]:
        """What the user was shown: the immediate reply, or the followup after a defer."""
        callback = await dc.wait_for("interaction_callback", dc.of(interaction))
        if callback.payload["type"] != 5:
            return dict(callback.payload["data"])
        followup = await dc.wait_for("followup_send", dc.of(interaction), timeout=30)
        return dict(followup.payload)

    async def choices(command: str, typed: str) -> list[str]:
        payload = dc.autocomplete_payload(command, {"name": typed}, "name", user_id=ADMIN_ID)
        await dc.dispatch("INTERACTION_CREATE", payload)
        callback = await dc.wait_for("interaction_callback", dc.of(payload))
        assert callback.payload["type"] == 8
        return [choice["value"] for choice in callback.payload["data"]["choices"]]

    async with running(engine):
        bot = asyncio.create_task(
            run_discord(engine, settings, store, dc.token, guild_ready_timeout=0)
        )
        try:
            refused = await answer(await dc.slash("model vae", {"name": "demo-vae"}))
            assert refused["content"] == "Only the bot's admins can do that."
            assert refused["flags"] == 64

            assert await choices("model vae", "") == [VAE_FILE, "None", "Automatic"]
            assert await choices("model vae", "DEMO") == [VAE_FILE]
            assert await choices("model hypernetwork", "") == ["none"]

            shown = await answer(await dc.slash("model vae", **admin))
            assert shown["content"] == (
                f"{DEMO} draws with VAE: None (the model's own) · hypernetwork: none.\n"
                f"VAEs: {VAE_FILE}\nHypernetworks: -"
            )

            missing = await answer(await dc.slash("model vae", {"name": "demo-vea"}, **admin))
            assert missing["content"].startswith("Error: Unknown VAE 'demo-vea'.")
            assert missing["content"].endswith(f"Installed: {VAE_FILE}.")
            assert missing["flags"] == 64
            hypernet = {"name": "anime", "strength": 0.8}
            missing = await answer(await dc.slash("model hypernetwork", hypernet, **admin))
            assert missing["content"].startswith("Error: Unknown hypernetwork 'anime'.")
            assert engine.model_info(DEMO).defaults.vae == "None"

            done = await answer(await dc.slash("model vae", {"name": "demo-vae"}, **admin))
            assert done["content"].startswith(f"New jobs on {DEMO} now draw with VAE: demo-vae")
            assert done["content"].endswith(" · hypernetwork: none.")

            slash = await dc.slash("draw", {"prompt": "1girl --seed 5 --steps 2 --size 64x64"})
            message = await result_of(dc, slash)
        finally:
            bot.cancel()
            await asyncio.wait({bot})
            store.close()
    info = infotext_of(dc.attachment_data(message["attachments"][0]))
    assert info["VAE"] == VAE_FILE and info["Model"] == DEMO
