"""Chat text → GenerationRequest: one grammar for every frontend and the CLI.

`<prompt> --flag value ...`: the prompt comes first, then flags with shell quoting. The prompt
language issue extends this (NAI braces, presets, pasted infotext, `Negative prompt:` lines).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.errors import InvalidRequest
from engine.request import GenerationRequest


class ParseError(InvalidRequest):
    """The chat text cannot be read; the message names the flag and what is allowed."""


@dataclass(frozen=True)
class Flag:
    """One inline flag: the request field it sets and how its value is read."""

    field: str
    read: Callable[[str, str], Any]
    help: str


def _int(flag: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ParseError(f"{flag} needs a whole number, not {value!r}.", field=flag) from None


def _float(flag: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ParseError(f"{flag} needs a number, not {value!r}.", field=flag) from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ParseError(f"{flag} needs a finite number, not {value!r}.", field=flag)
    return number


def _seed(flag: str, value: str) -> int | None:
    seed = _int(flag, value)
    return None if seed == -1 else seed  # A1111: -1 means "pick a random seed"


def _size(flag: str, value: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)\s*[xX×*]\s*(\d+)", value.strip())
    if not match:
        raise ParseError(f"{flag} needs WIDTHxHEIGHT, e.g. 512x768, not {value!r}.", field=flag)
    return int(match[1]), int(match[2])


def _text(flag: str, value: str) -> str:
    return value


FLAGS: dict[str, Flag] = {
    "--seed": Flag("seed", _seed, "seed (-1 = random)"),
    "--steps": Flag("num_inference_steps", _int, "denoising steps"),
    "--scale": Flag("guidance_scale", _float, "CFG scale"),
    "--cfg": Flag("guidance_scale", _float, "CFG scale"),
    "--size": Flag("size", _size, "WIDTHxHEIGHT"),
    "--sampler": Flag("sampler", _text, "sampler name, e.g. 'Euler a'"),
    "--neg": Flag("negative_prompt", _text, "negative prompt"),
    "--no": Flag("negative_prompt", _text, "negative prompt"),
    "--model": Flag("model", _text, "model name"),
    "--n": Flag("batch_size", _int, "number of images"),
}
# Flags whose value may be several unquoted words (up to the next flag).
_MULTI_WORD = {"--neg", "--no", "--sampler"}
_FLAG_START = re.compile(r"(?:^|(?<=\s))--[A-Za-z]")


def parse_request(
    text: str, defaults: GenerationRequest | None = None, requester: str = ""
) -> GenerationRequest:
    """Parse chat text; fields it does not set come from `defaults` (a user's saved defaults)."""
    base = defaults or GenerationRequest(prompt="")
    start = _FLAG_START.search(text)
    prompt = (text[: start.start()] if start else text).strip()
    values = _read_flags(text[start.start() :]) if start else {}
    if "size" in values:
        values["width"], values["height"] = values.pop("size")
    if not prompt:
        raise ParseError(
            "The prompt is empty: write what to draw before the flags.", field="prompt"
        )
    return dataclasses.replace(base, prompt=prompt, requester=requester, **values)


def _read_flags(text: str) -> dict[str, Any]:
    try:
        words = shlex.split(text)
    except ValueError as e:
        raise ParseError(f"Cannot read the flags: {e} (check your quotes).") from None
    values: dict[str, Any] = {}
    i = 0
    while i < len(words):
        name, _, inline = words[i].partition("=")
        flag = FLAGS.get(name.lower())
        if flag is None:
            raise ParseError(_unknown(words[i]), field=name)
        taken = [inline] if inline else []
        i += 1
        while i < len(words) and not words[i].startswith("--"):
            if taken and name.lower() not in _MULTI_WORD:
                raise ParseError(
                    f"Unexpected {words[i]!r} after {name} {taken[0]}: put the prompt before "
                    "the flags, and quote values that have spaces.",
                    field=name,
                )
            taken.append(words[i])
            i += 1
        if not taken:
            raise ParseError(f"{name} needs a value ({flag.help}).", field=name)
        values[flag.field] = flag.read(name, " ".join(taken))
    return values


def _unknown(word: str) -> str:
    name = word.partition("=")[0]
    close = difflib.get_close_matches(name.lower(), list(FLAGS), n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]}?" if close else ""
    return f"Unknown flag {name}.{hint} Known flags: {', '.join(FLAGS)}."
