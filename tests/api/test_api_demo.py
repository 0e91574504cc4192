"""The A1111 API on the demo model, driven by the real `webuiapi` client (in a thread: it is
synchronous) and by plain HTTP shaped like A1111's own API tests: A1111's defaults, the chat's
infotext for the same request, img2img with data URLs and a mask, Extras, PNG Info, options."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import webuiapi
from PIL import Image

from bot.parse import read_request
from engine.request import GenerationRequest
from tests.api.harness import TINY, Api, b64_png, png_of

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


async def client(api: Api) -> webuiapi.WebUIApi:
    """The client, made in a thread: it asks the server for its scripts as it is made."""
    assert api.server is not None
    port = api.server.port
    return await asyncio.to_thread(
        webuiapi.WebUIApi, host="127.0.0.1", port=port, sampler="Euler", steps=2
    )


async def test_txt2img_with_the_webuiapi_client_and_nai_settings(
    api: Api, demo_models_dir: Path
) -> None:
    await api.start(demo_models=demo_models_dir)
    # The chat's noise source off CUDA is NV (A1111's CPU copy of CUDA's); the API's is A1111's
    # "GPU" unless asked.
    nai = {"CLIP_stop_at_last_layers": 2, "eta_noise_seed_delta": 31337, "randn_source": "NV"}
    result = await asyncio.to_thread(
        (await client(api)).txt2img,
        prompt="1girl, smile, (silver hair:1.2)",
        negative_prompt="lowres",
        seed=77,
        width=64,
        height=64,
        steps=3,
        cfg_scale=11,
        sampler_name="Euler a",
        batch_size=2,
        override_settings=nai,
    )
    assert [image.size for image in result.images] == [(64, 64), (64, 64)]
    info = result.info
    assert info["seed"] == 77 and info["all_seeds"] == [77, 78]
    assert info["sampler_name"] == "Euler a" and info["cfg_scale"] == 11
    assert info["clip_skip"] == 2 and info["steps"] == 3
    # Each PNG carries its infotext, which `info` repeats; the chat writes the same text.
    texts = [image.info["parameters"] for image in result.images]
    assert info["infotexts"] == texts
    assert "Clip skip: 2" in texts[0] and "ENSD: 31337" in texts[0]
    assert result.parameters["prompt"] == "1girl, smile, (silver hair:1.2)"
    chat = read_request(
        "1girl, smile, (silver hair:1.2) --neg lowres --seed 77 --size 64x64 --steps 3 "
        "--scale 11 --sampler 'Euler a' --n 2 --clip-skip 2 --ensd 31337 --no-quality --uc none",
        GenerationRequest(prompt=""),
        "cli",
    ).request
    assert api.engine is not None
    drawn = await api.engine.submit(chat).result()
    assert [r.infotext for r in drawn] == texts


async def test_a1111_defaults_and_same_seed_same_pixels(api: Api, demo_models_dir: Path) -> None:
    await api.start(demo_models=demo_models_dir)
    body = {"prompt": "1girl", "width": 64, "height": 64, "steps": 2, "seed": 5}
    first = await api.call("POST", "/sdapi/v1/txt2img", body)
    info = json.loads(first["info"])
    # A1111's API defaults, not the chat's NAI ones: Euler, CFG 7, clip skip 1, ENSD 0.
    assert (info["sampler_name"], info["cfg_scale"], info["clip_skip"]) == ("Euler", 7.0, 1)
    text = info["infotexts"][0]
    assert "Sampler: Euler, Schedule type: Automatic, CFG scale: 7," in text
    assert "ENSD" not in text and "Clip skip" not in text
    assert text.startswith("1girl\n")  # the prompt as sent: no quality tags, no UC preset
    again = await api.call("POST", "/sdapi/v1/txt2img", body)
    assert np.array_equal(
        np.asarray(png_of(first["images"][0])), np.asarray(png_of(again["images"][0]))
    )
    # seed -1 comes back as the seed drawn; n_iter goes on from the last batch's seeds.
    random = await api.call(
        "POST", "/sdapi/v1/txt2img", {**body, "seed": -1, "n_iter": 2, "batch_size": 1}
    )
    seeds = json.loads(random["info"])["all_seeds"]
    assert seeds[1] == seeds[0] + 1 and len(random["images"]) == 2


async def test_a_sampler_without_a_scheduler_is_a1111_v19s_automatic(
    api: Api, demo_models_dir: Path
) -> None:
    """A1111 v1.9's API runs "DPM++ 2M" on its own Karras schedule; a scheduler is honoured;
    an old name keeps the schedule it carries; the listings are v1.9.4's."""
    await api.start(demo_models=demo_models_dir)
    body = {"prompt": "1girl", "width": 64, "height": 64, "steps": 3, "seed": 5}
    drawn = {}
    for sampler, scheduler in (
        ("DPM++ 2M", None),
        ("DPM++ 2M", "karras"),
        ("DPM++ 2M", "Uniform"),
        ("DPM++ 2M Karras", None),
    ):
        asked = {**body, "sampler_name": sampler} | ({"scheduler": scheduler} if scheduler else {})
        answer = await api.call("POST", "/sdapi/v1/txt2img", asked)
        drawn[sampler, scheduler] = answer
    karras = json.loads(drawn["DPM++ 2M", None]["info"])["infotexts"][0]
    assert "Sampler: DPM++ 2M, Schedule type: Karras," in karras
    uniform = json.loads(drawn["DPM++ 2M", "Uniform"]["info"])["infotexts"][0]
    assert "Sampler: DPM++ 2M, Schedule type: Uniform," in uniform
    pixels = {key: np.asarray(png_of(a["images"][0])) for key, a in drawn.items()}
    assert np.array_equal(pixels["DPM++ 2M", None], pixels["DPM++ 2M", "karras"])
    assert np.array_equal(pixels["DPM++ 2M", None], pixels["DPM++ 2M Karras", None])
    assert not np.array_equal(pixels["DPM++ 2M", None], pixels["DPM++ 2M", "Uniform"])
    samplers = await api.call("GET", "/sdapi/v1/samplers")
    assert len(samplers) == 19 and "DPM++ 2M Karras" not in [s["name"] for s in samplers]
    assert {"name": "DPM++ 2M", "aliases": ["k_dpmpp_2m"], "options": {"scheduler": "karras"}} in (
        samplers
    )
    schedulers = await api.call("GET", "/sdapi/v1/schedulers")
    assert [s["label"] for s in schedulers][:3] == ["Automatic", "Uniform", "Karras"]


