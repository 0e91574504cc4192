"""Discord: the bot client (`AidrawBot`) the cogs share: discord.py's Bot with the engine,
settings, user settings and the policy (bot/policy.py: places, quotas, the image check,
the moderation log); `setup` (given by `bot.discord.bot`) adds the cogs once the
bot has logged in."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import discord
from discord import app_commands
from discord.app_commands import locale_str
from discord.ext import commands

from bot.messages import MESSAGES, locale_of
from bot.policy import Policy
from bot.prefs import UserSettingsStore
from bot.settings import Settings
from engine.engine import Engine

log = logging.getLogger(__name__)


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
        setup: Callable[[AidrawBot], Awaitable[None]],
        **options: Any,
    ) -> None:
        # The bot never joins voice: discord.py's "PyNaCl/davey is not installed, voice will NOT
        # be supported" warnings would only alarm whoever reads the start-up log.
        discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
        intents = discord.Intents.none()
        intents.guilds = True
        super().__init__(
            command_prefix=commands.when_mentioned, intents=intents, help_command=None, **options
        )
        self._setup = setup
        self.engine = engine
        self.settings = settings
        self.store = store
        self.policy = Policy(settings, engine)
        self.quotas = self.policy.quotas

    async def setup_hook(self) -> None:
        await self._setup(self)
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
        self.policy.close()

    async def on_ready(self) -> None:
        log.info("discord: logged in as %s (%s)", self.user, self.user and self.user.id)
