"""The offline demo model: a small SD-1.x-architecture pipeline that draws on two CPU cores.

Same classes and key layout as real SD-1.x checkpoints (UNet2DConditionModel, AutoencoderKL,
CLIPTextModel, the real CLIP tokenizer), at small widths.

- `build_demo_pipeline()`: the trained model, from the fp16 weights shipped in
  `engine/demo/weights/` (made by `make train-demo`, see docs/demo-model.md). It draws cartoon
  portraits from Danbooru-style tags at 128x128.
- `build_random_pipeline(seed)`: random weights made from config, for tests of the plumbing
  that must not depend on the shipped weights.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel

from engine.demo.data import draw, random_character
from engine.preview import PreviewMap, fit_preview
from engine.prompting.tokenizer import MODEL_MAX_LENGTH, VOCAB_SIZE, build_tokenizer

log = logging.getLogger(__name__)

DEMO_NAME = "aidraw-demo"
# Per-model defaults written beside the model (`models/<name>.toml`): small native size.
DEMO_DEFAULTS = """\
# Defaults for the demo model (trained at 128x128, clip skip 2); a request's own values win.
[defaults]
width = 128
height = 128
num_inference_steps = 28
clip_skip = 2
"""
RANDOM_DEFAULTS = """\
# Defaults for the random-weight test model; a request's own values win.
[defaults]
width = 128
height = 128
num_inference_steps = 28
"""
WEIGHTS_DIR = Path(__file__).parent / "weights"
STAMP_FILE = "aidraw-demo-weights.txt"  # in a built folder: which weights it was built from
# transformers 5 names it without the old `text_model.` prefix.
_EMBEDDING_KEY = "embeddings.token_embedding.weight"

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


# The trained model: attention at the 8x8 and 4x4 latent levels, a 64-wide text encoder.
TRAINED_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (32, 64, 96),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "cross_attention_dim": 64,
    "attention_head_dim": 8,
    "norm_num_groups": 8,
}
TRAINED_VAE_CONFIG: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (16, 32, 64, 64),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 1,
    # Few groups: with one channel per group, GroupNorm would wipe out a flat colour's value.
    "norm_num_groups": 4,
    "mid_block_add_attention": False,  # trained on crops: no attention, no size dependence
}
TRAINED_TEXT_CONFIG: dict[str, Any] = {
    **TEXT_CONFIG,
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "projection_dim": 64,
}
TRAINED_SCHEDULER = SCHEDULER_CONFIG


def build_demo_pipeline() -> StableDiffusionPipeline:
    """The trained demo pipeline from the weights in `engine/demo/weights/` (fp32 on the CPU)."""
    return _pipeline(*load_weights(WEIGHTS_DIR))


def load_weights(
    folder: Path,
) -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel]:
    """The UNet, VAE and text encoder written by `save_weights` to `folder`, in fp32."""
    unet = UNet2DConditionModel(**TRAINED_UNET_CONFIG)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TRAINED_TEXT_CONFIG))
    vae_file = folder / "vae.safetensors"
    vae = AutoencoderKL(**TRAINED_VAE_CONFIG, scaling_factor=_scaling_factor(vae_file))
    for module, name in ((unet, "unet"), (vae, "vae"), (text_encoder, "text_encoder")):
        state = {k: v.float() for k, v in load_file(folder / f"{name}.safetensors").items()}
        if name == "text_encoder":
            ids, rows = state.pop("token_ids").long(), state.pop("token_rows")
            table = torch.zeros(int(TRAINED_TEXT_CONFIG["vocab_size"]), rows.shape[1])
            table[ids] = rows
            state[_EMBEDDING_KEY] = table
        module.load_state_dict(state, strict=True)
        module.eval()
    return unet, vae, text_encoder


def save_weights(
    folder: Path, *, unet: UNet2DConditionModel, vae: AutoencoderKL, text_encoder: CLIPTextModel
) -> None:
    """Write the trained weights in fp16 (what `build_demo_pipeline` reads).

    The text encoder's embedding table keeps only the rows of words seen in training (the rest
    are zero), which keeps the shipped files a few MB.
    """
    folder.mkdir(parents=True, exist_ok=True)

    def half(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.detach().to(torch.float16).contiguous() for k, v in state.items()}

    save_file(half(unet.state_dict()), folder / "unet.safetensors")
    scaling = {"scaling_factor": repr(float(vae.config.scaling_factor))}
    save_file(half(vae.state_dict()), folder / "vae.safetensors", metadata=scaling)
    state = dict(text_encoder.state_dict())
    table = state.pop(_EMBEDDING_KEY)
    ids = torch.nonzero(table.abs().sum(dim=1)).flatten()
    state = half(state)
    state["token_ids"] = ids.to(torch.int32)
    state["token_rows"] = table[ids].detach().to(torch.float16)
    save_file(state, folder / "text_encoder.safetensors")


def _scaling_factor(vae_file: Path) -> float:
    with safe_open(str(vae_file), framework="pt") as f:
        metadata = f.metadata() or {}
    return float(metadata["scaling_factor"])


def build_random_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """A random-weight pipeline for plumbing tests; the same seed gives bit-identical weights."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**VAE_CONFIG)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    return _pipeline(unet, vae, text_encoder)


