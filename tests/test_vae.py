"""VAE files (engine/models/vae.py): A1111's formats loaded exactly, bad files refused in one
line, and the automatic fp32 retry when a half-precision VAE makes NaN.

Every VAE here is a tiny AutoencoderKL built from a config written to tmp_path, with random
weights (rounded to float16 values, so that float16 loads compare exactly too). The LDM layout
comes from tests/ldm_layout.py, the inverse of diffusers' converter.
"""

from __future__ import annotations

import copy
import json
import logging
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

from engine.errors import BadAddonFile
from engine.models.checkpoints import SD15_CONFIG
from engine.models.vae import decode, load_vae
from tests.ldm_layout import VAE_PREFIX, vae_to_ldm

TINY: dict[str, Any] = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [32, 64, 64],
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 32,
    "sample_size": 64,
    "scaling_factor": 0.18215,
}
# Training leftovers A1111's load_vae_dict drops.
EXTRAS = {
    "loss.logvar": torch.zeros(()),
    "loss.discriminator.main.0.weight": torch.ones(8, 3, 4, 4),
    "model_ema.decay": torch.tensor(0.9999),
    "model_ema.num_updates": torch.tensor(1000, dtype=torch.int32),
}
NAN_WARNING = "VAE produced NaN in fp16; decoding in fp32 from now on (A1111 --no-half-vae)"


def write_config(folder: Path, **changes: Any) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(TINY | changes), encoding="utf-8")
    return folder


def random_vae(seed: int = 0, **changes: Any) -> AutoencoderKL:
    """A tiny VAE whose every weight is random (so that any swap shows) and float16-exact."""
    vae = AutoencoderKL.from_config(TINY | changes).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    for param in vae.parameters():
        fan_in = param[0].numel() if param.ndim > 1 else 1
        value = torch.randn(param.shape, generator=gen) / fan_in**0.5
        param.copy_(value.half().float())
    return vae


@pytest.fixture(scope="module")
def original() -> AutoencoderKL:
    return random_vae()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "config")


@pytest.fixture
def latents() -> torch.Tensor:
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))


def assert_same_weights(loaded: AutoencoderKL, original: AutoencoderKL, dtype: torch.dtype) -> None:
    got, want = loaded.state_dict(), original.state_dict()
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        assert got[name].dtype == dtype, name
        assert torch.equal(got[name], tensor.to(dtype)), name


# --- 1. every format loads exactly ------------------------------------------------------------


def write_bare_pt(vae: AutoencoderKL, path: Path) -> None:
    """NovelAI's animevae.pt layout: bare LDM keys with loss weights, inside `state_dict`."""
    torch.save({"state_dict": vae_to_ldm(vae) | EXTRAS, "global_step": 1234}, path)


def write_prefixed_ckpt(vae: AutoencoderKL, path: Path) -> None:
    state = {VAE_PREFIX + k: v for k, v in vae_to_ldm(vae).items()}
    torch.save(state | EXTRAS, path)


def write_lightning_ckpt(vae: AutoencoderKL, path: Path) -> None:
    """An old PyTorch Lightning checkpoint: its callback class as a dict key, numpy metadata."""
    names = ["pytorch_lightning", "pytorch_lightning.callbacks"]
    module_name = "pytorch_lightning.callbacks.model_checkpoint"
    fake = types.ModuleType(module_name)
    checkpoint_class = type("ModelCheckpoint", (), {"__module__": module_name})
    fake.ModelCheckpoint = checkpoint_class  # type: ignore[attr-defined]
    saved = {name: sys.modules.get(name) for name in [*names, module_name]}
    sys.modules.update({name: types.ModuleType(name) for name in names})
    sys.modules[module_name] = fake
    try:
        torch.save(
            {
                "state_dict": vae_to_ldm(vae) | EXTRAS,
                "global_step": np.int64(1234),
                "callbacks": {checkpoint_class: {"best_model_score": np.float64(0.5)}},
                "history": np.zeros(3),
            },
            path,
        )
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def write_safetensors(vae: AutoencoderKL, path: Path) -> None:
    save_file({k: v.contiguous() for k, v in vae_to_ldm(vae).items()}, path)


def write_diffusers_folder(vae: AutoencoderKL, path: Path) -> None:
    vae.save_pretrained(path)


def write_old_diffusers_folder(vae: AutoencoderKL, path: Path) -> None:
    """A diffusers folder from before 0.14, whose attention weights were query/key/value."""
    old = {"to_q.": "query.", "to_k.": "key.", "to_v.": "value.", "to_out.0.": "proj_attn."}
    state = {}
    for name, tensor in vae.state_dict().items():
        for new_name, old_name in old.items():
            name = name.replace(f"attentions.0.{new_name}", f"attentions.0.{old_name}")
        state[name] = tensor.contiguous()
    path.mkdir()
    (path / "config.json").write_text(json.dumps(TINY), encoding="utf-8")
    save_file(state, path / "diffusion_pytorch_model.safetensors")


