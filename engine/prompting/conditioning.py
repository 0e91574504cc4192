"""Prompt conditioning: 75-token chunks, CLIP encoding with A1111's clip skip and emphasis.

The prompt language itself (attention, NAI braces, prompt editing) is `engine.prompting.syntax`.
`encode_conditioning` tokenizes prompts into 75-token chunks (comma backtrack, BREAK), encodes
each chunk with A1111's clip skip and applies emphasis to the encoder output, the diffusers
"weighted prompts" way with A1111's numbers.

Contract with the sampler loop: `encode_conditioning(...)` returns a `Conditioning`, and the
loop asks `conditioning.at(step)` for (cond, uncond) at every 0-based step, so prompt editing
can change the conditioning mid-way. Second-order samplers call the denoiser twice a step;
A1111 builds their schedule for `2 * steps` and counts denoiser calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import CLIPTextModel, CLIPTokenizer

from engine.prompting.chunks import COMMA_BACKTRACK, empty_chunk, prompt_chunks, special_ids
from engine.prompting.syntax import (
    check_emphasis,
    prompt_schedule,
)

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
    emphasis: str | Sequence[str] = "Original",
    comma_backtrack: int = COMMA_BACKTRACK,
) -> Conditioning:
    """Encode a batch's prompts and negative prompts (A1111 syntax) for `steps` sampling steps.

    Each distinct prompt is encoded once, all its prompt-editing variants together (A1111
    restores the emphasis mean over them jointly); `emphasis` is one mode or one per image.
    """
    emphases = [emphasis] * len(prompts) if isinstance(emphasis, str) else list(emphasis)
    if not len(prompts) == len(negative_prompts) == len(emphases):
        raise ValueError("prompts, negative_prompts and emphasis differ in length")
    for mode in set(emphases):
        check_emphasis(mode)
    cache: dict[tuple[str, str], tuple[ScheduledCond, ...]] = {}

    def schedule(text: str, mode: str) -> tuple[ScheduledCond, ...]:
        key = (text, mode)
        if key not in cache:
            entries = prompt_schedule(text, steps)
            z = encode_prompts(
                tokenizer,
                text_encoder,
                [variant for _, variant in entries],
                clip_skip=clip_skip,
                device=device,
                emphasis=mode,
                comma_backtrack=comma_backtrack,
            )
            cache[key] = tuple(ScheduledCond(end, z[i]) for i, (end, _) in enumerate(entries))
        return cache[key]

    conds = tuple(schedule(p, mode) for p, mode in zip(prompts, emphases, strict=True))
    unconds = tuple(schedule(p, mode) for p, mode in zip(negative_prompts, emphases, strict=True))
    empty = encode_prompts(tokenizer, text_encoder, [""], clip_skip=clip_skip, device=device)[0]
    return Conditioning(conds=conds, unconds=unconds, empty=empty)


def encode_prompts(
    tokenizer: CLIPTokenizer,
    text_encoder: CLIPTextModel,
    texts: Sequence[str],
    *,
    clip_skip: int,
    device: torch.device,
    emphasis: str = "Original",
    comma_backtrack: int = COMMA_BACKTRACK,
) -> torch.Tensor:
    """(len(texts), 77·k, D): A1111's `FrozenCLIPEmbedderWithCustomWords.forward` on one batch.

    Texts with fewer chunks get padding chunks; each chunk index is encoded as one batch, and
    emphasis (with its mean restore) applies to that whole batch.
    """
    per_text = [
        prompt_chunks(tokenizer, t, emphasis=emphasis, comma_backtrack=comma_backtrack)
        for t in texts
    ]
    padding = empty_chunk(tokenizer)
    ids = special_ids(tokenizer)
    zs = []
    for i in range(max(len(chunks) for chunks in per_text)):
        batch = [chunks[i] if i < len(chunks) else padding for chunks in per_text]
        tokens = torch.tensor([c.tokens for c in batch], dtype=torch.long)
        if ids.pad != ids.end:  # SD2 tokenizers: pad after the first EOS (A1111 process_tokens)
            for row, chunk in enumerate(batch):
                tokens[row, chunk.tokens.index(ids.end) + 1 :] = ids.pad
        multipliers = torch.tensor([c.multipliers for c in batch], dtype=torch.float32)
        z = _encode_unique(text_encoder, tokens, clip_skip=clip_skip, device=device)
        zs.append(apply_emphasis(z, multipliers.to(device), emphasis))
    return torch.hstack(zs)


def _encode_unique(
    text_encoder: CLIPTextModel, tokens: torch.Tensor, *, clip_skip: int, device: torch.device
) -> torch.Tensor:
    """Encode each distinct row once (prompt-editing variants share most chunks)."""
    unique, index = torch.unique(tokens, dim=0, return_inverse=True)
    z = encode_tokens(text_encoder, unique.to(device), clip_skip=clip_skip)
    return z[index.to(device)]


def encode_tokens(
    text_encoder: CLIPTextModel, tokens: torch.Tensor, *, clip_skip: int
) -> torch.Tensor:
    """(N, 77, D) CLIP output; A1111 clip skip N ≥ 2 = hidden layer -N, then the final norm.

    A1111 "Clip skip 2" is diffusers' `clip_skip=1`: both take the penultimate layer.
    """
    out = text_encoder(tokens, output_hidden_states=clip_skip > 1)
    if clip_skip <= 1:
        hidden: torch.Tensor = out.last_hidden_state
        return hidden
    # transformers 5 dropped the `text_model` wrapper; older versions still have it.
    inner = getattr(text_encoder, "text_model", text_encoder)
    normed: torch.Tensor = inner.final_layer_norm(out.hidden_states[-clip_skip])
    return normed


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
