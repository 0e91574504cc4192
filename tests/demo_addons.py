"""A models dir for the frontends' VAE and hypernetwork tests: the trained demo model (the
session's `demo_models_dir`, linked, not copied) and one VAE file, `models/VAE/demo-vae.safetensors`
(the demo model's own VAE weights, so it fits and draws the same pictures)."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from PIL import Image

from engine.engine import Engine
from engine.queue import QueueConfig

DEMO = "aidraw-demo"
VAE_FILE = "demo-vae.safetensors"


def addon_models_dir(demo_models_dir: Path, root: Path) -> Path:
    """root/models: the demo model, its sidecar, and models/VAE/demo-vae.safetensors."""
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    models = root / "models"
    (models / "VAE").mkdir(parents=True)
    (models / DEMO).symlink_to(demo_models_dir / DEMO, target_is_directory=True)
    sidecar = (demo_models_dir / f"{DEMO}.toml").read_text(encoding="utf-8")
    (models / f"{DEMO}.toml").write_text(sidecar, encoding="utf-8")
    vae = AutoencoderKL.from_pretrained(str(demo_models_dir / DEMO / "vae"))
    weights = {name: tensor.contiguous() for name, tensor in vae.state_dict().items()}
    save_file(weights, models / "VAE" / VAE_FILE)
    return models


def demo_engine(models: Path, root: Path, admins: tuple[str, ...]) -> Engine[Any]:
    """An engine over `models` on the CPU (no warm-up), with these admins."""
    from engine.device import DeviceOptions
    from engine.generate import generate
    from engine.models import ModelRegistry

    registry = ModelRegistry(models)
    config = QueueConfig(
        journal=str(root / "journal.sqlite3"),
        results_dir=str(root / "results"),
        warm_up=False,
        admins=admins,
    )
    return Engine(
        config,
        registry=registry,
        load=lambda name: registry.load(name, DeviceOptions(device="cpu")),
        generate=generate,
    )


@contextlib.asynccontextmanager
async def running(engine: Engine[Any]) -> AsyncIterator[Engine[Any]]:
    task = asyncio.create_task(engine.run())
    try:
        yield engine
    finally:
        await engine.close(grace_s=0)
        with contextlib.suppress(asyncio.CancelledError):
            await task


def infotext(png: bytes) -> str:
    """A PNG's A1111 `parameters` text chunk."""
    with Image.open(io.BytesIO(png)) as image:
        return str(image.info["parameters"])
