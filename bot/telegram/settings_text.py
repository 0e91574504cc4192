"""The /settings text grammar: `steps=20 size=512x768` read into UserPrefs fields, and back.

The values are read by the prompt parser's own flags (bot/parse.py), so /settings accepts what
a prompt's flags accept; `settings_command` (bot/telegram/handlers.py) checks and saves them.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable
from typing import Any

from bot.messages import LOCALES, Locale, text
from bot.parse import FLAGS
from bot.prefs import UserPrefs
from engine.errors import InvalidRequest


def _bool(key: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in ("on", "true", "yes", "1"):
        return True
    if lowered in ("off", "false", "no", "0"):
        return False
    raise InvalidRequest(f"{key} needs on or off, not {value!r}.", field=key)


def _locale_value(key: str, value: str) -> str:
    if value.lower() not in LOCALES:
        raise InvalidRequest(f"{key} needs {' or '.join(LOCALES)}, not {value!r}.", field=key)
    return value.lower()


# Setting name → (UserPrefs fields, reader of the value → those fields' values). The readers
# are the parser's own flags, so /settings accepts what a prompt's flags accept.
_SETTINGS: dict[str, tuple[tuple[str, ...], Callable[[str, str], Any]]] = {
    "size": (("width", "height"), FLAGS["--size"].read),
    "steps": (("num_inference_steps",), FLAGS["--steps"].read),
    "scale": (("guidance_scale",), FLAGS["--scale"].read),
    "sampler": (("sampler",), FLAGS["--sampler"].read),
    "neg": (("negative_prompt",), FLAGS["--neg"].read),
    "uc": (("uc_preset",), FLAGS["--uc"].read),
    "quality": (("quality_tags",), _bool),
    "syntax": (("syntax",), FLAGS["--syntax"].read),
    "doc": (("send_as_document",), _bool),
    "lang": (("locale",), _locale_value),
}
_ALIASES = {
    "cfg": "scale",
    "guidance_scale": "scale",
    "num_inference_steps": "steps",
    "negative_prompt": "neg",
    "negative": "neg",
    "uc_preset": "uc",
    "quality_tags": "quality",
    "document": "doc",
    "send_as_document": "doc",
    "locale": "lang",
}


def read_settings(args: str) -> dict[str, Any]:
    """`steps=20 size=512x768 sampler="DPM++ 2M"` → UserPrefs fields; "default" clears one."""
    try:
        words = shlex.split(args)
    except ValueError as e:
        raise InvalidRequest(f"Cannot read the settings: {e} (check your quotes).") from None
    values: dict[str, Any] = {}
    for word in words:
        key, equals, value = word.partition("=")
        key = key.strip().lower()
        name = _ALIASES.get(key, key)
        if name not in _SETTINGS:
            raise InvalidRequest(
                f"Unknown setting {key!r}; known: {', '.join(_SETTINGS)}.", field=key
            )
        if not equals or not value.strip():
            raise InvalidRequest(f"Write {name}=VALUE, e.g. steps=20.", field=key)
        fields, read = _SETTINGS[name]
        if value.strip().lower() == "default":
            values.update(dict.fromkeys(fields, None))
            continue
        parsed = read(name, value.strip())
        values.update(
            zip(fields, parsed, strict=True) if len(fields) > 1 else [(fields[0], parsed)]
        )
    return values


def show_settings(prefs: UserPrefs, locale: Locale) -> str:
    lines = "\n".join(f"{name}: {value}" for name, value in typed_settings(prefs, locale))
    return text("tg_settings", locale, default=text("tg_settings_default", locale), values=lines)


def typed_settings(
    prefs: UserPrefs, locale: Locale, fields: Iterable[str] | None = None
) -> list[tuple[str, str]]:
    """(setting, value as typed) of each setting, or of those that set one of `fields`."""
    wanted = None if fields is None else set(fields)
    shown = []
    for name, (names, _) in _SETTINGS.items():
        if wanted is not None and not wanted & set(names):
            continue
        values = [getattr(prefs, f) for f in names]
        if all(v is None for v in values):
            shown.append((name, text("tg_settings_default", locale)))
        else:
            shown.append((name, "x".join(_typed(v) for v in values)))
    return shown


def _typed(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)
