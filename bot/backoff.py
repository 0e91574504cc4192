"""Backoff: how long a frontend waits between tries of a chat API call after a transient failure
(a 5xx, a dropped connection), for Discord and Telegram alike.

RETRIES and GIVE_UPS count, by platform, the tries again and the calls given up after all of
them, for /metrics. They are process-wide on purpose: the frontends' retry helpers are
module-level, and one process runs one bot.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

RETRIES: Counter[str] = Counter()
GIVE_UPS: Counter[str] = Counter()


@dataclass(frozen=True)
class Backoff:
    """Capped exponential waits with jitter, for at most `total_s` after the first failure."""

    first_s: float = 0.5
    max_s: float = 8.0
    total_s: float = 60.0
    platform: str = ""  # whose tries RETRIES and GIVE_UPS count

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
            RETRIES[self.platform] += 1
            yield wait
        GIVE_UPS[self.platform] += 1
