"""Prompt conditioning: 75-token chunks, CLIP encoding with A1111's clip skip and emphasis.

The prompt language itself (attention, NAI braces, prompt editing) is `engine.prompting.syntax`.
`encode_conditioning` tokenizes prompts into 75-token chunks (comma backtrack, BREAK), encodes
each chunk with A1111's clip skip and applies emphasis to the encoder output, the diffusers
"weighted prompts" way with A1111's numbers.

Textual-inversion embeddings (`engine.models.embeddings.EmbeddingDB`) are placed by the
chunker; their vectors replace the token embeddings at the chunk's fixes, before CLIP adds the
position embeddings (A1111's `EmbeddingsWithFixes`), through a forward hook on the encoder's
token embedding that lasts for one encoder call.

Contract with the sampler loop: `encode_conditioning(...)` returns a `Conditioning`, and the
loop asks `conditioning.at(step)` for (cond, uncond) at every 0-based step, so prompt editing
can change the conditioning mid-way. Second-order samplers call the denoiser twice a step;
A1111 builds their schedule for `2 * steps` and counts denoiser calls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformers import CLIPTextModel, CLIPTokenizer

from engine.prompting.chunks import (
    COMMA_BACKTRACK,
    ChunkFix,
    empty_chunk,
    prompt_chunks,
    special_ids,
)
from engine.prompting.syntax import (
    check_emphasis,
    prompt_schedule,
)

if TYPE_CHECKING:
    from engine.models.embeddings import EmbeddingDB

# (offset among the 75, (n, D) vectors): one row's embedding placements for `encode_tokens`.
Placements = Sequence[tuple[int, torch.Tensor]]

# --- Encoding -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduledCond:
    """A prompt's embedding (77·k, D) used up to and including sampling step `end_at_step`."""

    end_at_step: int
    cond: torch.Tensor


