"""The API's state on the aiohttp app (`API`): the engine, settings, credentials, options and
calls in flight; and reading a request's body into its pydantic model at the door."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from bot.api.access import Credentials
from bot.api.calls import Calls
from bot.api.errors import ApiError, from_validation, invalid
from bot.api.options import ApiOptions
from bot.settings import Settings
from engine.engine import Engine

B = TypeVar("B", bound=BaseModel)


class ApiService:
    """Everything a handler needs; one per app."""

    def __init__(self, engine: Engine[Any], settings: Settings, credentials: Credentials) -> None:
        self.engine = engine
        self.settings = settings
        self.credentials = credentials
        self.options = ApiOptions(options_path(settings.root, settings.queue.journal))
        self.calls = Calls(engine)
        # A body may carry a picture and a mask (base64: 4 characters per 3 bytes), two
        # prompts of max_prompt_chars (UTF-8, JSON-escaped) and some JSON around them.
        limits = settings.limits
        self.max_body = (
            64 * 1024 + 12 * limits.max_prompt_chars + 2 * 4 * -(-limits.max_image_bytes // 3)
        )


API = web.AppKey("api", ApiService)
REQUESTER = web.RequestKey("api_requester", str)  # set by the API's middleware


def requester(request: web.Request) -> str:
    """Who called (set by the API's middleware)."""
    return request[REQUESTER]


async def read_body(request: web.Request, model: type[B]) -> B:
    """The body as `model` says, or ApiError: 413 over the cap (what is over is never read),
    422 not JSON or a field wrong (naming it and what it takes)."""
    body = await read_json(request)
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise from_validation(e) from None


async def read_json(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object, read up to the API's cap."""
    if request.content_type != "application/json":
        # A cross-site <form> cannot send JSON without a CORS preflight, which is never allowed.
        raise invalid("send the body as application/json")
    cap = request.app[API].max_body
    if request.content_length is not None and request.content_length > cap:
        raise ApiError(413, f"the body is over {cap:,} bytes", kind="PayloadTooLarge")
    data = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        data += chunk
        if len(data) > cap:
            raise ApiError(413, f"the body is over {cap:,} bytes", kind="PayloadTooLarge")
    try:
        body = json.loads(data or b"{}")
    except ValueError:
        raise invalid("the body is not JSON") from None
    if not isinstance(body, dict):
        raise invalid("the body must be a JSON object")
    return body


def options_path(root: Path, journal: str) -> Path | None:
    """Where the options are kept: beside the journal (in memory with it)."""
    return None if journal == ":memory:" else (root / journal).with_name("api_options.json")
