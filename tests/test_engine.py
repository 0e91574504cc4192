"""The engine with a fake generate() (no torch): order, fairness, limits, models, batching,
cancel, progress, failures, shutdown and the journal."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import re
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from engine.engine import Engine
from engine.errors import (
    EngineClosed,
    GenerationFailed,
    InvalidRequest,
    JobCancelled,
    ModelNotFound,
    QueueFull,
)
from engine.job import Job
from engine.journal import Journal, JournalError
from engine.queue import QueueConfig
from engine.request import GenerationRequest, Limits, Progress
from tests.engine_fakes import FakeClock, FakeGenerate, FakeLoader, FakeRegistry

TIMEOUT_S = 60  # generous: the machine may be busy with other test runs


def req(prompt: str, user: str = "u1", **changes: Any) -> GenerationRequest:
    return GenerationRequest(**{"prompt": prompt, "requester": user, "seed": 7, **changes})


@dataclass
class Harness:
    tmp_path: Path
    fake: FakeGenerate = field(default_factory=FakeGenerate)
    loader: FakeLoader = field(default_factory=FakeLoader)
    registry: FakeRegistry = field(default_factory=FakeRegistry)
    clock: FakeClock = field(default_factory=FakeClock)
    engines: list[Engine[Any]] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def engine(self, *, run: bool = True, paused: bool = False, **config: Any) -> Engine[Any]:
        settings: dict[str, Any] = {
            "journal": str(self.tmp_path / "journal.sqlite3"),
            "results_dir": str(self.tmp_path / "results"),
            "warm_up": False,
            "max_batch": 1,
            **config,
        }
        engine: Engine[Any] = Engine(
            QueueConfig(**settings),
            registry=self.registry,
            load=self.loader,
            generate=self.fake,
            limits=Limits(max_steps=50),
            clock=self.clock,
        )
        if paused:
            engine.pause()
        self.engines.append(engine)
        if run:
            self.tasks.append(asyncio.create_task(engine.run()))
        return engine

    @property
    def results(self) -> list[str]:
        folder = self.tmp_path / "results"
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.fake.release()
    for engine in harness.engines:
        await engine.close(grace_s=TIMEOUT_S)
    for task in harness.tasks:
        await asyncio.wait_for(task, TIMEOUT_S)


async def until(job: Job, predicate: Callable[[Progress], bool]) -> Progress:
    """Wait (by the job's own updates) until its progress satisfies `predicate`."""
    async with asyncio.timeout(TIMEOUT_S):
        async for progress in job.updates():
            if predicate(progress):
                return progress
    raise AssertionError(f"job {job.id} ended as {job.progress}")


async def outcome(job: Job) -> Any:
    """The job's result, or the exception it raises."""
    async with asyncio.timeout(TIMEOUT_S):
        try:
            return await job.result()
        except Exception as e:
            return e


async def draw_all(*jobs: Job) -> list[Any]:
    return [await outcome(job) for job in jobs]


def running(p: Progress) -> bool:
    return p.state == "running"


# --- submit ------------------------------------------------------------------------------------


async def test_submit_returns_a_queued_job_and_the_result_follows(h: Harness) -> None:
    engine = h.engine(paused=True)
    job = engine.submit(req("1girl", num_inference_steps=3))
    assert job.progress.state == "queued" and job.progress.position == 1
    assert job.request.model == "alpha" and job.request.width == 64  # the model's defaults
    engine.resume()
    [image] = await job.result()
    assert image.png == b"1girl|7" and image.seed == 7
    assert job.progress.state == "done" and job.progress.step == 3 == job.progress.total
    assert h.results == [f"{job.id:06d}-1.png"]
    assert (h.tmp_path / "results" / h.results[0]).read_bytes() == b"1girl|7"


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"num_inference_steps": 51}, InvalidRequest, r"steps 51 is not allowed: use 1 to 50"),
        ({"width": 100}, InvalidRequest, r"width 100 is not allowed: use a multiple of 8"),
        ({"model": "bta"}, ModelNotFound, r"Unknown model 'bta'. Did you mean: beta\?"),
        (
            {"model": "zeta"},
            ModelNotFound,
            r"^Unknown model 'zeta'\. Installed: alpha, beta, gamma\.$",
        ),
    ],
)
async def test_bad_requests_are_refused_at_the_door(
    h: Harness, changes: dict[str, Any], error: type[Exception], message: str
) -> None:
    engine = h.engine()
    with pytest.raises(error, match=message):
        engine.submit(req("x", **changes))
    assert engine.jobs() == [] and engine.record(1) is None


