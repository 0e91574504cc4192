"""The SQLite journal of jobs: written before submit returns, replayed after a restart.

One row per job. WAL mode with synchronous=NORMAL: a committed row survives the process being
killed (only a power cut may lose the last moments). The file is opened with an exclusive
lock, so a second aidraw process cannot replay (and draw) the same jobs.

Every SQLite error comes out as JournalError, naming the file. A damaged file stops start-up;
it is never repaired, deleted or written to here. A row that cannot be read back (edited by
hand, or written by a broken version) comes back from `pending()`/`undelivered()` as an
`UnreadableRow`, and is left out of `history()` and `get()`: one bad row does not hide the
others.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import sqlite3
import time
import types
import typing
from collections.abc import Iterator
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
    """The journal cannot be opened (another aidraw process holds it, the file is damaged) or
    written (a full disk). The message names the file: it is for the log, not for users."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


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


@dataclass(frozen=True, kw_only=True)
class UnreadableRow:
    """A row that cannot be read back as a JobRecord; `reason` says what is wrong with it."""

    id: int
    reason: str


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
            # Read every page before anything is written: a damaged file is reported as it is,
            # not first half-repaired by the pragmas and the schema below.
            problems = [row[0] for row in self._db.execute("PRAGMA quick_check").fetchall()]
            if problems != ["ok"]:
                # The first finding is enough to say where ("On tree page 6 cell 1: ...").
                first = problems[0].replace("*** in database main ***", "")
                damage = sqlite3.DatabaseError(f"quick_check: {first}")
                damage.sqlite_errorname = "SQLITE_CORRUPT"
                raise damage
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.executescript(_SCHEMA)
            self._db.execute("BEGIN EXCLUSIVE")
            self._db.execute("COMMIT")
        except sqlite3.Error as e:
            self._db.close()
            raise JournalError(_problem(self.path, "open", e), path=self.path) from e

    def close(self) -> None:
        self._db.close()

    def backup(self, target: str | Path) -> None:
        """Copy the journal into the SQLite file `target` as it is now: SQLite's online
        backup through this connection, which holds the file's lock (no other can read it)."""
        with self._sql(f"back up (to {target})"):
            copy = sqlite3.connect(str(target))
            try:
                self._db.backup(copy)
                copy.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
            finally:
                copy.close()

    def add(self, request: GenerationRequest, *, reply_to: str, submitted_at: float) -> int:
        """Record a new queued job; returns its id (ids only grow, even across restarts)."""
        with self._sql("add a job to"):
            cursor = self._db.execute(
                "INSERT INTO jobs (state, requester, request, reply_to, submitted_at) "
                "VALUES ('queued', ?, ?, ?, ?)",
                (request.requester, _dump_request(request), reply_to, submitted_at),
            )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def mark_running(self, job_id: int) -> None:
        with self._sql(f"mark job {job_id} running in"):
            self._db.execute(
                "UPDATE jobs SET state = 'running', started_at = ?, attempts = attempts + 1 "
                "WHERE id = ?",
                (time.time(), job_id),
            )

    def mark_queued(self, job_id: int, *, undo_attempt: bool = False) -> None:
        """Back to waiting (interrupted by a shutdown, or found running after a crash)."""
        with self._sql(f"mark job {job_id} queued in"):
            self._db.execute(
                "UPDATE jobs SET state = 'queued', started_at = NULL, "
                "attempts = attempts - ? WHERE id = ?",
                (1 if undo_attempt else 0, job_id),
            )

    def mark_done(self, job_id: int, images: list[SavedImage]) -> None:
        with self._sql(f"mark job {job_id} done in"):
            self._db.execute(
                "UPDATE jobs SET state = 'done', finished_at = ?, images = ? WHERE id = ?",
                (time.time(), json.dumps([dataclasses.asdict(i) for i in images]), job_id),
            )

    def mark_failed(self, job_id: int, message: str, *, state: JobState = "failed") -> None:
        with self._sql(f"mark job {job_id} {state} in"):
            self._db.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, error = ? WHERE id = ?",
                (state, time.time(), message, job_id),
            )

    def mark_unreadable(self, job_id: int, reason: str) -> None:
        """Fail a row that cannot be read back. Its text is kept for whoever looks; it is
        marked delivered, as no reply can be built from it."""
        with self._sql(f"mark job {job_id} failed in"):
            self._db.execute(
                "UPDATE jobs SET state = 'failed', finished_at = ?, error = ?, delivered = 1 "
                "WHERE id = ?",
                (time.time(), f"The journal row could not be read back: {reason}", job_id),
            )

    def mark_delivered(self, job_id: int) -> None:
        with self._sql(f"mark job {job_id} delivered in"):
            self._db.execute("UPDATE jobs SET delivered = 1 WHERE id = ?", (job_id,))

    def get(self, job_id: int) -> JobRecord | None:
        """The job's record; None if there is none, or it cannot be read back (logged)."""
        if not 0 < job_id < 2**63:  # SQLite's integer range: no such job, not an OverflowError
            return None
        records = _readable(self._select("WHERE id = ?", (job_id,)))
        return records[0] if records else None

    def pending(self) -> list[JobRecord | UnreadableRow]:
        """Jobs that were waiting or drawing, oldest first."""
        return self._select("WHERE state IN ('queued', 'running') ORDER BY id")

    def undelivered(self) -> list[JobRecord | UnreadableRow]:
        """Finished jobs with a reply address whose reply was not confirmed, oldest first."""
        return self._select(
            "WHERE state IN ('done', 'failed', 'cancelled') "
            "AND reply_to != '' AND delivered = 0 ORDER BY id"
        )

    def undelivered_counts(self) -> dict[str, int]:
        """How many finished jobs' replies are not confirmed, by the platform of their reply
        address ("telegram:777:42" → "telegram")."""
        with self._sql("count undelivered replies in"):
            rows = self._db.execute(
                "SELECT substr(reply_to, 1, instr(reply_to || ':', ':') - 1), count(*) FROM jobs "
                "WHERE state IN ('done', 'failed', 'cancelled') AND reply_to != '' "
                "AND delivered = 0 GROUP BY 1"
            ).fetchall()
        return {str(platform): int(n) for platform, n in rows}

    def history(self, requester: str | None = None, limit: int = 10) -> list[JobRecord]:
        """Finished drawings, newest first (rows that cannot be read back are left out)."""
        where = "state = 'done'" + (" AND requester = ?" if requester is not None else "")
        params: tuple[Any, ...] = (requester,) if requester is not None else ()
        return _readable(self._select(f"WHERE {where} ORDER BY id DESC LIMIT ?", (*params, limit)))

    def trim(self, keep: int) -> int:
        """Forget all but the newest `keep` finished jobs (image files stay); returns how many."""
        with self._sql("trim the finished jobs of"):
            cursor = self._db.execute(
                "DELETE FROM jobs WHERE state IN ('done', 'failed', 'cancelled') AND id NOT IN "
                "(SELECT id FROM jobs WHERE state IN ('done', 'failed', 'cancelled') "
                "ORDER BY id DESC LIMIT ?)",
                (keep,),
            )
        return cursor.rowcount

    def input_images(self) -> set[str]:
        """The init images and masks the remembered jobs name (what the image store keeps)."""
        with self._sql("read the input images of"):
            rows = self._db.execute(
                "SELECT json_extract(request, '$.init_image'), "
                "json_extract(request, '$.mask_image') FROM jobs WHERE json_valid(request)"
            ).fetchall()
        return {path for row in rows for path in row if isinstance(path, str)}

    def _select(self, where: str, params: tuple[Any, ...] = ()) -> list[JobRecord | UnreadableRow]:
        with self._sql("read the jobs of"):
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM jobs {where}", params).fetchall()
        return [_record(row) for row in rows]

    @contextlib.contextmanager
    def _sql(self, what: str) -> Iterator[None]:
        """SQLite's errors (a full disk, a damaged file) as JournalError, logged here once:
        callers decide what the failure means, frontends only see an EngineError."""
        try:
            yield
        except sqlite3.Error as e:
            message = _problem(self.path, what, e)
            log.error("%s", message)
            raise JournalError(message, path=self.path) from e


