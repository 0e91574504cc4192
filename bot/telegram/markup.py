"""What a Telegram reply carries besides its words: inline keyboards and reply parameters.

Buttons carry only a job id and an image index, so they work after a restart (the job is looked
up in the journal): c:JOB cancel, r:JOB reroll, v:JOB:I Vary (subtle), v:JOB:I:s Vary (strong),
u:JOB:I Upscale (×2: hires fix, or A1111's Extras), d:JOB:I the PNG. "v:JOB:I" was the one 🔀
Variations button before there were two: it stays the subtle one, so buttons already in chats
keep working.
"""

from __future__ import annotations

from dataclasses import dataclass

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, ReplyParameters

from bot.messages import Locale, text

# The callback data of the buttons that start a job, and of those that do not.
JOB_BUTTONS = r"^(r:\d+|v:\d+:\d+(:s)?|u:\d+:\d+)$"
OTHER_BUTTONS = r"^(c:\d+|d:\d+:\d+)$"


@dataclass(frozen=True)
class Press:
    """A button's callback data, read: its kind ("c", "r", "v", "u", "d"), job, image,
    strength."""

    kind: str
    job_id: int
    index: int = 0
    strong: bool = False

    @classmethod
    def parse(cls, data: str) -> Press:
        kind, job, index, strength = [*data.split(":"), "0", ""][:4]
        return cls(kind, int(job), int(index), strength == "s")


def replying(message_id: int) -> ReplyParameters:
    return ReplyParameters(message_id=message_id, allow_sending_without_reply=True)


def _button(label: str, data: str) -> InlineKeyboardButton:
    return InlineKeyboardButton(label, callback_data=data)


def cancel_keyboard(job_id: int, locale: Locale) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([[_button(text("tg_button_cancel", locale), f"c:{job_id}")]])


def result_keyboard(
    job_id: int, index: int, locale: Locale, *, png: bool, drawn: bool = True
) -> InlineKeyboardMarkup:
    """One photo's: reroll (same request, new seed), its upscale and its PNG; its subtle and
    strong variations. An upscale of a picture (not `drawn`) has only the upscale and PNG."""
    first = [
        _button(text("tg_button_reroll", locale), f"r:{job_id}"),
        _button(text("tg_button_upscale", locale), f"u:{job_id}:{index}"),
    ]
    if png:
        first.append(_button(text("tg_button_png", locale), f"d:{job_id}:{index}"))
    if not drawn:
        return InlineKeyboardMarkup([first[1:]])
    vary = [
        _button(text("tg_button_vary_subtle", locale), f"v:{job_id}:{index}"),
        _button(text("tg_button_vary_strong", locale), f"v:{job_id}:{index}:s"),
    ]
    return InlineKeyboardMarkup([first, vary])


def album_keyboard(
    job_id: int, indexes: range, locale: Locale, *, png: bool
) -> InlineKeyboardMarkup:
    """An album's (Telegram puts no keyboard on albums; this goes in a message after it): one
    reroll, then a row per picture, numbered as the album shows them (1 is the first)."""
    rows = [[_button(text("tg_button_reroll", locale), f"r:{job_id}")]]
    for index in indexes:
        n = index + 1
        row = [
            _button(text("tg_button_album_subtle", locale, n=n), f"v:{job_id}:{index}"),
            _button(text("tg_button_album_strong", locale, n=n), f"v:{job_id}:{index}:s"),
            _button(text("tg_button_album_upscale", locale, n=n), f"u:{job_id}:{index}"),
        ]
        if png:
            row.append(_button(text("tg_button_album_png", locale, n=n), f"d:{job_id}:{index}"))
        rows.append(row)
    return InlineKeyboardMarkup(rows)
