"""Hypernetworks on a tiny UNet, checked against A1111 v1.9.4's formula written out by hand.

The reference is A1111's CrossAttention forward with apply_hypernetworks
(modules/sd_hijack_optimizations.py, modules/hypernetworks/hypernetwork.py): `context =
default(context, x)`; for each hypernetwork in order, `layers = hn.layers.get(width)` and
`context_k = context_k + mlp_k(context_k) * multiplier` (the same for v); then q from x, k and v
from the two contexts, softmax(q·kᵀ·scale)·v, to_out. Files are written as A1111's
Hypernetwork.save writes them (int width → (k state dict, v state dict), plus metadata).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention

from engine.errors import BadAddonFile
from engine.models.hypernetworks import Hypernetwork, HypernetworkHook, check_fits

Body = Callable[[torch.Tensor], torch.Tensor]
Stack = list[tuple[dict[int, tuple[Body, Body]], float]]
# Layouts of A1111's HypernetworkModule.linear, by hand: (kind, in/out width multipliers).
# [1, 2, 2, 1], relu, layer norm, activate_output False: no activation after the last Linear,
# a LayerNorm after every Linear (the last too).
NEW: list[tuple[Any, ...]] = [
    ("linear", 1, 2), ("relu",), ("norm", 2),
    ("linear", 2, 2), ("relu",), ("norm", 2),
    ("linear", 2, 1), ("norm", 1),
]  # fmt: skip
# The same with dropout_structure [0, 0.3, 0.3, 0]: a Dropout (identity at inference) after the
# first two blocks, which moves the later layers' keys.
DROPOUT: list[tuple[Any, ...]] = [
    ("linear", 1, 2), ("relu",), ("norm", 2), ("dropout",),
    ("linear", 2, 2), ("relu",), ("norm", 2), ("dropout",),
    ("linear", 2, 1), ("norm", 1),
]  # fmt: skip
NEW_META: dict[str, Any] = {
    "layer_structure": [1, 2, 2, 1],
    "activation_func": "relu",
    "is_layer_norm": True,
    "weight_initialization": "Normal",
    "activate_output": False,
    "use_dropout": False,
    "dropout_structure": [0, 0, 0, 0],
    "last_layer_dropout": False,
}
DROPOUT_META = NEW_META | {
    "use_dropout": True,
    "dropout_structure": [0, 0.3, 0.3, 0],
    "last_layer_dropout": True,
}


# --- files ------------------------------------------------------------------------------------


def _random_mlp(dim: int, ops: list[tuple[Any, ...]], gen: torch.Generator) -> dict[str, Any]:
    """Random weights for one layout: {"state": state dict, "body": the MLP by hand}."""
    state: dict[str, torch.Tensor] = {}
    steps: list[Body] = []
    for i, (kind, *mult) in enumerate(ops):
        if kind == "linear":
            w = torch.randn(dim * mult[1], dim * mult[0], generator=gen) * 0.3
            b = torch.randn(dim * mult[1], generator=gen) * 0.1
            state |= {f"linear.{i}.weight": w, f"linear.{i}.bias": b}
            steps.append(partial(F.linear, weight=w, bias=b))
        elif kind == "norm":
            w = 1 + torch.randn(dim * mult[0], generator=gen) * 0.2
            b = torch.randn(dim * mult[0], generator=gen) * 0.1
            state |= {f"linear.{i}.weight": w, f"linear.{i}.bias": b}
            steps.append(
                partial(F.layer_norm, normalized_shape=w.shape, weight=w, bias=b, eps=1e-5)
            )
        elif kind == "relu":
            steps.append(torch.relu)

    def body(x: torch.Tensor) -> torch.Tensor:
        for step in steps:
            x = step(x)
        return x

    return {"state": state, "body": body}


def _random_old_mlp(dim: int, gen: torch.Generator) -> dict[str, Any]:
    """NovelAI's first layout: linear2(linear1(x)), d → 2d → d, no activation."""
    w1, b1 = torch.randn(2 * dim, dim, generator=gen) * 0.3, torch.randn(2 * dim, generator=gen)
    w2, b2 = torch.randn(dim, 2 * dim, generator=gen) * 0.3, torch.randn(dim, generator=gen)
    state = {"linear1.weight": w1, "linear1.bias": b1, "linear2.weight": w2, "linear2.bias": b2}
    return {"state": state, "body": lambda x: (x @ w1.T + b1) @ w2.T + b2}


def write_hypernetwork(
    path: Path, dims: list[int], layout: str = "new", seed: int = 0
) -> dict[int, tuple[Body, Body]]:
    """Save a hypernetwork as A1111 does; return its MLP bodies by width (the reference's)."""
    gen = torch.Generator().manual_seed(seed)
    data: dict[Any, Any] = {}
    bodies: dict[int, tuple[Body, Body]] = {}
    for dim in dims:
        if layout == "old":
            k, v = _random_old_mlp(dim, gen), _random_old_mlp(dim, gen)
        else:
            ops = DROPOUT if layout == "dropout" else NEW
            k, v = _random_mlp(dim, ops, gen), _random_mlp(dim, ops, gen)
        data[dim] = (k["state"], v["state"])
        bodies[dim] = (k["body"], v["body"])
    if layout != "old":  # NovelAI's files have no metadata at all
        data |= DROPOUT_META if layout == "dropout" else NEW_META
        data |= {"step": 1000, "name": path.stem, "sd_checkpoint": "e1441589a6"}
        data |= {"sd_checkpoint_name": "model", "optional_info": None}
    torch.save(data, path)
    return bodies


