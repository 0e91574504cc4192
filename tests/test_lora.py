"""LoRA merged as A1111 v1.9.4's Lora extension does: kohya keys in both namings, LoCon convs,
te/unet multipliers, exact restore, refusals before any weight changes, and the addnet hash."""

from __future__ import annotations

import copy
import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from engine.errors import BadAddonFile
from engine.models.hashes import HashCache
from engine.models.lora import Lora, LoraPatcher, lora_alias, network_layer_names
from tests.ldm_layout import unet_to_ldm

pytestmark = pytest.mark.slow

# kohya key (diffusers naming) → (the same layer in CompVis naming, our module, kernel)
UNET_LAYERS = {
    "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q": (
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
    ),
    "lora_unet_down_blocks_2_attentions_1_transformer_blocks_0_attn2_to_k": (
        "lora_unet_input_blocks_8_1_transformer_blocks_0_attn2_to_k",
        "down_blocks.2.attentions.1.transformer_blocks.0.attn2.to_k",
    ),
    "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_out_0": (
        "lora_unet_middle_block_1_transformer_blocks_0_attn1_to_out_0",
        "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0",
    ),
    "lora_unet_up_blocks_1_attentions_2_proj_out": (  # a 1x1 conv
        "lora_unet_output_blocks_5_1_proj_out",
        "up_blocks.1.attentions.2.proj_out",
    ),
    "lora_unet_down_blocks_0_resnets_0_conv1": (  # LoCon: 3x3 down, 1x1 up
        "lora_unet_input_blocks_1_0_in_layers_2",
        "down_blocks.0.resnets.0.conv1",
    ),
    "lora_unet_down_blocks_1_resnets_0_time_emb_proj": (
        "lora_unet_input_blocks_4_0_emb_layers_1",
        "down_blocks.1.resnets.0.time_emb_proj",
    ),
    "lora_unet_down_blocks_0_downsamplers_0_conv": (
        "lora_unet_input_blocks_3_0_op",
        "down_blocks.0.downsamplers.0.conv",
    ),
    "lora_unet_up_blocks_1_upsamplers_0_conv": (
        "lora_unet_output_blocks_5_2_conv",
        "up_blocks.1.upsamplers.0.conv",
    ),
    "lora_unet_up_blocks_0_resnets_1_conv_shortcut": (
        "lora_unet_output_blocks_1_0_skip_connection",
        "up_blocks.0.resnets.1.conv_shortcut",
    ),
}
TE_LAYERS = {
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
        "encoder.layers.0.self_attn.q_proj",
    ),
    "lora_te_text_model_encoder_layers_1_self_attn_k_proj": (
        "lora_te1_text_model_encoder_layers_1_self_attn_k_proj",
        "encoder.layers.1.self_attn.k_proj",
    ),
    "lora_te_text_model_encoder_layers_2_mlp_fc1": (
        "lora_te1_text_model_encoder_layers_2_mlp_fc1",
        "encoder.layers.2.mlp.fc1",
    ),
}
LAYERS = {**UNET_LAYERS, **TE_LAYERS}
TO_Q = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"


def module_at(model: torch.nn.Module, path: str) -> torch.nn.Module:
    """A sub-module by dotted path (transformers < 5 has a `text_model.` level in CLIPTextModel)."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        return model.get_submodule("text_model." + path)


def kohya_tensors(
    pipe: Any, seed: int, *, compvis: bool = False, alpha: bool = True
) -> dict[str, torch.Tensor]:
    """Random kohya LoRA weights for LAYERS (rank 4; conv layers get a kernel-sized down)."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, (compvis_key, path) in LAYERS.items():
        model = pipe.unet if key.startswith("lora_unet") else pipe.text_encoder
        weight = module_at(model, path).weight
        rank, name = 4, compvis_key if compvis else key
        down_shape = (rank, weight.shape[1], *weight.shape[2:])
        up_shape = (weight.shape[0], rank) + ((1, 1) if weight.dim() == 4 else ())
        out[f"{name}.lora_down.weight"] = torch.randn(down_shape, generator=gen) * 0.3
        out[f"{name}.lora_up.weight"] = torch.randn(up_shape, generator=gen) * 0.3
        if alpha:
            out[f"{name}.alpha"] = torch.tensor(float(torch.randint(1, 9, (1,), generator=gen)))
    return out


def write(path: Path, tensors: dict[str, torch.Tensor], **metadata: str) -> Path:
    save_file(tensors, str(path), metadata=metadata or None)
    return path


