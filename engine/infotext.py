"""A1111 "parameters" infotext: the text A1111's PNG Info and third-party readers understand."""

from __future__ import annotations

import json
from collections.abc import Mapping


def quote(value: object) -> str:
    """A1111 `infotext_utils.quote`: JSON-quote values holding a comma, newline or colon."""
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def format_infotext(prompt: str, negative_prompt: str, params: Mapping[str, object]) -> str:
    """A1111 `create_infotext` layout: prompt, optional `Negative prompt:` line, `k: v` line.

    `params` must already be in A1111's key order; None values are left out, as A1111 does.
    """
    line = ", ".join(
        key if key == value else f"{key}: {quote(value)}"
        for key, value in params.items()
        if value is not None
    )
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{line}".strip()


def format_number(value: float) -> str:
    """A float as A1111 prints it (11.0 → "11", 7.5 → "7.5")."""
    return str(int(value)) if float(value).is_integer() else str(value)
