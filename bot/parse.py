"""Chat text → GenerationRequest: one grammar for every frontend and the CLI.

`<prompt> --flag value ...`: the prompt comes first, then flags with shell quoting (on any line).
A line `Negative prompt: ...` gives the negative prompt, and a whole pasted A1111 infotext (its
last line A1111's settings line: `Steps: N` and another key A1111 writes) is read like A1111's
PNG Info reads it; a prompt full of `(tag:1.2)` weights is a prompt.
NAI emphasis (`{x}`, and `[x]` in "nai" syntax) is written as A1111 weights, NAI's quality tags
and undesired-content preset are added (both settings), and full-width punctuation is made
ASCII; `read_request` says which of these it did, for the reply.

Longer than the house's ~500 lines: the flag table with its readers and the infotext paste are
parts of the one grammar, and splitting them would make the grammar harder to read as a whole.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from bot.styles import Style, apply_styles
from engine.errors import NEGATIVE_PROMPT, NOTHING, PROMPT, InvalidRequest, Phrase
from engine.infotext import parse_infotext, request_from_infotext
from engine.prompting import (
    EMPHASIS_MODES,
    SYNTAXES,
    parse_attention,
    to_a1111,
)
from engine.prompting.networks import networks_of, without_networks
from engine.prompting.presets import (
    NAI_SIZES,
    UC_PRESETS,
    nai_size,
    size_key,
    uc_preset_name,
    with_quality_tags,
    with_uc_preset,
)
from engine.request import GenerationRequest, Limits
from engine.sampling.samplers import SAMPLER_GROUPS, carries_schedule
from engine.sampling.schedules import AUTOMATIC, SCHEDULE_LABELS, schedule_label

MAX_CHARS = Limits().max_prompt_chars  # the default cap on what a user types
MAX_RATIO = 4  # `--ar` from 1:4 to 4:1 (beyond, one side would fall under 64 or over 2048 px)
# The NAI "Normal" portrait area; `--ar` keeps it unless the user's defaults give a size.
_AR_AREA = 512 * 768


class ParseError(InvalidRequest):
    """The chat text cannot be read; the message names the flag and what is allowed."""


@dataclass(frozen=True, kw_only=True)
class PromptSettings:
    """How chat text becomes a prompt (settings.toml [prompt]; a user's saved choices override).

    Args:
        syntax: "a1111" (`[x]` ÷1.1) or "nai" (`[x]` ÷1.05); `{x}` is ×1.05 in both.
        quality_tags: prepend NovelAI's quality tags "masterpiece, best quality, ".
        uc_preset: NovelAI undesired-content preset put before the negative prompt.
    """

    syntax: Literal["a1111", "nai"] = "a1111"
    quality_tags: bool = True
    uc_preset: Literal["Low Quality + Bad Anatomy", "Low Quality", "None"] = (
        "Low Quality + Bad Anatomy"
    )


@dataclass(frozen=True)
class ParsedRequest:
    """A request and what the parser changed or left out to build it (for the reply)."""

    request: GenerationRequest
    notes: tuple[str, ...] = ()
    infotext: bool = False  # the text was a pasted A1111 infotext
    styles: tuple[str, ...] = ()  # the styles (--style) applied, in order


@dataclass(frozen=True)
class Flag:
    """One inline flag: what it sets, how its value is read, and how many words it takes."""

    field: str
    read: Callable[[str, str], Any]
    help: Phrase
    words: Literal["one", "many", "none", "optional"] = "one"  # optional: none or one


def _int(flag: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ParseError(
            f"{flag} needs a whole number, not {value!r}.",
            field=flag,
            key="needs_whole_number",
            flag=flag,
            value=value,
        ) from None


def _float(flag: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ParseError(
            f"{flag} needs a number, not {value!r}.",
            field=flag,
            key="needs_number",
            flag=flag,
            value=value,
        ) from None
    if not math.isfinite(number):
        raise ParseError(
            f"{flag} needs a finite number, not {value!r}.",
            field=flag,
            key="needs_finite_number",
            flag=flag,
            value=value,
        )
    return number


def _seed(flag: str, value: str) -> int | None:
    seed = _int(flag, value)
    return None if seed == -1 else seed  # A1111: -1 means "pick a random seed"


class _NamedSize(tuple[int, int]):
    """(width, height) of a size name, NAI's, with the name (`name`), which the engine
    replaces with the model's own size of that name (SDXL's buckets)."""

    name: str


def _size(flag: str, value: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)\s*[xX×*]\s*(\d+)", value.strip())
    if match:
        return int(match[1]), int(match[2])
    try:
        named = _NamedSize(nai_size(value))
        named.name = size_key(value)
        return named
    except InvalidRequest:
        raise ParseError(
            f"{flag} needs WIDTHxHEIGHT, e.g. 512x768, or a NAI size: "
            f"{', '.join(NAI_SIZES)}; not {value!r}.",
            field=flag,
            key="needs_size",
            flag=flag,
            sizes=list(NAI_SIZES),
            value=value,
        ) from None


def _ratio(flag: str, value: str) -> tuple[float, float]:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*[:/]\s*(\d+(?:\.\d+)?)", value.strip())
    if not match or not float(match[1]) or not float(match[2]):
        raise ParseError(
            f"{flag} needs WIDTH:HEIGHT, e.g. 2:3, not {value!r}.",
            field=flag,
            key="needs_ratio",
            flag=flag,
            value=value,
        )
    width, height = float(match[1]), float(match[2])
    if max(width / height, height / width) > MAX_RATIO:
        shape = Phrase("wide", "too_wide") if width > height else Phrase("tall", "too_tall")
        raise ParseError(
            f"{flag} {match[1]}:{match[2]} is too {shape}: "
            f"use a ratio from 1:{MAX_RATIO} to {MAX_RATIO}:1.",
            field=flag,
            key="ratio_too_far",
            flag=flag,
            width=match[1],
            height=match[2],
            shape=shape,
            max=MAX_RATIO,
        )
    return width, height


def _text(flag: str, value: str) -> str:
    return value


def _uc(flag: str, value: str) -> str:
    try:
        return uc_preset_name(value)
    except InvalidRequest as e:
        raise ParseError(
            f"{flag}: {e}", field=flag, key="flag_problem", flag=flag, problem=e
        ) from None


def _syntax(flag: str, value: str) -> str:
    if value.lower() not in SYNTAXES:
        raise ParseError(
            f"{flag} needs {' or '.join(SYNTAXES)}, not {value!r}.",
            field=flag,
            key="needs_syntax",
            flag=flag,
            choices=list(SYNTAXES),
            value=value,
        )
    return value.lower()


def _hypernet(flag: str, value: str) -> str:
    """`--hn NAME[:STRENGTH]` as the `<hypernet:…>` tag A1111 reads."""
    if not value.strip() or ">" in value or "<" in value or value.count(":") > 1:
        raise ParseError(
            f"{flag} needs NAME or NAME:STRENGTH, e.g. anime:0.8, not {value!r}.",
            field=flag,
            key="needs_hypernet",
            flag=flag,
            value=value,
        )
    tag = f"<hypernet:{value.strip()}>"
    try:
        networks_of(tag)
    except InvalidRequest as e:
        raise ParseError(
            f"{flag}: {e}", field=flag, key="flag_problem", flag=flag, problem=e
        ) from None
    return tag


def _hires(flag: str, value: str) -> float:
    """`--hires` alone is A1111's default ×2; `--hires 1.5` another scale."""
    return _float(flag, value) if value.strip() else 2.0


