"""Backoff: how long a frontend waits between tries of a chat API call after a transient failure
(a 5xx, a dropped connection), for Discord and Telegram alike."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Capped exponential waits with jitter, for at most `total_s` after the first failure."""

    first_s: float = 0.5
    max_s: float = 8.0
    total_s: float = 60.0

    def wait(self, failures: int) -> float:
        """Half the capped exponential step, plus up to as much again at random ("equal
        jitter", AWS Architecture Blog, "Exponential Backoff And Jitter", 2015)."""
        step = min(self.max_s, self.first_s * 2**failures)
        return step / 2 + random.uniform(0, step / 2)

    def waits(self, clock: Callable[[], float]) -> Iterator[float]:
        """The wait before each next try; it ends where the next try would start more than
        `total_s` after the first failure (the first `next()`, on the `clock`)."""
        deadline = clock() + self.total_s
        failures = 0
        while (wait := self.wait(failures)) + clock() <= deadline:
            failures += 1
            yield wait
