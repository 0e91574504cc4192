"""The API's drawing calls in flight, per requester: what `/progress` reports and what
`/interrupt` and `/skip` stop. A1111 has one job at a time; here each caller sees and stops
only its own (another caller's prompt and preview are not theirs to see)."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from typing import Any

from engine.engine import Engine
from engine.job import Job


@dataclass
class Call:
    """One txt2img or img2img call: its iterations' jobs, one at a time."""

    requester: str
    kind: str  # "txt2img" or "img2img", as A1111's state.job says
    iterations: int
    started: float = field(default_factory=time.time)
    job: Job | None = None
    done: int = 0  # iterations finished
    interrupted: bool = False
    skipped: bool = False


class Calls:
    """The calls in flight (oldest first)."""

    def __init__(self, engine: Engine[Any]) -> None:
        self.engine = engine
        self.active: list[Call] = []

    def start(self, requester: str, kind: str, iterations: int) -> Call:
        call = Call(requester, kind, iterations)
        self.active.append(call)
        return call

    def end(self, call: Call) -> None:
        self.active.remove(call)

    def of(self, requester: str) -> list[Call]:
        return [call for call in self.active if call.requester == requester]

    def interrupt(self, requester: str) -> None:
        """Stop the caller's calls: the drawing job with what it has drawn (A1111's last
        denoised prediction), no further iterations."""
        for call in self.of(requester):
            call.interrupted = True
            self._stop(call)

    def skip(self, requester: str) -> None:
        """Stop the caller's drawing iterations with what they have drawn; their calls go on
        with the next."""
        for call in self.of(requester):
            call.skipped = True
            self._stop(call)

    def _stop(self, call: Call) -> None:
        if call.job is not None and not call.job.done():
            self.engine.finish_early(call.job.id, by=call.requester)

    def progress(self, requester: str, *, with_image: bool) -> dict[str, Any]:
        """A1111's /progress answer for the caller's oldest call (idle: all zeros)."""
        calls = self.of(requester)
        if not calls:
            return {
                "progress": 0.0,
                "eta_relative": 0.0,
                "state": _state(),
                "current_image": None,
                "textinfo": None,
            }
        call = calls[0]
        step = total = 0
        eta: float | None = None
        preview: bytes | None = None
        if call.job is not None:
            now = call.job.progress
            step, total, eta, preview = now.step, now.total, now.eta_s, now.preview
        fraction = (call.done + (step / total if total else 0.0)) / call.iterations
        if eta is None:  # not measured yet: A1111's own guess, time so far over done so far
            spent = time.time() - call.started
            eta = spent / fraction - spent if fraction > 0 else 0.0
        else:  # this iteration's ETA and the ones still to come at the same pace
            eta += eta * (call.iterations - call.done - 1)
        image = base64.b64encode(preview).decode("ascii") if with_image and preview else None
        return {
            "progress": min(max(fraction, 0.01), 1.0),
            "eta_relative": max(eta, 0.0),
            "state": _state(
                skipped=call.skipped,
                interrupted=call.interrupted,
                job=f"{call.kind} {call.done + 1} out of {call.iterations}",
                job_count=call.iterations,
                job_timestamp=time.strftime("%Y%m%d%H%M%S", time.localtime(call.started)),
                job_no=call.done,
                sampling_step=step,
                sampling_steps=total,
            ),
            "current_image": image,
            "textinfo": None,
        }


def _state(**values: Any) -> dict[str, Any]:
    state: dict[str, Any] = {
        "skipped": False,
        "interrupted": False,
        "job": "",
        "job_count": 0,
        "job_timestamp": "0",
        "job_no": 0,
        "sampling_step": 0,
        "sampling_steps": 0,
    }
    state.update(values)
    return state
