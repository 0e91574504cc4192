"""The local web chat: one page (bot/web/static/) that answers like the bots, for trying prompts,
settings and models before a Discord or Telegram bot exists. `run_web` is the launcher's entry.

Actions go over HTTP (JSON), job progress over one WebSocket per page. There is one user,
"web:local". It listens on 127.0.0.1 unless [web] host says otherwise, which needs the access
token AIDRAW_WEB_TOKEN. Nothing is uploaded: every body is a little JSON.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import functools
import hmac
import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from yarl import URL

from bot import messages
from bot.messages import LOCALES, Locale, locale_of, text
from bot.parse import ParseError, read_request
from bot.prefs import FIELDS, UserPrefs, UserSettingsStore
from bot.settings import Settings, SettingsError, env_token
from engine.config import ConfigError, build
from engine.engine import Engine
from engine.errors import (
    EngineClosed,
    EngineError,
    GenerationFailed,
    InvalidRequest,
    JobCancelled,
    QueueFull,
)
from engine.job import Job
from engine.journal import JobRecord, SavedImage
from engine.prompting.presets import LOW_QUALITY_BAD_ANATOMY
from engine.request import GenerationRequest, GenerationResult, Progress, RequestDefaults

log = logging.getLogger(__name__)

USER = "web:local"
TOKEN_ENV = "AIDRAW_WEB_TOKEN"
COOKIE = "aidraw_web_token"
STATIC = Path(__file__).with_name("static")
HISTORY = 20  # finished drawings shown when the page opens
# Telegram's send_as_document means nothing here: the page always links the original PNG.
PREF_FIELDS = tuple(name for name in FIELDS if name != "send_as_document")
_DRAW = re.compile(r"/draw(?:@\w+)?(?=\s|$)\s*")
_COMMAND = re.compile(r"/[A-Za-z]\w*")
_STATUS = {InvalidRequest: 400, JobCancelled: 409, QueueFull: 429, EngineClosed: 503}


class WebChat:
    """The page's server side: the engine calls, the user's settings, sockets, job watchers."""

    def __init__(
        self,
        engine: Engine[Any],
        settings: Settings,
        store: UserSettingsStore,
        *,
        token: str | None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.store = store
        self.token = token
        self.sockets: dict[web.WebSocketResponse, Locale] = {}
        self.watchers: dict[int, asyncio.Task[None]] = {}

    @property
    def admin(self) -> bool:
        return self.engine.is_admin(USER)

    def locale(self, request: web.Request) -> Locale:
        """The user's saved language, else the browser's."""
        return self.store.get(USER).locale or _asked(request)

    # --- drawing --------------------------------------------------------------------------

    def draw(self, chat_text: str, locale: Locale) -> tuple[Job, list[str]]:
        """Chat text (`/draw ...` or a plain prompt) → a queued job and the parser's notes."""
        stripped = chat_text.strip()
        if match := _DRAW.match(stripped):
            stripped = stripped[match.end() :]
        elif match := _COMMAND.match(stripped):
            message = text("web_unknown_command", locale, command=match[0])
            raise ParseError(message, field="command")
        prefs = self.store.get(USER)
        parsed = read_request(
            stripped,
            prefs.request_defaults(USER),
            USER,
            settings=prefs.prompt_settings(self.settings.prompt),
        )
        return self.submit(parsed.request), list(parsed.notes)

    def submit(self, request: GenerationRequest) -> Job:
        job = self.engine.submit(request, reply_to=USER)
        self.watch(job)
        return job

    def finished(self, job_id: int) -> JobRecord:
        """A job of this user that the journal still remembers."""
        record = self.engine.record(job_id)
        if record is None or record.requester != USER:
            raise InvalidRequest(f"Job {job_id} is no longer in the history.", field="job")
        return record

    def reroll(self, job_id: int) -> Job:
        """The same request with a new seed (nothing is parsed again)."""
        record = self.finished(job_id)
        return self.submit(dataclasses.replace(record.request, seed=None, requester=USER))

    def variations(self, job_id: int, image: int) -> Job:
        """Image `image` (1-based) of a job, varied: its seed, a random variation seed."""
        record = self.finished(job_id)
        if not 1 <= image <= len(record.images):
            raise InvalidRequest(f"Job {job_id} has no image {image}.", field="image")
        request = dataclasses.replace(
            record.request,
            seed=record.images[image - 1].seed,
            subseed=None,
            subseed_strength=self.settings.bot.variation_strength,
            requester=USER,
        )
        return self.submit(request)

    def watch(self, job: Job) -> None:
        """Tell every open page about the job until it ends, then confirm the reply."""
        task = asyncio.create_task(self._watch(job), name=f"web-job-{job.id}")
        self.watchers[job.id] = task
        task.add_done_callback(lambda _: self.watchers.pop(job.id, None))

    async def _watch(self, job: Job) -> None:
        shown: bytes | None = None
        try:
            async for progress in job.updates():
                if progress.state in ("queued", "running"):
                    preview = progress.preview if progress.preview is not shown else None
                    shown = progress.preview
                    await self.broadcast(
                        functools.partial(self.progress_event, job, progress, preview)
                    )
            results = await job.result()
        except EngineClosed:
            return  # shutting down: the job stays in the journal and comes back on restart
        except Exception as e:
            said = apology(e)
            final = job.progress
            await self.broadcast(
                lambda locale: {
                    "type": "failed",
                    "job": {**self.job_view(job, final, locale, None), "status": said[locale]},
                }
            )
        else:
            await self.broadcast(
                lambda locale: {
                    "type": "done",
                    "job": self.done_view(job.id, job.request, results, locale),
                }
            )
        with contextlib.suppress(EngineClosed):
            self.engine.mark_delivered(job.id)

    def progress_event(
        self, job: Job, progress: Progress, preview: bytes | None, locale: Locale
    ) -> dict[str, Any]:
        return {"type": "progress", "job": self.job_view(job, progress, locale, preview)}

    async def broadcast(self, event: Callable[[Locale], dict[str, Any]]) -> None:
        saved = self.store.get(USER).locale
        for ws, asked in list(self.sockets.items()):
            try:
                await ws.send_json(event(saved or asked))
            except (ConnectionError, RuntimeError):  # the page went away meanwhile
                self.sockets.pop(ws, None)

    # --- settings and models --------------------------------------------------------------

    def save_prefs(self, values: Mapping[str, Any]) -> UserPrefs:
        """Check the whole new set (types, then what the engine would accept), then save."""
        unknown = sorted(set(values) - set(PREF_FIELDS))
        if unknown:
            raise InvalidRequest(f"Unknown setting {unknown[0]!r}.", field=unknown[0])
        try:
            prefs = build(UserPrefs, values, "settings", base=self.store.get(USER))
        except ConfigError as e:
            raise InvalidRequest(str(e).removeprefix("settings.")) from None
        from engine.generate import check_request  # torch: already loaded by the engine

        check = dataclasses.replace(prefs.request_defaults(USER), prompt="x")
        check_request(check, self.settings.limits, self.model_defaults())
        return self.store.update(USER, **values)

    def model_defaults(self) -> RequestDefaults:
        try:
            return self.engine.model_info(self.engine.default_model).defaults
        except InvalidRequest:
            return self.settings.defaults

    async def swap_model(self, name: str) -> str:
        swapped = await self.engine.swap_model(name, by=USER)
        await self.broadcast(lambda locale: {"type": "model", "model": swapped})
        return swapped

    # --- what the page shows --------------------------------------------------------------

    def state(self, locale: Locale) -> dict[str, Any]:
        """Everything the page needs to (re)draw itself."""
        from engine.sampling.samplers import SAMPLERS

        prefs = self.store.get(USER)
        defaults = self.model_defaults()
        records = reversed(self.engine.history(USER, HISTORY))
        return {
            "type": "state",
            "user": USER,
            "admin": self.admin,
            "locale": locale,
            "strings": strings(locale),
            "prefs": {name: getattr(prefs, name) for name in PREF_FIELDS},
            "defaults": {
                **dataclasses.asdict(defaults),
                "negative_prompt": "",
                "uc_preset": self.settings.prompt.uc_preset,
                "quality_tags": self.settings.prompt.quality_tags,
                "syntax": self.settings.prompt.syntax,
                "locale": locale,
            },
            "choices": {
                "sampler": list(SAMPLERS),
                "uc_preset": [LOW_QUALITY_BAD_ANATOMY, "Low Quality", "None"],
                "syntax": ["a1111", "nai"],
                "locale": list(LOCALES),
            },
            "models": self.engine.models(),
            "model": self.engine.default_model,
            "history": [self.done_view(r.id, r.request, r.images, locale) for r in records],
            "jobs": [self.snapshot(job, locale) for job in self.engine.jobs(USER)],
        }

    def job_view(
        self, job: Job, progress: Progress, locale: Locale, preview: bytes | None
    ) -> dict[str, Any]:
        """A waiting or drawing job; `preview` None = keep the one the page shows."""
        return {
            "id": job.id,
            "state": progress.state,
            "request": request_view(job.request),
            "position": progress.position,
            "step": progress.step,
            "total": progress.total,
            "eta_s": progress.eta_s,
            "status": status_text(progress, locale),
            "preview": _data_url(preview) if preview is not None else None,
        }

    def snapshot(self, job: Job, locale: Locale) -> dict[str, Any]:
        progress = job.progress
        return self.job_view(job, progress, locale, progress.preview)

    def done_view(
        self,
        job_id: int,
        request: GenerationRequest,
        images: Sequence[GenerationResult | SavedImage],
        locale: Locale,
    ) -> dict[str, Any]:
        """A finished job: just drawn (its results) or from the journal (its saved images)."""
        if images:  # the seed drawn, where the request left it to chance
            request = dataclasses.replace(request, seed=images[0].seed)
        return {
            "id": job_id,
            "state": "done",
            "request": request_view(request),
            "status": text("done", locale),
            "images": [
                image_view(job_id, i, image.seed, image.infotext, request, locale)
                for i, image in enumerate(images, start=1)
            ],
        }


