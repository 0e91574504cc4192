"""A1111 "parameters" infotext: write it, read it (A1111 or NovelAI PNGs), turn it into a request.

Rules from A1111 v1.9.4 `modules/processing.py` (create_infotext), `modules/infotext_utils.py`
(parse_generation_parameters), `modules/infotext_versions.py` (backcompat) and `modules/images.py`
(read_info_from_image). shared/notes/a1111-nai.md §4 sums them up.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from engine.errors import InvalidRequest
from engine.request import GenerationRequest
from engine.sampling.samplers import SAMPLERS, canonical_sampler, split_schedule_suffix
from engine.sampling.schedules import schedule_label

if TYPE_CHECKING:
    from PIL import Image

# A1111 `infotext_utils.re_param`: `key: value` pairs; a value is JSON-quoted or runs to a comma.
RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
RE_IMAGESIZE = re.compile(r"^(\d+)x(\d+)$")
# NovelAI's sampler names (PNG `Comment` JSON) → A1111's; A1111 itself knows only some of them.
NOVELAI_SAMPLERS = {
    "k_euler_ancestral": "Euler a",
    "k_euler": "Euler",
    "k_lms": "LMS",
    "k_heun": "Heun",
    "k_dpm_2": "DPM2",
    "k_dpm_2_ancestral": "DPM2 a",
    "k_dpmpp_2s_ancestral": "DPM++ 2S a",
    "k_dpmpp_2m": "DPM++ 2M",
    "k_dpmpp_sde": "DPM++ SDE",
    "ddim": "DDIM",
    "ddim_v3": "DDIM",
}
# A1111's "Masked content" names, by `inpainting_fill` (its img2img UI's radio order).
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")
# Keys A1111 v1.9 writes on its settings line besides `Steps` (`processing.create_infotext` and
# the extensions it ships); one of them next to `Steps: N` marks a pasted settings line.
A1111_KEYS = frozenset(
    {
        "Sampler",
        "Schedule type",
        "CFG scale",
        "Seed",
        "Size-1",
        "Size-2",
        "Model hash",
        "Model",
        "VAE hash",
        "VAE",
        "Variation seed",
        "Variation seed strength",
        "Seed resize from-1",
        "Seed resize from-2",
        "Denoising strength",
        "Conditional mask weight",
        "Mask blur",
        "Inpaint area",
        "Masked area padding",
        "Masked content",
        "Clip skip",
        "ENSD",
        "RNG",
        "Emphasis",
        "Hypernet",
        "Hypernet strength",
        "Lora hashes",
        "TI hashes",
        "Hires upscale",
        "Hires steps",
        "Hires upscaler",
        "Version",
    }
)
_RE_STEPS = re.compile(r"(?:^|,)\s*Steps:")  # a `Steps` key of the line, not inside a weight
# A1111 writes EXIF UserComment (JPEG, WebP) with piexif's "UNICODE" prefix: UTF-16 text.
_EXIF_USER_COMMENT = 0x9286
_EXIF_IFD = 0x8769


class Infotext(NamedTuple):
    """A parsed infotext: prompt, negative prompt, and the `key: value` line as strings."""

    prompt: str
    negative_prompt: str
    params: dict[str, str]


# --- writing ------------------------------------------------------------------------------------


def quote(value: object) -> str:
    """A1111 `infotext_utils.quote`: JSON-quote values holding a comma, newline or colon."""
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    """A1111 `infotext_utils.unquote`: undo quote(); anything not JSON-quoted is returned as is."""
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, str) else text


def format_infotext(prompt: str, negative_prompt: str, params: Mapping[str, object]) -> str:
    """A1111 `create_infotext` layout: prompt, optional `Negative prompt:` line, `k: v` line.

    `params` must already be in A1111's key order; None values are left out, as A1111 does.
    """
    line = ", ".join(
        key if key == value else f"{key}: {quote(value)}"
        for key, value in params.items()
        if value is not None
    )
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{line}".strip()


def format_number(value: float) -> str:
    """A float as A1111 prints it (11.0 → "11", 7.5 → "7.5")."""
    return str(int(value)) if float(value).is_integer() else str(value)


def create_infotext(
    request: GenerationRequest,
    *,
    seed: int,
    subseed: int | None,
    model_hash: str,
    model_name: str,
    uses_ensd: bool,
    sampler: tuple[str, str],
    version: str,
    vae: tuple[str, str] | None = None,
    lora_hashes: str | None = None,
    ti_hashes: str | None = None,
    picture_params: Mapping[str, object] | None = None,
    mask_weight: float | None = None,
) -> str:
    """The infotext of one image of a resolved request, keys in A1111 v1.9's order.

    `vae` is (name, hash) of a VAE file used instead of the checkpoint's own; `lora_hashes`
    and `ti_hashes` are A1111's "name: hash, …" lists of the LoRAs and embeddings used.
    img2img and hires fix write `Denoising strength` (`Size` stays the first pass's size);
    `picture_params` are the inpainting keys `engine.pictures.prepare_picture` gave (`Mask
    blur`, `Inpaint area`, `Masked area padding`, `Masked content`); hires fix writes `Hires
    upscale`, `Hires steps` (if set) and `Hires upscaler`; `mask_weight` is an inpainting
    model's `Conditional mask weight` (A1111's 1.0).

    `seed`/`subseed` are this image's; `uses_ensd` says whether the sampler draws ancestral
    noise (A1111 writes ENSD only then); `sampler` is the v1.9 `Sampler` and `Schedule type`
    (`samplers.infotext_sampler`: "DPM++ 2M Karras" is ("DPM++ 2M", "Automatic")).
    """
    req = request
    assert req.guidance_scale is not None and req.clip_skip is not None
    strength = req.subseed_strength
    resized = req.seed_resize_from_w > 0 and req.seed_resize_from_h > 0
    denoising = req.init_image is not None or req.enable_hr
    hires = req.enable_hr and req.init_image is None
    params: dict[str, object] = {
        "Steps": req.num_inference_steps,
        "Sampler": sampler[0],
        "Schedule type": sampler[1],
        "CFG scale": format_number(req.guidance_scale),
        "Seed": seed,
        "Size": f"{req.width}x{req.height}",
        "Model hash": model_hash,
        "Model": model_name,
        "VAE hash": vae[1] if vae else None,
        "VAE": vae[0] if vae else None,
        "Variation seed": subseed if strength else None,
        "Variation seed strength": format_number(strength) if strength else None,
        "Seed resize from": (
            f"{req.seed_resize_from_w}x{req.seed_resize_from_h}" if resized else None
        ),
        "Denoising strength": (
            format_number(req.denoising_strength)
            if denoising and req.denoising_strength is not None
            else None
        ),
        "Conditional mask weight": mask_weight,
        "Clip skip": req.clip_skip if req.clip_skip > 1 else None,
        "ENSD": req.ensd if uses_ensd and req.ensd else None,
        "RNG": req.rng if req.rng not in (None, "GPU") else None,
        # A1111's extra_generation_params come after its fixed keys, in the order it adds them:
        # img2img's and hires fix's in `init`, before the batch's add-ons.
        **(picture_params or {}),
        "Hires upscale": format_number(req.hr_scale) if hires else None,
        "Hires steps": req.hr_second_pass_steps if hires and req.hr_second_pass_steps else None,
        "Hires upscaler": req.hr_upscaler if hires else None,
        "Lora hashes": lora_hashes,
        "TI hashes": ti_hashes,
        "Emphasis": req.emphasis if req.emphasis not in (None, "Original") else None,
        "Downcast alphas_cumprod": True if req.downcast_alphas_cumprod else None,
        "Version": version,
    }
    return format_infotext(req.prompt, req.negative_prompt, params)


# --- parsing ------------------------------------------------------------------------------------


def parse_infotext(text: str, *, pasted: bool = False) -> Infotext:
    """A1111 `parse_generation_parameters`: prompt lines, `Negative prompt:` lines, parameters.

    The last line is the parameter line only if it holds at least 3 `key: value` pairs. Quoted
    values are unquoted and `WxH` values become `Key-1`/`Key-2`. As A1111 does, a missing
    `Clip skip` means "1" and a missing `RNG` "GPU", a `Hypernet` is appended to the prompt as
    `<hypernet:name:strength>`, and a `Version` older than v1.7.0-225 adds
    `Downcast alphas_cumprod: True`. Unlike A1111 v1.9, a missing `Schedule type` stays missing:
    the sampler name then keeps its pre-v1.9 meaning ("DPM++ 2M" = uniform sigmas).

    `pasted=True` is for text a person typed or pasted into a chat: there the last line is a
    parameter line only if it is A1111's own (`is_settings_line`), so a prompt full of
    `(tag:1.2)` weights or "time: 3pm" stays a prompt; without one, `params` is empty.
    """
    *lines, last = text.strip().split("\n")
    settings = is_settings_line(last) if pasted else len(RE_PARAM.findall(last)) >= 3
    if not settings:
        lines.append(last)
        last = ""
    prompt, negative, done_with_prompt = "", "", False
    for raw in lines:
        line = raw.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    if not settings and pasted:
        return Infotext(prompt, negative, {})
    params = _read_params(last)
    params.setdefault("Clip skip", "1")
    params.setdefault("RNG", "GPU")
    hypernet = params.get("Hypernet")
    if hypernet is not None:
        prompt += f"<hypernet:{hypernet}:{params.get('Hypernet strength', '1.0')}>"
    version = _parse_version(params.get("Version"))
    if version is not None and version < (1, 7, 0, 225):
        params["Downcast alphas_cumprod"] = "True"
    return Infotext(prompt, negative, params)


def is_settings_line(line: str) -> bool:
    """Whether `line` is an A1111 settings line: A1111 always writes `Steps` there, and at least
    one other key it writes (`A1111_KEYS`). Weighted tags such as `(smile:1.2)` or prose such as
    "time: 3pm" never qualify: `Steps` must be a key of its own, not a weighted `(Steps:1.2)`.
    (A bad value, `Steps: x`, is then refused by name, not drawn.)"""
    params = _read_params(line)
    return bool(_RE_STEPS.search(line)) and any(key in A1111_KEYS for key in params)


def _read_params(line: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for key, value in RE_PARAM.findall(line):
        if value and value[0] == '"' and value[-1] == '"':
            value = unquote(value)
        size = RE_IMAGESIZE.match(value)
        if size is not None:
            params[f"{key}-1"], params[f"{key}-2"] = size[1], size[2]
        else:
            params[key] = value
    return params


def _parse_version(text: str | None) -> tuple[int, int, int, int] | None:
    """A1111 `infotext_versions.parse_version` for its own tags: "v1.6.0-2-g4afaaf8a" → (1,6,0,2).

    Anything else (our "aidraw 0.1.0", Forge's "f0.0.17v1.8.0rc-…") gives None, as it does there.
    """
    if text is None:
        return None
    match = re.match(r"([^-]+-[^-]+)-.*", text)
    if match:
        text = match[1]
    parts = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.(\d+))?(?:-(\d+))?", text.strip())
    if parts is None:
        return None
    major, minor, patch, post = (int(p) if p else 0 for p in parts.groups())
    return major, minor, patch, post


def sampler_from_infotext(params: Mapping[str, str]) -> tuple[str | None, str | None]:
    """Our (sampler, schedule type) for an infotext's `Sampler` and `Schedule type`.

    A v1.9 pair is kept as written ("DPM++ 2M", "Karras"), so it is written back identically;
    v1.5-1.8's lower-case names ("karras") read as labels. An old name carrying its schedule
    ("DPM++ 2M Karras", or "Euler Karras", which is no row) wins over a `Schedule type`, as in
    A1111 v1.9.4 `get_sampler_and_scheduler`. Unlike v1.9, a missing `Schedule type` keeps the
    name's pre-v1.9 meaning ("DPM++ 2M" = uniform). Unknown names and types (v1.10's "Align
    Your Steps") are passed on for the door to refuse rather than drawn as "Automatic".
    """
    name = params.get("Sampler")
    if not name:
        return None, None
    text = params.get("Schedule type", "").strip()
    label = (schedule_label(text) or text) if text else None
    try:
        row = SAMPLERS[canonical_sampler(name)]
    except InvalidRequest:  # not a row: maybe a v1.9 name with a schedule at its end
        base, suffix = split_schedule_suffix(name)
        return (base, suffix) if suffix else (name, label)
    return (row.name, None) if row.base != row.name else (row.name, label)


def request_from_infotext(info: Infotext | str, **changes: Any) -> GenerationRequest:
    """The request that reproduces an infotext (A1111's or ours); `changes` override fields.

    Keys A1111 leaves out mean its defaults: no `ENSD` is 0, no `Clip skip` is 1, no `RNG` is
    GPU; no `VAE` is the model's default. Rows whose noise is ENSD's but whose infotext never
    names it (Restart, LCM: no `uses_ensd`) leave the ENSD to the defaults, as A1111's paste
    leaves its setting. LoRAs and hypernetworks are tags in the prompt.
    `Model` is not mapped (model names differ between installs). Raises InvalidRequest
    naming the key whose value cannot be read.
    """
    if isinstance(info, str):
        info = parse_infotext(info)
    p = info.params
    sampler, schedule_type = sampler_from_infotext(p)
    fields: dict[str, Any] = {
        "prompt": info.prompt,
        "negative_prompt": info.negative_prompt,
        "sampler": sampler,
        "schedule_type": schedule_type,
        "num_inference_steps": _number(p, "Steps", int),
        "guidance_scale": _number(p, "CFG scale", float),
        "seed": _number(p, "Seed", int),
        "width": _number(p, "Size-1", int),
        "height": _number(p, "Size-2", int),
        "clip_skip": _number(p, "Clip skip", int),
        "ensd": _ensd(p, sampler),
        "rng": p.get("RNG", "GPU"),
        "subseed": _number(p, "Variation seed", int),
        "subseed_strength": _number(p, "Variation seed strength", float) or 0.0,
        "seed_resize_from_w": _number(p, "Seed resize from-1", int) or 0,
        "seed_resize_from_h": _number(p, "Seed resize from-2", int) or 0,
        "downcast_alphas_cumprod": p.get("Downcast alphas_cumprod", "").lower() == "true",
        "emphasis": p.get("Emphasis"),
        "vae": p.get("VAE"),
        "denoising_strength": _number(p, "Denoising strength", float),
        "inpaint_full_res": p.get("Inpaint area") == "Only masked",
        "enable_hr": "Denoising strength" in p
        and any(k in p for k in ("Hires upscale", "Hires upscaler", "Hires resize-1")),
    }
    # img2img (the picture itself is a change: `init_image=`), inpainting and hires fix, by
    # A1111's paste rules (`ui.py`); a missing key keeps GenerationRequest's (A1111's) default.
    picture = {
        "mask_blur": _number(p, "Mask blur", int),
        "inpainting_fill": _masked_content(p.get("Masked content")),
        "inpaint_full_res_padding": _number(p, "Masked area padding", int),
        "hr_scale": _number(p, "Hires upscale", float),
        "hr_upscaler": p.get("Hires upscaler"),
        "hr_second_pass_steps": _number(p, "Hires steps", int),
    }
    fields.update({k: v for k, v in picture.items() if v is not None})
    if fields["seed"] == -1:
        fields["seed"] = None
    fields.update(changes)
    return GenerationRequest(**fields)


def _masked_content(value: str | None) -> int | None:
    """A1111's `Masked content` name → `inpainting_fill` (its UI's index)."""
    if value is None:
        return None
    try:
        return MASKED_CONTENT.index(value)
    except ValueError:
        raise InvalidRequest(
            f"The infotext's Masked content {value!r} is not one of {', '.join(MASKED_CONTENT)}.",
            field="infotext",
            key="infotext_masked_content",
            value=value,
            choices=list(MASKED_CONTENT),
        ) from None


def _ensd(params: Mapping[str, str], sampler: str | None) -> int | None:
    """The infotext's ENSD; without one, 0, or None (the defaults') for a row that draws
    ENSD-seeded noise but never writes it."""
    ensd: int | None = _number(params, "ENSD", int)
    if ensd is not None:
        return ensd
    try:
        row = SAMPLERS[canonical_sampler(sampler or "")]
    except InvalidRequest:  # the door refuses it
        return 0
    return None if row.noise == "ancestral" and not row.uses_ensd else 0


def _number(params: Mapping[str, str], key: str, kind: type[int] | type[float]) -> Any:
    value = params.get(key)
    if value is None:
        return None
    try:
        return kind(float(value)) if kind is int and "." in value else kind(value)
    except ValueError:
        raise InvalidRequest(
            f"The infotext's {key} {value!r} is not a number.",
            field="infotext",
            key="infotext_not_number",
            name=key,
            value=value,
        ) from None


# --- images -------------------------------------------------------------------------------------


def infotext_from_image(image: Image.Image) -> str | None:
    """An image's generation text in A1111's format, as A1111's PNG Info reads it.

    PNG `parameters` (tEXt, zTXt or iTXt), else EXIF UserComment (A1111's JPEG/WebP), else
    NovelAI's own PNG metadata (`Software: NovelAI`, `Description` = prompt, `Comment` = JSON)
    converted the way A1111 `read_info_from_image` does: NAI ran Clip skip 2 and ENSD 31337.
    """
    chunks = {str(k): v for k, v in image.info.items()}
    # A PNG's `text` also holds text chunks stored after the image data.
    chunks |= {str(k): v for k, v in getattr(image, "text", {}).items()}
    text = chunks.get("parameters")
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not isinstance(text, str):
        text = _exif_user_comment(image)
    if chunks.get("Software") == "NovelAI":
        text = novelai_to_infotext(chunks, image.width, image.height) or text
    return text


def novelai_to_infotext(info: Mapping[str, Any], width: int, height: int) -> str | None:
    """A1111's text for a NovelAI PNG's `Description` and `Comment` (None if they are unusable)."""
    try:
        comment = json.loads(info["Comment"])
        prompt = str(info["Description"])
        sampler = NOVELAI_SAMPLERS.get(str(comment.get("sampler", "")), "Euler a")
        if comment.get("noise_schedule") == "karras" and sampler not in ("Euler a", "DDIM"):
            sampler += " Karras"
        params = (
            f"Steps: {comment['steps']}, Sampler: {sampler}, CFG scale: {comment['scale']}, "
            f"Seed: {comment['seed']}, Size: {width}x{height}, Clip skip: 2, ENSD: 31337"
        )
    except (KeyError, TypeError, ValueError):
        return None
    return f"{prompt}\nNegative prompt: {comment.get('uc', '')}\n{params}"


def _exif_user_comment(image: Image.Image) -> str | None:
    """EXIF UserComment as piexif writes it: an 8-byte charset prefix, then the text."""
    try:
        raw = image.getexif().get_ifd(_EXIF_IFD).get(_EXIF_USER_COMMENT)
    except (AttributeError, KeyError, ValueError, OSError):
        return None
    if isinstance(raw, str):
        return raw or None
    if not isinstance(raw, bytes) or len(raw) < 8:
        return None
    prefix, body = raw[:8], raw[8:]
    if prefix.startswith(b"UNICODE"):
        # piexif writes UTF-16 big-endian unless told otherwise.
        encoding = "utf-16-le" if body[:1] != b"\x00" and body[1:2] == b"\x00" else "utf-16-be"
        return body.decode(encoding, "replace").rstrip("\x00") or None
    return body.decode("utf-8", "replace").rstrip("\x00") or None
