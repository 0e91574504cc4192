"""A1111 infotext: writing (keys, order, quoting), parsing (A1111, NovelAI PNGs), read-back."""

from __future__ import annotations

import dataclasses
import io
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from engine.errors import InvalidRequest
from engine.infotext import (
    create_infotext,
    format_infotext,
    infotext_from_image,
    parse_infotext,
    quote,
    request_from_infotext,
    sampler_from_infotext,
    unquote,
)
from engine.request import GenerationRequest
from engine.sampling.samplers import infotext_sampler

# A1111 v1.9.4 processing.create_infotext, the keys we can write, in its order.
A1111_ORDER = [
    "Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model hash", "Model",
    "Variation seed", "Variation seed strength", "Seed resize from", "Clip skip", "ENSD", "RNG",
    "Downcast alphas_cumprod", "Version",
]  # fmt: skip

# A1111 modules/infotext_utils.py, parse_generation_parameters' docstring.
A1111_DOCSTRING = """\
girl with an artist's beret, determined, blue eyes, desert scene, computer monitors, heavy makeup, by Alphonse Mucha and Charlie Bowater, ((eyeshadow)), (coquettish), detailed, intricate
Negative prompt: ugly, fat, obese, chubby, (((deformed))), [blurry], bad anatomy, disfigured, poorly drawn face, mutation, mutated, (extra_limb), (ugly), (poorly drawn hands), messy drawing
Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b"""  # noqa: E501

# The NAI-leak "Euler a Asuka" A1111 equivalent (shared/notes/a1111-nai.md §4), whitespace as found.
ASUKA = """\
masterpiece portrait of smiling Asuka \\(evangelion\\), evangelion \\(Hideaki\\), caustics, textile shading, high resolution illustration, blue eyes, contempt, feminine, woman disdain, disgust, no pupils, hair over face,orange hair,  long hair, red suit, ilya kuvshinov
Negative prompt: nsfw, lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, cropped, worst quality, low quality, normal quality, jpeg artifacts, signature, watermark, username, blurry, headdress, loli,
Steps: 28, Sampler: Euler a, CFG scale: 12, Seed: 2870305590, Size: 512x512, Model hash: 925997e9, Clip skip: 2, ENSD: 31337"""  # noqa: E501

RESOLVED = GenerationRequest(
    prompt="1girl, (silver hair:1.2), smile",
    negative_prompt="lowres, bad anatomy",
    width=512,
    height=768,
    num_inference_steps=28,
    guidance_scale=11.0,
    seed=1234,
    sampler="Euler a",
    clip_skip=2,
    ensd=31337,
    rng="GPU",
)


def write(request: GenerationRequest, **overrides: Any) -> str:
    kwargs: dict[str, Any] = {
        "seed": request.seed,
        "subseed": request.subseed,
        "model_hash": "80ec94bbee",
        "model_name": "aidraw-demo",
        "uses_ensd": True,
        "sampler": infotext_sampler(request.sampler or "", request.schedule_type),
        "version": "aidraw 0.1.0",
    }
    return create_infotext(request, **(kwargs | overrides))


def params_line(text: str) -> str:
    return text.splitlines()[-1]


# --- writing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("plain", "plain"),
        ("a, b", '"a, b"'),
        ("key: value", '"key: value"'),
        ("two\nlines", '"two\\nlines"'),
        ('say "hi", ok', '"say \\"hi\\", ok"'),
        ("初音ミク, smile", '"初音ミク, smile"'),  # ensure_ascii=False, as A1111
        (12, "12"),
    ],
)
def test_quoting_follows_a1111(value: object, written: str) -> None:
    assert quote(value) == written
    assert unquote(written) == str(value)


def test_the_default_line_is_a1111s() -> None:
    text = write(RESOLVED)
    assert text == (
        "1girl, (silver hair:1.2), smile\n"
        "Negative prompt: lowres, bad anatomy\n"
        "Steps: 28, Sampler: Euler a, Schedule type: Automatic, CFG scale: 11, Seed: 1234, "
        "Size: 512x768, "
        "Model hash: 80ec94bbee, Model: aidraw-demo, Clip skip: 2, ENSD: 31337, "
        "Version: aidraw 0.1.0"
    )


