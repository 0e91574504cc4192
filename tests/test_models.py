"""The model registry: what users drop into models/ is found, named, hashed and loaded offline."""

from __future__ import annotations

import hashlib
import io
import os
import shlex
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from engine.errors import InvalidRequest, ModelNotFound
from engine.generate import generate
from engine.models import SD15_CONFIG, LoadedModel, ModelRegistry, check_ckpt
from engine.preview import SD1_PREVIEW
from engine.request import GenerationRequest, Limits
from tests.ldm_layout import (
    CLIP_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    text_encoder_to_ldm,
    to_ldm_state_dict,
    unet_to_ldm,
    vae_to_ldm,
    write_a1111_checkpoint,
)

DEMO = "aidraw-demo"
SINGLE = "aidraw-a1111"
REQUEST = GenerationRequest(
    prompt="1girl, (masterpiece:1.2), cherry blossoms",
    negative_prompt="lowres",
    width=64,
    height=64,
    num_inference_steps=4,
    guidance_scale=7.0,
    sampler="Euler a",
    clip_skip=1,
    seed=1234,
)
# diffusers 0.42's schedulers call np.array() on a torch tensor, which numpy 2 + torch 2.13
# deprecate; harmless, and not ours to fix.
NUMPY_COPY_WARNING = (
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def a1111_models_dir(demo_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir as a user would have it: the demo folder plus an A1111 single file of it."""
    from engine.demo.model import build_demo_pipeline

    models_dir = tmp_path_factory.mktemp("a1111-models")
    (models_dir / DEMO).symlink_to(demo_models_dir / DEMO, target_is_directory=True)
    write_a1111_checkpoint(build_demo_pipeline(), models_dir / f"{SINGLE}.safetensors")
    (models_dir / f"{SINGLE}.toml").write_text(f'config = "{DEMO}"\n', encoding="utf-8")
    return models_dir


@pytest.fixture(scope="module")
def loaded_pair(a1111_models_dir: Path) -> Iterator[tuple[LoadedModel, LoadedModel]]:
    """(diffusers folder, A1111 single file) loaded with the hub offline and sockets refused."""
    attempts: list[Any] = []

    def refuse(self: socket.socket, address: Any) -> None:
        attempts.append(address)
        raise OSError(f"network access in an offline test: {address!r}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
        mp.setattr(socket.socket, "connect", refuse)
        registry = ModelRegistry(a1111_models_dir)
        pair = (registry.load(DEMO), registry.load(SINGLE))
    assert attempts == []
    yield pair


def pixels(png: bytes) -> np.ndarray:
    """Decoded RGB pixels as int16, so that differences do not wrap around."""
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


# --- A1111 single-file checkpoints ----------------------------------------------------------


@pytest.mark.slow
def test_a1111_single_file_is_listed_with_its_sidecar_config(a1111_models_dir: Path) -> None:
    registry = ModelRegistry(a1111_models_dir)

    assert registry.problems == []
    assert sorted(registry.models) == [SINGLE, DEMO]
    entry = registry.get(SINGLE)
    assert entry.kind == "single_file"
    assert entry.config == (a1111_models_dir / DEMO).resolve()


@pytest.mark.slow
@pytest.mark.filterwarnings(NUMPY_COPY_WARNING)
def test_a1111_single_file_draws_the_same_pixels_as_its_diffusers_folder(
    loaded_pair: tuple[LoadedModel, LoadedModel],
) -> None:
    folder, single = loaded_pair

    [from_folder] = generate(folder, [REQUEST], limits=Limits())
    [from_single] = generate(single, [REQUEST], limits=Limits())

    a, b = pixels(from_folder.png), pixels(from_single.png)
    assert a.shape == b.shape == (64, 64, 3)
    assert a.std() > 0  # a real image, not a blank one that would match anything
    assert np.abs(a - b).max() <= 1
    assert from_single.seed == from_folder.seed == 1234
    assert f"Model: {SINGLE}" in from_single.infotext


@pytest.mark.slow
def test_a1111_single_file_loads_back_every_tensor_exactly(
    a1111_models_dir: Path, loaded_pair: tuple[LoadedModel, LoadedModel]
) -> None:
    folder, single = loaded_pair
    # The file holds exactly what the converter produced…
    written = load_file(str(a1111_models_dir / f"{SINGLE}.safetensors"))
    expected = to_ldm_state_dict(folder.pipe)
    assert set(written) == set(expected)
    for key, tensor in expected.items():
        assert torch.equal(written[key], tensor), key

    # …and diffusers' own single-file loader turns it back into the very same weights.
    for part in ("unet", "vae", "text_encoder"):
        want = getattr(folder.pipe, part).state_dict()
        got = getattr(single.pipe, part).state_dict()
        assert set(got) == set(want), part
        for key, tensor in want.items():
            assert got[key].device.type != "meta", f"{part}.{key} was never loaded"
            assert torch.equal(got[key], tensor), f"{part}.{key}"


@pytest.mark.slow
def test_a1111_layout_uses_ldm_names() -> None:
    from engine.demo.model import build_random_pipeline

    state = to_ldm_state_dict(build_random_pipeline(0))  # its VAE has SD's mid-block attention

    prefixes = {UNET_PREFIX, VAE_PREFIX, CLIP_PREFIX}
    assert all(any(k.startswith(p) for p in prefixes) for k in state)
    assert f"{CLIP_PREFIX}embeddings.token_embedding.weight" in state
    assert f"{CLIP_PREFIX}final_layer_norm.weight" in state
    # VAE attention is a 1x1 convolution in LDM, a linear layer in diffusers.
    assert state[f"{VAE_PREFIX}decoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)
    assert state[f"{VAE_PREFIX}encoder.mid.attn_1.proj_out.weight"].shape == (64, 64, 1, 1)


def _sd15_unet_ldm_keys() -> set[str]:
    """SD-1.5's UNet keys as LDM's openaimodel.py names them, listed from its block layout."""

    def resblock(prefix: str, *, skip: bool) -> list[str]:
        parts = ["in_layers.0", "in_layers.2", "emb_layers.1", "out_layers.0", "out_layers.3"]
        parts += ["skip_connection"] if skip else []
        return [f"{prefix}.{p}.{wb}" for p in parts for wb in ("weight", "bias")]

    def transformer(prefix: str) -> list[str]:
        keys = [
            f"{prefix}.{p}.{wb}"
            for p in ("norm", "proj_in", "proj_out")
            for wb in ("weight", "bias")
        ]
        block = f"{prefix}.transformer_blocks.0"
        for attn in ("attn1", "attn2"):
            keys += [f"{block}.{attn}.to_{x}.weight" for x in "qkv"]
            keys += [f"{block}.{attn}.to_out.0.{wb}" for wb in ("weight", "bias")]
        for p in ("norm1", "norm2", "norm3", "ff.net.0.proj", "ff.net.2"):
            keys += [f"{block}.{p}.{wb}" for wb in ("weight", "bias")]
        return keys

    def conv(prefix: str) -> list[str]:
        return [f"{prefix}.weight", f"{prefix}.bias"]

    keys = conv("time_embed.0") + conv("time_embed.2") + conv("input_blocks.0.0")
    keys += conv("out.0") + conv("out.2")
    # input_blocks 1–11: (resnet has a skip connection, has attention) or "down".
    inputs = [(False, True), (False, True), "down", (True, True), (False, True), "down"]
    inputs += [(True, True), (False, True), "down", (False, False), (False, False)]
    for i, kind in enumerate(inputs, start=1):
        if kind == "down":
            keys += conv(f"input_blocks.{i}.0.op")
            continue
        skip, attention = kind
        keys += resblock(f"input_blocks.{i}.0", skip=skip)
        keys += transformer(f"input_blocks.{i}.1") if attention else []
    keys += resblock("middle_block.0", skip=False) + transformer("middle_block.1")
    keys += resblock("middle_block.2", skip=False)
    # output_blocks 0–11: every resnet takes a concatenated skip input, so has a skip
    # connection; attention from block 3 on; upsamplers at the end of levels 0–2.
    for i in range(12):
        keys += resblock(f"output_blocks.{i}.0", skip=True)
        keys += transformer(f"output_blocks.{i}.1") if i >= 3 else []
    keys += conv("output_blocks.2.1.conv") + conv("output_blocks.5.2.conv")
    keys += conv("output_blocks.8.2.conv")
    return {UNET_PREFIX + k for k in keys}


def test_sd15_layout_matches_ldm_names_without_allocating_weights() -> None:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(
            UNet2DConditionModel.load_config(SD15_CONFIG / "unet")
        )
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SD15_CONFIG / "vae"))
        text_encoder = CLIPTextModel(
            CLIPTextConfig.from_json_file(SD15_CONFIG / "text_encoder" / "config.json")
        )

    unet_keys = {UNET_PREFIX + k for k in unet_to_ldm(unet)}
    assert len(unet_keys) == 686  # as in v1-5-pruned.safetensors
    assert unet_keys == _sd15_unet_ldm_keys()
    for key in (
        "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
        "middle_block.1.proj_in.weight",
        "output_blocks.11.1.proj_out.weight",
        "out.2.weight",
    ):
        assert UNET_PREFIX + key in unet_keys

    vae_state = vae_to_ldm(vae)
    assert len(vae_state) == 248  # first_stage_model.* in v1-5-pruned.safetensors
    assert vae_state["decoder.mid.attn_1.k.weight"].shape == (512, 512, 1, 1)
    assert "decoder.up.3.upsample.conv.weight" in vae_state  # lowest resolution level is up.3
    assert "decoder.up.0.block.0.nin_shortcut.weight" in vae_state  # 256 → 128 channels
    assert "decoder.up.0.upsample.conv.weight" not in vae_state

    clip_keys = set(text_encoder_to_ldm(text_encoder)) - {"text_model.embeddings.position_ids"}
    assert len(clip_keys) == 196  # 12 layers × 16 + embeddings 2 + final norm 2
    assert "text_model.encoder.layers.11.self_attn.q_proj.weight" in clip_keys


# --- names ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["../aidraw-demo", "sub/aidraw-demo", "sub\\aidraw-demo", "..", "/etc/passwd"]
)
def test_path_like_model_names_are_refused(demo_models_dir: Path, name: str) -> None:
    registry = ModelRegistry(demo_models_dir)

    with pytest.raises(InvalidRequest, match="not a path") as raised:
        registry.get(name)
    assert not isinstance(raised.value, ModelNotFound)
    assert raised.value.field == "model"


@pytest.mark.slow
def test_unknown_model_name_suggests_a_close_match(demo_models_dir: Path) -> None:
    registry = ModelRegistry(demo_models_dir)

    with pytest.raises(ModelNotFound) as raised:
        registry.get("aidraw-dem")
    assert raised.value.suggestions == (DEMO,)
    assert "Did you mean: aidraw-demo?" in str(raised.value)

    with pytest.raises(ModelNotFound) as raised:
        registry.load("no-such-model")
    assert "no-such-model" in str(raised.value)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["AIDRAW-DEMO", "Aidraw-Demo", DEMO])
def test_model_names_match_case_insensitively(demo_models_dir: Path, name: str) -> None:
    registry = ModelRegistry(demo_models_dir)

    assert registry.get(name).name == DEMO


# --- pickled .ckpt files --------------------------------------------------------------------


class Gadget:
    """A plain object that is not a tensor: loading it would need arbitrary unpickling."""

    def __init__(self) -> None:
        self.colour = "red"


class Payload:
    """Runs a shell command when unpickled, as a malicious checkpoint would."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


@pytest.mark.parametrize("kind", ["object", "code"])
def test_pickle_with_more_than_tensors_is_refused(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "pwned"
    evil: object = Payload(marker) if kind == "code" else Gadget()
    ckpt = tmp_path / "models" / "evil.ckpt"
    ckpt.parent.mkdir()
    torch.save({"state_dict": {"w": torch.zeros(2)}, "evil": evil}, ckpt)
    registry = ModelRegistry(ckpt.parent)
    assert "evil" in registry.models  # listed, so that the refusal is what users see

    with pytest.raises(InvalidRequest, match=r"Refusing evil\.ckpt") as raised:
        registry.load("evil")
    assert "could run code" in str(raised.value)
    assert not marker.exists()


def test_ckpt_with_only_tensors_passes_the_check(tmp_path: Path) -> None:
    ckpt = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {"w": torch.ones(3, 3), "b": torch.zeros(3)}, "global_step": 7}, ckpt)

    check_ckpt(ckpt)  # does not raise


# --- sidecar .toml --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sidecar", "named"),
    [
        ('colour = "red"\n', "colour"),
        ("[defaults]\nstepz = 20\n", "defaults.stepz"),
        ("[preview]\nlatent_rgb = [[1, 2]]\n", "preview.latent_rgb[0]: expected a list of 3"),
        ("[preview]\nbias = [0, 0, 0]\ngain = 2\n", "preview.gain: unknown key"),
        ("[preview]\nlatent_rgb = []\n", "preview.latent_rgb: needs one [r, g, b]"),
    ],
)
def test_sidecar_with_unknown_key_skips_the_model_and_names_the_key(
    tmp_path: Path, sidecar: str, named: str
) -> None:
    save_file({"w": torch.zeros(2)}, str(tmp_path / "mymodel.safetensors"))
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    (tmp_path / "mymodel.toml").write_text(sidecar, encoding="utf-8")

    registry = ModelRegistry(tmp_path)

    assert list(registry.models) == ["other"]
    [problem] = registry.problems
    assert problem.startswith("mymodel.toml:")
    assert named in problem


