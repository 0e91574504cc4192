"""The bot's side of the pool: an Engine whose loop sends batches to workers through Redis.

Everything a frontend calls works as in the local engine (submit, progress, result, cancel,
history, recovered, admin): this process keeps the fair queue, the per-user caps and the SQLite
journal, so fair share and caps hold for the whole pool. What changes is the loop: instead of
drawing a batch it sends it (one JSON entry with the seeds fixed) to an idle worker's stream,
preferring the worker whose model and LoRAs the batch needs, one batch per worker at a time,
so a faster worker comes back sooner and takes more. Workers write each job's result (and PNGs)
under its key with a TTL and tell this side on the events channel; a sweep reads the same keys
in case an event was missed, so an answer is never lost, and a job is finished here once.

A job's key is "<journal id>-<submitted ms>": stable across a restart of this process, so after
one the journal's unfinished jobs are matched with results or batches still in Redis (nothing
is sent twice); different for a journal that starts again from id 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import logging
import random
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from engine.contracts import Registry
from engine.engine import Engine, EngineStatus
from engine.errors import EngineClosed, GenerationFailed, InvalidRequest, JobCancelled
from engine.job import Job
from engine.pool import wire
from engine.pool.roster import WorkerInfo
from engine.prompting.networks import networks_of
from engine.queue import QueueConfig, batch_limit
from engine.request import GenerationResult, Limits

log = logging.getLogger(__name__)

SWEEP_S = 2.0  # read in-flight jobs' keys at least this often (events may be missed)
ROSTER_S = 1.0  # read the workers' heartbeats at most this often


def job_key(job: Job) -> str:
    """The job's key in Redis (see the module docstring)."""
    return f"{job.id}-{round(job.submitted_at * 1000)}"


