"""NovelAI (v1) presets: quality tags, undesired-content (UC) presets, resolution names.

Texts from shared/notes/a1111-nai.md §5 (the NAI v1 website's own strings).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from engine.errors import InvalidRequest

# NAI's "Add Quality Tags" prepends these (koishi appends them instead, which is not NAI's order).
QUALITY_TAGS = "masterpiece, best quality, "

LOW_QUALITY_BAD_ANATOMY = "Low Quality + Bad Anatomy"
UC_PRESETS: dict[str, str] = {
    LOW_QUALITY_BAD_ANATOMY: (
        "lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, "
        "fewer digits, cropped, worst quality, low quality, normal quality, jpeg artifacts, "
        "signature, watermark, username, blurry"
    ),
    "Low Quality": (
        "lowres, text, cropped, worst quality, low quality, normal quality, jpeg artifacts, "
        "signature, watermark, username, blurry"
    ),
    "None": "",
}
DEFAULT_UC_PRESET = LOW_QUALITY_BAD_ANATOMY
# What users type for each preset, after dropping case, spaces and punctuation.
_UC_ALIASES = {
    "lowqualitybadanatomy": LOW_QUALITY_BAD_ANATOMY,
    "lqba": LOW_QUALITY_BAD_ANATOMY,
    "lowquality": "Low Quality",
    "lq": "Low Quality",
    "none": "None",
    "off": "None",
}

# NAI v1's size presets (width, height); "portrait" etc. are its "Normal" row.
NAI_SIZES: dict[str, tuple[int, int]] = {
    "portrait": (512, 768),
    "landscape": (768, 512),
    "square": (640, 640),
    "small-portrait": (384, 640),
    "small-landscape": (640, 384),
    "small-square": (512, 512),
    "large-portrait": (512, 1024),
    "large-landscape": (1024, 512),
    "large-square": (1024, 1024),
    "wallpaper-portrait": (1088, 1920),
    "wallpaper-landscape": (1920, 1088),
}
_SIZE_CLASSES = ("small", "normal", "large", "wallpaper")
_ORIENTATIONS = ("portrait", "landscape", "square")


@dataclass(frozen=True)
class ModelPresets:
    """A model's own presets (its sidecar's `[sizes]` and `[prompt]`, SDXL's buckets): where
    a request used NAI's preset (`size_name`, `preset_quality`, `preset_negative`), the door
    puts the model's in its place. None or a missing size: NAI's stays."""

    sizes: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    quality_tags: str | None = None  # in place of QUALITY_TAGS, e.g. "masterpiece, best quality, "
    negative: str | None = None  # in place of the UC preset's text

    def apply(
        self, prompt: str, negative_prompt: str, quality: bool, uc_preset: str | None
    ) -> tuple[str, str]:
        """The prompts with NAI's quality tags (`quality`: the parser added them) and UC
        preset text (`uc_preset`: its name) swapped for this model's own."""
        if quality and self.quality_tags is not None and prompt.startswith(QUALITY_TAGS):
            prompt = self.quality_tags + prompt[len(QUALITY_TAGS) :]
        text = UC_PRESETS.get(uc_preset or "", "")
        if text and self.negative is not None and negative_prompt.startswith(text):
            rest = negative_prompt[len(text) :]
            if self.negative and rest.startswith(", "):
                negative_prompt = self.negative + rest
            else:
                negative_prompt = self.negative + rest.removeprefix(", ")
        return prompt, negative_prompt


NAI_PRESETS = ModelPresets()


def with_quality_tags(prompt: str) -> str:
    """NAI's "Add Quality Tags": `masterpiece, best quality, ` before the prompt."""
    return QUALITY_TAGS + prompt


def uc_preset_name(name: str) -> str:
    """The preset a user means: "lqba", "LQ+BA", "low quality", "none" … → its NAI name."""
    key = re.sub(r"[^a-z]", "", name.lower())
    if key in _UC_ALIASES:
        return _UC_ALIASES[key]
    lqba, lq, none = f'"{LOW_QUALITY_BAD_ANATOMY}" (lqba)', '"Low Quality" (lq)', '"None"'
    raise InvalidRequest(
        f"Unknown undesired-content preset {name!r}: use {lqba}, {lq} or {none}.",
        field="uc_preset",
        key="unknown_uc_preset",
        name=name,
        choices=[lqba, lq, none],
    )


def with_uc_preset(negative_prompt: str, preset: str) -> str:
    """The preset's text, then the user's negative prompt (NAI's order)."""
    text = UC_PRESETS[uc_preset_name(preset)]
    if text and negative_prompt:
        return f"{text}, {negative_prompt}"
    return text or negative_prompt


def uc_preset_of(negative_prompt: str) -> tuple[str | None, str]:
    """(the UC preset a negative prompt starts with, the rest): the inverse of `with_uc_preset`,
    so a caption can name the preset instead of repeating its text."""
    # Longest first: no preset's text may hide a longer one that starts the same way.
    for name, preset in sorted(UC_PRESETS.items(), key=lambda item: -len(item[1])):
        if not preset:
            continue
        if negative_prompt == preset:
            return name, ""
        if negative_prompt.startswith(preset + ", "):
            return name, negative_prompt[len(preset) + 2 :]
    return None, negative_prompt


def nai_size(name: str) -> tuple[int, int]:
    """(width, height) of a NAI size name: "portrait", "large landscape", "wallpaper-portrait"…"""
    return NAI_SIZES[size_key(name)]


def size_key(name: str) -> str:
    """The NAI_SIZES key a size name means ("Large Portrait" → "large-portrait")."""
    words = [w for w in re.split(r"[\s_\-()]+", name.lower()) if w]
    size_class = [w for w in words if w in _SIZE_CLASSES]
    orientation = [w for w in words if w in _ORIENTATIONS]
    if len(words) == len(size_class) + len(orientation) and len(orientation) == 1 >= len(
        size_class
    ):
        chosen = size_class[0] if size_class else "normal"
        key = orientation[0] if chosen == "normal" else f"{chosen}-{orientation[0]}"
        if key in NAI_SIZES:
            return key
    raise InvalidRequest(
        f"Unknown size {name!r}: use WIDTHxHEIGHT or one of {', '.join(NAI_SIZES)}.",
        field="size",
        key="unknown_size",
        name=name,
        sizes=list(NAI_SIZES),
    )


def nai_size_names(max_pixels: int | None = None) -> list[str]:
    """The NAI size names, only those within `max_pixels` if given."""
    return [n for n, (w, h) in NAI_SIZES.items() if max_pixels is None or w * h <= max_pixels]
