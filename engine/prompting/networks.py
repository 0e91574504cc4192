"""Extra networks a prompt asks for: A1111's `<lora:…>` and `<hypernet:…>` tags, read as A1111 does.

Pure text (no torch): the door (`check_request`), the queue (jobs with different networks never
share a batch) and generate() read a prompt's tags through `networks_of`. A1111 reads tags from
the positive prompt only; in a negative prompt they are text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from engine.errors import InvalidRequest
from engine.prompting.syntax import extra_networks

# A1111's extra-network types; "lyco" is the built-in Lora extension's alias for "lora".
LORA_TYPES = ("lora", "lyco")
HYPERNET_TYPE = "hypernet"
MAX_MULTIPLIER = 10.0  # far beyond any useful weight; stops 1e30 reaching the weights


@dataclass(frozen=True)
class LoraUse:
    """One `<lora:NAME:TE[:UNET]>` tag: multipliers for the text encoder and the UNet."""

    name: str
    te: float = 1.0
    unet: float = 1.0


@dataclass(frozen=True)
class HypernetUse:
    """One `<hypernet:NAME[:STRENGTH]>` tag."""

    name: str
    strength: float = 1.0


@dataclass(frozen=True)
class NetworkSet:
    """The extra networks of one prompt, in the prompt's order (hashable: a batch key)."""

    loras: tuple[LoraUse, ...] = ()
    hypernets: tuple[HypernetUse, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.loras or self.hypernets)


NO_NETWORKS = NetworkSet()


def networks_of(prompt: str) -> NetworkSet:
    """The prompt's extra networks (A1111 `extra_networks_lora` / `extra_networks_hypernet`
    argument rules); InvalidRequest for an unknown tag type or a multiplier that is not a
    number in ±MAX_MULTIPLIER."""
    _, tags = extra_networks(prompt)
    loras: list[LoraUse] = []
    hypernets: list[HypernetUse] = []
    for kind, args in tags:
        tag = f"<{kind}:{':'.join(args)}>"
        positional = [a for a in args if "=" not in a]
        named = dict(a.split("=", 1) for a in args if "=" in a)
        if kind in LORA_TYPES and positional:
            te = _multiplier(positional[1], tag) if len(positional) > 1 else 1.0
            te = _multiplier(named["te"], tag) if "te" in named else te
            unet = _multiplier(positional[2], tag) if len(positional) > 2 else te
            unet = _multiplier(named["unet"], tag) if "unet" in named else unet
            loras.append(LoraUse(positional[0], te, unet))
        elif kind == HYPERNET_TYPE and positional:
            strength = _multiplier(positional[1], tag) if len(positional) > 1 else 1.0
            hypernets.append(HypernetUse(positional[0], strength))
        else:
            raise InvalidRequest(
                f"{tag} is not an extra network here: use <lora:NAME:WEIGHT> or "
                "<hypernet:NAME:STRENGTH>.",
                field="prompt",
                key="unknown_network_tag",
                tag=tag,
            )
    return NetworkSet(tuple(loras), tuple(hypernets))


def without_networks(prompt: str) -> str:
    """The text CLIP sees: the prompt with its extra-network tags removed (A1111)."""
    return extra_networks(prompt)[0]


def with_hypernet(prompt: str, default: str) -> str:
    """A1111's `sd_hypernetwork` setting: `default` ("NAME" or "NAME:STRENGTH") appended to the
    prompt as a tag, unless the prompt already names that hypernetwork."""
    if not default:
        return prompt
    name, _, strength = default.partition(":")
    if any(h.name == name for h in networks_of(prompt).hypernets):
        return prompt
    return f"{prompt}<hypernet:{name}:{strength or '1.0'}>"


def _multiplier(text: str, tag: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not -MAX_MULTIPLIER <= value <= MAX_MULTIPLIER:
        raise InvalidRequest(
            f"{tag}: the weight {text!r} is not allowed: use a number from "
            f"-{MAX_MULTIPLIER:g} to {MAX_MULTIPLIER:g}.",
            field="prompt",
            key="network_weight",
            tag=tag,
            weight=text,
            max=f"{MAX_MULTIPLIER:g}",
        )
    return value
