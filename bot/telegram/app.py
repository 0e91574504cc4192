"""The Telegram application: handlers wired up, the command menu, polling until cancelled.

`run_telegram()` is what `aidraw run` starts (bot/launcher.py); `register(app)` adds the
handlers of bot/telegram/handlers.py, and `resume_recovered` follows the jobs from before a
restart. Updates come from bot/telegram/polling.py's `Poller`, not PTB's Updater: it confirms
an update to Telegram only once its job is journaled. AIDRAW_TELEGRAM_API_URL points the bot
at another Bot API server (a local one, or the tests' fake).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable
from typing import Any

from telegram import Bot, BotCommand, BotCommandScopeChat, Update
from telegram.error import BadRequest
from telegram.ext import (
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    MessageHandler,
    TypeHandler,
    filters,
)

from bot.messages import LOCALES, text
from bot.prefs import UserSettingsStore
from bot.settings import Settings
from bot.telegram.handlers import (
    DEPS_KEY,
    addons_command,
    button,
    cancel_command,
    draw_command,
    gate,
    help_command,
    history_command,
    image_message,
    model_command,
    on_error,
    pause_command,
    queue_command,
    settings_command,
    text_message,
    unknown_command,
    upscale_command,
)
from bot.telegram.markup import JOB_BUTTONS, OTHER_BUTTONS
from bot.telegram.moderation import (
    moderation_command,
    quota_command,
    styles_command,
    styles_import,
)
from bot.telegram.polling import Poller
from bot.telegram.replies import PREFIX, App, Deps, ReplyTo, follow
from engine.engine import Engine

log = logging.getLogger(__name__)

API_URL_ENV = "AIDRAW_TELEGRAM_API_URL"
COMMANDS = (
    "draw",
    "upscale",
    "help",
    "queue",
    "cancel",
    "settings",
    "history",
    "quota",
    "styles",
    "start",
)
ADMIN_COMMANDS = ("model", "vae", "hypernetwork", "pause", "resume", "who", "delete")
UPDATES = ("message", "callback_query")


def register(app: App) -> None:
    """Add every handler. The ones that submit a job block only until it is journaled (the
    update is confirmed after that: bot/telegram/polling.py) and follow it in a task; slow
    ones that journal nothing run with block=False. So one user's drawing never holds up
    anyone else's updates."""
    app.add_handler(TypeHandler(Update, gate), group=-1)
    app.add_handler(CommandHandler(("start", "help"), help_command))
    app.add_handler(CommandHandler("draw", draw_command))
    app.add_handler(CommandHandler("upscale", upscale_command))
    app.add_handler(CommandHandler("queue", queue_command))
    app.add_handler(CommandHandler("cancel", cancel_command))
    app.add_handler(CommandHandler("history", history_command))
    app.add_handler(CommandHandler("settings", settings_command))
    app.add_handler(CommandHandler("quota", quota_command))
    app.add_handler(CommandHandler("styles", styles_command))
    app.add_handler(CommandHandler(("who", "delete"), moderation_command))
    app.add_handler(CommandHandler("model", model_command, block=False))
    app.add_handler(CommandHandler(("pause", "resume"), pause_command))
    app.add_handler(CommandHandler(("vae", "hypernetwork"), addons_command, block=False))
    app.add_handler(CallbackQueryHandler(button, pattern=JOB_BUTTONS))
    app.add_handler(CallbackQueryHandler(button, pattern=OTHER_BUTTONS, block=False))
    styles_csv = filters.Document.FileExtension("csv") & filters.CaptionRegex(r"^/styles\b")
    app.add_handler(MessageHandler(styles_csv, styles_import))
    app.add_handler(MessageHandler(filters.PHOTO | filters.Document.IMAGE, image_message))
    prompts = filters.TEXT & ~filters.COMMAND & (filters.ChatType.PRIVATE | filters.REPLY)
    app.add_handler(MessageHandler(prompts, text_message))
    # Last: only a command that no handler above took.
    app.add_handler(MessageHandler(filters.COMMAND & filters.ChatType.PRIVATE, unknown_command))
    app.add_error_handler(on_error)


