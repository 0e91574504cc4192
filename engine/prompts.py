"""Prompt conditioning: CLIP text embeddings with A1111's clip skip.

The prompt-language issue grows this into A1111's parser, 75-token chunks and emphasis.
Contract with the sampler loop: `encode_conditioning(...)` returns a `Conditioning`, and the
loop asks `conditioning.at(step)` for (cond, uncond) at every 0-based step, so prompt editing
(`[from:to:when]`) can change the conditioning mid-way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import CLIPTextModel, CLIPTokenizer


@dataclass(frozen=True)
class Conditioning:
    """Text conditioning of a batch: cond (B, T1, D) and uncond (B, T2, D) for each step.

    T1 and T2 are multiples of 77 and may differ (long prompts); the sampler runs cond and
    uncond in one UNet batch when they are equal, separately otherwise.
    """

    cond: torch.Tensor
    uncond: torch.Tensor

    def at(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond, uncond) for a 0-based sampling step."""
        return self.cond, self.uncond


def encode_conditioning(
    tokenizer: CLIPTokenizer,
    text_encoder: CLIPTextModel,
    prompts: Sequence[str],
    negative_prompts: Sequence[str],
    *,
    clip_skip: int,
    steps: int,
    device: torch.device,
) -> Conditioning:
    """Encode a batch's prompts and negative prompts for `steps` sampling steps."""
    cond = encode_texts(tokenizer, text_encoder, prompts, clip_skip=clip_skip, device=device)
    uncond = encode_texts(
        tokenizer, text_encoder, negative_prompts, clip_skip=clip_skip, device=device
    )
    return Conditioning(cond=cond, uncond=uncond)


def encode_texts(
    tokenizer: CLIPTokenizer,
    text_encoder: CLIPTextModel,
    texts: Sequence[str],
    *,
    clip_skip: int,
    device: torch.device,
) -> torch.Tensor:
    """(len(texts), 77, dim) embeddings; A1111 clip skip N = layer -N, then the final norm."""
    tokens = tokenizer(
        list(texts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)
    out = text_encoder(tokens, output_hidden_states=clip_skip > 1)
    if clip_skip <= 1:
        hidden: torch.Tensor = out.last_hidden_state
        return hidden
    # transformers 5 dropped the `text_model` wrapper; older versions still have it.
    inner = getattr(text_encoder, "text_model", text_encoder)
    normed: torch.Tensor = inner.final_layer_norm(out.hidden_states[-clip_skip])
    return normed
