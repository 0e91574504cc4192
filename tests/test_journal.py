"""The journal on its own: rows that cannot be read back, and writes that fail."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.journal import Journal, JournalError, SavedImage, UnreadableRow
from engine.request import GenerationRequest


def req(prompt: str) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, requester="u1", model="alpha", seed=7)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    journal = Journal(tmp_path / "journal.sqlite3")
    yield journal
    journal.close()


def edit_row(journal: Journal, job_id: int, **columns: Any) -> None:
    """Change a row as a hand edit or a broken version would (through the journal's own
    connection: it holds the file's lock)."""
    sets = ", ".join(f"{name} = ?" for name in columns)
    journal._db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*columns.values(), job_id))


def finished(journal: Journal, prompt: str) -> int:
    job_id = journal.add(req(prompt), reply_to="chat:1", submitted_at=0.0)
    journal.mark_running(job_id)
    journal.mark_done(job_id, [SavedImage(path=f"/r/{prompt}.png", seed=7, infotext="")])
    return job_id


@pytest.mark.parametrize(
    ("columns", "why"),
    [
        ({"request": "{not json"}, "request is not JSON"),
        ({"request": '"just text"'}, "request is not a JSON object"),
        ({"request": '{"prompt": "x", "seed": 1.5}'}, "request field seed is 1.5, not int | None"),
        ({"request": '{"prompt": "x", "downcast_alphas_cumprod": 1}'}, "field downcast_alphas"),
        ({"request": '{"prompt": "x", "batch_size": true}'}, "field batch_size is True"),
        ({"attempts": "two"}, "attempts is 'two'"),
        ({"reply_to": b"chat:1"}, "reply_to is b'chat:1'"),
    ],
)
def test_a_row_that_cannot_be_read_is_reported_with_its_id_and_why(
    journal: Journal, columns: dict[str, Any], why: str
) -> None:
    good = journal.add(req("good"), reply_to="", submitted_at=0.0)
    bad = journal.add(req("bad"), reply_to="", submitted_at=0.0)
    edit_row(journal, bad, **columns)
    [record, unreadable] = journal.pending()
    assert not isinstance(record, UnreadableRow) and record.id == good
    assert isinstance(unreadable, UnreadableRow) and unreadable.id == bad
    assert why in unreadable.reason

    journal.mark_unreadable(bad, unreadable.reason)
    assert [r.id for r in journal.pending()] == [good]
    assert journal.undelivered() == []  # it is not handed out for a reply either


@pytest.mark.parametrize(
    "images",
    ["not json", '[{"path": "/r/x.png"}]', '[{"path": 1, "seed": 7, "infotext": ""}]', "[]"],
)
def test_a_finished_row_with_broken_images_is_reported(journal: Journal, images: str) -> None:
    good, bad = finished(journal, "good"), finished(journal, "bad")
    edit_row(journal, bad, images=images)
    [record, unreadable] = journal.undelivered()
    assert not isinstance(record, UnreadableRow) and record.id == good
    assert isinstance(unreadable, UnreadableRow) and unreadable.id == bad
    assert "images" in unreadable.reason


def test_history_and_get_leave_out_a_row_that_cannot_be_read(
    journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    ids = [finished(journal, prompt) for prompt in ("one", "two", "three")]
    edit_row(journal, ids[1], request="{not json")
    assert [r.request.prompt for r in journal.history()] == ["three", "one"]
    assert journal.get(ids[1]) is None
    record = journal.get(ids[2])
    assert record is not None and record.request.prompt == "three"
    assert f"job {ids[1]} cannot be read back (request is not JSON" in caplog.text


class FullDisk:
    """A connection whose writes fail as SQLite's do on a full disk."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        if sql.split()[0] in ("INSERT", "UPDATE", "DELETE"):
            raise sqlite3.OperationalError("database or disk is full")
        return self.db.execute(sql, params)

    def close(self) -> None:
        self.db.close()


def test_a_failed_write_is_a_journal_error_that_names_the_file(
    journal: Journal, tmp_path: Path
) -> None:
    job_id = journal.add(req("x"), reply_to="", submitted_at=0.0)
    journal._db = FullDisk(journal._db)  # type: ignore[assignment]
    with pytest.raises(JournalError, match="database or disk is full") as raised:
        journal.mark_failed(job_id, "nope")
    assert raised.value.path == str(tmp_path / "journal.sqlite3")
    assert str(tmp_path / "journal.sqlite3") in str(raised.value)
    with pytest.raises(JournalError):
        journal.add(req("y"), reply_to="", submitted_at=0.0)
    [record] = journal.pending()  # the failed write changed nothing
    assert not isinstance(record, UnreadableRow) and record.state == "queued"


def test_a_journal_in_use_is_still_refused_as_before(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    with contextlib.closing(Journal(path)), pytest.raises(JournalError, match="another aidraw"):
        Journal(path)


@pytest.mark.parametrize("job_id", [0, -1, 2**63, 10**23])
def test_a_job_number_beyond_sqlites_range_is_no_job(journal: Journal, job_id: int) -> None:
    journal.add(req("x"), reply_to="", submitted_at=0.0)
    assert journal.get(job_id) is None  # not an OverflowError from sqlite3
