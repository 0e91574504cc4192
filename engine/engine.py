"""Engine: one asyncio task owns the queue; one dedicated thread runs every torch call.

Frontends (Discord, Telegram, the local web chat) only call `Engine.submit()`, read
`Job.progress` (or iterate `Job.updates()`), `await Job.result()`, call `Engine.cancel()`, and
the admin calls; the engine never calls back into them. Call everything from the event loop's
thread. A handler::

    job = engine.submit(request, reply_to="telegram:777:42")  # InvalidRequest, QueueFull,
    await reply(f"queued, #{job.progress.position}")          # EngineClosed: say why
    async for progress in job.updates():                      # edit the status message at
        ...                                                   # most every progress_interval_s
    images = await job.result()          # JobCancelled, GenerationFailed, EngineClosed
    await send(images)
    engine.mark_delivered(job.id)        # only needed when a reply_to was given

Buttons: cancel = `engine.cancel(job_id, by=requester)`; reroll =
`engine.submit(dataclasses.replace(request, seed=None))` with `result.request`, or after a
restart `engine.record(job_id).request`. Start-up and shutdown, as the launcher does it::

    engine = Engine(settings.queue, registry=registry, load=load, generate=generate)
    task = asyncio.create_task(engine.run())
    for job in engine.recovered():   # jobs from before a restart that still need a reply:
        ...                          # await job.result(), reply to job.reply_to, mark_delivered
    ...
    await engine.close()             # on SIGTERM: the running batch gets shutdown_grace_s
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from engine.errors import (
    EngineClosed,
    EngineError,
    GenerationFailed,
    InvalidRequest,
    JobCancelled,
    QueueFull,
)
from engine.generate import check_request
from engine.job import Job
from engine.journal import JobRecord, Journal, SavedImage
from engine.preview import SD1_PREVIEW, PreviewMap, preview_png
from engine.queue import FairQueue, QueueConfig
from engine.request import (
    GenerationRequest,
    GenerationResult,
    JobState,
    Limits,
    RequestDefaults,
)
from engine.timing import Timing, TimingKey, timing_key

log = logging.getLogger(__name__)

# max_batch_pixels = 0: pixels per pipeline call by device type (bench/engine.py measured a
# 2-core CPU: 4 images at 128x128 draw 1.5-1.9x faster together, at 192x192 1.1-1.2x, at
# 512x512 not at all). Device types not listed batch up to max_batch at any size.
AUTO_BATCH_PIXELS = {"cpu": 4 * 128 * 128}
RESTARTING = "The bot is restarting; your drawing stays queued and is sent after the restart."


# --- the seams: what the engine needs from models and from generate() ------------------------


class Device(Protocol):
    @property
    def type(self) -> str: ...


class ModelHandle(Protocol):
    """A loaded model (engine.models.LoadedModel is one)."""

    @property
    def name(self) -> str: ...
    @property
    def device(self) -> Device: ...
    @property
    def preview(self) -> PreviewMap: ...


class ModelInfo(Protocol):
    """A model known but not loaded (engine.models.ModelEntry is one)."""

    @property
    def name(self) -> str: ...
    @property
    def defaults(self) -> RequestDefaults: ...


class Registry(Protocol):
    """Looks models up without loading them (engine.models.ModelRegistry is one)."""

    @property
    def models(self) -> Mapping[str, ModelInfo]: ...
    def get(self, name: str) -> ModelInfo: ...


M = TypeVar("M", bound=ModelHandle)
M_contra = TypeVar("M_contra", bound=ModelHandle, contravariant=True)
R = TypeVar("R")
StepFn = Callable[[int, int, Any], None]


class GenerateFn(Protocol[M_contra]):
    """engine.generate.generate's signature (tests pass a fake without torch)."""

    def __call__(
        self,
        model: M_contra,
        requests: Sequence[GenerationRequest],
        *,
        limits: Limits,
        on_step: StepFn | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> list[GenerationResult]: ...


@dataclass(frozen=True, kw_only=True)
class EngineStatus:
    """What an admin's /status shows."""

    model: str | None
    default_model: str
    paused: bool
    closing: bool
    queued: int
    running: tuple[int, ...]
    swaps: int


@dataclass
class _Call:
    """One generate() call in flight (the worker thread reads it, the loop writes it)."""

    jobs: list[Job]
    key: TimingKey
    steps: int
    started: float
    last_step_at: float | None = None
    step: int = 0
    total: int = 0
    previews: bool = True
    preview_map: PreviewMap = SD1_PREVIEW


def _remove(paths: list[str]) -> None:
    for path in paths:
        Path(path).unlink(missing_ok=True)


# --- the engine --------------------------------------------------------------------------------


class Engine(Generic[M]):
    """The queue and the loop that draws it. See the module docstring for start-up.

    `registry` looks models up at submit (no loading); `load(name)` and `generate(...)` run
    only on the engine's single torch thread. `default_model` "" = the registry's first.
    `clock` is for tests (monotonic seconds).
    """

    def __init__(
        self,
        config: QueueConfig,
        *,
        registry: Registry,
        load: Callable[[str], M],
        generate: GenerateFn[M],
        limits: Limits | None = None,
        default_model: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._registry = registry
        self._load_fn = load
        self._generate = generate
        self._limits = limits or Limits()
        self._default_model = default_model
        self._clock = clock
        self._queue: FairQueue[Job] = FairQueue(
            max_model_wait_s=config.max_model_wait_s, priority_users=config.priority_users
        )
        self._jobs: dict[int, Job] = {}  # every unfinished job: queued or running
        self._running: list[Job] = []
        self._call: _Call | None = None
        self._model: M | None = None
        self._device_type = "cpu"
        self._swaps = 0
        self._timing = Timing()
        self._plan_key: tuple[Any, ...] | None = None
        self._plan: list[list[Job]] = []
        # The one thread that ever runs torch: torch is 1.5-3.8x slower once it hops threads.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aidraw-torch")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup = asyncio.Event()
        self._model_lock = asyncio.Lock()
        self._paused = False
        self._closing = False
        self._closed = False
        self._interrupt = False  # the worker stops at the next step (shutdown after the grace)
        self._run_task: asyncio.Task[None] | None = None
        self._results_dir = Path(config.results_dir)
        self._journal = Journal(config.journal)
        self._recovered = self._replay()

    # --- frontends ------------------------------------------------------------------------

    def submit(self, request: GenerationRequest, *, reply_to: str = "") -> Job:
        """Validate `request` and queue it; returns at once, after the journal has it.

        Args:
            request: what to draw. `request.requester` ("telegram:1234") is who asked: fair
                share, limits and cancel rights go by it. `request.model` None = the current
                default model.
            reply_to: an opaque address for the reply (e.g. "telegram:777:42"), kept in the
                journal: after a restart the job comes back from `recovered()` with it. A
                frontend that gives one calls `mark_delivered(job.id)` once it has replied.

        Raises:
            InvalidRequest: (also ModelNotFound) the message says what is wrong and what is
                allowed; nothing was queued.
            QueueFull: the requester's or everyone's limit is reached.
            EngineClosed: the engine is shutting down.
        """
        if self._closing:
            raise EngineClosed("The bot is shutting down; try again in a minute.")
        resolved = self._resolve(request)
        user = resolved.requester
        if not self.is_admin(user) and user not in self.config.priority_users:
            mine = sum(1 for job in self._jobs.values() if job.requester == user)
            if mine >= self.config.max_queued_per_user:
                raise QueueFull(mine, self.config.max_queued_per_user, per_user=True)
        if len(self._queue) >= self.config.max_queued:
            raise QueueFull(len(self._queue), self.config.max_queued)
        submitted_at = time.time()
        job_id = self._journal.add(resolved, reply_to=reply_to, submitted_at=submitted_at)
        job = Job(
            self,
            id=job_id,
            request=resolved,
            reply_to=reply_to,
            submitted_at=submitted_at,
            queued_at=self._clock(),
        )
        self._enqueue(job)
        return job

    def cancel(self, job_id: int, by: str) -> bool:
        """Cancel a job: a waiting one at once, a drawing one at its next step (its batch-mates
        go on). True if it was cancelled now; False if it had already finished.

        Raises InvalidRequest if there is no such job, or `by` is neither its requester nor
        an admin.
        """
        self._check_open()
        job = self._jobs.get(job_id)
        if job is None:
            record = self._journal.get(job_id)
            if record is None:
                raise InvalidRequest(f"There is no job #{job_id}.", field="job")
            self._check_owner(record.requester, by, job_id)
            return False
        self._check_owner(job.requester, by, job_id)
        message = "Cancelled." if by == job.requester else "Cancelled by an admin."
        self._finish(job, "cancelled", JobCancelled(message))
        return True

    def job(self, job_id: int) -> Job | None:
        """An unfinished job by id (finished ones: `record()`)."""
        return self._jobs.get(job_id)

    def jobs(self, user: str | None = None) -> list[Job]:
        """Unfinished jobs in the order they are expected to run (drawing ones first)."""
        queued = [job for batch in self._current_plan() for job in batch]
        return [
            job
            for job in [*self._running, *queued]
            if not job.done() and (user is None or job.requester == user)
        ]

    def recovered(self) -> list[Job]:
        """Jobs from before the last restart that still need a reply (they have a reply_to):
        re-queued ones, and finished ones whose reply was never confirmed. Oldest first."""
        return list(self._recovered)

    def mark_delivered(self, job_id: int) -> None:
        """The frontend has replied for this job: it is not handed out by `recovered()` again."""
        self._check_open()
        self._journal.mark_delivered(job_id)

    def history(self, requester: str | None = None, limit: int = 10) -> list[JobRecord]:
        """Finished drawings, newest first (request, seeds, PNG paths): /history, rerolls."""
        self._check_open()
        return self._journal.history(requester, limit)

    def record(self, job_id: int) -> JobRecord | None:
        """What the journal knows of a job, finished or not (e.g. for a reroll button after a
        restart: `submit(replace(record.request, seed=None, requester=...))`)."""
        self._check_open()
        return self._journal.get(job_id)

    # --- admin ----------------------------------------------------------------------------

    def is_admin(self, requester: str) -> bool:
        """Whether `requester` is in the configured admins (frontends gate admin commands)."""
        return requester in self.config.admins

    @property
    def default_model(self) -> str:
        """The model for requests that name none ("" if there is no model at all)."""
        return self._default_model or next(iter(self._registry.models), "")

    def models(self) -> list[str]:
        """The names of the models requests may name, in the registry's order."""
        return list(self._registry.models)

    def model_info(self, name: str) -> ModelInfo:
        """The registry entry for `name` (e.g. its defaults); ModelNotFound if there is none."""
        return self._registry.get(name)

    async def swap_model(self, name: str, by: str) -> str:
        """Admin: load model `name`, then make it the default for new jobs; returns its name.

        The loaded model keeps serving until the new one is ready; if loading fails it stays,
        and this raises GenerationFailed with the reason. Queued jobs keep their own model.
        """
        if not self.is_admin(by):
            raise InvalidRequest("Only an admin can change the model.", field="model")
        if self._closing:
            raise EngineClosed("The bot is shutting down.")
        entry = self._registry.get(name)
        async with self._model_lock:
            if self._model is None or self._model.name != entry.name:
                previous = self._model.name if self._model is not None else None
                try:
                    model = await self.run_in_worker(self._load_and_warm_up, entry.name)
                except Exception as e:
                    log.error("admin %s: cannot load model %s", by, entry.name, exc_info=e)
                    raise GenerationFailed(
                        f"Could not load {entry.name}: {type(e).__name__}: {e}. "
                        f"Still serving {previous or 'no model'}."
                    ) from e
                self._set_model(model, previous)
        self._default_model = entry.name
        log.info("admin %s: default model is now %s", by, entry.name)
        self._queue_changed()
        return entry.name

    def pause(self) -> None:
        """Admin: start no new batch (the drawing one finishes); jobs can still be queued."""
        self._paused = True
        self._queue_changed()

    def resume(self) -> None:
        """Admin: undo pause()."""
        self._paused = False
        self._wakeup.set()
        self._queue_changed()

    def status(self) -> EngineStatus:
        """The loaded and default model, pause state, queue length and swaps so far."""
        return EngineStatus(
            model=self._model.name if self._model is not None else None,
            default_model=self.default_model,
            paused=self._paused,
            closing=self._closing,
            queued=len(self._queue),
            running=tuple(job.id for job in self._running if not job.done()),
            swaps=self._swaps,
        )

    async def run_in_worker(self, fn: Callable[..., R], *args: Any) -> R:
        """Run `fn(*args)` on the engine's torch thread (after the call in progress): any
        other torch work (upscalers…) must go there too."""
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    # --- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        """The engine loop: run it as one task for the engine's life; returns after close()."""
        if self._run_task is not None:
            raise RuntimeError("Engine.run() is already running")
        self._run_task = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        try:
            if not self._queue and self.default_model and not self._closing:
                # A failure is logged; jobs for that model fail when they come up.
                with contextlib.suppress(GenerationFailed):
                    await self._ensure_model(self.default_model)
            while not self._closing:
                batch = [] if self._paused else self._take()
                if not batch:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                await self._run_batch(batch)
        except asyncio.CancelledError:
            self._closing = self._interrupt = True  # the torch thread stops at its next step
            raise
        finally:
            if self._closing and not self._closed:
                self._shut_down()

    async def close(self, grace_s: float | None = None) -> None:
        """Refuse new jobs; let the drawing batch finish within `grace_s` (default
        shutdown_grace_s), then interrupt it. Unfinished jobs stay in the journal for the next
        start; whoever awaits them gets EngineClosed."""
        if self._closed:
            return
        self._closing = True
        self._wakeup.set()
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        task = self._run_task
        if task is not None and not task.done():
            done, _ = await asyncio.wait({task}, timeout=grace)
            if not done:
                log.warning("shutdown: the batch did not finish within %.0f s; interrupting", grace)
                self._interrupt = True
                done, _ = await asyncio.wait({task}, timeout=max(grace, 10.0))
                if not done:
                    log.error("shutdown: the torch thread is still busy; closing anyway")
        if not self._closed:
            self._shut_down()

    def _shut_down(self) -> None:
        self._closed = True
        self._closing = True
        for job in list(self._jobs.values()):
            if job.state == "running":
                self._journal.mark_queued(job.id, undo_attempt=True)
            job._error = EngineClosed(RESTARTING)
            job._done.set()
            job._notify()
        kept = len(self._jobs)
        self._jobs.clear()
        self._worker.shutdown(wait=False, cancel_futures=True)
        self._journal.close()
        log.info("engine closed; %d unfinished job(s) stay in the journal", kept)

    def _take(self) -> list[Job]:
        batch = self._queue.take(self._current_model_name(), self._clock(), self._batch_limit)
        if batch:
            self._queue_changed()
        return batch

    async def _run_batch(self, batch: list[Job]) -> None:
        name = batch[0].model
        try:
            model = await self._ensure_model(name)
        except GenerationFailed as e:
            for job in batch + self._queue.remove_model(name):
                self._finish(job, "failed", e)
            return
        if self._closing:
            return  # never started: the jobs stay queued in the journal
        now = self._clock()
        for job in batch:
            job._state = "running"
            job._started_at = now
            job._total = job.request.num_inference_steps or 0
            self._journal.mark_running(job.id)
            r = job.request
            log.info(
                "job %d started: %s %dx%d %d steps %s, %d image(s), batch of %d, waited %.1f s",
                job.id,
                job.model,
                r.width,
                r.height,
                r.num_inference_steps,
                r.sampler,
                job.images,
                len(batch),
                now - job.queued_at,
            )
            job._notify()
        self._running = batch
        try:
            await self._draw(model, batch)
        finally:
            self._running = []
            self._call = None

    async def _draw(self, model: M, jobs: list[Job]) -> None:
        """One generate() call for `jobs`; on failure of several, each again on its own."""
        live = [job for job in jobs if not job.done()]
        if not live or self._interrupt:
            return
        first = live[0].request
        call = _Call(
            jobs=live,
            key=timing_key(first),
            steps=first.num_inference_steps or 0,
            started=time.perf_counter(),
            preview_map=model.preview,
        )
        self._call = call
        draw = functools.partial(
            self._generate,
            model,
            [job.request for job in live],
            limits=self._limits,
            on_step=functools.partial(self._on_step_in_worker, call),
            cancelled=functools.partial(self._cancelled, call),
        )
        try:
            results = await self.run_in_worker(draw)
        except JobCancelled:
            # Every job of the call was cancelled (each is finished already), or shutdown.
            for job in live:
                if not job.done() and not self._interrupt:
                    self._finish(job, "failed", GenerationFailed("The drawing stopped; try again."))
            return
        except Exception as e:
            if self._interrupt:
                log.warning("interrupted by shutdown: %r", e)
                return  # the jobs stay queued in the journal
            pending = [job for job in live if not job.done()]
            if len(pending) > 1:
                # One bad request (or out of memory at this batch size) must not sink the others.
                log.warning("batch of %d jobs failed (%r); drawing each alone", len(pending), e)
                for job in pending:
                    await self._draw(model, [job])
                return
            error = (
                e
                if isinstance(e, EngineError)
                else GenerationFailed(
                    "Something went wrong while drawing; the admin can find the details in the log."
                )
            )
            log.warning("jobs %s failed: %r", [job.id for job in pending], e, exc_info=e)
            for job in pending:
                self._finish(job, "failed", error)
            return
        self._timing.record_call(
            call.key, steps=call.steps, total=call.total, seconds=time.perf_counter() - call.started
        )
        if len(results) != sum(job.images for job in live):
            log.error("generate() returned %d images for %d jobs", len(results), len(live))
            for job in live:
                self._finish(job, "failed", GenerationFailed("The drawing went wrong; try again."))
            return
        start = 0
        for job in live:
            mine, start = results[start : start + job.images], start + job.images
            if not job.done():  # a cancelled batch-mate's images are dropped
                await self._complete(job, mine)

    async def _complete(self, job: Job, results: list[GenerationResult]) -> None:
        # Files first, then the journal, then the awaiters: a crash in between draws the job
        # again into the same file names instead of losing it or duplicating it.
        saved = await asyncio.to_thread(self._save, job.id, results)
        if job.done():  # cancelled while saving
            await asyncio.to_thread(_remove, [image.path for image in saved])
            return
        self._journal.mark_done(job.id, saved)
        self._journal.trim(self.config.history_size)
        self._finish(job, "done", results=results)

    def _save(self, job_id: int, results: list[GenerationResult]) -> list[SavedImage]:
        self._results_dir.mkdir(parents=True, exist_ok=True)
        saved = []
        for i, result in enumerate(results, start=1):
            path = self._results_dir / f"{job_id:06d}-{i}.png"
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(result.png)
            os.replace(tmp, path)  # atomic: a crash never leaves half a PNG under the name
            saved.append(SavedImage(path=str(path), seed=result.seed, infotext=result.infotext))
        return saved

    def _finish(
        self,
        job: Job,
        state: JobState,
        error: EngineError | None = None,
        *,
        results: list[GenerationResult] | None = None,
    ) -> None:
        if job.done():
            return
        job._state, job._error, job._results = state, error, results
        if state != "done":
            self._journal.mark_failed(job.id, str(error), state=state)
        self._jobs.pop(job.id, None)
        self._queue.remove(job.id)
        now = self._clock()
        started = job._started_at if job._started_at is not None else now
        log.info(
            "job %d %s after %.1f s drawing, %.1f s waiting%s",
            job.id,
            state,
            now - started,
            started - job.queued_at,
            f": {error}" if error is not None else "",
        )
        job._done.set()
        job._notify()
        self._queue_changed()

    # --- the worker thread's side ---------------------------------------------------------

    def _on_step_in_worker(self, call: _Call, step: int, total: int, latents: Any) -> None:
        """generate()'s step callback: runs on the torch thread; hands over to the loop."""
        now = time.perf_counter()
        previews: dict[int, bytes] | None = None
        every = self.config.preview_every_steps
        if every and call.previews and latents is not None and step % every == 0 and step < total:
            try:
                previews = {}
                index = 0
                for job in call.jobs:
                    if not job.done():
                        previews[job.id] = preview_png(latents[index], call.preview_map)
                    index += job.images
            except (ValueError, IndexError, RuntimeError, TypeError) as e:
                call.previews = False  # a sampler's unusual latents must not cost the image
                log.warning("no previews for jobs %s: %s", [job.id for job in call.jobs], e)
                previews = None
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._on_step, call, step, total, now, previews)

    def _cancelled(self, call: _Call) -> bool:
        """generate()'s cancel check (torch thread): stop when nobody wants the batch."""
        return self._interrupt or all(job.done() for job in call.jobs)

    def _on_step(
        self, call: _Call, step: int, total: int, at: float, previews: dict[int, bytes] | None
    ) -> None:
        if call.last_step_at is not None and step > call.step:
            self._timing.record_step(call.key, (at - call.last_step_at) / (step - call.step))
        call.last_step_at, call.step, call.total = at, step, total
        for job in call.jobs:
            if job.done():
                continue
            job._step, job._total = step, total
            if previews is not None and job.id in previews:
                job._preview = previews[job.id]
            job._notify()

    def _load_and_warm_up(self, name: str) -> M:
        """Load a model and draw one tiny image with it (torch thread)."""
        started = time.perf_counter()
        model = self._load_fn(name)
        if self.config.warm_up:
            warm_up = GenerationRequest(
                prompt="warm-up", width=64, height=64, num_inference_steps=1, seed=0, model=name
            )
            try:
                self._generate(model, [warm_up], limits=self._limits)
            except Exception as e:  # the model may still draw real requests; they will tell
                log.warning("warm-up of model %s failed: %r", name, e)
        self._timing.record_load(time.perf_counter() - started)
        return model

    # --- models ---------------------------------------------------------------------------

    async def _ensure_model(self, name: str) -> M:
        async with self._model_lock:
            if self._model is not None and self._model.name == name:
                return self._model
            previous = self._model.name if self._model is not None else None
            # One pipeline at a time: let go of the old one before loading the next.
            self._model = None
            log.info("loading model %s (replacing %s)", name, previous or "none")
            try:
                model = await self.run_in_worker(self._load_and_warm_up, name)
            except Exception as e:
                log.error("cannot load model %s", name, exc_info=e)
                raise GenerationFailed(
                    f"The model {name} could not be loaded; the admin can find details in the log."
                ) from e
            self._set_model(model, previous)
            return model

    def _set_model(self, model: M, previous: str | None) -> None:
        self._model = model
        self._device_type = model.device.type
        if previous is not None:
            self._swaps += 1
        self._queue_changed()

    def _current_model_name(self) -> str | None:
        return self._model.name if self._model is not None else None

    def _batch_limit(self, job: Job) -> int:
        """Most images one pipeline call may hold at this job's size."""
        budget = self.config.max_batch_pixels or AUTO_BATCH_PIXELS.get(self._device_type, 0)
        if budget <= 0:
            return self.config.max_batch
        pixels = (job.request.width or 1) * (job.request.height or 1)
        return max(1, min(self.config.max_batch, budget // pixels))

    # --- requests, the journal and the queue ----------------------------------------------

    def _resolve(self, request: GenerationRequest) -> GenerationRequest:
        name = request.model or self.default_model
        if not name:
            raise InvalidRequest(
                "No model is installed yet; ask the admin to add one.", field="model"
            )
        entry = self._registry.get(name)
        return check_request(
            dataclasses.replace(request, model=entry.name), self._limits, entry.defaults
        )

    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosed("The bot is shutting down; try again in a minute.")

    def _check_owner(self, requester: str, by: str, job_id: int) -> None:
        if by != requester and not self.is_admin(by):
            raise InvalidRequest(
                f"Only whoever asked for job #{job_id}, or an admin, can cancel it.", field="job"
            )

    def _enqueue(self, job: Job) -> None:
        self._jobs[job.id] = job
        self._queue.push(job)
        self._wakeup.set()
        self._queue_changed()

    def _queue_changed(self) -> None:
        """Queued jobs' positions and ETAs may have moved: wake their watchers."""
        self._plan_key = None
        for job in self._queue.jobs():
            job._notify()

    def _current_plan(self) -> list[list[Job]]:
        """The expected batches (cached; the model-wait rule changes it with time only)."""
        key = (self._queue.version, self._current_model_name(), self._paused, int(self._clock()))
        if key != self._plan_key:
            self._plan = self._queue.plan(key[1], self._clock(), self._batch_limit)
            self._plan_key = key
        return self._plan

    def queued_estimate(self, job: Job) -> tuple[int | None, float | None]:
        """(1-based queue position, seconds until its result) of a queued job."""
        position = 0
        eta: float | None = self._running_remaining()
        model = self._current_model_name()
        for batch in self._current_plan():
            first = batch[0].request
            cost = self._timing.call(timing_key(first), first.num_inference_steps or 0)
            if batch[0].model != model:
                cost = (
                    None
                    if cost is None or self._timing.load_s is None
                    else cost + self._timing.load_s
                )
            model = batch[0].model
            eta = None if eta is None or cost is None else eta + cost
            if job in batch:
                return position + batch.index(job) + 1, eta
            position += len(batch)
        return None, None

    def _running_remaining(self) -> float | None:
        call = self._call
        if call is None:
            return 0.0
        step = self._timing.step(call.key)
        if step is None:
            return None
        total = call.total or round(call.steps * self._timing.steps_per_step.get(call.key, 1.0))
        return max(0, total - call.step) * step + max(0.0, self._timing.extra_s.get(call.key, 0.0))

    def running_eta(self, job: Job) -> float | None:
        call = self._call
        if call is None or job not in call.jobs:
            return None
        return self._running_remaining()

    def _replay(self) -> list[Job]:
        """Re-queue the journal's waiting and interrupted jobs; collect unsent replies."""
        requeued = 0
        for record in self._journal.pending():
            if record.state == "running" and record.attempts >= self.config.max_attempts:
                log.error(
                    "job %d was drawing during %d crashes: failing it", record.id, record.attempts
                )
                self._journal.mark_failed(
                    record.id, "This drawing stopped the bot, so it was not tried again."
                )
                continue
            try:
                request = self._resolve(record.request)
            except InvalidRequest as e:
                self._journal.mark_failed(record.id, str(e))
                continue
            if record.state == "running":
                self._journal.mark_queued(record.id)
            waited = max(0.0, time.time() - record.submitted_at)
            job = Job(
                self,
                id=record.id,
                request=request,
                reply_to=record.reply_to,
                submitted_at=record.submitted_at,
                queued_at=self._clock() - waited,
            )
            self._enqueue(job)
            requeued += 1
        finished = [
            Job.finished(self, record, queued_at=self._clock())
            for record in self._journal.undelivered()
        ]
        recovered = [job for job in self._jobs.values() if job.reply_to] + finished
        if requeued or finished:
            log.info(
                "journal: %d job(s) queued again, %d finished job(s) still to reply to",
                requeued,
                len(finished),
            )
        return sorted(recovered, key=lambda job: job.id)