def _vae(flag: str, value: str) -> str | None:
    """`--vae NAME`; "auto"/"Automatic" = the model's default (None)."""
    name = value.strip()
    return None if name.lower() in ("auto", "automatic") else name


def _schedule(flag: str, value: str) -> str:
    """`--schedule NAME`: A1111 v1.9's "Schedule type" in any case ("karras", "sgm uniform");
    "auto" is "Automatic". A name v1.9.4 lacks goes on as typed: the door lists the choices."""
    name = value.strip()
    if name.lower() == "auto":
        return AUTOMATIC
    return schedule_label(name) or name


def _switch(flag: str, value: str) -> bool:
    return True


# A1111 v1.9's sampler names as the help texts list them: grouped, the everyday ones first.
SAMPLER_LIST = Phrase(
    " · ".join(f"{group}: {', '.join(names)}" for group, names in SAMPLER_GROUPS.items()),
    "sampler_groups",
    common=list(SAMPLER_GROUPS["common"]),
    more=list(SAMPLER_GROUPS["more"]),
    special=list(SAMPLER_GROUPS["special"]),
)
_SCALE = Phrase("CFG scale", "help_scale")
_NEGATIVE = Phrase("negative prompt", "help_negative")
FLAGS: dict[str, Flag] = {
    "--seed": Flag("seed", _seed, Phrase("seed (-1 = random)", "help_seed")),
    "--steps": Flag("num_inference_steps", _int, Phrase("denoising steps", "help_steps")),
    "--scale": Flag("guidance_scale", _float, _SCALE),
    "--cfg": Flag("guidance_scale", _float, _SCALE),
    "--size": Flag(
        "size",
        _size,
        Phrase(
            "WIDTHxHEIGHT or portrait, landscape, square…",
            "help_size",
            sizes=["portrait", "landscape", "square"],
        ),
        "many",
    ),
    "--ar": Flag("ratio", _ratio, Phrase("aspect ratio WIDTH:HEIGHT, e.g. 2:3", "help_ar")),
    "--sampler": Flag(
        "sampler",
        _text,
        Phrase(
            f"{SAMPLER_LIST}; or an old name, e.g. 'DPM++ 2M Karras'",
            "help_sampler",
            groups=SAMPLER_LIST,
            example="'DPM++ 2M Karras'",
        ),
        "many",
    ),
    "--schedule": Flag(
        "schedule_type",
        _schedule,
        Phrase(
            f"schedule type: one of {', '.join(SCHEDULE_LABELS)}",
            "help_schedule",
            choices=", ".join(SCHEDULE_LABELS),
        ),
        "many",
    ),
    "--neg": Flag("negative_prompt", _text, _NEGATIVE, "many"),
    "--no": Flag("negative_prompt", _text, _NEGATIVE, "many"),
    "--uc": Flag(
        "uc_preset",
        _uc,
        Phrase(
            "undesired-content preset: lqba, lq or none",
            "help_uc",
            choices=["lqba", "lq", "none"],
        ),
        "many",
    ),
    "--no-quality": Flag(
        "no_quality", _switch, Phrase("leave out the quality tags", "help_no_quality"), "none"
    ),
    "--syntax": Flag(
        "syntax", _syntax, Phrase("a1111 or nai", "help_syntax", choices=list(SYNTAXES))
    ),
    "--clip-skip": Flag("clip_skip", _int, Phrase("A1111 clip skip, e.g. 2", "help_clip_skip")),
    "--ensd": Flag("ensd", _int, Phrase("eta noise seed delta, e.g. 31337", "help_ensd")),
    "--model": Flag("model", _text, Phrase("model name", "help_model")),
    "--hn": Flag(
        "hypernet",
        _hypernet,
        Phrase(
            "hypernetwork NAME or NAME:STRENGTH, e.g. anime:0.8", "help_hn", example="anime:0.8"
        ),
        "many",
    ),
    "--strength": Flag(
        "denoising_strength",
        _float,
        Phrase(
            "denoising strength 0–1 of img2img (with an image) or of --hires",
            "help_strength",
        ),
    ),
    "--hires": Flag(
        "hr_scale",
        _hires,
        Phrase("hires fix: draw, upscale ×SCALE (default 2), redraw", "help_hires"),
        "optional",
    ),
    "--hires-steps": Flag(
        "hr_second_pass_steps", _int, Phrase("steps of the hires pass", "help_hires_steps")
    ),
    "--upscaler": Flag(
        "hr_upscaler",
        _text,
        Phrase("upscaler: Latent, Lanczos or a file's name", "help_upscaler"),
    ),
    "--vae": Flag(
        "vae",
        _vae,
        Phrase(
            "VAE file, e.g. animevae.pt (None = the model's own)", "help_vae", example="animevae.pt"
        ),
    ),
    "--n": Flag("batch_size", _int, Phrase("number of images", "help_count")),
    "--style": Flag(
        "styles",
        _text,
        Phrase("saved styles, e.g. --style anime", "help_style"),
        "many",
    ),
}
# shlex's complaints, for "Cannot read the flags".
_QUOTE_PROBLEMS = {
    "No closing quotation": Phrase("No closing quotation", "no_closing_quote"),
    "No escaped character": Phrase("No escaped character", "no_escaped_character"),
}
_FLAG_START = re.compile(r"(?:^|(?<=\s))--[A-Za-z]")
# Set by flags but not request fields: they shape the prompt and size.
_PROMPT_KEYS = (
    "size",
    "ratio",
    "uc_preset",
    "no_quality",
    "syntax",
    "negative_prompt",
    "hypernet",
    "styles",
)

