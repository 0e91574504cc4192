"""A tiny SDXL-architecture pipeline built from config (random weights, fixed seed), and its
A1111-layout single file, for tests of the real SDXL code paths without any weights.

Same classes and key layout as SDXL base (UNet2DConditionModel with `text_time` additions,
CLIPTextModel + CLIPTextModelWithProjection, AutoencoderKL) at small widths; the tokenizers
are built from the CLIP vocabulary open-clip-torch ships (bigG's pads with "!").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from engine.demo.model import VAE_CONFIG
from engine.prompting.tokenizer import MODEL_MAX_LENGTH, OPEN_CLIP_PAD, VOCAB_SIZE, build_tokenizer
from tests.ldm_layout import UNET_PREFIX, VAE_PREFIX, text_encoder_to_ldm, unet_to_ldm, vae_to_ldm

TIME_DIM = 8  # addition_time_embed_dim
POOLED = 48  # bigG's projection width
UNET: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (32, 64),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": (2, 4),
    "transformer_layers_per_block": (1, 2),
    "cross_attention_dim": 80,  # CLIP-L 32 + bigG 48
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": TIME_DIM,
    "projection_class_embeddings_input_dim": POOLED + 6 * TIME_DIM,
    "norm_num_groups": 32,
}
# Published SDXL text encoder configs keep CLIP's legacy ids (eos 2: pooled at the argmax id).
TEXT_L: dict[str, Any] = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "max_position_embeddings": MODEL_MAX_LENGTH,
    "hidden_act": "quick_gelu",
    "projection_dim": 32,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}
# Wider than CLIP-L, as bigG is: diffusers tells the two apart by their width.
TEXT_G: dict[str, Any] = {
    **TEXT_L,
    "hidden_size": POOLED,
    "intermediate_size": 96,
    "projection_dim": POOLED,
    "hidden_act": "gelu",
    "num_hidden_layers": 4,
}
SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "timestep_spacing": "leading",
}
CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
BIG_G_PREFIX = "conditioner.embedders.1.model."


def build_tiny_sdxl(seed: int = 0) -> StableDiffusionXLPipeline:
    """Random weights from config; the same seed gives bit-identical weights."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**UNET)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**VAE_CONFIG, scaling_factor=0.13025)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_L))
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**TEXT_G))
    for module in (unet, vae, text_encoder, text_encoder_2):
        module.eval()
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=build_tokenizer(),
        tokenizer_2=build_tokenizer(OPEN_CLIP_PAD),
        unet=unet,
        scheduler=EulerDiscreteScheduler(**SCHEDULER),
    )


def big_g_to_open_clip(text_encoder_2: CLIPTextModelWithProjection) -> dict[str, torch.Tensor]:
    """CLIPTextModelWithProjection weights under OpenCLIP's names (the inverse of diffusers'
    `convert_open_clip_checkpoint`): q, k and v joined into `in_proj`, the projection as the
    matrix OpenCLIP multiplies by (x @ P: the linear layer's weight transposed)."""
    state = {k.removeprefix("text_model."): v for k, v in text_encoder_2.state_dict().items()}
    out: dict[str, torch.Tensor] = {
        "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
        "positional_embedding": state.pop("embeddings.position_embedding.weight"),
        "ln_final.weight": state.pop("final_layer_norm.weight"),
        "ln_final.bias": state.pop("final_layer_norm.bias"),
        "text_projection": state.pop("text_projection.weight").T,
    }
    renames = {
        "self_attn.out_proj.": "attn.out_proj.",
        "layer_norm1.": "ln_1.",
        "layer_norm2.": "ln_2.",
        "mlp.fc1.": "mlp.c_fc.",
        "mlp.fc2.": "mlp.c_proj.",
    }
    for i in range(text_encoder_2.config.num_hidden_layers):
        layer = f"encoder.layers.{i}."
        block = f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            parts = [state.pop(f"{layer}self_attn.{p}_proj.{kind}") for p in "qkv"]
            out[f"{block}attn.in_proj_{kind}"] = torch.cat(parts)
        for key in [k for k in state if k.startswith(layer)]:
            rest = key[len(layer) :]
            for old, new in renames.items():
                if rest.startswith(old):
                    rest = new + rest[len(old) :]
            out[block + rest] = state.pop(key)
    left = [k for k in state if k != "embeddings.position_ids"]
    if left:
        raise ValueError(f"bigG weights without an OpenCLIP name: {left[:5]}")
    return out


def to_sdxl_ldm_state_dict(pipe: StableDiffusionXLPipeline) -> dict[str, torch.Tensor]:
    """The pipeline in A1111's SDXL single-file layout (sgm `DiffusionEngine` names)."""
    state: dict[str, torch.Tensor] = {}
    state.update({UNET_PREFIX + k: v for k, v in unet_to_ldm(pipe.unet).items()})
    state.update({VAE_PREFIX + k: v for k, v in vae_to_ldm(pipe.vae).items()})
    state.update({CLIP_L_PREFIX + k: v for k, v in text_encoder_to_ldm(pipe.text_encoder).items()})
    big_g = big_g_to_open_clip(pipe.text_encoder_2)
    state.update({BIG_G_PREFIX + k: v for k, v in big_g.items()})
    return state


def write_sdxl_checkpoint(
    pipe: StableDiffusionXLPipeline, path: Path, *, v_pred: bool = False, ztsnr: bool = False
) -> Path:
    """Save as an A1111-layout SDXL `.safetensors`; `v_pred` / `ztsnr` add the empty marker
    tensors NoobAI-XL's v-prediction release carries."""
    state = {
        k: v.detach().to("cpu").contiguous().clone()
        for k, v in to_sdxl_ldm_state_dict(pipe).items()
    }
    if v_pred:
        state["v_pred"] = torch.tensor([])
    if ztsnr:
        state["ztsnr"] = torch.tensor([])
    save_file(state, str(path))
    return path