def reference(pipe: Any, loras: list[tuple[dict[str, torch.Tensor], float, float]]) -> Any:
    """A1111's formula on copies: W += (up @ down) * alpha/rank * multiplier, one LoRA after
    another (3x3 LoCon: the 1x1 up composed with the 3x3 down is up @ down.flatten(1))."""
    unet, te = copy.deepcopy(pipe.unet), copy.deepcopy(pipe.text_encoder)
    with torch.no_grad():
        for tensors, te_mult, unet_mult in loras:
            for key, (_, path) in LAYERS.items():
                is_unet = key.startswith("lora_unet")
                weight = module_at(unet if is_unet else te, path).weight
                down, up = tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"]
                rank = down.shape[0]
                scale = tensors[f"{key}.alpha"].item() / rank if f"{key}.alpha" in tensors else 1.0
                delta = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)
                weight += delta * scale * (unet_mult if is_unet else te_mult)
    return unet, te


def outputs(unet: torch.nn.Module, te: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The UNet's noise prediction and the text encoder's hidden states on fixed inputs."""
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(0, 49408, (1, 77), generator=gen)
    latent = torch.randn(1, 4, 16, 16, generator=gen)
    with torch.no_grad():
        hidden = te(ids)[0]
        noise = unet(latent, 500, encoder_hidden_states=hidden).sample
    return noise, hidden


def snapshot(pipe: Any) -> dict[str, torch.Tensor]:
    state = {f"unet.{k}": v for k, v in pipe.unet.state_dict().items()}
    state |= {f"te.{k}": v for k, v in pipe.text_encoder.state_dict().items()}
    return {k: v.detach().clone() for k, v in state.items()}


def assert_bit_identical(pipe: Any, before: dict[str, torch.Tensor]) -> None:
    now = snapshot(pipe)
    assert now.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(now[key].view(torch.uint8), value.view(torch.uint8)), key


@pytest.fixture
def pipe(demo_model: Any) -> Any:
    return demo_model.pipe


@pytest.fixture
def patcher(pipe: Any) -> Iterator[LoraPatcher]:
    patcher = LoraPatcher(pipe.unet, pipe.text_encoder)
    try:
        yield patcher
    finally:
        patcher.use([])


def test_layer_names_follow_the_ldm_layout(pipe: Any) -> None:
    """Our A1111 names for the diffusers UNet are the LDM checkpoint's names (independent map)."""
    names = network_layer_names(pipe.unet, pipe.text_encoder)
    ours = {
        name
        for name, (module, te) in names.items()
        if not te and isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))
    }
    ldm = {
        "diffusion_model_" + key.removesuffix(".weight").replace(".", "_")
        for key, tensor in unet_to_ldm(pipe.unet).items()
        if key.endswith(".weight") and tensor.dim() in (2, 4)
    }
    assert ours == ldm


def test_multiplier_zero_changes_nothing(pipe: Any, patcher: LoraPatcher, tmp_path: Path) -> None:
    plain = outputs(pipe.unet, pipe.text_encoder)
    lora = Lora.load(write(tmp_path / "a.safetensors", kohya_tensors(pipe, 1)), "a")
    patcher.use([(lora, 0.0, 0.0)])
    assert patcher.active == (("a", 0.0, 0.0),)
    noise, hidden = outputs(pipe.unet, pipe.text_encoder)
    assert torch.equal(noise, plain[0]) and torch.equal(hidden, plain[1])


@pytest.mark.parametrize("alpha", [True, False])
def test_matches_a1111_formula_in_both_namings(
    pipe: Any, patcher: LoraPatcher, tmp_path: Path, alpha: bool
) -> None:
    tensors = kohya_tensors(pipe, 2, alpha=alpha)
    expected = outputs(*reference(pipe, [(tensors, 0.8, 0.8)]))
    plain = outputs(pipe.unet, pipe.text_encoder)
    states = []
    for compvis in (False, True):
        file = write(
            tmp_path / f"{compvis}.safetensors",
            kohya_tensors(pipe, 2, compvis=compvis, alpha=alpha),
        )
        patcher.use([(Lora.load(file, f"n{compvis}"), 0.8, 0.8)])
        noise, hidden = outputs(pipe.unet, pipe.text_encoder)
        assert (noise - expected[0]).abs().max() <= 1e-5
        assert (hidden - expected[1]).abs().max() <= 1e-5
        assert (noise - plain[0]).abs().max() > 1e-3  # the LoRA really changed the output
        states.append(snapshot(pipe))
    for key, value in states[0].items():  # both namings reach the same modules
        assert torch.equal(value, states[1][key]), key


