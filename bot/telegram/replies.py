"""What a Telegram chat sees of a job: one status message, then the pictures.

`start_job` sends the status message and submits, then leaves the job to `follow` in a task;
`follow` edits the status with queue position and progress at most every progress_interval_s
(flood control only delays it), then sends each image as a photo with its buttons and deletes
the status. Buttons carry only a job id ("r:12", "v:12:0"), so they work after a restart: the job
is looked up in the journal. Replies that matter go through bot/telegram/retries.py's
`send_retrying` (flood control, 5xx and network failures; it says which calls are tried again).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeAlias, cast

from telegram import (
    Bot,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputMediaPhoto,
    Message,
    ReplyParameters,
    Update,
)
from telegram.error import BadRequest, NetworkError, RetryAfter, TelegramError
from telegram.ext import Application

from bot.messages import Locale, error_text, text
from bot.prefs import UserSettingsStore
from bot.settings import Settings
from bot.telegram.retries import retry_seconds, send_retrying
from engine.engine import Engine
from engine.errors import EngineClosed, EngineError, JobCancelled
from engine.job import Job
from engine.journal import JobRecord
from engine.request import GenerationRequest, GenerationResult, Progress

log = logging.getLogger(__name__)

PREFIX = "telegram:"
MAX_CAPTION = 1024  # Telegram counts UTF-16 code units
App: TypeAlias = "Application[Any, Any, Any, Any, Any, Any]"


@dataclass
class Deps:
    """What the handlers need, kept in `app.bot_data`."""

    engine: Engine[Any]
    settings: Settings
    store: UserSettingsStore
    followers: set[asyncio.Task[Any]] = field(default_factory=set)
    closing: bool = False


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


def _utf16_len(value: str) -> int:
    return len(value.encode("utf-16-le")) // 2


def cut(value: str, limit: int = MAX_CAPTION) -> str:
    """`value` within `limit` UTF-16 code units (as Telegram counts), ending in … if cut."""
    if _utf16_len(value) <= limit:
        return value
    kept = value[: limit - 1]
    while _utf16_len(kept) > limit - 1:
        kept = kept[:-1]
    return kept + "…"


def caption(result: GenerationResult, locale: Locale, notes: Iterable[str] = ()) -> str:
    """A summary line, the parser's notes, then the A1111 infotext, cut to Telegram's limit."""
    r = result.request
    head = text("caption", locale, seed=result.seed, model=r.model, steps=r.num_inference_steps)
    return cut("\n\n".join([head, *notes, result.infotext]))


def status_text(progress: Progress | None, locale: Locale, notes: Iterable[str] = ()) -> str:
    if progress is None or (progress.state == "queued" and progress.position is None):
        line = text("tg_waiting", locale)
    elif progress.state == "queued":
        line = text("queued", locale, position=progress.position, eta=_eta(progress, locale))
    else:
        eta = _eta(progress, locale)
        line = text("drawing", locale, step=progress.step, total=progress.total, eta=eta)
    return "\n".join([line, *notes])


def _eta(progress: Progress, locale: Locale) -> str:
    if progress.eta_s is None:
        return ""
    return text("eta", locale, seconds=max(1, round(progress.eta_s)))


def cancel_keyboard(job_id: int, locale: Locale) -> InlineKeyboardMarkup:
    button = InlineKeyboardButton(text("tg_button_cancel", locale), callback_data=f"c:{job_id}")
    return InlineKeyboardMarkup([[button]])


def result_keyboard(job_id: int, index: int, locale: Locale, *, png: bool) -> InlineKeyboardMarkup:
    """Reroll (same request, new seed), variations of this image, and its original PNG."""
    row = [
        InlineKeyboardButton(text("tg_button_reroll", locale), callback_data=f"r:{job_id}"),
        InlineKeyboardButton(
            text("tg_button_variations", locale), callback_data=f"v:{job_id}:{index}"
        ),
    ]
    if png:
        row.append(
            InlineKeyboardButton(text("tg_button_png", locale), callback_data=f"d:{job_id}:{index}")
        )
    return InlineKeyboardMarkup([row])


def reroll(request: GenerationRequest) -> GenerationRequest:
    """The same request with a new seed (and a new variation seed, if it was a variation)."""
    subseed = None if request.subseed_strength else request.subseed
    return dataclasses.replace(request, seed=None, subseed=subseed)


def variation(record: JobRecord, index: int, strength: float) -> GenerationRequest:
    """A1111's variation seed: image `index`'s seed, moved `strength` toward random noise."""
    seed = record.images[index].seed
    return dataclasses.replace(record.request, seed=seed, subseed=None, subseed_strength=strength)


def replying(message_id: int) -> ReplyParameters:
    return ReplyParameters(message_id=message_id, allow_sending_without_reply=True)


# --- following a job ---------------------------------------------------------------------------


class StatusMessage:
    """The one message a job's progress shows in: text, or a photo once a preview exists.

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
        self.shown: tuple[str, bytes | None] | None = None
        self.not_before = 0.0

    async def show(
        self, body: str, keyboard: InlineKeyboardMarkup | None, preview: bytes | None = None
    ) -> None:
        loop = asyncio.get_running_loop()
        preview = preview if self.previews else None
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
        chat, message_id = self.reply.chat_id, self.message_id
        if preview is not None and not self.photo or not message_id:
            if preview is not None:
                message: Message = await self.bot.send_photo(
                    chat,
                    preview,
                    caption=cut(body),
                    reply_markup=keyboard,
                    has_spoiler=self.spoiler,
                    reply_parameters=replying(self.reply.message_id),
                )
            else:
                message = await self.bot.send_message(
                    chat,
                    body,
                    reply_markup=keyboard,
                    reply_parameters=replying(self.reply.message_id),
                )
            self.message_id, self.photo = message.message_id, preview is not None
            if message_id:
                await self._delete(message_id)
        elif preview is not None and (self.shown is None or preview != self.shown[1]):
            media = InputMediaPhoto(preview, caption=cut(body), has_spoiler=self.spoiler)
            await self.bot.edit_message_media(
                media, chat_id=chat, message_id=message_id, reply_markup=keyboard
            )
        elif self.photo:
            await self.bot.edit_message_caption(
                chat_id=chat, message_id=message_id, caption=cut(body), reply_markup=keyboard
            )
        else:
            await self.bot.edit_message_text(
                body, chat_id=chat, message_id=message_id, reply_markup=keyboard
            )

    async def last(self, body: str) -> None:
        """The final words (cancelled, failed): wait out flood control, show, no keyboard."""
        wait = self.not_before - asyncio.get_running_loop().time()
        if wait > 0:
            await asyncio.sleep(wait)
        if self.photo:
            await self.delete()  # a preview photo: a text message replaces it
        self.previews = self.photo = False
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
    log.info("telegram job %d from %s in chat %d", job.id, request.requester, chat_id)
    following = follow(deps, bot, job, reply, spoiler=spoiler, notes=notes)
    app.create_task(following, update=update, name=f"telegram job {job.id}")


