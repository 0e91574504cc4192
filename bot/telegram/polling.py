"""Long polling that confirms an update to Telegram only once its job is in the journal.

Telegram forgets an update when a getUpdates asks for a later offset. PTB's Updater asks for
it as soon as it has queued a batch, before any handler ran, so a kill -9 in between lost the
prompt while the user saw "Queued…". `Poller` instead hands each update to
`Application.process_update` and asks for the next offset only after that returned. The
handlers that submit a job block until `engine.submit` has journaled it, then follow it in a
task (bot/telegram/replies.py `start_job`). So at every moment an update is either not yet
confirmed (Telegram sends it again after a restart) or its job is in the journal (the engine
hands it back from `recovered()`): delivery is at-least-once.

Both at once is the one overlap: the job is journaled, and the getUpdates that confirms its
update never reached Telegram. The journal's reply address keeps the update id (`ReplyTo`),
and an update that a recovered job carries is confirmed without being handled again. Left
open: a job drawn and delivered while its confirmation was still on the way, then a crash (the
confirming getUpdates leaves right after the submit, so it would have to fail or stall for as
long as the drawing and its sendPhoto take).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence

from telegram import Update
from telegram.error import InvalidToken, RetryAfter, TelegramError, TimedOut

from bot.telegram.replies import App
from bot.telegram.retries import retry_seconds

log = logging.getLogger(__name__)

POLL_TIMEOUT_S = 10  # how long one getUpdates waits for news (PTB's start_polling default)
MAX_ERROR_WAIT_S = 30.0  # the longest wait after repeated getUpdates failures (as PTB's)


class Poller:
    """`run()` polls and handles updates until cancelled; `confirm()` then tells Telegram which
    were handled. `journaled` are the update ids of the journal's unanswered jobs."""

    def __init__(self, app: App, allowed_updates: Sequence[str], journaled: Iterable[int]) -> None:
        self.app = app
        self.allowed_updates = list(allowed_updates)
        self.offset = 0  # every update below it is handled (its job journaled, if it has one)
        self._journaled = set(journaled)

    async def run(self) -> None:
        """Poll until cancelled; InvalidToken is raised, other failures are waited out."""
        bot = self.app.bot
        await bot.delete_webhook()  # as PTB's start_polling: polling needs no webhook set
        wait = 0.0
        while True:
            try:
                updates = await bot.get_updates(
                    offset=self.offset,
                    timeout=POLL_TIMEOUT_S,
                    allowed_updates=self.allowed_updates,
                )
            except RetryAfter as e:
                wait = retry_seconds(e)
            except TimedOut:
                wait = 0.0  # the long poll outlived its read timeout: ask again at once
            except InvalidToken:
                raise
            except TelegramError as e:  # the network, a 5xx, 409 (another poller)
                wait = min(MAX_ERROR_WAIT_S, max(1.0, wait * 1.5))
                log.warning("telegram: getUpdates failed (%s); again in %.0f s", e, wait)
            else:
                wait = 0.0
                for update in updates:
                    await self._handle(update)
                    self.offset = update.update_id + 1  # the next getUpdates confirms it
                continue
            await asyncio.sleep(wait)

    async def _handle(self, update: Update) -> None:
        if update.update_id in self._journaled:
            log.info("telegram: update %d has its job from before the restart", update.update_id)
            return
        await self.app.process_update(update)

    async def confirm(self) -> None:
        """One short getUpdates that confirms the handled updates (at shutdown, as PTB's)."""
        try:
            await self.app.bot.get_updates(
                offset=self.offset, timeout=0, allowed_updates=self.allowed_updates
            )
        except TelegramError as e:  # they come again after the restart; journaled ones are skipped
            log.warning("telegram: handled updates not confirmed: %s", e)
