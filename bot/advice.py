"""Advice a user gets with a queued job before a slow drawing: sizes far above the model's own.

One policy for every frontend: on a CPU, a request of more than `SLOW_FACTOR` times the model's
native pixels (its default size, all images together) is slow and draws worse; say so at once,
with the ETA when the engine has one.
"""

from __future__ import annotations

from typing import Any

from bot.messages import Locale, text
from engine.engine import Engine
from engine.job import Job

SLOW_FACTOR = 4


def size_warning(engine: Engine[Any], job: Job, locale: Locale) -> str | None:
    """The warning for `job`, or None when its size is fine for the model and the device."""
    if engine.status().device != "cpu":
        return None
    native = engine.model_info(job.model).defaults
    request = job.request
    if request.width is None or request.height is None:
        return None
    pixels = request.width * request.height * job.images
    times = pixels / (native.width * native.height)
    if times <= SLOW_FACTOR:
        return None
    eta = job.progress.eta_s
    return text(
        "size_warning",
        locale,
        size=f"{request.width}x{request.height}" + (f" ×{job.images}" if job.images > 1 else ""),
        times=round(times),
        native=f"{native.width}x{native.height}",
        eta="" if eta is None else text("eta", locale, seconds=round(eta)),
    )
