"""The web chat for the tests: a real Engine with a fake generate(), the web app over it and
a test client (`Chat`; the fixture `chat` is in conftest.py), and helpers for its HTTP API and
its WebSocket events."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient, TestServer

from bot.prefs import UserSettingsStore
from bot.settings import from_dict
from bot.web import app as web
from bot.web.chat import USER
from engine.engine import Engine
from engine.queue import QueueConfig
from tests.engine_fakes import FakeGenerate, FakeLoader, FakeRegistry

TIMEOUT_S = 60  # generous: the machine may be busy with other test runs
JSON = {"Content-Type": "application/json"}
Event = dict[str, Any]


@dataclass
class Chat:
    """A running engine, the web app over it, and a test client."""

    tmp_path: Path
    fake: FakeGenerate = field(default_factory=FakeGenerate)
    registry: FakeRegistry = field(default_factory=FakeRegistry)
    loader: FakeLoader = field(default_factory=FakeLoader)
    engine: Engine[Any] | None = None
    task: asyncio.Task[None] | None = None
    client: TestClient[Any, Any] | None = None
    app: aiohttp.web.Application | None = None
    store: UserSettingsStore = field(default_factory=lambda: UserSettingsStore(":memory:"))

    async def start(
        self,
        *,
        token: str | None = None,
        web_table: dict[str, Any] | None = None,
        limits: dict[str, Any] | None = None,
        bot: dict[str, Any] | None = None,
        paused: bool = False,
        tables: dict[str, Any] | None = None,  # more settings.toml tables ([places] …)
        **queue: Any,
    ) -> TestClient[Any, Any]:
        tables = {
            "web": web_table or {},
            "limits": {"max_steps": 50, **(limits or {})},
            "bot": bot or {},
            **(tables or {}),
        }
        settings = from_dict(tables, root=self.tmp_path)
        if settings.web.local_admin:  # as bot/launcher.py builds the engine for the web chat
            queue["admins"] = (*queue.get("admins", ()), USER)
        config = QueueConfig(
            **{
                "journal": str(self.tmp_path / "journal.sqlite3"),
                "results_dir": str(self.tmp_path / "results"),
                "warm_up": False,
                "max_batch": 1,
                **queue,
            }
        )
        self.engine = Engine(
            config,
            registry=self.registry,
            load=self.loader,
            generate=self.fake,
            limits=settings.limits,
        )
        if paused:
            self.engine.pause()
        self.task = asyncio.create_task(self.engine.run())
        app = web.create_app(self.engine, settings, self.store, token=token)
        self.app = app
        self.client = TestClient(TestServer(app))
        await self.client.start_server()
        return self.client

    async def settled(self) -> None:
        """Every job watcher has told the pages and confirmed its reply."""
        assert self.app is not None
        watchers = self.app[web.CHAT].watchers.values()
        async with asyncio.timeout(TIMEOUT_S):
            await asyncio.gather(*watchers)

    async def stop(self) -> None:
        self.fake.release()
        if self.client is not None:
            await self.client.close()
        if self.engine is not None:
            await self.engine.close(grace_s=TIMEOUT_S)
        if self.task is not None:
            await asyncio.wait_for(self.task, TIMEOUT_S)


async def post(client: TestClient[Any, Any], path: str, body: Any, status: int = 200) -> Any:
    response = await client.post(path, json=body)
    data = await response.json()
    assert response.status == status, data
    return data


async def until(
    ws: aiohttp.ClientWebSocketResponse, wanted: Callable[[Event], bool]
) -> list[Event]:
    """Events from the socket up to and including the first one that `wanted` accepts."""
    seen = []
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            event = await ws.receive_json()
            seen.append(event)
            if wanted(event):
                return seen


def of(job_id: int, kind: str, state: str | None = None) -> Callable[[Event], bool]:
    def wanted(event: Event) -> bool:
        job = event.get("job", {})
        return (
            event["type"] == kind
            and job.get("id") == job_id
            and (state is None or job["state"] == state)
        )

    return wanted


async def socket(client: TestClient[Any, Any], lang: str = "en") -> Any:
    ws = await client.ws_connect(f"/ws?lang={lang}")
    hello = await ws.receive_json()
    assert hello["type"] == "state" and hello["user"] == "web:local"
    return ws
