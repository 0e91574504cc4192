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

Over the house's ~500 lines on purpose: what is left here is the loop and the state it owns
(jobs, queue, running batch, pause/close); the parts with a life of their own are beside it:
`call` (one generate() call in flight), `model_slot`, `recovery` (journal replay), `results`
(PNG files), `timing` (ETAs), `contracts` (what models and generate() must provide).

A full disk fails the job whose PNGs cannot be saved, not the engine. A journal write that
fails while jobs run (a full disk again) is logged and the job goes on as if the process had
crashed just before that write: the row keeps its last state, and replay after the next start
handles it as it handles a crash (a job not recorded as done or failed is drawn again). Only
`submit` raises for it (JournalError): a job the journal does not have is not queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from engine.call import Call
from engine.checks import check_request
from engine.contracts import AddonKind, GenerateFn, M, ModelInfo, Registry, pick_model
from engine.errors import (
    EngineClosed,
    EngineError,
    GenerationFailed,
    InvalidRequest,
    JobCancelled,
    QueueFull,
)
from engine.images import (
    INPUTS,
    ImageStore,
    StoredImage,
    read_image,
    stored_size,
    upscale_size,
)
from engine.job import Job, key_values
from engine.journal import JobRecord, Journal, JournalError
from engine.model_slot import ModelSlot, tiny_request
from engine.pool.roster import WorkerInfo
from engine.prompting.networks import networks_of
from engine.queue import AUTO_BATCH_PIXELS as AUTO_BATCH_PIXELS  # re-exported for bench/
from engine.queue import FairQueue, QueueConfig, batch_limit
from engine.recovery import replay
from engine.request import GenerationRequest, GenerationResult, JobState, Limits
from engine.results import ResultFiles
from engine.stats import EngineStats, frontend_of
from engine.timing import Timing

log = logging.getLogger(__name__)

RESTARTING = "The bot is restarting; your drawing stays queued and is sent after the restart."
R = TypeVar("R")


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
    device: str  # the loaded model's device type: "cpu", "cuda", "mps"


# --- the engine --------------------------------------------------------------------------------