async def test_a_picture_goes_through_the_door_and_stays_with_its_job(h: Harness) -> None:
    import io

    from PIL import Image

    engine = h.engine(paused=True)
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buf, format="PNG")
    stored = engine.store_image(buf.getvalue())
    assert Path(stored.path).parent == h.tmp_path / "results" / "inputs"
    job = engine.submit(req("x", init_image=stored.path, denoising_strength=0.5))
    assert job.request.init_image == stored.path
    # Only pictures the engine kept: never a path a request makes up, nor one that is gone.
    for path in ("/etc/passwd", str(h.tmp_path / "results" / "inputs" / "gone.png")):
        with pytest.raises(InvalidRequest, match="send it again"):
            engine.submit(req("x", init_image=path))
    with pytest.raises(InvalidRequest, match="not a PNG, JPEG or WebP"):
        engine.store_image(b"GIF89a not really")
    with pytest.raises(InvalidRequest, match="strength is for an image"):
        engine.submit(req("x", denoising_strength=0.5))
    assert [j.id for j in engine.jobs()] == [job.id]


async def test_model_names_are_resolved_at_the_door(h: Harness) -> None:
    engine = h.engine(paused=True)
    assert engine.submit(req("x", model="BETA")).request.model == "beta"


@pytest.mark.parametrize(
    ("model", "model_hash", "picked"),
    [
        ("alpha", "gamma00000", "gamma"),  # the hash wins over the name, as A1111's paste
        ("Beta", "0123456789", "beta"),  # a hash that is not here: the name
        (None, "beta000000", "beta"),
    ],
)
async def test_a_pasted_infotexts_model_is_picked_by_hash_then_name(
    h: Harness, model: str | None, model_hash: str, picked: str
) -> None:
    engine = h.engine(paused=True)
    job = engine.submit(req("x", model=model, model_hash=model_hash))
    assert job.request.model == picked and job.request.model_hash is None


async def test_an_infotexts_model_that_is_not_here_is_refused_listing_the_models(
    h: Harness,
) -> None:
    engine = h.engine(paused=True)
    with pytest.raises(InvalidRequest, match=r"The model 'nai' \(hash 925997e9\) is not here\. "):
        engine.submit(req("x", model="nai", model_hash="925997e9"))
    with pytest.raises(InvalidRequest, match=r"Models here: alpha, beta, gamma; add --model NAME"):
        engine.submit(req("x", model_hash="925997e9"))
    assert engine.jobs() == []


async def test_the_engine_lists_its_models_and_their_entries(h: Harness) -> None:
    engine = h.engine(paused=True)
    assert engine.models() == ["alpha", "beta", "gamma"]  # the registry's order
    assert engine.model_info("Beta").name == "beta"
    with pytest.raises(ModelNotFound):
        engine.model_info("delta")


# --- fair share --------------------------------------------------------------------------------


async def test_many_jobs_of_one_user_delay_another_users_first_job_by_one_batch(
    h: Harness,
) -> None:
    engine = h.engine()
    h.fake.hold()
    mine = [engine.submit(req(f"a{i}", "alice")) for i in range(5)]
    await until(mine[0], running)
    bobs = engine.submit(req("b0", "bob"))
    assert bobs.progress.position == 1
    assert [j.progress.position for j in mine[1:]] == [2, 3, 4, 5]
    h.fake.release()
    await draw_all(*mine, bobs)
    assert h.fake.prompts == [["a0"], ["b0"], ["a1"], ["a2"], ["a3"], ["a4"]]


async def test_round_robin_across_users_and_fifo_within_each(h: Harness) -> None:
    engine = h.engine(paused=True)
    jobs = [
        engine.submit(req(prompt, user))
        for prompt, user in [("a1", "A"), ("a2", "A"), ("a3", "A"), ("b1", "B"), ("b2", "B")]
    ] + [engine.submit(req("c1", "C"))]
    assert [j.id for j in engine.jobs()] == [jobs[i].id for i in (0, 3, 5, 1, 4, 2)]
    engine.resume()
    await draw_all(*jobs)
    assert [p[0] for p in h.fake.prompts] == ["a1", "b1", "c1", "a2", "b2", "a3"]


async def test_priority_users_go_first(h: Harness) -> None:
    engine = h.engine(paused=True, priority_users=("vip",))
    jobs = [engine.submit(req("a", "A")), engine.submit(req("v", "vip"))]
    engine.resume()
    await draw_all(*jobs)
    assert h.fake.prompts == [["v"], ["a"]]


async def test_queue_limits_per_user_and_overall(h: Harness) -> None:
    engine = h.engine(paused=True, max_queued_per_user=2, max_queued=3, admins=("root",))
    engine.submit(req("a", "A"))
    engine.submit(req("a", "A"))
    with pytest.raises(QueueFull, match=r"You already have 2 unfinished .* limit is 2") as full:
        engine.submit(req("a", "A"))
    assert (full.value.position, full.value.limit, full.value.per_user) == (2, 2, True)
    engine.submit(req("b", "B"))
    with pytest.raises(QueueFull, match=r"The queue is full \(3 of 3\)") as everyone:
        engine.submit(req("c", "C"))
    assert not everyone.value.per_user
    assert len(engine.jobs()) == 3
    engine.cancel(engine.jobs()[0].id, by="A")
    engine.submit(req("c", "C"))  # room again


