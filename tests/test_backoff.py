"""bot/backoff.py: the waits between tries of a chat API call after transient failures."""

from __future__ import annotations

from bot.backoff import Backoff


def test_waits_grow_capped_and_stop_at_the_total_time() -> None:
    now = [100.0]
    backoff = Backoff(first_s=0.5, max_s=4.0, total_s=20.0)
    waits = []
    for wait in backoff.waits(lambda: now[0]):
        waits.append(wait)
        now[0] += wait  # the try after the wait fails at once
    assert waits and sum(waits) <= 20.0
    assert all(0.25 <= w <= 0.5 for w in waits[:1]) and all(w <= 4.0 for w in waits)
    assert max(waits) >= 2.0  # it grew to the cap's half at least
    assert sum(waits) + backoff.max_s > 20.0 - 4.0  # and went on until about the total time
