"""Pipelines: a checkpoint file or folder made into a diffusers pipeline offline, by family.

Single files load with `from_single_file(config=<local folder>)`: the shipped configs
(`engine/sd_configs/sd15`, `engine/sd_configs/sdxl`, written from the published ones) or the
folder a model's sidecar names. The tokenizers are built from the CLIP vocabulary
open-clip-torch ships (bigG's pads with "!"). The noise schedule the samplers use is the
scheduler's, with the checkpoint's prediction type and zero terminal SNR.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from engine.models.architecture import Architecture
from engine.prompting.tokenizer import OPEN_CLIP_PAD, build_tokenizer

CONFIGS = Path(__file__).parent.parent / "sd_configs"
SD15_CONFIG = CONFIGS / "sd15"
SDXL_CONFIG = CONFIGS / "sdxl"


class MissingConfig(ValueError):
    """A single file of a family whose config is not shipped, and no sidecar names one."""


def shipped_config(architecture: Architecture) -> Path:
    """The config folder shipped for a family's single files."""
    if architecture.family == "SDXL":
        return SDXL_CONFIG
    if architecture.family == "SD-1.x":
        return SD15_CONFIG
    raise MissingConfig(
        f'{architecture.family} single files need `config = "<diffusers folder>"` in the '
        "model's models/<name>.toml"
    )


def pipeline_class(architecture: Architecture) -> Any:
    """The diffusers pipeline class of a family."""
    return StableDiffusionXLPipeline if architecture.is_sdxl else StableDiffusionPipeline


def load_pipeline(
    path: Path,
    *,
    kind: str,
    architecture: Architecture,
    config: Path | None,
    dtype: torch.dtype,
) -> Any:
    """The pipeline of a diffusers folder or a single file (offline; raises what diffusers
    raises when the file is not a model of this architecture)."""
    cls = pipeline_class(architecture)
    common: dict[str, Any] = {"dtype": dtype, "local_files_only": True}
    if not architecture.is_sdxl:
        common.update(safety_checker=None, requires_safety_checker=False)
    if kind == "diffusers":
        return cls.from_pretrained(str(path), **common)
    if architecture.family == "SD-2.x":
        common["tokenizer"] = build_tokenizer(OPEN_CLIP_PAD)
    else:
        common["tokenizer"] = build_tokenizer()
    if architecture.is_sdxl:
        common["tokenizer_2"] = build_tokenizer(OPEN_CLIP_PAD)
    folder = config or shipped_config(architecture)
    return cls.from_single_file(str(path), config=str(folder), **common)


def scheduler_config(pipe: Any, architecture: Architecture) -> dict[str, Any]:
    """The pipeline scheduler's config with the checkpoint's prediction type and zero
    terminal SNR (what `NoiseSchedule.from_config` reads)."""
    config = dict(pipe.scheduler.config)
    config["prediction_type"] = architecture.prediction
    config["rescale_betas_zero_snr"] = architecture.zero_snr
    return config
