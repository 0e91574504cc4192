"""[log]: a serving bot's job lines as JSON lines with their fields, and the level it logs at."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.cli import configure_logging, log_handler
from bot.settings import LogSettings, from_dict
from engine.engine import Engine
from engine.queue import QueueConfig
from engine.request import GenerationRequest
from tests.engine_fakes import FakeGenerate, FakeLoader, FakeRegistry


@pytest.fixture
def fresh_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Loggers as at start-up, restored after (setLevel: it also clears their caches)."""
    loggers = [logging.getLogger(name) for name in ("", "bot", "engine")]
    saved = [logger.level for logger in loggers]
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    for logger in loggers:
        logger.setLevel(logging.NOTSET)
    yield
    for logger, level in zip(loggers, saved, strict=True):
        logger.setLevel(level)


async def test_json_lines_carry_each_jobs_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = io.StringIO()
    logger = logging.getLogger("engine")
    monkeypatch.setattr(logger, "handlers", [log_handler(LogSettings(format="json"), stream)])
    level = logger.level
    logger.setLevel(logging.INFO)  # (setLevel: a level set before may be cached below it)
    try:
        await draw_one(tmp_path, stream)
    finally:
        logger.setLevel(level)


async def draw_one(tmp_path: Path, stream: io.StringIO) -> None:
    engine: Engine[object] = Engine(
        QueueConfig(journal=":memory:", results_dir=str(tmp_path), warm_up=False),
        registry=FakeRegistry(),
        load=FakeLoader(),
        generate=FakeGenerate(),
    )
    task = asyncio.create_task(engine.run())
    job = engine.submit(GenerationRequest(prompt="cat", requester="discord:5", seed=1))
    await job.result()
    await engine.close()
    await task
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    start, end = [line for line in lines if line.get("job") == job.id]
    assert start["event"] == "job_start" and end["event"] == "job_end"
    assert {k: end[k] for k in ("requester", "frontend", "model", "size", "steps", "outcome")} == {
        "requester": "discord:5",
        "frontend": "discord",
        "model": "alpha",
        "size": "64x64",
        "steps": 4,
        "outcome": "done",
    }
    assert end["level"] == "INFO" and end["logger"] == "engine.engine" and "time" in end
    assert end["message"].startswith(f"job end job={job.id} requester=discord:5 ")
    assert isinstance(start["wait_s"], float) and isinstance(end["run_s"], float)


def test_the_level_comes_from_settings(fresh_logging: None) -> None:
    settings = from_dict({"log": {"level": "WARNING"}})
    configure_logging(True, verbose=False, log=settings.log)
    assert not logging.getLogger("engine.engine").isEnabledFor(logging.INFO)
    assert logging.getLogger("bot.web.app").isEnabledFor(logging.WARNING)
    with pytest.raises(Exception, match="log.format"):
        from_dict({"log": {"format": "xml"}})
