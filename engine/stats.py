"""Stats: what the engine has done since it started, as plain counters and histograms.

The engine only counts (on the event loop's thread); whoever reports it (bot/web/metrics.py,
in Prometheus' text format) reads these at scrape time. No metrics library here: the engine
stays free of exporters, and every app or test builds its own view of one engine.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

# Seconds: a job waits from instants to many minutes; drawing takes 1 s (GPU) to minutes (CPU).
SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
BATCH_BUCKETS = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0, 64.0)


@dataclass
class Histogram:
    """Observations counted into buckets by upper bound (the last bucket: above them all)."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it), ending with (inf, count)."""
        running, out = 0, []
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


def frontend_of(requester: str) -> str:
    """The frontend a requester id comes from: "discord:123" → "discord", "cli" → "cli"."""
    return requester.partition(":")[0] or "-"


@dataclass
class EngineStats:
    """Counts since the engine started. `jobs` by (outcome, frontend): outcome is "done",
    "failed" or "cancelled"; `wait_s` is queue wait up to the start of drawing, `run_s` the
    drawing of each job that started; `batch_images` the images of each generate() call;
    `busy_s` the seconds generate() calls took, all together."""

    submitted: Counter[str] = field(default_factory=Counter)
    jobs: Counter[tuple[str, str]] = field(default_factory=Counter)
    images: int = 0
    busy_s: float = 0.0  # seconds the torch thread spent in generate() calls
    wait_s: Histogram = field(default_factory=lambda: Histogram(SECONDS_BUCKETS))
    run_s: Histogram = field(default_factory=lambda: Histogram(SECONDS_BUCKETS))
    batch_images: Histogram = field(default_factory=lambda: Histogram(BATCH_BUCKETS))
    model_loads: Counter[str] = field(default_factory=Counter)
    model_load_failures: Counter[str] = field(default_factory=Counter)
    model_load_s: Histogram = field(default_factory=lambda: Histogram(SECONDS_BUCKETS))