async def follow(
    deps: Deps,
    bot: Bot,
    job: Job,
    reply: ReplyTo,
    *,
    spoiler: bool,
    notes: tuple[str, ...] = (),
) -> None:
    """Show a job's progress in its status message, then send its pictures (or why not)."""
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
    result = asyncio.ensure_future(job.result())
    try:
        while not result.done():
            progress = job.progress
            await status.show(
                status_text(progress, reply.locale, notes), keyboard, progress.preview
            )
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
        try:
            await send_results(deps, bot, job, results, reply, spoiler=spoiler, notes=notes)
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
    finally:
        result.cancel()
        deps.followers.discard(task)


async def send_results(
    deps: Deps,
    bot: Bot,
    job: Job,
    results: list[GenerationResult],
    reply: ReplyTo,
    *,
    spoiler: bool,
    notes: tuple[str, ...] = (),
) -> None:
    """Each image as a photo with its keyboard; the original PNG too if the user wants it."""
    prefs = deps.store.get(job.requester)
    as_document = prefs.send_as_document
    if as_document is None:
        as_document = deps.settings.telegram.send_as_document
    locale = reply.locale
    for index, result in enumerate(results):
        words = caption(result, locale, notes if index == 0 else ())
        keyboard = result_keyboard(job.id, index, locale, png=not as_document)
        send = functools.partial(
            bot.send_photo,
            reply.chat_id,
            result.png,
            caption=words,
            reply_markup=keyboard,
            has_spoiler=spoiler,
            reply_parameters=replying(reply.message_id),
        )
        try:
            photo = await send_retrying(send, "photo")
        except BadRequest as e:  # e.g. a side ratio over 20: Telegram takes it as a file only
            log.warning("job %d: photo refused (%s); sending the PNG as a file", job.id, e.message)
            await send_png(bot, job.id, result, reply.chat_id, reply.message_id, keyboard)
            continue
        if as_document:
            await send_png(bot, job.id, result, reply.chat_id, photo.message_id)


async def send_png(
    bot: Bot,
    job_id: int,
    result: GenerationResult | tuple[bytes, int, str],
    chat_id: int,
    reply_to: int,
    keyboard: InlineKeyboardMarkup | None = None,
) -> None:
    """The original PNG (with its infotext chunk) as a file, so Telegram does not re-encode it."""
    png, seed, infotext = (
        (result.png, result.seed, result.infotext)
        if isinstance(result, GenerationResult)
        else result
    )
    send = functools.partial(
        bot.send_document,
        chat_id,
        png,
        filename=f"aidraw-{job_id}-{seed}.png",
        caption=cut(infotext),
        reply_markup=keyboard,
        reply_parameters=replying(reply_to),
    )
    await send_retrying(send, "document")
