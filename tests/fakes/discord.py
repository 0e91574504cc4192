"""FakeDiscord: a local Discord REST API + gateway for driving the real discord.py client.

`point_at(monkeypatch, fake)` redirects discord.py (Route.BASE, DEFAULT_GATEWAY); a subprocess
gets `fake.env()` (AIDRAW_DISCORD_API_URL / AIDRAW_DISCORD_GATEWAY_URL). See
shared/notes/chat-testing.md.

Interactions are built from the command schema the bot uploaded (`PUT .../commands`) and checked
the way Discord checks them (option types, choices, ranges, lengths), because discord.py does not.
Clicks are built from a message the fake returned, so discord.py routes them by message id and
custom_id. The fake answers like Discord where bots commonly go wrong: a second response to an
interaction (40060), a followup before the response (10015), empty or oversized messages, more
than 5 rows/buttons, custom_id > 100 chars, files over the interaction's size limit, and command
registrations over Discord's limits (25 options or choices, name and description lengths, 8000
characters in all: `discord_schema.command_problems`), which discord.py uploads unchecked.
After `defer(thinking=True)`, the first followup edits the "thinking" message (same id), as on
Discord. Responses are JSON with a Content-Type of exactly `application/json`.
"""

from __future__ import annotations

import contextlib
import json
import math
import mimetypes
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from aiohttp import WSMsgType, web

from tests.fakes.base import NO_ANSWER, Canned, FakeServer, Stall, Upload, png_size, read_form
from tests.fakes.discord_schema import command_data, command_problems, error_tree

if TYPE_CHECKING:
    import pytest

TOKEN = "MTEwMDAwMDAwMDAwMDAwMDAwMQ.fake.discord-token"
APP_ID = 1100000000000000001  # the bot user has the application's id, as on Discord
OWNER_ID = 1100000000000000002
GUILD_ID = 1200000000000000001
CHANNEL_ID = 1200000000000000002
USER_ID = 1300000000000000001
# VIEW_CHANNEL, SEND_MESSAGES, EMBED_LINKS, ATTACH_FILES, READ_MESSAGE_HISTORY,
# USE_APPLICATION_COMMANDS: what @everyone usually has.
MEMBER_PERMISSIONS = (1 << 10) | (1 << 11) | (1 << 14) | (1 << 15) | (1 << 16) | (1 << 31)
ADMINISTRATOR = 1 << 3
ATTACHMENT_SIZE_LIMIT = 10 * 1024 * 1024

_EPHEMERAL = 1 << 6
_LOADING = 1 << 7
_DISCORD_EPOCH_MS = 1420070400000


class Call(NamedTuple):
    """One request: route name, JSON body (or payload_json), file parts, URL params, query."""

    route: str
    payload: Any
    files: list[Upload]
    params: dict[str, str]
    query: dict[str, str]
    status: int = 200


class DiscordError(Exception):
    """Answer the current request with a Discord error body {"message", "code"}."""

    def __init__(
        self, status: int, code: int, message: str, errors: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"message": message, "code": code}
        if errors:
            self.body["errors"] = errors


