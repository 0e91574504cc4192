"""Slash commands as Discord checks them: their registration, and their interaction data.

Discord refuses a command registration (`PUT .../commands`) that breaks its limits: more than
25 options or choices, names and descriptions too long or badly formed, a command over the
combined size; discord.py checks few of them before it uploads. FakeDiscord refuses them too
(`command_problems`), so a bot that would fail to start on Discord fails in the tests.

Discord refuses option values that break the registered schema (type, choices, min/max value,
min/max length, required, unknown names) before the bot sees them; discord.py does not check
them again. FakeDiscord builds every slash interaction through `command_data`, so a test cannot
send what Discord would never deliver.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

OPTION_TYPES = {3: "string", 4: "integer", 5: "boolean", 6: "user", 10: "number", 11: "attachment"}
_SUBCOMMAND, _GROUP = 1, 2

# (option type, given value, data.resolved to fill) -> the option's value (an id)
Resolver = Callable[[int, Any, dict[str, Any]], str]

# Discord's limits on a registered command (developer docs, "Application Commands"; the combined
# size went from 4000 to 8000 characters in 2024, discord/discord-api-docs#6668).
MAX_COMMANDS = 100  # CHAT_INPUT commands of one scope (global, or one guild)
MAX_OPTIONS = 25  # options, subcommands or groups of a command, subcommand or group
MAX_CHOICES = 25  # fixed choices of one option
MAX_NAME = 32
MAX_DESCRIPTION = 100
MAX_CHOICE_NAME = 100
MAX_CHOICE_VALUE = 100  # a string choice's value
MAX_COMMAND_SIZE = 8000  # names, descriptions and choice values together (longest locale each)
# Discord's ^[-_'\p{L}\p{N}\p{sc=Deva}\p{sc=Thai}]{1,32}$, in lower case where letters have one.
_NAME = re.compile(r"^[-_'\w]{1,32}$")


def command_problems(commands: list[dict[str, Any]]) -> dict[str, str]:
    """What Discord refuses in a bulk registration: {error path ("0.options.6.choices", "" for
    the whole upload): why}; `error_tree` nests them as Discord's 50035 errors are."""
    problems: dict[str, str] = {}
    chat = [c for c in commands if c.get("type", 1) == 1]
    if len(chat) > MAX_COMMANDS:
        problems[""] = f"Must be {MAX_COMMANDS} or fewer chat input commands."
    names = [c.get("name") for c in chat]
    for name in sorted({n for n in names if names.count(n) > 1}, key=str):
        problems[""] = f"Application command names must be unique ({name!r} is not)."
    for i, command in enumerate(commands):
        if command.get("type", 1) != 1:
            continue
        problems |= {f"{i}{path}": why for path, why in _option_problems(command)}
        size = _size(command)
        if size > MAX_COMMAND_SIZE:
            problems[str(i)] = f"Command exceeds maximum size ({MAX_COMMAND_SIZE}): {size}."
    return problems


def error_tree(problems: dict[str, str]) -> dict[str, Any]:
    """Discord's nested errors: {"0": {"options": {"6": {"choices": {"_errors": [...]}}}}}."""
    tree: dict[str, Any] = {}
    for path, why in problems.items():
        node = tree
        for part in path.split(".") if path else []:
            node = node.setdefault(part, {})
        node.setdefault("_errors", []).append({"code": "INVALID", "message": why})
    return tree


def _option_problems(option: dict[str, Any], path: str = "") -> Iterator[tuple[str, str]]:
    """A command's, subcommand's or option's own problems and its children's."""
    for key, limit in (("name", MAX_NAME), ("description", MAX_DESCRIPTION)):
        for where, text in _texts(option, key):
            if not isinstance(text, str) or not 1 <= len(text) <= limit:
                yield f"{path}.{where}", f"Must be between 1 and {limit} in length."
            elif key == "name" and (not _NAME.match(text) or text != text.lower()):
                yield f"{path}.{where}", "Invalid name: lower-case letters, digits, - _ '."
    children = option.get("options") or []
    if len(children) > MAX_OPTIONS:
        yield f"{path}.options", f"Must be {MAX_OPTIONS} or fewer in length."
    values = [o for o in children if o.get("type") not in (_SUBCOMMAND, _GROUP)]
    required = [bool(o.get("required")) for o in values]
    if required != sorted(required, reverse=True):
        yield f"{path}.options", "Required options must be placed before non-required options."
    for j, child in enumerate(children):
        yield from _option_problems(child, f"{path}.options.{j}")
    choices = option.get("choices") or []
    if len(choices) > MAX_CHOICES:
        yield f"{path}.choices", f"Must be {MAX_CHOICES} or fewer in length."
    for k, choice in enumerate(choices):
        for where, text in _texts(choice, "name"):
            if not isinstance(text, str) or not 1 <= len(text) <= MAX_CHOICE_NAME:
                yield f"{path}.choices.{k}.{where}", "Must be between 1 and 100 in length."
        value = choice.get("value")
        if isinstance(value, str) and not 1 <= len(value) <= MAX_CHOICE_VALUE:
            yield f"{path}.choices.{k}.value", "Must be between 1 and 100 in length."


def _texts(item: dict[str, Any], key: str) -> Iterator[tuple[str, Any]]:
    """(path, text) of a field and of each of its localizations."""
    yield key, item.get(key)
    for locale, text in (item.get(f"{key}_localizations") or {}).items():
        yield f"{key}_localizations.{locale}", text


def _size(item: dict[str, Any]) -> int:
    """Discord's size of a command: its names, descriptions and choice values, counting the
    longest localization of each field (the default one included)."""
    size = _longest(item, "name") + _longest(item, "description")
    for choice in item.get("choices") or []:
        size += _longest(choice, "name") + len(str(choice.get("value", "")))
    return size + sum(_size(option) for option in item.get("options") or [])


def _longest(item: dict[str, Any], key: str) -> int:
    return max(len(str(text or "")) for _, text in _texts(item, key))


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
