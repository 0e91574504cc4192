"""Metrics: /metrics in Prometheus' text format and /healthz, on the web server's port.

One CollectorRegistry per app (tests build many apps and engines; nothing is global). The
engine only counts (engine/stats.py); `EngineCollector` turns its counts and state into
metric families at scrape time, so nothing is pushed from the engine and nothing is lost
between scrapes. The event loop's lag is measured here, by a task that sleeps and looks at
how late it woke.

Both paths share the A1111 API's access (bot/api/access.py): loopback callers without
credentials when none are configured, else AIDRAW_API_TOKEN (bearer) or AIDRAW_API_AUTH.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client import generate_latest as render
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from bot.backoff import GIVE_UPS, RETRIES
from engine.engine import Engine
from engine.errors import EngineError
from engine.stats import Histogram as EngineHistogram
from engine.version import __version__

log = logging.getLogger(__name__)

PATHS = ("/metrics", "/healthz")
LAG_EVERY_S = 0.5  # how often the event loop's lag is sampled
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
OUTCOMES = ("done", "failed", "cancelled")
PLATFORMS = ("discord", "telegram")


class EngineCollector(Collector):
    """The engine's counts and state as Prometheus metric families, read at scrape time."""

    def __init__(self, engine: Engine[Any]) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Metric]:
        engine, stats = self._engine, self._engine.stats
        status = engine.status()
        yield _gauge("aidraw_info", "aidraw's version", 1, version=__version__)
        yield _gauge(
            "aidraw_engine_up", "1 while the engine loop runs and takes jobs", engine.alive
        )
        queued = GaugeMetricFamily(
            "aidraw_queue_length", "Jobs waiting, by model", labels=["model"]
        )
        for model in engine.models():
            queued.add_metric([model], engine.queue_lengths().get(model, 0))
        yield queued
        yield _gauge("aidraw_jobs_running", "Jobs drawing now", len(status.running))
        yield _gauge("aidraw_paused", "1 while an admin has paused the queue", status.paused)
        submitted = CounterMetricFamily(
            "aidraw_jobs_submitted", "Jobs queued, by frontend", labels=["frontend"]
        )
        for frontend, n in sorted(stats.submitted.items()):
            submitted.add_metric([frontend], n)
        yield submitted
        jobs = CounterMetricFamily(
            "aidraw_jobs", "Jobs finished, by outcome and frontend", labels=["outcome", "frontend"]
        )
        frontends = sorted({f for _, f in stats.jobs} | set(stats.submitted))
        for outcome in OUTCOMES:
            for frontend in frontends:
                jobs.add_metric([outcome, frontend], stats.jobs[(outcome, frontend)])
        yield jobs
        yield CounterMetricFamily("aidraw_images", "Images drawn", value=stats.images)
        yield CounterMetricFamily(
            "aidraw_worker_busy_seconds",
            "Seconds the torch thread spent drawing (rate near 1: the device is the bottleneck)",
            value=stats.busy_s,
        )
        yield _histogram(
            "aidraw_job_wait_seconds", "Queue wait until a job starts drawing", stats.wait_s
        )
        yield _histogram("aidraw_job_run_seconds", "Drawing time of each job", stats.run_s)
        yield _histogram(
            "aidraw_batch_images", "Images per pipeline call (batch size)", stats.batch_images
        )
        loads = CounterMetricFamily("aidraw_model_loads", "Model loads, by model", labels=["model"])
        failures = CounterMetricFamily(
            "aidraw_model_load_failures", "Model loads that failed, by model", labels=["model"]
        )
        for model in engine.models():
            loads.add_metric([model], stats.model_loads[model])
            failures.add_metric([model], stats.model_load_failures[model])
        yield loads
        yield failures
        yield CounterMetricFamily(
            "aidraw_model_swaps", "Loads that replaced a loaded model", value=status.swaps
        )
        yield _histogram(
            "aidraw_model_load_seconds", "Model load and warm-up time", stats.model_load_s
        )
        addons = CounterMetricFamily(
            "aidraw_extra_network_loads",
            "Add-on files read from disk by the loaded model, by kind (restarts at a swap)",
            labels=["kind"],
        )
        for kind, n in sorted(engine.addon_loads().items()):
            addons.add_metric([kind], n)
        yield addons
        yield _gauge("aidraw_journal_bytes", "Size of the job journal", _journal_bytes(engine))
        yield from _deliveries(engine)
        yield from _gpu_memory()


