"""The local web chat's aiohttp app: its access guard, routes and server. The chat is one page
(bot/web/static/) that answers like the bots, for trying prompts, settings and models before a
Discord or Telegram bot exists. `run_web` is the launcher's entry; the chat's state and the JSON
it sends live in bot/web/chat.py.

Actions go over HTTP (JSON), job progress over one WebSocket per page. There is one user,
"web:local". It listens on 127.0.0.1 unless [web] host says otherwise, which needs the access
token AIDRAW_WEB_TOKEN. Every body is a little JSON, but a drawing's, which may carry a picture
to draw from and a mask over it (base64, up to [limits] max_image_bytes each): its size is
checked before it is read.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from yarl import URL

from bot.addons import addons_text, hypernet_choice
from bot.api.access import AUTH_ENV as API_AUTH_ENV
from bot.api.access import TOKEN_ENV as API_TOKEN_ENV
from bot.api.access import Credentials, is_loopback
from bot.api.app import add_api, api_guard, is_api_path
from bot.messages import LOCALES, error_text, text
from bot.pictures import check_announced
from bot.prefs import UserSettingsStore
from bot.settings import Settings, SettingsError, env_token
from bot.web.chat import USER, WebChat, WebReply, addons_view, apology, browser_locale
from bot.web.metrics import add_metrics
from engine.engine import Engine
from engine.errors import EngineClosed, GenerationFailed, InvalidRequest, JobCancelled, QueueFull
from engine.images import too_big
from engine.request import Limits

log = logging.getLogger(__name__)

TOKEN_ENV = "AIDRAW_WEB_TOKEN"
COOKIE = "aidraw_web_token"
STATIC = Path(__file__).with_name("static")
_STATUS = {InvalidRequest: 400, JobCancelled: 409, QueueFull: 429, EngineClosed: 503}
_NUMBER = re.compile(r"[1-9][0-9]*")
_MAX_NUMBER = 2**63 - 1  # job ids are SQLite INTEGERs; a bigger one cannot even be looked up

CHAT = web.AppKey("chat", WebChat)
TEXT_BODY = web.AppKey("text_body", int)  # the most any JSON body without a picture may be
DRAW_BODY = web.AppKey("draw_body", int)  # the most a drawing's may be, its picture included
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The access token (if set), else a loopback Host; same-origin writes only. The A1111
    API's paths have their own guard (bot/api: its credentials, A1111's error shape)."""
    if is_api_path(request.path):
        return await handler(request)
    chat = request.app[CHAT]
    if chat.token is None:
        # Another site's page may reach 127.0.0.1 through a DNS name it controls (rebinding).
        if URL(f"http://{request.host}").host not in _local_names(chat.settings.web.host):
            raise web.HTTPForbidden(text="unknown Host")
    else:
        given = request.query.get("token") if request.path == "/" else None
        if given is not None and _same(given, chat.token):
            # The token moves into a cookie and out of the address bar (and browser history).
            response = web.Response(status=303, headers={"Location": "/"})
            response.set_cookie(COOKIE, chat.token, httponly=True, samesite="Strict")
            return response
        if not _same(request.cookies.get(COOKIE, ""), chat.token):
            refusal = "\n".join(text("web_token_required", locale) for locale in LOCALES)
            raise web.HTTPForbidden(text=refusal)
    origin = request.headers.get("Origin")
    if origin is not None and URL(origin).authority != URL(f"http://{request.host}").authority:
        raise web.HTTPForbidden(text="cross-origin request refused")
    return await handler(request)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors as chat messages: {"error": text} in the user's language."""
    if is_api_path(request.path):
        return await handler(request)
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as e:
        said = apology(e)
        status = next((code for kind, code in _STATUS.items() if isinstance(e, kind)), 500)
        locale = request.app[CHAT].locale(request)
        return web.json_response({"error": said[locale]}, status=status)


def _local_names(host: str) -> set[str | None]:
    return {"127.0.0.1", "::1", "localhost", host}


def _same(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode(), token.encode())


async def _body(request: web.Request, raw: bytes | None = None) -> dict[str, Any]:
    # JSON only: a cross-site <form> cannot send it without a CORS preflight we never allow.
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(text="send application/json")
    try:
        body = json.loads(raw) if raw is not None else await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="not JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="send a JSON object")
    return body