def safe_url(url: str) -> str:
    """The Redis URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}"


@dataclass
class InFlight:
    job: Job
    worker: str


def _no_drawing(*args: Any, **kwargs: Any) -> NoReturn:
    raise GenerationFailed("This process does not draw: the worker pool does.", key="went_wrong")


class PoolEngine(Engine[Any]):
    """The Engine of `[queue] backend = "redis"`: see the module docstring."""

    def __init__(
        self,
        config: QueueConfig,
        *,
        registry: Registry,
        limits: Limits | None = None,
        default_model: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            config,
            registry=registry,
            load=_no_drawing,
            generate=_no_drawing,
            limits=limits,
            default_model=default_model,
            clock=clock,
        )
        # Any: redis-py types each command as "awaitable or not", for its sync and async sides.
        self._redis: Any = aioredis.from_url(config.redis_url)
        self._inflight: dict[str, InFlight] = {}
        self._workers: dict[str, WorkerInfo] = {}
        self._roster_at = -1e9
        self._swept_at = -1e9
        self._sweep_now = False
        self._warned_at = -1e9
        self._loads: dict[str, asyncio.Future[None]] = {}
        # What each worker drawing a batch from here will have loaded after it.
        self._expected: dict[
            str, tuple[str, tuple[tuple[str, float, float], ...]]
        ] = {}  # model loads asked of workers
        self._background: set[asyncio.Task[Any]] = set()

    # --- what frontends see -------------------------------------------------------------------

    def workers(self) -> list[WorkerInfo]:
        """The live workers, as of their last heartbeats (for /queue and the web chat)."""
        return sorted(self._workers.values(), key=lambda w: w.name)

    def status(self) -> EngineStatus:
        """As the local engine's: `model` lists what the workers have loaded, `device` is their
        device type when they share one (else "pool"), `swaps` theirs all together."""
        workers = self._workers.values()
        loaded = sorted({w.model for w in workers if w.model})
        kinds = {w.device_type for w in workers}
        return dataclasses.replace(
            super().status(),
            model=", ".join(loaded) or None,
            device=kinds.pop() if len(kinds) == 1 else "pool",
            swaps=sum(w.swaps for w in workers),
        )

    def jobs(self, user: str | None = None) -> list[Job]:
        queued = [job for batch in self._current_plan() for job in batch]
        sent = [entry.job for entry in self._inflight.values()]
        return [
            job
            for job in [*sent, *queued]
            if not job.done() and (user is None or job.requester == user)
        ]

    def cancel(self, job_id: int, by: str) -> bool:
        cancelled = super().cancel(job_id, by)
        self._tell_worker(job_id, "cancel")
        return cancelled

    def finish_early(self, job_id: int, by: str) -> bool:
        unfinished = super().finish_early(job_id, by)
        self._tell_worker(job_id, "finish_early")
        return unfinished

    async def swap_model(self, name: str, by: str) -> str:
        """Admin: the pool's default model for new jobs, loaded first by one worker (an idle
        one without it, if none has it yet); if that worker cannot load it, nothing changes
        and this raises GenerationFailed with its reason. The other workers keep what they
        have loaded for the jobs that name it, and load the new one as its jobs come."""
        if not self.is_admin(by):
            raise InvalidRequest(
                "Only an admin can change the model.", field="model", key="admin_only_model"
            )
        if self._closing:
            raise EngineClosed("The bot is shutting down.", key="shutting_down_now")
        entry = self._registry.get(name)
        await self._read_roster()  # as of now, not of the last tick
        workers = [w for w in self.workers() if w.state in ("idle", "busy")]
        if workers and all(w.model != entry.name for w in workers):
            busy = {e.worker for e in self._inflight.values()}
            worker = min(workers, key=lambda w: (w.name in busy, w.state != "idle", w.name))
            await self._load_on(worker, entry.name)
        self._default_model = entry.name
        log.info("admin %s: the pool's default model is now %s", by, entry.name)
        self._queue_changed()
        return entry.name

    async def _load_on(self, worker: WorkerInfo, name: str) -> None:
        entry_id = await self._redis.xadd(wire.stream(worker.name), {"load": name}, nomkstream=True)
        if entry_id is None:
            raise GenerationFailed(
                f"Could not load {name}: the worker has left; try again.",
                key="pool_worker_left",
                model=name,
            )
        key = wire.load_key(entry_id.decode())
        loaded = asyncio.get_running_loop().create_future()
        self._loads[entry_id.decode()] = loaded
        # A worker that dies meanwhile has the entry taken over; one that never comes back
        # must not hold the admin's command forever.
        deadline = self._clock() + 10 * self.config.claim_timeout_s
        try:
            while (error := await self._redis.get(key)) is None:
                if self._clock() > deadline:
                    raise GenerationFailed(
                        f"Could not load {name}: the worker has left; try again.",
                        key="pool_worker_left",
                        model=name,
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(loaded), 2.0)
        finally:
            self._loads.pop(entry_id.decode(), None)
        await self._redis.delete(key)
        if error:
            # The worker's own words (its engine's swap error), the same in every language.
            raise GenerationFailed(error.decode("utf-8", "replace"), key=None)
        log.info("worker %s loaded %s", worker.name, name)

    async def set_addon_defaults(
        self,
        by: str,
        *,
        model: str | None = None,
        vae: str | None = None,
        hypernet: str | None = None,
    ) -> Any:
        """Admin: as the local engine's, but checked by file only (this process draws nothing;
        the requests it sends carry the choice)."""
        if not self.is_admin(by):
            raise InvalidRequest(
                "Only an admin can change the model's VAE or hypernetwork.",
                field="model",
                key="admin_only_addons",
            )
        entry = self._registry.get(model or self.default_model)
        changes = {k: v for k, v in (("vae", vae), ("hypernet", hypernet)) if v is not None}
        return self._registry.set_addon_defaults(entry.name, **changes)

    # --- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Send batches to the workers and take their results, until close()."""
        if self._run_task is not None:
            raise RuntimeError("Engine.run() is already running")
        self._run_task = asyncio.current_task()
        try:
            try:
                await self._redis.ping()
            except RedisError as e:
                raise wire.PoolUnreachable(
                    f"cannot reach Redis at {safe_url(self.config.redis_url)}: {e}"
                ) from e
            await self._adopt()
            listener = asyncio.create_task(self._listen(), name="pool-events")
            try:
                while not self._closing:
                    self._wakeup.clear()  # before the tick: an event during it wakes the next
                    try:
                        await self._tick()
                    except RedisError as e:
                        log.warning("Redis: %s; trying again in a second", e)
                        await asyncio.sleep(1.0)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), ROSTER_S)
            finally:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
        except asyncio.CancelledError:
            self._closing = True
            raise
        finally:
            if self._closing and not self._closed:
                self._shut_down()

    async def close(self, grace_s: float | None = None) -> None:
        """Refuse new jobs and stop sending; batches already sent stay with their workers (their
        results wait in Redis for the next start)."""
        await super().close(grace_s)
        with contextlib.suppress(RedisError):
            await self._redis.aclose()

    def _shut_down(self) -> None:
        for entry in self._inflight.values():
            # Sent, not drawn here: its journal row never left "queued" (no attempt to undo).
            entry.job._state = "queued"
        super()._shut_down()

    async def _tick(self) -> None:
        now = self._clock()
        if now - self._roster_at >= ROSTER_S or self._sweep_now:
            await self._read_roster()
            self._roster_at = now
        if self._inflight and (self._sweep_now or now - self._swept_at >= SWEEP_S):
            self._sweep_now = False
            self._swept_at = now
            await self._sweep()
        if not self._paused:
            await self._release()
        if self._queue and not self._workers and now - self._warned_at >= 60:
            self._warned_at = now
            log.warning(
                "%d job(s) wait and no worker is alive: start `aidraw worker`", len(self._queue)
            )

    async def _read_roster(self) -> None:
        names = sorted(n.decode() for n in await self._redis.smembers(wire.WORKERS))
        beats = await self._redis.mget([wire.heartbeat(n) for n in names]) if names else []
        workers = {}
        for name, beat in zip(names, beats, strict=True):
            info = WorkerInfo.decode(beat) if beat is not None else None
            if info is not None and info.name == name:
                workers[name] = self._as_expected(info)
        self._workers = workers

    def _as_expected(self, info: WorkerInfo) -> WorkerInfo:
        """A worker drawing a batch from here as it will be once the batch is drawn (its
        heartbeat may still show the model it had before)."""
        busy = {entry.worker for entry in self._inflight.values()}
        if info.name not in busy or info.name not in self._expected:
            self._expected.pop(info.name, None)
            return info
        model, loras = self._expected[info.name]
        return dataclasses.replace(info, model=model, loras=loras)

    def _idle_workers(self) -> list[WorkerInfo]:
        busy = {entry.worker for entry in self._inflight.values()}
        return [w for w in self.workers() if w.state in ("idle", "busy") and w.name not in busy]

    async def _release(self) -> None:
        """Send the next batches to the idle workers, each the batch fair share picks for it."""
        for worker in self._idle_workers():
            if not self._queue:
                return
            limit = functools.partial(self._limit_on, worker.device_type)
            batch = self._queue.take(self._wanted(worker), self._clock(), limit)
            if not batch:
                return
            try:
                await self._send(worker, batch)
            except RedisError as e:
                log.warning("cannot send jobs %s to %s: %s", [j.id for j in batch], worker.name, e)
                for job in batch:
                    if not job.done():
                        self._queue.push(job)
                raise
            finally:
                self._queue_changed()

    def _wanted(self, worker: WorkerInfo) -> Hashable:
        """What `worker` should draw next as far as the weights go: what it has loaded while
        jobs want it, else the oldest waiting model (and LoRAs) no other worker has loaded, so
        that workers spread over the models instead of all swapping to the same one."""
        waiting = [job.affinity for job in self._queue.jobs()]
        if worker.affinity in waiting:
            return worker.affinity
        others = {w.affinity for w in self._workers.values() if w.name != worker.name}
        return next((a for a in waiting if a not in others), worker.affinity)

    def _limit_on(self, device_type: str, job: Job) -> int:
        return batch_limit(self.config, device_type, job.request)

    async def _send(self, worker: WorkerInfo, batch: list[Job]) -> None:
        jobs: list[wire.WireJob] = []
        sent: list[Job] = []
        for job in batch:
            request = job.request
            changes: dict[str, Any] = {}
            # Seeds are fixed here, so that whichever worker draws it (a second one after the
            # first died) draws the same picture. A1111's range (engine.sampling.seeds).
            if request.seed is None:
                changes["seed"] = random.randrange(4294967294)
            if request.subseed is None and request.subseed_strength:
                changes["subseed"] = random.randrange(4294967294)
            images = {}
            try:
                for name in wire.IMAGE_FIELDS:
                    path = getattr(request, name)
                    if path is not None:
                        data = await asyncio.to_thread(Path(path).read_bytes)
                        digest = hashlib.sha256(data).hexdigest()
                        await self._redis.set(wire.image_key(digest), data, ex=wire.RESULT_TTL_S)
                        images[name] = digest
            except OSError as e:  # deleted from results_dir since it was checked
                log.warning("job %d: its picture cannot be read: %s", job.id, e)
                gone = InvalidRequest(
                    "The image is not one this bot has (any more); send it again.",
                    field="image",
                    key="image_not_stored",
                )
                self._finish(job, "failed", gone)
                continue
            drawn = dataclasses.replace(request, **changes)
            jobs.append(wire.WireJob(key=job_key(job), request=drawn, images=images))
            sent.append(job)
        if not jobs:
            return
        async with self._redis.pipeline(transaction=True) as pipe:
            # NOMKSTREAM: a worker that has left has deleted its stream; nothing is added then.
            pipe.xadd(wire.stream(worker.name), {"batch": wire.encode_batch(jobs)}, nomkstream=True)
            for item in jobs:
                pipe.set(wire.inflight_key(item.key), worker.name, ex=wire.RESULT_TTL_S)
            added, *_ = await pipe.execute()
        if added is None:
            await self._redis.delete(*(wire.inflight_key(item.key) for item in jobs))
            self._workers.pop(worker.name, None)
            for job in sent:
                if not job.done():
                    self._queue.push(job)
            log.info("worker %s has left; its batch goes to another", worker.name)
            return
        now = self._clock()
        for job, item in zip(sent, jobs, strict=True):
            self._inflight[item.key] = InFlight(job, worker.name)
            if not job.done():
                job.start(now)
        self._running = [entry.job for entry in self._inflight.values()]
        # What it will have loaded, until its next heartbeat says so itself.
        loras = networks_of(sent[0].request.prompt).loras
        self._expected[worker.name] = (
            sent[0].model,
            tuple((lora.name, lora.te, lora.unet) for lora in loras),
        )
        self._workers[worker.name] = self._as_expected(worker)
        log.info("jobs %s sent to worker %s", [job.id for job in sent], worker.name)

    async def _adopt(self) -> None:
        """After a restart: journal jobs that Redis has a result or a batch for are not sent
        again; their answers are taken as they come."""
        queued = self._queue.jobs()
        if not queued:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for job in queued:
                pipe.get(wire.inflight_key(job_key(job)))
                pipe.exists(wire.result_key(job_key(job)))
            answers = await pipe.execute()
        for i, job in enumerate(queued):
            worker, has_result = answers[2 * i], answers[2 * i + 1]
            if worker is not None or has_result:
                self._queue.remove(job.id)
                self._inflight[job_key(job)] = InFlight(job, worker.decode() if worker else "")
                job.start(self._clock())
        if self._inflight:
            log.info(
                "pool: %d job(s) from before the restart are with workers", len(self._inflight)
            )
            self._sweep_now = True
        self._running = [entry.job for entry in self._inflight.values()]
        self._queue_changed()

    async def _sweep(self) -> None:
        """Finish jobs whose results are in; queue again those no worker holds any more."""
        keys = list(self._inflight)
        # One transaction: a worker stores a result and drops its in-flight mark atomically,
        # so reading both at once never sees a job as neither.
        async with self._redis.pipeline(transaction=True) as pipe:
            for key in keys:
                pipe.get(wire.result_key(key))
                pipe.exists(wire.inflight_key(key))
            answers = await pipe.execute()
        for i, key in enumerate(keys):
            result, held = answers[2 * i], answers[2 * i + 1]
            if result is not None:
                await self._take_result(key, result)
            elif not held:
                entry = self._inflight.pop(key)
                if not entry.job.done():
                    log.info("job %d came back from worker %s", entry.job.id, entry.worker)
                    entry.job._state, entry.job._step = "queued", 0
                    self._queue.push(entry.job)
        self._running = [entry.job for entry in self._inflight.values()]
        self._queue_changed()

    async def _take_result(self, key: str, raw: bytes) -> None:
        entry = self._inflight.pop(key, None)
        if entry is None:
            return
        job = entry.job
        try:
            result = wire.decode_result(raw)
            keys = [image.png for image in result.images]
            sizes = [await self._redis.strlen(png) for png in keys]
            if any(size > wire.MAX_PNG_BYTES for size in sizes):  # bounded before it is read
                raise wire.WireError(f"an image of {max(sizes)} bytes")
            pngs = await self._redis.mget(keys) if keys else []
            drawn = wire.decode_request(result.request) if result.request else job.request
        except wire.WireError as e:
            log.error("job %d: its result in Redis is unreadable: %s", job.id, e)
            self._finish(
                job,
                "failed",
                GenerationFailed("The drawing went wrong; try again.", key="went_wrong"),
            )
            return
        if job.done():
            return  # cancelled meanwhile
        if result.state != "done":
            error_type = JobCancelled if result.state == "cancelled" else GenerationFailed
            error = error_type(
                result.error or "The drawing failed.", key=result.error_key, **result.params
            )
            self._finish(job, "cancelled" if result.state == "cancelled" else "failed", error)
            return
        if any(png is None or len(png) > wire.MAX_PNG_BYTES for png in pngs):
            lost = GenerationFailed("The image was lost; please draw again.", key="image_lost")
            self._finish(job, "failed", lost)
            return
        # The worker's own paths of pictures mean nothing here: the request keeps the bot's.
        request = dataclasses.replace(
            drawn, init_image=job.request.init_image, mask_image=job.request.mask_image
        )
        results = [
            GenerationResult(png=png, seed=image.seed, request=request, infotext=image.infotext)
            for image, png in zip(result.images, pngs, strict=True)
            if png is not None
        ]
        log.info("job %d drawn by worker %s", job.id, result.worker)
        await self._complete(job, results)
        if job.state == "done":  # the journal and results_dir have it now
            await self._redis.delete(wire.result_key(key), *(i.png for i in result.images))

    async def _listen(self) -> None:
        """Progress and "done" events from the workers (a lost one is made up by the sweep)."""
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(wire.EVENTS)
                    self._sweep_now = True  # anything said while not listening
                    self._wakeup.set()
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._on_event(message["data"])
            except RedisError as e:
                log.warning("Redis events: %s; listening again in a second", e)
                await asyncio.sleep(1.0)

    def _on_event(self, raw: bytes) -> None:
        try:
            event = wire.decode_event(raw)
        except wire.WireError:
            return
        if event["type"] == "loaded":
            loaded = self._loads.get(event["key"])
            if loaded is not None and not loaded.done():
                loaded.set_result(None)
            return
        entry = self._inflight.get(event["key"])
        if entry is None:
            return
        if event["type"] in ("done", "handback"):
            self._sweep_now = True
            self._wakeup.set()
        if event["type"] == "handback" and entry.worker in self._workers:
            # It is stopping: nothing more for it, even before its next heartbeat says so.
            info = self._workers[entry.worker]
            self._workers[entry.worker] = dataclasses.replace(info, state="draining")
        elif event["type"] == "progress" and not entry.job.done():
            job = entry.job
            step, total = event.get("step"), event.get("total")
            if isinstance(step, int) and isinstance(total, int):
                job._step, job._total = step, total
            preview = wire.decode_png(event.get("preview"), wire.MAX_PREVIEW_BYTES)
            if preview is not None:
                job._preview = preview
            job._notify()

    def _tell_worker(self, job_id: int, kind: str) -> None:
        key = next((k for k, e in self._inflight.items() if e.job.id == job_id), None)
        if key is None:
            return
        task = asyncio.create_task(self._redis.publish(wire.EVENTS, wire.encode_event(kind, key)))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _affinity(self) -> Hashable:
        # For queue positions: as if the next batch went to the first idle worker.
        idle = self._idle_workers()
        return idle[0].affinity if idle else (None, ())
