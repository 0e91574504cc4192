"""Prompt conditioning: CLIP text embeddings with A1111's clip skip.

The prompt-language issue grows this into A1111's parser, 75-token chunks and emphasis.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import CLIPTextModel, CLIPTokenizer


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
