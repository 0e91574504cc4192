"""aidraw's engine: requests in, PNGs with A1111 infotext out. Imports nothing from bot/."""

from __future__ import annotations

__version__ = "0.1.0"

from engine.errors import (  # noqa: E402
    EngineClosed,
    EngineError,
    GenerationFailed,
    InvalidRequest,
    JobCancelled,
    ModelNotFound,
    QueueFull,
)
from engine.request import (  # noqa: E402
    GenerationRequest,
    GenerationResult,
    Limits,
    RequestDefaults,
    Timings,
)

__all__ = [
    "EngineClosed",
    "EngineError",
    "GenerationFailed",
    "GenerationRequest",
    "GenerationResult",
    "InvalidRequest",
    "JobCancelled",
    "Limits",
    "ModelNotFound",
    "QueueFull",
    "RequestDefaults",
    "Timings",
    "__version__",
]
