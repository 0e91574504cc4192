"""What a Telegram chat sees of a job: one status message, then the pictures.

`start_job` sends the status message and submits, then leaves the job to `follow` in a task;
`follow` edits the status with queue position and progress at most every progress_interval_s
(flood control only delays it), then sends the pictures (bot/telegram/results.py) and deletes
the status. The status is text until the first preview, then one photo for the rest of the job
(its last words too): it never switches back, so it is re-sent at most once. Replies that
matter go through bot/telegram/retries.py's `send_retrying` (flood control, 5xx and network
failures; it says which calls are tried again).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import re
from dataclasses import dataclass, field
from typing import Any, TypeAlias, cast

from telegram import Bot, InlineKeyboardMarkup, InputMediaPhoto, Message, Update
from telegram.error import BadRequest, NetworkError, RetryAfter, TelegramError
from telegram.ext import Application

from bot.advice import size_warning
from bot.messages import Locale, error_text, text
from bot.places import Place
from bot.policy import Policy
from bot.prefs import UserSettingsStore
from bot.settings import Settings
from bot.telegram.captions import cut, status_text
from bot.telegram.markup import cancel_keyboard, replying
from bot.telegram.results import send_results
from bot.telegram.retries import retry_seconds, send_retrying
from engine.engine import Engine
from engine.errors import EngineClosed, EngineError, JobCancelled
from engine.job import Job
from engine.journal import JobRecord
from engine.request import GenerationRequest

log = logging.getLogger(__name__)

PREFIX = "telegram:"
App: TypeAlias = "Application[Any, Any, Any, Any, Any, Any]"


@dataclass
class Deps:
    """What the handlers need, kept in `app.bot_data`."""

    engine: Engine[Any]
    settings: Settings
    store: UserSettingsStore
    followers: set[asyncio.Task[Any]] = field(default_factory=set)
    closing: bool = False
    policy: Policy = field(init=False)  # places, quotas, the image check, the moderation log

    def __post_init__(self) -> None:
        self.policy = Policy(self.settings, self.engine)


@dataclass(frozen=True)
class ReplyTo:
    """Where a job's reply goes; the engine keeps `str(reply)` in its journal as `reply_to`.

    `update_id` is the update that asked for the job (0: not known, as in journals written
    before it was kept): bot/telegram/polling.py skips it if Telegram sends it again.
    """

    chat_id: int
    message_id: int  # the message the pictures answer
    status_id: int  # the status message edited meanwhile (0: none yet, the job sends one)
    locale: Locale
    update_id: int = 0

    def __str__(self) -> str:
        base = f"{PREFIX}{self.chat_id}:{self.message_id}:{self.status_id}:{self.locale}"
        return f"{base}:{self.update_id}" if self.update_id else base

    @classmethod
    def parse(cls, value: str) -> ReplyTo | None:
        match = re.fullmatch(r"telegram:(-?\d+):(\d+):(\d+):(en|zh)(?::(\d+))?", value)
        if match is None:
            return None
        chat, message, status, locale = int(match[1]), int(match[2]), int(match[3]), match[4]
        return cls(chat, message, status, cast(Locale, locale), int(match[5] or 0))

    @property
    def group(self) -> bool:
        return self.chat_id < 0  # Telegram's group and channel ids are negative

    @property
    def place(self) -> Place:
        return Place(frontend="telegram", chat=self.chat_id, group=self.group)


def reroll(request: GenerationRequest) -> GenerationRequest:
    """The same request with a new seed (and a new variation seed, if it was a variation)."""
    subseed = None if request.subseed_strength else request.subseed
    return dataclasses.replace(request, seed=None, subseed=subseed)


def variation(record: JobRecord, index: int, strength: float) -> GenerationRequest:
    """A1111's variation seed: image `index`'s seed, moved `strength` toward random noise."""
    seed = record.images[index].seed
    return dataclasses.replace(record.request, seed=seed, subseed=None, subseed_strength=strength)


# --- following a job ---------------------------------------------------------------------------


class StatusMessage:
    """The one message a job's progress shows in: text until the first preview, then a photo
    for the rest of the job, its last words too. It never switches back to text, so it is
    sent anew at most once (unless someone deletes it: then it is sent again as it was).

    Edits are best effort: flood control (RetryAfter) skips them until Telegram allows
    again, and a status message that is gone is sent anew.
    """

    def __init__(self, bot: Bot, reply: ReplyTo, *, previews: bool, spoiler: bool) -> None:
        self.bot = bot
        self.reply = reply
        self.message_id = reply.status_id
        self.previews = previews
        self.spoiler = spoiler
        self.photo = False
        self.preview: bytes | None = None  # the picture of the photo, once it is one
        self.shown: tuple[str, bytes | None] | None = None
        self.not_before = 0.0

    async def show(
        self, body: str, keyboard: InlineKeyboardMarkup | None, preview: bytes | None = None
    ) -> None:
        loop = asyncio.get_running_loop()
        preview = preview if self.previews else None
        if preview is None and self.photo:
            preview = self.preview  # no new preview (yet): the photo keeps its picture
        if (body, preview) == self.shown or loop.time() < self.not_before:
            return
        try:
            await self._show(body, keyboard, preview)
        except RetryAfter as e:
            self.not_before = loop.time() + retry_seconds(e)
            log.info("flood control: status in chat %d waits", self.reply.chat_id)
            return
        except BadRequest as e:
            if "not modified" not in e.message:
                log.info("status message in chat %d is gone (%s)", self.reply.chat_id, e.message)
                self.message_id = 0  # the next show() sends a new one
                return
        except TelegramError as e:
            log.warning("status in chat %d not shown: %r", self.reply.chat_id, e)
            return
        self.shown = (body, preview)

    async def _show(
        self, body: str, keyboard: InlineKeyboardMarkup | None, preview: bytes | None
    ) -> None:
        """Edit the status in place; send it anew only if there is none yet, or to turn the
        text into a photo (once: the text is deleted then)."""
        chat, message_id = self.reply.chat_id, self.message_id
        if message_id and (preview is None or self.photo):
            await self._edit(body, keyboard, preview)
            return
        if preview is not None:
            try:
                message: Message = await self.bot.send_photo(
                    chat,
                    preview,
                    caption=cut(body),
                    reply_markup=keyboard,
                    has_spoiler=self.spoiler,
                    reply_parameters=replying(self.reply.message_id),
                )
            except BadRequest as e:  # Telegram takes no photo of this size: stay text
                log.info("chat %d: no preview photo (%s); the status stays text", chat, e.message)
                self.previews = False
                await self._show(body, keyboard, None)
                return
        else:
            message = await self.bot.send_message(
                chat,
                body,
                reply_markup=keyboard,
                reply_parameters=replying(self.reply.message_id),
            )
        self.message_id, self.photo, self.preview = message.message_id, preview is not None, preview
        if message_id:
            await self._delete(message_id)

    async def _edit(
        self, body: str, keyboard: InlineKeyboardMarkup | None, preview: bytes | None
    ) -> None:
        chat, message_id = self.reply.chat_id, self.message_id
        if self.photo and preview is not None and preview != self.preview:
            media = InputMediaPhoto(preview, caption=cut(body), has_spoiler=self.spoiler)
            await self.bot.edit_message_media(
                media, chat_id=chat, message_id=message_id, reply_markup=keyboard
            )
            self.preview = preview
        elif self.photo:
            await self.bot.edit_message_caption(
                chat_id=chat, message_id=message_id, caption=cut(body), reply_markup=keyboard
            )
        else:
            await self.bot.edit_message_text(
                body, chat_id=chat, message_id=message_id, reply_markup=keyboard
            )

    async def last(self, body: str) -> None:
        """The final words (cancelled, failed): wait out flood control, show, no keyboard. A
        preview photo keeps its picture and gets the words as its caption."""
        wait = self.not_before - asyncio.get_running_loop().time()
        if wait > 0:
            await asyncio.sleep(wait)
        self.previews = False
        show = functools.partial(self._show, body, None, None)
        try:
            await send_retrying(show, "status", idempotent=self.message_id != 0)  # an edit
        except BadRequest as e:
            if "not modified" in e.message:
                return
            log.info("status message in chat %d is gone (%s)", self.reply.chat_id, e.message)
            self.message_id = 0
            await send_retrying(show, "status")

    async def delete(self) -> None:
        if self.message_id:
            await self._delete(self.message_id)
            self.message_id = 0

    async def _delete(self, message_id: int) -> None:
        delete = functools.partial(self.bot.delete_message, self.reply.chat_id, message_id)
        try:
            await send_retrying(delete, "delete", idempotent=True)
        except TelegramError as e:  # already gone, or too old to delete: nothing to clean up
            log.info("status message %d not deleted: %r", message_id, e)


async def start_job(
    deps: Deps,
    app: App,
    update: Update,
    request: GenerationRequest,
    *,
    chat_id: int,
    reply_to: int,
    locale: Locale,
    notes: tuple[str, ...] = (),
    spoiler: bool = False,
) -> None:
    """Send the status message and submit (the journal keeps the status message's id and the
    update's), then follow the job in a task of `app`: its errors reach on_error as a
    handler's would.

    Returns once the job is journaled, not when it is drawn: bot/telegram/polling.py confirms
    the update to Telegram only after this returned, so nothing here waits long. A status
    message that cannot be sent now (flood control, the network) is left to the job, which
    sends one as soon as it can.
    """
    bot = app.bot
    try:
        status: Message | None = await bot.send_message(
            chat_id, status_text(None, locale, notes), reply_parameters=replying(reply_to)
        )
    except (RetryAfter, NetworkError) as e:
        if isinstance(e, BadRequest):
            raise
        log.info("status message in chat %d not sent now (%s); the job sends it", chat_id, e)
        status = None
    reply = ReplyTo(chat_id, reply_to, status.message_id if status else 0, locale, update.update_id)
    try:
        job = deps.engine.submit(request, reply_to=str(reply))
    except EngineError as e:
        await StatusMessage(bot, reply, previews=False, spoiler=False).last(error_text(e, locale))
        return
    deps.policy.started(request)
    log.info("telegram job %d from %s in chat %d", job.id, request.requester, chat_id)
    # The size warning (bot/advice.py) is for before the drawing: the status, not the caption.
    warning = size_warning(deps.engine, job, locale)
    following = follow(deps, bot, job, reply, spoiler=spoiler, notes=notes, warning=warning)
    app.create_task(following, update=update, name=f"telegram job {job.id}")


async def follow(
    deps: Deps,
    bot: Bot,
    job: Job,
    reply: ReplyTo,
    *,
    spoiler: bool,
    notes: tuple[str, ...] = (),
    warning: str | None = None,
) -> None:
    """Show a job's progress in its status message, then send its pictures (or why not).

    `notes` (the parser's) are shown in the status and the first caption; `warning` in the
    status only.
    """
    task = asyncio.current_task()
    if deps.closing or task is None:
        return  # the job stays in the journal and is answered after the restart
    deps.followers.add(task)
    tg = deps.settings.telegram
    status = StatusMessage(bot, reply, previews=tg.previews and not reply.group, spoiler=spoiler)
    interval = (
        tg.group_progress_interval_s if reply.group else deps.settings.bot.progress_interval_s
    )
    keyboard = cancel_keyboard(job.id, reply.locale)
    status_notes = (*notes, warning) if warning else notes
    result = asyncio.ensure_future(job.result())
    try:
        while not result.done():
            progress = job.progress
            upscaling = job.request.extras_upscale
            words = status_text(progress, reply.locale, status_notes, upscaling=upscaling)
            await status.show(words, keyboard, progress.preview)
            await asyncio.wait({result}, timeout=interval)
        try:
            results = result.result()
        except EngineClosed:
            return  # shutting down: the job stays in the journal for the next start
        except EngineError as e:
            cancelled = isinstance(e, JobCancelled)
            words = text("cancelled", reply.locale) if cancelled else error_text(e, reply.locale)
            await status.last(words)
            deps.engine.mark_delivered(job.id)
            return
        policy, place = deps.policy, reply.place
        rules = policy.rules(place)
        review = await policy.review(place, results)
        if review.outcome == "refuse":
            await status.last(policy.withheld(job.id, review, reply.locale))
            deps.engine.mark_delivered(job.id)
            shown = [status.message_id] if status.message_id else []
            policy.logged(job.id, job.request, place, review, chat=reply.chat_id, messages=shown)
            return
        if rules.output == "verbose" or review.outcome == "spoiler":
            notes = (*notes, review.note(reply.locale))
        try:
            as_document = deps.store.get(job.requester).send_as_document
            sent = await send_results(
                bot,
                job.id,
                results,
                chat_id=reply.chat_id,
                reply_to=reply.message_id,
                locale=reply.locale,
                spoiler=spoiler or review.outcome == "spoiler",
                as_document=tg.send_as_document if as_document is None else as_document,
                notes=notes,
                minimal=rules.output == "minimal",
            )
        except TelegramError as e:
            log.error(
                "job %d: pictures not delivered (%s); the journal keeps the job undelivered, "
                "and the next start sends them",
                job.id,
                e,
            )
            raise
        deps.engine.mark_delivered(job.id)  # before the clean-up: the pictures are what counts
        await status.delete()
        policy.logged(job.id, job.request, place, review, chat=reply.chat_id, messages=sent)
        if rules.delete_after_s and reply.group:
            await asyncio.sleep(rules.delete_after_s)  # koishi's recall: the group's result goes
            for message_id in sent:
                await status._delete(message_id)
    finally:
        result.cancel()
        deps.followers.discard(task)
