"""SDXL conditioning as A1111 v1.9.4 builds it (`sd_models_xl.get_learned_conditioning`).

Two text encoders read the same 75-token chunks: CLIP ViT-L (`text_encoder`, padded with its
end token) and OpenCLIP ViT-bigG (`text_encoder_2`, padded with "!", id 0, after the end
token). Each chunk's cross-attention context is both encoders' penultimate hidden states,
without the final layer norm, concatenated CLIP-L then bigG, each with its own "Original"
emphasis (mean restore per encoder: A1111 wraps each embedder separately). The pooled vector
is bigG's final-normed output at the end token times its projection, from the first chunk,
without emphasis. The size conditioning is A1111's defaults: original size = target size =
(height, width) of the request, crop (0, 0). A negative prompt that is exactly "" is all zeros
(text and pooled), its size part kept (A1111's `force_zero_embeddings=['txt']`). A1111 1.9.4
ignores clip skip for SDXL. A textual-inversion embedding puts its `clip_l` vectors into
CLIP-L and its `clip_g` vectors into bigG (A1111's `textual_inversion_key` per embedder).

The pooled vector and the six size numbers ride in one extra row in front of each prompt's
context (`pack` / `unpack`), so that prompt editing, stacking, batching by length and the
sampler loops carry them unchanged; `unet_inputs` takes them off before the UNet call, which
embeds the sizes itself (diffusers' `add_time_ids`, the same sinusoidal embedding as sgm's
`ConcatTimestepEmbedderND`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from engine.prompting.chunks import COMMA_BACKTRACK, empty_chunk, prompt_chunks, special_ids
from engine.prompting.conditioning import (
    Conditioning,
    Names,
    Placements,
    apply_emphasis,
    placed_embeddings,
    schedule_conditioning,
)

if TYPE_CHECKING:
    from engine.models.embeddings import EmbeddingDB

SIZE_NUMBERS = 6  # original (h, w), crop (top, left), target (h, w)


@dataclass(frozen=True)
class SdxlEncoders:
    """The two tokenizers and text encoders of an SDXL pipeline."""

    tokenizer: CLIPTokenizer
    tokenizer_2: CLIPTokenizer
    text_encoder: CLIPTextModel
    text_encoder_2: CLIPTextModelWithProjection

    @classmethod
    def of(cls, pipe: Any) -> SdxlEncoders:
        """The encoders of a `StableDiffusionXLPipeline`."""
        return cls(pipe.tokenizer, pipe.tokenizer_2, pipe.text_encoder, pipe.text_encoder_2)

    @property
    def pooled_dim(self) -> int:
        return int(self.text_encoder_2.config.projection_dim)


def size_numbers(height: int, width: int) -> tuple[float, ...]:
    """A1111's size conditioning: original (h, w), crop (top, left) = (0, 0), target (h, w)."""
    return (float(height), float(width), 0.0, 0.0, float(height), float(width))


def pack(context: torch.Tensor, pooled: torch.Tensor, sizes: Sequence[float]) -> torch.Tensor:
    """(N, 1 + 77·k, D): a row holding [pooled, the six sizes, zeros] in front of the context."""
    n, _, width = context.shape
    row = context.new_zeros((n, 1, width))
    p = pooled.shape[-1]
    if p + SIZE_NUMBERS > width:
        raise ValueError(f"pooled width {p} + {SIZE_NUMBERS} sizes do not fit a {width} row")
    row[:, 0, :p] = pooled.to(row.dtype)
    row[:, 0, p : p + SIZE_NUMBERS] = torch.tensor(sizes, dtype=row.dtype, device=row.device)
    return torch.cat([row, context], dim=1)


