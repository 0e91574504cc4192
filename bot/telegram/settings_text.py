"""The /settings text grammar: `steps=20 size=512x768` read into UserPrefs fields, and back.

The values are read by the prompt parser's own flags (bot/parse.py), so /settings accepts what
a prompt's flags accept; `settings_command` (bot/telegram/handlers.py) checks and saves them.
Shown back, each setting has the value a prompt gets now: the user's own, else the bot's
(`bot_defaults`: the default model's size and steps, [defaults], [prompt], [telegram]).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Iterable
from typing import Any

from bot.messages import LOCALES, Locale, text
from bot.parse import FLAGS, PromptSettings, QuoteError, shell_words
from bot.prefs import UserPrefs
from bot.settings import TelegramSettings
from engine.errors import NOTHING, InvalidRequest, Phrase
from engine.infotext import format_number
from engine.request import RequestDefaults
from engine.sampling.samplers import infotext_sampler

_ON_OFF = ["on", "off"]
MINE = "✎"  # marks, in /settings, a value the user saved


def _bool(key: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in ("on", "true", "yes", "1"):
        return True
    if lowered in ("off", "false", "no", "0"):
        return False
    raise InvalidRequest(
        f"{key} needs on or off, not {value!r}.",
        field=key,
        key="tg_setting_choices",
        name=key,
        choices=_ON_OFF,
        value=value,
    )


def _locale_value(key: str, value: str) -> str:
    if value.lower() not in LOCALES:
        raise InvalidRequest(
            f"{key} needs {' or '.join(LOCALES)}, not {value!r}.",
            field=key,
            key="tg_setting_choices",
            name=key,
            choices=list(LOCALES),
            value=value,
        )
    return value.lower()


# Setting name → (UserPrefs fields, reader of the value → those fields' values, an example).
# The readers are the parser's own flags, so /settings accepts what a prompt's flags accept.
_SETTINGS: dict[str, tuple[tuple[str, ...], Callable[[str, str], Any], str]] = {
    "size": (("width", "height"), FLAGS["--size"].read, "512x768"),
    "steps": (("num_inference_steps",), FLAGS["--steps"].read, "20"),
    "scale": (("guidance_scale",), FLAGS["--scale"].read, "7"),
    "sampler": (("sampler",), FLAGS["--sampler"].read, '"DPM++ 2M Karras"'),
    "schedule": (("schedule_type",), FLAGS["--schedule"].read, "karras"),
    "neg": (("negative_prompt",), FLAGS["--neg"].read, '"lowres, bad hands"'),
    "uc": (("uc_preset",), FLAGS["--uc"].read, "lq"),
    "quality": (("quality_tags",), _bool, "off"),
    "syntax": (("syntax",), FLAGS["--syntax"].read, "nai"),
    "doc": (("send_as_document",), _bool, "on"),
    "lang": (("locale",), _locale_value, "zh"),
}
_ALIASES = {
    "cfg": "scale",
    "guidance_scale": "scale",
    "num_inference_steps": "steps",
    "schedule_type": "schedule",
    "negative_prompt": "neg",
    "negative": "neg",
    "uc_preset": "uc",
    "quality_tags": "quality",
    "document": "doc",
    "send_as_document": "doc",
    "locale": "lang",
    "language": "lang",
}


def read_settings(args: str) -> dict[str, Any]:
    """`steps=20 size=512x768 sampler="DPM++ 2M"` → UserPrefs fields; "default" clears one."""
    try:
        words = shell_words(args)
    except QuoteError as e:
        raise InvalidRequest(
            f"Cannot read the settings: {e.problem} (check your quotes).",
            key="tg_settings_unreadable",
            problem=e.problem,
        ) from None
    values: dict[str, Any] = {}
    for word in words:
        key, equals, value = word.partition("=")
        key = key.strip().lower()
        name = _ALIASES.get(key, key)
        if name not in _SETTINGS:
            raise _unknown(key)
        fields, read, example = _SETTINGS[name]
        if not equals or not value.strip():
            raise InvalidRequest(
                f"Write {name}=VALUE, e.g. {name}={example}.",
                field=key,
                key="tg_setting_usage",
                name=name,
                example=example,
            )
        if value.strip().lower() == "default":
            values.update(dict.fromkeys(fields, None))
            continue
        parsed = read(name, value.strip())
        values.update(
            zip(fields, parsed, strict=True) if len(fields) > 1 else [(fields[0], parsed)]
        )
    return values


def _unknown(key: str) -> InvalidRequest:
    names = [*_SETTINGS, *_ALIASES]
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    hint = NOTHING
    if close:
        suggestion = _ALIASES.get(close[0], close[0])
        hint = Phrase(f" Did you mean {suggestion}?", "did_you_mean", suggestion=suggestion)
    return InvalidRequest(
        f"Unknown setting {key!r}.{hint} Known: {', '.join(_SETTINGS)}.",
        field=key,
        key="tg_unknown_setting",
        name=key,
        hint=hint,
        known=list(_SETTINGS),
    )


def bot_defaults(
    model: RequestDefaults, prompt: PromptSettings, telegram: TelegramSettings, locale: Locale
) -> UserPrefs:
    """Every setting as the bot sets it for a user who saved none: the default model's
    defaults (or [defaults]), [prompt], [telegram], and the chat client's language."""
    return UserPrefs(
        width=model.width,
        height=model.height,
        num_inference_steps=model.num_inference_steps,
        guidance_scale=model.guidance_scale,
        sampler=model.sampler,
        negative_prompt="",
        uc_preset=prompt.uc_preset,
        quality_tags=prompt.quality_tags,
        syntax=prompt.syntax,
        locale=locale,
        send_as_document=telegram.send_as_document,
    )


def show_settings(prefs: UserPrefs, defaults: UserPrefs, locale: Locale) -> str:
    """Each setting's value now (the user's, marked, else the bot's), then how to change."""
    lines = "\n".join(
        f"{name}: {value}{' ' + MINE if mine else ''}"
        for name, value, mine in typed_settings(prefs, defaults, locale=locale)
    )
    return text("tg_settings", locale, values=lines, mark=MINE)


def typed_settings(
    prefs: UserPrefs,
    defaults: UserPrefs,
    fields: Iterable[str] | None = None,
    *,
    locale: Locale = "en",
) -> list[tuple[str, str, bool]]:
    """(setting, its value as typed, whether the user saved it) of each setting, or of those
    that set one of `fields`; a value the user did not save is `defaults`'."""
    wanted = None if fields is None else set(fields)
    mine = {k: v for k, v in dataclasses.asdict(prefs).items() if v is not None}
    effective = dataclasses.replace(defaults, **mine)
    if effective.schedule_type is None and effective.sampler is not None:
        # None = the sampler name's own schedule: shown as A1111 v1.9 would label it.
        label = infotext_sampler(effective.sampler, None)[1]
        effective = dataclasses.replace(effective, schedule_type=label)
    shown = []
    for name, (names, _, _) in _SETTINGS.items():
        if wanted is not None and not wanted & set(names):
            continue
        values = [getattr(effective, f) for f in names]
        typed = "x".join(_typed(v) for v in values) or text("tg_settings_empty", locale)
        shown.append((name, typed, any(f in mine for f in names)))
    return shown


def _typed(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return format_number(value)  # 7, not 7.0
    return "" if value is None else str(value)
