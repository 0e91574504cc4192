"""The demo model builds deterministically, small, and reloads offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.demo_model import DEMO_NAME, build_demo_pipeline, save_demo_model
from engine.device import DeviceOptions
from engine.models import ModelRegistry

pytestmark = pytest.mark.slow


def _state(pipe) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    return {
        f"{name}.{key}": value
        for name in ("unet", "vae", "text_encoder")
        for key, value in getattr(pipe, name).state_dict().items()
    }


def test_same_seed_builds_identical_weights() -> None:
    a, b = _state(build_demo_pipeline(0)), _state(build_demo_pipeline(0))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    c = _state(build_demo_pipeline(1))
    assert not torch.equal(a["unet.conv_in.weight"], c["unet.conv_in.weight"])


def test_saved_folder_is_small_and_reloads_the_same_weights(
    demo_models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = demo_models_dir / DEMO_NAME
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert size < 40 * 2**20
    assert sorted(p.name for p in folder.rglob("*.safetensors"))  # no pickles
    assert not list(folder.rglob("*.bin"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = ModelRegistry(demo_models_dir).load(DEMO_NAME, DeviceOptions(device="cpu"))
    built = _state(build_demo_pipeline(0))
    reloaded = _state(loaded.pipe)
    assert built.keys() == reloaded.keys()
    assert all(torch.equal(built[k], reloaded[k]) for k in built)
    assert len(loaded.pipe.tokenizer) == 49408


def test_rebuild_replaces_the_folder_atomically(tmp_path: Path) -> None:
    save_demo_model(tmp_path)
    save_demo_model(tmp_path)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert list(ModelRegistry(tmp_path).models) == [DEMO_NAME]
