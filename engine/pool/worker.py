"""The drawing side of the pool (`aidraw worker`): a local Engine fed from this worker's stream.

One batch at a time: read it (XREADGROUP, blocking), check every job as `submit` does (it is
submitted to the local engine, whose door is the same), draw it (batched inside), store each
result and its PNGs under the job's key with a TTL, and acknowledge the entry in the same
transaction, so an entry is acknowledged only once its results are stored. While it draws, the
entry's claim is renewed whenever the drawing has moved on; a worker that dies or hangs stops
renewing, and after `claim_timeout_s` another worker takes the entry (XAUTOCLAIM), as it takes
the unread entries of a worker whose heartbeat is gone. A result key is written only if there
is none (SET NX), so a job drawn twice is still answered once.

SIGTERM (`stop`) drains: the batch being drawn finishes (within shutdown_grace_s), what is left
in the stream is handed back to the bot, and the worker leaves the roster.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from engine.engine import Engine
from engine.errors import EngineClosed, EngineError, GenerationFailed, JobCancelled
from engine.images import too_big
from engine.job import Job
from engine.pool import wire
from engine.pool.dispatcher import safe_url
from engine.pool.roster import WorkerInfo
from engine.request import GenerationRequest

log = logging.getLogger(__name__)

Entry = tuple[str, str, dict[bytes, bytes], int]  # stream, entry id, fields, deliveries


class PoolWorker:
    """Feeds `engine` (a local Engine that is not running yet) from Redis until `stop`."""

    def __init__(self, engine: Engine[Any], *, name: str = "", device: str = "") -> None:
        self.engine = engine
        self.config = engine.config
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.device = device
        # Any: redis-py types each command as "awaitable or not", for its sync and async sides.
        self._redis: Any = aioredis.from_url(self.config.redis_url)
        self._claim_ms = self.config.claim_timeout_s * 1000
        self._beat_s = max(1.0, min(5.0, self.config.claim_timeout_s / 3))
        self._state = "starting"
        self._current: dict[str, Job] = {}
        self._moved_at = time.monotonic()  # when the drawing last moved on (renews the claim)
        self._jobs_done = 0
        self._images = 0
        self._drawing_s = 0.0
        self._reclaimed_at = -1e9

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set, then drain; raises EngineError if Redis is unreachable."""
        try:
            await self._redis.ping()
            await self._join()
            await self._redis.sadd(wire.WORKERS, self.name)
        except RedisError as e:
            raise wire.PoolUnreachable(
                f"cannot reach Redis at {safe_url(self.config.redis_url)}: {e}"
            ) from e
        engine_task = asyncio.create_task(self.engine.run(), name="engine")
        helpers = [
            asyncio.create_task(self._heartbeat(), name="heartbeat"),
            asyncio.create_task(self._listen(), name="worker-events"),
        ]
        try:
            # The first model loads and warms up before the worker says it is ready (as a
            # swap: the engine loop's own first load waits for it and then has nothing to do).
            default = self.engine.default_model
            if default:
                try:
                    await self.engine.swap_model(default, wire.POOL_ADMIN)
                except EngineError as e:  # logged by the engine; its jobs fail when they come
                    log.error("worker %s: cannot load %s: %s", self.name, default, e)
            self._state = "idle"
            await self._beat()
            log.info("worker %s ready on %s", self.name, self.engine.status().model)
            await self._serve(stop)
            self._state = "draining"
            await self._beat()
            await self._hand_back_unread()
        finally:
            await self.engine.close(0)
            with contextlib.suppress(asyncio.CancelledError):
                await engine_task
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            with contextlib.suppress(RedisError):
                await self._leave()
            await self._redis.aclose()

    async def _serve(self, stop: asyncio.Event) -> None:
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                try:
                    entry = await self._next()
                except RedisError as e:
                    log.warning("Redis: %s; trying again in a second", e)
                    await asyncio.sleep(1.0)
                    continue
                if entry is None:
                    continue
                drawing = asyncio.create_task(self._process(entry))
                await asyncio.wait({drawing, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not drawing.done():
                    grace = self.config.shutdown_grace_s
                    log.info("stopping: the batch may finish for %.0f s", grace)
                    self._state = "draining"
                    await asyncio.wait({drawing}, timeout=grace)
                    if not drawing.done():
                        await self.engine.close(0)  # its jobs end EngineClosed: handed back
                try:
                    await drawing
                except RedisError as e:
                    # Not acknowledged: the entry stays pending, and is taken again (by this
                    # worker or another) once it has been idle for claim_timeout_s.
                    log.warning("Redis failed during entry %s: %s", entry[1], e)
        finally:
            stopping.cancel()

    async def _next(self) -> Entry | None:
        """The next entry: a stale or orphaned one first (every claim_timeout_s / 2), else
        this worker's own (blocking a while, so an idle worker costs nothing)."""
        now = time.monotonic()
        if now - self._reclaimed_at >= self.config.claim_timeout_s / 2:
            self._reclaimed_at = now
            entry = await self._reclaim()
            if entry is not None:
                return entry
        mine = wire.stream(self.name)
        answer = await self._redis.xreadgroup(
            wire.GROUP, self.name, {mine: ">"}, count=1, block=2000
        )
        for _stream, entries in answer or ():
            for entry_id, fields in entries:
                return mine, entry_id.decode(), fields, 1
        return None

    async def _reclaim(self) -> Entry | None:
        names = sorted(n.decode() for n in await self._redis.smembers(wire.WORKERS))
        for name in names:
            key = wire.stream(name)
            try:
                _next_id, claimed, *_ = await self._redis.xautoclaim(
                    key, wire.GROUP, self.name, self._claim_ms, "0-0", count=1
                )
                if claimed:
                    entry_id = claimed[0][0].decode()
                    pending = await self._redis.xpending_range(
                        key, wire.GROUP, min=entry_id, max=entry_id, count=1
                    )
                    tries = pending[0]["times_delivered"] if pending else 1
                    log.warning("taking over %s of worker %s (try %d)", entry_id, name, tries)
                    return key, entry_id, claimed[0][1], tries
                if name == self.name or await self._redis.exists(wire.heartbeat(name)):
                    continue
                answer = await self._redis.xreadgroup(wire.GROUP, self.name, {key: ">"}, count=1)
                for _stream, entries in answer or ():
                    for entry_id, fields in entries:
                        log.warning("taking over %s sent to gone worker %s", entry_id, name)
                        return key, entry_id.decode(), fields, 1
                summary = await self._redis.xpending(key, wire.GROUP)
                if summary["pending"] == 0 and await self._redis.xlen(key) == 0:
                    await self._redis.delete(key)
                    await self._redis.srem(wire.WORKERS, name)
            except ResponseError as e:  # NOGROUP: a stream that is gone
                log.debug("reclaim %s: %s", key, e)
                await self._redis.srem(wire.WORKERS, name)
        return None

    async def _process(self, entry: Entry) -> None:
        key, entry_id, fields, tries = entry
        if b"load" in fields:
            await self._load(key, entry_id, fields[b"load"])
            return
        try:
            jobs = wire.decode_batch(fields.get(b"batch", b""))
        except wire.WireError as e:
            log.error("dropping entry %s of %s: %s", entry_id, key, e)
            await self._redis.xack(key, wire.GROUP, entry_id)
            await self._redis.xdel(key, entry_id)
            return
        answered = await self._redis.mget([wire.result_key(job.key) for job in jobs])
        todo = [job for job, done in zip(jobs, answered, strict=True) if done is None]
        outcomes: dict[str, wire.WireResult | None] = {}
        if tries > self.config.max_attempts:
            for job in todo:
                outcomes[job.key] = self._failure(
                    GenerationFailed(
                        "This drawing stopped a worker every time, so it was not tried again.",
                        key="pool_gave_up",
                    )
                )
            await self._store(key, entry_id, outcomes, {})
            return
        self._state = "busy"
        await self._beat()
        local: dict[str, Job] = {}
        for item in todo:
            try:
                request = await self._with_images(item)
                local[item.key] = self.engine.submit(request)
            except EngineClosed:
                outcomes[item.key] = None
            except EngineError as e:  # the same door as submit: a payload that fails it fails
                outcomes[item.key] = self._failure(e)
        self._current = local
        self._moved_at = time.monotonic()
        started = time.monotonic()
        watchers = [asyncio.create_task(self._report(k, job)) for k, job in local.items()]
        renewer = asyncio.create_task(self._renew(key, entry_id))
        try:
            ends = await asyncio.gather(*(self._outcome(job) for job in local.values()))
        finally:
            renewer.cancel()
            for task in watchers:
                task.cancel()
            self._current = {}
        attempt = f"{self.name}.{entry_id}"  # a second drawing never overwrites the first's
        pngs: dict[str, bytes] = {}
        for item_key, (outcome, drawn) in zip(local, ends, strict=True):
            if outcome is not None and outcome.state == "done":
                images = tuple(
                    dataclasses.replace(image, png=wire.png_key(item_key, attempt, i))
                    for i, image in enumerate(outcome.images)
                )
                pngs.update({image.png: png for image, png in zip(images, drawn, strict=True)})
                outcome = dataclasses.replace(outcome, images=images)
                self._jobs_done += 1
                self._images += len(drawn)
            outcomes[item_key] = outcome
        self._drawing_s += time.monotonic() - started
        # The heartbeat first: when the bot hears of the results, it reads what is loaded now.
        self._state = "idle"
        await self._beat()
        await self._store(key, entry_id, outcomes, pngs)

    async def _load(self, key: str, entry_id: str, name: bytes) -> None:
        """An admin's swap: load the model (the loaded one serves until it is ready) and make it
        this worker's default; the bot reads how it went under the entry's load key."""
        self._state = "busy"
        await self._beat()
        try:
            await self.engine.swap_model(name.decode("utf-8", "replace")[:200], wire.POOL_ADMIN)
            error = ""
        except EngineError as e:
            error = str(e) or "The model could not be loaded."
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(wire.load_key(entry_id), error, ex=3600)
            pipe.xack(key, wire.GROUP, entry_id)
            pipe.xdel(key, entry_id)
            pipe.publish(wire.EVENTS, wire.encode_event("loaded", entry_id))
            await pipe.execute()
        self._state = "idle"
        await self._beat()

    async def _outcome(self, job: Job) -> tuple[wire.WireResult | None, list[bytes]]:
        """How a local job ended, as stored in Redis (None: not ended, hand it back)."""
        try:
            results = await job.result()
        except EngineClosed:
            return None, []
        except JobCancelled as e:
            return wire.WireResult(state="cancelled", error=str(e), error_key=e.key), []
        except EngineError as e:
            return self._failure(e), []
        if any(len(result.png) > wire.MAX_PNG_BYTES for result in results):
            too_big = GenerationFailed("The picture is too big to send.", key="pool_png_too_big")
            return self._failure(too_big), []
        images = tuple(
            wire.WireImage(seed=r.seed, infotext=r.infotext, png=f"{wire.PREFIX}png:{i}")
            for i, r in enumerate(results)
        )
        request = dataclasses.asdict(results[0].request)
        return (
            wire.WireResult(state="done", images=images, worker=self.name, request=request),
            [r.png for r in results],
        )

    def _failure(self, error: EngineError) -> wire.WireResult:
        """A failed job's result: the English, and the message key with its params when they
        are plain values (a Phrase param does not travel: the English is shown then)."""
        plain = all(isinstance(v, str | int | float | bool) for v in error.params.values())
        return wire.WireResult(
            state="failed",
            error=str(error),
            error_key=error.key if plain else None,
            params=error.params if plain else {},
            worker=self.name,
        )

    async def _store(
        self,
        key: str,
        entry_id: str,
        outcomes: dict[str, wire.WireResult | None],
        pngs: dict[str, bytes],
    ) -> None:
        """Results first, then the acknowledgement, in one transaction; a job without an
        outcome (the worker is stopping) goes back to the bot instead."""
        async with self._redis.pipeline(transaction=True) as pipe:
            for png_key, png in pngs.items():
                pipe.set(png_key, png, ex=wire.RESULT_TTL_S)
            for job_key, outcome in outcomes.items():
                if outcome is not None:
                    pipe.set(
                        wire.result_key(job_key),
                        wire.encode_result(outcome),
                        ex=wire.RESULT_TTL_S,
                        nx=True,
                    )
                pipe.delete(wire.inflight_key(job_key))
            pipe.xack(key, wire.GROUP, entry_id)
            pipe.xdel(key, entry_id)
            for job_key, outcome in outcomes.items():
                kind = "done" if outcome is not None else "handback"
                pipe.publish(wire.EVENTS, wire.encode_event(kind, job_key))
            await pipe.execute()

    async def _hand_back_unread(self) -> None:
        """Entries sent to this worker that it will not read: back to the bot."""
        mine = wire.stream(self.name)
        while True:
            answer = await self._redis.xreadgroup(wire.GROUP, self.name, {mine: ">"}, count=10)
            entries = [entry for _s, batch in answer or () for entry in batch]
            if not entries:
                return
            for entry_id, fields in entries:
                try:
                    keys = [job.key for job in wire.decode_batch(fields.get(b"batch", b""))]
                except wire.WireError:
                    keys = []
                await self._store(mine, entry_id.decode(), dict.fromkeys(keys), {})
                log.info("handed back %s", keys)

    async def _with_images(self, item: wire.WireJob) -> GenerationRequest:
        """The request with its pictures fetched and checked as a user's upload is."""
        changes: dict[str, Any] = {}
        for name, digest in item.images.items():
            size = await self._redis.strlen(wire.image_key(digest))
            if size > self.engine._limits.max_image_bytes:  # bounded before it is read
                raise too_big(size, self.engine._limits)
            data = await self._redis.get(wire.image_key(digest))
            if data is None:
                raise EngineError("The picture is gone; send it again.", key="image_not_stored")
            stored = self.engine.store_image(data, mask=name == "mask_image")
            changes[name] = stored.path
        return dataclasses.replace(item.request, **changes)

    async def _report(self, key: str, job: Job) -> None:
        """The local job's progress, published for the bot (the preview when it changes)."""
        sent_preview: bytes | None = None
        async for progress in job.updates():
            self._moved_at = time.monotonic()
            if progress.state != "running":
                continue
            preview = None
            if progress.preview is not None and progress.preview is not sent_preview:
                if len(progress.preview) <= wire.MAX_PREVIEW_BYTES:
                    preview = wire.encode_png(progress.preview)
                sent_preview = progress.preview
            event = wire.encode_event(
                "progress", key, step=progress.step, total=progress.total, preview=preview
            )
            with contextlib.suppress(RedisError):
                await self._redis.publish(wire.EVENTS, event)

    async def _renew(self, key: str, entry_id: str) -> None:
        """Keep the entry claimed while the drawing moves on (a hung worker stops this), or
        while its jobs wait for a model to load (for at most 10 x claim_timeout_s)."""
        claim = self.config.claim_timeout_s
        every = max(1.0, claim / 3)
        started = time.monotonic()
        while True:
            await asyncio.sleep(every)
            now = time.monotonic()
            loading = any(job.state == "queued" for job in self._current.values())
            if now - self._moved_at < claim or (loading and now - started < 10 * claim):
                with contextlib.suppress(RedisError):
                    await self._redis.xclaim(key, wire.GROUP, self.name, 0, [entry_id], justid=True)

    async def _listen(self) -> None:
        """Cancel and finish-early from the bot, for jobs this worker is drawing."""
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(wire.EVENTS)
                    async for message in pubsub.listen():
                        if message.get("type") != "message":
                            continue
                        try:
                            event = wire.decode_event(message["data"])
                        except wire.WireError:
                            continue
                        job = self._current.get(event["key"])
                        if job is None or job.done():
                            continue
                        with contextlib.suppress(EngineError):
                            if event["type"] == "cancel":
                                self.engine.cancel(job.id, by=job.requester)
                            elif event["type"] == "finish_early":
                                self.engine.finish_early(job.id, by=job.requester)
            except RedisError as e:
                log.warning("Redis events: %s; listening again in a second", e)
                await asyncio.sleep(1.0)

    def info(self) -> WorkerInfo:
        status = self.engine.status()
        return WorkerInfo(
            name=self.name,
            host=socket.gethostname(),
            pid=os.getpid(),
            device=self.device,
            device_type=status.device,
            model=status.model,
            loras=tuple((lora.name, lora.te, lora.unet) for lora in self.engine._merged),  # type: ignore[attr-defined]
            state=self._state,
            jobs_done=self._jobs_done,
            images_per_s=round(self._images / self._drawing_s, 3) if self._drawing_s else 0.0,
            swaps=status.swaps,
        )

    async def _beat(self) -> None:
        ttl = self.config.claim_timeout_s
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(wire.heartbeat(self.name), self.info().encode(), ex=ttl)
            pipe.sadd(wire.WORKERS, self.name)  # again: a Redis that lost it (no AOF) learns it
            await pipe.execute()

    async def _heartbeat(self) -> None:
        while True:
            with contextlib.suppress(RedisError):
                await self._beat()
                await self._join()
            await asyncio.sleep(self._beat_s)

    async def _join(self) -> None:
        with contextlib.suppress(ResponseError):  # BUSYGROUP: it is there already
            await self._redis.xgroup_create(
                wire.stream(self.name), wire.GROUP, id="0", mkstream=True
            )

    async def _leave(self) -> None:
        await self._redis.delete(wire.heartbeat(self.name))
        mine = wire.stream(self.name)
        summary = await self._redis.xpending(mine, wire.GROUP)
        if summary["pending"] == 0 and await self._redis.xlen(mine) == 0:
            await self._redis.delete(mine)
            await self._redis.srem(wire.WORKERS, self.name)
