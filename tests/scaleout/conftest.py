"""A real redis-server for the pool's tests (started once per session on a free loopback port,
with AOF persistence, in a temporary folder; stopped at the end), and the pool's processes."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisServer:
    """One redis-server process; `restart()` kills it (SIGKILL) and starts it on the same
    port and folder, so what its append-only file kept is all that is left."""

    port: int
    folder: Path
    options: tuple[str, ...] = ("--appendonly", "yes", "--appendfsync", "always")
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server is not installed (.ci/run installs Debian's redis-server)")
        with (self.folder / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(
                [
                    exe,
                    "--port", str(self.port),
                    "--bind", "127.0.0.1",
                    "--dir", str(self.folder),
                    "--save", "",
                    *self.options,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.skip(f"redis-server could not start (see {self.folder / 'redis.log'})")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        pytest.skip("redis-server did not answer within 15 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(3)
            except subprocess.TimeoutExpired:  # a busy machine: the tests are over anyway
                self.process.kill()
                self.process.wait()

    def restart(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)
        self.start()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(port=free_port(), folder=tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's Redis, emptied for this test."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


class Pool:
    """The processes of one test: a bot (tests/scaleout/botproc.py) and `aidraw worker`s, all
    with one settings file; their logs go to files in the test's folder."""

    def __init__(self, folder: Path, settings: str) -> None:
        self.folder = folder
        self.settings = folder / "settings.toml"
        self.settings.write_text(settings)
        self.processes: list[subprocess.Popen[bytes]] = []
        self.env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",  # two workers share the CPU cores
            "PYTHONPATH": str(ROOT),
            "AIDRAW_SETTINGS": str(self.settings),
        }

    def start(self, argv: list[str], log: str) -> subprocess.Popen[bytes]:
        with (self.folder / log).open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, *argv],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(process)
        return process

    def worker(self, name: str) -> subprocess.Popen[bytes]:
        return self.start(
            ["-m", "bot.cli", "-v", "worker", "--name", name, "--device", "cpu"], f"{name}.log"
        )

    def bot(self, *args: str) -> subprocess.Popen[bytes]:
        return self.start(["-m", "tests.scaleout.botproc", str(self.folder), *args], "bot.log")

    def replies(self) -> list[dict[str, object]]:
        import json

        path = self.folder / "replies.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
            for p in sorted(self.folder.glob("*.log"))
        )

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