async def test_admins_are_exempt_from_the_per_user_limit(h: Harness) -> None:
    engine = h.engine(paused=True, max_queued_per_user=1, admins=("root",))
    for _ in range(3):
        engine.submit(req("x", "root"))


# --- models --------------------------------------------------------------------------------------


async def test_interleaved_models_cost_one_load_each_not_one_per_job(h: Harness) -> None:
    engine = h.engine(paused=True)
    models = ["alpha", "beta", "gamma"] * 4
    jobs = [engine.submit(req(f"{m}{i}", f"user{i % 4}", model=m)) for i, m in enumerate(models)]
    engine.resume()
    await draw_all(*jobs)
    assert sorted(h.loader.loads) == ["alpha", "beta", "gamma"]
    assert engine.status().swaps == 2  # FIFO would swap 11 times
    drawn = [call[0].model for call in h.fake.calls]
    assert drawn == sorted(drawn, key=h.loader.loads.index)  # grouped by model


@pytest.mark.parametrize(("waited_s", "order"), [(0, "a0 a1 a2 b0"), (61, "a0 b0 a1 a2")])
async def test_another_models_job_waits_at_most_max_model_wait_s(
    h: Harness, waited_s: float, order: str
) -> None:
    engine = h.engine(max_model_wait_s=60)
    h.fake.hold()
    first = engine.submit(req("a0", "A", model="alpha"))
    await until(first, running)
    later = [engine.submit(req("b0", "B", model="beta"))]
    later += [engine.submit(req(f"a{i}", "A", model="alpha")) for i in (1, 2)]
    h.clock.advance(waited_s)
    h.fake.release()
    await draw_all(first, *later)
    assert " ".join(p[0] for p in h.fake.prompts) == order


async def test_a_model_that_cannot_load_fails_only_its_jobs(h: Harness) -> None:
    h.loader.broken.add("gamma")
    engine = h.engine(paused=True)
    broken = [engine.submit(req("g", user, model="gamma")) for user in ("A", "B")]
    fine = engine.submit(req("a", "C", model="alpha"))
    engine.resume()
    errors = await draw_all(*broken)
    assert all(isinstance(e, GenerationFailed) for e in errors)
    assert "gamma could not be loaded" in str(errors[0]) and "/" not in str(errors[0])
    assert (await fine.result())[0].png == b"a|7"


async def test_admin_swap_loads_first_changes_the_default_and_keeps_queued_jobs(h: Harness) -> None:
    engine = h.engine(paused=True, admins=("root",))
    old = engine.submit(req("old"))
    assert old.request.model == "alpha"
    with pytest.raises(InvalidRequest, match="Only an admin"):
        await engine.swap_model("beta", by="u1")
    assert await engine.swap_model("Beta", by="root") == "beta"
    assert engine.status().model == "beta" and engine.default_model == "beta"
    new = engine.submit(req("new"))
    assert new.request.model == "beta"
    engine.resume()
    await draw_all(old, new)
    assert {c[0].prompt: c[0].model for c in h.fake.calls} == {"old": "alpha", "new": "beta"}


async def test_a_failed_swap_keeps_the_old_model_serving(h: Harness) -> None:
    h.loader.broken.add("gamma")
    engine = h.engine(admins=("root",))
    first = engine.submit(req("x"))
    await first.result()
    with pytest.raises(GenerationFailed, match=r"Could not load gamma: .*Still serving alpha"):
        await engine.swap_model("gamma", by="root")
    assert engine.status().model == "alpha" and engine.default_model == "alpha"
    assert (await engine.submit(req("y")).result())[0].png == b"y|7"


# --- batching ------------------------------------------------------------------------------------


async def test_compatible_jobs_of_different_users_share_one_call(h: Harness) -> None:
    engine = h.engine(paused=True, max_batch=4)
    same = [engine.submit(req(f"p{i}", f"user{i}", seed=i)) for i in range(5)]
    other = engine.submit(req("slow", "user9", num_inference_steps=8))
    engine.resume()
    results = await draw_all(*same, other)
    assert [len(call) for call in h.fake.calls] == [4, 1, 1]
    assert [r[0].png for r in results] == [f"p{i}|{i}".encode() for i in range(5)] + [b"slow|7"]