def _pipeline(
    unet: UNet2DConditionModel, vae: AutoencoderKL, text_encoder: CLIPTextModel
) -> StableDiffusionPipeline:
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


def save_demo_model(
    models_dir: Path, *, name: str = DEMO_NAME, random_seed: int | None = None
) -> Path:
    """Write the demo model to `models_dir/name` (a diffusers folder) with its defaults file.

    `random_seed` writes the random-weight model made from that seed instead of the trained one.
    """
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / name
    if random_seed is None:
        pipe, stamp = build_demo_pipeline(), weights_digest()
        defaults = DEMO_DEFAULTS + preview_table(fit_demo_preview(pipe.vae))
    else:
        pipe, defaults = build_random_pipeline(random_seed), RANDOM_DEFAULTS
        stamp = f"random {random_seed}"
    # Write to a temporary folder first so a half-written model never appears in the registry
    # (the registry skips dot-folders).
    tmp = Path(tempfile.mkdtemp(dir=models_dir, prefix=".building-"))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / STAMP_FILE).write_text(stamp + "\n", encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (models_dir / f"{name}.toml").write_text(defaults, encoding="utf-8")
    log.info("built demo model %s", target)
    return target


def weights_digest() -> str:
    """sha256 of the shipped weight files: what a built demo folder was made from."""
    digest = hashlib.sha256()
    for name in ("unet", "vae", "text_encoder"):
        digest.update((WEIGHTS_DIR / f"{name}.safetensors").read_bytes())
    return digest.hexdigest()


def is_outdated(folder: Path) -> bool:
    """True for a demo folder built from other weights (an older release, or random ones)."""
    stamp = folder / STAMP_FILE
    if not stamp.is_file():
        return True
    return stamp.read_text(encoding="utf-8").strip() != weights_digest()


def picture_tensor(pictures: Sequence[Image.Image]) -> torch.Tensor:
    """RGB pictures as one uint8 tensor (N, 3, H, W)."""
    return torch.from_numpy(np.stack([np.asarray(p) for p in pictures])).permute(0, 3, 1, 2)


def vae_input(pictures: torch.Tensor) -> torch.Tensor:
    """uint8 pictures (N, 3, H, W) as the VAE takes them: floats in [-1, 1]."""
    return pictures.float() / 127.5 - 1.0


def fit_demo_preview(vae: AutoencoderKL, pictures: int = 48) -> PreviewMap:
    """The demo VAE's own latent → RGB preview map, fitted on training pictures (seed 0)."""
    rng = np.random.default_rng(0)
    images = vae_input(picture_tensor([draw(random_character(rng)).image for _ in range(pictures)]))
    with torch.no_grad():
        latents = vae.encode(images).latent_dist.mean * vae.config.scaling_factor
    return fit_preview(latents, images)


def preview_table(mapping: PreviewMap) -> str:
    """`mapping` as a models/<name>.toml `[preview]` table."""
    rows = ", ".join(f"[{r:.4f}, {g:.4f}, {b:.4f}]" for r, g, b in mapping.latent_rgb)
    r, g, b = mapping.bias
    return (
        "\n# Progress previews: this model's own latents → RGB map (fitted on its VAE)\n"
        f"[preview]\nlatent_rgb = [{rows}]\nbias = [{r:.4f}, {g:.4f}, {b:.4f}]\n"
    )