def test_every_key_in_a1111s_order() -> None:
    request = dataclasses.replace(
        RESOLVED, subseed=77, subseed_strength=0.25, seed_resize_from_w=512,
        seed_resize_from_h=512, rng="NV", downcast_alphas_cumprod=True, sampler="DPM2 a",
    )  # fmt: skip
    text = write(request, subseed=78)
    line = params_line(text)
    written = [pair.split(": ")[0] for pair in line.split(", ")]
    assert written == A1111_ORDER
    assert "Sampler: DPM2 a, Schedule type: Uniform," in line
    assert "Variation seed: 78, Variation seed strength: 0.25, Seed resize from: 512x512," in line
    assert "RNG: NV, Downcast alphas_cumprod: True, Version: aidraw 0.1.0" in line
    emphasis = params_line(write(dataclasses.replace(request, emphasis="No norm")))
    assert "RNG: NV, Emphasis: No norm, Downcast alphas_cumprod: True," in emphasis
    assert "Emphasis" not in write(dataclasses.replace(request, emphasis="Original"))


@pytest.mark.parametrize(
    ("changes", "present", "absent"),
    [
        ({"clip_skip": 1}, [], ["Clip skip"]),
        ({"clip_skip": 3}, ["Clip skip: 3"], []),
        ({"ensd": 0}, [], ["ENSD"]),
        ({"rng": "GPU"}, [], ["RNG"]),
        ({"rng": "CPU"}, ["RNG: CPU"], []),
        ({"guidance_scale": 7.5}, ["CFG scale: 7.5"], []),
        ({"negative_prompt": ""}, [], ["Negative prompt:"]),
        ({"subseed": 5, "subseed_strength": 0.0}, [], ["Variation seed"]),
        ({"seed_resize_from_w": 512, "seed_resize_from_h": 0}, [], ["Seed resize from"]),
    ],
)
def test_keys_appear_only_when_a1111_writes_them(
    changes: dict[str, Any], present: list[str], absent: list[str]
) -> None:
    text = write(dataclasses.replace(RESOLVED, **changes))
    for item in present:
        assert item in text
    for item in absent:
        assert item not in text


def test_ensd_only_for_samplers_that_use_it() -> None:
    assert "ENSD" not in write(dataclasses.replace(RESOLVED, sampler="Euler"), uses_ensd=False)


def test_values_with_commas_are_quoted_in_the_line() -> None:
    text = format_infotext("p", "", {"Steps": 2, "Lora hashes": "a: 1, b: 2", "Tiling": "Tiling"})
    assert text == 'p\nSteps: 2, Lora hashes: "a: 1, b: 2", Tiling'
    assert parse_infotext(text + ", Seed: 1, CFG scale: 7").params["Lora hashes"] == "a: 1, b: 2"


# --- parsing ------------------------------------------------------------------------------------


def test_a1111_docstring_example_parses_into_the_right_request() -> None:
    info = parse_infotext(A1111_DOCSTRING)
    assert info.prompt.startswith("girl with an artist's beret")
    assert info.prompt.endswith("(coquettish), detailed, intricate")
    assert info.negative_prompt.startswith("ugly, fat") and "messy drawing" in info.negative_prompt
    assert info.params["Size-1"] == "512" and info.params["Model hash"] == "45dee52b"
    assert request_from_infotext(A1111_DOCSTRING) == GenerationRequest(
        prompt=info.prompt,
        negative_prompt=info.negative_prompt,
        width=512,
        height=512,
        num_inference_steps=20,
        guidance_scale=7.0,
        seed=965400086,
        sampler="Euler a",
        clip_skip=1,  # A1111: no "Clip skip" means 1
        ensd=0,  # and no "ENSD" means 0
        rng="GPU",  # and no "RNG" means GPU
    )