async def test_a_multi_image_job_counts_all_its_images_in_a_batch(h: Harness) -> None:
    engine = h.engine(paused=True, max_batch=4)
    jobs = [engine.submit(req("three", "A", batch_size=3))]
    jobs.append(engine.submit(req("two", "B", batch_size=2)))
    engine.resume()
    three, two = await draw_all(*jobs)
    assert [len(call) for call in h.fake.calls] == [1, 1]
    assert [r.seed for r in three] == [7, 8, 9] and [r.seed for r in two] == [7, 8]
    assert h.results == [f"{jobs[0].id:06d}-{i}.png" for i in (1, 2, 3)] + [
        f"{jobs[1].id:06d}-{i}.png" for i in (1, 2)
    ]


@pytest.mark.parametrize(
    ("max_batch_pixels", "size", "calls"),
    [
        (2 * 64 * 64, 64, [2, 2]),
        (2 * 64 * 64, 128, [1, 1, 1, 1]),
        (0, 64, [4]),  # auto on a CPU: 4 x 128x128
        (0, 256, [1, 1, 1, 1]),  # large images are compute-bound on a CPU: no batching
    ],
)
async def test_batch_size_is_chosen_by_image_size(
    h: Harness, max_batch_pixels: int, size: int, calls: list[int]
) -> None:
    engine = h.engine(paused=True, max_batch=4, max_batch_pixels=max_batch_pixels)
    jobs = [engine.submit(req(f"p{i}", f"u{i}", width=size, height=size)) for i in range(4)]
    engine.resume()
    await draw_all(*jobs)
    assert [len(call) for call in h.fake.calls] == calls


# --- cancel --------------------------------------------------------------------------------------


async def test_cancel_a_queued_job_removes_it_at_once(h: Harness) -> None:
    engine = h.engine(paused=True)
    keep, drop = engine.submit(req("keep")), engine.submit(req("drop"))
    assert engine.cancel(drop.id, by="u1") is True
    assert drop.progress.state == "cancelled" and drop.progress.error == "Cancelled."
    with pytest.raises(JobCancelled):
        await drop.result()
    assert keep.progress.position == 1 and engine.jobs() == [keep]
    engine.resume()
    await keep.result()
    assert h.fake.prompts == [["keep"]]
    record = engine.record(drop.id)
    assert record is not None and record.state == "cancelled"


async def test_cancel_a_running_job_stops_it_at_the_next_step(h: Harness) -> None:
    engine = h.engine()
    h.fake.hold()
    job = engine.submit(req("long", num_inference_steps=20))
    nxt = engine.submit(req("next", "u2"))
    h.fake.allow(1)
    await until(job, lambda p: p.step == 1)
    assert engine.cancel(job.id, by="u1")
    with pytest.raises(JobCancelled):
        await job.result()  # at once, not after the step
    h.fake.release()
    await nxt.result()
    assert h.fake.steps_run[0] == [1, 2]
    assert h.fake.prompts == [["long"], ["next"]]


async def test_cancelling_one_job_of_a_batch_keeps_the_others(h: Harness) -> None:
    engine = h.engine(paused=True, max_batch=4)
    stay = engine.submit(req("stay", "A"))
    go = engine.submit(req("go", "B"))
    h.fake.hold()
    engine.resume()
    h.fake.allow(1)
    await until(stay, lambda p: p.step == 1)
    assert engine.cancel(go.id, by="B")
    h.fake.release()
    assert (await stay.result())[0].png == b"stay|7"
    assert isinstance(await outcome(go), JobCancelled)
    assert h.fake.steps_run == [[1, 2, 3, 4]]  # one call, not interrupted
    assert h.results == [f"{stay.id:06d}-1.png"]


async def test_finish_early_ends_a_drawing_job_with_what_it_drew(h: Harness) -> None:
    """A1111's interrupt/skip: the job is done (its images saved) after the current step; a
    waiting job is cancelled instead, and only the owner or an admin may ask."""
    engine = h.engine()
    h.fake.hold()
    job = engine.submit(req("long", num_inference_steps=20))
    waiting = engine.submit(req("waiting", "u2"))
    h.fake.allow(2)
    await until(job, lambda p: p.step == 2)
    with pytest.raises(InvalidRequest, match=rf"Only whoever asked for job #{job.id}"):
        engine.finish_early(job.id, by="stranger")
    assert engine.finish_early(job.id, by="u1") and engine.finish_early(waiting.id, by="u2")
    h.fake.allow(1)
    assert (await job.result())[0].png == b"long|7"
    # It stops at the step the flag finds (the fake may be past step 2's check already).
    assert h.fake.steps_run[0] in ([1, 2], [1, 2, 3]) and job.progress.state == "done"
    assert isinstance(await outcome(waiting), JobCancelled)
    assert h.results == [f"{job.id:06d}-1.png"]


