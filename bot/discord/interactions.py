"""Discord: what every cog's commands share about an interaction: command descriptions, who is
asking (requester ids, locale), the admin permission and refusals, model autocomplete."""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands
from discord.app_commands import Choice, locale_str

from bot.messages import MESSAGES, Locale, locale_of
from bot.prefs import UserSettingsStore
from engine.engine import Engine

ADMIN = discord.Permissions(manage_guild=True)


def description(key: str) -> locale_str:
    """A command or option description from messages.py (MessagesTranslator adds zh)."""
    return locale_str(MESSAGES[key]["en"], key=key)


def requester_of(user: discord.abc.Snowflake) -> str:
    return f"discord:{user.id}"


class NotAllowed(app_commands.CheckFailure):
    """A refusal whose message (already in the user's language) is shown as it is."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def interaction_locale(store: UserSettingsStore, interaction: discord.Interaction) -> Locale:
    """The user's saved language, else their Discord client's."""
    saved = store.get(requester_of(interaction.user)).locale
    return saved or locale_of(interaction.locale.value)


def model_choices(engine: Engine[Any], current: str) -> list[Choice[str]]:
    """Autocomplete: installed models whose name contains what was typed."""
    names = [name for name in engine.models() if current.lower() in name.lower()]
    return [Choice(name=name, value=name) for name in names[:25]]


def command_name(interaction: discord.Interaction) -> str:
    command = interaction.command
    if command is not None:
        return command.qualified_name
    data: dict[str, Any] = dict(interaction.data or {})
    return str(data.get("custom_id", "interaction"))


def command_options(interaction: discord.Interaction) -> str:
    namespace = vars(interaction.namespace)
    return " ".join(f"{k}={v}" for k, v in namespace.items())
