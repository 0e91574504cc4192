"""The API for the tests: the web app (with the API on it) over a real Engine, served on a
real loopback port, either on the demo model (`demo=True`: real pictures and infotext) or on
PngGenerate (real PNGs at once; `hold()` keeps a job drawing)."""

from __future__ import annotations

import asyncio
import base64
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer
from PIL import Image

from bot.api.access import LOCAL, Credentials
from bot.prefs import UserSettingsStore
from bot.settings import from_dict
from bot.web import app as web
from engine.engine import Engine
from engine.queue import QueueConfig
from tests.engine_fakes import FakeLoader, FakeRegistry
from tests.pictures import PngGenerate

TIMEOUT_S = 120  # the CPU may be shared with other test runs
# A request the demo model draws in well under a second.
TINY = {"prompt": "1girl, smile", "width": 64, "height": 64, "steps": 2, "seed": 1234}


@dataclass
class Api:
    tmp_path: Path
    fake: PngGenerate = field(default_factory=PngGenerate)
    engine: Engine[Any] | None = None
    task: asyncio.Task[None] | None = None
    server: TestServer | None = None
    session: aiohttp.ClientSession | None = None
    store: UserSettingsStore = field(default_factory=lambda: UserSettingsStore(":memory:"))

    async def start(
        self,
        *,
        demo_models: Path | None = None,
        credentials: Credentials | None = None,
        admins: tuple[str, ...] = (LOCAL,),
        paused: bool = False,
        **queue: Any,
    ) -> str:
        settings = from_dict({"limits": {"max_steps": 50}}, root=self.tmp_path)
        config = QueueConfig(
            **{
                "journal": str(self.tmp_path / "journal.sqlite3"),
                "results_dir": str(self.tmp_path / "results"),
                "warm_up": False,
                "max_batch": 1,
                "admins": admins,
                **queue,
            }
        )
        if demo_models is not None:
            from engine.device import DeviceOptions
            from engine.generate import generate
            from engine.models import ModelRegistry

            registry = ModelRegistry(demo_models, settings.defaults)
            self.engine = Engine(
                config,
                registry=registry,
                load=lambda name: registry.load(name, DeviceOptions(device="cpu")),
                generate=generate,
                limits=settings.limits,
            )
        else:
            self.engine = Engine(
                config,
                registry=FakeRegistry(),
                load=FakeLoader(),
                generate=self.fake,
                limits=settings.limits,
            )
        if paused:
            self.engine.pause()
        self.task = asyncio.create_task(self.engine.run())
        app = web.create_app(self.engine, settings, self.store, api_credentials=credentials)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        self.session = aiohttp.ClientSession()
        return f"http://127.0.0.1:{self.server.port}"

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}"

    async def call(
        self, method: str, path: str, body: Any = None, status: int = 200, **kwargs: Any
    ) -> Any:
        assert self.session is not None
        async with self.session.request(method, self.url + path, json=body, **kwargs) as r:
            data = await r.json()
            assert r.status == status, data
            return data

    async def stop(self) -> None:
        self.fake.release()
        if self.session is not None:
            await self.session.close()
        if self.server is not None:
            await self.server.close()
        if self.engine is not None:
            await self.engine.close(grace_s=TIMEOUT_S)
        if self.task is not None:
            await asyncio.wait_for(self.task, TIMEOUT_S)
        self.store.close()


def png_of(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def b64_png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()