async def test_img2img_data_urls_mask_extras_and_png_info(api: Api, demo_models_dir: Path) -> None:
    await api.start(demo_models=demo_models_dir)
    picture = Image.new("RGBA", (64, 64), (200, 40, 90, 128))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    body = {
        **TINY,
        "init_images": ["data:image/png;base64," + b64_png(picture)],
        "mask": b64_png(mask),
        "denoising_strength": 0.6,
        "inpainting_fill": 1,
        "eta": 0.5,  # unknown fields are ignored
        "include_init_images": False,
    }
    drawn = await api.call("POST", "/sdapi/v1/img2img", body)
    assert png_of(drawn["images"][0]).size == (64, 64)
    assert drawn["parameters"]["init_images"] is None
    assert "Denoising strength: 0.6" in json.loads(drawn["info"])["infotexts"][0]
    sdk = await client(api)
    info = await asyncio.to_thread(sdk.png_info, png_of(drawn["images"][0]))
    assert info.info == json.loads(drawn["info"])["infotexts"][0]
    bigger = await asyncio.to_thread(
        sdk.extra_single_image, picture, upscaler_1="Lanczos", upscaling_resize=2
    )
    assert bigger.image.size == (128, 128)
    same = await asyncio.to_thread(sdk.extra_single_image, picture)  # upscaler_1 "None"
    assert same.image.size == (64, 64)


