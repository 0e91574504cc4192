"""Telegram: the moderation commands (bot/policy.py is the policy itself): /quota (a user's
own; admins set overrides), /styles and a styles.csv sent with it, /who and /delete (admins, as
a reply to a result). Registered by bot/telegram/app.py beside bot/telegram/handlers.py."""

from __future__ import annotations

import logging

from telegram import Update
from telegram.error import BadRequest

from bot.messages import text
from bot.modlog import modlog_line
from bot.stylebook import CSV_BYTES
from bot.telegram.captions import cut
from bot.telegram.handlers import Context, _admin, _after_command, _deps, _who, place_of
from bot.telegram.replies import PREFIX
from engine.errors import InvalidRequest

log = logging.getLogger(__name__)


async def quota_command(update: Update, context: Context) -> None:
    """/quota: your images today against this chat's limit, and the cooldown. Admins:
    /quota USER_ID N sets a user's daily images (0 = no limit), /quota USER_ID reset."""
    deps = _deps(context)
    message, chat = update.effective_message, update.effective_chat
    assert message is not None and chat is not None
    requester, _, locale = _who(deps, update.effective_user)
    args = _after_command(message.text).split()
    if args and await _admin(deps, requester, message, locale):
        if len(args) != 2 or not args[0].isdigit() or not (args[1].isdigit() or args[1] == "reset"):
            raise InvalidRequest(text("tg_quota_usage", locale))
        user = f"{PREFIX}{args[0]}"
        deps.policy.quotas.set(user, None if args[1] == "reset" else int(args[1]))
        log.info("%s set the quota of %s to %s", requester, user, args[1])
        said = deps.policy.quota_text(place_of(chat), user, locale)
        await message.reply_text(f"{user}: {said}")
        return
    if not args:
        await message.reply_text(deps.policy.quota_text(place_of(chat), requester, locale))


async def styles_command(update: Update, context: Context) -> None:
    """/styles: the styles --style NAME may name in this chat."""
    deps = _deps(context)
    message, chat = update.effective_message, update.effective_chat
    assert message is not None and chat is not None
    requester, _, locale = _who(deps, update.effective_user)
    await message.reply_text(cut(deps.policy.styles_text(place_of(chat), requester, locale), 4000))


async def styles_import(update: Update, context: Context) -> None:
    """An A1111 styles.csv sent with the caption /styles: its styles saved as the sender's
    own; with /styles chat (admins, in a group), as the chat's."""
    deps = _deps(context)
    message, chat = update.effective_message, update.effective_chat
    assert message is not None and chat is not None and message.document is not None
    requester, _, locale = _who(deps, update.effective_user)
    scope = requester
    if _after_command(message.caption).strip().lower() == "chat" and chat.id < 0:
        if not await _admin(deps, requester, message, locale):
            return
        scope = f"telegram:chat:{chat.id}"
    if (message.document.file_size or 0) > CSV_BYTES:
        raise InvalidRequest(text("styles_too_big", locale, limit=CSV_BYTES // 1024))
    data = bytes(await (await message.document.get_file()).download_as_bytearray())
    try:
        count = deps.policy.styles.import_csv(scope, data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as e:
        raise InvalidRequest(text("styles_unreadable", locale, problem=str(e))) from None
    log.info("%s imported %d style(s) into %s", requester, count, scope)
    listing = deps.policy.styles_text(place_of(chat), requester, locale)
    await message.reply_text(
        cut(f"{text('styles_imported', locale, count=count)}\n{listing}", 4000)
    )


async def moderation_command(update: Update, context: Context) -> None:
    """Admin, as a reply to one of the bot's results: /who says who drew it (the moderation
    log), /delete deletes its messages and its stored PNGs."""
    deps = _deps(context)
    message, chat = update.effective_message, update.effective_chat
    assert message is not None and chat is not None
    requester, _, locale = _who(deps, update.effective_user)
    if not await _admin(deps, requester, message, locale):
        return
    replied = message.reply_to_message
    entry = deps.policy.log.by_message(replied.message_id, chat.id) if replied else None
    if entry is None:
        await message.reply_text(text("modlog_not_found", locale))
        return
    if (message.text or "").startswith("/who"):
        await message.reply_text(modlog_line(entry, locale))
        return
    for message_id in entry.messages:
        try:
            await context.bot.delete_message(chat.id, message_id)
        except BadRequest as e:  # gone already, or too old for the bot to delete
            log.info("message %d of job %d not deleted: %s", message_id, entry.job, e.message)
    deps.policy.delete_images(entry.job)
    log.info("%s deleted job %d of %s", requester, entry.job, entry.user)
    await message.reply_text(text("modlog_deleted", locale, job=entry.job))
