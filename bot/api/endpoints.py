"""The API's working endpoints: txt2img, img2img, progress, interrupt and skip, the Extras
upscale and PNG Info. Each reads its body at the door, queues through the engine like any
chat job (the caller is the requester) and answers in A1111's shape."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import warnings
from pathlib import Path
from typing import Any

from aiohttp import web
from PIL import Image

from bot.api.calls import Call
from bot.api.drawing import answer, base_request, decode_picture, iterations
from bot.api.errors import invalid
from bot.api.schema import ExtrasSingleImage, Img2Img, PngInfo, Txt2Img
from bot.api.service import API, ApiService, read_body, requester
from bot.pictures import extras_request, picture_upscaler, upscale_scale
from engine.errors import InvalidRequest, JobCancelled
from engine.images import too_big
from engine.infotext import infotext_from_image, parse_infotext
from engine.job import Job
from engine.request import GenerationRequest, GenerationResult

DISCONNECT_POLL_S = 0.25  # how soon a caller's hang-up cancels its job


class ClientGone(Exception):
    """The caller hung up; its job was cancelled and nobody is left to answer."""


async def txt2img(request: web.Request) -> web.StreamResponse:
    body = await read_body(request, Txt2Img)
    return await _draw(request, body, "txt2img")


async def img2img(request: web.Request) -> web.StreamResponse:
    body = await read_body(request, Img2Img)
    if len(body.init_images) != 1:
        raise invalid(f"init_images must hold one picture, not {len(body.init_images)}")
    return await _draw(request, body, "img2img")


async def _draw(request: web.Request, body: Txt2Img | Img2Img, kind: str) -> web.StreamResponse:
    api = request.app[API]
    who = requester(request)
    first = base_request(body, api.options, who, api.engine.default_model or None)
    runs = iterations(first, body.n_iter)
    if isinstance(body, Img2Img):
        runs = await _with_pictures(api, body, runs)
    call = api.calls.start(who, kind, len(runs))
    results: list[GenerationResult] = []
    try:
        for run in runs:
            if call.interrupted:
                break
            try:
                results += await _one(api, request, call, run)
            except JobCancelled:  # stopped before it was drawing: nothing to give
                if not (call.interrupted or call.skipped):
                    raise  # an admin's cancel: the caller is told
            call.skipped = False
            call.done += 1
    except ClientGone:
        return web.Response(status=499)  # nobody reads it; aiohttp needs an answer
    finally:
        api.calls.end(call)
    return web.json_response(answer(body, results, call.started))


async def _with_pictures(
    api: ApiService, body: Img2Img, runs: list[GenerationRequest]
) -> list[GenerationRequest]:
    """The picture (and mask) through the engine's door, off the event loop."""
    picture = decode_picture(body.init_images[0], "init_images[0]")
    stored = await asyncio.to_thread(api.engine.store_image, picture)
    mask_path = None
    if body.mask is not None:
        mask = decode_picture(body.mask, "mask")
        mask_path = (await asyncio.to_thread(api.engine.store_image, mask, mask=True)).path
    return [dataclasses.replace(r, init_image=stored.path, mask_image=mask_path) for r in runs]


async def _one(
    api: ApiService, request: web.Request, call: Call, run: GenerationRequest
) -> list[GenerationResult]:
    job = api.engine.submit(run, reply_to="")
    call.job = job
    return await _wait(api, request, job)


async def _wait(api: ApiService, request: web.Request, job: Job) -> list[GenerationResult]:
    """The job's images; a caller that hangs up meanwhile cancels it (ClientGone)."""
    result = asyncio.ensure_future(job.result())
    try:
        while True:
            done, _ = await asyncio.wait({result}, timeout=DISCONNECT_POLL_S)
            if done:
                return result.result()
            transport = request.transport
            if transport is None or transport.is_closing():
                api.engine.cancel(job.id, by=job.requester)
                raise ClientGone
    except asyncio.CancelledError:  # the server cancelled the handler (shutdown, hang-up)
        if not job.done():
            api.engine.cancel(job.id, by=job.requester)
        raise
    finally:
        if not result.done():
            result.cancel()


async def progress(request: web.Request) -> web.StreamResponse:
    api = request.app[API]
    skip = request.query.get("skip_current_image", "false").lower() in ("true", "1")
    return web.json_response(api.calls.progress(requester(request), with_image=not skip))


async def interrupt(request: web.Request) -> web.StreamResponse:
    request.app[API].calls.interrupt(requester(request))
    return web.json_response({})


async def skip(request: web.Request) -> web.StreamResponse:
    request.app[API].calls.skip(requester(request))
    return web.json_response({})


async def extra_single_image(request: web.Request) -> web.StreamResponse:
    """A1111's Extras tab, upscaling only (no face restoration)."""
    api = request.app[API]
    body = await read_body(request, ExtrasSingleImage)
    if body.gfpgan_visibility or body.codeformer_visibility:
        raise invalid("face restoration (gfpgan/codeformer_visibility) is not available")
    if body.upscaler_2 != "None" and body.extras_upscaler_2_visibility:
        raise invalid("a second upscaler (upscaler_2) is not available")
    if body.resize_mode != 0:
        raise invalid("resize_mode must be 0 (scale by upscaling_resize) here")
    picture = decode_picture(body.image, "image")
    stored = await asyncio.to_thread(api.engine.store_image, picture)
    if body.upscaler_1 == "None":  # A1111 upscales nothing: the picture as the door read it
        png = await asyncio.to_thread(Path(stored.path).read_bytes)
        return web.json_response({"image": base64.b64encode(png).decode(), "html_info": ""})
    upscaler = picture_upscaler(api.engine, body.upscaler_1)
    scale = upscale_scale(body.upscaling_resize)
    job_request = extras_request(
        stored.path, scale=scale, upscaler=upscaler, requester=requester(request)
    )
    job = api.engine.submit(job_request, reply_to="")
    try:
        results = await _wait(api, request, job)
    except ClientGone:
        return web.Response(status=499)
    image = base64.b64encode(results[0].png).decode()
    return web.json_response({"image": image, "html_info": results[0].infotext})


async def png_info(request: web.Request) -> web.StreamResponse:
    """A picture's generation text, as A1111's PNG Info reads it."""
    api = request.app[API]
    body = await read_body(request, PngInfo)
    if not body.image:
        return web.json_response({"info": "", "items": {}, "parameters": {}})
    data = decode_picture(body.image, "image")
    if len(data) > api.settings.limits.max_image_bytes:
        raise too_big(len(data), api.settings.limits)
    text, items = await asyncio.to_thread(_read_text, data)
    parameters: dict[str, Any] = {}
    if text:
        parsed = parse_infotext(text)
        parameters = {
            "Prompt": parsed.prompt,
            "Negative prompt": parsed.negative_prompt,
            **parsed.params,
        }
    return web.json_response({"info": text or "", "items": items, "parameters": parameters})


def _read_text(data: bytes) -> tuple[str | None, dict[str, str]]:
    """The picture's infotext and its other text items (its pixels are never decoded)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            text = infotext_from_image(image)
    except (Image.DecompressionBombError, OSError, ValueError, SyntaxError):
        raise InvalidRequest(
            "The image is not a picture that can be read.", field="image"
        ) from None
    items = {str(k): v for k, v in image.info.items() if isinstance(v, str) and k != "parameters"}
    return text, items
