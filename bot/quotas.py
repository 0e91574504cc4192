"""Per-user image quotas: admins' overrides (/quota set) in SQLite beside the journal, and
what a user has drawn in the last 24 hours, from the engine's journal."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from bot.prefs import connect
from engine.engine import Engine

DAY_S = 24 * 3600


class Quotas:
    """Images per user per 24 hours: `default` unless an admin set one (0 = no limit)."""

    def __init__(self, path: str | Path, engine: Engine[Any], default: int) -> None:
        self._db = connect(path)
        self._lock = threading.Lock()
        self._engine = engine
        self.default = default
        with self._lock:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS quotas (user TEXT PRIMARY KEY, images INT)"
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

    def limit(self, user: str) -> int:
        """`user`'s images per 24 hours (0 = no limit)."""
        override = self.get(user)
        return self.default if override is None else override

    def used(self, user: str, limit: int) -> int:
        """Images drawn or on their way in the last 24 hours (cancelled and failed: refunded)."""
        since = time.time() - DAY_S
        # Newest first, each job at least one image: `limit` jobs are enough to reach it.
        recent = self._engine.history(user, limit=limit or 1000)
        done = sum(r.request.batch_size for r in recent if r.submitted_at >= since)
        return done + sum(job.images for job in self._engine.jobs(user))

    def close(self) -> None:
        with self._lock:
            self._db.close()
