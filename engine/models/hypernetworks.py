"""Hypernetworks (NovelAI's, and A1111-trained `.pt` files), applied as A1111 v1.9.4 applies them.

A file maps an attention context width (768, 320, 640, 1280…) to two small residual MLPs: one
rewrites the context that feeds `to_k`, the other the one that feeds `to_v`. A1111 runs them in
every attention of the UNet (self-attention too, whose context is the layer's own input), for
each loaded hypernetwork in order, as `x + mlp(x) * multiplier`; q is untouched.

Numerics follow A1111: weights are kept in float32; on CUDA with a half-precision UNet the
MLPs run under autocast (A1111 samples under `torch.autocast`), elsewhere in the context's dtype.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention

from engine.errors import BadAddonFile
from engine.weights import read_weights

# A1111's activation_dict: its own names, then every activation class torch defines, lowercased.
_ACTIVATIONS: dict[str, type[torch.nn.Module]] = {
    "linear": torch.nn.Identity,
    "relu": torch.nn.ReLU,
    "leakyrelu": torch.nn.LeakyReLU,
    "elu": torch.nn.ELU,
    "swish": torch.nn.Hardswish,
    "tanh": torch.nn.Tanh,
    "sigmoid": torch.nn.Sigmoid,
}
_ACTIVATIONS.update(
    {
        name.lower(): cls
        for name, cls in inspect.getmembers(torch.nn.modules.activation, inspect.isclass)
        if cls.__module__ == "torch.nn.modules.activation" and issubclass(cls, torch.nn.Module)
    }
)
_OLD_KEYS = {  # NovelAI's first files
    "linear1.bias": "linear.0.bias",
    "linear1.weight": "linear.0.weight",
    "linear2.bias": "linear.1.bias",
    "linear2.weight": "linear.1.weight",
}
_HALF = (torch.float16, torch.bfloat16)


class _Problem(Exception):
    """What is wrong with a file, in a few words (becomes BadAddonFile's `problem`)."""


def _dropout_structure(
    layers: list[float], use_dropout: Any, last_layer_dropout: Any
) -> list[float]:
    """A1111's parse_dropout_structure: which layers a (training-only) Dropout follows."""
    if not use_dropout:
        return [0.0] * len(layers)
    last = 0.3 if last_layer_dropout else 0.0
    return [0.0] + [0.3] * (len(layers) - 3) + [last, 0.0]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _mlp(dim: int, meta: Mapping[Any, Any]) -> torch.nn.Sequential:
    """One MLP laid out as A1111's HypernetworkModule.linear (same indices, so same keys), on
    the meta device: sizes come from the file and nothing is allocated before they are checked."""
    layers = meta.get("layer_structure", [1, 2, 1])
    activation = meta.get("activation_func", None)
    if not isinstance(layers, list | tuple) or len(layers) < 2:
        raise _Problem(f"its layer structure {_short(layers)} is not a list of sizes")
    if not all(isinstance(s, int | float) for s in layers) or layers[0] != 1 or layers[-1] != 1:
        raise _Problem(f"its layer structure {_short(layers)} must be sizes from 1 to 1")
    dropout = meta.get("dropout_structure", None)
    if dropout is None:
        use, last = meta.get("use_dropout", False), meta.get("last_layer_dropout", False)
        dropout = _dropout_structure(list(layers), use, last)
    if not isinstance(dropout, list | tuple) or len(dropout) < len(layers):
        raise _Problem(f"its dropout structure {_short(dropout)} does not fit its layers")
    if not all(isinstance(p, int | float) and p < 1 for p in dropout[1 : len(layers)]):
        raise _Problem(f"its dropout structure {_short(dropout)} is not probabilities")
    if activation not in (None, "linear") and activation not in _ACTIVATIONS:
        raise _Problem(f"its activation function {_short(activation)} is unknown")
    modules: list[torch.nn.Module] = []
    with torch.device("meta"):
        for i in range(len(layers) - 1):
            width = int(dim * layers[i + 1])
            modules.append(torch.nn.Linear(int(dim * layers[i]), width))
            last_layer = i >= len(layers) - 2
            if activation not in (None, "linear") and (
                meta.get("activate_output", True) or not last_layer
            ):
                try:
                    modules.append(_ACTIVATIONS[activation]())
                except Exception as e:
                    raise _Problem(
                        f"its activation function {_short(activation)} is unusable"
                    ) from e
            if meta.get("is_layer_norm", False):
                modules.append(torch.nn.LayerNorm(width))
            if dropout[i + 1] > 0:  # no effect at inference, but it shifts the later layers' keys
                modules.append(torch.nn.Dropout(p=float(dropout[i + 1])))
    return torch.nn.Sequential(*modules)


def _load_mlp(dim: int, meta: Mapping[Any, Any], weights: Any, slot: str) -> torch.nn.Sequential:
    """The k or v MLP of width dim, its weights from the file (as float32, as A1111 holds them)."""
    if not isinstance(weights, Mapping):
        raise _Problem(f"its {dim} {slot} layers are not a state dict")
    state = dict(weights)
    for old, new in _OLD_KEYS.items():  # A1111's fix_old_state_dict
        if state.get(old) is not None:
            state[new] = state.pop(old)
    mlp = _mlp(dim, meta)
    expected = {"linear." + k: v.shape for k, v in mlp.state_dict().items()}
    for key in sorted(expected.keys() | state.keys(), key=str):
        tensor = state.get(key)
        if key not in expected:
            raise _Problem(f"its {dim} {slot} layers have an unexpected {_short(key)}")
        if not isinstance(tensor, torch.Tensor):
            raise _Problem(f"its {dim} {slot} layers lack the tensor {key}")
        if tensor.shape != expected[key]:
            got, want = "x".join(map(str, tensor.shape)), "x".join(map(str, expected[key]))
            raise _Problem(f"{key} of its {dim} {slot} layers is {got}, its structure needs {want}")
    loaded = {k.removeprefix("linear."): v.to(torch.float32) for k, v in state.items()}
    mlp.load_state_dict(loaded, strict=True, assign=True)
    mlp.eval().requires_grad_(False)
    return mlp


class Hypernetwork:
    """A loaded hypernetwork: `layers[dim]` is its (k, v) pair of MLPs for context width dim."""

    def __init__(
        self, name: str, path: Path, layers: dict[int, tuple[torch.nn.Module, torch.nn.Module]]
    ) -> None:
        self.name = name
        self.path = path
        self.layers = layers

    @classmethod
    def load(cls, path: Path, name: str) -> Hypernetwork:
        """Read a `.pt` (tensors only: a pickle that would run code is refused unopened)."""
        data = read_weights(path, "hypernetwork")
        try:
            if not isinstance(data, Mapping):
                raise _Problem("it is not a hypernetwork (no dictionary of layers)")
            layers: dict[int, tuple[torch.nn.Module, torch.nn.Module]] = {}
            for dim, pair in data.items():
                if type(dim) is not int:  # A1111 takes exactly the int keys (not bools)
                    continue
                if dim <= 0 or not isinstance(pair, list | tuple) or len(pair) < 2:
                    raise _Problem(f"its {dim} entry is not a pair of layer sets")
                layers[dim] = (
                    _load_mlp(dim, data, pair[0], "k"),
                    _load_mlp(dim, data, pair[1], "v"),
                )
            if not layers:
                raise _Problem("it is not a hypernetwork (it has no layers)")
        except _Problem as e:
            raise BadAddonFile("hypernetwork", path.name, str(e)) from None
        except Exception as e:  # anything torch raises building the layers
            problem = f"its layers cannot be built ({type(e).__name__})"
            raise BadAddonFile("hypernetwork", path.name, problem) from e
        return cls(name, path, layers)

    def to(self, device: torch.device, dtype: torch.dtype) -> Hypernetwork:
        """Move to the device of a UNet of `dtype`: weights stay float32 where A1111 runs them
        under autocast (CUDA, half precision), else they take `dtype`."""
        device = torch.device(device)
        keep = torch.float32 if device.type == "cuda" and dtype in _HALF else dtype
        for pair in self.layers.values():
            for mlp in pair:
                mlp.to(device, keep)
        return self

    def dims(self) -> set[int]:
        return set(self.layers)


def _run(mlp: torch.nn.Module, x: torch.Tensor, multiplier: float) -> torch.Tensor:
    """`x + mlp(x) * multiplier` with A1111's precision (see the module docstring)."""
    autocast = x.device.type == "cuda" and x.dtype in _HALF
    weight = next(mlp.parameters())
    want = torch.float32 if autocast else x.dtype
    if weight.device != x.device or weight.dtype != want:
        mlp.to(x.device, want)
    if autocast:
        with torch.autocast("cuda", dtype=x.dtype):
            result: torch.Tensor = x + mlp(x) * multiplier
    else:
        result = x + mlp(x) * multiplier
    return result


class _Processor:
    """An attention processor: diffusers' AttnProcessor2_0 with the k/v contexts run through the
    active hypernetworks; the original processor when none of them has this width."""

    def __init__(self, original: Any, hook: HypernetworkHook) -> None:
        self.original = original
        self.hook = hook

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        source = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        dim = source.shape[1] if source.ndim == 4 else source.shape[-1]
        active = [(hn.layers[dim], m) for hn, m in self.hook.active if dim in hn.layers]
        if not active:
            if temb is not None:
                kwargs["temb"] = temb
            out: torch.Tensor = self.original(
                attn,
                hidden_states,
                encoder_hidden_states=encoder_hidden_states,
                attention_mask=attention_mask,
                **kwargs,
            )
            return out

        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, length, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)

        context_k = context_v = encoder_hidden_states
        for (mlp_k, mlp_v), multiplier in active:  # chained, as A1111's apply_hypernetworks
            context_k = _run(mlp_k, context_k, multiplier)
            context_v = _run(mlp_v, context_v, multiplier)
        key = attn.to_k(context_k.to(encoder_hidden_states.dtype))
        value = attn.to_v(context_v.to(encoder_hidden_states.dtype))

        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states.to(query.dtype)))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        result: torch.Tensor = hidden_states / attn.rescale_output_factor
        return result