async def test_finish_early_waits_for_every_batch_mate(h: Harness) -> None:
    engine = h.engine(paused=True, max_batch=4)
    stop = engine.submit(req("stop", "A"))
    stay = engine.submit(req("stay", "B"))
    h.fake.hold()
    engine.resume()
    h.fake.allow(1)
    await until(stop, lambda p: p.step == 1)
    assert engine.finish_early(stop.id, by="A")
    h.fake.release()
    assert [len(await stop.result()), len(await stay.result())] == [1, 1]
    assert h.fake.steps_run == [[1, 2, 3, 4]]  # B wanted all of it: the batch drew on


async def test_only_the_owner_or_an_admin_can_cancel(h: Harness) -> None:
    engine = h.engine(paused=True, admins=("root",))
    job = engine.submit(req("x", "owner"))
    with pytest.raises(InvalidRequest, match=rf"Only whoever asked for job #{job.id}"):
        engine.cancel(job.id, by="stranger")
    with pytest.raises(InvalidRequest, match="There is no job #999"):
        engine.cancel(999, by="root")
    assert engine.cancel(job.id, by="root") is True
    assert job.progress.error == "Cancelled by an admin."
    assert engine.cancel(job.id, by="owner") is False  # already finished


# --- progress ------------------------------------------------------------------------------------


async def test_progress_goes_queued_running_done_with_steps_and_positions(h: Harness) -> None:
    engine = h.engine()
    h.fake.hold()
    jobs = [engine.submit(req(f"p{i}", num_inference_steps=3)) for i in range(3)]
    first = await until(jobs[0], running)
    assert first.position is None and first.eta_s is None  # nothing measured yet
    assert [j.progress.position for j in jobs[1:]] == [1, 2]
    seen: list[Progress] = []

    async def watch() -> None:
        async for progress in jobs[1].updates():
            seen.append(progress)

    watcher = asyncio.create_task(watch())
    h.fake.release()
    await draw_all(*jobs)
    await asyncio.wait_for(watcher, TIMEOUT_S)
    states = [p.state for p in seen]
    assert states[0] == "queued" and states[-1] == "done"
    assert states == sorted(states, key=["queued", "running", "done"].index)
    steps = [p.step for p in seen if p.state == "running"]
    assert steps == sorted(steps) and seen[-1].step == 3 == seen[-1].total


async def test_eta_comes_from_measured_steps(h: Harness) -> None:
    engine = h.engine()
    await engine.submit(req("warm")).result()  # one measured job
    h.fake.hold()
    running_job = engine.submit(req("now"))
    h.fake.allow(2)
    progress = await until(running_job, lambda p: p.step == 2)
    queued = engine.submit(req("later"))
    assert progress.eta_s is not None and progress.eta_s >= 0
    later = queued.progress
    assert later.position == 1 and later.eta_s is not None and later.eta_s >= progress.eta_s


# --- failures ------------------------------------------------------------------------------------


async def test_a_failing_job_fails_alone_with_a_safe_message(h: Harness) -> None:
    h.fake.failing.add("boom")
    engine = h.engine(paused=True, max_batch=4)
    bad, good = engine.submit(req("boom", "A")), engine.submit(req("fine", "B"))
    after = engine.submit(req("after", "C", num_inference_steps=2))
    engine.resume()
    error, ok, later = await draw_all(bad, good, after)
    assert isinstance(error, GenerationFailed)
    assert "kaput" not in str(error) and "/secret" not in str(error)
    assert bad.progress.error == str(error)
    assert ok[0].png == b"fine|7" and later[0].png == b"after|7"
    assert [len(c) for c in h.fake.calls] == [2, 1, 1, 1]  # the batch, then each alone


async def test_out_of_memory_in_a_batch_retries_the_jobs_one_by_one(h: Harness) -> None:
    h.fake.oom_above = 1
    engine = h.engine(paused=True, max_batch=4)
    jobs = [engine.submit(req(f"p{i}", f"u{i}")) for i in range(3)]
    alone_too_big = engine.submit(req("big", "u9", batch_size=2, num_inference_steps=2))
    engine.resume()
    *done, error = await draw_all(*jobs, alone_too_big)
    assert [r[0].png for r in done] == [b"p0|7", b"p1|7", b"p2|7"]
    assert isinstance(error, GenerationFailed) and "Out of GPU memory" in str(error)
    assert [len(c) for c in h.fake.calls] == [3, 1, 1, 1, 1]


# --- threads and the event loop ----------------------------------------------------------------


async def test_all_torch_work_runs_on_one_dedicated_thread(h: Harness) -> None:
    engine = h.engine(warm_up=True, admins=("root",))
    await engine.submit(req("a", model="alpha")).result()
    await engine.submit(req("b", model="beta")).result()
    await engine.swap_model("gamma", by="root")
    threads = h.fake.threads | h.loader.threads
    assert len(threads) == 1
    assert threads != {threading.get_ident()}  # not the event loop's thread


