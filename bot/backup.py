"""Backup: copies of the job journal and the bot's per-user SQLite files, and putting them back.

Every copy is SQLite's online backup (`sqlite3.Connection.backup`), so a copy taken while the
bot writes is a consistent snapshot, never a torn file. The journal is held with an exclusive
lock by the running engine, so a running bot copies it through its own connection
(`back_up_running`, on SIGUSR1 or every [backup] every_h hours); `aidraw backup DIR` copies
the files of a stopped bot. `restore` puts a backup back, only while the bot is stopped.
Finished images stay in [queue] results_dir; `results=True` copies that folder too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bot.settings import Settings

log = logging.getLogger(__name__)

JOURNAL = "journal.sqlite3"
# The bot's own files beside the journal: per-user settings, Discord quotas.
SIDE_FILES = ("users.sqlite3", "quotas.sqlite3")
RESULTS = "results"


class BackupError(Exception):
    """A backup or restore that cannot be done; the message says why and what to do."""


def live_files(settings: Settings) -> dict[str, Path]:
    """Backup name → live file, for the files settings name (":memory:" journals: none)."""
    if settings.queue.journal == ":memory:":
        return {}
    journal = settings.root / settings.queue.journal
    return {JOURNAL: journal, **{name: journal.with_name(name) for name in SIDE_FILES}}


def back_up_files(settings: Settings, folder: Path, *, results: bool = False) -> list[Path]:
    """Copy the files of a stopped bot into `folder`; the copies made. BackupError if the
    bot is running (it holds the journal) or a file cannot be read."""
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for name, path in live_files(settings).items():
        if not path.is_file():
            continue
        try:
            _copy(path, folder / name, busy_timeout_s=0.0 if name == JOURNAL else 5.0)
        except sqlite3.OperationalError as e:
            if name == JOURNAL and "locked" in str(e):
                raise BackupError(
                    f"{path} is in use by a running aidraw: send it SIGUSR1 (e.g. `systemctl "
                    "kill -s USR1 aidraw`, `docker compose kill -s SIGUSR1 bot`) and it "
                    f"writes a backup into [backup] dir ({settings.root / settings.backup.dir})"
                ) from None
            raise BackupError(f"cannot back up {path}: {e}") from None
        made.append(folder / name)
    if results:
        made.append(_copy_results(settings, folder))
    return made


def back_up_running(
    engine: Any, settings: Settings, folder: Path, *, results: bool = False
) -> list[Path]:
    """Copy the running bot's files into `folder`: the journal through the engine's own
    connection (call from the event loop's thread, as the engine's other calls), the
    others through their own connections (WAL: readers never wait for the bot)."""
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for name, path in live_files(settings).items():
        if name == JOURNAL:
            engine.backup_journal(folder / name)
        elif path.is_file():
            _copy(path, folder / name, busy_timeout_s=5.0)
        else:
            continue
        made.append(folder / name)
    if results:
        made.append(_copy_results(settings, folder))
    return made


def restore(settings: Settings, folder: Path) -> list[Path]:
    """Put the backup in `folder` back in place of the live files; the files restored.
    Every copy is checked before anything is written. BackupError while the bot runs."""
    live = live_files(settings)
    found = {name: folder / name for name in live if (folder / name).is_file()}
    if JOURNAL not in found:
        raise BackupError(f"{folder} has no {JOURNAL}: not an aidraw backup")
    for copy in found.values():
        problem = _check(copy)
        if problem is not None:
            raise BackupError(f"{copy} is damaged ({problem}); nothing was restored")
    if _in_use(live[JOURNAL]):
        raise BackupError(f"{live[JOURNAL]} is in use by a running aidraw: stop it first")
    restored = []
    for name, copy in found.items():
        live[name].parent.mkdir(parents=True, exist_ok=True)
        _copy(copy, live[name], busy_timeout_s=0.0, live=True)
        restored.append(live[name])
    if (folder / RESULTS).is_dir():
        target = settings.root / settings.queue.results_dir
        shutil.copytree(folder / RESULTS, target, dirs_exist_ok=True)
        restored.append(target)
    return restored


def dated_folder(settings: Settings, now: float | None = None) -> Path:
    """A new folder under [backup] dir named by the time: 20261207-031500."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return settings.root / settings.backup.dir / stamp


def prune(settings: Settings) -> None:
    """Delete the oldest dated backups beyond [backup] keep."""
    root = settings.root / settings.backup.dir
    dated = sorted(p for p in root.iterdir() if p.is_dir() and p.name[:8].isdigit())
    for old in dated[: max(0, len(dated) - settings.backup.keep)]:
        shutil.rmtree(old)
        log.info("backup: deleted %s (keep = %d)", old, settings.backup.keep)


async def run_backups(
    engine: Any, settings: Settings, now: asyncio.Event, clock: Callable[[], float] = time.time
) -> None:
    """Back the running bot up when `now` is set (SIGUSR1) and every [backup] every_h hours,
    until cancelled. A failed backup is logged; the bot goes on."""
    every_s = settings.backup.every_h * 3600 or None
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(now.wait(), every_s)
        now.clear()
        folder = dated_folder(settings, clock())
        try:
            made = back_up_running(engine, settings, folder)
            prune(settings)
        except Exception as e:
            log.error("backup into %s failed: %s", folder, e)
            continue
        log.info("backup: %s", ", ".join(str(p) for p in made))


def _copy(source: Path, target: Path, *, busy_timeout_s: float, live: bool = False) -> None:
    """SQLite's online backup of `source` into `target` (replacing what `target` held); a
    backup copy (not `live`) is made one self-contained file (no WAL beside it)."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=busy_timeout_s)
    try:
        # Read first: a locked file raises here, where backup() would retry it for ever.
        src.execute("SELECT count(*) FROM sqlite_master").fetchone()
        dst = sqlite3.connect(str(target))
        try:
            src.backup(dst)
            if not live:
                dst.execute("PRAGMA journal_mode = DELETE")
        finally:
            dst.close()
    finally:
        src.close()


def _check(path: Path) -> str | None:
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            result = str(db.execute("PRAGMA quick_check").fetchone()[0])
        finally:
            db.close()
    except sqlite3.DatabaseError as e:
        return str(e)
    return None if result == "ok" else result


def _in_use(journal: Path) -> bool:
    """Whether an aidraw process holds the journal (its exclusive lock)."""
    if not journal.is_file():
        return False
    db = sqlite3.connect(str(journal), timeout=0.0)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("ROLLBACK")
    except sqlite3.OperationalError as e:
        return "locked" in str(e)
    finally:
        db.close()
    return False


def _copy_results(settings: Settings, folder: Path) -> Path:
    source = settings.root / settings.queue.results_dir
    target = folder / RESULTS
    if source.is_dir():
        shutil.copytree(source, target, dirs_exist_ok=True)
    return target