def request_view(request: GenerationRequest) -> dict[str, Any]:
    fields = ("prompt", "negative_prompt", "width", "height", "num_inference_steps")
    more = ("guidance_scale", "sampler", "seed", "model", "batch_size", "subseed_strength")
    return {name: getattr(request, name) for name in (*fields, *more)}


def image_view(
    job_id: int, index: int, seed: int, infotext: str, request: GenerationRequest, locale: Locale
) -> dict[str, Any]:
    caption = text(
        "caption", locale, seed=seed, model=request.model, steps=request.num_inference_steps
    )
    return {
        "index": index,
        "url": f"/images/{job_id}/{index}.png",
        "filename": f"aidraw-{job_id}-{index}-{seed}.png",
        "seed": seed,
        "caption": caption,
        "infotext": infotext,
    }


def status_text(progress: Progress, locale: Locale) -> str:
    eta = "" if progress.eta_s is None else text("eta", locale, seconds=round(progress.eta_s))
    if progress.state == "queued":
        if progress.position is None:
            return text("web_waiting", locale)
        return text("queued", locale, position=progress.position, eta=eta)
    if progress.state == "running":
        return text("drawing", locale, step=progress.step, total=progress.total, eta=eta)
    if progress.state == "cancelled":
        return text("cancelled", locale)
    if progress.state == "done":
        return text("done", locale)
    return text("error", locale, message=progress.error or "")


