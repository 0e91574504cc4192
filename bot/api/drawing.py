"""An A1111 txt2img/img2img body → the engine's requests, and the engine's results → A1111's
answer (`images`, `parameters`, `info`). A1111's defaults, not the chat's NAI ones; the prompt
is used as sent. Fields the engine cannot honour are refused by name, never dropped."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import random
import time
from typing import Any

from bot.api.errors import invalid
from bot.api.options import ApiOptions, check_option
from bot.api.schema import Img2Img, Txt2Img
from engine.infotext import parse_infotext
from engine.request import GenerationRequest, GenerationResult
from engine.sampling.samplers import carries_schedule, run_row
from engine.sampling.schedules import AUTOMATIC
from engine.version import __version__

# override_settings the API honours per request (the rest of A1111's are ignored, as unknown
# fields are): each becomes a GenerationRequest field.
OVERRIDES = {
    "CLIP_stop_at_last_layers": "clip_skip",
    "eta_noise_seed_delta": "ensd",
    "randn_source": "rng",
    "emphasis": "emphasis",
}
MAX_ITERATIONS = 100  # n_iter: each iteration is one queued job, so fair share still holds


def sampler_of(name: str | None, scheduler: str | None) -> tuple[str, str | None]:
    """(sampler, schedule type) for A1111 v1.9's `sampler_name` and `scheduler`.

    As A1111's API: "Euler" when none is named, and no scheduler is v1.9's "Automatic" (the
    sampler's own: Karras for "DPM++ 2M"), not the chat's pre-v1.9 reading of a bare name; an
    old name that carries its schedule ("DPM++ 2M Karras") keeps it. Unknown names of either
    are refused at the door (`engine.checks`), listing the choices.
    """
    sampler = name or "Euler"
    if scheduler is None:
        return sampler, (None if carries_schedule(sampler) else AUTOMATIC)
    return sampler, scheduler


def _unless_same(value: str | None, same: str) -> str | None:
    return None if value == same else value


def _same(pair: tuple[str, str | None]) -> tuple[str, str]:
    """A (sampler, schedule type) pair as what it runs, to compare two spellings."""
    row = run_row(*pair)
    return row.function, row.schedule


def decode_picture(value: str, name: str) -> bytes:
    """A picture as A1111 clients send it: plain base64 or a `data:…;base64,` URL."""
    if value.startswith("data:"):
        header, _, value = value.partition(",")
        if not header.endswith(";base64"):
            raise invalid(f"{name} must be a base64 data URL (data:image/png;base64,…)")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"{name} is not base64 (nor a data:image/…;base64, URL)") from None


def base_request(
    body: Txt2Img | Img2Img, options: ApiOptions, requester: str, model: str | None
) -> GenerationRequest:
    """The first iteration's request (no picture yet; seeds as sent, -1 = None)."""
    _refuse_unsupported(body)
    changes: dict[str, Any] = {
        "clip_skip": options["CLIP_stop_at_last_layers"],
        "ensd": options["eta_noise_seed_delta"],
        "rng": options["randn_source"],
        "emphasis": options["emphasis"],
    }
    vae: str | None = None
    for key, value in (body.override_settings or {}).items():
        if key == "sd_model_checkpoint":
            model = checkpoint_name(value)
        elif key == "sd_vae":
            if not isinstance(value, str):
                raise invalid(f"override_settings.sd_vae must be a string, not {value!r}")
            vae = value
        elif key in OVERRIDES:
            changes[OVERRIDES[key]] = check_option(key, value)
    hires: dict[str, Any] = {}
    sampler, schedule_type = sampler_of(body.sampler_name or body.sampler_index, body.scheduler)
    if isinstance(body, Txt2Img) and body.enable_hr:
        _refuse_hires_changes(body, (sampler, schedule_type), model)
        hires = {
            "enable_hr": True,
            "hr_scale": body.hr_scale,
            "hr_upscaler": body.hr_upscaler or "Latent",
            "hr_second_pass_steps": body.hr_second_pass_steps,
            # A1111's txt2img default; a client's 0 is a pass that changes nothing.
            "denoising_strength": 0.75
            if body.denoising_strength is None
            else body.denoising_strength,
        }
    elif isinstance(body, Img2Img):
        hires = {
            "denoising_strength": body.denoising_strength,
            "resize_mode": body.resize_mode,
            "mask_blur": _mask_blur(body),
            "inpainting_fill": body.inpainting_fill,
            "inpaint_full_res": body.inpaint_full_res,
            "inpaint_full_res_padding": body.inpaint_full_res_padding,
        }
    return GenerationRequest(
        prompt=body.prompt,
        negative_prompt=body.negative_prompt,
        width=body.width,
        height=body.height,
        num_inference_steps=body.steps,
        guidance_scale=body.cfg_scale,
        seed=None if body.seed == -1 else body.seed,
        sampler=sampler,
        schedule_type=schedule_type,
        model=model,
        batch_size=body.batch_size,
        requester=requester,
        subseed=None if body.subseed == -1 else body.subseed,
        subseed_strength=body.subseed_strength,
        seed_resize_from_w=max(body.seed_resize_from_w, 0),
        seed_resize_from_h=max(body.seed_resize_from_h, 0),
        vae=vae,
        **changes,
        **hires,
    )


def checkpoint_name(value: Any) -> str:
    """A1111's checkpoint title ("name.safetensors [hash]") or name → the registry's name."""
    if not isinstance(value, str) or not value.strip():
        raise invalid(f"sd_model_checkpoint must be a model's name, not {value!r}")
    name = value.strip()
    if name.endswith("]") and " [" in name:
        name = name[: name.rindex(" [")]
    for suffix in (".safetensors", ".ckpt"):
        name = name.removesuffix(suffix)
    return name


def iterations(first: GenerationRequest, n_iter: int) -> list[GenerationRequest]:
    """One request per A1111 iteration: seeds go on from the last batch's (A1111's
    `seed + n·batch_size`); a -1 seed becomes one concrete seed for them all."""
    if not 1 <= n_iter <= MAX_ITERATIONS:
        raise invalid(f"n_iter {n_iter} is not allowed: use 1 to {MAX_ITERATIONS}")
    seed = random.randrange(2**32) if first.seed is None else first.seed
    subseed = random.randrange(2**32) if first.subseed is None else first.subseed
    size = first.batch_size
    return [
        dataclasses.replace(
            first,
            seed=(seed + n * size) % 2**32,
            subseed=(subseed + n * size) % 2**32 if first.subseed_strength else first.subseed,
        )
        for n in range(n_iter)
    ]


def answer(
    body: Txt2Img | Img2Img, results: list[GenerationResult], started: float
) -> dict[str, Any]:
    """A1111's answer: PNGs (with their infotext), the request echoed, and `info`."""
    parameters = body.model_dump()
    if isinstance(body, Img2Img):  # A1111 leaves the pictures out of the echo
        parameters.update(init_images=None, mask=None)
    images = [base64.b64encode(r.png).decode("ascii") for r in results]
    return {
        "images": images if body.send_images else [],
        "parameters": parameters,
        "info": json.dumps(info(body, results, started), ensure_ascii=False),
    }


def info(
    body: Txt2Img | Img2Img, results: list[GenerationResult], started: float
) -> dict[str, Any]:
    """A1111's `Processed.js()` keys, from what was drawn (the request, if nothing was)."""
    first = results[0].request if results else None
    params = parse_infotext(results[0].infotext).params if results else {}
    seeds = [r.seed for r in results]
    subseeds = [
        (r.request.subseed or 0) + i % max(r.request.batch_size, 1)
        if r.request.subseed_strength
        else r.seed
        for i, r in enumerate(results)
    ]
    return {
        "prompt": body.prompt,
        "all_prompts": [body.prompt] * len(results),
        "negative_prompt": body.negative_prompt,
        "all_negative_prompts": [body.negative_prompt] * len(results),
        "seed": seeds[0] if seeds else body.seed,
        "all_seeds": seeds,
        "subseed": subseeds[0] if subseeds else body.subseed,
        "all_subseeds": subseeds,
        "subseed_strength": body.subseed_strength,
        "width": first.width if first else body.width,
        "height": first.height if first else body.height,
        "sampler_name": first.sampler if first else body.sampler_name or body.sampler_index,
        "cfg_scale": first.guidance_scale if first else body.cfg_scale,
        "steps": first.num_inference_steps if first else body.steps,
        "batch_size": body.batch_size,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": first.model if first else None,
        "sd_model_hash": params.get("Model hash"),
        "sd_vae_name": params.get("VAE"),
        "sd_vae_hash": params.get("VAE hash"),
        "seed_resize_from_w": body.seed_resize_from_w,
        "seed_resize_from_h": body.seed_resize_from_h,
        "denoising_strength": first.denoising_strength if first else None,
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": [r.infotext for r in results],
        "styles": body.styles or [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(started)),
        "clip_skip": first.clip_skip if first else None,
        "is_using_inpainting_conditioning": False,
        "version": f"aidraw {__version__}",
    }


def _refuse_unsupported(body: Txt2Img | Img2Img) -> None:
    """A1111 features the engine has not: refused by name rather than ignored."""
    if body.restore_faces:
        raise invalid("restore_faces is not available here (no face restoration model)")
    if body.tiling:
        raise invalid("tiling is not available here")
    if body.styles:
        raise invalid(f"styles {body.styles!r}: there are no saved styles here")
    if body.script_name is not None:
        raise invalid(f"script {body.script_name!r} is not available: there are no scripts")
    if body.alwayson_scripts:
        names = ", ".join(body.alwayson_scripts)
        raise invalid(f"alwayson_scripts ({names}) are not available: there are no scripts")
    if isinstance(body, Img2Img) and body.inpainting_mask_invert:
        raise invalid("inpainting_mask_invert is not available: send the mask inverted")


def _refuse_hires_changes(
    body: Txt2Img, sampler: tuple[str, str | None], model: str | None
) -> None:
    """A1111's hires pass may change sampler, model or prompt; ours repeats the first's."""
    if body.hr_resize_x or body.hr_resize_y:
        raise invalid("hr_resize_x/hr_resize_y are not available: use hr_scale (1 to 4)")
    # A1111's "Use same sampler" / "Use same scheduler" (its UI's values) mean none.
    hr_sampler = _unless_same(body.hr_sampler_name, "Use same sampler")
    hr_scheduler = _unless_same(body.hr_scheduler, "Use same scheduler")
    if (hr_sampler or hr_scheduler) and _same(
        sampler_of(hr_sampler or sampler[0], hr_scheduler or body.scheduler)
    ) != _same(sampler):
        raise invalid("hr_sampler_name: the hires pass uses the first pass's sampler here")
    named = body.hr_checkpoint_name
    if named and named != "Use same checkpoint" and checkpoint_name(named) != model:
        raise invalid("hr_checkpoint_name: the hires pass uses the first pass's model here")
    for field, text, first in (
        ("hr_prompt", body.hr_prompt, body.prompt),
        ("hr_negative_prompt", body.hr_negative_prompt, body.negative_prompt),
    ):
        if text and text != first:
            raise invalid(f"{field}: the hires pass uses the first pass's prompt here")


def _mask_blur(body: Img2Img) -> int:
    if body.mask_blur is not None:
        return body.mask_blur
    if body.mask_blur_x != body.mask_blur_y:
        raise invalid("mask_blur_x and mask_blur_y must be equal here (one blur for both)")
    return body.mask_blur_x
