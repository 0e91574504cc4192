"""Styles: named prompt / negative prompt presets, as A1111's styles.csv (`name,prompt,
negative_prompt`), for the bot, a server or chat, and each user (`--style NAME` in a prompt).

A style is applied to the prompt as typed, before the prompt is read (A1111's
`apply_styles_to_prompt`): a style text with `{prompt}` has the prompt put in its place, any
other is added after the prompt with ", ". Several styles (`--style a, b`) apply in order.
Looking a name up, a user's own style comes first, then the place's, then the bot's.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass

PLACEHOLDER = "{prompt}"


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


def merge_prompts(style_text: str, prompt: str) -> str:
    """A1111's merge: `{prompt}` in the style is replaced by the prompt; otherwise the two
    are joined with ", " (an empty one left out)."""
    if PLACEHOLDER in style_text:
        return style_text.replace(PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def apply_styles(prompt: str, negative: str, styles: Sequence[Style]) -> tuple[str, str]:
    """The prompt and the negative prompt with `styles` applied, in order."""
    for style in styles:
        prompt = merge_prompts(style.prompt, prompt)
        negative = merge_prompts(style.negative_prompt, negative)
    return prompt, negative


def read_csv(text: str) -> list[Style]:
    """Styles from an A1111 styles.csv (a BOM, `#` comment rows and the old `name,text`
    columns are read as A1111 reads them). ValueError names what is wrong."""
    reader = csv.DictReader(io.StringIO(text.removeprefix("\ufeff")), skipinitialspace=True)
    columns = reader.fieldnames or []
    if "name" not in columns or not ({"prompt", "text"} & set(columns)):
        raise ValueError(
            f"a styles.csv needs the columns name,prompt,negative_prompt; found {columns}"
        )
    styles = []
    for row in reader:
        name = (row.get("name") or "").strip()
        if not name or name.startswith("#"):
            continue
        prompt = row.get("prompt") if "prompt" in row else row.get("text")
        styles.append(Style(name, prompt or "", row.get("negative_prompt") or ""))
    return styles