def test_apply_and_remove_is_bit_exact(pipe: Any, patcher: LoraPatcher, tmp_path: Path) -> None:
    before = snapshot(pipe)
    loras = [
        Lora.load(write(tmp_path / f"{i}.safetensors", kohya_tensors(pipe, 10 + i)), f"l{i}")
        for i in range(3)
    ]
    set_a = [(loras[0], 0.8, 0.8)]
    set_b = [(loras[1], 0.5, 0.5), (loras[2], 0.3, 1.2)]
    patcher.use(set_a)
    merged_a = snapshot(pipe)
    patcher.use([])
    assert_bit_identical(pipe, before)
    assert patcher.active == () and not patcher._backups
    for i in range(100):
        patcher.use(set_a if i % 2 == 0 else set_b)
    patcher.use(set_a)
    assert_bit_identical(pipe, merged_a)
    patcher.use([])
    assert_bit_identical(pipe, before)


def test_three_loras_with_separate_multipliers(
    pipe: Any, patcher: LoraPatcher, tmp_path: Path
) -> None:
    tensors = [kohya_tensors(pipe, 20 + i) for i in range(3)]
    loras = [
        Lora.load(write(tmp_path / f"{i}.safetensors", t), f"l{i}") for i, t in enumerate(tensors)
    ]
    mults = [(0.7, -0.4), (1.0, 0.5), (0.0, 1.3)]
    expected = outputs(
        *reference(pipe, [(t, te, u) for t, (te, u) in zip(tensors, mults, strict=True)])
    )
    patcher.use([(lora, te, unet) for lora, (te, unet) in zip(loras, mults, strict=True)])
    noise, hidden = outputs(pipe.unet, pipe.text_encoder)
    assert (noise - expected[0]).abs().max() <= 1e-5
    assert (hidden - expected[1]).abs().max() <= 1e-5

    before = snapshot(pipe)  # te multiplier 0: only UNet layers change, and the reverse
    patcher.use([])
    clean = snapshot(pipe)
    patcher.use([(loras[0], 1.0, 0.0)])
    now = snapshot(pipe)
    assert all(torch.equal(now[k], clean[k]) for k in now if k.startswith("unet."))
    assert any(not torch.equal(now[k], clean[k]) for k in now if k.startswith("te."))
    patcher.use([(loras[0], 0.0, 1.0)])
    now = snapshot(pipe)
    assert all(torch.equal(now[k], clean[k]) for k in now if k.startswith("te."))
    assert before.keys() == now.keys()


def test_same_name_twice_takes_its_last_multipliers(
    pipe: Any, patcher: LoraPatcher, tmp_path: Path
) -> None:
    """A1111 keeps one Network object per name: `<lora:a:1> <lora:a:0.5>` merges it twice at 0.5."""
    tensors = kohya_tensors(pipe, 30)
    lora = Lora.load(write(tmp_path / "a.safetensors", tensors), "a")
    expected = outputs(*reference(pipe, [(tensors, 0.5, 0.25)] * 2))
    patcher.use([(lora, 1.0, 1.0), (lora, 0.5, 0.25)])
    assert patcher.active == (("a", 0.5, 0.25), ("a", 0.5, 0.25))
    noise, hidden = outputs(pipe.unet, pipe.text_encoder)
    assert (noise - expected[0]).abs().max() <= 1e-5
    assert (hidden - expected[1]).abs().max() <= 1e-5


class RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def test_refused_files_leave_weights_untouched(
    pipe: Any, patcher: LoraPatcher, tmp_path: Path
) -> None:
    good = Lora.load(write(tmp_path / "good.safetensors", kohya_tensors(pipe, 40)), "good")
    patcher.use([(good, 1.0, 1.0)])
    before = snapshot(pipe)

    marker = tmp_path / "ran"
    torch.save({"x": RunsCode(marker)}, tmp_path / "evil.pt")
    truncated = write(tmp_path / "cut.safetensors", kohya_tensors(pipe, 41))
    truncated.write_bytes(truncated.read_bytes()[:-100])
    (tmp_path / "junk.ckpt").write_bytes(b"not a pickle at all")
    for name, words in [
        ("evil.pt", "pickle"),
        ("cut.safetensors", "damaged"),
        ("junk.ckpt", "damaged"),
    ]:
        with pytest.raises(BadAddonFile) as info:
            Lora.load(tmp_path / name, "x")
        message = str(info.value)
        assert "\n" not in message and name in message and words in message
        assert str(tmp_path) not in message
    assert not marker.exists()
    with pytest.raises(BadAddonFile):
        Lora.load(write(tmp_path / "a.txt", {}), "a")

    sd15_to_q = "lora_unet_down_blocks_1_attentions_1_transformer_blocks_0_attn1_to_q"
    wide = {  # a 768-wide to_q (SD 1.5's) on the 64-wide demo, after layers that fit
        **kohya_tensors(pipe, 42),
        f"{sd15_to_q}.lora_down.weight": torch.randn(4, 768),
        f"{sd15_to_q}.lora_up.weight": torch.randn(768, 4),
    }
    loha = {
        "lora_unet_down_blocks_1_attentions_0_proj_in.hada_w1_a": torch.randn(64, 4),
        "lora_unet_down_blocks_1_attentions_0_proj_in.hada_w1_b": torch.randn(4, 64),
    }
    norm = {  # lora_up/down on a LayerNorm: A1111 cannot create the module
        "lora_te_text_model_encoder_layers_0_layer_norm1.lora_down.weight": torch.randn(4, 64),
        "lora_te_text_model_encoder_layers_0_layer_norm1.lora_up.weight": torch.randn(64, 4),
    }
    for name, tensors, words in [
        ("wide", wide, "does not fit"),
        ("loha", loha, "LyCORIS"),
        ("norm", norm, "LayerNorm"),
    ]:
        bad = Lora.load(write(tmp_path / f"{name}.safetensors", tensors), name)
        with pytest.raises(BadAddonFile) as info:
            patcher.use([(good, 0.5, 0.5), (bad, 1.0, 1.0)])
        assert "\n" not in str(info.value) and words in str(info.value), str(info.value)
        assert patcher.active == (("good", 1.0, 1.0),)
        assert_bit_identical(pipe, before)