class Metrics(Collector):
    """An app's registry: the engine's collector, and the event loop's lag measured here."""

    def __init__(self, engine: Engine[Any]) -> None:
        self.engine = engine
        self.lag = EngineHistogram(LAG_BUCKETS)
        self.last_lag = 0.0
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(EngineCollector(engine))
        self.registry.register(self)

    def collect(self) -> Iterator[Metric]:
        yield _histogram(
            "aidraw_event_loop_lag_seconds",
            "How late the event loop ran a timer (a blocked loop delays every chat)",
            self.lag,
        )
        yield _gauge("aidraw_event_loop_lag_last_seconds", "The last lag measured", self.last_lag)

    async def watch_lag(self, every_s: float = LAG_EVERY_S) -> None:
        """Sample the loop's lag until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(every_s)
            lag = max(0.0, loop.time() - before - every_s)
            self.lag.observe(lag)
            self.last_lag = lag


METRICS = web.AppKey("metrics", Metrics)


async def get_metrics(request: web.Request) -> web.Response:
    body = render(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def get_healthz(request: web.Request) -> web.Response:
    """200 {"status": "ok", …} while the engine loop runs; 503 "unhealthy" once it stopped."""
    engine = request.app[METRICS].engine
    status = engine.status()
    body = {
        "status": "ok" if engine.alive else "unhealthy",
        "engine": "running" if engine.alive else ("closing" if status.closing else "stopped"),
        "model": status.model,
        "queued": status.queued,
        "running": len(status.running),
        "paused": status.paused,
        "version": __version__,
        "time": time.time(),
    }
    return web.json_response(body, status=200 if engine.alive else 503)


def add_metrics(app: web.Application, engine: Engine[Any]) -> Metrics:
    """Add /metrics and /healthz to `app` (their access is the API guard's: bot/api/app.py)."""
    metrics = Metrics(engine)
    app[METRICS] = metrics
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/healthz", get_healthz)
    app.cleanup_ctx.append(_lag_watcher)
    return metrics


async def _lag_watcher(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(app[METRICS].watch_lag(), name="event-loop-lag")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _gauge(name: str, documentation: str, value: float, **labels: str) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=list(labels))
    family.add_metric(list(labels.values()), float(value))
    return family


def _histogram(name: str, documentation: str, histogram: EngineHistogram) -> Metric:
    buckets = [(_bound(le), n) for le, n in histogram.cumulative()]
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=histogram.total)


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)


def _journal_bytes(engine: Engine[Any]) -> int:
    journal = engine.config.journal
    if journal == ":memory:":
        return 0
    total = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            total += Path(journal + suffix).stat().st_size
    return total


def _deliveries(engine: Engine[Any]) -> Iterator[Metric]:
    """Chat API calls tried again and given up (bot/backoff.py), and replies not confirmed."""
    retries = CounterMetricFamily(
        "aidraw_delivery_retries",
        "Chat API calls tried again after a transient failure, by platform",
        labels=["platform"],
    )
    failures = CounterMetricFamily(
        "aidraw_delivery_failures",
        "Chat API calls given up after every try, by platform",
        labels=["platform"],
    )
    for platform in sorted({*PLATFORMS, *RETRIES, *GIVE_UPS} - {""}):
        retries.add_metric([platform], RETRIES[platform])
        failures.add_metric([platform], GIVE_UPS[platform])
    yield retries
    yield failures
    pending = GaugeMetricFamily(
        "aidraw_replies_undelivered",
        "Finished jobs whose reply is not confirmed (sent after the next start), by platform",
        labels=["platform"],
    )
    with contextlib.suppress(EngineError):  # closed: nothing to say
        counts = engine.undelivered()
        for platform in sorted({*PLATFORMS, *counts}):
            pending.add_metric([platform], counts.get(platform, 0))
    yield pending


def _gpu_memory() -> Iterator[Metric]:
    """CUDA memory in use and its peak, per GPU, when torch is loaded and has CUDA (a scrape
    never imports torch itself)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return
    used = GaugeMetricFamily(
        "aidraw_gpu_memory_bytes", "CUDA memory allocated by torch", labels=["gpu"]
    )
    peak = GaugeMetricFamily(
        "aidraw_gpu_memory_peak_bytes", "Most CUDA memory allocated so far", labels=["gpu"]
    )
    total = GaugeMetricFamily("aidraw_gpu_memory_total_bytes", "The GPU's memory", labels=["gpu"])
    for index in range(torch.cuda.device_count()):
        label = [f"{index}:{torch.cuda.get_device_name(index)}"]
        used.add_metric(label, torch.cuda.memory_allocated(index))
        peak.add_metric(label, torch.cuda.max_memory_allocated(index))
        total.add_metric(label, torch.cuda.get_device_properties(index).total_memory)
    yield used
    yield peak
    yield total
