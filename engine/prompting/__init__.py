"""The prompt language: A1111/NAI syntax (pure text, re-exported here), presets, the CLIP
tokenizer, and CLIP conditioning (`engine.prompting.conditioning`, which needs torch)."""

from __future__ import annotations

from engine.prompting.syntax import (
    BREAK,
    EMPHASIS_MODES,
    MAX_WEIGHT,
    SYNTAXES,
    check_emphasis,
    check_weights,
    extra_networks,
    format_weight,
    parse_attention,
    parse_weights,
    prompt_schedule,
    to_a1111,
    to_nai,
)

__all__ = [
    "BREAK",
    "EMPHASIS_MODES",
    "SYNTAXES",
    "MAX_WEIGHT",
    "check_emphasis",
    "check_weights",
    "extra_networks",
    "format_weight",
    "parse_attention",
    "parse_weights",
    "prompt_schedule",
    "to_a1111",
    "to_nai",
]
