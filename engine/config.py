"""TOML tables → frozen dataclasses, checking every key and type (settings and model files)."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A table is wrong; the message names the key and what is allowed."""


def build(
    cls: type[T],
    table: Mapping[str, Any],
    where: str,
    *,
    ranges: Mapping[str, tuple[float, float]] | None = None,
    base: T | None = None,
) -> T:
    """`cls` from `table` (over `base`'s values if given); `where` prefixes every key in errors.

    `ranges` maps field names to inclusive numeric bounds.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in names:
            raise ConfigError(f"{where}.{key}: unknown key; allowed: {', '.join(names)}")
        values[key] = _check_type(value, hints[key], f"{where}.{key}")
        if ranges and key in ranges:
            low, high = ranges[key]
            if not low <= values[key] <= high:
                raise ConfigError(
                    f"{where}.{key}: {value!r} is out of range; allowed: {low:g} to {high:g}"
                )
    if base is not None:
        return dataclasses.replace(base, **values)  # type: ignore[type-var]
    return cls(**values)


def _check_type(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            allowed = ", ".join(map(repr, choices))
            raise ConfigError(f"{where}: {value!r} is not allowed; allowed: {allowed}")
        return value
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(hint)
        errors = []
        for option in args:
            try:
                return _check_type(value, option, where)
            except ConfigError as e:
                errors.append(e)
        # `X | None`: X's own message says what is allowed (None is TOML's missing key).
        options = [o for o in args if o is not type(None)]
        if len(options) == 1:
            raise errors[args.index(options[0])]
        raise ConfigError(f"{where}: {value!r} has the wrong type; expected {hint}")
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: any length
            args = (args[0],) * len(value)
        elif len(value) != len(args):  # tuple[X, Y, Z]: exactly that many
            raise ConfigError(f"{where}: expected a list of {len(args)}, got {value!r}")
        return tuple(
            _check_type(v, item, f"{where}[{i}]")
            for i, (v, item) in enumerate(zip(value, args, strict=True))
        )
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected nothing, got {value!r}")
        return value
    if isinstance(value, bool) and hint is not bool or not isinstance(value, hint):
        name = getattr(hint, "__name__", str(hint))
        raise ConfigError(f"{where}: expected {name}, got {type(value).__name__} {value!r}")
    return value
