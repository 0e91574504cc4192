"""Slash-command interaction data, checked against the schema the bot uploaded.

Discord refuses option values that break the registered schema (type, choices, min/max value,
min/max length, required, unknown names) before the bot sees them; discord.py does not check
them again. FakeDiscord builds every slash interaction through `command_data`, so a test cannot
send what Discord would never deliver.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

OPTION_TYPES = {3: "string", 4: "integer", 5: "boolean", 6: "user", 10: "number", 11: "attachment"}
_SUBCOMMAND, _GROUP = 1, 2

# (option type, given value, data.resolved to fill) -> the option's value (an id)
Resolver = Callable[[int, Any, dict[str, Any]], str]


def find_command(commands: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """The CHAT_INPUT command called `name` (guild commands first in `commands`)."""
    for command in commands:
        if command["name"] == name and command.get("type", 1) == 1:
            return command
    known = sorted(c["name"] for c in commands)
    raise ValueError(f"no slash command /{name} was registered (PUT commands): {known}")


def command_data(
    commands: list[dict[str, Any]],
    name: str,
    options: dict[str, Any],
    *,
    in_dm: bool,
    validate: bool,
    focused: str | None,
    resolve: Resolver,
) -> dict[str, Any]:
    """The interaction `data` for `/name` ("model swap" for a subcommand) with `options`."""
    top, *path = name.split()
    command = find_command(commands, top)
    if validate and in_dm and 1 not in (command.get("contexts") or [0, 1, 2]):
        raise ValueError(f"/{top} is not available in DMs (contexts={command['contexts']})")
    schema = command.get("options") or []
    chain = []
    for part in path:
        sub = next(
            (o for o in schema if o["name"] == part and o["type"] in (_SUBCOMMAND, _GROUP)), None
        )
        if sub is None:
            raise ValueError(f"/{top} has no subcommand (group) {part!r}")
        chain.append(sub)
        schema = sub.get("options") or []
    if validate and any(o["type"] in (_SUBCOMMAND, _GROUP) for o in schema):
        raise ValueError(f"/{name} needs a subcommand: {[o['name'] for o in schema]}")
    resolved: dict[str, Any] = {}
    built = _options(f"/{name}", schema, options, resolved, validate, focused, resolve)
    for sub in reversed(chain):
        built = [{"type": sub["type"], "name": sub["name"], "options": built}]
    data: dict[str, Any] = {"id": command["id"], "name": top, "type": 1, "options": built}
    if command.get("guild_id"):
        data["guild_id"] = command["guild_id"]
    if resolved:
        data["resolved"] = resolved
    return data


def _options(
    where: str,
    schema: list[dict[str, Any]],
    given: dict[str, Any],
    resolved: dict[str, Any],
    validate: bool,
    focused: str | None,
    resolve: Resolver,
) -> list[dict[str, Any]]:
    by_name = {o["name"]: o for o in schema}
    if validate:
        unknown = set(given) - set(by_name)
        if unknown:
            raise ValueError(f"{where}: unknown option(s) {sorted(unknown)}")
        missing = [o["name"] for o in schema if o.get("required") and o["name"] not in given]
        if missing and focused is None:  # autocomplete runs while required ones are still empty
            raise ValueError(f"{where}: required option(s) missing: {missing}")
    built = []
    for name, value in given.items():
        spec = by_name.get(name, {"name": name, "type": 3})
        option: dict[str, Any] = {"name": name, "type": spec["type"]}
        if name == focused:
            if not spec.get("autocomplete"):
                raise ValueError(f"{where}: option {name!r} has no autocomplete")
            option.update(value=value, focused=True)  # partial input, never checked
        else:
            option["value"] = _value(where, spec, value, resolved, validate, resolve)
        built.append(option)
    return built


def _value(
    where: str,
    spec: dict[str, Any],
    value: Any,
    resolved: dict[str, Any],
    validate: bool,
    resolve: Resolver,
) -> Any:
    kind = spec["type"]
    label = f"{where}: option {spec['name']!r} = {value!r}"
    if kind not in OPTION_TYPES:
        raise NotImplementedError(f"{label}: option type {kind} is not faked")
    if kind in (6, 11):
        return resolve(kind, value, resolved)
    if not validate:
        return value
    expected = {3: str, 4: int, 5: bool, 10: int | float}[kind]
    if not isinstance(value, expected) or (kind in (4, 10) and isinstance(value, bool)):
        raise ValueError(f"{label}: Discord sends a {OPTION_TYPES[kind]} here")
    choices = [c["value"] for c in spec.get("choices") or []]
    if choices and value not in choices:
        raise ValueError(f"{label}: not one of the choices {choices}")
    if "min_value" in spec and value < spec["min_value"]:
        raise ValueError(f"{label}: below min_value {spec['min_value']}")
    if "max_value" in spec and value > spec["max_value"]:
        raise ValueError(f"{label}: above max_value {spec['max_value']}")
    low, high = spec.get("min_length", 0), spec.get("max_length", 6000)
    if isinstance(value, str) and not low <= len(value) <= high:
        raise ValueError(f"{label}: length {len(value)} outside {low}..{high}")
    return value