def test_sidecar_defaults_apply_to_their_model(tmp_path: Path) -> None:
    save_file({"w": torch.zeros(2)}, str(tmp_path / "mymodel.safetensors"))
    (tmp_path / "mymodel.toml").write_text("[defaults]\nwidth = 640\nclip_skip = 1\n")

    entry = ModelRegistry(tmp_path).get("mymodel")

    assert (entry.defaults.width, entry.defaults.clip_skip, entry.defaults.height) == (640, 1, 768)


def test_sidecar_preview_map_replaces_sd1s(tmp_path: Path) -> None:
    save_file({"w": torch.zeros(2)}, str(tmp_path / "mine.safetensors"))
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    rows = "[[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]]"
    (tmp_path / "mine.toml").write_text(f"[preview]\nlatent_rgb = {rows}\nbias = [0.5, 0, -0.5]\n")

    registry = ModelRegistry(tmp_path)

    mine = registry.get("mine").preview
    assert mine.latent_rgb[0] == (1.0, 0.0, 0.0) and mine.bias == (0.5, 0.0, -0.5)
    assert registry.get("plain").preview == SD1_PREVIEW


# --- model hash -----------------------------------------------------------------------------


def test_model_hash_is_a1111_sha256_and_follows_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "mymodel.safetensors"
    save_file({"w": torch.arange(16, dtype=torch.float32)}, str(path))
    registry = ModelRegistry(tmp_path)
    entry = registry.get("mymodel")

    first = registry.model_hash(entry)
    assert first == hashlib.sha256(path.read_bytes()).hexdigest()[:10]
    assert ModelRegistry(tmp_path).model_hash(entry) == first  # from the cache, same answer

    # A retrained model of the same architecture: same size, new weights, newer file.
    stat = path.stat()
    save_file({"w": torch.arange(16, dtype=torch.float32) + 1}, str(path))
    assert path.stat().st_size == stat.st_size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))

    second = registry.model_hash(entry)
    assert second == hashlib.sha256(path.read_bytes()).hexdigest()[:10]
    assert second != first


def test_models_are_found_by_a1111_hashes_new_and_old(
    demo_models_dir: Path, tmp_path: Path
) -> None:
    import shutil

    shutil.copytree(demo_models_dir / "aidraw-demo", tmp_path / "mine")
    registry = ModelRegistry(tmp_path)
    entry = registry.get("mine")
    old = registry.legacy_hash(entry)  # NAI-era infotexts: 8 hex from 64 KiB at 1 MiB
    assert len(old) == 8 and registry.by_hash(old) is entry
    new = ModelRegistry(tmp_path).model_hash(entry)
    assert registry.by_hash(new) is entry and registry.by_hash(new.upper()) is entry
    assert registry.by_hash("0123456789") is None and registry.by_hash("12") is None
