"""The offline demo model: a tiny SD-1.x-architecture pipeline built deterministically from config.

Same classes and key layout as real SD-1.x checkpoints (UNet2DConditionModel, AutoencoderKL,
CLIPTextModel, the real CLIP tokenizer), at widths small enough to draw on two CPU cores.
Random weights: it proves the plumbing, it does not draw anything recognisable.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from engine.tokenizer import MODEL_MAX_LENGTH, VOCAB_SIZE, build_tokenizer

log = logging.getLogger(__name__)

DEMO_NAME = "aidraw-demo"
# Per-model defaults written beside the model (`models/<name>.toml`): small native size.
DEMO_DEFAULTS = """\
# Defaults for the demo model (tiny, random weights); a request's own values win.
[defaults]
width = 128
height = 128
num_inference_steps = 28
"""

UNET_CONFIG: dict[str, Any] = {
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (32, 32, 64, 64),
    "down_block_types": (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    "up_block_types": (
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ),
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
VAE_CONFIG: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (32, 32, 64, 64),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 1,
    "norm_num_groups": 32,
}
TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "max_position_embeddings": MODEL_MAX_LENGTH,
    "hidden_act": "quick_gelu",
    "projection_dim": 32,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
}


def build_demo_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """The demo pipeline; the same seed gives bit-identical weights."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**VAE_CONFIG)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=build_tokenizer(),
        unet=unet,
        scheduler=PNDMScheduler(**SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_demo_model(models_dir: Path, *, name: str = DEMO_NAME, seed: int = 0) -> Path:
    """Build the demo model into `models_dir/name` (safetensors) with its defaults file."""
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / name
    pipe = build_demo_pipeline(seed)
    # Write to a temporary folder first so a half-written model never appears in the registry
    # (the registry skips dot-folders).
    tmp = Path(tempfile.mkdtemp(dir=models_dir, prefix=".building-"))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (models_dir / f"{name}.toml").write_text(DEMO_DEFAULTS, encoding="utf-8")
    log.info("built demo model %s", target)
    return target
