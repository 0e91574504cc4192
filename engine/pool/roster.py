"""The roster: each worker's heartbeat (who it is, what it has loaded, how fast, how it is)."""

from __future__ import annotations

import json
from collections.abc import Hashable
from dataclasses import asdict, dataclass
from typing import Any

from engine.journal import _tuples
from engine.prompting.networks import LoraUse


@dataclass(frozen=True, kw_only=True)
class WorkerInfo:
    """One worker as its last heartbeat described it (`/queue` and the web chat show these).

    `state` is "starting" (loading its first model), "idle", "busy" or "draining" (SIGTERM:
    finishing its batch, taking no more); `images_per_s` its measured speed (0 until it has
    drawn); `loras` the LoRAs merged into its model: (name, text encoder, UNet strength).
    """

    name: str
    host: str
    pid: int
    device: str
    device_type: str
    model: str | None
    loras: tuple[tuple[str, float, float], ...]
    state: str
    jobs_done: int
    images_per_s: float
    swaps: int

    @property
    def affinity(self) -> Hashable:
        """What it has loaded, as the queue compares it with a job's `affinity`."""
        return (self.model, tuple(LoraUse(name, te, unet) for name, te, unet in self.loras))

    def encode(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def decode(cls, text: bytes | str) -> WorkerInfo | None:
        """The heartbeat back, or None if it is not one this version writes."""
        try:
            data = json.loads(text)
            info = cls(**{k: _tuples(v) for k, v in data.items()})
        except (ValueError, TypeError):
            return None
        kinds: dict[str, Any] = {
            "name": str,
            "host": str,
            "pid": int,
            "device": str,
            "device_type": str,
            "state": str,
            "jobs_done": int,
            "images_per_s": (int, float),
            "swaps": int,
        }
        if not all(isinstance(getattr(info, k), t) for k, t in kinds.items()):
            return None
        if not (info.model is None or isinstance(info.model, str)):
            return None
        if not all(
            isinstance(lora, tuple)
            and len(lora) == 3
            and isinstance(lora[0], str)
            and all(isinstance(x, int | float) for x in lora[1:])
            for lora in info.loras
        ):
            return None
        return info