_COLUMNS = (
    "id, state, requester, request, reply_to, submitted_at, started_at, finished_at, "
    "attempts, error, images, delivered"
)


def _problem(path: str, what: str, e: sqlite3.Error) -> str:
    """One line for the log: what failed on which file, and what the admin can do."""
    name = getattr(e, "sqlite_errorname", "")
    if name in ("SQLITE_BUSY", "SQLITE_LOCKED"):
        hint = " (is another aidraw process running with the same settings?)"
    elif name in ("SQLITE_CORRUPT", "SQLITE_NOTADB"):
        hint = "; the file is damaged: move it aside and restart (it is not deleted)"
    else:
        hint = ""  # a full disk, a read-only folder…: the error says it
    reason = " ".join(str(e).split())  # quick_check's report spans lines
    return f"cannot {what} the job journal {path}: {reason}{hint}"


def _readable(rows: list[JobRecord | UnreadableRow]) -> list[JobRecord]:
    """The rows that are records; the others are logged and left out."""
    records = []
    for row in rows:
        if isinstance(row, JobRecord):
            records.append(row)
        else:
            log.warning("journal: job %d cannot be read back (%s); left out", row.id, row.reason)
    return records


_STATES = frozenset(typing.get_args(JobState))
_NUMBER = (int, float)


