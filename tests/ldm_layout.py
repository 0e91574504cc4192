"""Write a diffusers SD-1.x pipeline as an A1111/CompVis LDM single-file checkpoint (for tests).

The inverse of diffusers' single-file conversion (`convert_ldm_unet_checkpoint`,
`convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint` in
diffusers/loaders/single_file_utils.py), written from the block structure so that it covers
the tiny demo model and the real SD-1.5 layout alike.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextModel

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."

# diffusers ResnetBlock2D → LDM ResBlock (the UNet's).
_UNET_RESNET = {
    "norm1.": "in_layers.0.",
    "conv1.": "in_layers.2.",
    "time_emb_proj.": "emb_layers.1.",
    "norm2.": "out_layers.0.",
    "conv2.": "out_layers.3.",
    "conv_shortcut.": "skip_connection.",
}
# diffusers ResnetBlock2D → LDM ResnetBlock (the VAE's): only the shortcut is renamed.
_VAE_RESNET = {"conv_shortcut.": "nin_shortcut."}
# diffusers Attention → LDM AttnBlock, whose q/k/v/proj_out are 1x1 convolutions.
_VAE_ATTENTION = {
    "group_norm.": "norm.",
    "to_q.": "q.",
    "to_k.": "k.",
    "to_v.": "v.",
    "to_out.0.": "proj_out.",
}
_TOP_LEVEL = {
    "unet": {
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "conv_in.": "input_blocks.0.0.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
    },
    "vae": {
        "encoder.conv_norm_out.": "encoder.norm_out.",
        "decoder.conv_norm_out.": "decoder.norm_out.",
    },
}


def _rename(key: str, table: dict[str, str]) -> str:
    """Replace the leading part of `key` by the first prefix of `table` it starts with."""
    for old, new in table.items():
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def _group(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under `prefix` with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def unet_to_ldm(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """UNet2DConditionModel weights under LDM `openaimodel.UNetModel` names (no prefix)."""
    state = unet.state_dict()
    out: dict[str, torch.Tensor] = {}
    done: set[str] = set()

    def put(diffusers_prefix: str, ldm_prefix: str, table: dict[str, str] | None = None) -> None:
        part = _group(state, diffusers_prefix)
        if not part:
            raise ValueError(f"no weights under {diffusers_prefix!r}")
        for rest, tensor in part.items():
            out[ldm_prefix + (_rename(rest, table) if table else rest)] = tensor
            done.add(diffusers_prefix + rest)

    for old, new in _TOP_LEVEL["unet"].items():
        put(old, new)
    if unet.config.addition_embed_type == "text_time":  # SDXL: sgm's `label_emb`
        put("add_embedding.linear_1.", "label_emb.0.0.")
        put("add_embedding.linear_2.", "label_emb.0.2.")

    # LDM numbers the encoder's layers flat: input_blocks.0 is conv_in, then per diffusers
    # down block one entry per resnet (with its attention as sub-module 1) and one for the
    # downsampler, if any.
    index = 1
    for b, block in enumerate(unet.down_blocks):
        for j in range(len(block.resnets)):
            put(f"down_blocks.{b}.resnets.{j}.", f"input_blocks.{index}.0.", _UNET_RESNET)
            if getattr(block, "attentions", None) is not None:
                put(f"down_blocks.{b}.attentions.{j}.", f"input_blocks.{index}.1.")
            index += 1
        if block.downsamplers is not None:
            put(f"down_blocks.{b}.downsamplers.0.conv.", f"input_blocks.{index}.0.op.")
            index += 1

    # middle_block: resnet, attention, resnet.
    put("mid_block.resnets.0.", "middle_block.0.", _UNET_RESNET)
    put("mid_block.attentions.0.", "middle_block.1.")
    put("mid_block.resnets.1.", "middle_block.2.", _UNET_RESNET)

    # output_blocks: one entry per diffusers up-block resnet; the upsampler joins the block's
    # last entry, after the attention if the block has one.
    index = 0
    for b, block in enumerate(unet.up_blocks):
        has_attention = getattr(block, "attentions", None) is not None
        for j in range(len(block.resnets)):
            put(f"up_blocks.{b}.resnets.{j}.", f"output_blocks.{index}.0.", _UNET_RESNET)
            if has_attention:
                put(f"up_blocks.{b}.attentions.{j}.", f"output_blocks.{index}.1.")
            index += 1
        if block.upsamplers is not None:
            slot = 2 if has_attention else 1
            put(f"up_blocks.{b}.upsamplers.0.conv.", f"output_blocks.{index - 1}.{slot}.conv.")

    left = sorted(set(state) - done)
    if left:
        raise ValueError(f"UNet weights without an LDM name: {left[:5]}")
    return out


def vae_to_ldm(vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    """AutoencoderKL weights under LDM `AutoencoderKL` names (no prefix)."""
    state = vae.state_dict()
    out: dict[str, torch.Tensor] = {}
    done: set[str] = set()

    def put(diffusers_prefix: str, ldm_prefix: str, table: dict[str, str] | None = None) -> None:
        part = _group(state, diffusers_prefix)
        if not part:
            raise ValueError(f"no weights under {diffusers_prefix!r}")
        for rest, tensor in part.items():
            if table is _VAE_ATTENTION and tensor.ndim == 2:
                tensor = tensor[:, :, None, None]  # linear [C, C] → 1x1 conv [C, C, 1, 1]
            out[ldm_prefix + (_rename(rest, table) if table else rest)] = tensor
            done.add(diffusers_prefix + rest)

    for key in ("quant_conv.", "post_quant_conv.", "encoder.conv_in.", "encoder.conv_out."):
        put(key, key)
    for key in ("decoder.conv_in.", "decoder.conv_out."):
        put(key, key)
    for old, new in _TOP_LEVEL["vae"].items():
        put(old, new)

    for part in ("encoder", "decoder"):
        put(f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1.", _VAE_RESNET)
        if vae.config.mid_block_add_attention:  # the demo VAE has none
            put(f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.", _VAE_ATTENTION)
        put(f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2.", _VAE_RESNET)

    for i, block in enumerate(vae.encoder.down_blocks):
        for j in range(len(block.resnets)):
            put(
                f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.", _VAE_RESNET
            )
        if block.downsamplers is not None:
            put(
                f"encoder.down_blocks.{i}.downsamplers.0.conv.",
                f"encoder.down.{i}.downsample.conv.",
            )

    # The LDM decoder counts its levels from the lowest resolution up, diffusers the other way.
    levels = len(vae.decoder.up_blocks)
    for i, block in enumerate(vae.decoder.up_blocks):
        level = levels - 1 - i
        for j in range(len(block.resnets)):
            put(
                f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{level}.block.{j}.", _VAE_RESNET
            )
        if block.upsamplers is not None:
            put(f"decoder.up_blocks.{i}.upsamplers.0.conv.", f"decoder.up.{level}.upsample.conv.")

    left = sorted(set(state) - done)
    if left:
        raise ValueError(f"VAE weights without an LDM name: {left[:5]}")
    return out


def text_encoder_to_ldm(text_encoder: CLIPTextModel) -> dict[str, torch.Tensor]:
    """CLIPTextModel weights under `text_model.` names (no prefix), as transformers 4 wrote them."""
    # transformers 5 dropped the `text_model.` level from CLIPTextModel; LDM files keep it.
    return {
        "text_model." + key.removeprefix("text_model."): tensor
        for key, tensor in text_encoder.state_dict().items()
    }


def to_ldm_state_dict(pipe: StableDiffusionPipeline) -> dict[str, torch.Tensor]:
    """The pipeline's UNet, VAE and text encoder in the A1111/CompVis single-file layout."""
    state: dict[str, torch.Tensor] = {}
    state.update({UNET_PREFIX + k: v for k, v in unet_to_ldm(pipe.unet).items()})
    state.update({VAE_PREFIX + k: v for k, v in vae_to_ldm(pipe.vae).items()})
    clip = text_encoder_to_ldm(pipe.text_encoder)
    state.update({CLIP_PREFIX + k.removeprefix("text_model."): v for k, v in clip.items()})
    return state


def write_a1111_checkpoint(pipe: StableDiffusionPipeline, path: Path) -> Path:
    """Save the pipeline as an A1111-layout `.safetensors` file; returns `path`."""
    # Own, contiguous copies: safetensors refuses tensors that are views into shared storage.
    state = {
        k: v.detach().to("cpu").contiguous().clone() for k, v in to_ldm_state_dict(pipe).items()
    }
    save_file(state, str(path))
    return path