# Full-width punctuation that CJK keyboards type; CLIP and the parser only know the ASCII.
_FULL_WIDTH = str.maketrans(
    {"，": ",", "（": "(", "）": ")", "：": ":", "［": "[", "］": "]", "｛": "{", "｝": "}"}
    | {"｜": "|", "\u3000": " "}
)
_CJK_DASHES = re.compile(r"(?:^|(?<=\s))(?:——|－－)(?=[A-Za-z])")  # an IME's "--"
_CURLY_QUOTES = str.maketrans({"“": '"', "”": '"', "‘": "'", "’": "'"})
# Infotext keys that do not change the image (or are read elsewhere): never reported.
_QUIET_KEYS = {
    "Prompt",
    "Negative prompt",
    "Steps",
    "Sampler",
    "Schedule type",
    "CFG scale",
    "Seed",
    "Size-1",
    "Size-2",
    "Model hash",
    "Model",
    "Clip skip",
    "ENSD",
    "RNG",
    "Variation seed",
    "Variation seed strength",
    "Seed resize from-1",
    "Seed resize from-2",
    "Downcast alphas_cumprod",
    "Emphasis",
    "Version",
    "User",
    "VAE hash",
    "VAE",
    "TI hashes",
    "Lora hashes",
    "Batch size",
    "Batch pos",
    "Hypernet",
    "Hypernet strength",
    "Hypernet hash",
    "Denoising strength",
    "Hires upscale",
    "Hires steps",
    "Hires upscaler",
    "Mask blur",
    "Masked content",
    "Inpaint area",
    "Masked area padding",
    "Conditional mask weight",
}


