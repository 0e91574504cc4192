"""Crash durability: an engine process killed with SIGKILL mid-drawing loses no job, and the
next one draws every unfinished job exactly once."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest

from engine.engine import Engine
from engine.queue import QueueConfig
from tests.engine_fakes import FakeGenerate, FakeLoader, FakeRegistry

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 120  # the child imports torch; the machine may be busy
PROMPTS = [f"p{i}" for i in range(5)]

# The child: a frontend that submits five jobs, replies to the first two, and reports when the
# third is drawing (the fake holds it there for ever). Then the test kills it.
CHILD = r"""
import asyncio, sys
from pathlib import Path
from engine.engine import Engine
from engine.queue import QueueConfig
from engine.request import GenerationRequest
from tests.engine_fakes import FakeGenerate, FakeLoader, FakeRegistry

def say(text: str) -> None:
    sys.stdout.write(text + "\n")  # one write: the fake prints from the torch thread too
    sys.stdout.flush()

async def main(folder: Path) -> None:
    fake = FakeGenerate(log=folder / "drawn.log", announce=True)
    fake.hold()
    fake.allow(2 * 4)  # p0 and p1 (4 steps each); p2 then waits for ever
    config = QueueConfig(
        journal=str(folder / "journal.sqlite3"), results_dir=str(folder / "results"),
        warm_up=False, max_batch=1,
    )
    engine = Engine(config, registry=FakeRegistry(), load=FakeLoader(), generate=fake)
    task = asyncio.create_task(engine.run())
    jobs = []
    for i in range(5):
        request = GenerationRequest(prompt=f"p{i}", requester=f"user{i}", seed=i)
        jobs.append(engine.submit(request, reply_to=f"chat:{i}"))
        say(f"submitted {jobs[-1].id}")
    for job in jobs[:2]:
        await job.result()
        engine.mark_delivered(job.id)  # the reply went out
    async for progress in jobs[2].updates():
        if progress.state == "running":
            break
    say("drawing-p2-delivered-p0-p1")
    await task

asyncio.run(main(Path(sys.argv[1])))
"""


@pytest.mark.timeout(3 * TIMEOUT_S)
async def test_sigkill_mid_drawing_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        str(tmp_path),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    lines: list[str] = []
    try:
        assert child.stdout is not None
        async with asyncio.timeout(TIMEOUT_S):
            while not lines or lines[-1] != "drawing-p2-delivered-p0-p1":
                line = (await child.stdout.readline()).decode().strip()
                assert line, f"the child ended early: {lines}"
                lines.append(line)
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    assert child.returncode == -signal.SIGKILL
    ids = [int(line.split()[1]) for line in lines if line.startswith("submitted")]
    assert len(ids) == 5
    assert (tmp_path / "drawn.log").read_text() == "done p0\ndone p1\n"

    # A new engine on the same journal: the drawing job and the waiting ones come back, in
    # order, with their reply addresses; the delivered ones do not.
    fake = FakeGenerate(log=tmp_path / "drawn.log")
    config = QueueConfig(
        journal=str(tmp_path / "journal.sqlite3"),
        results_dir=str(tmp_path / "results"),
        warm_up=False,
        max_batch=1,
    )
    engine = Engine(config, registry=FakeRegistry(), load=FakeLoader(), generate=fake)
    task = asyncio.create_task(engine.run())
    try:
        recovered = engine.recovered()
        assert [(job.id, job.reply_to) for job in recovered] == [
            (ids[i], f"chat:{i}") for i in (2, 3, 4)
        ]
        async with asyncio.timeout(TIMEOUT_S):
            images = [await job.result() for job in recovered]
        assert [image.png for [image] in images] == [b"p2|2", b"p3|3", b"p4|4"]
        record = engine.record(ids[2])
        assert record is not None and record.attempts == 2  # killed once, then finished
    finally:
        await engine.close()
        await task

    drawn = (tmp_path / "drawn.log").read_text().split("\n")
    assert sorted(line for line in drawn if line) == [f"done {p}" for p in PROMPTS]
    results = sorted(p.name for p in (tmp_path / "results").iterdir())
    assert results == [f"{job_id:06d}-1.png" for job_id in ids]  # one file per job, no leftovers
