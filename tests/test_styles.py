"""Styles (bot/styles.py, bot/stylebook.py): A1111's styles.csv read as A1111 reads it, its
`{prompt}` placeholder semantics, the scopes a name is looked up in; and the moderation log's
retention (bot/modlog.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.modlog import ModLog
from bot.parse import ParseError, read_request
from bot.stylebook import BOT, StyleBook
from bot.styles import Style, apply_styles, merge_prompts, read_csv

# A styles.csv as A1111 v1.9 writes it (utf-8-sig, quoted fields), with a comment row.
A1111_CSV = (
    "\ufeffname,prompt,negative_prompt\n"
    '"Anime","anime screencap, {prompt}, cel shading","lowres, {prompt}"\n'
    '"# old ones below",,\n'
    '"Soft light","soft light, bokeh",""\n'
    'Empty,,"blurry"\n'
)


def test_an_a1111_styles_csv_is_read_as_a1111_reads_it() -> None:
    assert read_csv(A1111_CSV) == [
        Style("Anime", "anime screencap, {prompt}, cel shading", "lowres, {prompt}"),
        Style("Soft light", "soft light, bokeh", ""),
        Style("Empty", "", "blurry"),
    ]
    # A1111's older two-column format.
    assert read_csv("name,text\nink,ink drawing\n") == [Style("ink", "ink drawing", "")]
    with pytest.raises(ValueError, match="needs the columns name,prompt,negative_prompt"):
        read_csv("title,body\nx,y\n")


@pytest.mark.parametrize(
    ("style", "prompt", "merged"),
    [
        ("anime screencap, {prompt}, cel shading", "a cat", "anime screencap, a cat, cel shading"),
        ("soft light", "a cat", "a cat, soft light"),
        ("soft light", "", "soft light"),
        ("", "a cat", "a cat"),
        ("{prompt} {prompt}", "x", "x x"),  # every placeholder, as str.replace
    ],
)
def test_merge_follows_a1111(style: str, prompt: str, merged: str) -> None:
    assert merge_prompts(style, prompt) == merged


def test_styles_apply_in_order_to_both_prompts() -> None:
    anime, soft, empty = read_csv(A1111_CSV)
    assert apply_styles("a cat", "text", [anime, soft, empty]) == (
        "anime screencap, a cat, cel shading, soft light, bokeh",
        "lowres, text, blurry",
    )


def test_the_parser_applies_named_styles_before_it_reads_the_prompt() -> None:
    styles = {s.name: s for s in read_csv(A1111_CSV)}
    parsed = read_request("(a cat:1.2) --style anime --uc none --no-quality", styles=styles)
    assert parsed.request.prompt == "anime screencap, (a cat:1.2), cel shading"
    assert parsed.styles == ("Anime",)
    with pytest.raises(ParseError, match=r"No style 'oil'; styles: Anime, Empty, Soft light\."):
        read_request("a cat --style oil", styles=styles)
    pasted = "a cat\nNegative prompt: x\nSteps: 20, Seed: 1, Size: 512x512"
    assert read_request(pasted, styles=styles).request.prompt == "a cat"  # as written


def test_a_users_style_wins_over_the_servers_and_the_bots(tmp_path: Path) -> None:
    book = StyleBook(tmp_path / "styles.sqlite3")
    book.import_csv(BOT, A1111_CSV)
    book.save("discord:guild:1", [Style("Anime", "server anime, {prompt}")])
    book.save("discord:5", [Style("Anime", "my anime, {prompt}")])
    assert book.styles(["discord:5", "discord:guild:1", BOT])["Anime"].prompt.startswith("my")
    assert book.styles(["discord:6", "discord:guild:1", BOT])["Anime"].prompt.startswith("ser")
    assert set(book.styles(["discord:6", BOT])) == {"Anime", "Soft light", "Empty"}
    book.close()


def test_the_moderation_log_keeps_jobs_for_its_retention(tmp_path: Path) -> None:
    log = ModLog(tmp_path / "modlog.sqlite3", days=2)
    day = 24 * 3600.0
    fields = {"user": "telegram:5", "place": "telegram:chat:-1", "prompt": "a cat"}
    more = {"label": "safe", "score": 0.0, "outcome": "send", "chat": -1}
    log.record(job=1, messages=[10, 11], at=1000 * day, **fields, **more)
    log.record(job=2, messages=[12], at=1002.5 * day, **fields, **more)  # prunes job 1
    assert log.get(1) is None and log.by_message(10, -1) is None
    entry = log.by_message(12, -1)
    assert entry is not None and (entry.job, entry.messages) == (2, (12,))
    assert log.by_message(12, -2) is None  # Telegram's message ids are per chat
    log.close()
    off = ModLog(tmp_path / "off.sqlite3", days=0)
    off.record(job=3, messages=[1], **fields, **more)
    assert off.get(3) is None  # log_days = 0: nothing is kept
    off.close()
