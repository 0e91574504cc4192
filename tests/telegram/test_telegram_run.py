"""`aidraw run` with AIDRAW_TELEGRAM_TOKEN, as a subprocess against the fake Bot API."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from engine.journal import Journal
from tests.fakes import FakeTelegram

# Importing torch and diffusers alone takes 6 s of CPU; on a shared 2-core machine, 15 s.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
USER = 42


def _command() -> list[str]:
    script = Path(sys.executable).with_name("aidraw")
    return [str(script), "run"] if script.exists() else [sys.executable, "-m", "bot"]


async def test_aidraw_run_draws_on_telegram_and_stops_on_sigterm(
    tmp_path: Path, demo_models_dir: Path
) -> None:
    settings = tmp_path / "settings.toml"
    settings.write_text(
        f'[engine]\nmodels_dir = "{demo_models_dir}"\n\n[queue]\nwarm_up = false\n',
        encoding="utf-8",
    )
    async with FakeTelegram() as tg:
        env = {
            **os.environ,
            **tg.env(),
            "NO_PROXY": "127.0.0.1,localhost",  # httpx honours proxies even for loopback
            "no_proxy": "127.0.0.1,localhost",
            "AIDRAW_SETTINGS": str(settings),
            "HF_HUB_OFFLINE": "1",
        }
        env.pop("AIDRAW_DISCORD_TOKEN", None)
        proc = await asyncio.create_subprocess_exec(
            *_command(),
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            await tg.wait_for("getUpdates", timeout=90)
            tg.push_text(USER, USER, "1girl, smile --size 64x64 --steps 2 --seed 3")
            photo = await tg.wait_for("sendPhoto", timeout=60)
            await tg.wait_for("deleteMessage")  # the status message, once the reply is recorded
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            output, _ = await asyncio.wait_for(proc.communicate(), 60)
    log = output.decode(errors="replace")
    assert proc.returncode == 0, log
    assert photo.params["caption"].startswith("Seed 3 · aidraw-demo · 2 steps\n\nmasterpiece, ")
    assert photo.files["photo"].data.startswith(b"\x89PNG")
    commands = {method for method, *_ in tg.calls}
    assert {"getMe", "setMyCommands", "deleteWebhook", "sendMessage", "editMessageText"} <= commands
    # A clean stop: the last poll only confirms the updates, and the reply is journaled.
    assert [c.params["timeout"] for c in tg.calls if c.method == "getUpdates"][-1] == 0
    journal = Journal(tmp_path / "data" / "journal.sqlite3")
    record = journal.get(1)
    journal.close()
    assert record is not None and record.state == "done" and record.delivered
