"""Add-on files in A1111's formats, written for a given pipeline (tests and bench/addons.py).

Each writer makes what A1111 users download: a hypernetwork `.pt` as A1111's
`Hypernetwork.save` writes it, a kohya LoRA `.safetensors`, a textual-inversion `.pt`, and an
LDM-layout VAE `.safetensors`. Weights are random (seeded) unless given.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import save_file

from tests.ldm_layout import vae_to_ldm


def write_hypernetwork(
    path: Path, dims: tuple[int, ...], *, seed: int = 0, scale: float = 0.05
) -> Path:
    """An A1111 hypernetwork: layer structure [1, 2, 1], no activation, for each of `dims`."""
    generator = torch.Generator().manual_seed(seed)

    def layer_stack(dim: int) -> dict[str, torch.Tensor]:
        shapes = {
            "linear.0.weight": (dim * 2, dim),
            "linear.0.bias": (dim * 2,),
            "linear.1.weight": (dim, dim * 2),
            "linear.1.bias": (dim,),
        }
        return {k: torch.randn(s, generator=generator) * scale for k, s in shapes.items()}

    data: dict[object, object] = {dim: [layer_stack(dim), layer_stack(dim)] for dim in dims}
    data |= {
        "step": 1000,
        "name": path.stem,
        "layer_structure": [1, 2, 1],
        "activation_func": "linear",
        "is_layer_norm": False,
        "weight_initialization": "Normal",
        "sd_checkpoint": None,
        "sd_checkpoint_name": None,
        "activate_output": False,
        "use_dropout": False,
        "dropout_structure": [0, 0, 0],
        "last_layer_dropout": False,
        "optional_info": None,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return path


def write_lora(
    path: Path,
    pipe: StableDiffusionPipeline,
    *,
    rank: int = 4,
    alpha: float = 2.0,
    seed: int = 0,
    scale: float = 0.2,
    metadata: dict[str, str] | None = None,
) -> Path:
    """A kohya LoRA for every attention projection of `pipe`'s UNet and text encoder (diffusers
    module names, kohya's `lora_unet_…`/`lora_te_text_model_…` keys)."""
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    targets = [("lora_unet_", name, m) for name, m in pipe.unet.named_modules()]
    targets += [
        ("lora_te_", name if name.startswith("text_model.") else f"text_model.{name}", m)
        for name, m in pipe.text_encoder.named_modules()
    ]
    for prefix, name, module in targets:
        if not isinstance(module, torch.nn.Linear):
            continue
        if not name.endswith(("to_q", "to_k", "to_v", "to_out.0", "q_proj", "v_proj")):
            continue
        key = prefix + name.replace(".", "_")
        out_features, in_features = module.weight.shape
        tensors[f"{key}.lora_down.weight"] = (
            torch.randn(rank, in_features, generator=generator) * scale
        )
        tensors[f"{key}.lora_up.weight"] = (
            torch.randn(out_features, rank, generator=generator) * scale
        )
        tensors[f"{key}.alpha"] = torch.tensor(alpha)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, path, metadata=metadata)
    return path


def write_embedding(path: Path, vectors: torch.Tensor, *, inner_name: str = "*") -> Path:
    """An A1111 textual-inversion `.pt` (`string_to_param`) with these (n, width) vectors."""
    data = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": torch.nn.Parameter(vectors.detach().clone().float())},
        "name": inner_name,
        "step": 3000,
        "sd_checkpoint": None,
        "sd_checkpoint_name": None,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return path


def word_vectors(pipe: StableDiffusionPipeline, words: str) -> torch.Tensor:
    """The token embeddings of `words` (no BOS/EOS): an embedding made of them draws exactly
    what the words draw."""
    ids = pipe.tokenizer(words, add_special_tokens=False).input_ids
    table = pipe.text_encoder.get_input_embeddings().weight
    return table[torch.tensor(ids)].detach().clone()


def write_vae(
    path: Path, pipe: StableDiffusionPipeline, *, shift: float = 0.0, seed: int = 0
) -> Path:
    """`pipe`'s own VAE in A1111's (LDM) layout as .safetensors; `shift` adds noise of that
    size to the decoder's weights, so the file draws other colours."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in vae_to_ldm(pipe.vae).items():
        value = value.detach().clone().float().contiguous()
        if shift and key.startswith("decoder.") and value.dim() > 1:
            value = value + torch.randn(value.shape, generator=generator) * shift
        state[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, path)
    return path