async def test_the_loop_stays_free_while_a_job_draws(h: Harness) -> None:
    engine = h.engine()
    h.fake.hold()
    job = engine.submit(req("slow", num_inference_steps=50))
    await until(job, running)
    # The loop answers other users while the torch thread is busy.
    other = engine.submit(req("other", "u2"))
    assert other.progress.position == 1
    assert engine.cancel(other.id, by="u2")
    h.fake.release()
    await job.result()


async def test_pause_holds_new_batches_until_resume(h: Harness) -> None:
    engine = h.engine()
    engine.pause()
    job = engine.submit(req("x"))
    assert engine.status().paused and job.progress.state == "queued"
    engine.resume()
    await job.result()


# --- shutdown and the journal --------------------------------------------------------------------


async def test_shutdown_finishes_the_running_batch_and_keeps_the_queue(h: Harness) -> None:
    engine = h.engine()
    h.fake.hold()
    jobs = [engine.submit(req("p0"))]
    jobs += [engine.submit(req(f"q{i}"), reply_to=f"chat:{i}") for i in range(2)]
    await until(jobs[0], running)
    closing = asyncio.create_task(engine.close(grace_s=TIMEOUT_S))
    await asyncio.sleep(0)  # yield once: close() starts and refuses new jobs at once
    with pytest.raises(EngineClosed):
        engine.submit(req("late"))
    h.fake.release()
    await closing
    first, *rest = await draw_all(*jobs)
    assert first[0].png == b"p0|7"
    assert all(isinstance(e, EngineClosed) and "restarting" in str(e) for e in rest)

    again = h.engine()
    recovered = again.recovered()
    assert [(j.request.prompt, j.reply_to) for j in recovered] == [
        ("q0", "chat:0"),
        ("q1", "chat:1"),
    ]
    await draw_all(*recovered)
    assert h.fake.prompts == [["p0"], ["q0"], ["q1"]]


async def test_shutdown_interrupts_a_batch_that_overruns_the_grace(h: Harness) -> None:
    engine = h.engine()
    h.fake.hold()
    job = engine.submit(req("endless", num_inference_steps=50), reply_to="chat:1")
    await until(job, running)
    await engine.close(grace_s=0.05)
    assert isinstance(await outcome(job), EngineClosed)
    h.fake.release()
    again = h.engine()
    [back] = again.recovered()
    assert back.id == job.id
    assert (await back.result())[0].png == b"endless|7"
    record = again.record(job.id)
    assert record is not None and record.attempts == 1  # the interrupted try is not counted


async def test_finished_replies_are_handed_out_again_until_delivered(h: Harness) -> None:
    engine = h.engine()
    job = engine.submit(req("x"), reply_to="chat:9")
    [image] = await job.result()
    await engine.close()
    again = h.engine()
    [back] = again.recovered()
    assert back.reply_to == "chat:9" and back.progress.state == "done"
    assert (await back.result())[0].png == image.png
    again.mark_delivered(back.id)
    await again.close()
    assert h.engine().recovered() == []


async def test_history_survives_a_restart_and_feeds_rerolls(h: Harness) -> None:
    engine = h.engine()
    for prompt in ("one", "two"):
        await engine.submit(req(prompt, "alice")).result()
    await engine.submit(req("other", "bob")).result()
    await engine.close()
    again = h.engine()
    history = again.history("alice")
    assert [r.request.prompt for r in history] == ["two", "one"]
    assert [image.path for image in history[0].images] == [
        str(h.tmp_path / "results" / f"{history[0].id:06d}-1.png")
    ]
    assert h.results[history[0].id - 1] == f"{history[0].id:06d}-1.png"
    assert history[0].images[0].seed == 7
    reroll = again.submit(history[0].request)  # same request, as a reroll button would
    assert (await reroll.result())[0].png == b"two|7"


async def test_a_job_that_crashed_the_bot_twice_is_not_retried(h: Harness) -> None:
    journal = Journal(h.tmp_path / "journal.sqlite3")
    job_id = journal.add(req("poison", model="alpha"), reply_to="chat:1", submitted_at=0.0)
    journal.mark_running(job_id)  # crash one…
    journal.mark_running(job_id)  # …and two
    journal.close()
    engine = h.engine()
    [job] = engine.recovered()
    error = await outcome(job)
    assert isinstance(error, GenerationFailed) and "stopped the bot" in str(error)
    assert h.fake.calls == []


async def test_the_journal_has_the_job_before_submit_returns(h: Harness) -> None:
    engine = h.engine(paused=True)
    job = engine.submit(req("x"), reply_to="chat:1")
    record = engine.record(job.id)
    assert record is not None and (record.state, record.reply_to) == ("queued", "chat:1")
    path = h.tmp_path / "journal.sqlite3"
    with (
        contextlib.closing(sqlite3.connect(path, timeout=0)) as other,
        pytest.raises(sqlite3.OperationalError, match="locked"),
    ):
        other.execute("SELECT count(*) FROM jobs").fetchone()


