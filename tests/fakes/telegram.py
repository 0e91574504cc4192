"""FakeTelegram: a local Bot API server for driving the real python-telegram-bot client.

Point PTB at it with `ApplicationBuilder().base_url(fake.base_url)` and
`.base_file_url(fake.base_file_url)` (or AIDRAW_TELEGRAM_API_URL = `fake.base_url`).
See shared/notes/chat-testing.md.

What it emulates beyond echoing: long polling (offset, timeout, limit, 409 for a second poller),
bot_command entities, increasing message ids, edits of stored messages, file downloads, albums
(sendMediaGroup: 2 to 10 uploads by attach://, one message each), and the Bot API's 400s that
real bots trip over ("message is not modified", caption > 1024, text > 4096, callback_data > 64
bytes, answering a callback query twice, documents mixed with photos in an album). Photos are
stored as uploaded (real Telegram re-encodes them to JPEG); parse_mode is accepted but entities
are not parsed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import mimetypes
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from aiohttp import web

from tests.fakes.base import (
    NO_ANSWER,
    Canned,
    FakeServer,
    Stall,
    Upload,
    decode_json_field,
    png_size,
    read_form,
)

TOKEN = "123456:TEST-TOKEN"
BOT_ID = 123456

# Parameters that are strings in the Bot API: kept raw, so that text "42" stays "42".
_STRING_PARAMS = frozenset(
    {
        "text",
        "caption",
        "parse_mode",
        "action",
        "callback_query_id",
        "inline_message_id",
        "file_id",
        "language_code",
        "url",
        "business_connection_id",
        "message_effect_id",
        "emoji",
        "description",
        "short_description",
        "name",
    }
)
_NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup "
    "are exactly the same as a current content and reply markup of the message"
)
_MAX_TEXT = 4096
_MAX_CAPTION = 1024
_MAX_CALLBACK_DATA = 64


class Call(NamedTuple):
    """One Bot API request: method name, decoded parameters, uploaded files by field name."""

    method: str
    params: dict[str, Any]
    files: dict[str, Upload]
    status: int = 200


class ApiError(Exception):
    """Answer the current request with a Bot API error."""

    def __init__(self, error_code: int, description: str) -> None:
        super().__init__(description)
        self.error_code = error_code
        self.description = description


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _command_entities(text: str) -> list[dict[str, Any]]:
    if not text.startswith("/"):
        return []
    command = text.split(maxsplit=1)[0]
    return [{"type": "bot_command", "offset": 0, "length": _utf16_len(command)}]


class FakeTelegram(FakeServer):
    """Fake Bot API. `async with FakeTelegram() as tg:` then point PTB at `tg.base_url`."""

    def __init__(
        self, token: str = TOKEN, *, bot_id: int = BOT_ID, username: str = "aidraw_test_bot"
    ) -> None:
        super().__init__()
        self.token = token
        self.bot_user: dict[str, Any] = {
            "id": bot_id,
            "is_bot": True,
            "first_name": "aidraw",
            "username": username,
        }
        self.messages: dict[tuple[int, int], dict[str, Any]] = {}
        """Every message by (chat_id, message_id), as it is now (edits applied, deletes removed)."""
        self.my_commands: dict[tuple[str, str], list[dict[str, Any]]] = {}
        """setMyCommands by (scope type, language_code or "")."""
        self.files: dict[str, bytes] = {}
        """Bytes of every file (uploaded by the bot or pushed by a user) by file_id."""
        self.chats: dict[int, dict[str, Any]] = {}
        self.users: dict[int, dict[str, Any]] = {}
        self._updates: list[dict[str, Any]] = []
        self._update_ids = iter(range(1, 1 << 62))
        self._message_ids = iter(range(1, 1 << 62))
        self._file_paths: dict[str, str] = {}
        self._callbacks: dict[str, bool] = {}  # callback query id -> answered
        self._poller = 0
        self._confirm_watch: tuple[int, Callable[[], None], bool] | None = None
        self._methods: dict[str, Callable[[dict[str, Any], dict[str, Upload]], Any]] = {
            "getMe": lambda p, f: self._get_me(),
            "logOut": lambda p, f: True,
            "close": lambda p, f: True,
            "deleteWebhook": lambda p, f: self._delete_webhook(p),
            "getWebhookInfo": lambda p, f: self._webhook_info(),
            "setMyCommands": self._set_my_commands,
            "getMyCommands": self._get_my_commands,
            "deleteMyCommands": self._delete_my_commands,
            "sendMessage": self._send_message,
            "sendPhoto": self._send_photo,
            "sendDocument": self._send_document,
            "sendMediaGroup": self._send_media_group,
            "sendChatAction": lambda p, f: True,
            "editMessageText": self._edit_text,
            "editMessageCaption": self._edit_caption,
            "editMessageMedia": self._edit_media,
            "editMessageReplyMarkup": self._edit_reply_markup,
            "answerCallbackQuery": self._answer_callback,
            "deleteMessage": self._delete_message,
            "getFile": self._get_file,
        }

    # --- addresses -----------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """PTB `base_url` (it appends the token): http://127.0.0.1:PORT/bot"""
        return f"{self.http_root}/bot"

    @property
    def base_file_url(self) -> str:
        """PTB `base_file_url`: http://127.0.0.1:PORT/file/bot"""
        return f"{self.http_root}/file/bot"

    def env(self) -> dict[str, str]:
        """Environment for the `aidraw run` entry point in a subprocess (add NO_PROXY too)."""
        return {"AIDRAW_TELEGRAM_TOKEN": self.token, "AIDRAW_TELEGRAM_API_URL": self.base_url}

    def _routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/bot{token}/{method}", self._handle_api)
        app.router.add_get("/file/bot{token}/{path:.+}", self._handle_file)

    # --- canned errors -------------------------------------------------------------------------
    def rate_limit_next(self, method: str, retry_after: float = 1) -> None:
        """The next `method` call answers 429 with parameters.retry_after: PTB raises RetryAfter.

        Telegram sends whole seconds (>= 1; PTB ignores 0); a fraction keeps tests fast.
        """
        self.fail_next(
            method,
            429,
            f"Too Many Requests: retry after {retry_after}",
            parameters={"retry_after": retry_after},
        )

    def fail_next(
        self,
        method: str,
        error_code: int,
        description: str,
        *,
        parameters: dict[str, Any] | None = None,
    ) -> None:
        """The next `method` call answers this Bot API error (queued; one per call)."""
        body: dict[str, Any] = {"ok": False, "error_code": error_code, "description": description}
        if parameters:
            body["parameters"] = parameters
        self._fail_next(method, Canned(error_code, body, {}))

    def hang_next(self, method: str, *, done: bool = False, times: int = 1) -> None:
        """The next `times` `method` calls get no answer until the client gives up (its read
        timeout); with `done`, Telegram did the call anyway (e.g. the photo is in the chat)."""
        self.stall_next(method, "drop_done" if done else "drop", seconds=float("inf"), times=times)

    def on_confirm(self, update_id: int, action: Callable[[], None], *, lost: bool = False) -> None:
        """Run `action` once, as soon as a getUpdates arrives whose offset confirms `update_id`
        (the moment Telegram would forget the update), before anything else happens to it.

        `lost=True` then drops that getUpdates unanswered and unapplied, as if it never reached
        Telegram: the update stays pending and is sent again to the next poller.
        """
        self._confirm_watch = (update_id, action, lost)

    # --- users and updates ---------------------------------------------------------------------
    def _user(self, user_id: int, language_code: str | None = None) -> dict[str, Any]:
        user = self.users.get(user_id) or {
            "id": user_id,
            "is_bot": False,
            "first_name": f"User{user_id}",
            "username": f"user{user_id}",
            "language_code": "en",
        }
        if language_code is not None:
            user["language_code"] = language_code
        self.users[user_id] = user
        return user

    def _chat(self, chat_id: int, chat_type: str | None = None) -> dict[str, Any]:
        chat = self.chats.get(chat_id)
        if chat is None or (chat_type is not None and chat["type"] != chat_type):
            chat_type = chat_type or ("private" if chat_id > 0 else "supergroup")
            chat = {"id": chat_id, "type": chat_type}
            if chat_type == "private":
                chat.update(first_name=f"User{chat_id}", username=f"user{chat_id}")
            else:
                chat["title"] = f"Group {chat_id}"
            self.chats[chat_id] = chat
        return chat

    def _queue_update(self, **content: Any) -> dict[str, Any]:
        update = {"update_id": next(self._update_ids), **content}
        self._updates.append(update)
        self._notify()
        return update

    def _user_message(
        self,
        chat_id: int,
        user_id: int,
        *,
        chat_type: str,
        language_code: str,
        reply_to: int | None,
        **content: Any,
    ) -> dict[str, Any]:
        message = {
            "message_id": next(self._message_ids),
            "from": self._user(user_id, language_code),
            "chat": self._chat(chat_id, chat_type),
            "date": int(time.time()),
            **content,
        }
        if reply_to is not None:
            message["reply_to_message"] = _snapshot(self.messages[(chat_id, reply_to)])
        self.messages[(chat_id, message["message_id"])] = message
        return message

    def push_text(
        self,
        chat_id: int,
        user_id: int,
        text: str,
        *,
        chat_type: str = "private",
        language_code: str = "en",
        reply_to: int | None = None,
    ) -> dict[str, Any]:
        """Queue a text message from a user (bot_command entity added for "/..."); the update."""
        content: dict[str, Any] = {"text": text}
        if entities := _command_entities(text):
            content["entities"] = entities
        message = self._user_message(
            chat_id,
            user_id,
            chat_type=chat_type,
            language_code=language_code,
            reply_to=reply_to,
            **content,
        )
        return self._queue_update(message=message)

    def push_photo(
        self,
        chat_id: int,
        user_id: int,
        data: bytes,
        *,
        caption: str | None = None,
        as_document: bool = False,
        filename: str = "image.png",
        mime_type: str | None = None,
        file_size: int | None = None,
        chat_type: str = "private",
        language_code: str = "en",
        reply_to: int | None = None,
    ) -> dict[str, Any]:
        """Queue a photo (or, with as_document, a file) from a user; the bytes are downloadable
        (each download is recorded as a "downloadFile" call). `mime_type` is the document's
        (else guessed from `filename`); `file_size` is what Telegram says of the file's size
        (else the size of `data`), for files too big to bother sending through the fake."""
        content: dict[str, Any] = {}
        if as_document:
            content["document"] = self._store_document(data, filename, mime_type)
            if file_size is not None:
                content["document"]["file_size"] = file_size
        else:
            content["photo"] = self._store_photo(data)
            if file_size is not None:
                content["photo"][-1]["file_size"] = file_size
        if caption is not None:
            content["caption"] = caption
            if entities := _command_entities(caption):
                content["caption_entities"] = entities
        message = self._user_message(
            chat_id,
            user_id,
            chat_type=chat_type,
            language_code=language_code,
            reply_to=reply_to,
            **content,
        )
        return self._queue_update(message=message)

    def push_callback(
        self, chat_id: int, user_id: int, message_id: int, data: str
    ) -> dict[str, Any]:
        """Queue a press on an inline button of a stored message; `data` must be on a button."""
        message = self.messages[(chat_id, message_id)]
        buttons = [
            button.get("callback_data")
            for row in message.get("reply_markup", {}).get("inline_keyboard", [])
            for button in row
        ]
        if data not in buttons:
            raise ValueError(f"no button with callback_data {data!r} on message {message_id}")
        query_id = str(self._next_id())
        self._callbacks[query_id] = False
        query = {
            "id": query_id,
            "from": self._user(user_id),
            "message": _snapshot(message),
            "chat_instance": str(chat_id),
            "data": data,
        }
        return self._queue_update(callback_query=query)

    # --- request handling ----------------------------------------------------------------------
    async def _handle_api(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        method = request.match_info["method"]
        fields, uploads = await read_form(request)
        if request.content_type == "application/json" and request.can_read_body:
            params: dict[str, Any] = await request.json()
        else:
            params = {
                name: value if name in _STRING_PARAMS else decode_json_field(value)
                for name, value in {**request.query, **fields}.items()
            }
        files = {u.field: u for u in uploads}

        canned = self._take_canned(method)
        if isinstance(canned, Canned):
            self._record(Call(method, params, files, canned.status))
            return web.json_response(canned.body, status=canned.status, headers=canned.headers)
        if isinstance(canned, Stall):
            if canned.then != "answer":
                return await self._stall_then_drop(request, canned, method, params, files)
            await self._stall(request, canned.seconds)
        if method == "getUpdates":
            if self._confirms_watched(params):
                return await self._drop(request)
            self._record(Call(method, params, files))
            try:
                result = await self._get_updates(params)
            except ApiError as exc:
                return _error(exc.error_code, exc.description)
            return web.json_response({"ok": True, "result": result})

        handler = self._methods.get(method)
        try:
            if handler is None:
                raise ApiError(404, "Not Found")
            result = handler(params, files)
        except ApiError as exc:
            self._record(Call(method, params, files, exc.error_code))
            return _error(exc.error_code, exc.description)
        self._record(Call(method, params, files))
        return web.json_response({"ok": True, "result": result})

    async def _stall_then_drop(
        self,
        request: web.Request,
        stall: Stall,
        method: str,
        params: dict[str, Any],
        files: dict[str, Upload],
    ) -> web.Response:
        """A request that never gets an answer; with "drop_done" it takes effect first."""
        self._record(Call(method, params, files, NO_ANSWER))
        handler = self._methods.get(method)
        if stall.then == "drop_done" and handler is not None:
            with contextlib.suppress(ApiError):  # failed or not, the client is not told
                handler(params, files)
            self._notify()
        await self._stall(request, stall.seconds)
        return await self._drop(request)

    def _confirms_watched(self, params: dict[str, Any]) -> bool:
        """Run the `on_confirm` action if this getUpdates confirms the watched update; True if
        the request is then to be lost."""
        if self._confirm_watch is None:
            return False
        update_id, action, lost = self._confirm_watch
        if int(params.get("offset") or 0) <= update_id:
            return False
        self._confirm_watch = None
        action()
        if lost:
            self._record(Call("getUpdates", params, {}, NO_ANSWER))
        return lost

    async def _handle_file(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        path = request.match_info["path"]
        file_id = self._file_paths.get(path)
        if file_id is None:
            self._record(Call("downloadFile", {"file_path": path}, {}, 404))
            return _error(404, "Not Found")
        self._record(Call("downloadFile", {"file_path": path, "file_id": file_id}, {}))
        return web.Response(body=self.files[file_id], content_type="application/octet-stream")

    async def _get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        offset = int(params.get("offset") or 0)
        limit = int(params.get("limit") or 100)
        timeout = float(params.get("timeout") or 0)
        if offset > 0:
            # An offset confirms every earlier update: Telegram forgets them.
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        self._poller += 1
        me = self._poller
        self._notify()  # an older long poll gets its 409 now
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self._poller != me:
                raise ApiError(
                    409,
                    "Conflict: terminated by other getUpdates request; make sure that only one "
                    "bot instance is running",
                )
            pending = self._updates[:limit]
            remaining = deadline - loop.time()
            if pending or remaining <= 0 or self._closing.is_set():
                return pending
            await self._wait_changed(remaining)

    # --- methods ---------------------------------------------------------------------------------
    def _get_me(self) -> dict[str, Any]:
        return {
            **self.bot_user,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    def _webhook_info(self) -> dict[str, Any]:
        pending = len(self._updates)
        return {"url": "", "has_custom_certificate": False, "pending_update_count": pending}

    def _delete_webhook(self, params: dict[str, Any]) -> bool:
        if params.get("drop_pending_updates"):
            self._updates.clear()
        return True

    @staticmethod
    def _commands_key(params: dict[str, Any]) -> tuple[str, str]:
        scope = params.get("scope") or {"type": "default"}
        return scope.get("type", "default"), params.get("language_code") or ""

    def _set_my_commands(self, params: dict[str, Any], files: dict[str, Upload]) -> bool:
        self.my_commands[self._commands_key(params)] = list(params["commands"])
        return True

    def _get_my_commands(self, params: dict[str, Any], files: dict[str, Upload]) -> Any:
        return self.my_commands.get(self._commands_key(params), [])

    def _delete_my_commands(self, params: dict[str, Any], files: dict[str, Upload]) -> bool:
        self.my_commands.pop(self._commands_key(params), None)
        return True

    def _new_file_id(self, data: bytes, kind: str, suffix: str) -> str:
        n = self._next_id()
        file_id = f"{kind}-file-{n}"
        self.files[file_id] = data
        self._file_paths[f"{kind}s/file_{n}{suffix}"] = file_id
        return file_id

    def _store_photo(self, data: bytes) -> list[dict[str, Any]]:
        width, height = png_size(data) or (512, 512)
        sizes = []
        scale = min(1.0, 90 / max(width, height))
        # A thumbnail and the full size, like Telegram's list; both download the uploaded bytes.
        for w, h in ((round(width * scale), round(height * scale)), (width, height)):
            file_id = self._new_file_id(data, "photo", ".png")
            sizes.append(
                {
                    "file_id": file_id,
                    "file_unique_id": f"u{file_id}",
                    "width": w,
                    "height": h,
                    "file_size": len(data),
                }
            )
        return sizes

    def _store_document(
        self, data: bytes, filename: str | None, content_type: str | None
    ) -> dict[str, Any]:
        filename = filename or "file"
        mime = content_type or mimetypes.guess_type(filename)[0] or "application/octet-stream"
        suffix = mimetypes.guess_extension(mime) or ""
        file_id = self._new_file_id(data, "document", suffix)
        return {
            "file_id": file_id,
            "file_unique_id": f"u{file_id}",
            "file_name": filename,
            "mime_type": mime,
            "file_size": len(data),
        }

    def _input_file(self, value: Any, files: dict[str, Upload], field: str) -> Upload | str:
        """An uploaded file (field or attach://name), or a file_id / URL string as given."""
        if isinstance(value, str) and value.startswith("attach://"):
            field = value.removeprefix("attach://")
        elif value is not None:
            return str(value)
        if field not in files:
            raise ApiError(400, f"Bad Request: there is no {field} in the request")
        return files[field]

    def _media(self, kind: str, source: Upload | str) -> Any:
        if isinstance(source, str):
            if source not in self.files:
                raise ApiError(400, "Bad Request: wrong file identifier/HTTP URL specified")
            data, filename, content_type = self.files[source], None, None
        else:
            data, filename, content_type = source.data, source.filename, source.content_type
        if kind == "photo":
            return self._store_photo(data)
        return self._store_document(data, filename, content_type)

    def _message(self, chat_id: int, message_id: int) -> dict[str, Any]:
        message = self.messages.get((chat_id, message_id))
        if message is None:
            raise ApiError(400, "Bad Request: message to edit not found")
        return message

    @staticmethod
    def _check_text(text: Any, limit: int, what: str) -> None:
        if text is not None and _utf16_len(str(text)) > limit:
            raise ApiError(400, f"Bad Request: message {what} is too long")

    @staticmethod
    def _inline_markup(params: dict[str, Any]) -> dict[str, Any] | None:
        markup = params.get("reply_markup")
        if not isinstance(markup, dict) or "inline_keyboard" not in markup:
            return None  # reply keyboards are not part of the returned Message
        for row in markup["inline_keyboard"]:
            for button in row:
                data = button.get("callback_data")
                if data is not None and not 1 <= len(data.encode()) <= _MAX_CALLBACK_DATA:
                    raise ApiError(400, "Bad Request: BUTTON_DATA_INVALID")
        return markup

    def _bot_message(self, params: dict[str, Any], **content: Any) -> dict[str, Any]:
        chat_id = params["chat_id"]
        if not isinstance(chat_id, int):
            raise ApiError(400, "Bad Request: chat not found")
        self._check_text(params.get("caption"), _MAX_CAPTION, "caption")
        message: dict[str, Any] = {
            "message_id": next(self._message_ids),
            "from": self.bot_user,
            "chat": self._chat(chat_id),
            "date": int(time.time()),
            **content,
        }
        if params.get("caption") is not None:
            message["caption"] = params["caption"]
        if params.get("has_spoiler"):
            message["has_media_spoiler"] = True
        reply = params.get("reply_parameters") or {}
        reply_to = reply.get("message_id") or params.get("reply_to_message_id")
        if reply_to is not None:
            if (chat_id, reply_to) in self.messages:
                message["reply_to_message"] = _snapshot(self.messages[(chat_id, reply_to)])
            elif not reply.get("allow_sending_without_reply"):
                raise ApiError(400, "Bad Request: message to be replied not found")
        if (markup := self._inline_markup(params)) is not None:
            message["reply_markup"] = markup
        self.messages[(chat_id, message["message_id"])] = message
        return message

    def _send_message(self, params: dict[str, Any], files: dict[str, Upload]) -> dict[str, Any]:
        text = params.get("text")
        if not text:
            raise ApiError(400, "Bad Request: message text is empty")
        self._check_text(text, _MAX_TEXT, "text")
        return self._bot_message(params, text=text)

    def _send_photo(self, params: dict[str, Any], files: dict[str, Upload]) -> dict[str, Any]:
        source = self._input_file(params.get("photo"), files, "photo")
        return self._bot_message(params, photo=self._media("photo", source))

    def _send_document(self, params: dict[str, Any], files: dict[str, Upload]) -> dict[str, Any]:
        source = self._input_file(params.get("document"), files, "document")
        return self._bot_message(params, document=self._media("document", source))

    def _send_media_group(
        self, params: dict[str, Any], files: dict[str, Upload]
    ) -> list[dict[str, Any]]:
        media = params.get("media") or []
        if not 2 <= len(media) <= 10:
            raise ApiError(400, "Bad Request: wrong number of messages in a media group")
        if len({item["type"] == "document" for item in media}) > 1:
            # Telegram: documents can be grouped only with documents.
            raise ApiError(400, "Bad Request: document can't be mixed with other media types")
        group_id = str(self._next_id())
        messages = []
        for item in media:
            kind = "photo" if item["type"] == "photo" else "document"
            source = self._input_file(item["media"], files, kind)
            item_params = {
                "chat_id": params["chat_id"],
                "caption": item.get("caption"),
                "has_spoiler": item.get("has_spoiler"),
                "reply_parameters": params.get("reply_parameters"),  # each one answers it
            }
            messages.append(
                self._bot_message(
                    item_params, media_group_id=group_id, **{kind: self._media(kind, source)}
                )
            )
        return messages

    def _edit(self, params: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any] | bool:
        """Apply `changes` (None removes a field) to a stored message, like Telegram's edits."""
        if params.get("inline_message_id"):
            return True
        message = self._message(params.get("chat_id", 0), params.get("message_id", 0))
        # An edit that does not repeat the inline keyboard removes it.
        changes = {**changes, "reply_markup": self._inline_markup(params)}
        new_media = "photo" in changes or "document" in changes
        if not new_media and all(message.get(k) == v for k, v in changes.items()):
            raise ApiError(400, _NOT_MODIFIED)
        for key, value in changes.items():
            if value is None:
                message.pop(key, None)
            else:
                message[key] = value
        message["edit_date"] = int(time.time())
        return message

    def _edit_text(self, params: dict[str, Any], files: dict[str, Upload]) -> Any:
        message = self.messages.get((params.get("chat_id", 0), params.get("message_id", 0)))
        if message is not None and "text" not in message:
            raise ApiError(400, "Bad Request: there is no text in the message to edit")
        if not params.get("text"):
            raise ApiError(400, "Bad Request: message text is empty")
        self._check_text(params["text"], _MAX_TEXT, "text")
        return self._edit(params, {"text": params["text"]})

    def _edit_caption(self, params: dict[str, Any], files: dict[str, Upload]) -> Any:
        message = self.messages.get((params.get("chat_id", 0), params.get("message_id", 0)))
        if message is not None and "text" in message:
            raise ApiError(400, "Bad Request: there is no caption in the message to edit")
        self._check_text(params.get("caption"), _MAX_CAPTION, "caption")
        return self._edit(params, {"caption": params.get("caption") or None})

    def _edit_media(self, params: dict[str, Any], files: dict[str, Upload]) -> Any:
        media = params.get("media")
        if not isinstance(media, dict):
            raise ApiError(400, "Bad Request: media is required")
        message = self.messages.get((params.get("chat_id", 0), params.get("message_id", 0)))
        if message is not None and "text" in message:
            raise ApiError(400, "Bad Request: there is no media in the message to edit")
        self._check_text(media.get("caption"), _MAX_CAPTION, "caption")
        kind, other = (
            ("photo", "document") if media.get("type") == "photo" else ("document", "photo")
        )
        source = self._input_file(media.get("media"), files, kind)
        changes = {
            kind: self._media(kind, source),
            other: None,
            "caption": media.get("caption") or None,
            "has_media_spoiler": True if media.get("has_spoiler") else None,
        }
        return self._edit(params, changes)

    def _edit_reply_markup(self, params: dict[str, Any], files: dict[str, Upload]) -> Any:
        return self._edit(params, {})

    def _answer_callback(self, params: dict[str, Any], files: dict[str, Upload]) -> bool:
        query_id = str(params.get("callback_query_id"))
        if self._callbacks.get(query_id, True):
            raise ApiError(
                400,
                "Bad Request: query is too old and response timeout expired or query ID is invalid",
            )
        self._callbacks[query_id] = True
        return True

    def _delete_message(self, params: dict[str, Any], files: dict[str, Upload]) -> bool:
        if self.messages.pop((params.get("chat_id", 0), params.get("message_id", 0)), None) is None:
            raise ApiError(400, "Bad Request: message to delete not found")
        return True

    def _get_file(self, params: dict[str, Any], files: dict[str, Upload]) -> dict[str, Any]:
        file_id = params.get("file_id")
        for path, known in self._file_paths.items():
            if known == file_id:
                data = self.files[file_id]
                return {
                    "file_id": file_id,
                    "file_unique_id": f"u{file_id}",
                    "file_size": len(data),
                    "file_path": path,
                }
        raise ApiError(400, "Bad Request: invalid file_id")

    # --- conveniences for tests ------------------------------------------------------------------
    def sent(self, chat_id: int) -> list[dict[str, Any]]:
        """The bot's messages still in a chat, oldest first."""
        return [
            m
            for (chat, _), m in sorted(self.messages.items(), key=lambda kv: kv[0][1])
            if chat == chat_id and m.get("from", {}).get("id") == self.bot_user["id"]
        ]

    def file_bytes(self, file_id: str) -> bytes:
        """The bytes behind a file_id (e.g. message["photo"][-1]["file_id"])."""
        return self.files[file_id]


def _snapshot(message: dict[str, Any]) -> dict[str, Any]:
    """A copy of a message as it is now, one reply level deep (as Telegram nests them)."""
    copy: dict[str, Any] = json.loads(json.dumps(message))
    copy.get("reply_to_message", {}).pop("reply_to_message", None)
    return copy


def _error(error_code: int, description: str) -> web.Response:
    body = {"ok": False, "error_code": error_code, "description": description}
    return web.json_response(body, status=error_code)
