"""/metrics of a Telegram bot whose replies fail: the real PTB client against the fake Bot API
answering 500 until the bot gives up; the retries, the give-up and the reply left for the
next start are counted."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bot.telegram import retries
from bot.web.metrics import Metrics
from tests.telegram.harness import USER, Harness


def samples(metrics: Metrics) -> dict[tuple[str, str], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, s.labels.get("platform", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_retries_give_ups_and_undelivered_replies_are_counted(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = retries.Backoff(first_s=0.02, max_s=0.05, total_s=0.3, platform="telegram")
    monkeypatch.setattr(retries, "RETRY", fast)
    engine = await h.start()
    metrics = Metrics(engine)
    before = samples(metrics)
    assert before[("aidraw_replies_undelivered", "telegram")] == 0.0
    for _ in range(100):
        h.tg.fail_next("sendPhoto", 500, "Internal Server Error")
    h.tg.push_text(USER, USER, "a cat --seed 1")
    await h.reply(USER, lambda t: t.startswith("Sorry"))
    after = samples(metrics)
    tries = h.tg.count("sendPhoto", status=500)
    retried = after[("aidraw_delivery_retries_total", "telegram")]
    assert retried - before[("aidraw_delivery_retries_total", "telegram")] == tries - 1
    gave_up = after[("aidraw_delivery_failures_total", "telegram")]
    assert gave_up - before[("aidraw_delivery_failures_total", "telegram")] == 1
    assert after[("aidraw_replies_undelivered", "telegram")] == 1.0
    assert after[("aidraw_replies_undelivered", "discord")] == 0.0
