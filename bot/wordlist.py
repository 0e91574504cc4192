"""Word lists (banned words, NSFW words) matched the same way by every frontend."""

from __future__ import annotations

import re
from collections.abc import Iterable


def find_word(prompt: str, words: Iterable[str]) -> str | None:
    """The first of `words` in `prompt`, case-insensitive: whole words (`_`, `(`, `:` separate
    them, so `(nsfw:1.2)` and the Danbooru tag `cum_on` count, `sussex` does not); words with
    non-ASCII letters match anywhere (CJK has no spaces)."""
    lowered = prompt.lower()
    for word in words:
        needle = word.strip().lower()
        if not needle:
            continue
        if needle.isascii():
            if re.search(rf"(?<![a-z0-9]){re.escape(needle)}(?![a-z0-9])", lowered):
                return word
        elif needle in lowered:
            return word
    return None
