"""Reading weight files safely: safetensors, or pickles through `torch.load(weights_only=True)`.

`read_weights` is every add-on's reader (VAEs, hypernetworks, LoRAs, embeddings, upscalers):
nothing in a file ever runs, and a file that cannot be used is refused in one line that says
why (empty, damaged, TorchScript, or a pickle that would build more than weights).
"""

from __future__ import annotations

import logging
import pickle
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from engine.errors import BadAddonFile, InvalidRequest

log = logging.getLogger(__name__)

# What torch's weights-only unpickler says of a pickle that would call or build something.
_CODE_SIGNS = (
    "GLOBAL",
    "Unsupported global",
    "unrecognized function",
    "Can only create new object",
)


def read_weights(
    path: Path,
    kind: str,
    *,
    name: str | None = None,
    allow: Sequence[Any] = (),
    mmap: bool = False,
) -> object:
    """What a weight file holds, never running anything in it: `.safetensors` through
    safetensors, anything else through `torch.load(weights_only=True)` with the classes in
    `allow` trusted too (`mmap`: not read into memory). BadAddonFile(kind, name or the file's
    name, problem) when the file cannot be used."""
    shown = name or path.name
    try:
        size = path.stat().st_size
    except OSError as e:
        raise BadAddonFile(kind, shown, "the file cannot be read") from e
    if size == 0:
        raise BadAddonFile(kind, shown, "the file is empty")
    if path.suffix.lower() == ".safetensors":
        try:
            return safetensors.torch.load_file(path, device="cpu")
        except Exception as e:  # SafetensorError, OSError, …
            log.warning("refused %s %s: %s", kind, path, e)
            raise BadAddonFile(
                kind, shown, "it is not a readable safetensors file (truncated or damaged?)"
            ) from e
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(list(allow)):
            warnings.simplefilter("ignore")  # about the file (pickle protocol…): said below
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # UnpicklingError, RuntimeError (zip, TorchScript), EOFError, …
        log.warning("refused %s %s: %s", kind, path, e)
        raise BadAddonFile(kind, shown, _pickle_problem(e)) from e


def _pickle_problem(error: Exception) -> str:
    message = str(error)
    if "TorchScript" in message:
        return "it is a TorchScript file, which holds code; use a .pth or .safetensors state dict"
    if isinstance(error, pickle.UnpicklingError) and any(s in message for s in _CODE_SIGNS):
        return (
            "it is a pickle with more than plain weights, which could run code (convert it "
            "to .safetensors with a tool you trust)"
        )
    return "it is not a readable PyTorch file (truncated or damaged?)"


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
