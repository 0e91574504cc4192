"""aidraw's engine: requests in, PNGs with A1111 infotext out. Imports nothing from bot/."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.errors import (
    EngineClosed,
    EngineError,
    GenerationFailed,
    InvalidRequest,
    JobCancelled,
    ModelNotFound,
    QueueFull,
)
from engine.queue import QueueConfig
from engine.request import (
    GenerationRequest,
    GenerationResult,
    Limits,
    Progress,
    RequestDefaults,
    Timings,
)
from engine.version import __version__

if TYPE_CHECKING:
    from engine.engine import Engine
    from engine.job import Job


def __getattr__(name: str) -> Any:
    # Engine and Job import torch (through generate); `import engine` stays light for settings.
    if name == "Engine":
        from engine.engine import Engine

        return Engine
    if name == "Job":
        from engine.job import Job

        return Job
    raise AttributeError(f"module 'engine' has no attribute {name!r}")


__all__ = [
    "Engine",
    "EngineClosed",
    "EngineError",
    "GenerationFailed",
    "GenerationRequest",
    "GenerationResult",
    "InvalidRequest",
    "Job",
    "JobCancelled",
    "Limits",
    "ModelNotFound",
    "Progress",
    "QueueConfig",
    "QueueFull",
    "RequestDefaults",
    "Timings",
    "__version__",
]