WRITERS = {
    "animevae.pt": write_bare_pt,
    "prefixed.ckpt": write_prefixed_ckpt,
    "lightning.ckpt": write_lightning_ckpt,
    "vae-ft-mse-840000-ema-pruned.safetensors": write_safetensors,
    "diffusers-vae": write_diffusers_folder,
    "old-diffusers-vae": write_old_diffusers_folder,
}


@pytest.mark.parametrize("name", list(WRITERS))
def test_each_format_loads_bit_identical(
    name: str, original: AutoencoderKL, config: Path, tmp_path: Path, latents: torch.Tensor
) -> None:
    path = tmp_path / name
    WRITERS[name](original, path)
    vae = load_vae(path, config=config, dtype=torch.float32)
    assert isinstance(vae, AutoencoderKL) and not vae.training
    assert not any(p.requires_grad for p in vae.parameters())
    assert_same_weights(vae, original, torch.float32)
    assert torch.equal(decode(vae, latents), decode(copy.deepcopy(original), latents))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_loads_cast_the_weights(
    dtype: torch.dtype, original: AutoencoderKL, config: Path, tmp_path: Path
) -> None:
    path = tmp_path / "vae.safetensors"
    write_safetensors(original, path)
    vae = load_vae(path, config=config, dtype=dtype, device=torch.device("cpu"))
    assert vae.dtype == dtype and vae.device.type == "cpu"
    assert_same_weights(vae, original, dtype)


def test_fp16_file_loads_into_fp32(original: AutoencoderKL, config: Path, tmp_path: Path) -> None:
    path = tmp_path / "vae.safetensors"
    save_file({k: v.half().contiguous() for k, v in vae_to_ldm(original).items()}, path)
    assert_same_weights(load_vae(path, config=config, dtype=torch.float32), original, torch.float32)


def test_decode_scales_like_ldm_one_image_at_a_time(
    original: AutoencoderKL, latents: torch.Tensor
) -> None:
    vae = copy.deepcopy(original).half()
    images = decode(vae, latents)
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.float32
    for i in range(2):
        # LDM's decode_first_stage: cast to the VAE's dtype, then `1. / scale_factor * z`.
        z = (1.0 / 0.18215) * latents[i : i + 1].half()
        assert torch.equal(images[i : i + 1], vae.decode(z).sample.float())


# --- 2. bad files are refused in one line -----------------------------------------------------


def refusal(path: Path, config: Path) -> str:
    with pytest.raises(BadAddonFile) as caught:
        load_vae(path, config=config, dtype=torch.float32)
    message = str(caught.value)
    assert caught.value.kind == "VAE" and caught.value.file == path.name
    assert message.startswith(f"Cannot use the VAE {path.name}: ")
    assert "\n" not in message and str(path.parent) not in message
    return message


