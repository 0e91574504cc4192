"""A1111's 75-token chunks: a prompt as CLIP token ids and each token's weight (no torch).

`prompt_chunks` is A1111's `tokenize_line` (comma backtrack, BREAK, padding to BOS + 75 + EOS);
`engine.prompting.conditioning` encodes the chunks, `aidraw draw --explain` prints them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from engine.prompting.syntax import BREAK, check_emphasis, parse_attention


class Tokenizer(Protocol):
    """What chunking asks of a CLIP tokenizer (transformers' CLIPTokenizer, or `ClipBpe`)."""

    bos_token_id: Any
    eos_token_id: Any
    pad_token_id: Any
    unk_token_id: Any

    def __call__(
        self, texts: Sequence[str], *, truncation: bool, add_special_tokens: bool, verbose: bool
    ) -> Any: ...

    def convert_tokens_to_ids(self, token: str) -> Any: ...


CHUNK_LENGTH = 75  # CLIP's 77-token context less BOS and EOS
COMMA_BACKTRACK = 20  # A1111 `comma_padding_backtrack` default


@dataclass(frozen=True)
class PromptChunk:
    """77 token ids (BOS, 75 tokens or padding, EOS) and each token's weight."""

    tokens: tuple[int, ...]
    multipliers: tuple[float, ...]
    used: int  # how many of the 75 are prompt tokens (the rest is padding)


def prompt_chunks(
    tokenizer: Tokenizer,
    text: str,
    *,
    emphasis: str = "Original",
    comma_backtrack: int = COMMA_BACKTRACK,
) -> list[PromptChunk]:
    """Split a prompt into 75-token chunks as A1111's `tokenize_line` does.

    A full chunk moves the tokens after its last comma to the next chunk if that comma is within
    `comma_backtrack` tokens of the end; BREAK closes a chunk at once; an empty prompt is one
    chunk of padding. Emphasis "None" reads brackets as plain text.
    """
    check_emphasis(emphasis)
    segments = parse_attention(text) if emphasis != "None" else [(text, 1.0)]
    ids = special_ids(tokenizer)
    # verbose=False: long prompts are the point here, not a mistake worth a warning.
    tokenized = tokenizer(
        [segment for segment, _ in segments],
        truncation=False,
        add_special_tokens=False,
        verbose=False,
    )["input_ids"]
    chunks: list[PromptChunk] = []
    tokens: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def close_chunk() -> None:
        nonlocal tokens, weights, last_comma
        used = len(tokens)
        padding = CHUNK_LENGTH - used
        chunks.append(
            PromptChunk(
                tokens=(ids.start, *tokens, *[ids.end] * padding, ids.end),
                multipliers=(1.0, *weights, *[1.0] * padding, 1.0),
                used=used,
            )
        )
        tokens, weights, last_comma = [], [], -1

    for token_ids, (segment, weight) in zip(tokenized, segments, strict=True):
        if (segment, weight) == BREAK:
            close_chunk()
            continue
        for token in token_ids:
            if token == ids.comma:
                last_comma = len(tokens)
            elif (
                comma_backtrack
                and len(tokens) == CHUNK_LENGTH
                and last_comma != -1
                and len(tokens) - last_comma <= comma_backtrack
            ):
                split = last_comma + 1
                moved, moved_weights = tokens[split:], weights[split:]
                tokens, weights = tokens[:split], weights[:split]
                close_chunk()
                tokens, weights = moved, moved_weights
            if len(tokens) == CHUNK_LENGTH:
                close_chunk()
            tokens.append(token)
            weights.append(weight)
    if tokens or not chunks:
        close_chunk()
    return chunks


@dataclass(frozen=True)
class SpecialIds:
    """The tokenizer's BOS, EOS, padding and comma ids."""

    start: int
    end: int
    pad: int
    comma: int | None


def special_ids(tokenizer: Tokenizer) -> SpecialIds:
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    return SpecialIds(
        start=int(tokenizer.bos_token_id),
        end=int(tokenizer.eos_token_id),
        pad=int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0),
        comma=None if comma == tokenizer.unk_token_id else int(comma),
    )


def empty_chunk(tokenizer: Tokenizer) -> PromptChunk:
    """A chunk of padding only (A1111 `empty_chunk`), which fills shorter prompts of a batch."""
    ids = special_ids(tokenizer)
    return PromptChunk(
        tokens=(ids.start, *[ids.end] * (CHUNK_LENGTH + 1)),
        multipliers=(1.0,) * (CHUNK_LENGTH + 2),
        used=0,
    )
