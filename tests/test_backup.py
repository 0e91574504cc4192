"""Backups with real SQLite: a backup taken while the bot writes is a consistent snapshot;
`aidraw backup` and `aidraw restore` bring per-user settings and queued jobs back; neither
touches the files of a running bot; SIGUSR1 makes a running bot write one."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bot import launcher
from bot.backup import JOURNAL, back_up_running, dated_folder, prune
from bot.cli import main
from bot.prefs import UserSettingsStore
from bot.settings import Settings, from_dict
from engine.engine import Engine
from engine.journal import Journal
from engine.request import GenerationRequest
from tests.engine_fakes import FakeGenerate, FakeLoader, FakeRegistry

TIMEOUT_S = 60


def make_settings(root: Path, **backup: Any) -> Settings:
    path = root / "settings.toml"
    lines = ["[queue]", "warm_up = false", "max_queued_per_user = 1000", "max_queued = 1000"]
    lines += ["[backup]", *(f"{k} = {v!r}" for k, v in backup.items())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return from_dict({"queue": {"warm_up": False}, "backup": backup}, root=root)


def make_engine(settings: Settings, fake: FakeGenerate | None = None) -> Engine[Any]:
    """As bot/launcher.py builds it, with a fake generate()."""
    config = dataclasses.replace(
        settings.queue,
        journal=str(settings.root / settings.queue.journal),
        results_dir=str(settings.root / settings.queue.results_dir),
        max_queued_per_user=1000,
        max_queued=1000,
    )
    return Engine(
        config, registry=FakeRegistry(), load=FakeLoader(), generate=fake or FakeGenerate()
    )


def users_path(settings: Settings) -> Path:
    return (settings.root / settings.queue.journal).with_name("users.sqlite3")


async def eventually(condition: Callable[[], bool]) -> None:
    """Until `condition()` holds (a task or a file appears: nothing to await on)."""
    while not condition():  # noqa: ASYNC110
        await asyncio.sleep(0.05)


def rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return db.execute(sql).fetchall()
    finally:
        db.close()


async def test_a_backup_taken_while_the_bot_writes_is_a_consistent_snapshot(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path)
    engine = make_engine(settings)
    task = asyncio.create_task(engine.run())
    store = UserSettingsStore(users_path(settings))
    stop = threading.Event()
    saved = [0]

    def save_prefs() -> None:  # another thread keeps writing per-user settings meanwhile
        while not stop.is_set():
            store.update(f"telegram:{saved[0]}", num_inference_steps=20)
            saved[0] += 1

    writer = threading.Thread(target=save_prefs)
    writer.start()
    try:
        snapshots = []
        everyone: list[Any] = []
        for round_ in range(5):
            jobs = [
                engine.submit(GenerationRequest(prompt=f"r{round_} j{i}", requester="discord:1"))
                for i in range(8)
            ]
            await asyncio.sleep(0)  # the engine starts drawing some
            everyone += jobs
            # What the journal holds right now, job by job (the loop is ours until we await).
            expected = {job.id: job.state for job in everyone}
            ids = {job.id for job in jobs}
            prefs_before = saved[0]
            folder = tmp_path / f"backup-{round_}"
            back_up_running(engine, settings, folder)
            prefs_after = saved[0]
            snapshots.append((folder, expected, prefs_before, prefs_after, ids))
            await asyncio.gather(*(job.result() for job in jobs))
    finally:
        stop.set()
        writer.join()
        await engine.close()
        await task
        store.close()
    submitted = 0
    assert any("running" in expected.values() for _, expected, *_ in snapshots)
    for folder, expected, prefs_before, prefs_after, ids in snapshots:
        submitted += len(ids)
        journal = dict(rows(folder / JOURNAL, "SELECT id, state FROM jobs"))
        # Every job submitted so far, no more, each as the engine had it (done, drawing, queued).
        assert len(journal) == submitted
        assert journal == expected
        assert {"done", "queued"} <= set(journal.values()) or submitted == 8
        users = rows(folder / "users.sqlite3", "SELECT count(*) FROM user_settings")[0][0]
        assert prefs_before <= users <= prefs_after + 1
    wal = await asyncio.to_thread(lambda: list(tmp_path.glob("backup-*/*-wal")))
    assert not wal  # each copy is one self-contained file


async def test_backup_and_restore_bring_prefs_and_queued_jobs_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(tmp_path)
    engine = make_engine(settings)
    engine.pause()
    task = asyncio.create_task(engine.run())
    queued = [
        engine.submit(GenerationRequest(prompt=p, requester="telegram:7"), reply_to="telegram:7:1")
        for p in ("a fox", "a cat")
    ]
    store = UserSettingsStore(users_path(settings))
    store.update("telegram:7", num_inference_steps=12, sampler="Euler")
    await engine.close()  # the queued jobs stay in the journal for the next start
    await task
    store.close()

    argv = ["--settings", str(tmp_path / "settings.toml")]
    assert main([*argv, "backup", str(tmp_path / "bk")]) == 0
    assert sorted(p.name for p in (tmp_path / "bk").iterdir()) == [JOURNAL, "users.sqlite3"]

    # Later the live files are lost (or damaged, or replaced by another start).
    for path in (tmp_path / "data").glob("*.sqlite3*"):
        path.unlink()
    fresh = make_engine(settings)
    assert fresh.jobs() == []
    await fresh.close()

    assert main([*argv, "restore", str(tmp_path / "bk")]) == 0
    assert "restored " + str(tmp_path / "data" / JOURNAL) in capsys.readouterr().out
    restarted = make_engine(settings)
    try:
        back = restarted.recovered()
        assert [(j.request.prompt, j.reply_to, j.state) for j in back] == [
            (job.request.prompt, "telegram:7:1", "queued") for job in queued
        ]
    finally:
        await restarted.close()
    store = UserSettingsStore(users_path(settings))
    prefs = store.get("telegram:7")
    store.close()
    assert (prefs.num_inference_steps, prefs.sampler) == (12, "Euler")


async def test_a_running_bots_files_are_neither_copied_nor_replaced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(tmp_path)
    argv = ["--settings", str(tmp_path / "settings.toml")]
    engine = make_engine(settings)
    engine.submit(GenerationRequest(prompt="kept", requester="u"))
    back_up_running(engine, settings, tmp_path / "bk")
    try:
        assert main([*argv, "backup", str(tmp_path / "other")]) == 2
        err = capsys.readouterr().err
        assert "in use by a running aidraw: send it SIGUSR1" in err
        assert main([*argv, "restore", str(tmp_path / "bk")]) == 2
        assert "in use by a running aidraw: stop it first" in capsys.readouterr().err
    finally:
        await engine.close()
    # A damaged backup is refused before anything is written.
    (tmp_path / "bk" / JOURNAL).write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    assert main([*argv, "restore", str(tmp_path / "bk")]) == 2
    assert "is damaged" in capsys.readouterr().err
    journal = Journal(tmp_path / "data" / JOURNAL)  # the live journal is as it was
    try:
        assert [getattr(r, "request", None) and r.request.prompt for r in journal.pending()] == [
            "kept"
        ]
    finally:
        journal.close()


def test_old_backups_beyond_keep_are_deleted(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, keep=2)
    made = [dated_folder(settings, 1_700_000_000 + day * 86_400) for day in range(4)]
    for folder in made:
        folder.mkdir(parents=True)
    (settings.root / settings.backup.dir / "mine").mkdir()  # not a dated backup: left alone
    prune(settings)
    left = sorted(p.name for p in (settings.root / settings.backup.dir).iterdir())
    assert left == sorted([made[2].name, made[3].name, "mine"])


@pytest.mark.timeout(60)
async def test_sigusr1_makes_the_running_bot_write_a_backup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in (launcher.DISCORD_TOKEN, launcher.TELEGRAM_TOKEN):
        monkeypatch.delenv(var, raising=False)
    settings = from_dict({"queue": {"warm_up": False}, "web": {"port": 0}}, root=tmp_path)
    built: list[Engine[Any]] = []

    def build_engine(settings: Settings, *, admins: tuple[str, ...] = ()) -> Any:
        built.append(make_engine(settings))
        built[0].submit(GenerationRequest(prompt="waiting", requester="u"))
        built[0].pause()
        return built[0], UserSettingsStore(users_path(settings))

    monkeypatch.setattr(launcher, "build_engine", build_engine)
    serving = asyncio.create_task(launcher.serve(settings))
    async with asyncio.timeout(TIMEOUT_S):
        # SIGUSR1's default would end the process: only once the handler is there.
        await eventually(lambda: any(t.get_name() == "backups" for t in asyncio.all_tasks()))
        os.kill(os.getpid(), signal.SIGUSR1)
        backups = tmp_path / "data" / "backups"
        await eventually(lambda: bool(list(backups.glob(f"*/{JOURNAL}"))))
        os.kill(os.getpid(), signal.SIGTERM)
        assert await serving == 0
    [folder] = list(backups.iterdir())
    assert rows(folder / JOURNAL, "SELECT state FROM jobs") == [("queued",)]
