"""What a Telegram chat sees of a job: one status message, then the pictures.

`start_job` sends the status message and submits; `follow` edits the status with queue position
and progress at most every progress_interval_s (flood control only delays it), then sends each
image as a photo with its buttons and deletes the status. Buttons carry only a job id
("r:12", "v:12:0"), so they work after a restart: the job is looked up in the journal.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar, cast

from telegram import (
    Bot,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputMediaPhoto,
    Message,
    ReplyParameters,
)
from telegram.error import BadRequest, RetryAfter, TelegramError

from bot.messages import Locale, error_text, text
from bot.prefs import UserSettingsStore
from bot.settings import Settings
from engine.engine import Engine
from engine.errors import EngineClosed, EngineError, JobCancelled
from engine.job import Job
from engine.journal import JobRecord
from engine.request import GenerationRequest, GenerationResult, Progress

log = logging.getLogger(__name__)

PREFIX = "telegram:"
MAX_CAPTION = 1024  # Telegram counts UTF-16 code units
SEND_ATTEMPTS = 5  # flood-control waits before a reply is given up
T = TypeVar("T")


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
    """Where a job's reply goes; the engine keeps `str(reply)` in its journal as `reply_to`."""

    chat_id: int
    message_id: int  # the message the pictures answer
    status_id: int  # the status message edited meanwhile
    locale: Locale

    def __str__(self) -> str:
        return f"{PREFIX}{self.chat_id}:{self.message_id}:{self.status_id}:{self.locale}"

    @classmethod
    def parse(cls, value: str) -> ReplyTo | None:
        match = re.fullmatch(r"telegram:(-?\d+):(\d+):(\d+):(en|zh)", value)
        if match is None:
            return None
        return cls(int(match[1]), int(match[2]), int(match[3]), cast(Locale, match[4]))

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


def retry_seconds(error: RetryAfter) -> float:
    """RetryAfter.retry_after in seconds: an int, or a timedelta with PTB_TIMEDELTA=true."""
    value = error.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


async def send_retrying(call: Callable[[], Awaitable[T]], what: str) -> T:
    """`call()`, repeated after each flood-control wait Telegram asks for (RetryAfter)."""
    attempt = 1
    while True:
        try:
            return await call()
        except RetryAfter as e:
            if attempt >= SEND_ATTEMPTS:
                raise
            wait = retry_seconds(e)
            log.info("flood control on %s: trying again in %.1f s", what, wait)
            await asyncio.sleep(wait)
            attempt += 1


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
        try:
            await send_retrying(functools.partial(self._show, body, None, None), "status")
        except BadRequest as e:
            if "not modified" in e.message:
                return
            log.info("status message in chat %d is gone (%s)", self.reply.chat_id, e.message)
            self.message_id = 0
            await send_retrying(functools.partial(self._show, body, None, None), "status")

    async def delete(self) -> None:
        if self.message_id:
            await self._delete(self.message_id)
            self.message_id = 0

    async def _delete(self, message_id: int) -> None:
        try:
            await self.bot.delete_message(self.reply.chat_id, message_id)
        except TelegramError as e:  # already gone, or too old to delete: nothing to clean up
            log.info("status message %d not deleted: %r", message_id, e)


async def start_job(
    deps: Deps,
    bot: Bot,
    request: GenerationRequest,
    *,
    chat_id: int,
    reply_to: int,
    locale: Locale,
    notes: tuple[str, ...] = (),
    spoiler: bool = False,
) -> None:
    """Send the status message, submit (its id goes into the journal), then follow the job."""
    status = await send_retrying(
        functools.partial(
            bot.send_message,
            chat_id,
            status_text(None, locale, notes),
            reply_parameters=replying(reply_to),
        ),
        "status",
    )
    reply = ReplyTo(chat_id, reply_to, status.message_id, locale)
    try:
        job = deps.engine.submit(request, reply_to=str(reply))
    except EngineError as e:
        await send_retrying(functools.partial(status.edit_text, error_text(e, locale)), "status")
        return
    log.info("telegram job %d from %s in chat %d", job.id, request.requester, chat_id)
    await follow(deps, bot, job, reply, spoiler=spoiler, notes=notes)


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
        await send_results(deps, bot, job, results, reply, spoiler=spoiler, notes=notes)
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