def _record(row: tuple[Any, ...]) -> JobRecord | UnreadableRow:
    """The row as a JobRecord, or as an UnreadableRow saying what is wrong with it."""
    (id_, state, requester, request, reply_to, submitted, started, finished) = row[:8]
    attempts, error, images, delivered = row[8:]
    try:
        _expect("state", state, str)
        if state not in _STATES:
            raise ValueError(f"state is {state!r}")
        _expect("requester", requester, str)
        _expect("reply_to", reply_to, str)
        _expect("submitted_at", submitted, *_NUMBER)
        _expect("started_at", started, *_NUMBER, type(None))
        _expect("finished_at", finished, *_NUMBER, type(None))
        _expect("attempts", attempts, int)
        _expect("error", error, str, type(None))
        _expect("delivered", delivered, int)
        saved = _load_images(images)
        if state == "done" and not saved:
            raise ValueError("images is empty for a finished drawing")
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
            images=saved,
            delivered=bool(delivered),
        )
    except ValueError as e:
        return UnreadableRow(id=id_, reason=str(e))


def _expect(column: str, value: Any, *kinds: type) -> None:
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise ValueError(f"{column} is {value!r}")


def _load_images(text: Any) -> tuple[SavedImage, ...]:
    _expect("images", text, str)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"images is not JSON ({e})") from None
    keys = {"path": str, "seed": int, "infotext": str}
    for image in data if isinstance(data, list) else [None]:
        if not (
            isinstance(image, dict)
            and set(image) == set(keys)
            and all(_fits(image[k], kind) for k, kind in keys.items())
        ):
            raise ValueError(f"images holds {image!r}, not {{path, seed, infotext}}")
    return tuple(SavedImage(**image) for image in data)


def _dump_request(request: GenerationRequest) -> str:
    return json.dumps(dataclasses.asdict(request), ensure_ascii=False)


_REQUEST_TYPES = typing.get_type_hints(GenerationRequest)
_REQUIRED = frozenset(
    f.name
    for f in dataclasses.fields(GenerationRequest)
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
)


def _load_request(text: Any) -> GenerationRequest:
    """The request back from JSON; keys of another version's fields are skipped (with a
    warning). ValueError says why a text cannot be a request: the dataclass does not check
    types, and a wrong one would only break later, inside replay or a drawing."""
    _expect("request", text, str)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"request is not JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError("request is not a JSON object")
    unknown = set(data) - set(_REQUEST_TYPES)
    if unknown:
        log.warning("journal: ignoring unknown request fields %s", sorted(unknown))
    values = {k: _tuples(v) for k, v in data.items() if k in _REQUEST_TYPES}
    for name, value in values.items():
        hint = _REQUEST_TYPES[name]
        if not _fits(value, hint):
            raise ValueError(f"request field {name} is {value!r}, not {_type_name(hint)}")
    missing = _REQUIRED - set(values)
    if missing:
        raise ValueError(f"request has no {', '.join(sorted(missing))}")
    return GenerationRequest(**values)


def _fits(value: Any, hint: Any) -> bool:
    """Whether a value read from JSON fits a field's annotation (the outer type only)."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_fits(value, member) for member in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is Any:
        return True
    if hint is float:
        hint = (int, float)  # JSON writes 7.0 as 7 when the request held an int
    elif isinstance(origin, type):
        hint = origin  # tuple[str, ...]: the elements are not checked
    if not isinstance(hint, type | tuple):
        return True  # a kind of annotation this check does not know: the request decides
    if isinstance(value, bool) and hint is not bool:
        return False  # True is an int to isinstance, not to a request
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint)


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples frozen requests hold (they must stay hashable)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value
