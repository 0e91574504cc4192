"""The Discord bot: `run_discord(engine, settings, store, token)`, the launcher's entry point.

`AidrawBot` is discord.py's Bot with the engine, settings, user settings and quotas the cogs
share; `setup()` adds the cogs (`bot.discord_cog.DrawCog`, `bot.discord_admin.AdminCog`) and
the persistent job buttons. Environment variables point it at another Discord (the tests'
fake one).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import discord
import yarl
from discord import app_commands
from discord.app_commands import locale_str
from discord.ext import commands

from bot.discord_admin import AdminCog
from bot.discord_cog import DrawCog
from bot.discord_views import JobButton
from bot.messages import MESSAGES, locale_of
from bot.quotas import Quotas
from bot.settings import Settings
from bot.user_settings import UserSettingsStore
from engine.engine import Engine

log = logging.getLogger(__name__)

API_URL_ENV = "AIDRAW_DISCORD_API_URL"
GATEWAY_URL_ENV = "AIDRAW_DISCORD_GATEWAY_URL"


class MessagesTranslator(app_commands.Translator):
    """Chinese command and option descriptions from messages.py."""

    async def translate(
        self, string: locale_str, locale: discord.Locale, context: Any
    ) -> str | None:
        key = string.extras.get("key")
        if key is None or locale_of(locale.value) != "zh":
            return None
        return MESSAGES[key]["zh"]


class AidrawBot(commands.Bot):
    """discord.py's Bot with what the cog needs; slash commands only (no privileged intents)."""

    def __init__(
        self,
        engine: Engine[Any],
        settings: Settings,
        store: UserSettingsStore,
        **options: Any,
    ) -> None:
        intents = discord.Intents.none()
        intents.guilds = True
        super().__init__(
            command_prefix=commands.when_mentioned, intents=intents, help_command=None, **options
        )
        self.engine = engine
        self.settings = settings
        self.store = store
        journal = engine.config.journal
        self.quotas = Quotas(
            journal if journal == ":memory:" else Path(journal).with_name("quotas.sqlite3"),
            engine,
            settings.discord.daily_quota,
        )

    async def setup_hook(self) -> None:
        await setup(self)
        await self.tree.set_translator(MessagesTranslator())
        commands_ = await self.tree.sync()
        log.info("discord: %d slash commands registered", len(commands_))

    async def close(self) -> None:
        # discord.py 2.7 leaves its READY timer (guild_ready_timeout) running at close, and it
        # then dispatches on_ready on a closed client (an AttributeError in a lost task).
        ready = getattr(self._connection, "_ready_task", None)
        if ready is not None:
            ready.cancel()
        await super().close()
        self.quotas.close()

    async def on_ready(self) -> None:
        log.info("discord: logged in as %s (%s)", self.user, self.user and self.user.id)


async def setup(bot: commands.Bot) -> None:
    """Extension entry point: the cogs and their persistent buttons."""
    if not isinstance(bot, AidrawBot):
        raise TypeError("the Discord cogs need an AidrawBot (engine, settings, store)")
    bot.add_dynamic_items(JobButton)
    await bot.add_cog(DrawCog(bot))
    await bot.add_cog(AdminCog(bot))


def point_discord_at(api_url: str | None, gateway_url: str | None) -> None:
    """Send discord.py's REST and gateway traffic elsewhere (the tests' fake Discord). Both
    attributes are private, which is why discord.py is pinned to 2.7.*."""
    if api_url:
        discord.http.Route.BASE = api_url  # type: ignore[misc]
    if gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)


async def run_discord(
    engine: Engine[Any],
    settings: Settings,
    store: UserSettingsStore,
    token: str,
    **options: Any,
) -> None:
    """Run the Discord bot until cancelled, then close it (the launcher's contract).

    `options` go to discord.py's Bot (tests pass guild_ready_timeout).
    """
    point_discord_at(os.environ.get(API_URL_ENV), os.environ.get(GATEWAY_URL_ENV))
    bot = AidrawBot(engine, settings, store, **options)
    async with bot:
        await bot.start(token)