def parse_request(
    text: str,
    defaults: GenerationRequest | None = None,
    requester: str = "",
    *,
    settings: PromptSettings | None = None,
    max_chars: int = MAX_CHARS,
) -> GenerationRequest:
    """Parse chat text; fields it does not set come from `defaults` (a user's saved defaults)."""
    return read_request(text, defaults, requester, settings=settings, max_chars=max_chars).request


def read_request(
    text: str,
    defaults: GenerationRequest | None = None,
    requester: str = "",
    *,
    settings: PromptSettings | None = None,
    max_chars: int = MAX_CHARS,
    styles: Mapping[str, Style] | None = None,
) -> ParsedRequest:
    """`parse_request`, plus notes on what was normalised or ignored, for the reply.

    `styles` are the ones `--style NAME` may name (bot/styles.py): applied to the prompts as
    typed, as A1111 applies them, before anything else reads them.

    `max_chars` ([limits] max_prompt_chars) caps the prompt and the negative prompt as typed,
    before braces are rewritten and presets added (`{` x 10,000 must not shrink under it).
    Raises ParseError naming the flag, key or weight that cannot be read.
    """
    settings = settings or PromptSettings()
    base = defaults or GenerationRequest(prompt="")
    notes: list[str] = []
    raw, normalized, flag_words = _split_flags(text)
    values = _read_flags(flag_words)
    # A pasted infotext keeps its prompts exactly (A1111 encodes full-width characters too).
    info = parse_infotext(normalized, pasted=True)
    pasted = bool(info.params)
    if pasted:
        info = parse_infotext(raw, pasted=True)
    replaced = _full_width(_flag_parts(text) if pasted else text)
    if replaced:
        notes.append(f"Replaced full-width {' '.join(replaced)} with ASCII.")
    prompt = info.prompt
    try:
        networks_of(prompt)  # the tags' types and weights; the files are the engine's check
    except InvalidRequest as e:
        raise _parse_error(e, "prompt") from None
    if not without_networks(prompt).strip():
        raise ParseError(
            "The prompt is empty: write what to draw before the flags.",
            field="prompt",
            key="empty_prompt",
        )
    negative = ", ".join(n for n in (info.negative_prompt, values.get("negative_prompt")) if n)
    for name, typed in ((PROMPT, info.prompt), (NEGATIVE_PROMPT, negative)):
        if len(typed) > max_chars:
            raise ParseError(
                f"The {name} is {len(typed)} characters long: at most {max_chars} are allowed.",
                field="prompt",
                key="prompt_too_long",
                name=name,
                length=len(typed),
                max=max_chars,
            )
    fields: dict[str, Any] = {}
    if pasted:
        fields.update(_infotext_fields(info, notes))
        notes.append("Read a pasted A1111 infotext: its prompts and settings are used as written.")
    elif not negative:
        negative = base.negative_prompt
    chosen = _styles(values.get("styles"), styles or {})
    prompt, negative = apply_styles(prompt, negative, chosen)

    # NAI emphasis → A1111 weights. A pasted infotext is A1111 text already (braces are text).
    syntax = values.get("syntax", None if pasted else settings.syntax)
    if syntax is not None:
        prompt, negative = _convert(prompt, syntax, notes), _convert(negative, syntax, notes)
    if values.get("no_quality") is None and settings.quality_tags and not pasted:
        prompt = with_quality_tags(prompt)
        fields["preset_quality"] = True  # the model's own quality tags replace NAI's
    prompt += values.get("hypernet", "")
    preset = values.get("uc_preset", None if pasted else settings.uc_preset)
    if preset is not None:
        negative = with_uc_preset(negative, preset)
        if UC_PRESETS[uc_preset_name(preset)]:
            fields["preset_negative"] = uc_preset_name(preset)
    _check_weights(prompt, negative)

    for key, value in values.items():
        if key not in _PROMPT_KEYS:
            fields[key] = value
    if (
        "sampler" in values
        and "schedule_type" not in values
        and carries_schedule(values["sampler"])
    ):
        fields["schedule_type"] = None  # an old name's own schedule wins over a saved default
    if "model" in values:  # --model wins over a pasted infotext's model
        fields["model_hash"] = None
    if "size" in values and "ratio" in values:
        raise ParseError(
            "Use either --size or --ar, not both.",
            field="--ar",
            key="size_and_ratio",
        )
    if "hr_scale" in values:
        fields["enable_hr"] = True
    if "size" in values:
        fields["width"], fields["height"] = values["size"]
        if isinstance(values["size"], _NamedSize):
            fields["size_name"] = values["size"].name
    if "ratio" in values:
        fields["width"], fields["height"] = _size_for_ratio(values["ratio"], base)
    request = dataclasses.replace(
        base, prompt=prompt, negative_prompt=negative, requester=requester, **fields
    )
    names = tuple(s.name for s in chosen)
    return ParsedRequest(request, tuple(notes), infotext=pasted, styles=names)


