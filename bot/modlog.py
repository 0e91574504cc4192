"""The moderation log: one record per delivered job (who, where, prompt, the image check's
label and score, what the policy did, the reply's message ids) in SQLite beside the journal,
kept `[moderation] log_days` days; admins look a result's author up by its message."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bot.messages import Locale, text
from bot.prefs import connect

DAY_S = 24 * 3600


@dataclass(frozen=True)
class Entry:
    """One job as the moderation log keeps it."""

    job: int
    user: str
    place: str
    prompt: str
    label: str
    score: float
    outcome: str  # "send", "spoiler" or "refuse"
    chat: int | None
    messages: tuple[int, ...]
    at: float


class ModLog:
    """`record` a job once its reply is out; `by_message` / `get` look it up; `prune` drops
    what is older than the retention (run at every record)."""

    def __init__(self, path: str | Path, days: int) -> None:
        self.days = days
        self._db = connect(path)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS modlog (job INTEGER PRIMARY KEY, user TEXT, "
                "place TEXT, prompt TEXT, label TEXT, score REAL, outcome TEXT, chat INTEGER, "
                "messages TEXT, at REAL)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS modlog_messages (message INTEGER, chat INTEGER, "
                "job INTEGER)"
            )
            self._db.execute(
                "CREATE INDEX IF NOT EXISTS modlog_by_message ON modlog_messages (message)"
            )

    def record(
        self,
        *,
        job: int,
        user: str,
        place: str,
        prompt: str,
        label: str,
        score: float,
        outcome: str,
        chat: int | None,
        messages: Sequence[int],
        at: float | None = None,
    ) -> None:
        if self.days <= 0:
            return
        at = time.time() if at is None else at
        row = (
            job,
            user,
            place,
            prompt,
            label,
            score,
            outcome,
            chat,
            json.dumps(list(messages)),
            at,
        )
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO modlog VALUES (?,?,?,?,?,?,?,?,?,?)", row)
            self._db.execute("DELETE FROM modlog_messages WHERE job = ?", (job,))
            self._db.executemany(
                "INSERT INTO modlog_messages VALUES (?, ?, ?)", [(m, chat, job) for m in messages]
            )
        self.prune(at)

    def get(self, job: int) -> Entry | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM modlog WHERE job = ?", (job,)).fetchone()
        return None if row is None else _entry(row)

    def by_message(self, message: int, chat: int | None = None) -> Entry | None:
        """The job whose reply is `message` (in `chat`, where ids are per chat: Telegram)."""
        query = "SELECT job FROM modlog_messages WHERE message = ?"
        args: tuple[int, ...] = (message,)
        if chat is not None:
            query += " AND chat = ?"
            args = (message, chat)
        with self._lock:
            row = self._db.execute(query, args).fetchone()
        return None if row is None else self.get(int(row[0]))

    def forget(self, job: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM modlog WHERE job = ?", (job,))
            self._db.execute("DELETE FROM modlog_messages WHERE job = ?", (job,))

    def prune(self, now: float | None = None) -> int:
        """Drop records older than the retention; how many went."""
        cutoff = (time.time() if now is None else now) - self.days * DAY_S
        with self._lock:
            old = [r[0] for r in self._db.execute("SELECT job FROM modlog WHERE at < ?", (cutoff,))]
            for job in old:
                self._db.execute("DELETE FROM modlog WHERE job = ?", (job,))
                self._db.execute("DELETE FROM modlog_messages WHERE job = ?", (job,))
        return len(old)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _entry(row: tuple[object, ...]) -> Entry:
    job, user, place, prompt, label, score, outcome, chat, messages, at = row
    return Entry(
        job=int(str(job)),
        user=str(user),
        place=str(place),
        prompt=str(prompt),
        label=str(label),
        score=float(str(score)),
        outcome=str(outcome),
        chat=None if chat is None else int(str(chat)),
        messages=tuple(json.loads(str(messages))),
        at=float(str(at)),
    )


def modlog_line(entry: Entry, locale: Locale) -> str:
    """What an admin's lookup says of a job."""
    when = datetime.fromtimestamp(entry.at, UTC).strftime("%Y-%m-%d %H:%M UTC")
    label = f"{entry.label} {entry.score:.2f}, {entry.outcome}"
    return text(
        "modlog_found",
        locale,
        job=entry.job,
        user=entry.user,
        place=entry.place,
        when=when,
        prompt=entry.prompt[:300],
        label=label,
    )