def _log_hashing(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("cannot hash the models: %r", task.exception())


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
        self._generate = generate
        self._limits = limits or Limits()
        self._default_model = default_model
        self._clock = clock
        self._queue: FairQueue[Job] = FairQueue(
            max_model_wait_s=config.max_model_wait_s, priority_users=config.priority_users
        )
        self._jobs: dict[int, Job] = {}  # every unfinished job: queued or running
        self._running: list[Job] = []
        self._call: Call | None = None
        self._timing = Timing()
        self.stats = EngineStats()  # counts since start, read by bot/web/metrics.py
        self._plan_key: tuple[Any, ...] | None = None
        self._plan: list[list[Job]] = []
        # The one thread that ever runs torch: torch is 1.5-3.8x slower once it hops threads.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aidraw-torch")
        self._wakeup = asyncio.Event()
        self._paused = False
        self._closing = False
        self._closed = False
        self._interrupt = False  # the worker stops at the next step (shutdown after the grace)
        self._run_task: asyncio.Task[None] | None = None
        self._hashing: asyncio.Task[None] | None = None
        self._slot = ModelSlot(
            load=load,
            generate=generate,
            limits=self._limits,
            timing=self._timing,
            run_in_worker=self.run_in_worker,
            warm_up=lambda: self.config.warm_up,
            changed=self._model_loaded,
            stats=self.stats,
        )
        # The LoRA set merged into the loaded model (by the last batch): with the model, what
        # the queue prefers next (a merge costs time, as a model load does).
        self._merged: Hashable = ()
        self._files = ResultFiles(Path(config.results_dir))
        self._images = ImageStore(Path(config.results_dir) / INPUTS)
        self._journal = Journal(config.journal)
        try:
            self._recovered = replay(
                self._journal,
                engine=self,
                resolve=self._resolve,
                enqueue=self._enqueue,
                clock=self._clock,
                max_attempts=config.max_attempts,
            )
        except JournalError:
            self._journal.close()  # its lock would refuse the next try in this process
            raise

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
            JournalError: the journal cannot record it (e.g. a full disk); nothing was
                queued. Logged already; its message names the file, so it is not for users.
        """
        if self._closing:
            raise EngineClosed(
                "The bot is shutting down; try again in a minute.", key="shutting_down"
            )
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
        self.stats.submitted[frontend_of(user)] += 1
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
                raise InvalidRequest(
                    f"There is no job #{job_id}.", field="job", key="no_such_job", job=job_id
                )
            self._check_owner(record.requester, by, job_id)
            return False
        self._check_owner(job.requester, by, job_id)
        cancelled = (
            JobCancelled("Cancelled.", key="cancelled")
            if by == job.requester
            else JobCancelled("Cancelled by an admin.", key="cancelled_by_admin")
        )
        self._finish(job, "cancelled", cancelled)
        return True

    def finish_early(self, job_id: int, by: str) -> bool:
        """A1111's interrupt and skip: a drawing job stops sampling at its next step and is
        done with what it has drawn (the last step's denoised prediction, decoded), once every
        batch-mate asks the same (until then it draws on with them); a waiting one is
        cancelled. True if the job was still unfinished. Raises as `cancel` does.
        """
        self._check_open()
        job = self._jobs.get(job_id)
        if job is None or job.state != "running":
            return self.cancel(job_id, by)
        self._check_owner(job.requester, by, job_id)
        job.finish_early = True
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
        with contextlib.suppress(JournalError):
            # Logged by the journal. The reply went out; the worst left is a second one after
            # a restart, which beats an error message after the picture.
            self._journal.mark_delivered(job_id)

    def history(self, requester: str | None = None, limit: int = 10) -> list[JobRecord]:
        """Finished drawings, newest first (request, seeds, PNG paths): /history, rerolls."""
        self._check_open()
        return self._journal.history(requester, limit)

    def undelivered(self) -> dict[str, int]:
        """Finished jobs whose reply is not confirmed yet, by platform (metrics)."""
        self._check_open()
        return self._journal.undelivered_counts()

    def backup_journal(self, target: str | Path) -> None:
        """Copy the journal into the SQLite file `target` (JournalError if it cannot)."""
        self._check_open()
        self._journal.backup(target)

    def record(self, job_id: int) -> JobRecord | None:
        """What the journal knows of a job, finished or not (e.g. for a reroll button after a
        restart: `submit(replace(record.request, seed=None, requester=...))`)."""
        self._check_open()
        return self._journal.get(job_id)

    # --- admin ----------------------------------------------------------------------------

    def workers(self) -> list[WorkerInfo]:
        """The drawing processes of a Redis pool (`engine.pool`); none here: this one draws."""
        return []

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

    def store_image(self, data: bytes, *, mask: bool = False) -> StoredImage:
        """Check a user's image at the door and keep it for a request's `init_image` (or
        `mask_image`, `mask=True`); InvalidRequest says what was wrong, and nothing is kept."""
        checked = read_image(data, self._limits, mask=mask)
        return StoredImage(str(self._images.put(checked)), checked.first_frame_only)

    def addon_names(self, kind: AddonKind) -> list[str]:
        """The add-on files of a kind ("VAE", "hypernetwork", "LoRA", "embedding") by name."""
        return self._registry.addon_names(kind)

    def model_info(self, name: str) -> ModelInfo:
        """The registry entry for `name` (e.g. its defaults); ModelNotFound if there is none."""
        return self._registry.get(name)

    async def swap_model(self, name: str, by: str) -> str:
        """Admin: load model `name`, then make it the default for new jobs; returns its name.

        The loaded model keeps serving until the new one is ready; if loading fails it stays,
        and this raises GenerationFailed with the reason. Queued jobs keep their own model.
        """
        if not self.is_admin(by):
            raise InvalidRequest(
                "Only an admin can change the model.", field="model", key="admin_only_model"
            )
        if self._closing:
            raise EngineClosed("The bot is shutting down.", key="shutting_down_now")
        entry = self._registry.get(name)
        await self._slot.swap(entry.name, by)
        self._default_model = entry.name
        log.info("admin %s: default model is now %s", by, entry.name)
        self._queue_changed()
        return entry.name

    async def set_addon_defaults(
        self,
        by: str,
        *,
        model: str | None = None,
        vae: str | None = None,
        hypernet: str | None = None,
    ) -> ModelInfo:
        """Admin: the VAE (`vae`: a file name, or "None" for the checkpoint's own) and/or the
        hypernetwork (`hypernet`: "NAME[:STRENGTH]", "" for none) every prompt for `model`
        (default: the default model) gets from now on; returns the updated model entry.

        As a model swap: the model is loaded and draws one tiny image with the new choice
        first; if that fails, nothing changes and this raises the reason (InvalidRequest for
        a missing or bad file, GenerationFailed otherwise). Queued jobs keep their own.
        """
        if not self.is_admin(by):
            raise InvalidRequest(
                "Only an admin can change the model's VAE or hypernetwork.",
                field="model",
                key="admin_only_addons",
            )
        if self._closing:
            raise EngineClosed("The bot is shutting down.", key="shutting_down_now")
        entry = self._registry.get(model or self.default_model)
        changes: dict[str, str] = {}
        defaults = entry.defaults
        if vae is not None:
            changes["vae"] = vae
            defaults = dataclasses.replace(defaults, vae=vae)
        if hypernet is not None:
            changes["hypernet"] = hypernet
            defaults = dataclasses.replace(defaults, hypernet=hypernet)
        request = check_request(tiny_request(entry.name), self._limits, defaults)
        await self._slot.try_drawing(self._registry.check_addons(request))
        updated = self._registry.set_addon_defaults(entry.name, **changes)
        log.info("admin %s: %s now draws with %s", by, entry.name, changes)
        self._queue_changed()
        return updated

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
            model=self._slot.name,
            default_model=self.default_model,
            paused=self._paused,
            closing=self._closing,
            queued=len(self._queue),
            running=tuple(job.id for job in self._running if not job.done()),
            swaps=self._slot.swaps,
            device=self._slot.device_type,
        )

    @property
    def alive(self) -> bool:
        """Whether the engine loop runs and takes jobs (False before run(), once it stopped or
        crashed, and while closing): what /healthz reports."""
        task = self._run_task
        return task is not None and not task.done() and not self._closing

    def queue_lengths(self) -> dict[str, int]:
        """Waiting jobs by model (drawing ones not included)."""
        counts: dict[str, int] = {}
        for job in self._jobs.values():
            if job.state == "queued":
                counts[job.model] = counts.get(job.model, 0) + 1
        return counts

    def addon_loads(self) -> dict[str, int]:
        """Add-on files (LoRA, hypernetwork, VAE) the loaded model has read from disk, by kind;
        counted per loaded model, so a swap starts them again."""
        loads = getattr(getattr(self._slot.model, "addons", None), "loads", None)
        return dict(loads) if loads is not None else {}

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
        # Off the loop and the torch thread: a pasted infotext's `Model hash` finds its model.
        self._hashing = asyncio.create_task(asyncio.to_thread(self._registry.warm_hashes))
        self._hashing.add_done_callback(_log_hashing)
        try:
            if not self._queue and self.default_model and not self._closing:
                # A failure is logged; jobs for that model fail when they come up.
                with contextlib.suppress(GenerationFailed):
                    await self._slot.ensure(self.default_model)
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
                # On failure (logged) the row stays "running": the try counts as a crash.
                with contextlib.suppress(JournalError):
                    self._journal.mark_queued(job.id, undo_attempt=True)
            job.end(job.state, EngineClosed(RESTARTING, key="restarting"))
        kept = len(self._jobs)
        self._jobs.clear()
        self._worker.shutdown(wait=False, cancel_futures=True)
        self._journal.close()
        log.info("engine closed; %d unfinished job(s) stay in the journal", kept)

    def _take(self) -> list[Job]:
        batch = self._queue.take(self._affinity(), self._clock(), self._batch_limit)
        if batch:
            self._queue_changed()
        return batch

    async def _run_batch(self, batch: list[Job]) -> None:
        name = batch[0].model
        try:
            model = await self._slot.ensure(name)
        except GenerationFailed as e:
            for job in batch + self._queue.remove_model(name):
                self._finish(job, "failed", e)
            return
        if self._closing:
            return  # never started: the jobs stay queued in the journal
        self._merged = networks_of(batch[0].request.prompt).loras
        now = self._clock()
        for job in batch:
            # On failure (logged) the row stays "queued": this try is not counted.
            with contextlib.suppress(JournalError):
                self._journal.mark_running(job.id)
            fields = {
                **job.log_fields(),
                "batch": len(batch),
                "wait_s": round(now - job.queued_at, 3),
            }
            log.info("job start %s", key_values(fields), extra={**fields, "event": "job_start"})
            self.stats.wait_s.observe(now - job.queued_at)
            job.start(now)
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
        call = Call(
            live,
            timing=self._timing,
            loop=asyncio.get_running_loop(),
            interrupted=lambda: self._interrupt,
            preview_every_steps=self.config.preview_every_steps,
            preview_map=model.preview,
        )
        self._call = call
        draw = functools.partial(
            self._generate,
            model,
            [job.request for job in live],
            limits=self._limits,
            on_step=call.on_step_in_worker,
            cancelled=call.cancelled,
            finish_early=call.finish_early,
        )
        started = self._clock()
        try:
            try:
                results = await self.run_in_worker(draw)
            finally:  # the torch thread's busy time: near all of it, the device is the bottleneck
                self.stats.busy_s += self._clock() - started
        except JobCancelled:
            # Every job of the call was cancelled (each is finished already), or shutdown.
            for job in live:
                if not job.done() and not self._interrupt:
                    stopped = GenerationFailed("The drawing stopped; try again.", key="stopped")
                    self._finish(job, "failed", stopped)
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
                    "Something went wrong while drawing; "
                    "the admin can find the details in the log.",
                    key="drawing_crashed",
                )
            )
            log.warning("jobs %s failed: %r", [job.id for job in pending], e, exc_info=e)
            for job in pending:
                self._finish(job, "failed", error)
            return
        call.record_duration()
        self.stats.batch_images.observe(len(results))
        if len(results) != sum(job.images for job in live):
            log.error("generate() returned %d images for %d jobs", len(results), len(live))
            for job in live:
                wrong = GenerationFailed("The drawing went wrong; try again.", key="went_wrong")
                self._finish(job, "failed", wrong)
            return
        start = 0
        for job in live:
            mine, start = results[start : start + job.images], start + job.images
            if not job.done():  # a cancelled batch-mate's images are dropped
                await self._complete(job, mine)

    async def _complete(self, job: Job, results: list[GenerationResult]) -> None:
        # Files first, then the journal, then the awaiters: a crash in between draws the job
        # again into the same file names instead of losing it or duplicating it.
        try:
            saved = await asyncio.to_thread(self._files.save, job.id, results)
        except GenerationFailed as e:  # a full disk: this job fails, the next may fit
            self._finish(job, "failed", e)
            return
        if job.done():  # cancelled while saving
            await asyncio.to_thread(self._files.remove, saved)
            return
        try:
            self._journal.mark_done(job.id, saved)
        except JournalError:
            # As a crash here would: the row stays "running" and a restart draws it again. The
            # pictures are saved, so the user gets them now.
            log.warning("job %d: not recorded as done; it is drawn again after a restart", job.id)
        else:
            with contextlib.suppress(JournalError):  # logged; the next finished job trims
                if self._journal.trim(self.config.history_size):
                    # Pictures users sent go with the last job that names them.
                    used = self._journal.input_images()
                    await asyncio.to_thread(self._images.remove_unused, used)
        self._finish(job, "done", results=results)

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
        if state != "done":
            try:
                self._journal.mark_failed(job.id, str(error), state=state)
            except JournalError:
                # As a crash here would: the row keeps its state, so a restart draws the job
                # again (even a cancelled one). Whoever awaits it is still told now.
                log.warning(
                    "job %d: not recorded as %s; it is drawn again after a restart", job.id, state
                )
        self._jobs.pop(job.id, None)
        self._queue.remove(job.id)
        now = self._clock()
        started = job._started_at if job._started_at is not None else now
        fields = {
            **job.log_fields(),
            "outcome": state,
            "wait_s": round(started - job.queued_at, 3),
            "run_s": round(now - started, 3),
        }
        if error is not None:
            fields["error"] = str(error)
        log.info("job end %s", key_values(fields), extra={**fields, "event": "job_end"})
        frontend = frontend_of(job.requester)
        self.stats.jobs[(state, frontend)] += 1
        if job._started_at is not None:
            self.stats.run_s.observe(now - started)
        self.stats.images += len(results or ())
        job.end(state, error, results)
        self._queue_changed()

    # --- requests, the journal and the queue ----------------------------------------------

    def _resolve(self, request: GenerationRequest) -> GenerationRequest:
        for path in (request.init_image, request.mask_image):
            if path is not None and not (self._images.owns(path) and Path(path).is_file()):
                raise InvalidRequest(
                    "The image is not one this bot has (any more); send it again.",
                    field="image",
                    key="image_not_stored",
                )
        if request.extras_upscale and request.init_image is not None:
            upscale_size(stored_size(request.init_image), request.hr_scale, self._limits)
        entry = pick_model(self._registry, request, self.default_model)
        checked = check_request(
            dataclasses.replace(request, model=entry.name, model_hash=None),
            self._limits,
            entry.defaults,
            entry.presets,
        )
        return self._registry.check_addons(checked)

    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosed(
                "The bot is shutting down; try again in a minute.", key="shutting_down"
            )

    def _check_owner(self, requester: str, by: str, job_id: int) -> None:
        if by != requester and not self.is_admin(by):
            raise InvalidRequest(
                f"Only whoever asked for job #{job_id}, or an admin, can cancel it.",
                field="job",
                key="not_your_job",
                job=job_id,
            )

    def _enqueue(self, job: Job) -> None:
        self._jobs[job.id] = job
        self._queue.push(job)
        self._wakeup.set()
        self._queue_changed()

    def _model_loaded(self) -> None:
        self._merged = ()  # a freshly loaded pipeline has no LoRA merged
        self._queue_changed()

    def _affinity(self) -> Hashable:
        """The affinity of the weights now loaded (see `Job.affinity`)."""
        return (self._slot.name, self._merged)

    def _queue_changed(self) -> None:
        """Queued jobs' positions and ETAs may have moved: wake their watchers."""
        self._plan_key = None
        for job in self._queue.jobs():
            job._notify()

    def _batch_limit(self, job: Job) -> int:
        entry = self._registry.models.get(job.request.model or "")
        family = entry.family if entry is not None else "SD-1.x"
        return batch_limit(self.config, self._slot.device_type, job.request, family)

    def _current_plan(self) -> list[list[Job]]:
        """The expected batches (cached; the model-wait rule changes it with time only)."""
        key = (self._queue.version, self._affinity(), self._paused, int(self._clock()))
        if key != self._plan_key:
            self._plan = self._queue.plan(self._affinity(), self._clock(), self._batch_limit)
            self._plan_key = key
        return self._plan

    def queued_estimate(self, job: Job) -> tuple[int | None, float | None]:
        """(1-based queue position, seconds until its result) of a queued job."""
        return self._timing.queued(
            self._current_plan(),
            job,
            model=self._slot.name,
            ahead_s=self._running_remaining(),
        )

    def _running_remaining(self) -> float | None:
        call = self._call
        return 0.0 if call is None else call.remaining_s()

    def running_eta(self, job: Job) -> float | None:
        call = self._call
        if call is None or job not in call.jobs:
            return None
        return self._running_remaining()
