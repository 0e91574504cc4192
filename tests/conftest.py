"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


# --- demo_models_dir (tests/test_models.py) --------------------------------------------------
@pytest.fixture(scope="session")
def demo_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir with the trained demo model `aidraw-demo` (once per session; don't modify)."""
    from engine.demo.model import save_demo_model

    models_dir = tmp_path_factory.mktemp("demo-models")
    save_demo_model(models_dir, name="aidraw-demo")
    return models_dir


# --- loaded demo model (generate tests) --------------------------------------------------------
@pytest.fixture(scope="session")
def demo_model(demo_models_dir: Path):  # type: ignore[no-untyped-def]
    """The demo model loaded on the CPU once per session (a LoadedModel; don't mutate)."""
    from engine.device import DeviceOptions
    from engine.models import ModelRegistry

    return ModelRegistry(demo_models_dir).load("aidraw-demo", DeviceOptions(device="cpu"))


def png_pixels(png: bytes):  # type: ignore[no-untyped-def]
    """Decoded RGB pixels of a PNG as a numpy int array."""
    import io

    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)