async def test_a_second_engine_on_the_same_journal_is_refused(h: Harness) -> None:
    h.engine()
    with pytest.raises(JournalError, match="another aidraw process"):
        h.engine(run=False)


# --- a full disk and a damaged journal ---------------------------------------------------------


async def settled(h: Harness, job: Job) -> Any:
    """outcome(job), but fail at once if the engine task ends instead (it must not)."""
    waiter = asyncio.ensure_future(outcome(job))
    task = h.tasks[-1]
    await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
    if not waiter.done():
        waiter.cancel()
        raise AssertionError(f"the engine stopped: {task.exception()!r}")
    return waiter.result()


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> Callable[[int | None], None]:
    """`full_disk(n)`: after n more files, writes stop half-way with ENOSPC; None: room again."""
    room: dict[str, int | None] = {"files": None}
    write_bytes = Path.write_bytes

    def write(self: Path, data: bytes) -> int:
        files = room["files"]
        if files is None or files > 0:
            room["files"] = None if files is None else files - 1
            return write_bytes(self, data)
        write_bytes(self, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_bytes", write)
    return lambda files: room.update(files=files)


class FullJournal:
    """The journal's connection with a disk that can fill up: writes then fail as SQLite's do."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.full = False

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        if self.full and sql.split()[0] in ("INSERT", "UPDATE", "DELETE"):
            raise sqlite3.OperationalError("database or disk is full")
        return self.db.execute(sql, params)

    def close(self) -> None:
        self.db.close()


async def test_a_full_disk_fails_the_job_and_the_bot_goes_on(
    h: Harness, full_disk: Callable[[int | None], None]
) -> None:
    engine = h.engine(paused=True)
    big = engine.submit(req("big", batch_size=2), reply_to="chat:1")
    full_disk(1)  # the first picture fits, the second does not
    engine.resume()
    error = await settled(h, big)
    assert isinstance(error, GenerationFailed)
    assert str(error) == (
        "Could not save the picture: the disk is full; the admin has been told in the log."
    )
    assert h.results == []  # no half PNG under its name, no .tmp, no orphan first picture
    record = engine.record(big.id)
    assert record is not None and (record.state, record.error) == ("failed", str(error))

    full_disk(None)  # the admin made room
    [image] = await settled(h, engine.submit(req("next")))
    assert image.png == b"next|7"
    assert h.results == [f"{big.id + 1:06d}-1.png"]


async def test_a_full_journal_does_not_stop_the_engine(h: Harness) -> None:
    h.fake.failing.add("boom")
    engine = h.engine(paused=True)
    drawn = engine.submit(req("drawn"), reply_to="chat:1")
    failed = engine.submit(req("boom", "u2"), reply_to="chat:2")
    journal = FullJournal(engine._journal._db)
    engine._journal._db = journal  # type: ignore[assignment]
    journal.full = True
    engine.resume()
    # The pictures are saved, so the user gets them; the failure is told as it happened.
    assert (await settled(h, drawn))[0].png == b"drawn|7"
    engine.mark_delivered(drawn.id)  # no error message after the picture went out
    assert isinstance(await settled(h, failed), GenerationFailed)

    journal.full = False
    later = engine.submit(req("later", "u3"))
    assert (await settled(h, later))[0].png == b"later|7"
    record = engine.record(later.id)
    assert record is not None and record.state == "done"
    # The two unrecorded ends are as a crash would have left them: drawn again after a restart.
    await engine.close()
    again = h.engine()
    assert [(job.id, job.progress.state) for job in again.recovered()] == [
        (drawn.id, "queued"),
        (failed.id, "queued"),
    ]


def edit_row(path: Path, job_id: int, **columns: Any) -> None:
    """Change a journal row behind the engine's back, as a hand edit or a bad version would."""
    sets = ", ".join(f"{name} = ?" for name in columns)
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*columns.values(), job_id))


