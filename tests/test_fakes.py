"""The fake chat servers, driven by the REAL python-telegram-bot and discord.py clients.

Each test runs a tiny throwaway bot written here (not aidraw's handlers) against
tests/fakes/ and follows the manual lifecycle from shared/notes/chat-testing.md.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any, Literal

import aiohttp
import discord
import pytest
from discord import app_commands
from PIL import Image
from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Message, Update
from telegram.constants import ChatAction
from telegram.error import BadRequest, RetryAfter
from telegram.ext import (
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from tests.fakes import FakeDiscord, FakeTelegram, point_at

pytestmark = pytest.mark.timeout(10)


def _png(width: int = 64, height: int = 48) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 80, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png()


# --- Telegram ------------------------------------------------------------------------------------
CHAT = 777


async def _send_photo_retrying(update: Update, **kwargs: object) -> None:
    """What a frontend does with flood control: wait retry_after, then send again."""
    assert update.effective_message is not None
    while True:
        try:
            await update.effective_message.reply_photo(**kwargs)  # type: ignore[arg-type]
            return
        except RetryAfter as exc:
            assert isinstance(exc.retry_after, timedelta)  # PTB_TIMEDELTA=true (see fixture)
            await asyncio.sleep(exc.retry_after.total_seconds())


async def _draw(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    assert update.effective_chat is not None
    await context.bot.send_chat_action(update.effective_chat.id, ChatAction.UPLOAD_PHOTO)
    keyboard = InlineKeyboardMarkup([[InlineKeyboardButton("Again", callback_data="again")]])
    caption = " ".join(context.args or [])
    await _send_photo_retrying(update, photo=PNG, caption=caption, reply_markup=keyboard)


async def _again(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    query = update.callback_query
    assert query is not None and isinstance(query.message, Message)
    await query.answer()
    await query.edit_message_caption(f"again: {query.message.caption}")


async def _img2img(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    message = update.effective_message
    assert message is not None and message.photo
    data = await (await message.photo[-1].get_file()).download_as_bytearray()
    await message.reply_text(f"{message.caption}: {len(data)} bytes")


@pytest.fixture
async def tg(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeTelegram]:
    # httpx honours HTTP(S)_PROXY even for 127.0.0.1.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    # Without it, RetryAfter.retry_after (even RetryAfter's constructor) warns
    # PTBDeprecationWarning, which filterwarnings=error turns into the exception raised.
    monkeypatch.setenv("PTB_TIMEDELTA", "true")
    async with FakeTelegram() as fake:
        yield fake


def _telegram_app(tg: FakeTelegram) -> Application:
    app = (
        ApplicationBuilder()
        .token(tg.token)
        .base_url(tg.base_url)
        .base_file_url(tg.base_file_url)
        .build()
    )
    app.add_handler(CommandHandler("draw", _draw))
    app.add_handler(CallbackQueryHandler(_again, pattern="^again$"))
    app.add_handler(MessageHandler(filters.PHOTO & filters.CAPTION, _img2img))
    return app


@asynccontextmanager
async def _polling(app: Application) -> AsyncIterator[Application]:
    """run_polling() without owning the loop or the signals (it would close pytest's loop)."""
    async with app:
        await app.bot.set_my_commands([("draw", "draw a picture")])  # what post_init would do
        await app.start()
        assert app.updater is not None
        await app.updater.start_polling(timeout=10)
        try:
            yield app
        finally:
            await app.updater.stop()
            await app.stop()


async def test_telegram_draw_sends_photo_with_keyboard_and_button_edits(tg: FakeTelegram) -> None:
    async with _polling(_telegram_app(tg)):
        tg.push_text(CHAT, CHAT, "/draw a cat")
        action = await tg.wait_for("sendChatAction")
        photo = await tg.wait_for("sendPhoto")

        assert action.params == {"chat_id": CHAT, "action": "upload_photo"}
        assert photo.params["chat_id"] == CHAT and photo.params["caption"] == "a cat"
        assert photo.files["photo"].data == PNG
        keyboard = photo.params["reply_markup"]["inline_keyboard"]
        assert keyboard == [[{"text": "Again", "callback_data": "again"}]]
        (sent,) = tg.sent(CHAT)
        assert sent["photo"][-1]["width"] == 64 and sent["photo"][-1]["height"] == 48
        assert tg.file_bytes(sent["photo"][-1]["file_id"]) == PNG

        tg.push_callback(CHAT, CHAT, sent["message_id"], "again")
        await tg.wait_for("answerCallbackQuery")
        edit = await tg.wait_for("editMessageCaption")
        assert edit.params["message_id"] == sent["message_id"]
        assert tg.messages[(CHAT, sent["message_id"])]["caption"] == "again: a cat"

    assert tg.my_commands[("default", "")] == [{"command": "draw", "description": "draw a picture"}]
    assert {"getMe", "setMyCommands", "deleteWebhook", "getUpdates"} <= {c.method for c in tg.calls}
    # Every update was confirmed by a later offset, so none is delivered twice.
    last_poll = [c for c in tg.calls if c.method == "getUpdates"][-1]
    assert last_poll.params["offset"] == 3


async def test_telegram_retry_after_is_honoured(tg: FakeTelegram) -> None:
    tg.rate_limit_next("sendPhoto", retry_after=0.3)
    async with _polling(_telegram_app(tg)):
        tg.push_text(CHAT, CHAT, "/draw a dog")
        limited = await tg.wait_for("sendPhoto", status=429)
        limited_at = time.monotonic()
        sent = await tg.wait_for("sendPhoto")
        assert time.monotonic() - limited_at >= 0.25
    assert limited.params["caption"] == sent.params["caption"] == "a dog"
    assert tg.count("sendPhoto") == 1 and len(tg.sent(CHAT)) == 1


async def test_telegram_photo_with_caption_downloads_the_upload(tg: FakeTelegram) -> None:
    image = _png(96, 32)
    async with _polling(_telegram_app(tg)):
        tg.push_photo(CHAT, CHAT, image, caption="make it blue")
        reply = await tg.wait_for("sendMessage")
    assert reply.params["text"] == f"make it blue: {len(image)} bytes"
    assert tg.count("getFile") == 1


async def test_telegram_updater_stop_is_fast(tg: FakeTelegram) -> None:
    app = _telegram_app(tg)
    async with app:
        await app.start()
        assert app.updater is not None
        await app.updater.start_polling(timeout=10)
        await tg.wait_for("getUpdates", lambda c: c.params.get("timeout") == 10)
        started = time.monotonic()
        await app.updater.stop()  # cancels the held long poll at once
        stopped = time.monotonic() - started
        await app.stop()
    started = time.monotonic()
    await tg.close()  # handler_cancellation: no dangling long poll holds the server
    assert stopped < 1.0 and time.monotonic() - started < 1.0
    # PTB's last call confirms the offset without waiting.
    assert [c.params["timeout"] for c in tg.calls if c.method == "getUpdates"][-1] == 0


async def test_telegram_rejects_what_the_bot_api_rejects(tg: FakeTelegram) -> None:
    app = _telegram_app(tg)
    async with app:
        bot = app.bot
        message = await bot.send_message(CHAT, "status: queued #1")
        await bot.edit_message_text("status: 1/28", chat_id=CHAT, message_id=message.message_id)
        with pytest.raises(BadRequest, match="not modified"):
            await bot.edit_message_text("status: 1/28", chat_id=CHAT, message_id=message.message_id)
        with pytest.raises(BadRequest, match="caption is too long"):
            await bot.send_photo(CHAT, PNG, caption="x" * 1025)
        with pytest.raises(BadRequest, match="(?i)button_data_invalid"):
            button = InlineKeyboardButton("x", callback_data="x" * 65)
            await bot.send_message(CHAT, "x", reply_markup=InlineKeyboardMarkup([[button]]))
        with pytest.raises(ValueError, match="no button"):
            tg.push_callback(CHAT, CHAT, message.message_id, "again")
    assert tg.count("editMessageText", status=400) == 1


async def test_telegram_group_command_names_the_bot(tg: FakeTelegram) -> None:
    group = -1001234
    async with _polling(_telegram_app(tg)):
        tg.push_text(group, 5, "/draw@other_bot a dog", chat_type="supergroup")
        tg.push_text(group, 5, "/draw@aidraw_test_bot a cat", chat_type="supergroup")
        photo = await tg.wait_for("sendPhoto")
    assert photo.params["caption"] == "a cat" and tg.count("sendPhoto") == 1
    assert tg.chats[group]["type"] == "supergroup"


# --- Discord -------------------------------------------------------------------------------------
class AgainView(discord.ui.View):
    def __init__(self, prompt: str) -> None:
        super().__init__(timeout=None)
        self.prompt = prompt

    @discord.ui.button(label="Again", custom_id="draw:again", style=discord.ButtonStyle.primary)
    async def again(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        file = discord.File(io.BytesIO(PNG), "again.png")
        await interaction.response.send_message(f"again: {self.prompt}", file=file)

    @discord.ui.button(label="Done", custom_id="draw:done")
    async def done(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.edit_message(content=f"done: {self.prompt}", view=None)


class EditModal(discord.ui.Modal, title="Edit prompt"):
    prompt: discord.ui.TextInput = discord.ui.TextInput(
        label="Prompt", custom_id="prompt", default="a cat"
    )

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f"edited: {self.prompt.value}", ephemeral=True)


class DrawBot(discord.Client):
    """A throwaway bot: /draw (defer, then a followup with a PNG and a button) and /edit."""

    def __init__(self) -> None:
        super().__init__(intents=discord.Intents.default(), guild_ready_timeout=0.05)
        self.tree = app_commands.CommandTree(self)
        self.errors: list[BaseException] = []

        @self.tree.error
        async def on_error(
            interaction: discord.Interaction, error: app_commands.AppCommandError
        ) -> None:
            self.errors.append(error)

        @self.tree.command(name="draw", description="Draw a picture")
        async def draw(
            interaction: discord.Interaction,
            prompt: str,
            style: Literal["anime", "photo"] = "anime",
            steps: app_commands.Range[int, 1, 50] = 28,
            init_image: discord.Attachment | None = None,
        ) -> None:
            if prompt == "bad":
                await interaction.response.send_message("unknown flag --x", ephemeral=True)
                return
            await interaction.response.defer(thinking=True)
            text = f"{prompt} [{style}, {steps} steps]"
            if init_image is not None:
                text += f" from {len(await init_image.read())} bytes"
            file = discord.File(io.BytesIO(PNG), "draw.png")
            await interaction.followup.send(text, file=file, view=AgainView(prompt))

        @self.tree.command(name="edit", description="Edit a prompt")
        async def edit(interaction: discord.Interaction) -> None:
            await interaction.response.send_modal(EditModal())

    async def setup_hook(self) -> None:
        await self.tree.sync()


@pytest.fixture
async def dc(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(heartbeat_interval=0.1) as fake:
        point_at(monkeypatch, fake)
        yield fake


@pytest.fixture
async def draw_bot(dc: FakeDiscord) -> AsyncIterator[DrawBot]:
    bot = DrawBot()
    task = asyncio.create_task(bot.start(dc.token))
    await dc.wait_for("gateway_identify")
    yield bot
    await bot.close()  # before the fake goes away, or discord.py reconnects to nowhere
    await asyncio.wait_for(task, 5)
    assert not bot.errors


async def test_discord_slash_draw_then_button(dc: FakeDiscord, draw_bot: DrawBot) -> None:
    (put,) = [c for c in dc.calls if c.route == "commands_put"]
    assert {c["name"] for c in put.payload} == {"draw", "edit"}

    slash = await dc.slash("draw", {"prompt": "a cat", "style": "anime", "steps": 7})
    callback = await dc.wait_for("interaction_callback")
    assert callback.payload == {"type": 5} and callback.query["with_response"] == "1"
    followup = await dc.wait_for("followup_send")
    assert followup.query["wait"] == "1"
    assert followup.payload["content"] == "a cat [anime, 7 steps]"
    assert [(f.filename, f.data) for f in followup.files] == [("draw.png", PNG)]

    (message,) = dc.followups(slash)
    assert message == dc.original(slash)  # the first followup replaced "thinking..."
    assert not message["flags"]
    assert dc.attachment_data(message["attachments"][0]) == PNG
    assert message["attachments"][0]["width"] == 64

    click = await dc.click(message, "draw:again")
    answer = await dc.wait_for("interaction_callback", dc.of(click))
    assert answer.payload["type"] == 4
    assert answer.payload["data"]["content"] == "again: a cat"
    assert answer.files[0].data == PNG
    again = dc.original(click)
    assert again is not None and again["content"] == "again: a cat" and again["id"] != message["id"]

    done = await dc.click(message, "draw:done")  # answered with edit_message: type 7
    update = await dc.wait_for("interaction_callback", dc.of(done))
    assert update.payload["type"] == 7
    assert dc.original(done) is dc.messages[int(message["id"])]
    assert message["content"] == "done: a cat" and message["components"] == []


async def test_discord_options_are_checked_like_discord(dc: FakeDiscord, draw_bot: DrawBot) -> None:
    await dc.wait_for("commands_put")
    with pytest.raises(ValueError, match="above max_value 50"):
        dc.slash_payload("draw", {"prompt": "a cat", "steps": 99})
    with pytest.raises(ValueError, match="not one of the choices"):
        dc.slash_payload("draw", {"prompt": "a cat", "style": "oil"})
    with pytest.raises(ValueError, match="missing"):
        dc.slash_payload("draw", {"steps": 5})
    with pytest.raises(ValueError, match="unknown option"):
        dc.slash_payload("draw", {"prompt": "a cat", "seed": 1})
    with pytest.raises(ValueError, match="integer"):
        dc.slash_payload("draw", {"prompt": "a cat", "steps": "7"})
    with pytest.raises(ValueError, match="no slash command"):
        dc.slash_payload("nope")

    image = _png(16, 16)
    slash = await dc.slash("draw", {"prompt": "a fox", "init_image": ("in.png", image)})
    await dc.wait_for("followup_send")
    assert dc.followups(slash)[0]["content"] == f"a fox [anime, 28 steps] from {len(image)} bytes"


def _choice(name: str) -> dict[str, str]:
    return {"name": name, "value": name}


def _option(name: str = "sampler", **changes: Any) -> dict[str, Any]:
    option = {"type": 3, "name": name, "description": "Sampler"}
    return option | {"choices": [_choice(f"s{i}") for i in range(25)]} | changes


def _command(*options: dict[str, Any]) -> dict[str, Any]:
    """A slash command within Discord's limits (a required prompt), with `options` after it."""
    prompt = {"type": 3, "name": "prompt", "description": "Prompt", "required": True}
    return {"name": "draw", "description": "Draw a picture", "options": [prompt, *options]}


def _errors(body: dict[str, Any], path: str) -> list[str]:
    node = body["errors"]
    for part in path.split(".") if path else []:
        node = node[part]
    return [error["message"] for error in node["_errors"]]


_BIG = [_choice(f"{i:02d}" + "x" * 98) for i in range(25)]  # 25 x 200 characters
_CHOICES_26 = [_choice(f"s{i}") for i in range(26)]


@pytest.mark.parametrize(
    ("command", "path", "why"),
    [
        (_command(_option(choices=_CHOICES_26)), "0.options.1.choices", "25 or fewer"),
        (_command(_option(description="x" * 101)), "0.options.1.description", "1 and 100"),
        (_command(_option(description="")), "0.options.1.description", "1 and 100"),
        (_command(_option(name="Sampler")), "0.options.1.name", "lower-case"),
        (_command(_option(name="s" * 33)), "0.options.1.name", "1 and 32"),
        (_command(_option(choices=[_choice("x" * 101)])), "0.options.1.choices.0.name", "100"),
        (
            _command(_option(description_localizations={"zh-CN": "采" * 101})),
            "0.options.1.description_localizations.zh-CN",
            "1 and 100",
        ),
        (_command(_option(), _option("a", required=True)), "0.options", "before non-required"),
        (_command(*[_option(f"o{i}") for i in range(25)]), "0.options", "25 or fewer"),
        (_command(*[_option(f"o{i}", choices=_BIG) for i in range(2)]), "0", "maximum size (8000)"),
        ([_command(), _command()], "", "must be unique"),
    ],
)
async def test_discord_refuses_a_command_registration_over_its_limits(
    dc: FakeDiscord, command: dict[str, Any] | list[dict[str, Any]], path: str, why: str
) -> None:
    url = f"{dc.api_url}/applications/{dc.app_id}/commands"
    upload = command if isinstance(command, list) else [command]
    headers = {"Authorization": f"Bot {dc.token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.put(url, json=upload, headers=headers) as response,
    ):
        body = await response.json(content_type=None)
    assert (response.status, body["code"]) == (400, 50035)
    assert any(why in message for message in _errors(body, path)), body
    assert dc.commands == []

    within = _command(*[_option(f"o{i}", choices=_BIG) for i in range(1)])  # 5,000 or so
    async with (
        aiohttp.ClientSession() as session,
        session.put(url, json=[within], headers=headers) as response,
    ):
        assert response.status == 200
    assert [c["name"] for c in dc.commands] == ["draw"]


async def test_discord_py_uploads_26_choices_and_the_sync_fails(dc: FakeDiscord) -> None:
    """discord.py does not count choices: only Discord (and so the fake) refuses them."""
    client = discord.Client(intents=discord.Intents.none())
    tree = app_commands.CommandTree(client)

    @tree.command(name="draw", description="Draw a picture")
    @app_commands.choices(sampler=[app_commands.Choice(name=f"s{i}", value=i) for i in range(26)])
    async def draw(interaction: discord.Interaction, sampler: int) -> None:
        raise AssertionError("never registered")

    async with client:
        await client.login(dc.token)
        with pytest.raises(app_commands.CommandSyncFailure) as failed:
            await tree.sync()
    assert "In command 'draw'" in str(failed.value)
    assert "In parameter 'sampler'" in str(failed.value)
    assert "Must be 25 or fewer in length." in str(failed.value)


async def test_discord_ephemeral_error(dc: FakeDiscord, draw_bot: DrawBot) -> None:
    slash = await dc.slash("draw", {"prompt": "bad"}, guild_id=None)  # in a DM
    callback = await dc.wait_for("interaction_callback")
    assert callback.payload == {
        "type": 4,
        "data": {"content": "unknown flag --x", "flags": 64, "tts": False},
    }
    original = dc.original(slash)
    assert original is not None and original["flags"] & 64
    assert dc.count("followup_send", status=None) == 0


async def test_discord_followup_429_is_retried(dc: FakeDiscord, draw_bot: DrawBot) -> None:
    dc.rate_limit_next("followup_send", retry_after=0.2)
    slash = await dc.slash("draw", {"prompt": "a cat"})
    limited = await dc.wait_for("followup_send", status=429)
    limited_at = time.monotonic()
    await dc.wait_for("followup_send")
    assert time.monotonic() - limited_at >= 0.15
    assert limited.payload["content"] == "a cat [anime, 28 steps]"
    assert len(dc.followups(slash)) == 1


async def test_discord_modal_and_heartbeat(dc: FakeDiscord, draw_bot: DrawBot) -> None:
    slash = await dc.slash("edit")
    opened = await dc.wait_for("interaction_callback")
    assert opened.payload["type"] == 9 and opened.payload["data"]["custom_id"]
    submit = await dc.submit_modal(slash, {"prompt": "a dog"})
    answer = await dc.wait_for("interaction_callback", dc.of(submit))
    assert answer.payload["data"]["content"] == "edited: a dog"
    assert answer.payload["data"]["flags"] == 64
    await dc.wait_until(lambda: dc.heartbeats >= 2)  # ACKed, or discord.py would reconnect
    assert dc.count("gateway_identify") == 1


async def test_discord_button_still_routes_after_a_restart(dc: FakeDiscord) -> None:
    first = DrawBot()
    async with first:
        task = asyncio.create_task(first.start(dc.token))
        slash = await dc.slash("draw", {"prompt": "a cat"})  # waits for the gateway READY
        await dc.wait_for("followup_send")
    await asyncio.wait_for(task, 5)

    second = DrawBot()
    async with second:  # closes the client even when an assertion fails
        second.add_view(AgainView("restored"))  # persistent: timeout=None and fixed custom_ids
        task = asyncio.create_task(second.start(dc.token))
        click = await dc.click(dc.followups(slash)[0], "draw:again")
        answer = await dc.wait_for("interaction_callback", dc.of(click))
    await asyncio.wait_for(task, 5)
    assert answer.payload["data"]["content"] == "again: restored"
    assert dc.count("gateway_identify") == 2
    assert not first.errors and not second.errors