def unet_inputs(packed: torch.Tensor, pooled_dim: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """The UNet's `encoder_hidden_states` and `added_cond_kwargs` from a packed context."""
    row, context = packed[:, 0], packed[:, 1:]
    added = {
        "text_embeds": row[:, :pooled_dim],
        "time_ids": row[:, pooled_dim : pooled_dim + SIZE_NUMBERS],
    }
    return context, added


def encode_sdxl_conditioning(
    encoders: SdxlEncoders,
    prompts: Sequence[str],
    negative_prompts: Sequence[str],
    *,
    size: tuple[int, int],
    steps: int,
    device: torch.device,
    hires_steps: int | None = None,
    emphasis: str | Sequence[str] = "Original",
    comma_backtrack: int = COMMA_BACKTRACK,
    embeddings: EmbeddingDB | None = None,
) -> Conditioning:
    """`encode_conditioning` for SDXL: a batch's prompts and negative prompts at `size`
    (height, width), scheduled over `steps` (prompt editing and alternation as on SD-1.x)."""
    sizes = size_numbers(*size)

    def encode(texts: Sequence[str], mode: str, zero: bool) -> tuple[torch.Tensor, Names]:
        return _encode(
            encoders,
            texts,
            sizes=sizes,
            device=device,
            emphasis=mode,
            comma_backtrack=comma_backtrack,
            zero=zero,
            embeddings=embeddings,
        )

    empty = encode_sdxl_prompts(encoders, [""], sizes=sizes, device=device)[0, 1:]
    return schedule_conditioning(
        prompts, negative_prompts, emphasis, steps, hires_steps, encode=encode, empty=empty
    )


def encode_sdxl_prompts(
    encoders: SdxlEncoders,
    texts: Sequence[str],
    *,
    sizes: Sequence[float],
    device: torch.device,
    emphasis: str = "Original",
    comma_backtrack: int = COMMA_BACKTRACK,
    zero: bool = False,
    embeddings: EmbeddingDB | None = None,
) -> torch.Tensor:
    """(len(texts), 1 + 77·k, D_L + D_G) packed: one batch through both encoders, chunk by
    chunk (shorter texts get padding chunks); `zero`: A1111's zeroed empty negative prompt."""
    z, _ = _encode(
        encoders,
        texts,
        sizes=sizes,
        device=device,
        emphasis=emphasis,
        comma_backtrack=comma_backtrack,
        zero=zero,
        embeddings=embeddings,
    )
    return z


def _encode(
    encoders: SdxlEncoders,
    texts: Sequence[str],
    *,
    sizes: Sequence[float],
    device: torch.device,
    emphasis: str,
    comma_backtrack: int,
    zero: bool,
    embeddings: EmbeddingDB | None,
) -> tuple[torch.Tensor, tuple[str, ...]]:
    """`encode_sdxl_prompts`, and the embeddings used (A1111's `used_embeddings` order)."""
    per_text = [
        prompt_chunks(
            encoders.tokenizer,
            t,
            emphasis=emphasis,
            comma_backtrack=comma_backtrack,
            embeddings=embeddings,
        )
        for t in texts
    ]
    padding = empty_chunk(encoders.tokenizer)
    end, pad_g = special_ids(encoders.tokenizer).end, special_ids(encoders.tokenizer_2).pad
    zs: list[torch.Tensor] = []
    pooled: torch.Tensor | None = None
    used: dict[str, None] = {}
    split = int(encoders.text_encoder.config.hidden_size)
    for i in range(max(len(chunks) for chunks in per_text)):
        batch = [chunks[i] if i < len(chunks) else padding for chunks in per_text]
        tokens = torch.tensor([c.tokens for c in batch], dtype=torch.long)
        tokens_g = tokens.clone()
        for row, chunk in enumerate(batch):  # bigG: "!" after the first end token
            tokens_g[row, chunk.tokens.index(end) + 1 :] = pad_g
        multipliers = torch.tensor([c.multipliers for c in batch], dtype=torch.float32).to(device)
        placements_l: list[Placements] = []
        placements_g: list[Placements] = []
        for chunk in batch:
            vectors = [
                (fix.offset, embeddings.vectors(fix.name))
                for fix in chunk.fixes
                if embeddings is not None
            ]
            used.update((fix.name, None) for fix in chunk.fixes)
            placements_l.append([(offset, v[:, :split]) for offset, v in vectors])
            placements_g.append([(offset, v[:, split:]) for offset, v in vectors])
        with placed_embeddings(encoders.text_encoder, placements_l):
            out_l = encoders.text_encoder(tokens.to(device), output_hidden_states=True)
        with placed_embeddings(encoders.text_encoder_2, placements_g):
            out_g = encoders.text_encoder_2(tokens_g.to(device), output_hidden_states=True)
        z_l = apply_emphasis(out_l.hidden_states[-2], multipliers, emphasis)
        z_g = apply_emphasis(out_g.hidden_states[-2], multipliers, emphasis)
        if pooled is None:
            pooled = out_g.text_embeds
        zs.append(torch.cat([z_l, z_g.to(z_l.dtype)], dim=-1))
    assert pooled is not None
    context = torch.hstack(zs)
    if zero:
        context, pooled = torch.zeros_like(context), torch.zeros_like(pooled)
    return pack(context, pooled, sizes), tuple(used)
