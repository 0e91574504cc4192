"""Reading weight files safely: safetensors, or pickles through `torch.load(weights_only=True)`."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from engine.errors import InvalidRequest

log = logging.getLogger(__name__)


def check_ckpt(path: Path) -> None:
    """Refuse a pickled .ckpt that holds anything but tensors (never unpickle code)."""
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError or ValueError here
        log.warning("refused %s: %s", path, e)
        raise InvalidRequest(
            f"Refusing {path.name}: it is a pickle with more than plain weights, which could run "
            "code. Convert it to .safetensors with a tool you trust.",
            key="unsafe_pickle",
            file=path.name,
        ) from e
