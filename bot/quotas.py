"""Per-user image quotas and cooldowns, shared by every frontend: admins' overrides (/quota
set) and each user's last drawing in SQLite beside the journal (so both hold across restarts),
and what a user has drawn in the last 24 hours, from the engine's journal."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from bot.prefs import connect
from engine.engine import Engine

DAY_S = 24 * 3600


def quotas_path(engine: Engine[Any]) -> str | Path:
    """Where the quotas live: beside the journal (":memory:" with an in-memory journal)."""
    journal = engine.config.journal
    return journal if journal == ":memory:" else Path(journal).with_name("quotas.sqlite3")


class Quotas:
    """Images per user per 24 hours: the place's limit unless an admin set one (0 = no limit),
    and the time of each user's last drawing (for cooldowns)."""

    def __init__(self, path: str | Path, engine: Engine[Any], default: int = 0) -> None:
        self._db = connect(path)
        self._lock = threading.Lock()
        self._engine = engine
        self.default = default
        with self._lock:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS quotas (user TEXT PRIMARY KEY, images INT)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS last_draw (user TEXT PRIMARY KEY, at REAL)"
            )

    def get(self, user: str) -> int | None:
        """The admin's override for `user`, if any."""
        with self._lock:
            row = self._db.execute("SELECT images FROM quotas WHERE user = ?", (user,)).fetchone()
        return None if row is None else int(row[0])

    def set(self, user: str, images: int | None) -> None:
        """Override `user`'s quota; None gives them the default again."""
        with self._lock:
            if images is None:
                self._db.execute("DELETE FROM quotas WHERE user = ?", (user,))
            else:
                self._db.execute(
                    "INSERT INTO quotas (user, images) VALUES (?, ?) "
                    "ON CONFLICT(user) DO UPDATE SET images = excluded.images",
                    (user, images),
                )

    def limit(self, user: str, default: int | None = None) -> int:
        """`user`'s images per 24 hours (0 = no limit): the override, else `default` (the
        place's), else the bot's."""
        override = self.get(user)
        if override is not None:
            return override
        return self.default if default is None else default

    def used(self, user: str, limit: int) -> int:
        """Images drawn or on their way in the last 24 hours (cancelled and failed: refunded)."""
        since = time.time() - DAY_S
        # Newest first, each job at least one image: `limit` jobs are enough to reach it.
        recent = self._engine.history(user, limit=limit or 1000)
        done = sum(r.request.batch_size for r in recent if r.submitted_at >= since)
        return done + sum(job.images for job in self._engine.jobs(user))

    def started(self, user: str, at: float | None = None) -> None:
        """`user` just started a drawing (the cooldown counts from now)."""
        with self._lock:
            self._db.execute(
                "INSERT INTO last_draw (user, at) VALUES (?, ?) "
                "ON CONFLICT(user) DO UPDATE SET at = excluded.at",
                (user, time.time() if at is None else at),
            )

    def wait(self, user: str, cooldown_s: float) -> float:
        """Seconds `user` still has to wait after their last drawing (0: none)."""
        if cooldown_s <= 0:
            return 0.0
        with self._lock:
            row = self._db.execute("SELECT at FROM last_draw WHERE user = ?", (user,)).fetchone()
        if row is None:
            return 0.0
        return max(0.0, float(row[0]) + cooldown_s - time.time())

    def close(self) -> None:
        with self._lock:
            self._db.close()
