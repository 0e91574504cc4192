"""Telegram handlers: prompts by message or /draw, pictures (a caption, a reply; /upscale),
commands, buttons, admin, the one on_error.

A prompt goes parse → policy → `start_job` (bot/telegram/replies.py: status message, submit,
then progress and pictures in a task). Handlers stay thin; errors go to the one `on_error`.
bot/telegram/app.py registers them and keeps their `Deps` in `bot_data[DEPS_KEY]`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from pathlib import Path
from typing import TypeAlias, cast

from telegram import (
    Chat,
    Document,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    PhotoSize,
    Update,
    User,
)
from telegram.constants import ChatType
from telegram.error import BadRequest
from telegram.ext import ApplicationHandlerStop, ContextTypes

from bot.addons import (
    addons_text,
    current_addons,
    hypernet_choice,
    installed_addons,
)
from bot.messages import Locale, caption, error_text, locale_of, sampler_help, text, worker_lines
from bot.pictures import (
    check_announced,
    check_extras,
    check_upscale_size,
    extras_request,
    picture_upscalers,
    store_picture,
    upscale_choice,
    upscale_request,
)
from bot.places import Place
from bot.prefs import UserPrefs, model_defaults
from bot.telegram.captions import cut
from bot.telegram.markup import Press, replying
from bot.telegram.replies import PREFIX, Deps, reroll, start_job, variation
from bot.telegram.results import send_png
from bot.telegram.settings_text import (
    bot_defaults,
    read_settings,
    show_settings,
    typed_settings,
)
from engine.checks import check_request
from engine.errors import EngineError, GenerationFailed, InvalidRequest

log = logging.getLogger(__name__)

DEPS_KEY = "aidraw"  # where bot/telegram/app.py keeps the handlers' Deps in bot_data
# The Bot API's getFile serves files up to 20 MB; [limits] max_image_bytes may only lower it.
DOWNLOAD_LIMIT = 20 * 1024 * 1024
_DRAW = re.compile(r"/draw(?:@(\w+))?(?=\s|$)", re.IGNORECASE)
_UPSCALE = re.compile(r"/upscale(?:@(\w+))?(?=\s|$)", re.IGNORECASE)
# The line a result's caption leads with (bot/telegram/captions.py): its job, in either language.
_RESULT_CAPTION = re.compile(r"(?:Job|任务) ([0-9]+) · ")

Context: TypeAlias = ContextTypes.DEFAULT_TYPE
Picture: TypeAlias = PhotoSize | Document


# --- policy (bot/policy.py: the one every frontend asks) --------------------------------------


def requester_id(user: User) -> str:
    return f"{PREFIX}{user.id}"


def place_of(chat: Chat) -> Place:
    return Place(frontend="telegram", chat=chat.id, group=chat.type != ChatType.PRIVATE)


# --- handlers ----------------------------------------------------------------------------------


def _deps(context: Context) -> Deps:
    return cast(Deps, context.bot_data[DEPS_KEY])


def _who(deps: Deps, user: User | None) -> tuple[str, UserPrefs, Locale]:
    """The requester id, their saved settings and their locale (saved, else the client's)."""
    assert user is not None
    requester = requester_id(user)
    prefs = deps.store.get(requester)
    return requester, prefs, prefs.locale or locale_of(user.language_code)


def _after_command(message_text: str | None) -> str:
    """The text after "/cmd" or "/cmd@bot", line breaks kept."""
    parts = (message_text or "").split(None, 1)
    return parts[1] if len(parts) > 1 else ""


def _replies_to_bot(message: Message, bot_id: int) -> bool:
    replied = message.reply_to_message
    return bool(replied and replied.from_user and replied.from_user.id == bot_id)


async def gate(update: Update, context: Context) -> None:
    """Drop updates from chats outside [telegram] allowed_chats (admins' private chats pass)."""
    deps = _deps(context)
    allowed = deps.settings.telegram.allowed_chats
    chat = update.effective_chat
    if not allowed or chat is None or chat.id in allowed:
        return
    user = update.effective_user
    if chat.type == ChatType.PRIVATE and user and deps.engine.is_admin(requester_id(user)):
        return
    log.info("ignoring an update from chat %d (not in allowed_chats)", chat.id)
    raise ApplicationHandlerStop


async def draw_command(update: Update, context: Context) -> None:
    """/draw <prompt>, or /draw as a reply to a message holding the prompt; a reply to a
    picture draws from that picture."""
    message = update.effective_message
    assert message is not None
    prompt = _after_command(message.text)
    replied = message.reply_to_message
    if not prompt.strip() and replied is not None:
        prompt = replied.text or replied.caption or ""
    if not prompt.strip():
        _, _, locale = _who(_deps(context), update.effective_user)
        await message.reply_text(text("tg_draw_usage", locale))
        return
    await _draw(update, context, prompt, picture_of(replied))


async def text_message(update: Update, context: Context) -> None:
    """A prompt: any text in a private chat; in groups, a reply to the bot. A reply to a
    message with a picture (the user's, or one of the bot's results) draws from it."""
    message = update.effective_message
    chat = update.effective_chat
    assert message is not None and chat is not None
    if chat.type != ChatType.PRIVATE and not _replies_to_bot(message, context.bot.id):
        return
    await _draw(update, context, message.text or "", picture_of(message.reply_to_message))


def picture_of(message: Message | None) -> Picture | None:
    """A message's picture: its photo (the largest size), or a file whose type is an image."""
    if message is None:
        return None
    if message.photo:
        return message.photo[-1]
    document = message.document
    if document is not None and (document.mime_type or "").startswith("image/"):
        return document
    return None


async def _download(picture: Picture, deps: Deps) -> bytes:
    """The picture's bytes, once what Telegram says of its size and type passes: nothing too
    big is ever downloaded."""
    limits = deps.settings.limits
    limits = dataclasses.replace(
        limits, max_image_bytes=min(limits.max_image_bytes, DOWNLOAD_LIMIT)
    )
    mime = picture.mime_type if isinstance(picture, Document) else None  # photos are JPEGs
    check_announced(picture.file_size, mime, limits)
    file = await picture.get_file()
    check_announced(file.file_size, None, limits)
    return bytes(await file.download_as_bytearray())


async def _draw(
    update: Update, context: Context, prompt: str, picture: Picture | None = None
) -> None:
    deps = _deps(context)
    message, chat = update.effective_message, update.effective_chat
    assert message is not None and chat is not None
    requester, prefs, locale = _who(deps, update.effective_user)
    place = place_of(chat)
    parsed = deps.policy.read(place, prompt, prefs, requester, locale)
    admission = deps.policy.admit(place, parsed.request, locale, picture=picture is not None)
    request, notes = parsed.request, parsed.notes
    if picture is not None:  # after the prompt's checks: a refused prompt downloads nothing
        path, picture_notes = await store_picture(
            deps.engine, await _download(picture, deps), locale
        )
        request = dataclasses.replace(request, init_image=path)
        notes = (*notes, *picture_notes)
    await start_job(
        deps,
        context.application,
        update,
        request,
        chat_id=chat.id,
        reply_to=message.message_id,
        locale=locale,
        notes=notes,
        spoiler=admission.spoiler,
    )


async def upscale_command(update: Update, context: Context) -> None:
    """/upscale [SCALE] [UPSCALER] replying to a message with a picture (the user's, or one of
    the bot's results): that picture made bigger without drawing (A1111's Extras)."""
    message = update.effective_message
    assert message is not None
    await _upscale(update, context, _after_command(message.text), message.reply_to_message)


async def _upscale(update: Update, context: Context, args: str, source: Message | None) -> None:
    """The picture of `source` upscaled as `args` ask; the scale and upscaler are checked
    before anything is downloaded. Without a picture: how to use it, and the upscalers."""
    deps = _deps(context)
    message, chat = update.effective_message, update.effective_chat
    assert message is not None and chat is not None
    requester, _, locale = _who(deps, update.effective_user)
    scale, upscaler = upscale_choice(deps.engine, args, deps.settings.bot.upscaler)
    request = extras_request("", scale=scale, upscaler=upscaler, requester=requester)
    check_extras(request, deps.settings.limits)
    picture = picture_of(source)
    if source is None or picture is None:
        upscalers = ", ".join(picture_upscalers(deps.engine))
        await message.reply_text(text("tg_upscale_usage", locale, upscalers=upscalers))
        return
    deps.policy.admit(place_of(chat), request, locale, picture=True)
    data = await _own_result(deps, source, context.bot.id) or await _download(picture, deps)
    path, notes = await store_picture(deps.engine, data, locale)
    request = dataclasses.replace(request, init_image=path)
    check_upscale_size(request, deps.settings.limits)  # in one line, before a status message
    await start_job(
        deps,
        context.application,
        update,
        request,
        chat_id=chat.id,
        reply_to=message.message_id,
        locale=locale,
        notes=notes,
    )


async def _own_result(deps: Deps, message: Message, bot_id: int) -> bytes | None:
    """The original PNG of one of the bot's results (its photo is Telegram's JPEG of it, at
    most 1280 pixels a side), by the job its caption leads with; None for any other message,
    or once the journal has forgotten the job."""
    if message.from_user is None or message.from_user.id != bot_id:
        return None
    found = _RESULT_CAPTION.match(message.caption or "")
    record = deps.engine.record(int(found[1])) if found else None
    if record is None or not record.images:
        return None
    try:
        return await asyncio.to_thread(Path(record.images[0].path).read_bytes)
    except OSError:
        return None


async def image_message(update: Update, context: Context) -> None:
    """A photo or image file: with a prompt as its caption, a drawing from it (img2img); in a
    group only with /draw in front, or as a reply to the bot. Without a caption, a hint. With
    /upscale as its caption: that picture upscaled."""
    message, chat = update.effective_message, update.effective_chat
    assert message is not None and chat is not None
    caption = (message.caption or "").strip()
    if upscale := _UPSCALE.match(caption):
        if upscale[1] is None or upscale[1].lower() == (context.bot.username or "").lower():
            await _upscale(update, context, caption[upscale.end() :], message)
        return
    command = _DRAW.match(caption)
    if command is not None:
        named = command[1]
        if named is not None and named.lower() != (context.bot.username or "").lower():
            return  # another bot's /draw
        caption = caption[command.end() :].strip()
    addressed = command is not None or _replies_to_bot(message, context.bot.id)
    if chat.type != ChatType.PRIVATE and not addressed:
        return
    if not caption:
        _, _, locale = _who(_deps(context), update.effective_user)
        await message.reply_text(text("tg_picture_hint", locale))
        return
    await _draw(update, context, caption, picture_of(message))


async def help_command(update: Update, context: Context) -> None:
    message = update.effective_message
    assert message is not None
    _, _, locale = _who(_deps(context), update.effective_user)
    said = text("tg_help", locale, **sampler_help(locale))
    if (message.text or "").startswith("/start"):
        said = text("tg_start", locale, help=said)
    await message.reply_text(said)


async def queue_command(update: Update, context: Context) -> None:
    """Your jobs with position and progress (an admin sees everyone's)."""
    deps = _deps(context)
    message = update.effective_message
    assert message is not None
    requester, _, locale = _who(deps, update.effective_user)
    jobs = deps.engine.jobs()
    pool = worker_lines(deps.engine.workers(), locale)
    if not jobs:
        await message.reply_text("\n".join([text("tg_queue_empty", locale), *pool]))
        return
    lines = [text("tg_queue_header", locale, count=len(jobs))]
    admin = deps.engine.is_admin(requester)
    for job in jobs:
        if job.requester != requester and not admin:
            continue
        p = job.progress
        if p.state == "running" and job.request.extras_upscale:
            line = text("tg_queue_upscaling", locale, job=job.id, eta="")
        elif p.state == "running":
            line = text("tg_queue_drawing", locale, job=job.id, step=p.step, total=p.total, eta="")
        else:
            line = text("tg_queue_waiting", locale, job=job.id, position=p.position or "?", eta="")
        lines.append(line + (f" ({job.requester})" if admin else ""))
    await message.reply_text("\n".join([*lines, *pool]))


async def cancel_command(update: Update, context: Context) -> None:
    """/cancel: your newest job; /cancel 12: job 12; /cancel all: all of yours."""
    deps = _deps(context)
    message = update.effective_message
    assert message is not None
    requester, _, locale = _who(deps, update.effective_user)
    arg = _after_command(message.text).strip().lower().lstrip("#")
    mine = [job.id for job in deps.engine.jobs(requester)]
    if arg == "all":
        targets = mine
    elif arg:
        if not arg.isdigit():
            raise InvalidRequest(
                "Write /cancel (your newest job), /cancel JOB (its number, e.g. 12) or "
                "/cancel all.",
                key="tg_cancel_usage",
                forms=["/cancel", "/cancel 12", "/cancel all"],
            )
        targets = [int(arg)]
    else:
        targets = [max(mine)] if mine else []
    if not targets:
        await message.reply_text(text("tg_nothing_to_cancel", locale))
        return
    cancelled = [job_id for job_id in targets if deps.engine.cancel(job_id, requester)]
    if cancelled:
        jobs = ", ".join(map(str, cancelled))
        await message.reply_text(text("tg_cancelled_jobs", locale, jobs=jobs))
    else:
        await message.reply_text(text("tg_already_finished", locale, job=targets[0]))


async def history_command(update: Update, context: Context) -> None:
    """Your last drawings, each with buttons for its PNG and a reroll."""
    deps = _deps(context)
    message = update.effective_message
    assert message is not None
    requester, _, locale = _who(deps, update.effective_user)
    records = deps.engine.history(requester, limit=5)
    if not records:
        await message.reply_text(text("tg_history_empty", locale))
        return
    lines, rows = [], []
    for record in records:
        r = record.request
        lines.append(
            text(
                "tg_history_line",
                locale,
                job=record.id,
                seed=record.images[0].seed if record.images else "?",
                width=r.width,
                height=r.height,
                prompt=cut(r.prompt or caption(r, [], [], locale), 80),  # an upscale: its line
            )
        )
        rows.append(
            [
                InlineKeyboardButton(f"📄 {record.id}", callback_data=f"d:{record.id}:0"),
                InlineKeyboardButton(f"🎲 {record.id}", callback_data=f"r:{record.id}"),
            ]
        )
    await message.reply_text("\n".join(lines), reply_markup=InlineKeyboardMarkup(rows))


async def settings_command(update: Update, context: Context) -> None:
    """/settings shows yours; /settings steps=20 size=512x768 … saves; /settings reset."""
    deps = _deps(context)
    message = update.effective_message
    assert message is not None
    requester, prefs, locale = _who(deps, update.effective_user)
    args = _after_command(message.text).strip()
    if not args:
        await message.reply_text(show_settings(prefs, _defaults(deps, locale), locale))
        return
    if args.lower() == "reset":
        deps.store.reset(requester)
        _, _, locale = _who(deps, update.effective_user)  # the client's language again
        await message.reply_text(text("tg_settings_reset", locale))
        return
    values = read_settings(args)
    # Checked as a request now, so that a bad default never breaks a later prompt.
    candidate = dataclasses.replace(prefs, **values)
    template = dataclasses.replace(candidate.request_defaults(requester), prompt="x")
    check_request(
        template, deps.settings.limits, model_defaults(deps.engine, deps.settings.defaults)
    )
    saved = deps.store.update(requester, **values)
    user = update.effective_user
    locale = saved.locale or locale_of(user.language_code if user else None)
    typed = typed_settings(saved, _defaults(deps, locale), values, locale=locale)
    changes = ", ".join(f"{name}={value}" for name, value, _ in typed)
    await message.reply_text(text("tg_settings_saved", locale, changes=changes))


def _defaults(deps: Deps, locale: Locale) -> UserPrefs:
    """What a user gets for each setting they did not save."""
    s = deps.settings
    return bot_defaults(
        model_defaults(deps.engine, deps.settings.defaults), s.prompt, s.telegram, locale
    )


async def model_command(update: Update, context: Context) -> None:
    """Admin: /model shows the model and lists every model; /model NAME loads NAME and makes
    it the default."""
    deps = _deps(context)
    message = update.effective_message
    assert message is not None
    requester, _, locale = _who(deps, update.effective_user)
    if not await _admin(deps, requester, message, locale):
        return
    name = _after_command(message.text).strip()
    if not name:
        s = deps.engine.status()
        paused = text("tg_paused_note", locale) if s.paused else ""
        model = s.model or "-"
        status = text(
            "tg_model_status",
            locale,
            model=model,
            default=s.default_model,
            queued=s.queued,
            paused=paused,
        )
        models = ", ".join(deps.engine.models()) or "-"
        await message.reply_text(f"{status}\n{text('tg_model_list', locale, models=models)}")
        return
    await message.reply_text(text("tg_model_loading", locale, name=name))
    try:
        loaded = await deps.engine.swap_model(name, requester)
    except GenerationFailed as e:  # the admin gets the reason, which users never see
        await message.reply_text(text("error", locale, message=str(e)))
        return
    await message.reply_text(text("tg_model_swapped", locale, name=loaded))


async def pause_command(update: Update, context: Context) -> None:
    """Admin: /pause (no new drawing starts) and /resume."""
    deps = _deps(context)
    message = update.effective_message
    assert message is not None
    requester, _, locale = _who(deps, update.effective_user)
    if not await _admin(deps, requester, message, locale):
        return
    if (message.text or "").startswith("/pause"):
        deps.engine.pause()
        await message.reply_text(text("tg_paused", locale))
    else:
        deps.engine.resume()
        await message.reply_text(text("tg_resumed", locale))


async def addons_command(update: Update, context: Context) -> None:
    """Admin: /vae NAME (None, Automatic) and /hypernetwork NAME[:STRENGTH] (none) set what the
    default model draws with, once it has drawn a test image with it; no argument shows the
    current choice and the installed files. A refusal is on_error's reply."""
    deps = _deps(context)
    message = update.effective_message
    assert message is not None
    requester, _, locale = _who(deps, update.effective_user)
    if not await _admin(deps, requester, message, locale):
        return
    engine = deps.engine
    name = _after_command(message.text).strip()
    if not name:
        lines = [
            current_addons(engine, locale),
            installed_addons(engine, locale),
            text("tg_addons_usage", locale),
        ]
        await message.reply_text("\n".join(lines))
        return
    loading = text("addons_loading", locale, model=engine.default_model, name=name)
    await message.reply_text(loading)
    if (message.text or "").startswith("/vae"):
        info = await engine.set_addon_defaults(requester, vae=name.strip())
    else:
        info = await engine.set_addon_defaults(requester, hypernet=hypernet_choice(name))
    await message.reply_text(addons_text(info, locale, "addons_set"))


async def unknown_command(update: Update, context: Context) -> None:
    """A command this bot does not have, in a private chat (in a group it may be another
    bot's): say so, and which it has, rather than nothing."""
    message = update.effective_message
    assert message is not None
    _, _, locale = _who(_deps(context), update.effective_user)
    command = (message.text or "").split(None, 1)[0].split("@")[0]
    await message.reply_text(text("tg_unknown_command", locale, command=command))


async def _admin(deps: Deps, requester: str, message: Message, locale: Locale) -> bool:
    if deps.engine.is_admin(requester):
        return True
    log.info("refused an admin command from %s", requester)
    await message.reply_text(text("not_admin", locale))
    return False


async def button(update: Update, context: Context) -> None:
    """Inline buttons (bot/telegram/markup.py): c:JOB cancel, r:JOB reroll, v:JOB:I and
    v:JOB:I:s subtle and strong variations, u:JOB:I upscale, d:JOB:I the PNG.

    Everything that can refuse runs before the query is answered, so a refusal is the answer
    (an alert, from on_error).
    """
    deps = _deps(context)
    query = update.callback_query
    assert query is not None and query.data is not None
    requester, _, locale = _who(deps, query.from_user)
    press = Press.parse(query.data)
    kind, job_id, index = press.kind, press.job_id, press.index
    if kind == "c":
        if deps.engine.cancel(job_id, requester):
            await query.answer(text("cancelled", locale))
        else:
            await query.answer(text("tg_already_finished", locale, job=job_id))
        return
    message = query.message
    if message is None:
        await query.answer()
        return
    record = deps.engine.record(job_id)
    if record is None or kind != "r" and index >= len(record.images):
        raise InvalidRequest(text("tg_gone", locale, job=job_id))
    chat_id = message.chat.id
    if kind == "d":
        image = record.images[index]
        png = await _saved_png(image.path, job_id, locale)
        await query.answer()
        saved = (png, image.seed, image.infotext)
        await send_png(context.bot, job_id, saved, chat_id, message.message_id)
        return
    bot = deps.settings.bot
    if kind == "u":
        image = record.images[index]
        request = await upscale_request(
            deps.engine,
            record.request,
            seed=image.seed,
            infotext=image.infotext,
            strength=bot.upscale_strength,
            png=lambda: _saved_png(image.path, job_id, locale),
            extras=bot.upscaler if bot.upscale_with == "extras" else None,
        )
        # A size over the limits is refused here, as the button's alert.
        check_request(request, deps.settings.limits)
        check_upscale_size(request, deps.settings.limits)
    else:
        strength = bot.strong_variation_strength if press.strong else bot.variation_strength
        request = reroll(record.request) if kind == "r" else variation(record, index, strength)
    request = dataclasses.replace(request, requester=requester)
    admission = deps.policy.admit(place_of(message.chat), request, locale)
    await query.answer()
    await start_job(
        deps,
        context.application,
        update,
        request,
        chat_id=chat_id,
        reply_to=message.message_id,
        locale=locale,
        spoiler=admission.spoiler,
    )


async def _saved_png(path: str, job_id: int, locale: Locale) -> bytes:
    try:
        return await asyncio.to_thread(Path(path).read_bytes)
    except OSError:
        raise InvalidRequest(text("tg_gone", locale, job=job_id)) from None


async def on_error(update: object, context: Context) -> None:
    """The one error handler: engine errors are told to the user, anything else is logged."""
    error = context.error
    locale: Locale = "en"
    if isinstance(update, Update) and update.effective_user is not None:
        _, _, locale = _who(_deps(context), update.effective_user)
    if isinstance(error, EngineError):
        reply = error_text(error, locale)
        log.info("refused: %s", error)
    else:
        log.exception("error in update %s", getattr(update, "update_id", "-"), exc_info=error)
        reply = text("failed", locale)
    if not isinstance(update, Update):
        return
    if update.callback_query is not None:
        try:
            await update.callback_query.answer(cut(reply, 200), show_alert=True)
            return
        except BadRequest as e:  # answered already: say it in the chat instead
            log.info("callback query not answered: %s", e.message)
    chat = update.effective_chat
    if chat is not None:
        message = update.effective_message
        reply_parameters = replying(message.message_id) if message is not None else None
        await context.bot.send_message(chat.id, reply, reply_parameters=reply_parameters)