def _form_error(path: str, message: str) -> DiscordError:
    errors = {path: {"_errors": [{"code": "INVALID", "message": message}]}}
    return DiscordError(400, 50035, "Invalid Form Body", errors)


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # Exactly "application/json": discord.py compares the header string (web.json_response
    # appends "; charset=utf-8", and then login() fails with a TypeError).
    return web.Response(
        body=json.dumps(body).encode(),
        status=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def _walk_components(components: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every component, depth first (rows, sections' accessories, containers, labels)."""
    found = []
    for component in components:
        found.append(component)
        children = list(component.get("components") or [])
        for key in ("component", "accessory"):
            if isinstance(component.get(key), dict):
                children.append(component[key])
        found.extend(_walk_components(children))
    return found


@dataclass
class _Interaction:
    payload: dict[str, Any]
    callback: dict[str, Any] | None = None  # the response body the bot posted
    original_id: int | None = None
    loading: bool = False  # deferred with thinking: the first followup edits the original
    message_ids: list[int] = field(default_factory=list)


class FakeDiscord(FakeServer):
    """Fake Discord. `async with FakeDiscord() as dc:` then `point_at(monkeypatch, dc)`."""

    def __init__(
        self,
        token: str = TOKEN,
        *,
        app_id: int = APP_ID,
        owner_id: int = OWNER_ID,
        username: str = "aidraw",
        heartbeat_interval: float = 41.25,
    ) -> None:
        super().__init__()
        self.token = token
        self.app_id = app_id
        self.owner_id = owner_id
        self.heartbeat_interval = heartbeat_interval
        self.bot_user: dict[str, Any] = self.user_payload(app_id, username=username, bot=True)
        self.commands: list[dict[str, Any]] = []
        """Global commands as last PUT (with the ids the fake gave them)."""
        self.guild_commands: dict[int, list[dict[str, Any]]] = {}
        self.messages: dict[int, dict[str, Any]] = {}
        """Every message the bot sent, by id, as it is now (edits applied, deletes removed)."""
        self.channels: dict[int, dict[str, Any]] = {}
        self.member_roles: dict[int, list[int]] = {}
        """A server member's role ids, by user id (what interactions' `member.roles` say)."""
        self.interactions: dict[str, _Interaction] = {}
        """Interactions the fake built or dispatched, by token."""
        self.attachments: dict[int, bytes] = {}
        """Bytes of every attachment (sent by the bot or given as an option), by attachment id."""
        self.heartbeats = 0
        self._sockets: set[web.WebSocketResponse] = set()
        self._seq = 0
        self._last_snowflake = 0
        self._dm_channels: dict[int, int] = {}
        self._nonces: dict[str, int] = {}  # enforce_nonce: message id by nonce

    # --- addresses -----------------------------------------------------------------------------
    @property
    def api_url(self) -> str:
        """discord.http.Route.BASE: http://127.0.0.1:PORT/api/v10"""
        return f"{self.http_root}/api/v10"

    @property
    def gateway_url(self) -> str:
        """DiscordWebSocket.DEFAULT_GATEWAY: ws://127.0.0.1:PORT/gateway"""
        return f"ws://127.0.0.1:{self.port}/gateway"

    def env(self) -> dict[str, str]:
        """Environment for the `aidraw run` entry point in a subprocess."""
        return {
            "AIDRAW_DISCORD_TOKEN": self.token,
            "AIDRAW_DISCORD_API_URL": self.api_url,
            "AIDRAW_DISCORD_GATEWAY_URL": self.gateway_url,
        }

    def _routes(self, app: web.Application) -> None:
        def add(method: str, path: str, name: str, func: Any, auth: bool = True) -> None:
            app.router.add_route(method, f"/api/v10{path}", self._handler(name, func, auth))

        commands = "/applications/{app_id}/commands"
        guild_commands = "/applications/{app_id}/guilds/{guild_id}/commands"
        hook = "/webhooks/{app_id}/{token}"
        hook_message = hook + "/messages/{message_id}"
        message = "/channels/{channel_id}/messages/{message_id}"
        add("GET", "/users/@me", "get_user", self._get_user)
        add("GET", "/oauth2/applications/@me", "application_info", self._app_info)
        add("GET", "/gateway", "get_gateway", self._get_gateway, auth=False)
        add("GET", "/gateway/bot", "get_bot_gateway", self._get_gateway)
        add("GET", commands, "commands_get", self._commands_get)
        add("PUT", commands, "commands_put", self._commands_put)
        add("GET", guild_commands, "commands_get", self._commands_get)
        add("PUT", guild_commands, "commands_put", self._commands_put)
        # Interaction callbacks and webhooks are authorised by the token in the URL.
        callback = "/interactions/{interaction_id}/{token}/callback"
        add("POST", callback, "interaction_callback", self._callback, auth=False)
        add("POST", hook, "followup_send", self._followup_send, auth=False)
        add("GET", hook_message, "webhook_message_get", self._hook_get, auth=False)
        add("PATCH", hook_message, "webhook_message_edit", self._hook_edit, auth=False)
        add("DELETE", hook_message, "webhook_message_delete", self._hook_delete, auth=False)
        add("GET", "/channels/{channel_id}", "channel_get", self._channel_get)
        add("POST", "/channels/{channel_id}/typing", "typing", lambda *_: None)
        add("POST", "/channels/{channel_id}/messages", "message_send", self._message_send)
        add("GET", message, "message_get", self._message_get)
        add("PATCH", message, "message_edit", self._message_edit)
        add("DELETE", message, "message_delete", self._message_delete)
        add("POST", "/users/@me/channels", "dm_create", self._dm_create)
        app.router.add_get("/attachments/{channel_id}/{attachment_id}/{filename}", self._cdn)
        app.router.add_get("/gateway", self._gateway)

    # --- canned errors -------------------------------------------------------------------------
    def rate_limit_next(
        self, route: str, retry_after: float = 0.05, *, is_global: bool = False
    ) -> None:
        """The next call of `route` answers 429 like Discord (discord.py sleeps and retries).

        discord.py needs the JSON body's `retry_after` and a `Via` header (without it a 429 is
        taken for a Cloudflare ban and raised as HTTPException).
        """
        body = {"message": "You are being rate limited.", "retry_after": retry_after}
        body["global"] = is_global
        headers = {
            "Via": "1.1 google",
            "Retry-After": str(max(1, math.ceil(retry_after))),
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": f"{time.time() + retry_after:.3f}",
            "X-RateLimit-Reset-After": f"{retry_after:.3f}",
            "X-RateLimit-Bucket": f"fake-{route}",
            "X-RateLimit-Scope": "global" if is_global else "user",
        }
        if is_global:
            headers["X-RateLimit-Global"] = "true"
        self._fail_next(route, Canned(429, body, headers))

    def fail_next(self, route: str, status: int, code: int, message: str) -> None:
        """The next call of `route` answers this error (e.g. 403, 50013, "Missing Permissions")."""
        self._fail_next(route, Canned(status, {"message": message, "code": code}, {}))

    # --- request plumbing ----------------------------------------------------------------------
    def _handler(self, name: str, func: Any, auth: bool) -> Any:
        async def handle(request: web.Request) -> web.Response:
            fields, uploads = await read_form(request)
            payload: Any = None
            if "payload_json" in fields:
                payload = json.loads(fields["payload_json"])
            elif request.content_type == "application/json" and request.can_read_body:
                payload = await request.json()
            params = dict(request.match_info)
            query = dict(request.query)

            def record(status: int) -> None:
                self._record(Call(name, payload, uploads, params, query, status))

            if auth and request.headers.get("Authorization") != f"Bot {self.token}":
                record(401)
                return _json({"message": "401: Unauthorized", "code": 0}, 401)
            canned = self._take_canned(name)
            if isinstance(canned, Canned):
                record(canned.status)
                return _json(canned.body, canned.status, canned.headers)
            if isinstance(canned, Stall) and canned.then != "answer":
                record(NO_ANSWER)
                if canned.then == "drop_done":
                    with contextlib.suppress(DiscordError):  # failed or not, nobody is told
                        func(payload, uploads, params, query)
                    self._notify()
                await self._stall(request, canned.seconds)
                return await self._drop(request)
            if isinstance(canned, Stall):
                await self._stall(request, canned.seconds)
            try:
                result = func(payload, uploads, params, query)
            except DiscordError as exc:
                record(exc.status)
                return _json(exc.body, exc.status)
            record(200 if result is not None else 204)
            return web.Response(status=204) if result is None else _json(result)

        return handle

    async def _cdn(self, request: web.Request) -> web.Response:
        """An attachment's bytes; each download is recorded as a "cdn_download" call."""
        params = dict(request.match_info)
        data = self.attachments.get(int(request.match_info["attachment_id"]))
        self._record(Call("cdn_download", None, [], params, {}, 404 if data is None else 200))
        if data is None:
            return web.Response(status=404)
        mime = mimetypes.guess_type(request.match_info["filename"])[0]
        return web.Response(body=data, content_type=mime or "application/octet-stream")

    # --- gateway -------------------------------------------------------------------------------
    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        interval_ms = int(self.heartbeat_interval * 1000)
        await ws.send_json({"op": 10, "d": {"heartbeat_interval": interval_ms}})
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                frame = json.loads(msg.data)
                op, data = frame.get("op"), frame.get("d")
                if op == 1:
                    self.heartbeats += 1
                    await ws.send_json({"op": 11})
                    self._notify()
                elif op == 2:
                    self._record(Call("gateway_identify", data, [], {}, {}))
                    await self._send(ws, "READY", self._ready_payload())
                    self._sockets.add(ws)
                    self._notify()
                elif op == 6:
                    self._record(Call("gateway_resume", data, [], {}, {}))
                    await self._send(ws, "RESUMED", {})
                    self._sockets.add(ws)
                    self._notify()
        finally:
            self._sockets.discard(ws)
        return ws

    def _ready_payload(self) -> dict[str, Any]:
        return {
            "v": 10,
            "user": {**self.bot_user, "verified": True, "mfa_enabled": False, "flags": 0},
            "guilds": [],
            "session_id": "fake-session",
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.app_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "geo_ordered_rtc_regions": [],
        }

    async def _send(self, ws: web.WebSocketResponse, event: str, payload: Any) -> None:
        self._seq += 1
        await ws.send_json({"op": 0, "t": event, "s": self._seq, "d": payload})

    @property
    def gateway_ready(self) -> bool:
        """Whether a client has identified on the gateway (dispatch waits for this)."""
        return bool(self._sockets)

    async def wait_ready(
        self,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 - the deadline for the whole wait
    ) -> None:
        """Wait until a client has identified on the gateway (its commands are synced by then,
        if it syncs in setup_hook)."""
        await self.wait_until(lambda: bool(self._sockets), timeout=timeout)

    async def dispatch(self, event: str, payload: dict[str, Any]) -> None:
        """Send a gateway event to the identified client(s), waiting for one to identify."""
        await self.wait_ready()
        if event == "INTERACTION_CREATE":
            self._register(payload)
        for ws in list(self._sockets):
            await self._send(ws, event, payload)

    async def _before_close(self) -> None:
        for ws in list(self._sockets):
            with contextlib.suppress(ConnectionError):
                await ws.close(code=1001)

    # --- ids and payloads ----------------------------------------------------------------------
    def snowflake(self) -> int:
        """A new, increasing snowflake."""
        value = (int(time.time() * 1000) - _DISCORD_EPOCH_MS) << 22
        self._last_snowflake = max(value, self._last_snowflake + 1)
        return self._last_snowflake

    @staticmethod
    def user_payload(
        user_id: int, *, username: str | None = None, bot: bool = False
    ) -> dict[str, Any]:
        """A Discord user object."""
        name = username or f"user{user_id}"
        return {
            "id": str(user_id),
            "username": name,
            "discriminator": "0",
            "global_name": name,
            "avatar": None,
            "bot": bot,
            "public_flags": 0,
        }

    def _member(self, user_id: int, permissions: int) -> dict[str, Any]:
        return {
            "user": self.user_payload(user_id),
            "roles": [str(r) for r in self.member_roles.get(user_id, [])],
            "joined_at": _now_iso(),
            "nick": None,
            "avatar": None,
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "permissions": str(permissions),
            "communication_disabled_until": None,
        }

    def _channel(
        self, channel_id: int | None, guild_id: int | None, user_id: int, nsfw: bool | None
    ) -> dict[str, Any]:
        """The channel object (kept between interactions; `nsfw=None` keeps its NSFW flag)."""
        known = self.channels.get(channel_id or 0)
        if known is not None and (nsfw is None or known.get("nsfw", False) == nsfw):
            return known
        if guild_id is None:
            channel_id = channel_id or self._dm_channel_id(user_id)
            channel = {
                "id": str(channel_id),
                "type": 1,
                "recipients": [self.user_payload(user_id)],
                "last_message_id": None,
                "flags": 0,
            }
        else:
            channel_id = channel_id or CHANNEL_ID
            channel = {
                "id": str(channel_id),
                "type": 0,
                "guild_id": str(guild_id),
                "name": f"channel-{channel_id}",
                "position": 0,
                "permission_overwrites": [],
                "nsfw": bool(nsfw),
                "topic": None,
                "rate_limit_per_user": 0,
                "parent_id": None,
                "last_message_id": None,
                "flags": 0,
            }
        self.channels[channel_id] = channel
        return channel

    def _dm_channel_id(self, user_id: int) -> int:
        if user_id not in self._dm_channels:
            self._dm_channels[user_id] = self.snowflake()
        return self._dm_channels[user_id]

    def _interaction(
        self,
        type_: int,
        data: dict[str, Any],
        *,
        user_id: int,
        guild_id: int | None,
        channel_id: int | None,
        locale: str,
        permissions: int,
        nsfw: bool | None,
    ) -> dict[str, Any]:
        interaction_id = self.snowflake()
        channel = self._channel(channel_id, guild_id, user_id, nsfw)
        payload: dict[str, Any] = {
            "id": str(interaction_id),
            "application_id": str(self.app_id),
            "type": type_,
            "data": data,
            "token": f"fake-interaction-token-{interaction_id}",
            "version": 1,
            "locale": locale,
            "app_permissions": str(MEMBER_PERMISSIONS),
            "attachment_size_limit": ATTACHMENT_SIZE_LIMIT,
            "entitlements": [],
            "channel": channel,
            "channel_id": channel["id"],
        }
        if guild_id is None:
            payload.update(
                user=self.user_payload(user_id),
                context=1,
                authorizing_integration_owners={"1": str(user_id)},
            )
        else:
            payload.update(
                guild_id=str(guild_id),
                guild={"id": str(guild_id), "locale": "en-US", "features": []},
                guild_locale="en-US",
                member=self._member(user_id, permissions),
                context=0,
                authorizing_integration_owners={"0": str(guild_id)},
            )
        self._register(payload)
        return payload

    def _register(self, payload: dict[str, Any]) -> None:
        if payload["token"] not in self.interactions:
            self.interactions[payload["token"]] = _Interaction(payload)

    # --- interaction builders ------------------------------------------------------------------
    def slash_payload(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        user_id: int = USER_ID,
        guild_id: int | None = GUILD_ID,
        channel_id: int | None = None,
        locale: str = "en-US",
        permissions: int = MEMBER_PERMISSIONS,
        nsfw: bool | None = None,
        validate: bool = True,
    ) -> dict[str, Any]:
        """An INTERACTION_CREATE payload for `/name` ("model swap" for a subcommand).

        Options are checked against the uploaded schema like Discord does (ValueError), unless
        validate=False. Attachment options take bytes or (filename, bytes); user options an id.
        guild_id=None makes it a DM; nsfw sets the channel's flag (None: as it was, else False).
        """
        data = self._command_data(name, options or {}, guild_id, validate=validate, focused=None)
        return self._interaction(
            2,
            data,
            user_id=user_id,
            guild_id=guild_id,
            channel_id=channel_id,
            locale=locale,
            permissions=permissions,
            nsfw=nsfw,
        )

    def autocomplete_payload(
        self,
        name: str,
        options: dict[str, Any],
        focused: str,
        *,
        user_id: int = USER_ID,
        guild_id: int | None = GUILD_ID,
        locale: str = "en-US",
    ) -> dict[str, Any]:
        """An APPLICATION_COMMAND_AUTOCOMPLETE payload; `focused` names the option being typed."""
        data = self._command_data(name, options, guild_id, validate=True, focused=focused)
        return self._interaction(
            4,
            data,
            user_id=user_id,
            guild_id=guild_id,
            channel_id=None,
            locale=locale,
            permissions=MEMBER_PERMISSIONS,
            nsfw=None,
        )

    def _command_data(
        self,
        name: str,
        options: dict[str, Any],
        guild_id: int | None,
        *,
        validate: bool,
        focused: str | None,
    ) -> dict[str, Any]:
        commands = [*self.guild_commands.get(guild_id or 0, []), *self.commands]
        return command_data(
            commands,
            name,
            options,
            in_dm=guild_id is None,
            validate=validate,
            focused=focused,
            resolve=self._resolve_option,
        )

    def _resolve_option(self, kind: int, value: Any, resolved: dict[str, Any]) -> str:
        """Value of a user (6) or attachment (11) option, adding its object to `resolved`.
        An attachment is bytes, (filename, bytes), or (filename, bytes, size): the size that
        Discord announces, for files too big to bother sending through the fake."""
        if kind == 11:
            filename, data, *size = value if isinstance(value, tuple) else ("image.png", value)
            attachment = self._store_attachment(CHANNEL_ID, Upload("", filename, None, data), {})
            if size:
                attachment["size"] = size[0]
            resolved.setdefault("attachments", {})[attachment["id"]] = attachment
            return str(attachment["id"])
        resolved.setdefault("users", {})[str(value)] = self.user_payload(int(value))
        return str(value)

    def component_payload(
        self,
        message: dict[str, Any],
        custom_id: str,
        *,
        values: list[str] | None = None,
        user_id: int = USER_ID,
        locale: str = "en-US",
        permissions: int = MEMBER_PERMISSIONS,
    ) -> dict[str, Any]:
        """A click on (or, with `values`, a select in) a message the fake returned."""
        message = self.messages[int(message["id"])]
        component = next(
            (
                c
                for c in _walk_components(message.get("components") or [])
                if c.get("custom_id") == custom_id
            ),
            None,
        )
        if component is None:
            raise ValueError(f"message {message['id']} has no component {custom_id!r}")
        if component.get("disabled"):
            raise ValueError(f"component {custom_id!r} is disabled: Discord would not send it")
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": component["type"]}
        if values is not None:
            offered = {o["value"] for o in component.get("options") or []}
            if component["type"] == 3 and not set(values) <= offered:
                raise ValueError(f"select {custom_id!r} offers {sorted(offered)}, not {values}")
            data["values"] = values
        guild_id = message.get("guild_id")
        payload = self._interaction(
            3,
            data,
            user_id=user_id,
            guild_id=int(guild_id) if guild_id else None,
            channel_id=int(message["channel_id"]),
            locale=locale,
            permissions=permissions,
            nsfw=None,
        )
        payload["message"] = json.loads(json.dumps(message))  # as it was when clicked
        return payload

    def modal_submit_payload(
        self, opened_by: dict[str, Any], values: dict[str, str]
    ) -> dict[str, Any]:
        """Submit the modal the bot opened in answer to interaction `opened_by` (same user).

        `values` maps text inputs' custom_ids to what the user typed; others keep their default.
        """
        callback = self.interactions[opened_by["token"]].callback
        if not callback or callback.get("type") != 9:
            raise ValueError("the bot did not answer this interaction with a modal")
        modal = callback["data"]

        def submitted(components: list[dict[str, Any]]) -> list[dict[str, Any]]:
            out = []
            for c in components:
                if c["type"] == 1:
                    out.append({"type": 1, "components": submitted(c["components"])})
                elif c["type"] == 18:
                    out.append({"type": 18, "component": submitted([c["component"]])[0]})
                elif c["type"] == 4:
                    value = values.get(c["custom_id"], c.get("value") or "")
                    out.append({"type": 4, "custom_id": c["custom_id"], "value": value})
            return out

        source = opened_by
        user = source.get("member", {}).get("user") or source["user"]
        guild_id = source.get("guild_id")
        permissions = int(source.get("member", {}).get("permissions") or MEMBER_PERMISSIONS)
        data = {"custom_id": modal["custom_id"], "components": submitted(modal["components"])}
        payload = self._interaction(
            5,
            data,
            user_id=int(user["id"]),
            guild_id=int(guild_id) if guild_id else None,
            channel_id=int(source["channel_id"]),
            locale=source["locale"],
            permissions=permissions,
            nsfw=None,
        )
        if "message" in source:
            payload["message"] = source["message"]
        return payload

    async def slash(
        self, name: str, options: dict[str, Any] | None = None, **kw: Any
    ) -> dict[str, Any]:
        """slash_payload(...) dispatched once a client is on the gateway; returns the payload."""
        await self.wait_ready()
        payload = self.slash_payload(name, options, **kw)
        await self.dispatch("INTERACTION_CREATE", payload)
        return payload

    async def click(self, message: dict[str, Any], custom_id: str, **kw: Any) -> dict[str, Any]:
        """component_payload(...) dispatched on the gateway; returns the payload."""
        await self.wait_ready()
        payload = self.component_payload(message, custom_id, **kw)
        await self.dispatch("INTERACTION_CREATE", payload)
        return payload

    async def submit_modal(
        self, opened_by: dict[str, Any], values: dict[str, str]
    ) -> dict[str, Any]:
        """modal_submit_payload(...) dispatched on the gateway; returns the payload."""
        await self.wait_ready()
        payload = self.modal_submit_payload(opened_by, values)
        await self.dispatch("INTERACTION_CREATE", payload)
        return payload

    # --- looking at what the bot did -----------------------------------------------------------
    @staticmethod
    def of(interaction: dict[str, Any]) -> Callable[[Call], bool]:
        """A wait_for predicate: calls made for this interaction (callback, followups, edits)."""
        return lambda call: call.params.get("token") == interaction["token"]

    def callback(self, interaction: dict[str, Any]) -> dict[str, Any] | None:
        """The bot's response to an interaction ({"type": 4|5|6|7|8|9, "data": ...}) or None."""
        return self.interactions[interaction["token"]].callback

    def original(self, interaction: dict[str, Any]) -> dict[str, Any] | None:
        """The interaction's original response message as it is now, or None."""
        original_id = self.interactions[interaction["token"]].original_id
        return None if original_id is None else self.messages.get(original_id)

    def followups(self, interaction: dict[str, Any]) -> list[dict[str, Any]]:
        """Messages sent through the interaction's webhook (a first followup after a thinking
        defer is the original message itself), as they are now."""
        ids = self.interactions[interaction["token"]].message_ids
        return [self.messages[i] for i in ids if i in self.messages]

    def attachment_data(self, attachment: dict[str, Any]) -> bytes:
        """The bytes behind an attachment object of a message."""
        return self.attachments[int(attachment["id"])]

    # --- messages ------------------------------------------------------------------------------
    def _store_attachment(
        self, channel_id: int, upload: Upload, meta: dict[str, Any]
    ) -> dict[str, Any]:
        attachment_id = self.snowflake()
        filename = meta.get("filename") or upload.filename or "file"
        url = f"{self.http_root}/attachments/{channel_id}/{attachment_id}/{filename}"
        attachment: dict[str, Any] = {
            "id": str(attachment_id),
            "filename": filename,
            "size": len(upload.data),
            "url": url,
            "proxy_url": url,
            "content_type": mimetypes.guess_type(filename)[0] or upload.content_type,
        }
        if size := png_size(upload.data):
            attachment["width"], attachment["height"] = size
        if meta.get("description"):
            attachment["description"] = meta["description"]
        self.attachments[attachment_id] = upload.data
        return attachment

    def _apply(
        self,
        message: dict[str, Any],
        body: dict[str, Any],
        uploads: list[Upload],
        size_limit: int,
    ) -> None:
        """Apply a create/edit body (content, embeds, components, attachments) to `message`."""
        for key in ("content", "embeds", "components"):
            if key in body:
                empty: Any = "" if key == "content" else []
                message[key] = empty if body[key] is None else body[key]
        files = {u.field: u for u in uploads}
        if "attachments" in body or uploads:
            kept = {a["id"]: a for a in message["attachments"]}
            metas = body.get("attachments")
            if metas is None:  # files without an attachments list: all new, appended
                metas = [*kept.values(), *({"id": i} for i in range(len(uploads)))]
            attachments = []
            for meta in metas:
                if str(meta["id"]) in kept:
                    attachments.append(kept[str(meta["id"])])
                    continue
                upload = files.get(f"files[{meta['id']}]")
                if upload is None:
                    raise _form_error("attachments", f"no file part files[{meta['id']}]")
                if len(upload.data) > size_limit:
                    raise DiscordError(413, 40005, "Request entity too large")
                attachments.append(self._store_attachment(int(message["channel_id"]), upload, meta))
            message["attachments"] = attachments
        self._check_message(message)

    @staticmethod
    def _check_message(message: dict[str, Any]) -> None:
        if len(message["content"]) > 2000:
            raise _form_error("content", "Must be 2000 or fewer in length.")
        if len(message["attachments"]) > 10:
            raise _form_error("attachments", "Must be 10 or fewer in length.")
        if len(message["embeds"]) > 10:
            raise _form_error("embeds", "Must be 10 or fewer in length.")
        rows = message["components"]
        if not message["flags"] & (1 << 15):  # classic components: rows of up to 5 items
            if len(rows) > 5:
                raise _form_error("components", "Must be 5 or fewer in length.")
            for i, row in enumerate(rows):
                if len(row.get("components") or []) > 5:
                    raise _form_error(f"components.{i}.components", "Must be 5 or fewer.")
        for component in _walk_components(rows):
            if len(component.get("custom_id") or "") > 100:
                raise _form_error("components.custom_id", "Must be 100 or fewer in length.")
            if len(component.get("label") or "") > 80:
                raise _form_error("components.label", "Must be 80 or fewer in length.")
        empty = not (message["content"] or message["embeds"] or message["attachments"] or rows)
        if empty and not message["flags"] & _LOADING:
            raise DiscordError(400, 50006, "Cannot send an empty message")

    def _new_message(
        self,
        body: dict[str, Any],
        uploads: list[Upload],
        *,
        channel_id: int,
        guild_id: int | None,
        flags: int,
        interaction: _Interaction | None,
    ) -> dict[str, Any]:
        message_id = self.snowflake()
        message: dict[str, Any] = {
            "id": str(message_id),
            "channel_id": str(channel_id),
            "author": self.bot_user,
            "content": "",
            "timestamp": _now_iso(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "components": [],
            "pinned": False,
            "type": 0,
            "flags": flags | ((body.get("flags") or 0) & (1 << 15)),
        }
        if guild_id is not None:
            message["guild_id"] = str(guild_id)
        limit = ATTACHMENT_SIZE_LIMIT
        if interaction is not None:
            source = interaction.payload
            user = source.get("member", {}).get("user") or source.get("user")
            message.update(
                type=20 if source["type"] == 2 else 0,
                webhook_id=str(self.app_id),
                application_id=str(self.app_id),
                interaction_metadata={
                    "id": source["id"],
                    "type": source["type"],
                    "user": user,
                    "authorizing_integration_owners": source["authorizing_integration_owners"],
                },
            )
            limit = source["attachment_size_limit"]
        self._apply(message, body, uploads, limit)
        self.messages[message_id] = message
        return message

    def _edit_message(
        self,
        message: dict[str, Any],
        body: dict[str, Any] | None,
        uploads: list[Upload],
        *,
        clear_flags: int = 0,
    ) -> dict[str, Any]:
        edited = json.loads(json.dumps(message))  # a failed edit leaves the message untouched
        edited["flags"] &= ~clear_flags
        self._apply(edited, body or {}, uploads, ATTACHMENT_SIZE_LIMIT)
        edited["edited_timestamp"] = _now_iso()
        message.clear()
        message.update(edited)
        return message

    # --- REST handlers -------------------------------------------------------------------------
    def _get_user(self, *_: Any) -> dict[str, Any]:
        return {**self.bot_user, "verified": True, "mfa_enabled": False, "flags": 0}

    def _app_info(self, *_: Any) -> dict[str, Any]:
        return {
            "id": str(self.app_id),
            "name": self.bot_user["username"],
            "description": "",
            "icon": None,
            "bot_public": True,
            "bot_require_code_grant": False,
            "owner": self.user_payload(self.owner_id),
            "verify_key": "0" * 64,
            "flags": 0,
            "interactions_endpoint_url": None,
            "bot": self.bot_user,
        }

    def _get_gateway(self, *_: Any) -> dict[str, Any]:
        return {
            "url": f"ws://127.0.0.1:{self.port}",
            "shards": 1,
            "session_start_limit": {
                "total": 1000,
                "remaining": 1000,
                "reset_after": 0,
                "max_concurrency": 1,
            },
        }

    def _commands_get(self, payload: Any, uploads: Any, params: dict[str, str], q: Any) -> Any:
        if "guild_id" in params:
            return self.guild_commands.get(int(params["guild_id"]), [])
        return self.commands

    def _commands_put(self, payload: Any, uploads: Any, params: dict[str, str], q: Any) -> Any:
        commands = []
        for command in payload:
            for key in ("name", "description"):
                if command.get("type", 1) == 1 and not command.get(key):
                    raise _form_error(key, "This field is required")
        problems = command_problems(payload)
        if problems:
            raise DiscordError(400, 50035, "Invalid Form Body", error_tree(problems))
        for command in payload:
            stored = {
                "type": 1,
                "options": [],
                "default_member_permissions": None,
                "nsfw": False,
                **command,
                "id": str(self.snowflake()),
                "application_id": str(self.app_id),
                "version": str(self.snowflake()),
            }
            if "guild_id" in params:
                stored["guild_id"] = params["guild_id"]
            commands.append(stored)
        if "guild_id" in params:
            self.guild_commands[int(params["guild_id"])] = commands
        else:
            self.commands = commands
        return commands

    def _interaction_for(self, params: dict[str, str]) -> _Interaction:
        interaction = self.interactions.get(params["token"])
        if interaction is None or params.get("app_id", str(self.app_id)) != str(self.app_id):
            raise DiscordError(404, 10015, "Unknown Webhook")
        return interaction

    def _callback(
        self, payload: Any, uploads: list[Upload], params: dict[str, str], query: Any
    ) -> Any:
        interaction = self.interactions.get(params["token"])
        if interaction is None or interaction.payload["id"] != params["interaction_id"]:
            raise DiscordError(404, 10062, "Unknown interaction")
        if interaction.callback is not None:
            raise DiscordError(400, 40060, "Interaction has already been acknowledged.")
        source = interaction.payload
        kind = payload["type"]
        data = payload.get("data") or {}
        allowed = {2: {4, 5, 9}, 3: {4, 5, 6, 7, 9}, 4: {8}, 5: {4, 5, 6, 7}}[source["type"]]
        if kind not in allowed:
            raise _form_error("type", f"response type {kind} is invalid for this interaction")
        guild_id = int(source["guild_id"]) if source.get("guild_id") else None
        resource: dict[str, Any] = {"type": kind}
        flags = 0
        if kind in (4, 5):
            flags = (data.get("flags") or 0) & _EPHEMERAL
            body = {} if kind == 5 else data
            message = self._new_message(
                body,
                uploads,
                channel_id=int(source["channel_id"]),
                guild_id=guild_id,
                flags=flags | (_LOADING if kind == 5 else 0),
                interaction=interaction,
            )
            interaction.original_id = int(message["id"])
            interaction.loading = kind == 5
            resource["message"] = message
        elif kind in (6, 7):
            if "message" not in source:
                raise _form_error("type", "this interaction has no message to update")
            message = self.messages[int(source["message"]["id"])]
            interaction.original_id = int(message["id"])
            flags = message["flags"] & _EPHEMERAL
            if kind == 7:
                resource["message"] = self._edit_message(message, data, uploads)
        interaction.callback = payload
        if query.get("with_response") not in ("1", "true", "True"):
            return None
        summary: dict[str, Any] = {"id": source["id"], "type": source["type"]}
        if interaction.original_id is not None and kind != 6:
            summary["response_message_id"] = str(interaction.original_id)
            summary["response_message_loading"] = kind == 5
            summary["response_message_ephemeral"] = bool(flags)
        return {"interaction": summary, "resource": resource}

    def _followup_send(
        self, payload: Any, uploads: list[Upload], params: dict[str, str], query: Any
    ) -> Any:
        interaction = self._interaction_for(params)
        if interaction.callback is None:
            raise DiscordError(404, 10015, "Unknown Webhook")
        if interaction.loading:
            # The first followup after a thinking defer replaces the "thinking" message.
            message = self.messages[interaction.original_id or 0]
            self._edit_message(message, payload, uploads, clear_flags=_LOADING)
            interaction.loading = False
        else:
            source = interaction.payload
            message = self._new_message(
                payload,
                uploads,
                channel_id=int(source["channel_id"]),
                guild_id=int(source["guild_id"]) if source.get("guild_id") else None,
                flags=(payload.get("flags") or 0) & _EPHEMERAL,
                interaction=interaction,
            )
        interaction.message_ids.append(int(message["id"]))
        return message if query.get("wait") in ("1", "true", "True") else None

    def _hook_message(self, params: dict[str, str]) -> tuple[_Interaction, dict[str, Any]]:
        interaction = self._interaction_for(params)
        raw = params["message_id"]
        if raw == "@original":
            message_id = interaction.original_id
        elif int(raw) in interaction.message_ids or int(raw) == interaction.original_id:
            message_id = int(raw)
        else:
            message_id = None
        if message_id is None or message_id not in self.messages:
            raise DiscordError(404, 10008, "Unknown Message")
        return interaction, self.messages[message_id]

    def _hook_get(self, payload: Any, uploads: Any, params: dict[str, str], q: Any) -> Any:
        return self._hook_message(params)[1]

    def _hook_edit(
        self, payload: Any, uploads: list[Upload], params: dict[str, str], q: Any
    ) -> Any:
        interaction, message = self._hook_message(params)
        edited = self._edit_message(message, payload, uploads, clear_flags=_LOADING)
        if int(message["id"]) == interaction.original_id:
            interaction.loading = False
        return edited

    def _hook_delete(self, payload: Any, uploads: Any, params: dict[str, str], q: Any) -> None:
        _, message = self._hook_message(params)
        del self.messages[int(message["id"])]

    def _channel_get(self, payload: Any, uploads: Any, params: dict[str, str], q: Any) -> Any:
        channel = self.channels.get(int(params["channel_id"]))
        if channel is None:
            raise DiscordError(404, 10003, "Unknown Channel")
        return channel

    def _dm_create(self, payload: Any, uploads: Any, params: Any, q: Any) -> Any:
        user_id = int(payload["recipient_id"])
        return self._channel(None, None, user_id, None)

    def _message_send(
        self, payload: Any, uploads: list[Upload], params: dict[str, str], q: Any
    ) -> Any:
        channel_id = int(params["channel_id"])
        channel = self.channels.get(channel_id) or self._channel(channel_id, GUILD_ID, 0, None)
        guild_id = int(channel["guild_id"]) if channel.get("guild_id") else None
        body = payload or {}
        nonce = str(body.get("nonce") or "")
        if nonce and body.get("enforce_nonce") and nonce in self._nonces:
            # Discord: a second message with the same nonce returns the first (for a few minutes).
            known = self.messages.get(self._nonces[nonce])
            if known is not None:
                return known
        message = self._new_message(
            body, uploads, channel_id=channel_id, guild_id=guild_id, flags=0, interaction=None
        )
        if nonce:
            message["nonce"] = nonce
            self._nonces[nonce] = int(message["id"])
        if reference := body.get("message_reference"):
            message["message_reference"] = reference
            message["type"] = 19
        return message

    def _channel_message(self, params: dict[str, str]) -> dict[str, Any]:
        message = self.messages.get(int(params["message_id"]))
        if message is None or message["channel_id"] != params["channel_id"]:
            raise DiscordError(404, 10008, "Unknown Message")
        return message

    def _message_get(self, payload: Any, uploads: Any, params: dict[str, str], q: Any) -> Any:
        return self._channel_message(params)

    def _message_edit(
        self, payload: Any, uploads: list[Upload], params: dict[str, str], q: Any
    ) -> Any:
        return self._edit_message(self._channel_message(params), payload, uploads)

    def _message_delete(self, payload: Any, uploads: Any, params: dict[str, str], q: Any) -> None:
        del self.messages[int(self._channel_message(params)["id"])]


def point_at(monkeypatch: pytest.MonkeyPatch, fake: FakeDiscord) -> None:
    """Point discord.py's REST client, interaction webhooks and gateway at `fake` (restored
    by monkeypatch). Both attributes are private: discord.py is pinned to 2.7.*."""
    import discord
    import yarl

    monkeypatch.setattr(discord.http.Route, "BASE", fake.api_url)
    monkeypatch.setattr(
        discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(fake.gateway_url)
    )