def test_unmappable_keys_are_skipped_and_logged_once(
    pipe: Any, patcher: LoraPatcher, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tensors = kohya_tensors(pipe, 50)
    expected = outputs(*reference(pipe, [(tensors, 1.0, 1.0)]))
    extra = {
        "lora_unet_not_a_layer.lora_down.weight": torch.randn(4, 8),
        "lora_te_text_model_encoder_layers_11_self_attn_q_proj.lora_down.weight": torch.randn(4, 8),
        # A1111 maps up_blocks_0's upsampler to output_blocks_2_1_conv (SD 1 has no attention
        # there); the demo's up_blocks_0 has one, so A1111 finds no such layer either.
        "lora_unet_up_blocks_0_upsamplers_0_conv.lora_down.weight": torch.randn(4, 96, 3, 3),
    }
    lora = Lora.load(write(tmp_path / "a.safetensors", tensors | extra), "a")
    with caplog.at_level(logging.INFO, logger="engine.models.lora"):
        patcher.use([(lora, 1.0, 1.0)])
        patcher.use([])
        patcher.use([(lora, 1.0, 1.0)])
    lines = [r.getMessage() for r in caplog.records if "match no layer" in r.getMessage()]
    assert lines == [
        f"LoRA a.safetensors: 3 of {len(tensors) + 3} keys match no layer of this model; skipped"
    ]
    noise, hidden = outputs(pipe.unet, pipe.text_encoder)
    assert (noise - expected[0]).abs().max() <= 1e-5
    assert (hidden - expected[1]).abs().max() <= 1e-5


def test_pickled_lora_loads_with_weights_only(
    pipe: Any, patcher: LoraPatcher, tmp_path: Path
) -> None:
    tensors = kohya_tensors(pipe, 60)
    torch.save(tensors, tmp_path / "a.pt")
    patcher.use([(Lora.load(tmp_path / "a.pt", "a"), 1.0, 1.0)])
    from_pickle = snapshot(pipe)
    patcher.use([(Lora.load(write(tmp_path / "a.safetensors", tensors), "a"), 1.0, 1.0)])
    assert all(torch.equal(v, from_pickle[k]) for k, v in snapshot(pipe).items())


def test_alias_and_addnet_hash(pipe: Any, tmp_path: Path) -> None:
    path = write(tmp_path / "file.safetensors", kohya_tensors(pipe, 70), ss_output_name="my_style")
    assert lora_alias(path) == "my_style"
    assert Lora.load(path, "file").alias == "my_style"
    assert lora_alias(write(tmp_path / "plain.safetensors", {"x": torch.zeros(1)})) is None
    torch.save({}, tmp_path / "old.pt")
    assert lora_alias(tmp_path / "old.pt") is None

    data = path.read_bytes()  # kohya's addnet hash: sha256 of what follows the header
    header = int.from_bytes(data[:8], "little")
    expected = hashlib.sha256(data[8 + header :]).hexdigest()
    assert HashCache(tmp_path).sha256(path, addnet=True)[:12] == expected[:12]
    assert HashCache(tmp_path).sha256(path, addnet=True) == expected  # cached


def test_half_weights_use_a1111_fp16_arithmetic(pipe: Any, tmp_path: Path) -> None:
    """With a half model A1111's LoRA is fp16 (devices.dtype): (W + up@down*scale*m) in fp16."""
    unet, te = copy.deepcopy(pipe.unet).half(), copy.deepcopy(pipe.text_encoder).half()
    tensors = kohya_tensors(pipe, 80)
    LoraPatcher(unet, te).use(
        [(Lora.load(write(tmp_path / "a.safetensors", tensors), "a"), 0.6, 0.6)]
    )
    key = "lora_unet_down_blocks_0_resnets_0_conv1"
    original = module_at(pipe.unet, UNET_LAYERS[key][1]).weight.half()
    up = tensors[f"{key}.lora_up.weight"].half().flatten(1)
    down = tensors[f"{key}.lora_down.weight"].half().flatten(1)
    scale = tensors[f"{key}.alpha"].item() / 4
    updown = (up @ down).reshape(original.shape) * scale * 0.6
    assert torch.equal(module_at(unet, UNET_LAYERS[key][1]).weight, original + updown)


def test_dora_and_cp_decomposed_locon(pipe: Any, patcher: LoraPatcher, tmp_path: Path) -> None:
    # lora_mid (LoCon's CP decomposition): delta[i,j] = sum up[i,n] mid[n,m] down[m,j] per tap.
    key, path = "lora_unet_down_blocks_0_resnets_0_conv1", "down_blocks.0.resnets.0.conv1"
    weight = module_at(pipe.unet, path).weight.detach().clone()
    up, mid, down = torch.randn(32, 4, 1, 1), torch.randn(4, 4, 3, 3), torch.randn(4, 32, 1, 1)
    tensors = {
        f"{key}.lora_up.weight": up,
        f"{key}.lora_mid.weight": mid,
        f"{key}.lora_down.weight": down,
    }
    patcher.use([(Lora.load(write(tmp_path / "cp.safetensors", tensors), "cp"), 1.0, 0.5)])
    delta = torch.tensordot(
        up.flatten(1), torch.tensordot(mid, down.flatten(1), dims=([1], [0])), dims=([1], [0])
    )
    expected = weight + delta.permute(0, 3, 1, 2) * 0.5
    assert (module_at(pipe.unet, path).weight - expected).abs().max() <= 1e-5

    # DoRA with dora_scale = the column norms of W + up@down leaves up@down as it is.
    key, path = TO_Q, UNET_LAYERS[TO_Q][1]
    patcher.use([])
    weight = module_at(pipe.unet, path).weight.detach().clone()
    up, down = torch.randn(weight.shape[0], 4) * 0.1, torch.randn(4, weight.shape[1]) * 0.1
    dora_scale = (weight + up @ down).norm(dim=0, keepdim=True)
    tensors = {
        f"{key}.lora_up.weight": up,
        f"{key}.lora_down.weight": down,
        f"{key}.dora_scale": dora_scale,
    }
    patcher.use([(Lora.load(write(tmp_path / "dora.safetensors", tensors), "dora"), 1.0, 0.5)])
    expected = weight + up @ down * 0.5
    assert (module_at(pipe.unet, path).weight - expected).abs().max() <= 1e-5


def test_sequential_cpu_offload(pipe: Any, tmp_path: Path) -> None:
    """--lowvram's accelerate hooks keep weights off the module: the LoRA goes into their copy."""
    from accelerate import cpu_offload

    tensors = kohya_tensors(pipe, 90)
    unet, te = copy.deepcopy(pipe.unet), copy.deepcopy(pipe.text_encoder)
    cpu_offload(unet, execution_device=torch.device("cpu"))
    lora = Lora.load(write(tmp_path / "a.safetensors", tensors), "a")
    patcher = LoraPatcher(unet, te)
    patcher.use([(lora, 1.0, 1.0)])
    assert module_at(unet, UNET_LAYERS[TO_Q][1]).weight.device.type == "meta"
    expected = outputs(*reference(pipe, [(tensors, 1.0, 1.0)]))
    noise, _ = outputs(unet, te)
    assert (noise - expected[0]).abs().max() <= 1e-5
    patcher.use([])
    assert torch.equal(outputs(unet, te)[0], outputs(pipe.unet, pipe.text_encoder)[0])
