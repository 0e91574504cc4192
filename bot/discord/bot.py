"""The Discord bot: `run_discord(engine, settings, store, token)`, the launcher's entry point.

`setup()` adds the cogs (`bot.discord.draw.DrawCog`, `bot.discord.account.AccountCog`,
`bot.discord.admin.AdminCog`) and the persistent job buttons to the client
(`bot.discord.client.AidrawBot`). Environment variables point it at another Discord (the
tests' fake one).
"""

from __future__ import annotations

import os
from typing import Any

import discord
import yarl
from discord.ext import commands

from bot.discord.account import AccountCog
from bot.discord.admin import AdminCog
from bot.discord.client import AidrawBot
from bot.discord.draw import DrawCog
from bot.discord.views import JobButton
from bot.prefs import UserSettingsStore
from bot.settings import Settings
from engine.engine import Engine

API_URL_ENV = "AIDRAW_DISCORD_API_URL"
GATEWAY_URL_ENV = "AIDRAW_DISCORD_GATEWAY_URL"


async def setup(bot: commands.Bot) -> None:
    """Extension entry point: the cogs and their persistent buttons."""
    if not isinstance(bot, AidrawBot):
        raise TypeError("the Discord cogs need an AidrawBot (engine, settings, store)")
    bot.add_dynamic_items(JobButton)
    await bot.add_cog(DrawCog(bot))
    await bot.add_cog(AccountCog(bot))
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
    bot = AidrawBot(engine, settings, store, setup, **options)
    async with bot:
        await bot.start(token)
