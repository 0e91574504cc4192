"""Discord: where one job's status message and result go (`Reply`).

A job's status message is the interaction's own reply while its token lasts (15 minutes), then a
channel message that mentions the requester.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Any

import discord
from discord.ext import commands

# Interaction tokens last 15 minutes; this long before that, replies move to the channel.
TOKEN_MARGIN_S = 60.0


def clip(content: str, limit: int = 2000) -> str:
    return content if len(content) <= limit else content[: limit - 1] + "…"


class Reply:
    """Where one job's status and result go: the interaction's own message while its token is
    valid, then a message in the channel that mentions the requester (`moved` is what the old
    message says once the job goes on down there)."""

    def __init__(
        self,
        bot: commands.Bot,
        *,
        channel_id: int,
        user_id: int,
        interaction: discord.Interaction | None = None,
        moved: str = "",
    ) -> None:
        self.bot = bot
        self.channel_id = channel_id
        self.user_id = user_id
        self.interaction = interaction
        self.moved = moved
        self.message: discord.Message | None = None

    async def show(
        self, content: str, *, files: list[discord.File] | None, view: discord.ui.View | None
    ) -> None:
        """Edit the message to this (files None: keep its attachments), or send it."""
        interaction = self.interaction
        if interaction is not None:
            left = interaction.expires_at - discord.utils.utcnow()
            if left > timedelta(seconds=TOKEN_MARGIN_S):
                extra: dict[str, Any] = {} if files is None else {"attachments": files}
                with contextlib.suppress(discord.NotFound):  # deleted, or the token is gone
                    await interaction.edit_original_response(
                        content=clip(content), view=view, **extra
                    )
                    return
            elif left > timedelta(0):
                with contextlib.suppress(discord.HTTPException):
                    await interaction.edit_original_response(content=self.moved, view=None)
            self.interaction = None
        content = clip(f"<@{self.user_id}> {content}")
        if self.message is not None:
            extra = {} if files is None else {"attachments": files}
            with contextlib.suppress(discord.NotFound):
                self.message = await self.message.edit(content=content, view=view, **extra)
                return
        mentions = discord.AllowedMentions(everyone=False, roles=False, users=[self.user])
        extra = {"view": view} if view is not None else {}
        channel = self.bot.get_partial_messageable(self.channel_id)
        self.message = await channel.send(
            content, files=files or [], allowed_mentions=mentions, **extra
        )

    @property
    def user(self) -> discord.Object:
        return discord.Object(self.user_id)