class _TooBig(Exception):
    """A drawing's body over its cap: `size`, the bytes it has (or says it has) at least."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


async def _read_capped(request: web.Request, cap: int) -> bytes:
    """The whole body, or _TooBig as soon as it says or shows it is over `cap` bytes (what is
    over is never read: the app's client_max_size is for the other routes' little bodies)."""
    if request.content_length is not None and request.content_length > cap:
        raise _TooBig(request.content_length)
    data = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        data += chunk
        if len(data) > cap:
            raise _TooBig(len(data))
    return bytes(data)


def _picture(value: Any, name: str = "image") -> bytes | None:
    """The draw body's "image" (or "mask"): a data URL or plain base64 (None: none)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise web.HTTPBadRequest(text=f"{name} must be a base64 string or data URL")
    if value.startswith("data:"):
        header, _, value = value.partition(",")
        if not header.endswith(";base64"):
            raise web.HTTPBadRequest(text=f"{name} must be a base64 data URL")
        check_announced(None, header.removeprefix("data:").removesuffix(";base64"), _TYPE_ONLY)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise web.HTTPBadRequest(text=f"{name} is not base64") from None


_TYPE_ONLY = Limits(max_image_bytes=2**62)  # the data URL's type is judged; its size later


def _number(value: str) -> int | None:
    """A job or image number as the page writes it: 1, 2, … up to SQLite's largest INTEGER.
    Not int(): it also reads "-1", "01", "1_0", " 1" and "١", each of which would name
    another (or, as a list index, the last) job or image."""
    if _NUMBER.fullmatch(value) is None or int(value) > _MAX_NUMBER:
        return None
    return int(value)


def _job_id(request: web.Request) -> int:
    value = request.match_info["job"]
    job_id = _number(value)
    if job_id is None:
        shown = value if len(value) <= 30 else value[:29] + "…"
        raise InvalidRequest(f"There is no job #{shown}.", field="job")
    return job_id


async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def get_state(request: web.Request) -> web.Response:
    chat = request.app[CHAT]
    return web.json_response(chat.state(chat.locale(request)))


