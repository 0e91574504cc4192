"""The admins' VAE and hypernetwork choice for a model ("the NAI recipe"), as every frontend
reads and says it: what an admin typed → the values `Engine.set_addon_defaults` takes, and a
model's current choice and the installed files in words.
"""

from __future__ import annotations

from typing import Any

from bot.messages import Locale, text
from engine.contracts import ModelInfo
from engine.engine import Engine
from engine.infotext import format_number

OWN_VAE = "None"  # the checkpoint's own VAE (the engine reads "none", "auto" in any case)
AUTOMATIC = "Automatic"  # a <checkpoint>.vae.* beside it, else its own
NO_HYPERNET = "none"  # what an admin types for no hypernetwork (the engine's "")


def hypernet_choice(name: str, strength: float | None = None) -> str:
    """An admin's hypernetwork as the engine takes it: "NAME" or "NAME:STRENGTH", "" for none
    ("none", "off" or nothing). A `strength` other than 1 is added unless NAME has its own."""
    name = name.strip()
    if name.lower() in ("", NO_HYPERNET, "off"):
        return ""
    if strength is None or strength == 1 or ":" in name:
        return name
    return f"{name}:{format_number(strength)}"


def vae_label(vae: str, locale: Locale) -> str:
    return text("addons_own_vae", locale) if vae == OWN_VAE else vae


def hypernet_label(hypernet: str, locale: Locale) -> str:
    return hypernet or text("addons_no_hypernet", locale)


def current_addons(engine: Engine[Any], locale: Locale, model: str | None = None) -> str:
    """What a model (default: the default one) draws with: its VAE and hypernetwork."""
    return addons_text(engine.model_info(model or engine.default_model), locale)


def addons_text(info: ModelInfo, locale: Locale, key: str = "addons_current") -> str:
    """A model entry's VAE and hypernetwork in words: `key` "addons_current" says what it
    draws with, "addons_set" that new jobs do from now on."""
    return text(
        key,
        locale,
        model=info.name,
        vae=vae_label(info.defaults.vae, locale),
        hypernet=hypernet_label(info.defaults.hypernet, locale),
    )


def installed_addons(engine: Engine[Any], locale: Locale) -> str:
    """The VAE and hypernetwork files there are, one line each."""
    return text(
        "addons_installed",
        locale,
        vaes=", ".join(engine.addon_names("VAE")) or "-",
        hypernets=", ".join(engine.addon_names("hypernetwork")) or "-",
    )
