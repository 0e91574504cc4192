"""`aidraw draw --explain`: how a prompt is read, without a model and without drawing."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.cli import main


@pytest.fixture
def settings_file(tmp_path: Path) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(f'[engine]\nmodels_dir = "{tmp_path / "none"}"\noutput_dir = "{tmp_path}"\n')
    return path


def explain(settings_file: Path, text: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["--settings", str(settings_file), "draw", "--explain", text]) == 0
    return capsys.readouterr().out


def test_explain_shows_request_weights_and_chunks(
    settings_file: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = explain(settings_file, "1girl, {{silver hair}} --seed 3 --uc none", capsys)
    assert "  prompt: 'masterpiece, best quality, 1girl, (silver hair:1.1025)'" in out
    assert "  seed: 3" in out
    assert "note: Wrote NAI emphasis as A1111 weights: 1girl, (silver hair:1.1025)" in out
    assert "    1.1025  'silver hair'" in out
    assert "token chunks (1 x 75, emphasis Original):" in out
    assert "1: 10/75  masterpiece , best quality , 1 girl , (silver hair:1.1025)" in out
    assert not list(tmp_path.glob("*.png"))  # nothing drawn, no model needed


def test_explain_shows_prompt_editing_steps_and_breaks(
    settings_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = explain(settings_file, "a [cat:dog:0.5] BREAK b --steps 4 --no-quality", capsys)
    # A1111 uses the first prompt through step `when` (0-based), so for 3 of the 4 steps.
    assert "prompt (steps 1-3 of 4): 'a cat BREAK b'" in out
    assert "prompt (steps 4-4 of 4): 'a dog BREAK b'" in out
    assert "token chunks (2 x 75, emphasis Original):" in out
    assert "    -1      'BREAK'" in out


def test_explain_shows_long_prompts_in_several_chunks(
    settings_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = explain(settings_file, ", ".join(["cat"] * 60) + " --no-quality", capsys)
    assert "token chunks (2 x 75, emphasis Original):" in out
    assert "    1: 75/75  " in out and "    2: 44/75  " in out


def test_explain_reports_bad_text_in_one_line(
    settings_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--settings", str(settings_file), "draw", "--explain", "a --sede 3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aidraw: error: Unknown flag --sede. Did you mean --seed?")
    assert err.count("\n") == 1
