"""Model files under `models/`: checkpoints, and the add-ons A1111 applies beside them."""

from engine.models.checkpoints import (
    LoadedModel,
    ModelEntry,
    ModelRegistry,
    load_problem,
)
from engine.models.pipelines import SD15_CONFIG, SDXL_CONFIG
from engine.weights import check_ckpt

__all__ = [
    "SD15_CONFIG",
    "SDXL_CONFIG",
    "LoadedModel",
    "ModelEntry",
    "ModelRegistry",
    "check_ckpt",
    "load_problem",
]