def _styles(asked: str | None, known: Mapping[str, Style]) -> list[Style]:
    """The styles `--style a, b` names (case-insensitive), or ParseError naming the unknown."""
    if asked is None:
        return []
    by_name = {name.lower(): style for name, style in known.items()}
    chosen = []
    for name in (n.strip() for n in asked.split(",")):
        if not name:
            continue
        if name.lower() not in by_name:
            names = sorted(known) or ["-"]
            raise ParseError(
                f"No style {name!r}; styles: {', '.join(names)}.",
                field="--style",
                key="unknown_style",
                name=name,
                known=names,
            )
        chosen.append(by_name[name.lower()])
    return chosen


def normalize_punctuation(text: str) -> str:
    """Full-width `，（）：［］｛｝｜`, the ideographic space and a CJK keyboard's `——` before a
    flag → ASCII (one character for one, so positions stay the same)."""
    return _CJK_DASHES.sub("--", text.translate(_FULL_WIDTH))


def _full_width(text: str) -> list[str]:
    """The characters normalize_punctuation replaces in `text`, as a user would name them."""
    found = sorted({c for c in text if ord(c) in _FULL_WIDTH})
    names = ["ideographic space" if c == "\u3000" else c for c in found]
    return names + (["——"] if _CJK_DASHES.search(text) else [])