# --- the UNet and A1111's attention -----------------------------------------------------------


@pytest.fixture
def unet() -> UNet2DConditionModel:
    """Attention widths 32 and 64; 64 is both the text width and a block's channel count."""
    torch.manual_seed(0)
    model = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=8,
        layers_per_block=1,
        norm_num_groups=8,
    )
    return model.eval().requires_grad_(False)


def _forward(unet: UNet2DConditionModel) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 4, 8, 8, generator=gen)  # cond and uncond, as CFG runs them
    text = torch.randn(2, 7, 64, generator=gen)
    out: torch.Tensor = unet(sample, 10, encoder_hidden_states=text).sample
    return out


class ReferenceAttention:
    """A1111's attention forward with apply_hypernetworks, by hand."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        assert attention_mask is None and hidden_states.ndim == 3
        x = hidden_states
        context = x if encoder_hidden_states is None else encoder_hidden_states
        context_k = context_v = context
        for layers, multiplier in self.stack:
            pair = layers.get(context_k.shape[2])
            if pair is not None:
                context_k = context_k + pair[0](context_k) * multiplier
                context_v = context_v + pair[1](context_v) * multiplier
        h = attn.heads

        def heads(t: torch.Tensor) -> torch.Tensor:  # b n (h d) -> (b h) n d
            b, n, hd = t.shape
            return t.reshape(b, n, h, hd // h).permute(0, 2, 1, 3).reshape(b * h, n, hd // h)

        q, k, v = heads(attn.to_q(x)), heads(attn.to_k(context_k)), heads(attn.to_v(context_v))
        sim = torch.einsum("bid,bjd->bij", q, k) * attn.scale
        out = torch.einsum("bij,bjd->bid", sim.softmax(dim=-1), v)
        bh, n, d = out.shape
        out = out.reshape(bh // h, h, n, d).permute(0, 2, 1, 3).reshape(bh // h, n, h * d)
        result: torch.Tensor = attn.to_out[1](attn.to_out[0](out))
        return result


def _reference(unet: UNet2DConditionModel, stack: Stack) -> torch.Tensor:
    attentions = [m for m in unet.modules() if isinstance(m, Attention)]
    originals = [m.processor for m in attentions]
    for m in attentions:
        m.set_processor(ReferenceAttention(stack))
    try:
        return _forward(unet)
    finally:
        for m, original in zip(attentions, originals, strict=True):
            m.set_processor(original)


def _ours(unet: UNet2DConditionModel, active: list[tuple[Hypernetwork, float]]) -> torch.Tensor:
    hook = HypernetworkHook(unet)
    try:
        hook.use(active)
        return _forward(unet)
    finally:
        hook.remove()


# --- tests ------------------------------------------------------------------------------------


def test_nothing_active_is_bit_identical_and_remove_restores(
    unet: UNet2DConditionModel, tmp_path: Path
) -> None:
    write_hypernetwork(tmp_path / "hn.pt", [32, 64])
    write_hypernetwork(tmp_path / "sd1.pt", [768])
    hn = Hypernetwork.load(tmp_path / "hn.pt", "hn")
    sd1 = Hypernetwork.load(tmp_path / "sd1.pt", "sd1")
    originals = [m.processor for m in unet.modules() if isinstance(m, Attention)]
    plain = _forward(unet)

    hook = HypernetworkHook(unet)
    for active in ([], [(hn, 0.0)], [(sd1, 1.0)]):  # empty; strength 0; no matching width
        hook.use(active)
        assert torch.equal(_forward(unet), plain)
    hook.use([(hn, 1.0)])
    assert not torch.allclose(_forward(unet), plain, atol=1e-3)
    hook.remove()

    restored = [m.processor for m in unet.modules() if isinstance(m, Attention)]
    assert all(a is b for a, b in zip(restored, originals, strict=True))
    assert torch.equal(_forward(unet), plain)


@pytest.mark.parametrize("layout", ["new", "old", "dropout"])
def test_matches_a1111_formula(unet: UNet2DConditionModel, tmp_path: Path, layout: str) -> None:
    bodies = write_hypernetwork(tmp_path / "anime.pt", [32, 64, 768], layout)
    hn = Hypernetwork.load(tmp_path / "anime.pt", "anime")
    assert hn.name == "anime" and hn.dims() == {32, 64, 768}
    check_fits(hn, unet)

    ours = _ours(unet, [(hn, 0.7)])
    reference = _reference(unet, [(bodies, 0.7)])

    assert (ours - reference).abs().max().item() <= 1e-5
    assert not torch.allclose(ours, _forward(unet), atol=1e-3)  # it did something


def test_self_attention_is_changed(unet: UNet2DConditionModel, tmp_path: Path) -> None:
    # 32 is only ever a self-attention width here (the text is 64 wide).
    bodies = write_hypernetwork(tmp_path / "self.pt", [32])
    hn = Hypernetwork.load(tmp_path / "self.pt", "self")
    check_fits(hn, unet)

    ours = _ours(unet, [(hn, 1.0)])

    assert not torch.allclose(ours, _forward(unet), atol=1e-3)
    assert (ours - _reference(unet, [(bodies, 1.0)])).abs().max().item() <= 1e-5


def test_a_hypernetwork_for_another_model_does_not_fit(
    unet: UNet2DConditionModel, tmp_path: Path
) -> None:
    write_hypernetwork(tmp_path / "sd1-style.pt", [768, 320])
    hn = Hypernetwork.load(tmp_path / "sd1-style.pt", "sd1-style")

    with pytest.raises(BadAddonFile) as e:
        check_fits(hn, unet)

    assert "sd1-style.pt" in str(e.value) and "320, 768" in str(e.value)
    assert "32, 64" in str(e.value)


def test_two_hypernetworks_chain_in_order(unet: UNet2DConditionModel, tmp_path: Path) -> None:
    first = write_hypernetwork(tmp_path / "a.pt", [32, 64], "new", seed=1)
    second = write_hypernetwork(tmp_path / "b.pt", [64], "old", seed=2)
    a = Hypernetwork.load(tmp_path / "a.pt", "a")
    b = Hypernetwork.load(tmp_path / "b.pt", "b")

    ours = _ours(unet, [(a, 0.8), (b, 0.5)])

    assert (ours - _reference(unet, [(first, 0.8), (second, 0.5)])).abs().max() <= 1e-5
    assert not torch.allclose(ours, _ours(unet, [(b, 0.5), (a, 0.8)]), atol=1e-4)


def test_to_moves_and_casts(tmp_path: Path) -> None:
    write_hypernetwork(tmp_path / "hn.pt", [64])
    hn = Hypernetwork.load(tmp_path / "hn.pt", "hn")
    assert all(p.dtype == torch.float32 for m in hn.layers[64] for p in m.parameters())

    assert hn.to(torch.device("cpu"), torch.float64) is hn

    assert all(p.dtype == torch.float64 for m in hn.layers[64] for p in m.parameters())


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize(
    ("device", "dtype"),
    [("cpu", torch.bfloat16), pytest.param("cuda", torch.float16, marks=CUDA)],
)
def test_half_precision_unet(
    unet: UNet2DConditionModel, tmp_path: Path, device: str, dtype: torch.dtype
) -> None:
    # Loaded on the CPU in float32 and moved at first use; on CUDA the weights stay float32
    # and run under autocast, as in A1111.
    write_hypernetwork(tmp_path / "hn.pt", [32, 64])
    hn = Hypernetwork.load(tmp_path / "hn.pt", "hn")
    full = _ours(unet, [(hn, 0.7)])
    unet.to(device, dtype)
    hook = HypernetworkHook(unet)
    hook.use([(hn, 0.7)])
    gen = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 4, 8, 8, generator=gen).to(device, dtype)
    text = torch.randn(2, 7, 64, generator=gen).to(device, dtype)

    half = unet(sample, 10, encoder_hidden_states=text).sample

    assert half.dtype == dtype
    assert (half.float().cpu() - full).abs().max() <= 0.05 * full.abs().max()
    weights = {(p.device.type, p.dtype) for m in hn.layers[64] for p in m.parameters()}
    assert weights == {(device, torch.float32 if device == "cuda" else dtype)}


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _bad_file(kind: str, path: Path) -> None:
    if kind == "code":
        torch.save({64: _RunsCode(path.with_name("pwned"))}, path)
    elif kind == "truncated":
        write_hypernetwork(path, [64])
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "wrong shapes":
        write_hypernetwork(path, [64])
        data = torch.load(path, weights_only=True)
        torch.save(data | {"layer_structure": [1, 3, 3, 1]}, path)
    elif kind == "not a dict":
        torch.save([torch.zeros(3)], path)
    elif kind == "no layers":
        torch.save({"string_to_param": {"*": torch.zeros(2, 768)}}, path)  # an embedding
    elif kind == "unknown activation":
        write_hypernetwork(path, [64])
        data = torch.load(path, weights_only=True)
        torch.save(data | {"activation_func": "rm -rf\n/"}, path)


@pytest.mark.parametrize(
    "kind", ["code", "truncated", "wrong shapes", "not a dict", "no layers", "unknown activation"]
)
def test_bad_files_are_refused_in_one_line(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "bad.pt"
    _bad_file(kind, path)

    with pytest.raises(BadAddonFile) as e:
        Hypernetwork.load(path, "bad")

    message = str(e.value)
    assert "\n" not in message and "bad.pt" in message and str(tmp_path) not in message
    assert e.value.kind == "hypernetwork"
    assert not (tmp_path / "pwned").exists()