@pytest.mark.parametrize(
    ("columns", "why"),
    [
        ({"request": "{not json"}, "request is not JSON"),
        ({"request": "[1, 2]"}, "request is not a JSON object"),
        ({"request": '{"prompt": "x", "width": "big"}'}, "request field width is 'big'"),
        ({"request": '{"negative_prompt": "x"}'}, "request has no prompt"),
        ({"submitted_at": "yesterday"}, "submitted_at is 'yesterday'"),
    ],
)
async def test_a_bad_journal_row_is_failed_and_the_others_replay(
    h: Harness, columns: dict[str, Any], why: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = h.tmp_path / "journal.sqlite3"
    journal = Journal(path)
    ids = [
        journal.add(req(prompt, model="alpha"), reply_to=f"chat:{prompt}", submitted_at=0.0)
        for prompt in ("before", "bad", "after", "newer")
    ]
    journal.close()
    edit_row(path, ids[1], **columns)
    # A field from another version is not an error: it is skipped (with a warning).
    edit_row(path, ids[3], request='{"prompt": "newer", "model": "alpha", "hires": 2}')

    engine = h.engine()
    recovered = engine.recovered()
    assert [job.request.prompt for job in recovered] == ["before", "after", "newer"]
    assert [image.png for [image] in await draw_all(*recovered)] == [
        b"before|7",
        b"after|7",
        b"newer|1000",
    ]
    assert f"job {ids[1]} cannot be read back ({why}" in caplog.text
    for job in recovered:
        engine.mark_delivered(job.id)
    await engine.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        state, error, delivered, *kept = db.execute(
            f"SELECT state, error, delivered, {', '.join(columns)} FROM jobs WHERE id = ?",
            (ids[1],),
        ).fetchone()
    assert state == "failed" and why in error
    assert delivered == 1  # no reply can be built from it: it does not come back every start
    assert kept == list(columns.values())  # the row's text is kept for whoever looks
    assert h.engine().recovered() == []


@pytest.mark.parametrize("damage", ["garbage", "truncated", "scribbled", "bad page"])
async def test_a_damaged_journal_file_stops_start_up_with_one_clear_line(
    h: Harness, damage: str
) -> None:
    path = h.tmp_path / "journal.sqlite3"
    engine = h.engine(paused=True, max_queued=1000)
    for i in range(200):  # some pages, so that half the file loses rows
        engine.submit(req("x" * 400, f"u{i}"), reply_to="chat:1")
    await engine.close()
    data = path.read_bytes()
    middle = len(data) // 2
    path.write_bytes(
        {
            "garbage": b"not a database at all " * 100,
            "truncated": data[:middle],
            "scribbled": data[:middle] + b"\xff" * 4096 + data[middle + 4096 :],
            # Opens and reads fine until that page is needed: only a check of every page sees it.
            "bad page": data[: 5 * 4096 + 8] + b"\x07" * 4 + data[5 * 4096 + 12 :],
        }[damage]
    )
    damaged = path.read_bytes()
    with pytest.raises(JournalError) as raised:
        h.engine(run=False)
    message = str(raised.value)
    assert str(path) in message and "move it aside and restart" in message
    assert "\n" not in message
    assert raised.value.path == str(path)
    assert path.read_bytes() == damaged  # never deleted or written to


async def test_a_finished_row_that_cannot_be_read_is_not_handed_out(h: Harness) -> None:
    engine = h.engine()
    jobs = [engine.submit(req(p), reply_to=f"chat:{p}") for p in ("one", "two")]
    await draw_all(*jobs)
    await engine.close()
    edit_row(h.tmp_path / "journal.sqlite3", jobs[0].id, images="[{")
    again = h.engine()
    assert [job.id for job in again.recovered()] == [jobs[1].id]
    assert [r.id for r in again.history()] == [jobs[1].id]
    await again.close()
    assert [job.id for job in h.engine().recovered()] == [jobs[1].id]  # the bad one stays out


async def test_one_log_line_per_job_start_and_end_names_who_and_how_long(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="engine.engine")
    engine = h.engine()
    job = engine.submit(req("x", "telegram:42"))
    await job.result()
    records = [r for r in caplog.records if getattr(r, "job", None) == job.id]
    lines = [r.getMessage() for r in records]
    assert len(lines) == 2, lines
    assert re.fullmatch(
        rf"job start job={job.id} requester=telegram:42 frontend=telegram model=alpha "
        r"size=64x64 steps=4 sampler='Euler a' images=1 batch=1 wait_s=\d+\.?\d*",
        lines[0],
    )
    assert re.fullmatch(
        rf"job end job={job.id} requester=telegram:42 .* outcome=done "
        r"wait_s=\d+\.?\d* run_s=\d+\.?\d*",
        lines[1],
    )
    # The same fields on the records, for JSON log lines ([log] format = "json").
    start, end = records
    assert (start.event, end.event, end.outcome, end.frontend) == (  # type: ignore[attr-defined]
        "job_start",
        "job_end",
        "done",
        "telegram",
    )
    assert end.run_s >= 0 and end.wait_s >= 0  # type: ignore[attr-defined]


async def test_cancelling_a_job_number_beyond_sqlites_range_says_there_is_no_such_job(
    h: Harness,
) -> None:
    engine = h.engine(paused=True)
    with pytest.raises(InvalidRequest, match=r"There is no job #100000000000000000000000\."):
        engine.cancel(10**23, by="u1")