def _split_flags(text: str) -> tuple[str, str, list[str]]:
    """The text before each line's first flag (as written, and normalised), and the flag words.

    Flags may end any line; shell quoting applies within a line.
    """
    raw: list[str] = []
    normalized: list[str] = []
    words: list[str] = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        norm = normalize_punctuation(line)
        start = _FLAG_START.search(norm)
        cut = len(line) if start is None else start.start()
        if start is None or norm[:cut].strip():  # a line of flags only adds no prompt line
            raw.append(line[:cut])
            normalized.append(norm[:cut])
        if start is not None:
            try:
                words += shell_words(norm[cut:])
            except QuoteError as e:
                raise ParseError(
                    f"Cannot read the flags: {e.problem} (check your quotes).",
                    key="flags_unreadable",
                    problem=e.problem,
                ) from None
    return "\n".join(raw), "\n".join(normalized), words


class QuoteError(ValueError):
    """Shell quoting that cannot be read; `problem` says what, in every language."""

    def __init__(self, problem: Phrase) -> None:
        super().__init__(str(problem))
        self.problem = problem


def shell_words(text: str) -> list[str]:
    """Words with shell quoting, as phones type it too (“curly” quotes count as straight
    ones); QuoteError if a quote is left open."""
    try:
        return shlex.split(text.translate(_CURLY_QUOTES))
    except ValueError as e:
        raise QuoteError(_QUOTE_PROBLEMS.get(str(e), Phrase(str(e)))) from None


def _flag_parts(text: str) -> str:
    """The flags of every line, as written."""
    parts = []
    for line in text.splitlines():
        start = _FLAG_START.search(normalize_punctuation(line))
        if start is not None:
            parts.append(line[start.start() :])
    return " ".join(parts)