class RunsCode:
    """Unpickling this would create `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_pickle_with_code_is_refused_without_running(
    original: AutoencoderKL, config: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": vae_to_ldm(original) | {"x": RunsCode(marker)}}, path)
    assert "pickle with more than plain weights" in refusal(path, config)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["vae.safetensors", "vae.pt"])
def test_truncated_and_empty_files_are_refused(
    name: str, original: AutoencoderKL, config: Path, tmp_path: Path
) -> None:
    path = tmp_path / name
    (write_safetensors if name.endswith(".safetensors") else write_bare_pt)(original, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "truncated or damaged" in refusal(path, config)
    path.write_bytes(b"")
    assert refusal(path, config).endswith(": the file is empty.")


def test_a_vae_of_another_size_is_refused(config: Path, tmp_path: Path) -> None:
    path = tmp_path / "wide.safetensors"
    write_safetensors(random_vae(block_out_channels=[64, 128, 128]), path)
    message = refusal(path, config)
    assert "encoder.conv_in.weight has shape 64x3x3x3 where the model's VAE has 32x3x3x3" in message


def test_the_tiny_vae_is_refused_by_the_full_sd_config(
    original: AutoencoderKL, tmp_path: Path
) -> None:
    path = tmp_path / "tiny.safetensors"
    write_safetensors(original, path)
    assert "it lacks weights the VAE needs: " in refusal(path, SD15_CONFIG / "vae")


def test_missing_and_unexpected_weights_are_refused_by_name(
    original: AutoencoderKL, config: Path, tmp_path: Path
) -> None:
    state = vae_to_ldm(original)
    path = tmp_path / "vae.safetensors"
    save_file({k: v.contiguous() for k, v in state.items() if k != "decoder.conv_out.bias"}, path)
    assert refusal(path, config).endswith("lacks weights the VAE needs: decoder.conv_out.bias.")
    save_file(
        {k: v.contiguous() for k, v in state.items()} | {"decoder.extra": EXTRAS["loss.logvar"]},
        path,
    )
    assert refusal(path, config).endswith("has weights a VAE has not: decoder.extra.")
    whole = {VAE_PREFIX + k: v.contiguous() for k, v in state.items()}
    whole["model.diffusion_model.out.2.bias"] = torch.zeros(4)
    save_file(whole, path)
    assert "(it is a whole model, not a VAE)" in refusal(path, config)


def test_metadata_beside_bare_weights_is_refused_like_a1111(
    original: AutoencoderKL, config: Path, tmp_path: Path
) -> None:
    path = tmp_path / "vae.pt"
    torch.save(vae_to_ldm(original) | {"epoch": 3}, path)  # no `state_dict` wrapper
    assert refusal(path, config).endswith("has weights a VAE has not: epoch.")


def test_no_weights_and_no_state_dict_are_refused(config: Path, tmp_path: Path) -> None:
    path = tmp_path / "vae.pt"
    torch.save({"state_dict": dict(EXTRAS)}, path)
    assert refusal(path, config).endswith("it holds no weights.")
    torch.save([torch.zeros(1)], path)
    assert refusal(path, config).endswith("it holds no state dict of weights.")
    folder = tmp_path / "folder"
    write_config(folder)
    assert "the folder has no diffusion_pytorch_model.safetensors" in refusal(folder, config)


# --- 3. the float16 NaN fallback --------------------------------------------------------------


def overflowing_vae(original: AutoencoderKL) -> AutoencoderKL:
    """A VAE whose decoder activations pass float16's 65504 (so its GroupNorms make NaN), and
    stay well within float32: a genuine half-precision overflow, as real VAEs have."""
    vae = copy.deepcopy(original)
    weight = vae.decoder.conv_in.weight
    weight.zero_()
    weight[:, :, 1, 1] = 20000.0  # float16-exact; 4 latents * 5.5 * 20000 > 65504
    return vae


def test_fp16_nan_falls_back_to_fp32_once(
    original: AutoencoderKL,
    config: Path,
    tmp_path: Path,
    latents: torch.Tensor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "overflow.safetensors"
    write_safetensors(overflowing_vae(original), path)
    vae = load_vae(path, config=config, dtype=torch.float16)
    reference = load_vae(path, config=config, dtype=torch.float32)
    z = (1.0 / 0.18215) * latents[:1].half()
    assert torch.isnan(vae.decode(z).sample).all()  # genuinely NaN in float16 on the CPU
    assert vae.dtype == torch.float16

    caplog.set_level(logging.WARNING, logger="engine.models.vae")
    with torch.inference_mode():  # as generate() runs it
        first = decode(vae, latents)
    second = decode(vae, latents)
    expected = decode(reference, latents)
    assert torch.isfinite(expected).all()
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert vae.dtype == torch.float32
    assert not any(p.is_inference() for p in vae.parameters())
    assert [r.getMessage() for r in caplog.records] == [NAN_WARNING]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp16_nan_falls_back_to_fp32_on_cuda(
    original: AutoencoderKL, config: Path, tmp_path: Path, latents: torch.Tensor
) -> None:
    path = tmp_path / "overflow.safetensors"
    write_safetensors(overflowing_vae(original), path)
    cuda = torch.device("cuda")
    vae = load_vae(path, config=config, dtype=torch.float16, device=cuda)
    reference = load_vae(path, config=config, dtype=torch.float32, device=cuda)
    z = (1.0 / 0.18215) * latents[:1].to(cuda, torch.float16)
    assert not torch.isfinite(vae.decode(z).sample).all()
    with torch.inference_mode():
        images = decode(vae, latents)
    assert images.device.type == "cuda" and vae.dtype == torch.float32
    assert torch.isfinite(images).all()
    torch.testing.assert_close(images, decode(reference, latents), rtol=0, atol=1e-5)


def test_fp32_nan_is_returned_as_is(
    original: AutoencoderKL, latents: torch.Tensor, caplog: pytest.LogCaptureFixture
) -> None:
    vae = copy.deepcopy(original)
    vae.decoder.conv_out.bias[0] = float("nan")
    images = decode(vae, latents)
    assert torch.isnan(images[:, 0]).all() and torch.isfinite(images[:, 1:]).all()
    assert vae.dtype == torch.float32 and not caplog.records


def test_nan_latents_do_not_convert_the_vae(
    original: AutoencoderKL, latents: torch.Tensor, caplog: pytest.LogCaptureFixture
) -> None:
    vae = copy.deepcopy(original).half()
    latents = latents.clone()
    latents[0, 0, 0, 0] = float("nan")
    assert not torch.isfinite(decode(vae, latents)[0]).all()
    assert vae.dtype == torch.float16 and not caplog.records
