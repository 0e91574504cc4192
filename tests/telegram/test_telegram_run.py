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
ROOT = Path(__file__).resolve().parents[2]


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
    assert photo.params["caption"].startswith(
        "Job 1 · Seed 3 · aidraw-demo · 2 steps\nUC: Low Quality + Bad Anatomy\n\nmasterpiece, "
    )
    assert photo.files["photo"].data.startswith(b"\x89PNG")
    commands = {method for method, *_ in tg.calls}
    assert {"getMe", "setMyCommands", "deleteWebhook", "sendMessage", "editMessageText"} <= commands
    # A clean stop: the last poll only confirms the updates, and the reply is journaled.
    assert [c.params["timeout"] for c in tg.calls if c.method == "getUpdates"][-1] == 0
    journal = Journal(tmp_path / "data" / "journal.sqlite3")
    record = journal.get(1)
    journal.close()
    assert record is not None and record.state == "done" and record.delivered


async def _start_bot(env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    """`python -m bot` from this checkout, its output appended to `log`."""
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", cwd=ROOT, env=env, stdout=out, stderr=out
        )


@pytest.mark.timeout(300)
async def test_a_kill_when_telegram_forgets_the_prompt_loses_nothing_and_draws_once(
    tmp_path: Path, demo_models_dir: Path
) -> None:
    settings = tmp_path / "settings.toml"
    settings.write_text(
        f'[engine]\nmodels_dir = "{demo_models_dir}"\n[device]\ndevice = "cpu"\n'
        "[queue]\nwarm_up = false\n",
        encoding="utf-8",
    )
    log = tmp_path / "bot.log"
    async with FakeTelegram() as tg:
        env = {
            **os.environ,
            **tg.env(),
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "AIDRAW_SETTINGS": str(settings),
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
        }
        env.pop("AIDRAW_DISCORD_TOKEN", None)
        bot = await _start_bot(env, log)
        try:
            # 1. kill -9 the moment Telegram is told the prompt is handled (and forgets it). The
            # status message answers slowly, so a confirmation sent before the job is journaled
            # comes while the handler still waits for it.
            await tg.wait_for("getUpdates", timeout=90)
            tg.stall_next("sendMessage", "answer", seconds=0.5)
            first = tg.push_text(USER, USER, "1girl --size 64x64 --steps 2 --seed 3")
            tg.on_confirm(first["update_id"], bot.kill)
            assert await asyncio.wait_for(bot.wait(), 30) == -signal.SIGKILL
            bot = await _start_bot(env, log)
            await tg.wait_for("sendPhoto", lambda c: "Seed 3 " in c.params["caption"], timeout=90)

            # 2. kill -9 when the confirmation is on its way but never reaches Telegram: the
            # prompt comes again after the restart, and its job is in the journal already.
            second = tg.push_text(USER, USER, "1girl --size 64x64 --steps 2 --seed 4")
            tg.on_confirm(second["update_id"], bot.kill, lost=True)
            assert await asyncio.wait_for(bot.wait(), 30) == -signal.SIGKILL
            bot = await _start_bot(env, log)
            await tg.wait_for("sendPhoto", lambda c: "Seed 4 " in c.params["caption"], timeout=90)
            await tg.wait_for("deleteMessage", timeout=30)  # status 2: the reply is recorded
        finally:
            if bot.returncode is None:
                bot.send_signal(signal.SIGTERM)
            await asyncio.wait_for(bot.wait(), 60)
    output = log.read_text(errors="replace")
    assert bot.returncode == 0, output
    captions = [c.params["caption"] for c in tg.calls if c.method == "sendPhoto"]
    assert [caption.split(" · ")[1] for caption in captions] == ["Seed 3", "Seed 4"], output
    journal = Journal(tmp_path / "data" / "journal.sqlite3")
    records = [journal.get(job_id) for job_id in (1, 2, 3)]
    journal.close()
    assert [(r.request.seed, r.delivered) for r in records if r is not None] == [
        (3, True),
        (4, True),
    ]
