"""Admins' per-user image quotas (/quota set), in SQLite beside the journal."""

from __future__ import annotations

import threading
from pathlib import Path

from bot.user_settings import connect


class Quotas:
    """Admins' per-user quotas (/quota set), in SQLite beside the journal."""

    def __init__(self, path: str | Path) -> None:
        self._db = connect(path)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS quotas (user TEXT PRIMARY KEY, images INT)"
            )

    def get(self, user: str) -> int | None:
        with self._lock:
            row = self._db.execute("SELECT images FROM quotas WHERE user = ?", (user,)).fetchone()
        return None if row is None else int(row[0])

    def set(self, user: str, images: int | None) -> None:
        with self._lock:
            if images is None:
                self._db.execute("DELETE FROM quotas WHERE user = ?", (user,))
            else:
                self._db.execute(
                    "INSERT INTO quotas (user, images) VALUES (?, ?) "
                    "ON CONFLICT(user) DO UPDATE SET images = excluded.images",
                    (user, images),
                )

    def close(self) -> None:
        with self._lock:
            self._db.close()