class HypernetworkHook:
    """Installed once on a diffusers UNet2DConditionModel: wraps every Attention's processor.

    Whatever replaces the processors afterwards (`set_attn_processor`, attention slicing)
    removes the hook; install it after those.
    """

    def __init__(self, unet: UNet2DConditionModel) -> None:
        self.active: list[tuple[Hypernetwork, float]] = []
        self._originals: list[tuple[Attention, Any]] = []
        for module in unet.modules():
            if isinstance(module, Attention):
                if isinstance(module.processor, _Processor):
                    raise RuntimeError("this UNet already has a HypernetworkHook")
                self._originals.append((module, module.processor))
        for module, original in self._originals:
            module.set_processor(_Processor(original, self))

    def use(self, active: Sequence[tuple[Hypernetwork, float]]) -> None:
        """The hypernetworks (with multipliers) for the next forwards, applied in this order;
        empty, or all at 0, gives exactly the original processors' output."""
        self.active = [(hn, float(m)) for hn, m in active if m != 0]

    def remove(self) -> None:
        """Put the original processors back."""
        for module, original in self._originals:
            module.set_processor(original)
        self._originals = []
        self.active = []


def check_fits(hn: Hypernetwork, unet: UNet2DConditionModel) -> None:
    """Refuse a hypernetwork none of whose widths occur in this UNet's attentions."""
    widths = {m.to_k.in_features for m in unet.modules() if isinstance(m, Attention)}
    if not hn.dims() & widths:
        raise BadAddonFile(
            "hypernetwork",
            hn.path.name,
            f"it is for attention widths {', '.join(map(str, sorted(hn.dims())))} but this "
            f"model's are {', '.join(map(str, sorted(widths)))} (made for another kind of model)",
        )
