"""Architectures: which Stable Diffusion family a checkpoint is, from its keys or its folder.

A1111 v1.9.4 `sd_models_config.guess_model_config_from_state_dict` reads the text encoders'
keys: SDXL's second embedder (OpenCLIP bigG), SD-2's OpenCLIP ViT-H, else SD-1's CLIP. The
prediction type and zero terminal SNR come from the markers later A1111 and the NoobAI-XL
v-prediction release write into the file (empty tensors named `v_pred` and `ztsnr`), from a
diffusers folder's scheduler config, or from the model's sidecar (`models/<name>.toml`).
"""

from __future__ import annotations

import dataclasses
import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from engine.request import RequestDefaults

Family = Literal["SD-1.x", "SD-2.x", "SDXL"]
Prediction = Literal["epsilon", "v_prediction"]
FAMILIES: tuple[Family, ...] = ("SD-1.x", "SD-2.x", "SDXL")
PREDICTIONS: tuple[Prediction, ...] = ("epsilon", "v_prediction")

SDXL_KEY = "conditioner.embedders.1.model.ln_final.weight"
SDXL_REFINER_KEY = "conditioner.embedders.0.model.ln_final.weight"
SD2_KEY = "cond_stage_model.model.ln_final.weight"
SD1_PREFIX = "cond_stage_model.transformer."
V_PRED_MARKER = "v_pred"
ZTSNR_MARKER = "ztsnr"


class UnknownArchitecture(ValueError):
    """A checkpoint whose family cannot be read (an unreadable header, an odd pickle)."""


class NotAModel(UnknownArchitecture):
    """A readable file of no family we load (an SDXL refiner, or not a Stable Diffusion
    checkpoint at all)."""


@dataclass(frozen=True)
class Architecture:
    """A checkpoint's family, its UNet's prediction, and whether its noise schedule is
    rescaled to zero terminal SNR (A1111's `rescale_zero_terminal_snr_abar`)."""

    family: Family = "SD-1.x"
    prediction: Prediction = "epsilon"
    zero_snr: bool = False

    @property
    def is_sdxl(self) -> bool:
        return self.family == "SDXL"

    def __str__(self) -> str:
        parts: list[str] = [self.family]
        if self.prediction == "v_prediction":
            parts.append("v-prediction")
        if self.zero_snr:
            parts.append("zero terminal SNR")
        return ", ".join(parts)


def from_keys(keys: Iterable[str]) -> Architecture:
    """The architecture of a single-file checkpoint from its tensor names (A1111's guess)."""
    names = set(keys)
    v_pred, zero_snr = V_PRED_MARKER in names, ZTSNR_MARKER in names
    prediction: Prediction = "v_prediction" if v_pred else "epsilon"
    if SDXL_KEY in names:
        return Architecture("SDXL", prediction, zero_snr)
    if SDXL_REFINER_KEY in names:
        raise NotAModel("an SDXL refiner (it only refines a base model's latents)")
    if SD2_KEY in names:
        return Architecture("SD-2.x", prediction, zero_snr)
    if any(name.startswith(SD1_PREFIX) for name in names):
        return Architecture("SD-1.x", prediction, zero_snr)
    raise NotAModel("no Stable Diffusion text encoder in it")


def checkpoint_architecture(path: Path) -> Architecture:
    """The architecture of a `.safetensors` (header only) or `.ckpt` file (memory-mapped)."""
    if path.suffix.lower() == ".safetensors":
        return from_keys(safetensors_keys(path))
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # an unsafe or damaged pickle: loading says which
        raise UnknownArchitecture("the file cannot be read as plain weights") from e
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise UnknownArchitecture("the file holds no state dict")
    return from_keys(str(key) for key in data)


def safetensors_keys(path: Path) -> list[str]:
    """The tensor names in a .safetensors file's header (the weights are not read)."""
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise UnknownArchitecture("not a safetensors file (too short)")
        (size,) = struct.unpack("<Q", head)
        if size > 100 * 1024 * 1024:
            raise UnknownArchitecture("not a safetensors file (header too large)")
        try:
            header = json.loads(f.read(size))
        except ValueError as e:
            raise UnknownArchitecture("not a safetensors file (unreadable header)") from e
    if not isinstance(header, dict):
        raise UnknownArchitecture("not a safetensors file (unreadable header)")
    return [key for key in header if key != "__metadata__"]


def from_folder(folder: Path) -> Architecture:
    """The architecture of a diffusers folder: its pipeline class (`model_index.json`), its
    text encoder's width (SD-2's is 1024) and its scheduler's prediction type."""
    index = _read_json(folder / "model_index.json")
    scheduler = _read_json(folder / "scheduler" / "scheduler_config.json")
    prediction = scheduler.get("prediction_type", "epsilon")
    if prediction not in PREDICTIONS:
        raise UnknownArchitecture(f"unsupported prediction_type {prediction!r}")
    zero_snr = bool(scheduler.get("rescale_betas_zero_snr", False))
    pipeline = str(index.get("_class_name", ""))
    if pipeline.startswith("StableDiffusionXL"):
        if "text_encoder" not in index or index["text_encoder"] == [None, None]:
            raise UnknownArchitecture("an SDXL refiner (it only refines a base model's latents)")
        return Architecture("SDXL", prediction, zero_snr)
    if pipeline.startswith("StableDiffusion"):
        text = _read_json(folder / "text_encoder" / "config.json")
        family: Family = "SD-2.x" if text.get("hidden_size") == 1024 else "SD-1.x"
        return Architecture(family, prediction, zero_snr)
    raise UnknownArchitecture(f"a {pipeline or 'pipeline of no known class'}")


def _read_json(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise UnknownArchitecture(f"{path.name} is unreadable") from e
    return data if isinstance(data, dict) else {}


# What each family draws best with where the model's sidecar does not say (see README, "Models").
# SDXL anime checkpoints (Illustrious-XL, NoobAI-XL, Pony): their 832x1216 portrait bucket, a
# lower CFG than NAI's 11, and no NAI noise seed delta.
_FAMILY_DEFAULTS: dict[Family, dict[str, object]] = {
    "SDXL": {"width": 832, "height": 1216, "guidance_scale": 6.0, "ensd": 0},
    "SD-2.x": {"width": 512, "height": 512, "guidance_scale": 7.0, "ensd": 0},
}
# Named sizes of each family: SDXL's training buckets in place of NAI v1's.
SDXL_SIZES: dict[str, tuple[int, int]] = {
    "portrait": (832, 1216),
    "landscape": (1216, 832),
    "square": (1024, 1024),
}


def architecture_defaults(base: RequestDefaults, architecture: Architecture) -> RequestDefaults:
    """`base` (the settings' defaults) with the family's size, CFG and ENSD (SD-2.x
    v-prediction: the 768-v model's 768x768)."""
    changes = dict(_FAMILY_DEFAULTS.get(architecture.family, {}))
    if architecture.family == "SD-2.x" and architecture.prediction == "v_prediction":
        changes.update(width=768, height=768)
    return dataclasses.replace(base, **changes) if changes else base  # type: ignore[arg-type]
