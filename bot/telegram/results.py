"""A finished Telegram job's pictures: one photo with its buttons, or albums.

`--n` > 1 comes as one album (sendMediaGroup; ten pictures at most each, so more make several)
with its buttons in a message right after it, since Telegram puts no inline keyboard on an
album. The original PNGs follow as files when the user wants them ([telegram]
send_as_document, /settings doc=on). Every send goes through `send_retrying`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

from telegram import Bot, InlineKeyboardMarkup, InputMediaDocument, InputMediaPhoto, Message
from telegram.error import BadRequest

from bot.messages import Locale, text
from bot.telegram.captions import cut, result_caption
from bot.telegram.markup import album_keyboard, replying, result_keyboard
from bot.telegram.retries import send_retrying
from engine.request import GenerationResult

log = logging.getLogger(__name__)

ALBUM_MAX = 10  # Telegram's most media in one group


def album_sizes(count: int) -> list[int]:
    """`count` pictures in as few albums as Telegram allows, evenly: never an album of one."""
    albums = -(-count // ALBUM_MAX)
    return [count // albums + (i < count % albums) for i in range(albums)]


async def send_results(
    bot: Bot,
    job_id: int,
    results: Sequence[GenerationResult],
    *,
    chat_id: int,
    reply_to: int,
    locale: Locale,
    spoiler: bool,
    as_document: bool,
    notes: tuple[str, ...] = (),
    minimal: bool = False,
) -> list[int]:
    """The pictures, answering message `reply_to`; the parser's notes go in the first caption
    (`minimal`: no caption at all). Returns the ids of the messages sent."""
    if len(results) == 1:
        return await _send_photo(
            bot, job_id, results[0], chat_id, reply_to, locale, spoiler, as_document, notes, minimal
        )
    ids: list[int] = []
    start = 0
    for size in album_sizes(len(results)):
        album = results[start : start + size]
        indexes = range(start, start + size)
        words: str | None = None  # minimal: no caption
        if not minimal:
            words = result_caption(job_id, album, locale, notes if start == 0 else ())
        media = [
            InputMediaPhoto(r.png, caption=words if i == 0 else None, has_spoiler=spoiler)
            for i, r in enumerate(album)
        ]
        send = functools.partial(
            bot.send_media_group, chat_id, media, reply_parameters=replying(reply_to)
        )
        documents = as_document
        try:
            sent: Sequence[Message] = await send_retrying(send, "album")
        except BadRequest as e:  # e.g. a side ratio over 20: Telegram takes it as a file only
            log.warning("job %d: album refused (%s); sending the PNGs as files", job_id, e.message)
            sent = await _send_files(bot, job_id, album, chat_id, reply_to)
            documents = False
        ids += [m.message_id for m in sent]
        keyboard = album_keyboard(job_id, indexes, locale, png=not as_document)
        words = text("tg_album_buttons", locale, job=job_id, first=start + 1, last=start + size)
        buttons = functools.partial(
            bot.send_message,
            chat_id,
            words,
            reply_markup=keyboard,
            reply_parameters=replying(sent[0].message_id),
        )
        ids.append((await send_retrying(buttons, "buttons")).message_id)
        if documents:
            files = await _send_files(bot, job_id, album, chat_id, sent[0].message_id)
            ids += [m.message_id for m in files]
        start += size
    return ids


async def _send_photo(
    bot: Bot,
    job_id: int,
    result: GenerationResult,
    chat_id: int,
    reply_to: int,
    locale: Locale,
    spoiler: bool,
    as_document: bool,
    notes: tuple[str, ...],
    minimal: bool,
) -> list[int]:
    drawn = not result.request.extras_upscale
    keyboard = result_keyboard(job_id, 0, locale, png=not as_document, drawn=drawn)
    send = functools.partial(
        bot.send_photo,
        chat_id,
        result.png,
        caption=None if minimal else result_caption(job_id, [result], locale, notes),
        reply_markup=keyboard,
        has_spoiler=spoiler,
        reply_parameters=replying(reply_to),
    )
    try:
        photo = await send_retrying(send, "photo")
    except BadRequest as e:  # e.g. a side ratio over 20: Telegram takes it as a file only
        log.warning("job %d: photo refused (%s); sending the PNG as a file", job_id, e.message)
        return [await send_png(bot, job_id, result, chat_id, reply_to, keyboard)]
    if as_document:
        return [photo.message_id, await send_png(bot, job_id, result, chat_id, photo.message_id)]
    return [photo.message_id]


async def _send_files(
    bot: Bot,
    job_id: int,
    results: Sequence[GenerationResult],
    chat_id: int,
    reply_to: int,
) -> Sequence[Message]:
    """The original PNGs as one album of files, each captioned with its infotext."""
    media = [
        InputMediaDocument(r.png, filename=png_name(job_id, r.seed), caption=cut(r.infotext))
        for r in results
    ]
    send = functools.partial(
        bot.send_media_group, chat_id, media, reply_parameters=replying(reply_to)
    )
    return await send_retrying(send, "documents")


def png_name(job_id: int, seed: int) -> str:
    return f"aidraw-{job_id}-{seed}.png"


async def send_png(
    bot: Bot,
    job_id: int,
    result: GenerationResult | tuple[bytes, int, str],
    chat_id: int,
    reply_to: int,
    keyboard: InlineKeyboardMarkup | None = None,
) -> int:
    """The original PNG (with its infotext chunk) as a file, so Telegram does not re-encode it;
    the id of its message."""
    png, seed, infotext = (
        (result.png, result.seed, result.infotext)
        if isinstance(result, GenerationResult)
        else result
    )
    send = functools.partial(
        bot.send_document,
        chat_id,
        png,
        filename=png_name(job_id, seed),
        caption=cut(infotext),
        reply_markup=keyboard,
        reply_parameters=replying(reply_to),
    )
    message: Message = await send_retrying(send, "document")
    return message.message_id