async def test_options_set_the_api_defaults_and_the_model(api: Api, demo_models_dir: Path) -> None:
    await api.start(demo_models=demo_models_dir)
    options = await api.call("GET", "/sdapi/v1/options")
    assert options["sd_model_checkpoint"] == "aidraw-demo"
    assert options["CLIP_stop_at_last_layers"] == 1 and options["eta_noise_seed_delta"] == 0
    assert "send_seed" in options
    await api.call("POST", "/sdapi/v1/options", {"CLIP_stop_at_last_layers": 2})
    drawn = await api.call("POST", "/sdapi/v1/txt2img", TINY)
    assert "Clip skip: 2" in json.loads(drawn["info"])["infotexts"][0]
    kept = json.loads((api.tmp_path / "data" / "api_options.json").read_text())
    assert kept == {"CLIP_stop_at_last_layers": 2}
    missing = await api.call(
        "POST", "/sdapi/v1/options", {"sd_model_checkpoint": "nope"}, status=404
    )
    assert "aidraw-demo" in missing["detail"]
    await api.call("POST", "/sdapi/v1/options", {"sd_model_checkpoint": "aidraw-demo"})
    models: list[dict[str, Any]] = await api.call("GET", "/sdapi/v1/sd-models")
    assert [m["model_name"] for m in models] == ["aidraw-demo"]


async def test_img2img_with_the_webuiapi_client(api: Api, demo_models_dir: Path) -> None:
    await api.start(demo_models=demo_models_dir)
    picture = Image.new("RGB", (64, 64), (200, 40, 90))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    sdk = await client(api)
    result = await asyncio.to_thread(
        sdk.img2img,
        images=[picture],
        mask_image=mask,
        prompt="1girl, smile",
        seed=9,
        width=64,
        height=64,
        steps=4,
        denoising_strength=0.5,
    )
    [image] = result.images
    text = image.info["parameters"]
    assert image.size == (64, 64) and result.info["infotexts"] == [text]
    assert "Denoising strength: 0.5" in text and "Mask blur: 4" in text and "Seed: 9," in text
    # Outside the mask the picture is kept (A1111 pastes the original back there).
    pixels = np.asarray(image.convert("RGB")).astype(int)
    assert np.abs(pixels[:8, :8] - [200, 40, 90]).max() <= 2


async def test_the_vae_option_and_override(
    api: Api, demo_models_dir: Path, tmp_path: Path, demo_model: Any
) -> None:
    from tests.addon_files import write_vae

    models = tmp_path / "models"
    shutil.copytree(demo_models_dir, models)
    write_vae(models / "VAE" / "warm.safetensors", demo_model.pipe, shift=0.05)
    await api.start(demo_models=models)
    assert [v["model_name"] for v in await api.call("GET", "/sdapi/v1/sd-vae")] == [
        "warm.safetensors"
    ]
    plain = await api.call("POST", "/sdapi/v1/txt2img", TINY)
    warm = await api.call(
        "POST", "/sdapi/v1/txt2img", {**TINY, "override_settings": {"sd_vae": "warm.safetensors"}}
    )
    assert "VAE: warm.safetensors" in json.loads(warm["info"])["infotexts"][0]
    assert "VAE:" not in json.loads(plain["info"])["infotexts"][0]
    assert not np.array_equal(
        np.asarray(png_of(plain["images"][0])), np.asarray(png_of(warm["images"][0]))
    )
    await api.call("POST", "/sdapi/v1/options", {"sd_vae": "warm.safetensors"})
    assert (await api.call("GET", "/sdapi/v1/options"))["sd_vae"] == "warm.safetensors"
    again = await api.call("POST", "/sdapi/v1/txt2img", TINY)  # the option: every request
    assert json.loads(again["info"])["infotexts"] == json.loads(warm["info"])["infotexts"]
    bad = await api.call("POST", "/sdapi/v1/options", {"sd_vae": "nope.pt"}, status=404)
    assert "warm.safetensors" in bad["detail"]
