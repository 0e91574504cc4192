"""The demo model: shipped trained weights that stay small and reload offline; a random builder."""

from __future__ import annotations

import dataclasses
import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from engine.demo import data as demo_data
from engine.demo.model import (
    DEMO_NAME,
    WEIGHTS_DIR,
    build_demo_pipeline,
    build_random_pipeline,
    picture_tensor,
    save_demo_model,
    save_weights,
    vae_input,
)
from engine.demo.training import Plan, _pictures_and_focus
from engine.device import DeviceOptions
from engine.models import ModelRegistry
from engine.preview import SD1_PREVIEW, PreviewMap, preview_png
from engine.prompting.tokenizer import build_tokenizer

pytestmark = pytest.mark.slow


def _state(pipe) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    return {
        f"{name}.{key}": value
        for name in ("unet", "vae", "text_encoder")
        for key, value in getattr(pipe, name).state_dict().items()
    }


def test_shipped_weights_are_a_few_megabytes_of_safetensors() -> None:
    files = sorted(p.name for p in WEIGHTS_DIR.iterdir() if p.is_file())
    assert files == [
        "text_encoder.safetensors",
        "training-log.txt",
        "unet.safetensors",
        "vae.safetensors",
    ]
    size = sum((WEIGHTS_DIR / name).stat().st_size for name in files)
    assert size < 16 * 2**20
    with safe_open(str(WEIGHTS_DIR / "unet.safetensors"), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118 (safe_open is no dict) == {torch.float16}


def test_training_log_records_the_command_and_falling_losses() -> None:
    lines = (WEIGHTS_DIR / "training-log.txt").read_text(encoding="utf-8").splitlines()
    # The shipped weights were trained before the module moved (then `engine.demo_training`).
    assert re.match(r"command: python -m engine\.demo[._]training", lines[0]), lines[0]
    losses = [float(line.split("eps MSE ")[1].split()[0]) for line in lines if "eps MSE" in line]
    assert len(losses) > 10 and losses[-1] < losses[0] / 3


def test_words_never_trained_on_add_nothing() -> None:
    """Unseen words (e.g. "sword") have zero embeddings; every caption word has its own row."""
    pipe = build_demo_pipeline()
    table = pipe.text_encoder.get_input_embeddings().weight
    tokenizer = build_tokenizer()
    for word in ("sword", "umbrella"):
        (token,) = tokenizer(word, add_special_tokens=False)["input_ids"]
        assert not table[token].any()
    for word in ("silver", "hair", "smile", "1girl", "lowres", "masterpiece"):
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        assert all(table[i].any() for i in ids)


def test_save_weights_round_trips_through_fp16(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe = build_demo_pipeline()
    save_weights(tmp_path, unet=pipe.unet, vae=pipe.vae, text_encoder=pipe.text_encoder)
    monkeypatch.setattr("engine.demo.model.WEIGHTS_DIR", tmp_path)
    again = build_demo_pipeline()
    a, b = _state(pipe), _state(again)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again.vae.config.scaling_factor == pipe.vae.config.scaling_factor


def test_vae_reconstructs_training_pictures() -> None:
    """The VAE round trip keeps a picture's colours: mean error per channel under 10 of 255.

    (Keeping only each 8x8 block's mean colour, what 16x16 latents could hold at least, errs
    by 22 of 255.)
    """
    pipe = build_demo_pipeline()
    rng = np.random.default_rng(7)
    pictures = [demo_data.draw(demo_data.random_character(rng)).image for _ in range(8)]
    x = vae_input(picture_tensor(pictures))
    with torch.no_grad():
        y = pipe.vae.decode(pipe.vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    assert float((y - x).abs().mean()) * 127.5 < 10


def test_random_builder_is_deterministic() -> None:
    a, b = _state(build_random_pipeline(0)), _state(build_random_pipeline(0))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    c = _state(build_random_pipeline(1))
    assert not torch.equal(a["unet.conv_in.weight"], c["unet.conv_in.weight"])


def test_saved_folder_reloads_the_shipped_weights_offline(
    demo_models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = demo_models_dir / DEMO_NAME
    assert sorted(p.name for p in folder.rglob("*.safetensors"))  # no pickles
    assert not list(folder.rglob("*.bin"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = ModelRegistry(demo_models_dir).load(DEMO_NAME, DeviceOptions(device="cpu"))
    built = _state(build_demo_pipeline())
    reloaded = _state(loaded.pipe)
    assert built.keys() == reloaded.keys()
    assert all(torch.equal(built[k], reloaded[k]) for k in built)
    assert len(loaded.pipe.tokenizer) == 49408
    assert loaded.defaults.width == 128 and loaded.defaults.clip_skip == 2


def test_rebuild_replaces_the_folder_atomically(tmp_path: Path) -> None:
    save_demo_model(tmp_path, random_seed=0)
    save_demo_model(tmp_path)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert list(ModelRegistry(tmp_path).models) == [DEMO_NAME]


def test_previews_of_the_demo_model_show_its_colours(demo_model) -> None:  # type: ignore[no-untyped-def]
    """Its own fitted latent → RGB map, not SD-1's: a preview's colours match the picture's."""
    rng = np.random.default_rng(11)
    pictures = [demo_data.draw(demo_data.random_character(rng)).image for _ in range(4)]
    x = vae_input(picture_tensor(pictures))
    vae = demo_model.pipe.vae
    with torch.no_grad():
        latents = vae.encode(x).latent_dist.mean * vae.config.scaling_factor

    def error(mapping: PreviewMap) -> float:
        """Mean error per channel (of 255) against the picture at the preview's size."""
        errors = []
        for picture, latent in zip(pictures, latents, strict=True):
            preview = Image.open(io.BytesIO(preview_png(latent, mapping))).convert("RGB")
            small = picture.resize(preview.size, Image.Resampling.BOX)
            errors.append(np.abs(np.asarray(preview, float) - np.asarray(small, float)).mean())
        return float(np.mean(errors))

    assert demo_model.preview != SD1_PREVIEW
    assert error(demo_model.preview) < 30 < error(SD1_PREVIEW)


def test_a_tiny_training_run_writes_weights_the_loader_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make train-demo`'s code path, shrunk to seconds: weights, log, and a model that draws."""
    from engine.demo.training import main

    args = ["--out", str(tmp_path), "--images", "32", "--vae-steps", "2", "--unet-steps", "2"]
    assert main([*args, "--unet-batch", "4", "--vae-batch", "2", "--log-every", "1"]) == 0
    log = (tmp_path / "training-log.txt").read_text(encoding="utf-8")
    assert "command: python -m engine.demo.training --out" in log and "unet step 2/2" in log
    assert not (tmp_path / "training-log.txt.partial").exists()
    monkeypatch.setattr("engine.demo.model.WEIGHTS_DIR", tmp_path)
    pipe = build_demo_pipeline()
    norm = getattr(pipe.text_encoder, "text_model", pipe.text_encoder).final_layer_norm
    assert torch.all(norm.bias == -0.5)  # fixed, so "Original" emphasis has a mean to restore


def test_every_caption_tag_is_in_the_training_vocabulary() -> None:
    """A tag missing from `caption_words` would keep a zero embedding and never be learned."""
    rng = np.random.default_rng(3)
    words = demo_data.caption_words()
    for _ in range(2000):
        character = demo_data.random_character(rng)
        assert set(demo_data.tags(character)) <= words
        assert set(demo_data.unconditional_caption(rng).split(", ")) - {""} <= words


def test_training_weights_the_region_where_expressions_differ() -> None:
    """The mouth-weighted loss covers every expression's mouth wherever the jitter puts it."""

    rng = np.random.default_rng(4)
    people = [c for c in (demo_data.random_character(rng) for _ in range(40)) if c.subject != "cat"]
    for character in people[:6]:
        region = demo_data.expression_region(character)
        for expression in demo_data.EXPRESSIONS:
            drawn = demo_data.draw(dataclasses.replace(character, expression=expression))
            mouth = drawn.mask("mouth")
            assert mouth.any() and not (mouth & ~region).any()
        assert region.sum() < 0.05 * region.size  # the mouth, not the whole face
    cat = demo_data.Character(subject="cat", hair="white")
    assert not demo_data.expression_region(cat).any()
    pair = [people[0], cat]
    _, focus = _pictures_and_focus(Plan(mouth_weight=1.0), pair, map(demo_data.draw, pair))
    latent = focus - 1
    assert latent.shape == (2, 1, 16, 16)
    assert 4 <= latent[0].sum() <= 24 and latent[1].sum() == 0


def test_training_can_weight_the_hair_and_the_background() -> None:
    """`hair_weight` / `background_weight` add weight in proportion to what each latent pixel
    shows: all of it for a latent pixel inside the hair, none for one inside the face."""
    girl = demo_data.Character(long_hair=True)
    drawing = demo_data.draw(girl)
    plan = Plan(mouth_weight=0.0, hair_weight=2.0, background_weight=1.0)
    _, focus = _pictures_and_focus(plan, [girl], [drawing])
    extra = (focus[0, 0] - 1).numpy()
    hair = drawing.mask("front hair", "back hair").reshape(16, 8, 16, 8).all(axis=(1, 3))
    background = drawing.mask("background").reshape(16, 8, 16, 8).all(axis=(1, 3))
    face = drawing.mask("face").reshape(16, 8, 16, 8).all(axis=(1, 3))
    assert hair.any() and background.any() and face.any()
    assert np.allclose(extra[hair], 2.0) and np.allclose(extra[background], 1.0)
    assert np.allclose(extra[face], 0.0)


def test_a_resumed_run_keeps_the_vae_and_trains_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--resume` (the shipped weights' second part) goes on from the given weights."""
    from engine.demo.training import main

    monkeypatch.setattr("engine.demo.training.RESUME_PLAN", Plan(images=16, unet_batch=4))
    out = tmp_path / "resumed"
    assert main(["--resume", str(WEIGHTS_DIR), "--out", str(out), "--unet-steps", "2"]) == 0
    log = (out / "training-log.txt").read_text(encoding="utf-8")
    earlier = (WEIGHTS_DIR / "training-log.txt").read_text(encoding="utf-8")
    assert log.startswith(earlier)  # the weights' whole story, from the first part's first step
    assert f"command: python -m engine.demo.training --resume {WEIGHTS_DIR}" in log
    assert f"resumed from {WEIGHTS_DIR}" in log and log.endswith("\n")
    vae = (out / "vae.safetensors").read_bytes()
    assert vae == (WEIGHTS_DIR / "vae.safetensors").read_bytes()
    unet = (out / "unet.safetensors").read_bytes()
    assert unet != (WEIGHTS_DIR / "unet.safetensors").read_bytes()


def test_the_background_reader_reads_training_backgrounds() -> None:
    """The binding tests' background reader is right on the girls trained on, in colour."""
    rng = np.random.default_rng(6)
    girls = [
        c
        for c in (demo_data.random_character(rng) for _ in range(200))
        if c.subject == "1girl" and not c.monochrome and "hat" not in c.accessories
    ]
    read = [demo_data.background_colour(demo_data.draw(c).image) for c in girls]
    assert read == [c.background for c in girls]
    assert {c.background for c in girls} == set(demo_data.BACKGROUNDS)


def test_the_mouth_reader_reads_every_training_expression() -> None:
    """The semantics tests' smile/frown/open-mouth detector is right on the pictures trained on."""
    rng = np.random.default_rng(5)
    people = [
        c
        for c in (demo_data.random_character(rng) for _ in range(300))
        if c.subject != "cat" and not c.monochrome
    ]
    read = [demo_data.expression(demo_data.draw(c).image) for c in people]
    assert read == [c.expression for c in people]
    assert {c.expression for c in people} == set(demo_data.EXPRESSIONS)
