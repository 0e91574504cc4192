"""FakeServer: the aiohttp plumbing and call recording shared by the fake chat APIs."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import struct
from collections import defaultdict, deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal, NamedTuple, Self

from aiohttp import BodyPartReader, web

# Real chat APIs accept uploads far above aiohttp's 1 MiB default (Telegram 50 MB, Discord 10+ MiB).
MAX_REQUEST_BYTES = 64 * 1024 * 1024


class Upload(NamedTuple):
    """One file part of a multipart request."""

    field: str
    filename: str | None
    content_type: str | None
    data: bytes


class Canned(NamedTuple):
    """A queued error answer: HTTP status, JSON body and extra headers."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str]


class Stall(NamedTuple):
    """A queued network fault: the request waits `seconds` (inf: until the client gives up),
    then `then` happens. "answer": it is handled and answered normally (a slow server);
    "drop": the connection closes with no answer and nothing done (a lost request); "drop_done":
    the method takes effect, then the connection closes (only the answer was lost, so the client
    cannot tell whether it worked). A call that got no answer is recorded with status 0."""

    seconds: float
    then: Literal["answer", "drop", "drop_done"]


NO_ANSWER = 0  # the status recorded for a call whose connection was dropped


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, or None if `data` is not a PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or len(data) < 24 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def decode_json_field(value: str) -> Any:
    """A form field as JSON, or the raw string when it isn't JSON."""
    try:
        return json.loads(value)
    except ValueError:
        return value


async def read_form(request: web.Request) -> tuple[dict[str, str], list[Upload]]:
    """Text fields and file parts of a urlencoded or multipart body (empty for other bodies).

    Multipart bodies are read part by part into memory, not with `request.post()`: that spools
    file parts to temporary files which nobody closes when the server stops mid-upload.
    """
    fields: dict[str, str] = {}
    uploads: list[Upload] = []
    if request.content_type == "application/x-www-form-urlencoded":
        fields.update((name, str(value)) for name, value in (await request.post()).items())
    elif request.content_type == "multipart/form-data":
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            assert isinstance(part, BodyPartReader), "nested multipart bodies are not expected"
            name = part.name or ""
            if part.filename is not None:
                data = await part.read(decode=True)
                uploads.append(Upload(name, part.filename, part.headers.get("Content-Type"), data))
            else:
                fields[name] = await part.text()
    return fields, uploads


class FakeServer:
    """An aiohttp server on 127.0.0.1 (free port) that records calls for `wait_for`.

    Subclasses fill in `_routes` and append `NamedTuple` calls whose first field is the name that
    `wait_for` matches and that have a `status` field.
    """

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.port = 0
        self._returned: set[int] = set()
        self._changed = asyncio.Event()
        self._canned: defaultdict[str, deque[Canned]] = defaultdict(deque)
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()

    # --- lifecycle ---------------------------------------------------------------------------
    def _routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        self._routes(app)
        # handler_cancellation: a long poll whose client went away must not hold cleanup() for
        # the whole poll timeout (chat-testing.md, PTB gotcha 4).
        runner = web.AppRunner(
            app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None
        )
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        self.port = runner.addresses[0][1]

    async def close(self) -> None:
        self._closing.set()
        self._notify()
        await self._before_close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _before_close(self) -> None:
        """Hook: release long-lived connections before the runner shuts down."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def http_root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- recording ---------------------------------------------------------------------------
    def _next_id(self) -> int:
        return next(self._ids)

    def _notify(self) -> None:
        # Waking every waiter by swapping the event: each waiter re-checks its own condition.
        self._changed.set()
        self._changed = asyncio.Event()

    def _record(self, call: Any) -> None:
        self.calls.append(call)
        self._notify()

    async def _wait_changed(self, seconds: float) -> None:
        event = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)

    @staticmethod
    def _status_matches(call: Any, status: int | str | None) -> bool:
        if status == "2xx":
            return bool(200 <= call.status < 300)
        return status is None or bool(call.status == status)

    async def wait_for(
        self,
        name: str,
        predicate: Callable[[Any], bool] | None = None,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 - the deadline for the whole wait, like pytest's
        status: int | str | None = "2xx",
    ) -> Any:
        """The first call named `name` (matching `predicate`) not returned by an earlier wait_for.

        Waits until it arrives. By default only successful calls match; `status=429` (or any
        code) matches the calls answered with it, `status=None` matches all. Raises
        AssertionError after `timeout` seconds, listing what was seen.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for index, call in enumerate(self.calls):
                if (
                    index not in self._returned
                    and call[0] == name
                    and self._status_matches(call, status)
                    and (predicate is None or predicate(call))
                ):
                    self._returned.add(index)
                    return call
            remaining = deadline - loop.time()
            if remaining <= 0:
                seen = ", ".join(f"{c[0]}:{c.status}" for c in self.calls) or "nothing"
                raise AssertionError(
                    f"no {name!r} call (status {status}) matched within {timeout}s; seen: {seen}"
                )
            await self._wait_changed(remaining)

    async def wait_until(
        self,
        condition: Callable[[], bool],
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 - the deadline for the whole wait
    ) -> None:
        """Wait until `condition()` holds; it is re-checked whenever the fake records anything."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"condition still false after {timeout}s")
            await self._wait_changed(remaining)

    def count(self, name: str, *, status: int | str | None = "2xx") -> int:
        """How many calls named `name` were recorded (status as in wait_for)."""
        return sum(1 for c in self.calls if c[0] == name and self._status_matches(c, status))

    # --- canned failures ---------------------------------------------------------------------
    def _fail_next(self, name: str, canned: Canned | Stall) -> None:
        self._canned[name].append(canned)

    def _take_canned(self, name: str) -> Canned | Stall | None:
        queue = self._canned.get(name)
        return queue.popleft() if queue else None

    def clear_faults(self) -> None:
        """Forget every queued error answer and stall."""
        self._canned.clear()

    def stall_next(
        self,
        name: str,
        then: Literal["answer", "drop", "drop_done"],
        *,
        seconds: float = 0.0,
        times: int = 1,
    ) -> None:
        """The next `times` calls named `name` stall (see `Stall`; queued with the canned
        errors, one per call)."""
        for _ in range(times):
            self._fail_next(name, Stall(seconds, then))

    @staticmethod
    async def _stall(request: web.Request, seconds: float) -> None:
        """Hold a request `seconds` (inf: until the client disconnects, which cancels us)."""
        if seconds == float("inf"):
            await asyncio.Event().wait()
        await asyncio.sleep(seconds)

    @staticmethod
    async def _drop(request: web.Request) -> web.Response:
        """Close the connection without an answer; the client sees it reset or disconnected."""
        if request.transport is not None:
            request.transport.close()
        # Closing the transport cancels this handler (handler_cancellation); wait for that.
        await asyncio.Event().wait()
        raise AssertionError("unreachable")
