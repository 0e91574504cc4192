"""Discord: where one job's status message and result go (`Reply`).

A job's status message is the interaction's own reply while its token lasts (15 minutes), then a
channel message that mentions the requester.

discord.py tries a request again after a 429, after some 5xx (REST: 500, 502, 504, 524; the
interaction webhooks: any 5xx) and after a reset connection on BSD and Windows only (errno 54,
10054; Linux says 104), five tries with 1-9 s waits. Anything else is raised at once: a 503
from the REST API, a refused, reset or dropped connection, a timeout. `Reply.show(retry=True)`
covers those with its own bounded backoff (`RETRY`).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import aiohttp
import discord
from discord.ext import commands

from bot.backoff import Backoff

log = logging.getLogger(__name__)

# Interaction tokens last 15 minutes; this long before that, replies move to the channel.
TOKEN_MARGIN_S = 60.0

# What is worth another try: Discord failing (after discord.py's own tries), or the network.
TRANSIENT = (discord.DiscordServerError, aiohttp.ClientError, TimeoutError)


RETRY = Backoff(platform="discord")


@dataclass(frozen=True)
class Attachment:
    """A file for a message, kept as bytes: every try sends a new discord.File (one that was
    sent is spent)."""

    filename: str
    data: bytes
    spoiler: bool = False

    def file(self) -> discord.File:
        return discord.File(io.BytesIO(self.data), self.filename, spoiler=self.spoiler)


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
        self.message_id: int | None = None  # the message shown last (the moderation log's)

    async def show(
        self,
        content: str,
        *,
        files: Sequence[Attachment] | None,
        view: discord.ui.View | None,
        retry: bool = False,
    ) -> None:
        """Edit the message to this (files None: keep its attachments), or send it.

        With `retry`, a transient failure (`TRANSIENT`) is tried again with RETRY's backoff,
        then raised. Every try is safe to repeat: an edit sets the same message again, and a
        new channel message keeps one nonce over its tries, which Discord enforces (a repeat
        returns the first message instead of posting another).
        """
        nonce = secrets.randbits(63)
        waits = RETRY.waits(asyncio.get_running_loop().time)
        for attempt in itertools.count(2):
            try:
                await self._show(content, files, view, nonce)
                return
            except TRANSIENT as e:
                wait = next(waits, None) if retry else None
                if wait is None:
                    raise
                log.warning(
                    "discord: reply to %d failed (%r): try %d in %.1f s",
                    self.channel_id,
                    e,
                    attempt,
                    wait,
                )
            await asyncio.sleep(wait)

    async def _show(
        self,
        content: str,
        attachments: Sequence[Attachment] | None,
        view: discord.ui.View | None,
        nonce: int,
    ) -> None:
        files = None if attachments is None else [a.file() for a in attachments]
        interaction = self.interaction
        if interaction is not None:
            left = interaction.expires_at - discord.utils.utcnow()
            if left > timedelta(seconds=TOKEN_MARGIN_S):
                extra: dict[str, Any] = {} if files is None else {"attachments": files}
                with contextlib.suppress(discord.NotFound):  # deleted, or the token is gone
                    shown = await interaction.edit_original_response(
                        content=clip(content), view=view, **extra
                    )
                    self.message_id = shown.id
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
                self.message_id = self.message.id
                return
        mentions = discord.AllowedMentions(everyone=False, roles=False, users=[self.user])
        extra = {"view": view} if view is not None else {}
        channel = self.bot.get_partial_messageable(self.channel_id)
        self.message = await channel.send(
            content, files=files or [], allowed_mentions=mentions, nonce=nonce, **extra
        )
        self.message_id = self.message.id

    async def delete(self) -> None:
        """Delete the message shown last (auto-delete in groups); gone already is fine."""
        if self.message_id is None:
            return
        channel = self.bot.get_partial_messageable(self.channel_id)
        with contextlib.suppress(discord.NotFound):
            await channel.get_partial_message(self.message_id).delete()

    @property
    def user(self) -> discord.Object:
        return discord.Object(self.user_id)
