"""Discord: what every cog's commands share about an interaction: command descriptions, who is
asking (requester ids, locale), where they may ask (`check_place`, `PlaceCheckedCog`), the admin
permission and refusals, model and size autocomplete."""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands
from discord.app_commands import Choice, locale_str
from discord.ext import commands

from bot.discord.client import AidrawBot
from bot.messages import MESSAGES, Locale, locale_of, text
from bot.places import Place
from bot.prefs import UserSettingsStore
from engine.engine import Engine
from engine.prompting.presets import NAI_SIZES

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


def place_of(interaction: discord.Interaction) -> Place:
    """Where the interaction happens, as the policy sees it: the channel and server, the
    channel's age restriction (Discord's NSFW flag) and the member's roles."""
    channel = interaction.channel
    # discord.py keeps a member's role ids even when the server's roles are not cached.
    roles = tuple(int(r) for r in getattr(interaction.user, "_roles", ()))
    return Place(
        frontend="discord",
        chat=interaction.channel_id,
        guild=interaction.guild_id,
        group=interaction.guild_id is not None,
        age_restricted=bool(getattr(channel, "is_nsfw", lambda: False)()),
        roles=roles,
    )


def interaction_locale(store: UserSettingsStore, interaction: discord.Interaction) -> Locale:
    """The user's saved language, else their Discord client's."""
    saved = store.get(requester_of(interaction.user)).locale
    return saved or locale_of(interaction.locale.value)


def check_place(bot: AidrawBot, interaction: discord.Interaction) -> None:
    """allowed_guilds / allowed_channels / allow_dms (admins may use the bot anywhere)."""
    config = bot.settings.discord
    if bot.engine.is_admin(requester_of(interaction.user)):
        return
    if interaction.guild_id is None:
        if not config.allow_dms:
            raise NotAllowed(text("discord_no_dms", interaction_locale(bot.store, interaction)))
        return
    if (config.allowed_guilds and interaction.guild_id not in config.allowed_guilds) or (
        config.allowed_channels and interaction.channel_id not in config.allowed_channels
    ):
        raise NotAllowed(text("discord_not_here", interaction_locale(bot.store, interaction)))


class PlaceCheckedCog(commands.Cog):
    """A cog whose commands keep to where the bot may be used (`check_place`). Autocomplete is
    left unchecked: it draws nothing, and could not show a refusal."""

    bot: AidrawBot

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.type != discord.InteractionType.autocomplete:
            check_place(self.bot, interaction)
        return True


def model_choices(engine: Engine[Any], current: str) -> list[Choice[str]]:
    """Autocomplete: installed models whose name contains what was typed."""
    names = [name for name in engine.models() if current.lower() in name.lower()]
    return [Choice(name=name, value=name) for name in names[:25]]


def size_choices(current: str) -> list[Choice[str]]:
    """Autocomplete: the NAI size presets whose label contains what was typed."""
    labels = [f"{name} ({w}x{h})" for name, (w, h) in NAI_SIZES.items()]
    found = [label for label in labels if current.lower() in label.lower()]
    return [Choice(name=label, value=label.split()[0]) for label in found[:25]]


def command_name(interaction: discord.Interaction) -> str:
    command = interaction.command
    if command is not None:
        return command.qualified_name
    data: dict[str, Any] = dict(interaction.data or {})
    return str(data.get("custom_id", "interaction"))


def command_options(interaction: discord.Interaction) -> str:
    namespace = vars(interaction.namespace)
    return " ".join(f"{k}={v}" for k, v in namespace.items())
