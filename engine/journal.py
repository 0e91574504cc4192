"""The SQLite journal of jobs: written before submit returns, replayed after a restart.

One row per job. WAL mode with synchronous=NORMAL: a committed row survives the process being
killed (only a power cut may lose the last moments). The file is opened with an exclusive
lock, so a second aidraw process cannot replay (and draw) the same jobs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import EngineError
from engine.request import GenerationRequest, JobState

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    state TEXT NOT NULL,
    requester TEXT NOT NULL,
    request TEXT NOT NULL,
    reply_to TEXT NOT NULL DEFAULT '',
    submitted_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    images TEXT NOT NULL DEFAULT '[]',
    delivered INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, id);
"""


class JournalError(EngineError):
    """The journal cannot be opened (e.g. another aidraw process holds it)."""


@dataclass(frozen=True, kw_only=True)
class SavedImage:
    """One finished image on disk."""

    path: str
    seed: int
    infotext: str


@dataclass(frozen=True, kw_only=True)
class JobRecord:
    """A job as the journal remembers it (for replay, /history and reroll buttons)."""

    id: int
    state: JobState
    requester: str
    request: GenerationRequest
    reply_to: str
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    error: str | None
    images: tuple[SavedImage, ...]
    delivered: bool


class Journal:
    """The jobs table; every method commits before it returns."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=1.0)
        try:
            # Exclusive before WAL: no shared-memory index, and the lock is held until close.
            self._db.execute("PRAGMA locking_mode = EXCLUSIVE")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.executescript(_SCHEMA)
            self._db.execute("BEGIN EXCLUSIVE")
            self._db.execute("COMMIT")
        except sqlite3.OperationalError as e:
            self._db.close()
            raise JournalError(
                f"cannot open the job journal {self.path}: {e} "
                "(is another aidraw process running with the same settings?)"
            ) from e

    def close(self) -> None:
        self._db.close()

    def add(self, request: GenerationRequest, *, reply_to: str, submitted_at: float) -> int:
        """Record a new queued job; returns its id (ids only grow, even across restarts)."""
        cursor = self._db.execute(
            "INSERT INTO jobs (state, requester, request, reply_to, submitted_at) "
            "VALUES ('queued', ?, ?, ?, ?)",
            (request.requester, _dump_request(request), reply_to, submitted_at),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def mark_running(self, job_id: int) -> None:
        self._db.execute(
            "UPDATE jobs SET state = 'running', started_at = ?, attempts = attempts + 1 "
            "WHERE id = ?",
            (time.time(), job_id),
        )

    def mark_queued(self, job_id: int, *, undo_attempt: bool = False) -> None:
        """Back to waiting (interrupted by a shutdown, or found running after a crash)."""
        self._db.execute(
            "UPDATE jobs SET state = 'queued', started_at = NULL, "
            "attempts = attempts - ? WHERE id = ?",
            (1 if undo_attempt else 0, job_id),
        )

    def mark_done(self, job_id: int, images: list[SavedImage]) -> None:
        self._db.execute(
            "UPDATE jobs SET state = 'done', finished_at = ?, images = ? WHERE id = ?",
            (time.time(), json.dumps([dataclasses.asdict(i) for i in images]), job_id),
        )

    def mark_failed(self, job_id: int, message: str, *, state: JobState = "failed") -> None:
        self._db.execute(
            "UPDATE jobs SET state = ?, finished_at = ?, error = ? WHERE id = ?",
            (state, time.time(), message, job_id),
        )

    def mark_delivered(self, job_id: int) -> None:
        self._db.execute("UPDATE jobs SET delivered = 1 WHERE id = ?", (job_id,))

    def get(self, job_id: int) -> JobRecord | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _record(row) if row else None

    def pending(self) -> list[JobRecord]:
        """Jobs that were waiting or drawing, oldest first."""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM jobs WHERE state IN ('queued', 'running') ORDER BY id"
        ).fetchall()
        return [_record(row) for row in rows]

    def undelivered(self) -> list[JobRecord]:
        """Finished jobs with a reply address whose reply was not confirmed, oldest first."""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM jobs WHERE state IN ('done', 'failed', 'cancelled') "
            "AND reply_to != '' AND delivered = 0 ORDER BY id"
        ).fetchall()
        return [_record(row) for row in rows]

    def history(self, requester: str | None = None, limit: int = 10) -> list[JobRecord]:
        """Finished drawings, newest first."""
        where = "state = 'done'" + (" AND requester = ?" if requester is not None else "")
        params: tuple[Any, ...] = (requester,) if requester is not None else ()
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM jobs WHERE {where} ORDER BY id DESC LIMIT ?",
            (*params, limit),
        ).fetchall()
        return [_record(row) for row in rows]

    def trim(self, keep: int) -> int:
        """Forget all but the newest `keep` finished jobs (image files stay); returns how many."""
        cursor = self._db.execute(
            "DELETE FROM jobs WHERE state IN ('done', 'failed', 'cancelled') AND id NOT IN "
            "(SELECT id FROM jobs WHERE state IN ('done', 'failed', 'cancelled') "
            "ORDER BY id DESC LIMIT ?)",
            (keep,),
        )
        return cursor.rowcount


_COLUMNS = (
    "id, state, requester, request, reply_to, submitted_at, started_at, finished_at, "
    "attempts, error, images, delivered"
)


def _record(row: tuple[Any, ...]) -> JobRecord:
    (id_, state, requester, request, reply_to, submitted, started, finished) = row[:8]
    attempts, error, images, delivered = row[8:]
    return JobRecord(
        id=id_,
        state=state,
        requester=requester,
        request=_load_request(request),
        reply_to=reply_to,
        submitted_at=submitted,
        started_at=started,
        finished_at=finished,
        attempts=attempts,
        error=error,
        images=tuple(SavedImage(**image) for image in json.loads(images)),
        delivered=bool(delivered),
    )


def _dump_request(request: GenerationRequest) -> str:
    return json.dumps(dataclasses.asdict(request), ensure_ascii=False)


def _load_request(text: str) -> GenerationRequest:
    """The request back from JSON; keys of another version's fields are skipped."""
    data = json.loads(text)
    names = {f.name for f in dataclasses.fields(GenerationRequest)}
    unknown = set(data) - names
    if unknown:
        log.warning("journal: ignoring unknown request fields %s", sorted(unknown))
    return GenerationRequest(**{k: _tuples(v) for k, v in data.items() if k in names})


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples frozen requests hold (they must stay hashable)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value