def _read_flags(words: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    i = 0
    while i < len(words):
        name, equals, inline = words[i].partition("=")
        flag = FLAGS.get(name.lower())
        if flag is None:
            raise _unknown(name)
        taken = [inline] if equals else []
        i += 1
        while i < len(words) and not words[i].startswith("--"):
            if flag.words == "none" or (taken and flag.words in ("one", "optional")):
                after = f"{name} {taken[0]}" if taken else name
                raise ParseError(
                    f"Unexpected {words[i]!r} after {after}: put the prompt before the flags, "
                    "and quote values that have spaces.",
                    field=name,
                    key="unexpected_word",
                    word=words[i],
                    after=after,
                )
            taken.append(words[i])
            i += 1
        if flag.words == "none":
            if equals:
                raise ParseError(
                    f"{name} takes no value ({flag.help}).",
                    field=name,
                    key="takes_no_value",
                    flag=name,
                    help=flag.help,
                )
            values[flag.field] = flag.read(name, "")
            continue
        if flag.words == "optional" and not taken:
            values[flag.field] = flag.read(name, "")
            continue
        if not taken or not " ".join(taken).strip():
            raise ParseError(
                f"{name} needs a value ({flag.help}).",
                field=name,
                key="needs_value",
                flag=name,
                help=flag.help,
            )
        values[flag.field] = flag.read(name, " ".join(taken))
    return values


def _unknown(name: str) -> ParseError:
    close = difflib.get_close_matches(name.lower(), list(FLAGS), n=1, cutoff=0.5)
    hint = NOTHING
    if close:
        hint = Phrase(f" Did you mean {close[0]}?", "did_you_mean", suggestion=close[0])
    return ParseError(
        f"Unknown flag {name}.{hint} Known flags: {', '.join(FLAGS)}.",
        field=name,
        key="unknown_flag",
        flag=name,
        hint=hint,
        flags=list(FLAGS),
    )


def _infotext_fields(info: Any, notes: list[str]) -> dict[str, Any]:
    """Request fields from a pasted infotext's settings; notes what this bot leaves out."""
    try:
        request = request_from_infotext(info)
    except InvalidRequest as e:
        raise _parse_error(e, e.field) from None
    skip = {"prompt", "negative_prompt", "requester", "batch_size"}
    fields = {
        f.name: getattr(request, f.name)
        for f in dataclasses.fields(request)
        if f.name not in skip and getattr(request, f.name) is not None
    }
    emphasis = info.params.get("Emphasis", "Original")
    if emphasis not in EMPHASIS_MODES:
        raise ParseError(
            f"The infotext's Emphasis {emphasis!r} is unknown: use {', '.join(EMPHASIS_MODES)}.",
            field="infotext",
            key="infotext_emphasis",
            emphasis=emphasis,
            modes=list(EMPHASIS_MODES),
        )
    fields["emphasis"] = emphasis
    # Even when absent (the name's own schedule): a saved default must not change a paste.
    fields["schedule_type"] = request.schedule_type
    model, model_hash = info.params.get("Model"), info.params.get("Model hash")
    if model or model_hash:  # as A1111's paste: that model (by hash, then name) if it is here
        fields["model"], fields["model_hash"] = model, model_hash
        named = " ".join(part for part in (repr(model) if model else "", model_hash or "") if part)
        notes.append(f"Drawing with the infotext's model {named} (--model NAME picks another).")
    ignored = [key for key in info.params if key not in _QUIET_KEYS]
    if ignored:
        notes.append(f"Ignored infotext settings this bot does not use: {', '.join(ignored)}.")
    return fields


def _convert(text: str, syntax: str, notes: list[str]) -> str:
    try:
        converted = to_a1111(text, syntax)
    except InvalidRequest as e:
        raise _parse_error(e, "prompt") from None
    if converted != text:
        note = f"Wrote NAI emphasis as A1111 weights: {converted}"
        notes.append(note if len(note) <= 300 else note[:299] + "…")
    return converted


def _check_weights(prompt: str, negative: str) -> None:
    for text in (prompt, negative):
        try:
            parse_attention(text)
        except InvalidRequest as e:
            raise _parse_error(e, "prompt") from None


def _parse_error(error: InvalidRequest, field: str | None) -> ParseError:
    """The engine's error as a ParseError for `field`, with its message key."""
    return ParseError(str(error), field=field, key=error.key, **error.params)


def _size_for_ratio(ratio: tuple[float, float], base: GenerationRequest) -> tuple[int, int]:
    """A size of that aspect ratio with about the pixels of the default size, multiples of 8."""
    area = base.width * base.height if base.width and base.height else _AR_AREA
    width = math.sqrt(area * ratio[0] / ratio[1])
    height = width * ratio[1] / ratio[0]
    return max(8, round(width / 8) * 8), max(8, round(height / 8) * 8)
