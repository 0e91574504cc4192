"""`aidraw doctor` with `[queue] backend = "redis"`: a Redis that does not answer is a problem
with its fix (its password never shown); one that answers is checked for what the pool's
promises need (append-only file, no eviction) and for live workers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bot.doctor import Finding, examine, report
from engine.pool import wire
from tests.scaleout.conftest import RedisServer, free_port
from tests.test_doctor import no_tokens, write_settings  # noqa: F401 (an autouse fixture)


async def pool_findings(tmp_path: Path, url: str) -> tuple[list[Finding], str]:
    settings = write_settings(
        tmp_path, tmp_path, f'[queue]\nbackend = "redis"\nredis_url = "{url}"\n'
    )
    findings = await examine(settings, offline=True, timeout_s=2.0)
    return [f for f in findings if f.area in ("redis", "workers")], report(findings)


@pytest.fixture
def pool_redis(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """The session's Redis (append-only file on), with no worker seen yet."""
    client = redis.Redis.from_url(redis_server.url)
    client.delete(wire.WORKERS)
    yield client
    client.delete(wire.WORKERS, wire.heartbeat("gpu-box-0"))
    client.close()


@pytest.fixture
def careless_redis(tmp_path: Path) -> Iterator[str]:
    """A redis-server of its own as Redis ships it: no append-only file."""
    server = RedisServer(port=free_port(), folder=tmp_path, options=("--appendonly", "no"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


async def test_a_redis_that_does_not_answer_is_a_problem_with_its_fix(tmp_path: Path) -> None:
    url = f"redis://:s3cret-pass@127.0.0.1:{free_port()}/0"
    findings, text = await pool_findings(tmp_path, url)
    assert [f.level for f in findings] == ["fail"]
    assert "does not answer" in findings[0].text
    assert "start redis-server" in findings[0].fix
    assert "s3cret-pass" not in text


async def test_a_redis_in_local_mode_is_not_asked(tmp_path: Path) -> None:
    findings = await examine(write_settings(tmp_path, tmp_path), offline=True)
    assert [(f.area, f.level) for f in findings if f.area == "redis"] == [("redis", "skip")]


async def test_the_pools_redis_answers_and_its_live_workers_are_named(
    tmp_path: Path, redis_server: RedisServer, pool_redis: redis.Redis
) -> None:
    findings, _ = await pool_findings(tmp_path, redis_server.url)
    assert [(f.area, f.level) for f in findings] == [("redis", "ok"), ("workers", "warn")]
    assert "no `aidraw worker` is alive" in findings[1].text

    pool_redis.sadd(wire.WORKERS, "gpu-box-0")
    pool_redis.set(wire.heartbeat("gpu-box-0"), "{}", ex=30)
    findings, _ = await pool_findings(tmp_path, redis_server.url)
    assert [(f.area, f.level) for f in findings] == [("redis", "ok"), ("workers", "ok")]
    assert findings[1].text == "1 alive: gpu-box-0"


async def test_a_redis_that_may_lose_or_evict_jobs_is_named_with_its_fix(
    tmp_path: Path, careless_redis: str
) -> None:
    with redis.Redis.from_url(careless_redis) as client:
        client.config_set("maxmemory-policy", "allkeys-lru")
    findings, _ = await pool_findings(tmp_path, careless_redis)
    assert [(f.area, f.level) for f in findings] == [
        ("redis", "ok"),
        ("redis", "warn"),
        ("redis", "fail"),
        ("workers", "warn"),
    ]
    assert "append-only file off" in findings[1].text and "appendonly yes" in findings[1].fix
    assert "allkeys-lru" in findings[2].text and "noeviction" in findings[2].fix