def test_nai_leak_asuka_infotext() -> None:
    request = request_from_infotext(ASUKA)
    assert request.prompt.startswith("masterpiece portrait of smiling Asuka \\(evangelion\\),")
    assert request.negative_prompt.endswith("headdress, loli,")
    assert (request.num_inference_steps, request.guidance_scale) == (28, 12.0)
    assert request.seed == 2870305590
    assert (request.sampler, request.clip_skip, request.ensd) == ("Euler a", 2, 31337)
    assert (request.width, request.height) == (512, 512)
    assert not request.downcast_alphas_cumprod  # no Version: A1111 applies no back-compat


def test_prompt_and_negative_span_lines() -> None:
    text = "line one\nline two\nNegative prompt: neg one\nneg two\nSteps: 5, Seed: 3, CFG scale: 4"
    info = parse_infotext(text)
    assert (info.prompt, info.negative_prompt) == ("line one\nline two", "neg one\nneg two")


def test_a_last_line_with_fewer_than_3_params_is_prompt_text() -> None:
    info = parse_infotext("a cat\nstyle: oil, mood: calm")
    assert info.prompt == "a cat\nstyle: oil, mood: calm"
    assert info.params == {"Clip skip": "1", "RNG": "GPU"}


def test_hypernet_is_appended_to_the_prompt() -> None:
    text = "cat\nSteps: 5, Seed: 3, CFG scale: 4, Hypernet: anime_3, Hypernet strength: 0.6"
    assert parse_infotext(text).prompt == "cat<hypernet:anime_3:0.6>"


@pytest.mark.parametrize(
    ("version", "downcast"),
    [
        (None, False),
        ("v1.6.0", True),
        ("v1.7.0-224-g1234abc", True),
        ("v1.7.0-225-gcafe123", False),
        ("v1.9.4", False),
        ("1.10.1", False),
        ("aidraw 0.1.0", False),
        ("f0.0.17v1.8.0rc-latest-276-g29be1da7", False),
    ],
)
def test_old_a1111_versions_imply_downcast_alphas_cumprod(
    version: str | None, downcast: bool
) -> None:
    text = "cat\nSteps: 5, Seed: 3, CFG scale: 4" + (f", Version: {version}" if version else "")
    assert request_from_infotext(text).downcast_alphas_cumprod is downcast


@pytest.mark.parametrize(
    ("sampler", "schedule", "ours"),
    [
        ("DPM++ 2M", None, ("DPM++ 2M", None)),  # before v1.9: uniform
        ("DPM++ 2M Karras", None, ("DPM++ 2M Karras", None)),
        ("DPM++ 2M", "Karras", ("DPM++ 2M", "Karras")),
        ("DPM++ 2M", "Automatic", ("DPM++ 2M", "Automatic")),  # v1.9's default: Karras
        ("Euler a", "Automatic", ("Euler a", "Automatic")),
        ("DPM2 a", "karras", ("DPM2 a", "Karras")),  # v1.5-1.8 wrote k_sched_type lower-case
    ],
)
def test_schedule_type_is_read_as_a1111_v19_names_it(
    sampler: str, schedule: str | None, ours: tuple[str, str | None]
) -> None:
    params = {"Sampler": sampler} | ({"Schedule type": schedule} if schedule else {})
    assert sampler_from_infotext(params) == ours


def test_variation_resize_rng_read_back() -> None:
    request = dataclasses.replace(
        RESOLVED, subseed=78, subseed_strength=0.25, seed_resize_from_w=512,
        seed_resize_from_h=640, rng="NV", downcast_alphas_cumprod=True,
    )  # fmt: skip
    again = request_from_infotext(write(request))
    # "Euler a" is written with v1.9's "Schedule type: Automatic": the same schedule.
    assert again == dataclasses.replace(request, model=None, schedule_type="Automatic")


