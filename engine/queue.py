"""The fair queue: round-robin over requesters, FIFO per requester, grouped by model, batched.

Pure bookkeeping (no asyncio, no torch): the engine asks `take()` for the next batch and `plan()`
for the batches it expects to run after that (queue positions and ETAs).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar

from engine.request import GenerationRequest


@dataclass(frozen=True, kw_only=True)
class QueueConfig:
    """The [queue] settings table: fair share, batching, model swaps, journal and shutdown.

    Args:
        max_queued: most jobs waiting in the queue, all users together.
        max_queued_per_user: most unfinished jobs (waiting or drawing) per requester; admins
            and priority users are exempt.
        priority_users: requester ids (e.g. "discord:1234") whose jobs run before everyone
            else's.
        admins: requester ids that may cancel anyone's job and swap models.
        max_batch: most images drawn in one pipeline call (jobs from different users that
            share model, size, steps, sampler, CFG scale and clip skip).
        max_batch_pixels: most pixels (width x height x images) in one pipeline call, so
            batching is only used where it pays; 0 = measured default for the device (4 x
            128x128 on a CPU, where large images are compute-bound; max_batch on a GPU, SDXL
            models 2 megapixels).
        max_model_wait_s: seconds a job for another model may wait while jobs for the loaded
            model keep coming, before the engine swaps models for it.
        preview_every_steps: make a low-cost preview image every N denoising steps; 0 = never.
        shutdown_grace_s: seconds the running batch may take to finish at shutdown before it
            is interrupted (it is then drawn again after the restart).
        journal: SQLite journal of jobs, relative to settings.toml; ":memory:" keeps none
            (jobs are lost on restart).
        results_dir: folder for finished images (history, rerolls, replies after a restart),
            relative to settings.toml.
        history_size: finished jobs remembered in the journal for /history and rerolls.
        max_attempts: a job that was drawing when the process died this many times is failed
            instead of being tried again (it may be what kills the process).
        warm_up: draw one tiny image after loading a model so the first job is not slow.
        backend: "local" draws in this process; "redis" hands jobs to `aidraw worker`
            processes through Redis (`engine.pool`): one per GPU, on any machine.
        redis_url: the Redis server of backend "redis" (redis:// or rediss:// for TLS, a
            password allowed); AIDRAW_REDIS_URL in the environment overrides it.
        claim_timeout_s: with backend "redis", a job whose worker has made no progress for
            this long (it died or hangs) is taken over by another worker.
    """

    max_queued: int = 100
    max_queued_per_user: int = 5
    priority_users: tuple[str, ...] = ()
    admins: tuple[str, ...] = ()
    max_batch: int = 4
    max_batch_pixels: int = 0
    max_model_wait_s: float = 120.0
    preview_every_steps: int = 5
    shutdown_grace_s: float = 30.0
    journal: str = "data/journal.sqlite3"
    results_dir: str = "data/results"
    history_size: int = 200
    max_attempts: int = 2
    warm_up: bool = True
    backend: Literal["local", "redis"] = "local"
    redis_url: str = "redis://127.0.0.1:6379/0"
    claim_timeout_s: int = 60


# max_batch_pixels = 0: pixels per pipeline call by device type (bench/engine.py measured a
# 2-core CPU: 4 images at 128x128 draw 1.5-1.9x faster together, at 192x192 1.1-1.2x, at
# 512x512 not at all). Device types not listed batch up to max_batch at any size.
AUTO_BATCH_PIXELS = {"cpu": 4 * 128 * 128}
# Elsewhere, by model family: an SDXL UNet (2.6 B parameters, 3x SD-1's) holds two 1024x1024
# images per call, so an 8 GB card with medvram does not run out of memory batching them.
FAMILY_BATCH_PIXELS = {"SDXL": 2 * 1024 * 1024}


def batch_limit(
    config: QueueConfig, device_type: str, request: GenerationRequest, family: str = "SD-1.x"
) -> int:
    """Most images one pipeline call may hold at `request`'s size on a `device_type` device,
    for a model of `family` ("SD-1.x", "SD-2.x", "SDXL")."""
    budget = (
        config.max_batch_pixels
        or AUTO_BATCH_PIXELS.get(device_type, 0)
        or FAMILY_BATCH_PIXELS.get(family, 0)
    )
    if budget <= 0:
        return config.max_batch
    pixels = (request.width or 1) * (request.height or 1)
    return max(1, min(config.max_batch, budget // pixels))


class Queued(Protocol):
    """What the queue needs to know about a job."""

    @property
    def id(self) -> int: ...
    @property
    def requester(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def affinity(self) -> Hashable:
        """What the loaded weights must be for the job: its model and its LoRA set."""
        ...

    @property
    def batch_key(self) -> Hashable: ...
    @property
    def images(self) -> int: ...
    @property
    def queued_at(self) -> float: ...


T = TypeVar("T", bound=Queued)


class FairQueue(Generic[T]):
    """Waiting jobs, per requester in submission order, served round-robin.

    Scheduling, in order of precedence:
    1. Priority users' jobs go before everyone else's.
    2. Model affinity: jobs for `current` (the loaded model with the LoRAs merged into it: a
       job's `affinity`) go first, unless another one's oldest job has waited
       `max_model_wait_s` (then that one, the longest-waiting first); with none left for the
       current one, the affinity of the job round-robin would pick next.
    3. Round-robin: the requester served least recently goes first (a new one before anyone
       already served), so a requester with many jobs delays another's first job by at most
       one batch. FIFO within a requester and model (a requester's jobs for another model may
       be overtaken by their jobs for the loaded one).
    4. Batch: the chosen job plus compatible jobs (same `batch_key`) from the front of each
       requester's line, round-robin, while the images fit `limit(job)`.
    """

    def __init__(self, *, max_model_wait_s: float, priority_users: Iterable[str] = ()) -> None:
        self.max_model_wait_s = max_model_wait_s
        self.priority_users = frozenset(priority_users)
        self._state: _State[T] = _State()
        self._by_id: dict[int, T] = {}
        self.version = 0  # bumped on every change, so callers can cache plan()

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._by_id

    def jobs(self) -> list[T]:
        """Every waiting job, oldest first."""
        return sorted(self._by_id.values(), key=lambda job: job.id)

    def count(self, requester: str) -> int:
        """Jobs `requester` has waiting."""
        return len(self._state.lines.get(requester, ()))

    def push(self, job: T) -> None:
        """Add a job at the end of its requester's line."""
        self._state.lines.setdefault(job.requester, []).append(job)
        self._by_id[job.id] = job
        self.version += 1

    def remove(self, job_id: int) -> T | None:
        """Take a waiting job out (cancel); None if it is not waiting."""
        job = self._by_id.pop(job_id, None)
        if job is not None:
            self._state.discard([job])
            self.version += 1
        return job

    def remove_model(self, model: str) -> list[T]:
        """Take out every waiting job for `model` (for when it cannot be loaded)."""
        jobs = [job for job in self.jobs() if job.model == model]
        for job in jobs:
            self.remove(job.id)
        return jobs

    def take(self, current: Hashable, now: float, limit: Callable[[T], int]) -> list[T]:
        """Remove and return the next batch (empty when nothing waits)."""
        batch = self._select(self._state, current, now, limit)
        for job in batch:
            del self._by_id[job.id]
        if batch:
            self.version += 1
        return batch

    def plan(self, current: Hashable, now: float, limit: Callable[[T], int]) -> list[list[T]]:
        """The batches `take()` would return, in order, if nothing changed meanwhile."""
        state = self._state.copy()
        batches: list[list[T]] = []
        while batch := self._select(state, current, now, limit):
            batches.append(batch)
            current = batch[0].affinity
        return batches

    def _select(
        self, state: _State[T], current: Hashable, now: float, limit: Callable[[T], int]
    ) -> list[T]:
        """Pick the next batch and remove it from `state`."""
        users = state.order()
        users = [u for u in users if u in self.priority_users] or users
        if not users:
            return []
        chosen = self._choose(state, users, current, now)
        # The leader: the job of the first requester in round-robin order with one for `chosen`.
        start = next(
            i for i, u in enumerate(users) if any(j.affinity == chosen for j in state.lines[u])
        )
        leader = next(j for j in state.lines[users[start]] if j.affinity == chosen)
        cap = limit(leader)
        batch, images, taken = [leader], leader.images, {leader.id}
        # Batch-mates: round-robin from the front of each requester's line for this affinity
        # (the tier's requesters first); one whose next job does not fit stops contributing.
        tier = users[start + 1 :] + users[: start + 1]
        open_users = tier + [u for u in state.order() if u not in tier]
        while open_users and images < cap:
            for user in list(open_users):
                nxt = next(
                    (j for j in state.lines[user] if j.affinity == chosen and j.id not in taken),
                    None,
                )
                if nxt is None or nxt.batch_key != leader.batch_key or images + nxt.images > cap:
                    open_users.remove(user)
                    continue
                batch.append(nxt)
                taken.add(nxt.id)
                images += nxt.images
                if images >= cap:
                    break
        state.discard(batch)
        state.mark_served(job.requester for job in batch)
        return batch

    def _choose(
        self, state: _State[T], users: list[str], current: Hashable, now: float
    ) -> Hashable:
        oldest: dict[Hashable, T] = {}
        for user in users:
            for job in state.lines[user]:
                best = oldest.get(job.affinity)
                if best is None or (job.queued_at, job.id) < (best.queued_at, best.id):
                    oldest[job.affinity] = job
        if current not in oldest:
            return state.lines[users[0]][0].affinity
        starving = [
            job
            for affinity, job in oldest.items()
            if affinity != current and now - job.queued_at >= self.max_model_wait_s
        ]
        if not starving:
            return current
        return min(starving, key=lambda job: (job.queued_at, job.id)).affinity


class _State(Generic[T]):
    """Requesters' lines and when each was last served (the round-robin order)."""

    def __init__(self) -> None:
        self.lines: dict[str, list[T]] = {}
        self.served: dict[str, int] = {}
        self.tick = 0

    def copy(self) -> _State[T]:
        other: _State[T] = _State()
        other.lines = {user: list(line) for user, line in self.lines.items()}
        other.served = dict(self.served)
        other.tick = self.tick
        return other

    def order(self) -> list[str]:
        """Requesters with waiting jobs, least recently served first, then by arrival."""
        return sorted(self.lines, key=lambda u: (self.served.get(u, -1), self.lines[u][0].id))

    def discard(self, jobs: Iterable[T]) -> None:
        for job in jobs:
            line = self.lines[job.requester]
            line.remove(job)
            if not line:
                # Forget when they were served: they have nothing waiting; on their next
                # job they queue by arrival among requesters not yet served.
                del self.lines[job.requester]
                self.served.pop(job.requester, None)

    def mark_served(self, requesters: Iterable[str]) -> None:
        for user in dict.fromkeys(requesters):
            self.tick += 1
            if user in self.lines:
                self.served[user] = self.tick
