"""The API's routes on the web chat's aiohttp app (`add_api`), its access and error
middleware, and its OpenAPI document (/openapi.json, /docs) made from the same route table
and pydantic models the handlers validate with."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema

from bot.api import endpoints, listings
from bot.api.access import Credentials, check_origin
from bot.api.errors import ApiError, failure, from_engine
from bot.api.schema import (
    Drawn,
    ErrorAnswer,
    ExtrasAnswer,
    ExtrasSingleImage,
    Img2Img,
    PngInfo,
    PngInfoAnswer,
    ProgressAnswer,
    Txt2Img,
)
from bot.api.service import API, REQUESTER, ApiService
from bot.settings import Settings
from engine.engine import Engine
from engine.version import __version__

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# /metrics and /healthz (bot/web/metrics.py) are not the API's, but share its access.
PREFIXES = ("/sdapi/", "/internal/", "/openapi.json", "/docs", "/metrics", "/healthz")


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    body: type[BaseModel] | None = None
    answer: Any = dict[str, Any]  # a pydantic model or a type TypeAdapter can describe


_LIST = list[dict[str, Any]]
ROUTES = (
    Route("POST", "/sdapi/v1/txt2img", endpoints.txt2img, "Text to image", Txt2Img, Drawn),
    Route("POST", "/sdapi/v1/img2img", endpoints.img2img, "Image to image", Img2Img, Drawn),
    Route(
        "POST",
        "/sdapi/v1/extra-single-image",
        endpoints.extra_single_image,
        "Upscale one picture (Extras)",
        ExtrasSingleImage,
        ExtrasAnswer,
    ),
    Route("POST", "/sdapi/v1/png-info", endpoints.png_info, "PNG Info", PngInfo, PngInfoAnswer),
    Route(
        "GET", "/sdapi/v1/progress", endpoints.progress, "Your job's progress", None, ProgressAnswer
    ),
    Route("POST", "/sdapi/v1/interrupt", endpoints.interrupt, "Stop your jobs"),
    Route("POST", "/sdapi/v1/skip", endpoints.skip, "Skip your jobs' current iteration"),
    Route("GET", "/sdapi/v1/options", listings.get_options, "Settings"),
    Route(
        "POST", "/sdapi/v1/options", listings.post_options, "Change settings (admins)", None, None
    ),
    Route("GET", "/sdapi/v1/cmd-flags", listings.cmd_flags, "Command-line flags"),
    Route("GET", "/sdapi/v1/samplers", listings.samplers, "Samplers", None, _LIST),
    Route("GET", "/sdapi/v1/schedulers", listings.schedulers, "Schedulers", None, _LIST),
    Route("GET", "/sdapi/v1/upscalers", listings.upscalers, "Upscalers", None, _LIST),
    Route(
        "GET",
        "/sdapi/v1/latent-upscale-modes",
        listings.latent_upscale_modes,
        "Latent upscale modes",
        None,
        _LIST,
    ),
    Route("GET", "/sdapi/v1/sd-models", listings.sd_models, "Checkpoints", None, _LIST),
    Route("GET", "/sdapi/v1/sd-vae", listings.sd_vae, "VAEs", None, _LIST),
    Route("GET", "/sdapi/v1/hypernetworks", listings.hypernetworks, "Hypernetworks", None, _LIST),
    Route("GET", "/sdapi/v1/loras", listings.loras, "LoRAs", None, _LIST),
    Route("GET", "/sdapi/v1/embeddings", listings.embeddings, "Embeddings"),
    Route("GET", "/sdapi/v1/face-restorers", listings.nothing, "Face restorers", None, _LIST),
    Route("GET", "/sdapi/v1/realesrgan-models", listings.nothing, "RealESRGAN", None, _LIST),
    Route("GET", "/sdapi/v1/prompt-styles", listings.nothing, "Prompt styles", None, _LIST),
    Route("GET", "/sdapi/v1/script-info", listings.nothing, "Script info", None, _LIST),
    Route("GET", "/sdapi/v1/scripts", listings.scripts, "Scripts"),
    Route("GET", "/internal/ping", listings.ping, "Ping"),
)


def is_api_path(path: str) -> bool:
    return path.startswith(PREFIXES)


@web.middleware
async def api_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """API paths only: Origin, credentials, and every refusal in A1111's shape."""
    if not is_api_path(request.path):
        return await handler(request)
    api = request.app[API]
    try:
        check_origin(request)
        request[REQUESTER] = api.credentials.requester(request, _local_names(api))
        return await handler(request)
    except ApiError as e:
        return e.response()
    except web.HTTPException as e:  # the router's 404 and 405
        if e.status < 400:
            raise
        return ApiError(e.status, e.reason).response()
    except Exception as e:
        return (from_engine(e) or failure(e)).response()