def test_our_own_infotext_round_trips() -> None:
    for sampler, schedule in (("DPM++ 2M", "Uniform"), ("DPM++ 2M", "Karras"), ("DDIM", None)):
        request = dataclasses.replace(
            RESOLVED, sampler=sampler, schedule_type=schedule, ensd=0, clip_skip=1
        )
        text = write(request, uses_ensd=False)
        again = request_from_infotext(text)
        assert dataclasses.replace(again, schedule_type=schedule) == request
        assert again.schedule_type == (schedule or "Automatic")  # DDIM's: written by v1.9
        assert write(again, uses_ensd=False) == text


def test_unreadable_numbers_name_the_key() -> None:
    with pytest.raises(InvalidRequest, match="Steps 'many'"):
        request_from_infotext("cat\nSteps: many, Seed: 3, CFG scale: 4")


def test_request_from_infotext_takes_overrides() -> None:
    request = request_from_infotext(ASUKA, seed=None, requester="telegram:1")
    assert request.seed is None and request.requester == "telegram:1"


# --- images -------------------------------------------------------------------------------------


def png_with(text_chunks: dict[str, str], size: tuple[int, int] = (64, 96)) -> Image.Image:
    info = PngInfo()
    for key, value in text_chunks.items():
        info.add_text(key, value)
    buf = io.BytesIO()
    Image.new("RGB", size).save(buf, format="PNG", pnginfo=info)
    return Image.open(io.BytesIO(buf.getvalue()))


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of every chunk of a PNG file."""
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        chunks.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return chunks


NAI_COMMENT = {
    "steps": 28,
    "sampler": "k_euler_ancestral",
    "seed": 2870305590,
    "strength": 0.7,
    "noise": 0.2,
    "scale": 12.0,
    "uc": "lowres, bad anatomy, bad hands, headdress, loli,",
}
NAI_CHUNKS = {
    "Title": "AI generated image",
    "Description": "masterpiece, best quality, asuka langley sitting cross legged on a chair",
    "Software": "NovelAI",
    "Source": "Stable Diffusion 1D44365E",
    "Comment": json.dumps(NAI_COMMENT),
}


def test_a_novelai_png_reads_as_a1111_would() -> None:
    image = png_with(NAI_CHUNKS, size=(512, 768))
    text = infotext_from_image(image)
    assert text == (
        "masterpiece, best quality, asuka langley sitting cross legged on a chair\n"
        "Negative prompt: lowres, bad anatomy, bad hands, headdress, loli,\n"
        "Steps: 28, Sampler: Euler a, CFG scale: 12.0, Seed: 2870305590, Size: 512x768, "
        "Clip skip: 2, ENSD: 31337"
    )
    assert text is not None
    request = request_from_infotext(text)
    assert request.prompt == NAI_CHUNKS["Description"]
    assert request.negative_prompt == NAI_COMMENT["uc"]
    assert (request.num_inference_steps, request.sampler, request.guidance_scale) == (
        28, "Euler a", 12.0,
    )  # fmt: skip
    assert (request.seed, request.width, request.height) == (2870305590, 512, 768)
    assert (request.clip_skip, request.ensd, request.rng) == (2, 31337, "GPU")


def test_novelai_png_agrees_with_a_third_party_reader() -> None:
    sd_parsers = pytest.importorskip("sd_parsers")
    image = png_with(NAI_CHUNKS, size=(512, 768))
    theirs = sd_parsers.ParserManager().parse(image)
    ours = request_from_infotext(infotext_from_image(image) or "")
    assert theirs is not None and theirs.generator.name == "NOVELAI"
    sampler = theirs.samplers[0]
    assert sampler.prompts[0].value == ours.prompt
    assert sampler.negative_prompts[0].value == ours.negative_prompt
    assert int(sampler.parameters["seed"]) == ours.seed
    assert float(sampler.parameters["cfg_scale"]) == ours.guidance_scale


def test_other_novelai_samplers_and_broken_metadata() -> None:
    comment = NAI_COMMENT | {"sampler": "k_dpmpp_2m", "noise_schedule": "karras"}
    text = infotext_from_image(png_with(NAI_CHUNKS | {"Comment": json.dumps(comment)}))
    assert text is not None and "Sampler: DPM++ 2M Karras," in text
    broken = png_with(NAI_CHUNKS | {"Comment": "{not json"})
    assert infotext_from_image(broken) is None
    assert infotext_from_image(png_with({})) is None


def test_parameters_chunk_wins_and_cjk_goes_into_itxt() -> None:
    text = write(dataclasses.replace(RESOLVED, prompt="初音ミク, smile"))
    info = PngInfo()
    info.add_text("parameters", text)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG", pnginfo=info)
    types = [kind for kind, _ in png_chunks(buf.getvalue())]
    assert b"iTXt" in types and b"tEXt" not in types
    assert infotext_from_image(Image.open(io.BytesIO(buf.getvalue()))) == text
    latin = png_with({"parameters": write(RESOLVED)})
    assert infotext_from_image(latin) == write(RESOLVED)


def test_jpeg_user_comment_is_read() -> None:
    # A1111 writes JPEG/WebP infotext as EXIF UserComment through piexif ("UNICODE" + UTF-16).
    text = write(RESOLVED)
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + text.encode("utf-16-be")
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="JPEG", exif=exif)
    assert infotext_from_image(Image.open(io.BytesIO(buf.getvalue()))) == text


def test_zlib_compressed_parameters_are_read() -> None:
    # zTXt: some tools compress long infotexts.
    text = write(RESOLVED).encode("latin-1")
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    data = buf.getvalue()
    body = b"parameters\x00\x00" + zlib.compress(text)
    chunk = struct.pack(">I", len(body)) + b"zTXt" + body
    chunk += struct.pack(">I", zlib.crc32(b"zTXt" + body) & 0xFFFFFFFF)
    end = data.rindex(b"IEND") - 4
    image = Image.open(io.BytesIO(data[:end] + chunk + data[end:]))
    assert infotext_from_image(image) == text.decode("latin-1")


@pytest.mark.slow
def test_aidraw_draw_reads_back_in_sd_parsers(
    demo_models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sd_parsers = pytest.importorskip("sd_parsers")
    from bot.cli import main

    settings = tmp_path / "settings.toml"
    settings.write_text(f'[engine]\nmodels_dir = "{demo_models_dir}"\n', encoding="utf-8")
    out = tmp_path / "drawn.png"
    text = '1girl, smile, "silver: hair" --seed 4242 --steps 3 --size 64x96 --cfg 6.5 --neg lowres'
    assert main(["--settings", str(settings), "draw", text, "--out", str(out), "--json"]) == 0
    drawn = json.loads(capsys.readouterr().out.splitlines()[0])["request"]
    theirs = sd_parsers.ParserManager().parse(out)
    assert theirs is not None and theirs.generator.name == "AUTOMATIC1111"
    sampler = theirs.samplers[0]
    assert sampler.prompts[0].value == drawn["prompt"]
    assert sampler.negative_prompts[0].value == drawn["negative_prompt"]
    assert sampler.name == drawn["sampler"] == "Euler a"
    assert int(sampler.parameters["seed"]) == drawn["seed"] == 4242
    assert int(sampler.parameters["steps"]) == drawn["num_inference_steps"] == 3
    assert float(sampler.parameters["cfg_scale"]) == drawn["guidance_scale"] == 6.5
    assert theirs.metadata["Size"] == f"{drawn['width']}x{drawn['height']}" == "64x96"
    # And our own reader gives back the request that drew it.
    with Image.open(out) as image:
        again = dataclasses.asdict(request_from_infotext(infotext_from_image(image) or ""))
    for key in ("prompt", "negative_prompt", "width", "height", "num_inference_steps", "seed"):
        assert again[key] == drawn[key], key
    for key in ("guidance_scale", "sampler", "clip_skip", "ensd", "rng", "subseed_strength"):
        assert again[key] == drawn[key], key
