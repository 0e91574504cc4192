"""A1111's 75-token chunks: a prompt as CLIP token ids and each token's weight (no torch).

`prompt_chunks` is A1111's `tokenize_line` (comma backtrack, BREAK, padding to BOS + 75 + EOS,
textual-inversion embeddings placed whole in one chunk); `engine.prompting.conditioning` encodes
the chunks, `aidraw draw --explain` prints them. Embeddings are seen here only through an
`EmbeddingLookup` (names, trigger token ids, vector counts); their vectors are
`engine.models.embeddings`'.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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
EMBEDDING_PLACEHOLDER = 0  # A1111's token id under an embedding's vectors (replaced when encoded)


@dataclass(frozen=True)
class ChunkFix:
    """A1111's `PromptChunkFix`: embedding `name`'s vectors replace the chunk's tokens from
    `offset` on, counted among the 75 (so they sit at `offset + 1` of the 77, after BOS)."""

    offset: int
    name: str


@dataclass(frozen=True)
class PromptChunk:
    """77 token ids (BOS, 75 tokens or padding, EOS), each token's weight, and the embeddings
    whose vectors replace some of the tokens."""

    tokens: tuple[int, ...]
    multipliers: tuple[float, ...]
    used: int  # how many of the 75 are prompt tokens (the rest is padding)
    fixes: tuple[ChunkFix, ...] = ()


@dataclass(frozen=True)
class EmbeddingRef:
    """What chunking needs of a textual-inversion embedding: its trigger (A1111: the file stem)
    as CLIP token ids, and how many vectors (token slots) it fills."""

    name: str
    ids: tuple[int, ...]
    vectors: int


class EmbeddingLookup(Protocol):
    """Finds the embedding whose trigger starts at `tokens[position]` (A1111's
    `find_embedding_at_position`); `EmbeddingIndex` and `engine.models.embeddings.EmbeddingDB`
    are ones."""

    def find_at(self, tokens: Sequence[int], position: int) -> EmbeddingRef | None: ...


class EmbeddingIndex:
    """A1111's `ids_lookup`: embeddings keyed by the first token id of their trigger.

    Registered in the given order; a later one with the same name replaces the earlier one.
    Among the triggers that start with the same token the longest that matches wins, and of
    equally long ones the first registered (A1111 sorts each list by length, stably).
    """

    def __init__(self, refs: Iterable[EmbeddingRef]) -> None:
        self._by_first: dict[int, list[EmbeddingRef]] = {}
        for ref in refs:
            if not ref.ids:
                raise ValueError(f"embedding {ref.name!r} has no trigger tokens")
            if not 1 <= ref.vectors <= CHUNK_LENGTH:
                raise ValueError(f"embedding {ref.name!r} has {ref.vectors} vectors")
            candidates = [r for r in self._by_first.get(ref.ids[0], []) if r.name != ref.name]
            candidates.append(ref)
            candidates.sort(key=lambda r: len(r.ids), reverse=True)
            self._by_first[ref.ids[0]] = candidates

    def find_at(self, tokens: Sequence[int], position: int) -> EmbeddingRef | None:
        for ref in self._by_first.get(tokens[position], ()):
            if tuple(tokens[position : position + len(ref.ids)]) == ref.ids:
                return ref
        return None


def trigger_ids(tokenizer: Tokenizer, names: Sequence[str]) -> list[tuple[int, ...]]:
    """Each name's CLIP token ids, as A1111 tokenizes an embedding's name to register it."""
    if not names:
        return []
    tokenized = tokenizer(list(names), truncation=False, add_special_tokens=False, verbose=False)[
        "input_ids"
    ]
    return [tuple(int(t) for t in ids) for ids in tokenized]


def prompt_chunks(
    tokenizer: Tokenizer,
    text: str,
    *,
    emphasis: str = "Original",
    comma_backtrack: int = COMMA_BACKTRACK,
    embeddings: EmbeddingLookup | None = None,
) -> list[PromptChunk]:
    """Split a prompt into 75-token chunks as A1111's `tokenize_line` does.

    A full chunk moves the tokens after its last comma to the next chunk if that comma is within
    `comma_backtrack` tokens of the end; BREAK closes a chunk at once; an empty prompt is one
    chunk of padding. Emphasis "None" reads brackets as plain text.

    An embedding's trigger (matched within one weighted segment) becomes `vectors` placeholder
    tokens with the segment's weight and a `ChunkFix`; one that would not fit in the chunk's
    remaining room starts the next chunk. As in A1111, a comma backtrack moves placeholder
    tokens but not their fix: the fix stays with the closed chunk, at its old offset.
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
    fixes: list[ChunkFix] = []
    last_comma = -1

    def close_chunk() -> None:
        nonlocal tokens, weights, fixes, last_comma
        used = len(tokens)
        padding = CHUNK_LENGTH - used
        chunks.append(
            PromptChunk(
                tokens=(ids.start, *tokens, *[ids.end] * padding, ids.end),
                multipliers=(1.0, *weights, *[1.0] * padding, 1.0),
                used=used,
                fixes=tuple(fixes),
            )
        )
        tokens, weights, fixes, last_comma = [], [], [], -1

    for token_ids, (segment, weight) in zip(tokenized, segments, strict=True):
        if (segment, weight) == BREAK:
            close_chunk()
            continue
        position = 0
        while position < len(token_ids):
            token = token_ids[position]
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
                # A1111 keeps every fix with the closed chunk, even one whose placeholders move:
                # its vectors then land on that chunk's padding, the moved tokens stay id 0.
                close_chunk()
                tokens, weights = moved, moved_weights
            if len(tokens) == CHUNK_LENGTH:
                close_chunk()
            found = embeddings.find_at(token_ids, position) if embeddings is not None else None
            if found is None:
                tokens.append(token)
                weights.append(weight)
                position += 1
                continue
            if len(tokens) + found.vectors > CHUNK_LENGTH:
                close_chunk()
            fixes.append(ChunkFix(len(tokens), found.name))
            tokens += [EMBEDDING_PLACEHOLDER] * found.vectors
            weights += [weight] * found.vectors
            position += len(found.ids)
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