def file_url(base_url: str) -> str:
    """PTB's base_file_url for a base_url: https://api.telegram.org/bot → …/file/bot."""
    root, _, last = base_url.rstrip("/").rpartition("/")
    return f"{root}/file/{last}"


def build_application(token: str) -> App:
    # No Updater: the Poller fetches updates (it confirms them only after their jobs are
    # journaled, which the Updater cannot).
    builder = ApplicationBuilder().token(token).updater(None)
    if base_url := os.environ.get(API_URL_ENV, "").strip():
        builder = builder.base_url(base_url).base_file_url(file_url(base_url))
    return builder.build()


async def set_commands(bot: Bot, admins: Iterable[str]) -> None:
    """The command menu in English and Chinese; admins' private chats also list theirs."""
    for locale in LOCALES:
        language = None if locale == "en" else locale
        commands = [BotCommand(name, text(f"tg_cmd_{name}", locale)) for name in COMMANDS]
        await bot.set_my_commands(commands, language_code=language)
        extra = [BotCommand(name, text(f"tg_cmd_{name}", locale)) for name in ADMIN_COMMANDS]
        for admin in admins:
            user_id = admin.removeprefix(PREFIX)
            if not admin.startswith(PREFIX) or not user_id.isdigit():
                continue
            try:
                scope = BotCommandScopeChat(int(user_id))
                await bot.set_my_commands(commands + extra, scope=scope, language_code=language)
            except BadRequest as e:  # the admin has not opened a chat with the bot yet
                log.info("no admin commands for %s: %s", admin, e.message)


def journaled_updates(deps: Deps) -> set[int]:
    """The update ids that the journal's unanswered Telegram jobs came from."""
    replies = (ReplyTo.parse(job.reply_to) for job in deps.engine.recovered())
    return {reply.update_id for reply in replies if reply is not None and reply.update_id}


def resume_recovered(app: App, deps: Deps) -> int:
    """Follow the jobs from before a restart whose reply goes to Telegram; returns how many."""
    count = 0
    for job in deps.engine.recovered():
        reply = ReplyTo.parse(job.reply_to)
        if reply is None:
            continue  # another frontend's
        place = reply.place
        word = deps.policy.nsfw_word(place, job.request.prompt)
        spoiler = word is not None and deps.policy.nsfw(place) == "spoiler"
        coroutine = follow(deps, app.bot, job, reply, spoiler=spoiler)
        deps.followers.add(app.create_task(coroutine, name=f"telegram job {job.id}"))
        count += 1
    return count


async def run_telegram(
    engine: Engine[Any], settings: Settings, store: UserSettingsStore, token: str
) -> None:
    """Run the Telegram bot until cancelled (bot/launcher.py's frontend contract)."""
    # Opt in to PTB 22's timedelta periods (RetryAfter.retry_after): no deprecation warnings.
    os.environ.setdefault("PTB_TIMEDELTA", "true")
    app = build_application(token)
    deps = Deps(engine, settings, store)
    app.bot_data[DEPS_KEY] = deps
    register(app)
    async with app:
        await set_commands(app.bot, engine.config.admins)
        await app.start()
        poller = Poller(app, UPDATES, journaled_updates(deps))
        recovered = resume_recovered(app, deps)
        log.info("telegram: polling as @%s; %d job(s) from before", app.bot.username, recovered)
        try:
            await poller.run()  # until the launcher cancels us
        finally:
            await poller.confirm()
            # Followers wait for jobs, and the engine closes only after the frontends: stop
            # them (the journal keeps their jobs), or app.stop() would wait for the jobs.
            deps.closing = True
            followers = list(deps.followers)
            for task in followers:
                task.cancel()
            await asyncio.gather(*followers, return_exceptions=True)
            await app.stop()
            deps.policy.close()
            log.info("telegram: stopped")