@dataclass(frozen=True)
class Conditioning:
    """Text conditioning of a batch: for each image, its prompt's and negative prompt's schedule.

    `at(step)` gives cond (B, 77·k1, D) and uncond (B, 77·k2, D). k1 and k2 may differ (long
    prompts): A1111 then runs cond and uncond in separate UNet batches. Images of one batch whose
    prompts differ in length are padded by repeating their last vector, as A1111 stacks them;
    `lengths` lets a sampler group equal lengths instead, so an image never depends on its
    batch-mates.
    """

    conds: tuple[tuple[ScheduledCond, ...], ...]
    unconds: tuple[tuple[ScheduledCond, ...], ...]
    empty: torch.Tensor  # (77, D): the empty prompt, for `padded_at`
    # Per image: the embeddings its prompt and its negative prompt used (see `embeddings_used`).
    embedding_names: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = ()

    def embeddings_used(self, i: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Names of the embeddings image i's prompt used, then its negative prompt's.

        Each name once, over all prompt-editing variants, in A1111's order (its `used_embeddings`
        for "TI hashes"): chunk by chunk, each chunk's variants in schedule order.
        """
        return self.embedding_names[i] if self.embedding_names else ((), ())

    def at(
        self, step: int, images: Sequence[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond, uncond) for a 0-based sampling step, for all images or the ones listed."""
        chosen = range(len(self.conds)) if images is None else images
        return (
            _stack([_pick(self.conds[i], step) for i in chosen]),
            _stack([_pick(self.unconds[i], step) for i in chosen]),
        )

    def padded_at(
        self, step: int, images: Sequence[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`at(step)` with the shorter side padded by empty-prompt chunks to equal length.

        A1111's `pad_cond_uncond` option: one UNet batch for both, at the cost of a slightly
        different image than A1111's default when the lengths differ.
        """
        cond, uncond = self.at(step, images)
        missing = (cond.shape[1] - uncond.shape[1]) // self.empty.shape[0]
        if missing > 0:
            uncond = torch.cat([uncond, self.empty.repeat(uncond.shape[0], missing, 1)], dim=1)
        elif missing < 0:
            cond = torch.cat([cond, self.empty.repeat(cond.shape[0], -missing, 1)], dim=1)
        return cond, uncond

    @property
    def lengths(self) -> list[tuple[int, int]]:
        """(cond tokens, uncond tokens) of each image; constant over the steps."""
        return [
            (int(c[0].cond.shape[0]), int(u[0].cond.shape[0]))
            for c, u in zip(self.conds, self.unconds, strict=True)
        ]


def _pick(schedule: Sequence[ScheduledCond], step: int) -> torch.Tensor:
    """A1111 `reconstruct_cond_batch`: the first entry whose last step is ≥ `step`."""
    for entry in schedule:
        if step <= entry.end_at_step:
            return entry.cond
    return schedule[0].cond


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """A1111 `stack_conds`: pad shorter ones by repeating their last vector, then stack."""
    longest = max(t.shape[0] for t in tensors)
    return torch.stack(
        [
            t if t.shape[0] == longest else torch.cat([t, t[-1:].repeat(longest - t.shape[0], 1)])
            for t in tensors
        ]
    )


def encode_conditioning(
    tokenizer: CLIPTokenizer,
    text_encoder: CLIPTextModel,
    prompts: Sequence[str],
    negative_prompts: Sequence[str],
    *,
    clip_skip: int,
    steps: int,
    device: torch.device,
    hires_steps: int | None = None,
    emphasis: str | Sequence[str] = "Original",
    comma_backtrack: int = COMMA_BACKTRACK,
    embeddings: EmbeddingDB | None = None,
) -> Conditioning:
    """Encode a batch's prompts and negative prompts (A1111 syntax) for `steps` sampling steps.

    Each distinct prompt is encoded once, all its prompt-editing variants together (A1111
    restores the emphasis mean over them jointly); `emphasis` is one mode or one per image.
    `embeddings`: the textual-inversion embeddings prompts may name. `hires_steps`: encode for
    a hires pass of that many steps after `steps` (A1111's `calculate_hr_conds` schedule).
    """

    def encode(texts: Sequence[str], mode: str, zero: bool) -> tuple[torch.Tensor, Names]:
        return _encode_texts(
            tokenizer,
            text_encoder,
            texts,
            clip_skip=clip_skip,
            device=device,
            emphasis=mode,
            comma_backtrack=comma_backtrack,
            embeddings=embeddings,
        )

    empty = encode_prompts(tokenizer, text_encoder, [""], clip_skip=clip_skip, device=device)[0]
    return schedule_conditioning(
        prompts, negative_prompts, emphasis, steps, hires_steps, encode=encode, empty=empty
    )


Names = tuple[str, ...]
EncodeTexts = Callable[[Sequence[str], str, bool], tuple[torch.Tensor, Names]]


def schedule_conditioning(
    prompts: Sequence[str],
    negative_prompts: Sequence[str],
    emphasis: str | Sequence[str],
    steps: int,
    hires_steps: int | None,
    *,
    encode: EncodeTexts,
    empty: torch.Tensor,
) -> Conditioning:
    """A batch's conditioning from a model's text encoding: each distinct (prompt, emphasis)
    is scheduled (prompt editing, alternation) and its variants encoded together, once.

    `encode(variants, emphasis, zero)` gives their embeddings and the embedding names used;
    `zero` marks a negative prompt that is exactly "" (SDXL zeroes it; SD-1.x encodes it)."""
    emphases = [emphasis] * len(prompts) if isinstance(emphasis, str) else list(emphasis)
    if not len(prompts) == len(negative_prompts) == len(emphases):
        raise ValueError("prompts, negative_prompts and emphasis differ in length")
    for mode in set(emphases):
        check_emphasis(mode)
    cache: dict[tuple[str, str, bool], tuple[tuple[ScheduledCond, ...], Names]] = {}

    def schedule(text: str, mode: str, negative: bool) -> tuple[tuple[ScheduledCond, ...], Names]:
        key = (text, mode, negative and text == "")
        if key not in cache:
            entries = prompt_schedule(text, steps, hires_steps)
            z, names = encode([variant for _, variant in entries], mode, key[2])
            conds = tuple(ScheduledCond(end, z[i]) for i, (end, _) in enumerate(entries))
            cache[key] = (conds, names)
        return cache[key]

    cond_parts = [schedule(p, mode, False) for p, mode in zip(prompts, emphases, strict=True)]
    uncond_parts = [
        schedule(p, mode, True) for p, mode in zip(negative_prompts, emphases, strict=True)
    ]
    return Conditioning(
        conds=tuple(conds for conds, _ in cond_parts),
        unconds=tuple(unconds for unconds, _ in uncond_parts),
        empty=empty,
        embedding_names=tuple(
            (c_names, u_names)
            for (_, c_names), (_, u_names) in zip(cond_parts, uncond_parts, strict=True)
        ),
    )


def encode_prompts(
    tokenizer: CLIPTokenizer,
    text_encoder: CLIPTextModel,
    texts: Sequence[str],
    *,
    clip_skip: int,
    device: torch.device,
    emphasis: str = "Original",
    comma_backtrack: int = COMMA_BACKTRACK,
    embeddings: EmbeddingDB | None = None,
) -> torch.Tensor:
    """(len(texts), 77·k, D): A1111's `FrozenCLIPEmbedderWithCustomWords.forward` on one batch.

    Texts with fewer chunks get padding chunks; each chunk index is encoded as one batch, and
    emphasis (with its mean restore) applies to that whole batch.
    """
    z, _ = _encode_texts(
        tokenizer,
        text_encoder,
        texts,
        clip_skip=clip_skip,
        device=device,
        emphasis=emphasis,
        comma_backtrack=comma_backtrack,
        embeddings=embeddings,
    )
    return z


def _encode_texts(
    tokenizer: CLIPTokenizer,
    text_encoder: CLIPTextModel,
    texts: Sequence[str],
    *,
    clip_skip: int,
    device: torch.device,
    emphasis: str,
    comma_backtrack: int,
    embeddings: EmbeddingDB | None,
) -> tuple[torch.Tensor, tuple[str, ...]]:
    """`encode_prompts`, and the embeddings used, once each, in A1111's `used_embeddings`
    order (chunk index, then text, then position)."""
    per_text = [
        prompt_chunks(
            tokenizer,
            t,
            emphasis=emphasis,
            comma_backtrack=comma_backtrack,
            embeddings=embeddings,
        )
        for t in texts
    ]
    padding = empty_chunk(tokenizer)
    ids = special_ids(tokenizer)
    zs = []
    used: dict[str, None] = {}
    for i in range(max(len(chunks) for chunks in per_text)):
        batch = [chunks[i] if i < len(chunks) else padding for chunks in per_text]
        tokens = torch.tensor([c.tokens for c in batch], dtype=torch.long)
        if ids.pad != ids.end:  # SD2 tokenizers: pad after the first EOS (A1111 process_tokens)
            for row, chunk in enumerate(batch):
                tokens[row, chunk.tokens.index(ids.end) + 1 :] = ids.pad
        multipliers = torch.tensor([c.multipliers for c in batch], dtype=torch.float32)
        fixes = [c.fixes for c in batch]
        used.update((fix.name, None) for row in fixes for fix in row)
        z = _encode_unique(
            text_encoder,
            tokens,
            clip_skip=clip_skip,
            device=device,
            fixes=fixes,
            embeddings=embeddings,
        )
        zs.append(apply_emphasis(z, multipliers.to(device), emphasis))
    return torch.hstack(zs), tuple(used)


def _encode_unique(
    text_encoder: CLIPTextModel,
    tokens: torch.Tensor,
    *,
    clip_skip: int,
    device: torch.device,
    fixes: Sequence[tuple[ChunkFix, ...]] = (),
    embeddings: EmbeddingDB | None = None,
) -> torch.Tensor:
    """Encode each distinct row once (prompt-editing variants share most chunks).

    Rows are distinct by their tokens and their embedding fixes together: an embedding's
    placeholder ids are all 0, whichever embedding they stand for.
    """
    if embeddings is None or not any(fixes):
        unique, index = torch.unique(tokens, dim=0, return_inverse=True)
        z = encode_tokens(text_encoder, unique.to(device), clip_skip=clip_skip)
        return z[index.to(device)]
    kinds: dict[tuple[ChunkFix, ...], int] = {}
    column = torch.tensor([kinds.setdefault(tuple(row), len(kinds)) for row in fixes])
    keyed = torch.cat([tokens, column[:, None]], dim=1)
    unique, index = torch.unique(keyed, dim=0, return_inverse=True)
    by_kind = {kind: row for row, kind in kinds.items()}
    placements = [
        [(fix.offset, embeddings.vectors(fix.name)) for fix in by_kind[int(kind)]]
        for kind in unique[:, -1]
    ]
    z = encode_tokens(
        text_encoder, unique[:, :-1].to(device), clip_skip=clip_skip, placements=placements
    )
    return z[index.to(device)]


def encode_tokens(
    text_encoder: CLIPTextModel,
    tokens: torch.Tensor,
    *,
    clip_skip: int,
    placements: Sequence[Placements] | None = None,
) -> torch.Tensor:
    """(N, 77, D) CLIP output; A1111 clip skip N ≥ 2 = hidden layer -N, then the final norm.

    A1111 "Clip skip 2" is diffusers' `clip_skip=1`: both take the penultimate layer.
    `placements`, one list per row: embedding vectors that replace the token embeddings from
    position offset + 1 on.
    """
    with placed_embeddings(text_encoder, placements):
        out = text_encoder(tokens, output_hidden_states=clip_skip > 1)
    if clip_skip <= 1:
        hidden: torch.Tensor = out.last_hidden_state
        return hidden
    # transformers 5 dropped the `text_model` wrapper; older versions still have it.
    inner = getattr(text_encoder, "text_model", text_encoder)
    normed: torch.Tensor = inner.final_layer_norm(out.hidden_states[-clip_skip])
    return normed


@contextmanager
def placed_embeddings(
    text_encoder: CLIPTextModel, placements: Sequence[Placements] | None
) -> Iterator[None]:
    """A1111's `EmbeddingsWithFixes` for one encoder call: a hook on the token embedding puts
    each row's vectors at offset + 1 (after BOS), before CLIP adds position embeddings.

    The vectors take the token embedding's dtype (A1111 under autocast keeps them fp32 and so
    promotes the sum; our encoder runs without autocast). Nothing is hooked without vectors.
    """
    if not placements or not any(placements):
        yield
        return
    inner = getattr(text_encoder, "text_model", text_encoder)
    module: torch.nn.Module = inner.embeddings.token_embedding

    def place(_module: torch.nn.Module, _args: Any, output: torch.Tensor) -> torch.Tensor:
        if output.shape[0] != len(placements):
            raise RuntimeError("embedding placements do not match the encoded batch")
        placed = output.clone()
        length = placed.shape[1]
        for row, rows_placements in enumerate(placements):
            for offset, vectors in rows_placements:
                start = offset + 1
                count = min(length - start, vectors.shape[0])
                placed[row, start : start + count] = vectors[:count].to(
                    device=placed.device, dtype=placed.dtype
                )
        return placed

    handle = module.register_forward_hook(place)
    try:
        yield
    finally:
        handle.remove()


def apply_emphasis(z: torch.Tensor, multipliers: torch.Tensor, emphasis: str) -> torch.Tensor:
    """A1111 `sd_emphasis`: weights multiply the encoder output (B, 77, D), token by token.

    "Original" then rescales the whole batch to its original mean; "No norm" does not;
    "Ignore" and "None" leave the output as it is.
    """
    if emphasis in ("Ignore", "None"):
        return z
    weighted = z * multipliers.reshape(multipliers.shape + (1,)).expand(z.shape)
    if emphasis == "Original":
        original_mean, new_mean = z.mean(), weighted.mean()
        # A mean of exactly 0 (a final norm without bias, as in the random test model) would
        # give NaN.
        if new_mean != 0:
            weighted = weighted * (original_mean / new_mean)
    return weighted.to(z.dtype)
