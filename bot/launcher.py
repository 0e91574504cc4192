"""`aidraw run`: build the engine, start every frontend that has a token, own the signals.

Frontends plug in as coroutines that run until cancelled and clean up on the way out:
`bot.discord.bot.run_discord(engine, settings, store, token)`,
`bot.telegram.app.run_telegram(engine, settings, store, token)` and, when no token is set
(or beside them with `[web] serve = "always"`), `bot.web.app.run_web(engine, settings, store)`,
the web chat and the A1111 API.

Signals: SIGINT and SIGTERM shut down in order; SIGUSR1 writes a backup into [backup] dir
(bot/backup.py), as every [backup] every_h hours does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import shutil
import signal
import sys
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from bot.backup import run_backups
from bot.prefs import UserSettingsStore
from bot.settings import Settings, SettingsError, env_token
from engine.engine import Engine
from engine.errors import InvalidRequest

log = logging.getLogger(__name__)

DISCORD_TOKEN = "AIDRAW_DISCORD_TOKEN"
TELEGRAM_TOKEN = "AIDRAW_TELEGRAM_TOKEN"


def build_engine(
    settings: Settings, *, admins: tuple[str, ...] = ()
) -> tuple[Engine[Any], UserSettingsStore]:
    """The engine over models/ with the journal and results relative to settings.toml.

    `admins` join [queue] admins (the web chat's local user, when it is one).
    """
    from engine.generate import generate
    from engine.models import ModelRegistry

    registry = ModelRegistry(settings.models_dir, settings.defaults)
    if not registry.models:
        raise InvalidRequest(
            f"no model in {settings.models_dir}: run `make demo` (or `aidraw build-demo`), "
            "or put a .safetensors checkpoint there"
        )
    memory = settings.queue.journal == ":memory:"
    queue = dataclasses.replace(
        settings.queue,
        journal=settings.queue.journal if memory else str(settings.root / settings.queue.journal),
        results_dir=str(settings.root / settings.queue.results_dir),
        admins=(*settings.queue.admins, *(a for a in admins if a not in settings.queue.admins)),
    )
    users = ":memory:" if memory else Path(queue.journal).with_name("users.sqlite3")
    engine: Engine[Any]
    if queue.backend == "redis":
        from engine.pool.dispatcher import PoolEngine

        # Frontends only: the `aidraw worker` processes draw (the registry checks requests).
        engine = PoolEngine(
            queue,
            registry=registry,
            limits=settings.limits,
            default_model=settings.engine.default_model,
        )
    else:
        engine = Engine(
            queue,
            registry=registry,
            load=lambda name: registry.load(name, settings.device),
            generate=generate,
            limits=settings.limits,
            default_model=settings.engine.default_model,
        )
    return engine, UserSettingsStore(users)


async def serve(
    settings: Settings, *, with_worker: bool = False, settings_path: Path | None = None
) -> int:
    """Run the engine and the frontends until SIGINT/SIGTERM, then shut down in order.

    `with_worker` (backend "redis"): also start one `aidraw worker` process beside them (with
    `settings_path`, the file given on the command line, if any).
    Returns the exit code: 0 after a signal, 1 if a frontend or the engine stopped by itself.
    """
    discord_token, telegram_token = env_token(DISCORD_TOKEN), env_token(TELEGRAM_TOKEN)
    no_bot = discord_token is None and telegram_token is None
    run_web_chat = settings.web.serve == "always" or (settings.web.serve == "auto" and no_bot)
    if no_bot and not run_web_chat:
        raise SettingsError(
            f'[web] serve = "never" and no bot token: set {DISCORD_TOKEN} or {TELEGRAM_TOKEN},'
            " or serve the web chat"
        )
    admins: tuple[str, ...] = ()
    if run_web_chat and settings.web.local_admin:
        from bot.api.access import LOCAL  # so may the API's loopback caller (no credentials)
        from bot.web.chat import USER  # the web chat's one user may swap models and cancel jobs

        admins = (USER, LOCAL)
    engine, store = build_engine(settings, admins=admins)
    frontends: dict[str, Coroutine[Any, Any, None]] = {}
    if discord_token is not None:
        from bot.discord.bot import run_discord

        frontends["discord"] = run_discord(engine, settings, store, discord_token)
    if telegram_token is not None:
        from bot.telegram.app import run_telegram

        frontends["telegram"] = run_telegram(engine, settings, store, telegram_token)
    if run_web_chat:
        from bot.web.app import run_web

        frontends["web"] = run_web(engine, settings, store)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    back_up_now = asyncio.Event()  # SIGUSR1: a backup into [backup] dir (bot/backup.py)
    loop.add_signal_handler(signal.SIGUSR1, back_up_now.set)
    engine_task = asyncio.create_task(engine.run(), name="engine")
    tasks = [asyncio.create_task(coro, name=name) for name, coro in frontends.items()]
    tasks.append(asyncio.create_task(run_backups(engine, settings, back_up_now), name="backups"))
    worker = await _start_worker(settings, settings_path) if with_worker else None
    log.info("aidraw running: %s", ", ".join(frontends))
    stopper = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait(
            [stopper, engine_task, *tasks], return_when=asyncio.FIRST_COMPLETED
        )
        failed = [task for task in done if task is not stopper]
        for task in failed:
            error = None if task.cancelled() else task.exception()
            log.error("%s stopped by itself: %r", task.get_name(), error)
            if error is not None:
                print(f"aidraw: error: {task.get_name()}: {error}", file=sys.stderr)
    finally:
        # Stop taking new work first (frontends), then let the running batch finish.
        stopper.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if worker is not None:
            worker.terminate()  # it drains: finishes its batch, hands back the rest
            await worker.wait()
        await engine.close()
        with contextlib.suppress(asyncio.CancelledError):
            await engine_task
        store.close()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            loop.remove_signal_handler(sig)
        log.info("aidraw stopped")
    return 1 if failed else 0


async def _start_worker(
    settings: Settings, settings_path: Path | None
) -> asyncio.subprocess.Process:
    """`aidraw worker` as a child process (its drawing never shares this process)."""
    if settings.queue.backend != "redis":
        raise SettingsError('--worker needs [queue] backend = "redis"')
    given = ["--settings", str(settings_path)] if settings_path is not None else []
    argv = [sys.executable, "-m", "bot.cli", *given, "worker"]
    log.info("starting a local worker: %s", " ".join(argv))
    return await asyncio.create_subprocess_exec(*argv)


def build_worker_engine(settings: Settings, device: str) -> Engine[Any]:
    """A worker's local engine: it draws what its stream brings; the bot keeps the journal,
    the queue and the limits, so here nothing is kept after a restart."""
    from engine.generate import generate
    from engine.models import ModelRegistry
    from engine.pool.wire import POOL_ADMIN

    options = dataclasses.replace(settings.device, device=device or settings.device.device)
    registry = ModelRegistry(settings.models_dir, settings.defaults)
    if not registry.models:
        raise InvalidRequest(f"no model in {settings.models_dir}: a worker needs the bot's models")
    scratch = tempfile.mkdtemp(prefix="aidraw-worker-")
    queue = dataclasses.replace(
        settings.queue,
        journal=":memory:",
        results_dir=scratch,
        max_queued=100_000,
        max_queued_per_user=100_000,  # the bot holds each user to the limit, pool-wide
        admins=(POOL_ADMIN,),  # the bot's admin swaps come as this
        priority_users=(),
    )
    return Engine(
        queue,
        registry=registry,
        load=lambda name: registry.load(name, options),
        generate=generate,
        limits=settings.limits,
        default_model=settings.engine.default_model,
    )


async def work(settings: Settings, *, device: str = "", name: str = "") -> int:
    """`aidraw worker`: draw the pool's jobs until SIGINT/SIGTERM, then drain."""
    from engine.pool.worker import PoolWorker

    if settings.queue.backend != "redis":
        raise SettingsError('aidraw worker needs [queue] backend = "redis" (and redis_url)')
    engine = build_worker_engine(settings, device)
    worker = PoolWorker(engine, name=name, device=device or settings.device.device)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await worker.run(stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        shutil.rmtree(engine.config.results_dir, ignore_errors=True)
    log.info("worker %s stopped", worker.name)
    return 0
