"""The bot process of the pool tests: a PoolEngine (as `aidraw run` builds it) with a
stand-in frontend that replies by appending a line to <folder>/replies.jsonl.

`python -m tests.scaleout.botproc FOLDER [JOBS.json]`: submits the requests in JOBS.json
(a list of GenerationRequest fields) with reply_to "test:<i>", answers every job it has
(and every job `recovered()` hands back after a restart) once, then runs until SIGTERM.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from bot.launcher import build_engine
from bot.settings import load
from engine.errors import EngineError
from engine.job import Job
from engine.request import GenerationRequest


async def reply(engine: Any, job: Job, out: Path) -> None:
    try:
        results = await job.result()
        line = {
            "job": job.id,
            "reply_to": job.reply_to,
            "requester": job.requester,
            "seeds": [r.seed for r in results],
            "sha": [hashlib.sha256(r.png).hexdigest() for r in results],
        }
    except EngineError as e:
        if e.key == "restarting":
            return  # the next start replies
        line = {"job": job.id, "reply_to": job.reply_to, "error": str(e)}
    _append(out, line)
    engine.mark_delivered(job.id)


def _append(out: Path, line: dict[str, Any]) -> None:
    with out.open("a") as f:
        f.write(json.dumps(line) + "\n")


async def main(folder: Path, requests: list[dict[str, Any]]) -> None:
    settings = load(folder / "settings.toml")
    engine, store = build_engine(settings)
    out = folder / "replies.jsonl"
    task = asyncio.create_task(engine.run())
    waiting = [asyncio.create_task(reply(engine, job, out)) for job in engine.recovered()]
    for i, fields in enumerate(requests):
        try:
            job = engine.submit(GenerationRequest(**fields), reply_to=f"test:{i}")
        except EngineError as e:  # refused at the door: the frontend says why at once
            _append(
                out, {"reply_to": f"test:{i}", "requester": fields["requester"], "error": str(e)}
            )
            continue
        waiting.append(asyncio.create_task(reply(engine, job, out)))
    _append(folder / "bot.ready", {"jobs": [job.id for job in engine.jobs()]})
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await engine.close(0)
    await asyncio.gather(task, *waiting, return_exceptions=True)
    store.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    given = json.loads(Path(sys.argv[2]).read_text()) if len(sys.argv) > 2 else []
    asyncio.run(main(Path(sys.argv[1]), given))
