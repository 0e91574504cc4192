"""The API's lists (models, samplers, add-ons, upscalers, …) and its options, in A1111's
shapes; empty lists where aidraw has nothing of that kind (face restorers, styles, scripts)."""

from __future__ import annotations

from aiohttp import web

from bot.api.access import is_loopback
from bot.api.drawing import checkpoint_name
from bot.api.errors import ApiError, invalid
from bot.api.options import check_option
from bot.api.service import API, read_json, requester
from bot.pictures import picture_upscalers
from engine.request import LATENT_UPSCALERS
from engine.sampling.samplers import SAMPLERS, V19_SAMPLERS
from engine.sampling.schedules import SCHEDULE_TYPES


async def ping(request: web.Request) -> web.StreamResponse:
    return web.json_response({})


async def sd_models(request: web.Request) -> web.StreamResponse:
    models = request.app[API].engine.models()
    return web.json_response(
        [
            {
                "title": name,
                "model_name": name,
                "hash": None,
                "sha256": None,
                "filename": name,
                "config": None,
            }
            for name in models
        ]
    )


async def samplers(request: web.Request) -> web.StreamResponse:
    """A1111 v1.9's sampler list, with its 'scheduler' option where it has one."""
    rows = [SAMPLERS[name] for name in V19_SAMPLERS]
    return web.json_response(
        [
            {
                "name": row.name,
                "aliases": list(row.aliases),
                "options": {"scheduler": row.automatic} if row.automatic else {},
            }
            for row in rows
        ]
    )


async def schedulers(request: web.Request) -> web.StreamResponse:
    return web.json_response(
        [
            {
                "name": s.name,
                "label": s.label,
                "aliases": list(s.aliases) or None,
                "default_rho": s.default_rho,
                "need_inner_model": s.need_inner_model,
            }
            for s in SCHEDULE_TYPES
        ]
    )


async def sd_vae(request: web.Request) -> web.StreamResponse:
    names = request.app[API].engine.addon_names("VAE")
    return web.json_response([{"model_name": name, "filename": name} for name in names])


async def hypernetworks(request: web.Request) -> web.StreamResponse:
    names = request.app[API].engine.addon_names("hypernetwork")
    return web.json_response([{"name": name, "path": name} for name in names])


async def loras(request: web.Request) -> web.StreamResponse:
    names = request.app[API].engine.addon_names("LoRA")
    return web.json_response(
        [{"name": name, "alias": name, "path": name, "metadata": {}} for name in names]
    )


async def embeddings(request: web.Request) -> web.StreamResponse:
    names = request.app[API].engine.addon_names("embedding")
    unknown = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None}
    return web.json_response({"loaded": {name: unknown for name in names}, "skipped": {}})


async def upscalers(request: web.Request) -> web.StreamResponse:
    names = ["None", *picture_upscalers(request.app[API].engine)]
    return web.json_response(
        [
            {"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 4}
            for name in names
        ]
    )


async def latent_upscale_modes(request: web.Request) -> web.StreamResponse:
    return web.json_response([{"name": name} for name in LATENT_UPSCALERS])


async def nothing(request: web.Request) -> web.StreamResponse:
    """Face restorers, RealESRGAN models, prompt styles, script info: none here."""
    return web.json_response([])


async def scripts(request: web.Request) -> web.StreamResponse:
    return web.json_response({"txt2img": [], "img2img": []})


async def cmd_flags(request: web.Request) -> web.StreamResponse:
    """What A1111's command line would say; credentials are never shown."""
    web_settings = request.app[API].settings.web
    return web.json_response(
        {
            "api": True,
            "nowebui": False,
            "listen": not is_loopback(web_settings.host),
            "port": web_settings.port,
            "api_auth": None,
            "device_id": None,
            "medvram": False,
            "lowvram": False,
            "xformers": False,
        }
    )


async def get_options(request: web.Request) -> web.StreamResponse:
    api = request.app[API]
    model = api.engine.default_model
    vae = api.engine.model_info(model).defaults.vae if model else "Automatic"
    return web.json_response({**api.options.values, "sd_model_checkpoint": model, "sd_vae": vae})


async def post_options(request: web.Request) -> web.StreamResponse:
    """Admins: the checkpoint (a swap), its VAE and the API's defaults; all checked first."""
    api = request.app[API]
    who = requester(request)
    if not api.engine.is_admin(who):
        raise ApiError(403, "only an admin may change the options")
    body = await read_json(request)
    model, vae = body.pop("sd_model_checkpoint", None), body.pop("sd_vae", None)
    for key, value in body.items():
        check_option(key, value)
    if vae is not None and not isinstance(vae, str):
        raise invalid(f"sd_vae must be a string, not {vae!r}")
    if model is not None:
        await api.engine.swap_model(checkpoint_name(model), by=who)
    if vae is not None:
        await api.engine.set_addon_defaults(who, vae=vae)
    api.options.update(body)
    return web.json_response(None)
