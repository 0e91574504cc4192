"""LoRA (kohya / LoCon) merged into a pipeline's weights the way A1111 v1.9.4's Lora extension does.

A1111 (extensions-builtin/Lora) names every layer of the LDM model by its CompVis path with `_`
for `.`, turns kohya's diffusers-style keys into those names, and on each forward merges
`up @ down * alpha/rank * multiplier` into the layer's weight after restoring it from a backup.
Our UNet and text encoder are diffusers modules, so we name them by their CompVis path as well
(the same layout the single-file loader reads) and reuse A1111's key conversion unchanged: the
same keys match, the same ones are skipped, and the arithmetic is the same ops in the same dtype
(A1111's `devices.dtype`: fp16 for a half model, else fp32), one LoRA after another.
"""

from __future__ import annotations

import logging
import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open

from engine.errors import BadAddonFile
from engine.weights import read_weights

log = logging.getLogger(__name__)

KIND = "LoRA"

# --- A1111's names for our modules ---------------------------------------------------------

# diffusers ResnetBlock2D → LDM ResBlock (also A1111's `suffix_conversion["resnets"]`).
_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1"}
_RESNET |= {"norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_Prefixes = list[tuple[str, str, dict[str, str]]]


def _unet_prefixes(unet: torch.nn.Module) -> _Prefixes:
    """(diffusers prefix, LDM prefix, renames below it) for every block of the UNet."""
    out: _Prefixes = [
        ("time_embedding.linear_1", "time_embed.0", {}),
        ("time_embedding.linear_2", "time_embed.2", {}),
        ("conv_in", "input_blocks.0.0", {}),
        ("conv_norm_out", "out.0", {}),
        ("conv_out", "out.2", {}),
        ("mid_block.resnets.0", "middle_block.0", _RESNET),
        ("mid_block.attentions.0", "middle_block.1", {}),
        ("mid_block.resnets.1", "middle_block.2", _RESNET),
        ("add_embedding.linear_1", "label_emb.0.0", {}),  # SDXL's size/pooled embedding
        ("add_embedding.linear_2", "label_emb.0.2", {}),
    ]
    index = 1  # input_blocks: one per resnet (attention as sub-module 1), one per downsampler
    for b, block in enumerate(unet.down_blocks):  # type: ignore[arg-type]
        for j in range(len(block.resnets)):
            out.append((f"down_blocks.{b}.resnets.{j}", f"input_blocks.{index}.0", _RESNET))
            out.append((f"down_blocks.{b}.attentions.{j}", f"input_blocks.{index}.1", {}))
            index += 1
        if getattr(block, "downsamplers", None) is not None:
            out.append(
                (f"down_blocks.{b}.downsamplers.0", f"input_blocks.{index}.0", {"conv": "op"})
            )
            index += 1
    index = 0  # output_blocks: one per resnet; the upsampler joins the block's last one
    for b, block in enumerate(unet.up_blocks):  # type: ignore[arg-type]
        slot = 2 if getattr(block, "attentions", None) is not None else 1
        for j in range(len(block.resnets)):
            out.append((f"up_blocks.{b}.resnets.{j}", f"output_blocks.{index}.0", _RESNET))
            out.append((f"up_blocks.{b}.attentions.{j}", f"output_blocks.{index}.1", {}))
            index += 1
        if getattr(block, "upsamplers", None) is not None:
            out.append((f"up_blocks.{b}.upsamplers.0", f"output_blocks.{index - 1}.{slot}", {}))
    return out


# SDXL's OpenCLIP bigG under A1111's names (`1_model_transformer_resblocks_N_…`): q, k and v
# live in one MultiheadAttention there, which A1111 patches through `attn_{q,k,v,out}_proj`.
_OPEN_CLIP = {
    "self_attn.q_proj": "attn.q_proj",
    "self_attn.k_proj": "attn.k_proj",
    "self_attn.v_proj": "attn.v_proj",
    "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
}
_BIG_G_ATTENTION = re.compile(r"1_model_transformer_resblocks_\d+_attn_(q|k|v|out)_proj$")
_ENCODER_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(.+)")


def network_layer_names(
    unet: torch.nn.Module,
    text_encoder: torch.nn.Module,
    text_encoder_2: torch.nn.Module | None = None,
) -> dict[str, tuple[torch.nn.Module, bool]]:
    """A1111's `network_layer_mapping`: layer name → (module, is in the text encoder).

    SDXL (a `text_encoder_2`): A1111 numbers the embedders, `0_transformer_text_model_…` for
    CLIP-L and `1_model_transformer_resblocks_…` for bigG."""
    names: dict[str, tuple[torch.nn.Module, bool]] = {}
    first = "0_" if text_encoder_2 is not None else ""
    for name, module in text_encoder.named_modules():
        # A1111 names the CLIPTextModel `transformer`; transformers 5 dropped its `text_model.`
        rest = name.removeprefix("text_model").removeprefix(".")
        path = "transformer.text_model" + ("." + rest if rest else "")
        names[first + path.replace(".", "_")] = (module, True)
    if text_encoder_2 is not None:
        for name, module in text_encoder_2.named_modules():
            m = _ENCODER_LAYER.match(name.removeprefix("text_model."))
            if m and m[2] in _OPEN_CLIP:
                path = f"1.model.transformer.resblocks.{m[1]}.{_OPEN_CLIP[m[2]]}"
                names[path.replace(".", "_")] = (module, True)
    prefixes = _unet_prefixes(unet)
    for name, module in unet.named_modules():
        for old, new, renames in prefixes:
            if name == old or name.startswith(old + "."):
                head, _, tail = name[len(old) + 1 :].partition(".")
                rest = ".".join(x for x in (renames.get(head, head), tail) if x)
                name = new + ("." + rest if rest else "")
                break
        names[("diffusion_model." + name).rstrip(".").replace(".", "_")] = (module, False)
    return names


_X_PROJ = re.compile(r"(.*)_([qkv]_proj)$")


def compvis_name(key: str) -> str:
    """A1111 `convert_diffusers_name_to_compvis` for SD 1.x and SDXL (kohya key → A1111 layer
    name)."""

    def match(pattern: str) -> list[str]:
        found = re.match(pattern, key)
        return list(found.groups()) if found else []

    def suffix(kind: str, rest: str) -> str:
        return _RESNET.get(rest, rest).replace(".", "_") if kind == "resnets" else rest

    if m := match(r"lora_unet_conv_in(.*)"):
        return f"diffusion_model_input_blocks_0_0{m[0]}"
    if m := match(r"lora_unet_conv_out(.*)"):
        return f"diffusion_model_out_2{m[0]}"
    if m := match(r"lora_unet_time_embedding_linear_(\d+)(.*)"):
        return f"diffusion_model_time_embed_{int(m[0]) * 2 - 2}{m[1]}"
    if m := match(r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)"):
        block, slot = 1 + int(m[0]) * 3 + int(m[2]), int(m[1] == "attentions")
        return f"diffusion_model_input_blocks_{block}_{slot}_{suffix(m[1], m[3])}"
    if m := match(r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)"):
        block = 1 if m[0] == "attentions" else int(m[1]) * 2
        return f"diffusion_model_middle_block_{block}_{suffix(m[0], m[2])}"
    if m := match(r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)"):
        block, slot = int(m[0]) * 3 + int(m[2]), int(m[1] == "attentions")
        return f"diffusion_model_output_blocks_{block}_{slot}_{suffix(m[1], m[3])}"
    if m := match(r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv"):
        return f"diffusion_model_input_blocks_{3 + int(m[0]) * 3}_0_op"
    if m := match(r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv"):  # A1111 assumes SD 1's up_blocks
        return f"diffusion_model_output_blocks_{2 + int(m[0]) * 3}_{2 if int(m[0]) > 0 else 1}_conv"
    if m := match(r"lora_te_text_model_encoder_layers_(\d+)_(.+)"):
        return f"transformer_text_model_encoder_layers_{m[0]}_{m[1]}"
    if m := match(r"lora_te2_text_model_encoder_layers_(\d+)_(.+)"):  # SDXL's bigG
        rest = m[1].replace("mlp_fc1", "mlp_c_fc").replace("mlp_fc2", "mlp_c_proj")
        if rest == m[1]:
            rest = rest.replace("self_attn", "attn")
        return f"1_model_transformer_resblocks_{m[0]}_{rest}"
    return key


def _find(
    base: str, names: dict[str, tuple[torch.nn.Module, bool]]
) -> tuple[str, tuple[torch.nn.Module, bool] | None]:
    """The layer a kohya key (without its `.lora_up.weight` part) names, as A1111 `load_network`."""
    key = compvis_name(base)
    found = names.get(key)
    if found is None and (m := _X_PROJ.match(key)):
        found = names.get(m[1])
    if found is None and "lora_unet" in base:  # keys already in CompVis naming
        key = base.replace("lora_unet", "diffusion_model")
        found = names.get(key)
    elif found is None and "lora_te1_text_model" in base:
        key = base.replace("lora_te1_text_model", "0_transformer_text_model")
        found = names.get(key)
        if found is None:
            key = base.replace("lora_te1_text_model", "transformer_text_model")
            found = names.get(key)
    elif found is None and "oft_unet" in base:
        key = base.replace("oft_unet", "diffusion_model")
        found = names.get(key)
    return key, found


# --- files ---------------------------------------------------------------------------------


@dataclass(eq=False)
class Lora:
    """A LoRA file read into memory (CPU tensors, as stored)."""

    name: str
    path: Path
    alias: str | None
    tensors: dict[str, torch.Tensor] = field(repr=False)

    @classmethod
    def load(cls, path: Path, name: str) -> Lora:
        """Read `path` (.safetensors, or a .pt/.ckpt of plain tensors); BadAddonFile if unusable."""
        suffix = path.suffix.lower()
        if suffix not in (".safetensors", ".pt", ".ckpt"):
            raise BadAddonFile(KIND, path.name, f"{suffix or 'no suffix'} is not a LoRA file")
        data = read_weights(path, KIND)
        if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
            data = data["state_dict"]  # a pickled LoRA's nested state dict
        if not isinstance(data, dict):
            raise BadAddonFile(KIND, path.name, "the file is damaged or not a LoRA")
        tensors = {
            k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, torch.Tensor)
        }
        return cls(name=name, path=path, alias=lora_alias(path), tensors=tensors)


def lora_alias(path: Path) -> str | None:
    """The safetensors metadata's `ss_output_name` (A1111's alias), reading the header only."""
    if path.suffix.lower() != ".safetensors":
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception:  # a damaged file has no alias; loading it says what is wrong
        return None
    alias = metadata.get("ss_output_name")
    return alias if isinstance(alias, str) and alias else None


# --- the merge -----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Layer:
    """One layer's LoRA weights, shaped as A1111's NetworkModuleLora holds them."""

    key: str
    module: torch.nn.Module
    te: bool
    up: torch.Tensor
    down: torch.Tensor
    mid: torch.Tensor | None
    scale: float
    bias: torch.Tensor | None
    dora_scale: torch.Tensor | None


def _compute_dtype(weight: torch.dtype) -> torch.dtype:
    # A1111 casts the LoRA to devices.dtype: fp16 for a half model, fp32 with --no-half.
    return torch.float16 if weight == torch.float16 else torch.float32


def _updown(layer: _Layer, weight: torch.Tensor, multiplier: float) -> torch.Tensor:
    """A1111 `NetworkModuleLora.calc_updown` + `finalize_updown` (+ the inpainting pad)."""
    dtype, device = _compute_dtype(weight.dtype), weight.device
    up, down = layer.up.to(device, dtype), layer.down.to(device, dtype)
    output_shape = [up.size(0), down.size(1)]
    up2, down2 = up.reshape(up.size(0), -1), down.reshape(down.size(0), -1)
    if layer.mid is not None:  # LoCon with a CP-decomposed kernel
        mid = layer.mid.to(device, dtype)
        updown = torch.einsum("n m k l, i n, m j -> i j k l", mid, up2, down2)
        output_shape += mid.shape[2:]
    else:
        if down.dim() == 4:
            output_shape += down.shape[2:]
        updown = (up2 @ down2).reshape(output_shape)
    if layer.bias is not None:
        updown = updown.reshape(layer.bias.shape)
        updown += layer.bias.to(device, dtype=updown.dtype)
        updown = updown.reshape(output_shape)
    if len(output_shape) == 4:
        updown = updown.reshape(output_shape)
    if weight.numel() == updown.numel():
        updown = updown.reshape(weight.shape)
    if layer.dora_scale is not None:  # v1.9.4 decomposes before scaling
        orig = weight.to(updown.dtype)
        scale = layer.dora_scale.to(device, dtype=updown.dtype)
        merged = updown + orig
        dims = [1] * (weight.dim() - 1)
        norm = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1, keepdim=True)
        norm = norm.reshape(merged.shape[1], *dims).transpose(0, 1)
        updown = merged * (scale / norm) - orig
    updown = updown * layer.scale * multiplier
    if weight.dim() == 4 and weight.shape[1] == 9:  # inpainting conv_in: pad 4 → 9 channels
        updown = F.pad(updown, (0, 0, 0, 0, 0, 5))
    return updown


def _target(module: torch.nn.Module) -> torch.Tensor:
    """The tensor that holds the layer's weight: the parameter, or accelerate's offloaded copy."""
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    if weight.device.type == "meta":  # enable_sequential_cpu_offload keeps it in the hook
        weights_map = getattr(getattr(module, "_hf_hook", None), "weights_map", None)
        if weights_map is not None:
            offloaded: torch.Tensor = weights_map["weight"]
            return offloaded
    return weight


def _make_layer(key: str, module: torch.nn.Module, te: bool, w: dict[str, torch.Tensor]) -> _Layer:
    """A1111 `NetworkModuleLora.__init__`/`create_module`: reshape up/down/mid for the layer."""
    if isinstance(module, torch.nn.Linear):
        if "lora_mid.weight" in w:
            raise ValueError("a Linear layer with lora_mid")
        up = w["lora_up.weight"].reshape(w["lora_up.weight"].shape[0], -1)
        down = w["lora_down.weight"].reshape(w["lora_down.weight"].shape[0], -1)
        mid = None
    elif isinstance(module, torch.nn.Conv2d):
        kernel = tuple(module.kernel_size)
        down = w["lora_down.weight"]
        if down.dim() not in (2, 4):
            raise ValueError(f"lora_down has {down.dim()} dimensions")
        if down.dim() == 2:
            down = down.reshape(down.shape[0], -1, 1, 1)
        if tuple(down.shape[2:]) != (1, 1):
            down = down.reshape(down.shape[0], down.shape[1], *kernel)
        up = w["lora_up.weight"]
        up = up.reshape(up.shape[0], up.shape[1], 1, 1)
        mid = w.get("lora_mid.weight")
        if mid is not None:
            mid = mid.reshape(mid.shape[0], mid.shape[1], *kernel)
    else:
        raise TypeError(f"it is a {type(module).__name__}, not a Linear or Conv2d layer")
    alpha = w["alpha"].item() if "alpha" in w else None
    scale = w["scale"].item() if "scale" in w else None
    dim = w["lora_down.weight"].shape[0]
    if scale is None:
        scale = alpha / dim if alpha is not None else 1.0
    return _Layer(key, module, te, up, down, mid, scale, w.get("bias"), w.get("dora_scale"))


def _plan(lora: Lora, names: dict[str, tuple[torch.nn.Module, bool]]) -> list[_Layer]:
    """This model's layers for `lora`, each checked against the layer's shape (touches nothing)."""
    groups: dict[str, tuple[str, torch.nn.Module, bool, dict[str, torch.Tensor]]] = {}
    skipped = embeddings = 0
    for full_key, tensor in lora.tensors.items():
        base, _, part = full_key.partition(".")
        key, found = _find(base, names)
        if found is None:
            skipped += 1
            embeddings += base == "bundle_emb"
            continue
        groups.setdefault(key, (base, *found, {}))[3][part] = tensor
    if skipped:
        note = f" ({embeddings} of them bundled embeddings, not used)" if embeddings else ""
        log.info(
            "LoRA %s: %d of %d keys match no layer of this model; skipped%s",
            *(lora.path.name, skipped, len(lora.tensors), note),
        )
    # bigG's attention is one MultiheadAttention in A1111: patched only when q, k, v and out
    # all have weights (`network_apply_weights`), else left alone.
    attention = {key.rsplit("_", 2)[0] for key in groups if _BIG_G_ATTENTION.match(key)}
    for block in attention:
        parts = [f"{block}_{p}_proj" for p in ("q", "k", "v", "out")]
        if not all(part in groups for part in parts):
            log.info("LoRA %s: %s lacks some of q, k, v, out; skipped", lora.path.name, block)
            for part in parts:
                groups.pop(part, None)
    layers: list[_Layer] = []
    for key, (base, module, te, w) in groups.items():
        if "lora_up.weight" not in w or "lora_down.weight" not in w:
            problem = "it holds LyCORIS layers (LoHa, LoKr…), which are not supported"
            raise BadAddonFile(KIND, lora.path.name, problem)
        weight = _target(module)
        try:
            layer = _make_layer(key, module, te, w)
            meta = torch.empty(weight.shape, dtype=weight.dtype, device="meta")
            shape = _updown(layer, meta, 1.0).shape  # on "meta": shapes only, no arithmetic
            if shape != weight.shape:
                raise ValueError(f"{tuple(shape)} for {tuple(weight.shape)}")
        except (RuntimeError, ValueError, TypeError, IndexError, ZeroDivisionError) as e:
            log.warning("LoRA %s, layer %s (%s): %s", lora.path, base, key, e)
            detail = str(e).splitlines()[0] if str(e) else type(e).__name__
            problem = f"it does not fit this model (layer {base}: {detail})"
            raise BadAddonFile(KIND, lora.path.name, problem) from e
        layers.append(layer)
    return layers


class LoraPatcher:
    """Owns the LoRA state of one pipeline's UNet and text encoder."""

    def __init__(
        self,
        unet: torch.nn.Module,
        text_encoder: torch.nn.Module,
        text_encoder_2: torch.nn.Module | None = None,
    ) -> None:
        self._names = network_layer_names(unet, text_encoder, text_encoder_2)
        self._plans: weakref.WeakKeyDictionary[Lora, list[_Layer]] = weakref.WeakKeyDictionary()
        self._backups: dict[torch.nn.Module, torch.Tensor] = {}
        self._current: tuple[tuple[Lora, float, float], ...] = ()

    @property
    def active(self) -> tuple[tuple[str, float, float], ...]:
        """Names and (te, unet) multipliers of the LoRAs now merged, in order."""
        return tuple((lora.name, te, unet) for lora, te, unet in self._current)

    def use(self, active: Sequence[tuple[Lora, float, float]]) -> None:
        """Merge exactly `active` (lora, te multiplier, unet multiplier) into the weights.

        As A1111, a name given twice is applied twice, both times with its last multipliers.
        Every file is checked first: on BadAddonFile the weights are as they were.
        """
        last = {lora.name: (float(te), float(unet)) for lora, te, unet in active}
        wanted = tuple((lora, *last[lora.name]) for lora, _, _ in active)
        if len(wanted) == len(self._current) and all(
            a[0] is b[0] and a[1:] == b[1:] for a, b in zip(wanted, self._current, strict=True)
        ):
            return
        plans = [(self._plan_for(lora), te, unet) for lora, te, unet in wanted]
        try:
            self._apply(plans)
        except BaseException:
            self._restore({})
            self._current = ()
            raise
        self._current = wanted

    def _plan_for(self, lora: Lora) -> list[_Layer]:
        plan = self._plans.get(lora)
        if plan is None:
            plan = self._plans[lora] = _plan(lora, self._names)
        return plan

    @torch.no_grad()
    def _restore(self, keep: dict[torch.nn.Module, None]) -> None:
        """Put back every backed-up weight; keep the backups of the modules in `keep` only."""
        for module, backup in list(self._backups.items()):
            _target(module).copy_(backup)
            if module not in keep:
                del self._backups[module]

    @torch.no_grad()
    def _apply(self, plans: list[tuple[list[_Layer], float, float]]) -> None:
        touched = {layer.module: None for plan, _, _ in plans for layer in plan}
        self._restore(touched)
        for module in touched:
            if module not in self._backups:
                self._backups[module] = _target(module).detach().clone()
        for plan, te, unet in plans:
            for layer in plan:
                weight = _target(layer.module)
                updown = _updown(layer, weight, te if layer.te else unet)
                weight.copy_((weight.to(dtype=updown.dtype) + updown).to(dtype=weight.dtype))
