"""Call: one generate() call in flight, its step progress and previews.

generate() reports each step on the torch thread; previews are made there too, where the
latents are, and the step is then handed to the event loop (`loop.call_soon_threadsafe`), the
only thread that changes jobs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from engine.job import Job
from engine.preview import SD1_PREVIEW, PreviewMap, preview_png
from engine.sampling.steps import planned_steps
from engine.timing import Timing, timing_key

log = logging.getLogger(__name__)


class Call:
    """One generate() call for `jobs` (the worker thread reads it, the loop writes it).

    Pass `on_step_in_worker` and `cancelled` to generate() as its `on_step` and `cancelled`.
    `interrupted()` says the engine is shutting down past its grace; `timing` learns the
    measured step and call times; previews every `preview_every_steps` steps (0 = never).
    """

    def __init__(
        self,
        jobs: list[Job],
        *,
        timing: Timing,
        loop: asyncio.AbstractEventLoop,
        interrupted: Callable[[], bool],
        preview_every_steps: int,
        preview_map: PreviewMap = SD1_PREVIEW,
    ) -> None:
        first = jobs[0].request
        self.jobs = jobs
        self.key = timing_key(first)
        self.steps = planned_steps(first)  # img2img runs fewer, hires fix a second pass
        self.started = time.perf_counter()
        self.last_step_at: float | None = None
        self.step = 0
        self.total = 0
        self.previews = True
        self.preview_map = preview_map
        self._timing = timing
        self._loop = loop
        self._interrupted = interrupted
        self._preview_every_steps = preview_every_steps

    def remaining_s(self) -> float | None:
        """Seconds until this call is done (None until a step has been measured)."""
        return self._timing.remaining(self.key, steps=self.steps, step=self.step, total=self.total)

    def record_duration(self) -> None:
        """The call returned its images: teach `timing` what the whole call cost."""
        self._timing.record_call(
            self.key, steps=self.steps, total=self.total, seconds=time.perf_counter() - self.started
        )

    # --- the worker thread's side ---------------------------------------------------------

    def on_step_in_worker(self, step: int, total: int, latents: Any) -> None:
        """generate()'s step callback: runs on the torch thread; hands over to the loop."""
        now = time.perf_counter()
        previews: dict[int, bytes] | None = None
        every = self._preview_every_steps
        if every and self.previews and latents is not None and step % every == 0 and step < total:
            try:
                previews = {}
                index = 0
                for job in self.jobs:
                    if not job.done():
                        previews[job.id] = preview_png(latents[index], self.preview_map)
                    index += job.images
            except (ValueError, IndexError, RuntimeError, TypeError) as e:
                self.previews = False  # a sampler's unusual latents must not cost the image
                log.warning("no previews for jobs %s: %s", [job.id for job in self.jobs], e)
                previews = None
        loop = self._loop
        if not loop.is_closed():
            loop.call_soon_threadsafe(self._on_step, step, total, now, previews)

    def cancelled(self) -> bool:
        """generate()'s cancel check (torch thread): stop when nobody wants the batch."""
        return self._interrupted() or all(job.done() for job in self.jobs)

    def finish_early(self) -> bool:
        """generate()'s early finish (torch thread): every job still wanted asked for it."""
        live = [job for job in self.jobs if not job.done()]
        return bool(live) and all(job.finish_early for job in live)

    # --- the loop's side ------------------------------------------------------------------

    def _on_step(self, step: int, total: int, at: float, previews: dict[int, bytes] | None) -> None:
        if self.last_step_at is not None and step > self.step:
            self._timing.record_step(self.key, (at - self.last_step_at) / (step - self.step))
        self.last_step_at, self.step, self.total = at, step, total
        for job in self.jobs:
            if job.done():
                continue
            job._step, job._total = step, total
            if previews is not None and job.id in previews:
                job._preview = previews[job.id]
            job._notify()