async def post_draw(request: web.Request) -> web.Response:
    """{"text": chat text, "image"?: a picture to draw from, "mask"?: where to redraw it
    (white; inpainting), each base64 or a data URL}. "/upscale [SCALE] [UPSCALER]" as the
    text upscales the picture without drawing."""
    chat = request.app[CHAT]
    locale = chat.locale(request)
    if request.content_type != "application/json":  # before reading anything
        raise web.HTTPUnsupportedMediaType(text="send application/json")
    limits = chat.settings.limits
    try:
        raw = await _read_capped(request, request.app[DRAW_BODY])
    except _TooBig as e:
        # Most of a body this big is its picture: say what the picture is at least.
        size = max((e.size - request.app[TEXT_BODY]) * 3 // 4, limits.max_image_bytes + 1)
        return web.json_response({"error": error_text(too_big(size, limits), locale)}, status=413)
    body = await _body(request, raw)
    chat_text = body.get("text")
    if not isinstance(chat_text, str):
        raise web.HTTPBadRequest(text="text must be a string")
    picture, mask = _picture(body.get("image")), _picture(body.get("mask"), "mask")
    job, notes = await chat.draw(chat_text, locale, picture, mask)
    return web.json_response({"job": chat.snapshot(job, locale), "notes": notes})


async def post_cancel(request: web.Request) -> web.Response:
    chat = request.app[CHAT]
    cancelled = chat.engine.cancel(_job_id(request), by=USER)
    return web.json_response({"cancelled": cancelled})


async def post_reroll(request: web.Request) -> web.Response:
    chat = request.app[CHAT]
    job = chat.reroll(_job_id(request))
    return web.json_response({"job": chat.snapshot(job, chat.locale(request))})


async def post_variations(request: web.Request) -> web.Response:
    chat = request.app[CHAT]
    body = await _body(request)
    image, strength = body.get("image", 1), body.get("strength", "subtle")
    if not isinstance(image, int) or isinstance(image, bool):  # JSON true is no image 1
        raise InvalidRequest("image must be a number, e.g. 1.", field="image")
    if strength not in ("subtle", "strong"):
        raise InvalidRequest("strength must be subtle or strong.", field="strength")
    job = chat.variations(_job_id(request), image, strong=strength == "strong")
    return web.json_response({"job": chat.snapshot(job, chat.locale(request))})


async def post_upscale(request: web.Request) -> web.Response:
    """{"image": N}: that image of the job at twice its size."""
    chat = request.app[CHAT]
    image = (await _body(request)).get("image", 1)
    if not isinstance(image, int) or isinstance(image, bool):  # JSON true is no image 1
        raise InvalidRequest("image must be a number, e.g. 1.", field="image")
    job = await chat.upscale(_job_id(request), image)
    return web.json_response({"job": chat.snapshot(job, chat.locale(request))})


async def post_settings(request: web.Request) -> web.Response:
    chat = request.app[CHAT]
    values = (await _body(request)).get("values")
    if not isinstance(values, dict):
        raise web.HTTPBadRequest(text="values must be an object")
    chat.save_prefs(values)
    return web.json_response(chat.state(chat.locale(request)))


async def post_settings_reset(request: web.Request) -> web.Response:
    chat = request.app[CHAT]
    chat.store.reset(USER)
    return web.json_response(chat.state(chat.locale(request)))


async def post_model(request: web.Request) -> web.Response:
    chat = request.app[CHAT]
    locale = chat.locale(request)
    if not chat.admin:
        return web.json_response({"error": text("not_admin", locale)}, status=403)
    name = (await _body(request)).get("name")
    if not isinstance(name, str):
        raise web.HTTPBadRequest(text="name must be a string")
    try:
        swapped = await chat.swap_model(name)
    except GenerationFailed as e:  # the admin gets the loader's reason, not an apology
        return web.json_response({"error": text("error", locale, message=str(e))}, status=500)
    status = text("web_swapped", locale, name=swapped)
    return web.json_response({"model": swapped, "status": status})


async def post_addons(request: web.Request) -> web.Response:
    """Admin: {"vae"?: NAME | "None" | "Automatic", "hypernet"?: "NAME[:STRENGTH]" | ""} for
    the default model; a refusal is the errors middleware's (400, or 500 if drawing failed)."""
    chat = request.app[CHAT]
    locale = chat.locale(request)
    if not chat.admin:
        return web.json_response({"error": text("not_admin", locale)}, status=403)
    body = await _body(request)
    vae, hypernet = body.get("vae"), body.get("hypernet")
    if not all(value is None or isinstance(value, str) for value in (vae, hypernet)):
        raise web.HTTPBadRequest(text="vae and hypernet must be strings")
    if vae is None and hypernet is None:
        raise web.HTTPBadRequest(text="send vae, hypernet or both")
    info = await chat.set_addons(
        vae=None if vae is None else vae.strip(),
        hypernet=None if hypernet is None else hypernet_choice(hypernet),
    )
    status = addons_text(info, locale, "addons_set")
    return web.json_response({**addons_view(info), "status": status})


async def get_image(request: web.Request) -> web.StreamResponse:
    """The PNG exactly as drawn, infotext chunk included (404 once its file is gone)."""
    chat = request.app[CHAT]
    try:
        record = chat.finished(_job_id(request))
    except InvalidRequest:
        raise web.HTTPNotFound() from None
    index = _number(request.match_info["index"])
    if index is None or index > len(record.images):
        raise web.HTTPNotFound()
    if chat.outcome(record.id, record.request) == "refuse":  # withheld by the image check
        raise web.HTTPForbidden()
    return web.FileResponse(record.images[index - 1].path, headers={"Content-Type": "image/png"})


async def get_picture(request: web.Request) -> web.StreamResponse:
    """The picture a drawing of this user was drawn from, as the engine keeps it (its PNG)."""
    return _kept_input(request, "init_image")


async def get_mask(request: web.Request) -> web.StreamResponse:
    """The mask a drawing of this user was inpainted with, as the engine keeps it (grey)."""
    return _kept_input(request, "mask_image")


def _kept_input(request: web.Request, field: str) -> web.StreamResponse:
    """A finished job's kept input file (`init_image` or `mask_image`); 404 if it has none."""
    chat = request.app[CHAT]
    try:
        record = chat.finished(_job_id(request))
    except InvalidRequest:
        raise web.HTTPNotFound() from None
    path = getattr(record.request, field)
    if path is None:
        raise web.HTTPNotFound()
    return web.FileResponse(path, headers={"Content-Type": "image/png"})


async def get_socket(request: web.Request) -> web.WebSocketResponse:
    chat = request.app[CHAT]
    ws = web.WebSocketResponse(heartbeat=30)
    await ws.prepare(request)
    chat.sockets[ws] = browser_locale(request)
    try:
        await ws.send_json(chat.state(chat.locale(request)))
        async for message in ws:  # the page only listens; its actions come over HTTP
            if message.type == WSMsgType.ERROR:
                break
    finally:
        chat.sockets.pop(ws, None)
    return ws


async def _close_sockets(app: web.Application) -> None:
    chat = app[CHAT]
    for ws in list(chat.sockets):
        await ws.close(code=1001, message=b"server shutting down")
    for task in list(chat.watchers.values()):
        task.cancel()
    await asyncio.gather(*chat.watchers.values(), return_exceptions=True)


async def _close_policy(app: web.Application) -> None:
    app[CHAT].policy.close()


def create_app(
    engine: Engine[Any],
    settings: Settings,
    store: UserSettingsStore,
    *,
    token: str | None = None,
    api_credentials: Credentials | None = None,
) -> web.Application:
    """The web chat app, with the A1111 API beside it. The local user is an admin if the engine
    was built with USER among its admins (the launcher does so when [web] local_admin is
    true); so is the API's loopback caller with bot.api.access.LOCAL. `api_credentials` None:
    the API answers loopback callers without credentials."""
    # Bodies are chat text: two prompts of max_prompt_chars (UTF-8) and some JSON around; a
    # drawing's may add a picture and a mask of max_image_bytes each as base64 (4 characters
    # per 3 bytes).
    max_body = 64 * 1024 + 8 * settings.limits.max_prompt_chars
    app = web.Application(middlewares=[api_guard, guard, errors], client_max_size=max_body)
    chat = WebChat(engine, settings, store, token=token)
    app[CHAT] = chat
    app[TEXT_BODY] = max_body
    app[DRAW_BODY] = max_body + 2 * 4 * -(-settings.limits.max_image_bytes // 3)
    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC)
    app.router.add_get("/ws", get_socket)
    app.router.add_get("/api/state", get_state)
    app.router.add_post("/api/draw", post_draw)
    app.router.add_post("/api/jobs/{job}/cancel", post_cancel)
    app.router.add_post("/api/jobs/{job}/reroll", post_reroll)
    app.router.add_post("/api/jobs/{job}/variations", post_variations)
    app.router.add_post("/api/jobs/{job}/upscale", post_upscale)
    app.router.add_post("/api/settings", post_settings)
    app.router.add_post("/api/settings/reset", post_settings_reset)
    app.router.add_post("/api/model", post_model)
    app.router.add_post("/api/addons", post_addons)
    app.router.add_get("/images/{job}/{index}.png", get_image)
    app.router.add_get("/pictures/{job}.png", get_picture)
    app.router.add_get("/masks/{job}.png", get_mask)
    add_api(app, engine, settings, api_credentials or Credentials())
    add_metrics(app, engine)
    app.on_shutdown.append(_close_sockets)
    app.on_cleanup.append(_close_policy)
    for job in engine.recovered():  # replies owed from before a restart
        if WebReply.parse(job.reply_to) is not None:
            chat.watch(job)
    return app


async def run_web(engine: Engine[Any], settings: Settings, store: UserSettingsStore) -> None:
    """Serve the web chat until cancelled; print its address once it listens."""
    host, port = settings.web.host, settings.web.port
    token = env_token(TOKEN_ENV)
    credentials = Credentials.from_env()
    if not is_loopback(host) and (token is None or not credentials.required):
        raise SettingsError(
            f"web.host = {host!r} is reachable from other machines: set {TOKEN_ENV} to an "
            f"access token and {API_AUTH_ENV} (user:password,…) or {API_TOKEN_ENV} for the "
            'A1111 API first (or use host = "127.0.0.1")'
        )
    app = create_app(engine, settings, store, token=token, api_credentials=credentials)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        for address in runner.addresses:
            shown = f"[{address[0]}]" if ":" in address[0] else address[0]
            url = f"http://{shown}:{address[1]}/"
            suffix = f"?token=<{TOKEN_ENV}>" if token is not None else ""
            print(f"aidraw web chat: {url}{suffix}", flush=True)
        if token is not None:
            print(f"aidraw web chat: access needs the token in {TOKEN_ENV}", flush=True)
        log.info("web chat listening on %s:%s (token %s)", host, port, "on" if token else "off")
        await asyncio.Event().wait()  # until the launcher cancels us
    finally:
        await runner.cleanup()
