"""Job: one request inside the engine, as frontends see it (progress, updates, result).

Only the engine changes a job; it is created by `Engine.submit()` (or replayed from the
journal after a restart).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Hashable
from pathlib import Path
from typing import Protocol

from engine.errors import EngineError, GenerationFailed, JobCancelled
from engine.journal import JobRecord
from engine.prompting.networks import networks_of
from engine.request import BATCH_KEYS, GenerationRequest, GenerationResult, JobState, Progress
from engine.sampling.steps import planned_steps
from engine.stats import frontend_of

log = logging.getLogger(__name__)

FINISHED: frozenset[JobState] = frozenset({"done", "failed", "cancelled"})


def key_values(fields: dict[str, str | int | float]) -> str:
    """`key=value` pairs for a log line (values with spaces quoted)."""
    return " ".join(
        f"{k}={v!r}" if isinstance(v, str) and (" " in v or not v) else f"{k}={v}"
        for k, v in fields.items()
    )


class Estimates(Protocol):
    """What a job asks its engine for its progress (engine.engine.Engine is one)."""

    def queued_estimate(self, job: Job) -> tuple[int | None, float | None]:
        """Queue position (1 = next) and seconds until done."""
        ...

    def running_eta(self, job: Job) -> float | None:
        """Seconds until the running job is done."""
        ...


class Job:
    """One request inside the engine. Frontends read it; only the engine changes it.

    `request` is the validated request (model named, defaults filled; seed None stays None
    until drawn: the results carry the seeds used). `reply_to` is the frontend's opaque
    address from `submit`.
    """

    def __init__(
        self,
        engine: Estimates,
        *,
        id: int,
        request: GenerationRequest,
        reply_to: str,
        submitted_at: float,
        queued_at: float,
    ) -> None:
        assert request.model is not None
        self.id = id
        self.request = request
        self.reply_to = reply_to
        self.submitted_at = submitted_at  # Unix time
        self.queued_at = queued_at  # engine clock
        self.model: str = request.model
        networks = networks_of(request.prompt)
        # Jobs for one model with other LoRAs wait together, as for another model (a merge).
        self.affinity: Hashable = (request.model, networks.loras)
        self.batch_key: Hashable = (*(getattr(request, key) for key in BATCH_KEYS), networks)
        self._engine = engine
        self._state: JobState = "queued"
        # A1111's interrupt/skip while drawing: done with what is drawn (`Engine.finish_early`).
        self.finish_early = False
        self._step = 0
        self._total = 0
        self._preview: bytes | None = None
        self._started_at: float | None = None
        self._results: list[GenerationResult] | None = None
        self._error: EngineError | None = None
        self._done = asyncio.Event()
        self._changed = asyncio.Event()

    @classmethod
    def finished(cls, engine: Estimates, record: JobRecord, *, queued_at: float) -> Job:
        """A job that finished before a restart, from its journal record (its images are read
        back from disk), for a frontend that never confirmed its reply."""
        job = cls(
            engine,
            id=record.id,
            request=record.request,
            reply_to=record.reply_to,
            submitted_at=record.submitted_at,
            queued_at=queued_at,
        )
        job._state = record.state
        if record.state == "done":
            try:
                job._results = [
                    GenerationResult(
                        png=Path(image.path).read_bytes(),
                        seed=image.seed,
                        request=dataclasses.replace(record.request, seed=record.images[0].seed),
                        infotext=image.infotext,
                    )
                    for image in record.images
                ]
            except OSError as e:
                log.warning("job %d: its image is gone (%s)", record.id, e)
                job._state = "failed"
                job._error = GenerationFailed(
                    "The image was lost in a restart; please draw again.", key="image_lost"
                )
        elif record.state == "cancelled":
            job._error = JobCancelled(record.error or "Cancelled.")
        else:
            job._error = GenerationFailed(record.error or "The drawing failed.")
        job._done.set()
        return job

    def __repr__(self) -> str:
        return f"<Job {self.id} {self._state} {self.requester} {self.model}>"

    @property
    def requester(self) -> str:
        return self.request.requester

    def log_fields(self) -> dict[str, str | int | float]:
        """What the job start and end log lines say of a job (also as JSON log fields)."""
        r = self.request
        return {
            "job": self.id,
            "requester": self.requester or "-",
            "frontend": frontend_of(self.requester),
            "model": self.model,
            "size": f"{r.width}x{r.height}",
            "steps": r.num_inference_steps or 0,
            "sampler": r.sampler or "-",
            "images": self.images,
        }

    @property
    def images(self) -> int:
        return self.request.batch_size

    @property
    def state(self) -> JobState:
        return self._state

    def done(self) -> bool:
        """True once `result()` returns or raises without waiting."""
        return self._done.is_set()

    @property
    def progress(self) -> Progress:
        """State, queue position, step/total, ETA and the latest preview, as of now."""
        position = eta = None
        if not self.done():
            if self._state == "queued":
                position, eta = self._engine.queued_estimate(self)
            elif self._state == "running":
                eta = self._engine.running_eta(self)
        return Progress(
            state=self._state,
            position=position,
            step=self._step,
            total=self._total,
            eta_s=eta,
            preview=self._preview,
            error=str(self._error) if self._error is not None else None,
        )

    async def result(self) -> list[GenerationResult]:
        """The images (one GenerationResult per image, in seed order), once drawn.

        Raises JobCancelled, GenerationFailed, InvalidRequest, or EngineClosed (the bot is
        shutting down; the job stays in the journal and comes back from `recovered()`).
        """
        await self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._results is not None
        return list(self._results)

    async def updates(self) -> AsyncIterator[Progress]:
        """The progress now and after each change (changes in between are merged), ending
        with the final state. Status messages should still be edited at most every
        `progress_interval_s`."""
        while True:
            changed = self._changed
            yield self.progress
            if self.done():
                return
            await changed.wait()

    # --- the engine's side ----------------------------------------------------------------

    def start(self, now: float) -> None:
        """The engine: its batch begins drawing (`now` on the engine's clock)."""
        self._state, self._started_at = "running", now
        self._total = planned_steps(self.request)
        self._notify()

    def end(
        self,
        state: JobState,
        error: EngineError | None = None,
        results: list[GenerationResult] | None = None,
    ) -> None:
        """The engine: it is over; whoever awaits it gets `results` or `error`."""
        self._state, self._error, self._results = state, error, results
        self._done.set()
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
