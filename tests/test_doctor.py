"""`aidraw doctor`: each problem on one line with its fix and exit code 1; clean (exit 0) on
the demo setup; tokens are never printed; the chat APIs are asked who the bot is (the fake
Discord and Telegram servers stand in for them)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bot.cli import main
from bot.doctor import examine, report
from tests.fakes.discord import FakeDiscord
from tests.fakes.telegram import FakeTelegram
from tests.test_cli import _broken_models

TOKEN_VARS = (
    "AIDRAW_DISCORD_TOKEN",
    "AIDRAW_TELEGRAM_TOKEN",
    "AIDRAW_WEB_TOKEN",
    "AIDRAW_API_TOKEN",
    "AIDRAW_API_AUTH",
    "AIDRAW_SETTINGS",
    "AIDRAW_TELEGRAM_API_URL",
    "AIDRAW_DISCORD_API_URL",
)


@pytest.fixture(autouse=True)
def no_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in TOKEN_VARS:
        monkeypatch.delenv(var, raising=False)


def write_settings(folder: Path, models: Path, extra: str = "") -> Path:
    path = folder / "settings.toml"
    path.write_text(f'[engine]\nmodels_dir = "{models}"\n{extra}', encoding="utf-8")
    return path


def doctor(settings: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, str]:
    code = main(["--settings", str(settings), "doctor", "--offline", *flags])
    return code, capsys.readouterr().out


def problems(out: str) -> list[tuple[str, str]]:
    """(FAIL line, the fix line under it) pairs."""
    lines = out.splitlines()
    return [
        (line, lines[i + 1].strip() if i + 1 < len(lines) else "")
        for i, line in enumerate(lines)
        if line.startswith("FAIL")
    ]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_demo_setup_is_clean(
    tmp_path: Path, demo_models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # As `make demo` leaves a checkout: the committed settings.toml, the demo model in models/.
    settings = tmp_path / "settings.toml"
    shutil.copy(Path(__file__).resolve().parent.parent / "settings.toml", settings)
    (tmp_path / "models").symlink_to(demo_models_dir, target_is_directory=True)
    code, out = doctor(settings, capsys, "--load")
    assert code == 0, out
    assert out.splitlines()[-1] == "no problems found"
    assert "ok    models     aidraw-demo [diffusers]" in out
    assert "torch 2.13.0" in out and "draws on CPU" in out
    assert "skip  chat APIs" in out
    assert "GiB free" in out


def test_a_broken_model_file_is_named_with_why_and_the_fix(
    tmp_path: Path, demo_models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = _broken_models(tmp_path / "models", demo_models_dir / "aidraw-demo")
    del broken["wrongshapes"]  # right names, wrong shapes: only loading it shows (below)
    code, out = doctor(write_settings(tmp_path, tmp_path / "models"), capsys)
    assert code == 1
    found = problems(out)
    for name, file in broken.items():
        [(line, fix)] = [(line, fix) for line, fix in found if f" {name} ({file})" in line]
        assert fix == f"fix: replace {file} with a complete copy, or move it out of " + str(
            tmp_path / "models"
        )
    said = {name: line for name, _ in broken.items() for line, _ in found if f" {name} (" in line}
    assert "the file is empty" in said["empty"]
    assert "not a readable .safetensors file" in said["truncated"]
    assert "the folder has no unet/" in said["nounet"]
    assert out.splitlines()[-1] == f"{len(broken)} problem(s) found (FAIL lines)"


@pytest.mark.slow
def test_load_finds_what_only_loading_shows(
    tmp_path: Path, demo_models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _broken_models(tmp_path / "models", demo_models_dir / "aidraw-demo")
    for path in (tmp_path / "models").iterdir():
        if path.is_dir():
            shutil.rmtree(path)
        elif path.name != "wrongshapes.safetensors":
            path.unlink()
    code, out = doctor(write_settings(tmp_path, tmp_path / "models"), capsys)
    assert code == 0, out  # its header looks like a checkpoint
    code, out = doctor(write_settings(tmp_path, tmp_path / "models"), capsys, "--load")
    assert code == 1
    [(line, _)] = [p for p in problems(out) if "wrongshapes" in p[0]]
    assert "wrongshapes (wrongshapes.safetensors): " in line


def test_a_missing_models_folder_says_how_to_make_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = doctor(write_settings(tmp_path, tmp_path / "nothing-here"), capsys)
    assert code == 1
    [(line, fix)] = problems(out)
    assert line.startswith("FAIL  models") and "nothing-here does not exist" in line
    assert fix.startswith("fix: run `aidraw build-demo` (or `make demo`)")


def test_a_bad_setting_is_named_with_its_fix_and_the_rest_is_still_checked(
    tmp_path: Path, demo_models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = write_settings(tmp_path, demo_models_dir, '[queue]\nmax_batch = "four"\n')
    code, out = doctor(settings, capsys)
    assert code == 1
    [(line, fix)] = problems(out)
    assert line.startswith("FAIL  settings") and "queue.max_batch" in line
    assert fix.startswith(f"fix: edit {settings}")
    assert "torch" in out and "disk" in out  # the other checks ran on the defaults


def test_settings_that_do_not_fit_this_machine(
    tmp_path: Path, demo_models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = tmp_path / "settings.toml"
    settings.write_text(
        f'[engine]\nmodels_dir = "{demo_models_dir}"\ndefault_model = "nai-full"\n'
        '[web]\nhost = "0.0.0.0"\n',
        encoding="utf-8",
    )
    code, out = doctor(settings, capsys)
    assert code == 1
    found = problems(out)
    assert [line.split()[1] for line, _ in found] == ["settings", "settings"]
    assert "default_model = 'nai-full' is not in" in found[0][0]
    assert found[0][1] == 'fix: set default_model to one of: aidraw-demo (or "" for the first one)'
    assert "[web] host = '0.0.0.0' is reachable from other machines" in found[1][0]
    assert "AIDRAW_WEB_TOKEN" in found[1][1]


def test_the_torch_device_must_exist(
    tmp_path: Path, demo_models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    settings = write_settings(tmp_path, demo_models_dir, '[device]\ndevice = "cuda"\n')
    code, out = doctor(settings, capsys)
    assert code == 1
    [(line, fix)] = problems(out)
    assert "device = 'cuda' but CUDA is not available" in line
    assert 'device = "auto"' in fix


async def test_the_chat_apis_are_asked_and_tokens_never_printed(
    tmp_path: Path, demo_models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = write_settings(tmp_path, demo_models_dir)
    async with FakeTelegram() as tg, FakeDiscord() as dc:
        for name, value in {**tg.env(), **dc.env()}.items():
            monkeypatch.setenv(name, value)
        out = report(await examine(settings, timeout_s=10))
        assert "ok    telegram   the API answers: the bot is aidraw_test_bot" in out
        assert "ok    discord    the API answers: the bot is " in out
        assert "set: Discord bot, Telegram bot;" in out
        assert tg.token not in out and dc.token not in out

        monkeypatch.setenv("AIDRAW_TELEGRAM_TOKEN", "999:WRONG")
        monkeypatch.setenv("AIDRAW_DISCORD_TOKEN", "wrong.discord.token")
        findings = await examine(settings, timeout_s=10)
        out = report(findings)
        assert "FAIL  telegram   the API refused the token (HTTP 401)" in out
        assert "fix: make a new token (Telegram's @BotFather) and set AIDRAW_TELEGRAM_TOKEN" in out
        assert "FAIL  discord    the API refused the token (HTTP 401)" in out
        assert "999:WRONG" not in out and "wrong.discord.token" not in out
    # Nothing listens any more: said in one line, with the token left out of the address.
    monkeypatch.setenv("AIDRAW_TELEGRAM_TOKEN", "999:WRONG")
    out = report(await examine(settings, timeout_s=2))
    assert "FAIL  telegram   " in out and "did not answer" in out
    assert "999:WRONG" not in out and "<token>/getMe" in out


def test_a_damaged_journal_says_restore_it(
    tmp_path: Path, demo_models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = write_settings(tmp_path, demo_models_dir)
    journal = tmp_path / "data" / "journal.sqlite3"
    journal.parent.mkdir()
    journal.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    code, out = doctor(settings, capsys)
    assert code == 1
    [(line, fix)] = problems(out)
    assert line.startswith("FAIL  journal") and "is damaged" in line
    assert "aidraw restore BACKUP_DIR" in fix


def test_the_journal_of_a_running_bot_is_in_use_not_damaged(
    tmp_path: Path, demo_models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from engine.journal import Journal

    settings = write_settings(tmp_path, demo_models_dir)
    journal = Journal(tmp_path / "data" / "journal.sqlite3")  # as the running engine holds it
    try:
        code, out = doctor(settings, capsys)
    finally:
        journal.close()
    assert code == 0, out
    assert "journal.sqlite3: in use by a running aidraw" in out
    code, out = doctor(settings, capsys)
    assert code == 0 and "0 job(s) waiting" in out
