"""Every user-facing string, in English and Chinese. `text(key, locale, **values)`.

Each frontend keeps its own keys in its own section below; shared keys come first.
"""

from __future__ import annotations

import logging
from typing import Literal

from engine.errors import EngineError, InvalidRequest, JobCancelled, QueueFull

log = logging.getLogger(__name__)

Locale = Literal["en", "zh"]
LOCALES: tuple[Locale, ...] = ("en", "zh")

MESSAGES: dict[str, dict[Locale, str]] = {
    # --- shared -----------------------------------------------------------------------------
    "queued": {"en": "Queued: #{position} in line{eta}.", "zh": "已排队：第 {position} 位{eta}。"},
    "eta": {"en": ", about {seconds}s", "zh": "，约 {seconds} 秒"},
    "drawing": {
        "en": "Drawing… step {step}/{total}{eta}",
        "zh": "绘制中… 第 {step}/{total} 步{eta}",
    },
    "done": {"en": "Done.", "zh": "完成。"},
    "cancelled": {"en": "Cancelled.", "zh": "已取消。"},
    "error": {"en": "Error: {message}", "zh": "出错了：{message}"},
    "queue_full": {
        "en": "The queue is full ({position} of {limit}); try again later.",
        "zh": "队列已满（{position}/{limit}），请稍后再试。",
    },
    "failed": {
        "en": "Sorry, something went wrong while drawing. The admins have been told.",
        "zh": "抱歉，绘制时出错了，已通知管理员。",
    },
    "not_admin": {
        "en": "Only the bot's admins can do that.",
        "zh": "只有管理员可以这样做。",
    },
    "caption": {
        "en": "Seed {seed} · {model} · {steps} steps",
        "zh": "种子 {seed} · {model} · {steps} 步",
    },
    # --- discord ----------------------------------------------------------------------------
    # --- telegram ---------------------------------------------------------------------------
    # --- web --------------------------------------------------------------------------------
}


def locale_of(code: str | None) -> Locale:
    """A chat client's language code ("zh-CN", "zh-hans", "en-US", None) → our locale."""
    return "zh" if code and code.lower().startswith("zh") else "en"


def text(key: str, locale: Locale = "en", **values: object) -> str:
    """The message `key` in `locale`, formatted with `values`."""
    return MESSAGES[key][locale].format(**values)


def error_text(error: EngineError, locale: Locale = "en") -> str:
    """What to tell a user about an engine error (their fault, the queue, or ours)."""
    if isinstance(error, QueueFull):
        return text("queue_full", locale, position=error.position, limit=error.limit)
    if isinstance(error, InvalidRequest | JobCancelled):
        # The engine's message names the problem; only the frame is translated.
        return text("error", locale, message=str(error))
    return text("failed", locale)
