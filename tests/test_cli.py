"""`aidraw draw | models | build-demo` as a user runs them."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.cli import configure_logging, main

pytestmark = pytest.mark.slow


@pytest.fixture
def settings_file(tmp_path: Path, demo_models_dir: Path) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(f'[engine]\nmodels_dir = "{demo_models_dir}"\n', encoding="utf-8")
    return path


def _offline_env() -> dict[str, str]:
    # Any attempt to reach a hub fails fast: nothing may be downloaded.
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}


def test_draw_writes_a_png_with_infotext_offline(settings_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "cat.png"
    proc = subprocess.run(
        [sys.executable, "-m", "bot.cli", "--settings", str(settings_file), "draw",
         "1girl, smile --seed 7 --steps 3 --size 64x64", "--out", str(out)],
        capture_output=True, text=True, env=_offline_env(), timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    with Image.open(out) as image:
        info = image.info["parameters"]
    # NAI's defaults: quality tags before the prompt, the "Low Quality + Bad Anatomy" UC preset.
    assert info.startswith("masterpiece, best quality, 1girl, smile\nNegative prompt: lowres, ")
    assert "\nSteps: 3, Sampler: Euler a, Schedule type: Automatic, CFG scale: 11, Seed: 7," in info
    assert "Size: 64x64, Model hash: " in info


def test_draw_json_reports_path_seed_request_timings(
    settings_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.png"
    text = "cat --steps 2 --size 64x64 --n 2"
    assert main(["--settings", str(settings_file), "draw", text, "--out", str(out), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(d["path"]).name for d in lines] == ["x-1.png", "x-2.png"]
    assert lines[1]["seed"] == lines[0]["seed"] + 1
    assert lines[0]["request"]["num_inference_steps"] == 2
    assert lines[0]["request"]["model"] == "aidraw-demo"
    assert lines[0]["timings"]["total_s"] > 0
    for d in lines:
        image = Image.open(io.BytesIO(Path(d["path"]).read_bytes()))
        assert f"Seed: {d['seed']}," in image.info["parameters"]


def test_draw_from_a_picture_and_paste_its_infotext_back(
    settings_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    picture = tmp_path / "in.jpg"
    Image.new("RGB", (96, 80), (200, 40, 40)).save(picture)  # resized to 64x64 ("just resize")
    args = ["--settings", str(settings_file), "draw"]
    text = "1girl --steps 4 --size 64x64 --seed 3 --strength 0.3"
    assert main([*args, text, "--init-image", str(picture), "--out", str(tmp_path / "a.png")]) == 0
    with Image.open(tmp_path / "a.png") as drawn:
        infotext = drawn.info["parameters"]
        pixels = np.asarray(drawn.convert("RGB"), dtype=float)
    assert "Denoising strength: 0.3" in infotext
    assert pixels[..., 0].mean() > pixels[..., 2].mean() + 40  # still the red picture at 0.3
    # The infotext pasted back, with the same picture, draws the same PNG.
    again = tmp_path / "b.png"
    assert main([*args, infotext, "--init-image", str(picture), "--out", str(again)]) == 0
    assert again.read_bytes() == (tmp_path / "a.png").read_bytes()
    # The door, and a strength without a picture.
    (tmp_path / "fake.png").write_text("not a picture")
    capsys.readouterr()
    assert main([*args, "cat", "--init-image", str(tmp_path / "fake.png")]) == 2
    assert "not a PNG, JPEG or WebP image" in capsys.readouterr().err
    assert main([*args, "cat --strength 0.5"]) == 2
    assert "strength is for an image" in capsys.readouterr().err
    assert main([*args, "cat", "--mask", str(picture)]) == 2
    assert "--mask needs --init-image" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cat --sede 3", "Unknown flag --sede. Did you mean --seed?"),
        ("cat --size 4096x4096", "width 4096 is not allowed"),
        ("cat --steps 0", "steps 0 is not allowed: use 1 to 150"),
        ("cat --model aidraw-dem", "Unknown model 'aidraw-dem'. Did you mean: aidraw-demo?"),
        ("cat --model ../etc", "Invalid model name '../etc'"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(
    settings_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    out = tmp_path / "never.png"
    assert main(["--settings", str(settings_file), "draw", text, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aidraw: error: ") and message in err
    assert err.count("\n") == 1
    assert not out.exists()


def test_no_model_tells_how_to_get_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = tmp_path / "settings.toml"
    settings.write_text('[engine]\nmodels_dir = "empty"\n', encoding="utf-8")
    assert main(["--settings", str(settings), "draw", "cat"]) == 2
    assert "run `make demo`" in capsys.readouterr().err


def test_bad_settings_stop_with_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = tmp_path / "settings.toml"
    settings.write_text("[limits]\nmax_steps = -1\n", encoding="utf-8")
    assert main(["--settings", str(settings), "models"]) == 2
    assert "limits.max_steps: -1 is out of range" in capsys.readouterr().err


def test_models_lists_the_registry(settings_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--settings", str(settings_file), "models"]) == 0
    out = capsys.readouterr().out
    demo = next(
        line for line in out.splitlines() if line.startswith("  aidraw-demo  [diffusers, SD-1.x] ")
    )
    hash_, rest = demo.removeprefix("  aidraw-demo  [diffusers, SD-1.x] ").split("  ", 1)
    assert len(hash_) == 10 and int(hash_, 16) >= 0  # A1111's short hash
    assert rest == "128x128, Euler a, 28 steps, CFG 11, clip skip 2, its own VAE"
    for kind in ("VAEs in VAE/", "hypernetworks in hypernetworks/", "LoRAs in Lora/"):
        assert f"{kind}: (none)" in out


def test_build_demo_if_missing_skips_when_a_model_exists(
    settings_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--settings", str(settings_file), "build-demo", "--if-missing"]) == 0
    assert "no demo build needed" in capsys.readouterr().out


def test_build_demo_replaces_a_demo_built_from_older_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`make demo` after an update: the random-weight demo of an older release is rebuilt."""
    from engine.demo.model import DEMO_NAME, is_outdated, save_demo_model

    models = tmp_path / "models"
    old = save_demo_model(models, random_seed=0)
    assert is_outdated(old)
    settings = tmp_path / "settings.toml"
    settings.write_text(f'[engine]\nmodels_dir = "{models}"\n', encoding="utf-8")
    assert main(["--settings", str(settings), "build-demo", "--if-missing"]) == 0
    assert not is_outdated(models / DEMO_NAME)
    assert main(["--settings", str(settings), "build-demo", "--if-missing"]) == 0
    assert "no demo build needed" in capsys.readouterr().out


