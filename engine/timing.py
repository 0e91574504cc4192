"""Timing: moving averages of how long drawing takes, and the queue ETAs made from them.

Keyed by (model, width, height, sampler): seconds per sampler step, the fixed cost of a whole
generate() call beyond its steps (text encoding, VAE decode, PNG), and model load time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from engine.request import GenerationRequest
from engine.sampling.steps import planned_steps

TimingKey = tuple[str, int, int, str, float]  # model, width, height, sampler, hires scale


class Queued(Protocol):
    """A job waiting in the queue, as far as its ETA goes (engine.job.Job is one)."""

    @property
    def request(self) -> GenerationRequest: ...
    @property
    def model(self) -> str: ...


def timing_key(request: GenerationRequest) -> TimingKey:
    """What a request's drawing speed depends on (after defaults are resolved): a hires pass
    makes its steps dearer on average (its second pass draws hr_scale² the pixels)."""
    hires = request.hr_scale if request.enable_hr else 0.0
    return (
        request.model or "",
        request.width or 0,
        request.height or 0,
        request.sampler or "",
        hires,
    )


@dataclass
class Timing:
    """Moving averages of measured seconds, by `TimingKey`."""

    alpha: float = 0.3
    step_s: dict[TimingKey, float] = field(default_factory=dict)
    extra_s: dict[TimingKey, float] = field(default_factory=dict)
    steps_per_step: dict[TimingKey, float] = field(default_factory=dict)
    load_s: float | None = None

    def _mix(self, old: float | None, new: float) -> float:
        return new if old is None else old + self.alpha * (new - old)

    def record_step(self, key: TimingKey, seconds: float) -> None:
        self.step_s[key] = self._mix(self.step_s.get(key), seconds)

    def record_call(self, key: TimingKey, *, steps: int, total: int, seconds: float) -> None:
        """A finished call of `steps` inference steps that made `total` UNet steps."""
        step = self.step_s.get(key)
        if step is None or not total:
            return
        self.extra_s[key] = self._mix(self.extra_s.get(key), seconds - total * step)
        self.steps_per_step[key] = total / steps

    def record_load(self, seconds: float) -> None:
        self.load_s = self._mix(self.load_s, seconds)

    def step(self, key: TimingKey) -> float | None:
        """Seconds per step; from another size of the same model, scaled by pixels."""
        if key in self.step_s:
            return self.step_s[key]
        for (model, width, height, _, hires), seconds in self.step_s.items():
            if model == key[0] and hires == key[4]:
                return seconds * (key[1] * key[2]) / (width * height)
        return None

    def call(self, key: TimingKey, steps: int) -> float | None:
        """Seconds for a whole generate() call of `steps` inference steps."""
        step = self.step(key)
        if step is None:
            return None
        total = steps * self.steps_per_step.get(key, 1.0)
        return total * step + max(0.0, self.extra_s.get(key, 0.0))

    def remaining(self, key: TimingKey, *, steps: int, step: int, total: int) -> float | None:
        """Seconds until a call of `steps` inference steps, now at UNet step `step` of `total`
        (0 = not known yet), is done."""
        seconds = self.step(key)
        if seconds is None:
            return None
        total = total or round(steps * self.steps_per_step.get(key, 1.0))
        return max(0, total - step) * seconds + max(0.0, self.extra_s.get(key, 0.0))

    def queued(
        self,
        plan: Sequence[Sequence[Queued]],
        job: Queued,
        *,
        model: str | None,
        ahead_s: float | None,
    ) -> tuple[int | None, float | None]:
        """(1-based queue position, seconds until its result) of `job` in `plan`, the batches
        expected to run in order, after `ahead_s` more seconds of the running call with
        `model` loaded. (None, None) if it is in no batch; the ETA is None while the running
        call or a batch on the way has no measured speed yet."""
        position = 0
        eta = ahead_s
        for batch in plan:
            first = batch[0].request
            cost = self.call(timing_key(first), planned_steps(first))
            if batch[0].model != model:
                cost = None if cost is None or self.load_s is None else cost + self.load_s
            model = batch[0].model
            eta = None if eta is None or cost is None else eta + cost
            if job in batch:
                return position + batch.index(job) + 1, eta
            position += len(batch)
        return None, None