def _local_names(api: ApiService) -> set[str | None]:
    return {"127.0.0.1", "::1", "localhost", api.settings.web.host}


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of ROUTES, from their pydantic models."""
    ref = "#/components/schemas/{model}"
    models = {ErrorAnswer}
    for route in ROUTES:
        for kind in (route.body, route.answer):
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                models.add(kind)
    ordered = sorted(models, key=lambda m: m.__name__)
    keys, defs = models_json_schema(
        [(m, "validation") for m in ordered], ref_template=ref, title="aidraw"
    )
    schemas = defs.get("$defs", {})

    def schema_of(kind: Any) -> dict[str, Any]:
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            return keys[(kind, "validation")]
        return TypeAdapter(kind).json_schema(ref_template=ref)

    error = {"application/json": {"schema": schema_of(ErrorAnswer)}}
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        operation: dict[str, Any] = {
            "summary": route.summary,
            "operationId": f"{route.method.lower()}_{route.path.strip('/').replace('/', '_')}",
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {"application/json": {"schema": schema_of(route.answer)}},
                },
                "default": {"description": "Refused (A1111's error shape)", "content": error},
            },
        }
        if route.method == "GET" and route.path.endswith("/progress"):
            operation["parameters"] = [
                {
                    "name": "skip_current_image",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "boolean", "default": False},
                }
            ]
        if route.body is not None:
            content = {"application/json": {"schema": schema_of(route.body)}}
            operation["requestBody"] = {"required": True, "content": content}
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "aidraw: A1111-compatible API", "version": __version__},
        "paths": paths,
        "components": {"schemas": schemas},
    }


async def get_openapi(request: web.Request) -> web.StreamResponse:
    return web.json_response(request.app[OPENAPI])


async def get_docs(request: web.Request) -> web.StreamResponse:
    """The endpoints and their fields, from the document (no script from elsewhere)."""
    document = request.app[OPENAPI]
    rows = []
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            rows.append(f"<h2>{method.upper()} {path}</h2><p>{operation['summary']}</p>")
    schemas = json.dumps(document["components"]["schemas"], indent=1)
    page = (
        "<!doctype html><meta charset=utf-8><title>aidraw API</title>"
        "<h1>aidraw: A1111-compatible API</h1><p>Machine-readable: "
        '<a href="/openapi.json">/openapi.json</a></p>'
        + "".join(rows)
        + "<h2>Schemas</h2><pre>"
        + schemas.replace("&", "&amp;").replace("<", "&lt;")
        + "</pre>"
    )
    return web.Response(text=page, content_type="text/html")


OPENAPI = web.AppKey("openapi", dict)


def add_api(
    app: web.Application, engine: Engine[Any], settings: Settings, credentials: Credentials
) -> None:
    """The API's routes and state on `app` (its middleware must be among app's: api_guard)."""
    app[API] = ApiService(engine, settings, credentials)
    app[OPENAPI] = openapi()
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler)
    app.router.add_get("/openapi.json", get_openapi)
    app.router.add_get("/docs", get_docs)