def test_run_exits_1_when_a_frontend_cannot_start(
    tmp_path: Path,
    demo_models_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for var in ("AIDRAW_DISCORD_TOKEN", "AIDRAW_TELEGRAM_TOKEN", "AIDRAW_WEB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    settings = tmp_path / "settings.toml"
    settings.write_text(
        f'[engine]\nmodels_dir = "{demo_models_dir}"\n'
        '[queue]\njournal = "data/journal.sqlite3"\nwarm_up = false\n'
        '[web]\nhost = "0.0.0.0"\n',
        encoding="utf-8",
    )
    assert main(["--settings", str(settings), "run"]) == 1
    err = capsys.readouterr().err
    assert "aidraw: error: web:" in err and "AIDRAW_WEB_TOKEN" in err
    assert (tmp_path / "data" / "journal.sqlite3").exists()  # relative to settings.toml


def test_run_help_says_the_web_chat_is_the_fallback(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "With neither token, serve the local web chat on http://127.0.0.1:7860" in out


def test_a_serving_bot_logs_its_own_info_lines_and_libraries_stay_quiet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("", "bot", "engine"):
        monkeypatch.setattr(logging.getLogger(name), "level", logging.NOTSET)
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    configure_logging(False, verbose=False)
    assert not logging.getLogger("engine.engine").isEnabledFor(logging.INFO)
    configure_logging(True, verbose=False)
    assert logging.getLogger("engine.engine").isEnabledFor(logging.INFO)
    assert logging.getLogger("bot.telegram.app").isEnabledFor(logging.INFO)
    assert not logging.getLogger("discord.client").isEnabledFor(logging.INFO)


def _broken_models(models: Path, demo: Path) -> dict[str, str]:
    """Broken model files as users make them, by name: what the error should mention."""
    import pickle
    import shutil

    import torch
    from safetensors.torch import save_file

    models.mkdir()
    (models / "pickled.safetensors").write_bytes(pickle.dumps({"a": 1}))
    weights = (demo / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    (models / "truncated.safetensors").write_bytes(weights[: len(weights) // 2])
    (models / "empty.safetensors").write_bytes(b"")
    save_file(
        {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(3, 3)},
        str(models / "wrongshapes.safetensors"),
    )
    shutil.copytree(demo, models / "nounet", ignore=shutil.ignore_patterns("unet"))
    text = models.parent / "notes.txt"
    text.write_text("not a model\n", encoding="utf-8")
    (models / "symlinked.safetensors").symlink_to(text)
    return {
        "pickled": "pickled.safetensors",
        "truncated": "truncated.safetensors",
        "empty": "empty.safetensors",
        "wrongshapes": "wrongshapes.safetensors",
        "nounet": "nounet",
        "symlinked": "symlinked.safetensors",
    }


def test_a_broken_model_file_is_one_line_and_exit_code_2(
    tmp_path: Path, demo_models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models"
    broken = _broken_models(models, demo_models_dir / "aidraw-demo")
    settings = tmp_path / "settings.toml"
    settings.write_text(f'[engine]\nmodels_dir = "{models}"\n', encoding="utf-8")
    for name, file in broken.items():
        args = ["--settings", str(settings), "draw", f"cat --model {name} --steps 1"]
        assert main(args) == 2, name
        err = capsys.readouterr().err
        assert err.startswith(f"aidraw: error: Cannot load model '{name}' ({file}): "), err
        assert err.count("\n") == 1, err


@pytest.mark.parametrize(
    "args",
    [
        ["draw", "a cat --sede 4"],  # a flag error
        ["draw", "1girl, (smile:1.2) --steps 20 --size portrait", "--explain"],
    ],
)
def test_a_flag_error_and_explain_answer_without_torch_or_transformers(
    tmp_path: Path, args: list[str]
) -> None:
    settings = tmp_path / "settings.toml"
    settings.write_text('[engine]\nmodels_dir = "empty"\n', encoding="utf-8")
    code = (
        "import sys\n"
        "from bot.cli import main\n"
        f"main(['--settings', {str(settings)!r}, *{args!r}])\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_offline_env()
    )
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout + proc.stderr