def strings(locale: Locale) -> dict[str, str]:
    """The page's own strings, plus the shared ones it shows by itself."""
    keys = [key for key in messages.MESSAGES if key.startswith("web_")]
    keys += ["failed", "cancelled", "done"]
    return {key: messages.MESSAGES[key][locale] for key in keys}


def apology(error: Exception) -> dict[Locale, str]:
    """The one error handler: what to tell the user about `error`, in each language."""
    if isinstance(error, JobCancelled):
        return {locale: text("cancelled", locale) for locale in LOCALES}
    if isinstance(error, EngineError):
        return {locale: messages.error_text(error, locale) for locale in LOCALES}
    log.error("web chat: unexpected error", exc_info=error)
    return {locale: text("failed", locale) for locale in LOCALES}


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# --- HTTP ------------------------------------------------------------------------------------

CHAT = web.AppKey("chat", WebChat)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The access token (if set), else a loopback Host; same-origin writes only."""
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
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as e:
        said = apology(e)
        status = next((code for kind, code in _STATUS.items() if isinstance(e, kind)), 500)
        locale = request.app[CHAT].locale(request)
        return web.json_response({"error": said[locale]}, status=status)


def _asked(request: web.Request) -> Locale:
    """The browser's language: the page's ?lang=, else its Accept-Language."""
    asked = request.query.get("lang") or request.headers.get("Accept-Language") or ""
    return locale_of(asked.split(",")[0])


def _local_names(host: str) -> set[str | None]:
    return {"127.0.0.1", "::1", "localhost", host}


def _same(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode(), token.encode())


async def _body(request: web.Request) -> dict[str, Any]:
    # JSON only: a cross-site <form> cannot send it without a CORS preflight we never allow.
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(text="send application/json")
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="not JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="send a JSON object")
    return body


def _job_id(request: web.Request) -> int:
    try:
        return int(request.match_info["job"])
    except ValueError:
        raise web.HTTPNotFound() from None


async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def get_state(request: web.Request) -> web.Response:
    chat = request.app[CHAT]
    return web.json_response(chat.state(chat.locale(request)))


async def post_draw(request: web.Request) -> web.Response:
    chat = request.app[CHAT]
    locale = chat.locale(request)
    chat_text = (await _body(request)).get("text")
    if not isinstance(chat_text, str):
        raise web.HTTPBadRequest(text="text must be a string")
    job, notes = chat.draw(chat_text, locale)
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
    image = (await _body(request)).get("image", 1)
    if not isinstance(image, int):
        raise web.HTTPBadRequest(text="image must be a number")
    job = chat.variations(_job_id(request), image)
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


async def get_image(request: web.Request) -> web.StreamResponse:
    """The PNG exactly as drawn, infotext chunk included (404 once its file is gone)."""
    chat = request.app[CHAT]
    try:
        record = chat.finished(_job_id(request))
        path = Path(record.images[int(request.match_info["index"]) - 1].path)
    except (InvalidRequest, IndexError, ValueError):
        raise web.HTTPNotFound() from None
    return web.FileResponse(path, headers={"Content-Type": "image/png"})


async def get_socket(request: web.Request) -> web.WebSocketResponse:
    chat = request.app[CHAT]
    ws = web.WebSocketResponse(heartbeat=30)
    await ws.prepare(request)
    chat.sockets[ws] = _asked(request)
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


def create_app(
    engine: Engine[Any],
    settings: Settings,
    store: UserSettingsStore,
    *,
    token: str | None = None,
) -> web.Application:
    """The web chat app. The local user is an admin if the engine was built with USER among
    its admins (the launcher does so when [web] local_admin is true)."""
    # Bodies are chat text: two prompts of max_prompt_chars (UTF-8) and some JSON around.
    max_body = 64 * 1024 + 8 * settings.limits.max_prompt_chars
    app = web.Application(middlewares=[guard, errors], client_max_size=max_body)
    chat = WebChat(engine, settings, store, token=token)
    app[CHAT] = chat
    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC)
    app.router.add_get("/ws", get_socket)
    app.router.add_get("/api/state", get_state)
    app.router.add_post("/api/draw", post_draw)
    app.router.add_post("/api/jobs/{job}/cancel", post_cancel)
    app.router.add_post("/api/jobs/{job}/reroll", post_reroll)
    app.router.add_post("/api/jobs/{job}/variations", post_variations)
    app.router.add_post("/api/settings", post_settings)
    app.router.add_post("/api/settings/reset", post_settings_reset)
    app.router.add_post("/api/model", post_model)
    app.router.add_get("/images/{job}/{index}.png", get_image)
    app.on_shutdown.append(_close_sockets)
    for job in engine.recovered():  # replies owed from before a restart
        if job.reply_to == USER:
            chat.watch(job)
    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def run_web(engine: Engine[Any], settings: Settings, store: UserSettingsStore) -> None:
    """Serve the web chat until cancelled; print its address once it listens."""
    host, port = settings.web.host, settings.web.port
    token = env_token(TOKEN_ENV)
    if not is_loopback(host) and token is None:
        raise SettingsError(
            f"web.host = {host!r} is reachable from other machines: set {TOKEN_ENV} to an "
            'access token first (or use host = "127.0.0.1")'
        )
    app = create_app(engine, settings, store, token=token)
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
