"""The add-on library and the registry's add-on rules: what a user drops into models/ is found
under A1111's names, each model's default VAE and hypernetwork, and the door check that names
what is missing."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from engine.checks import check_request
from engine.errors import InvalidRequest, ModelNotFound
from engine.models import ModelRegistry
from engine.models.checkpoints import OVERRIDES_NAME
from engine.request import GenerationRequest, Limits

DEMO = "aidraw-demo"


def _touch(path: Path, data: bytes = b"x" * 64) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def models(tmp_path: Path, demo_models_dir: Path) -> Path:
    """A models dir with the demo model (a diffusers folder) and A1111's add-on folders."""
    os.symlink(demo_models_dir / DEMO, tmp_path / DEMO)
    _touch(tmp_path / "nai.safetensors")  # a checkpoint (never loaded here)
    _touch(tmp_path / "nai.vae.pt")  # its VAE, beside it (A1111 `sd_vae` "Automatic")
    _touch(tmp_path / "VAE" / "animevae.pt")
    _touch(tmp_path / "VAE" / "sub" / "kl-f8-anime2.safetensors")
    _touch(tmp_path / "hypernetworks" / "anime.pt")
    _touch(tmp_path / "hypernetworks" / "furry_2.pt")
    _touch(tmp_path / "embeddings" / "bad_prompt.pt")
    _touch(tmp_path / "Lora" / ".hidden" / "skipped.safetensors")
    return tmp_path


def test_files_are_found_under_a1111s_names(models: Path) -> None:
    registry = ModelRegistry(models)
    # A VAE beside a checkpoint is a VAE, never a model named "nai.vae".
    assert sorted(registry.models) == [DEMO, "nai"]
    # VAEs are named by file name with extension, as A1111 writes `VAE: animevae.pt`.
    assert registry.addon_names("VAE") == ["nai.vae.pt", "animevae.pt", "kl-f8-anime2.safetensors"]
    assert registry.addon_names("hypernetwork") == ["anime", "furry_2"]
    assert registry.addon_names("embedding") == ["bad_prompt"]
    assert registry.addon_names("LoRA") == []  # dot folders are skipped
    # The checkpoint gets its paired VAE; the demo model (nothing paired) its own.
    assert registry.models["nai"].defaults.vae == "nai.vae.pt"
    assert registry.models[DEMO].defaults.vae == "None"


def test_a_diffusers_vae_folder_is_one_vae_named_by_its_folder(models: Path) -> None:
    folder = models / "VAE" / "sd-vae-ft-mse"
    _touch(folder / "config.json", b"{}")
    _touch(folder / "diffusion_pytorch_model.safetensors")
    _touch(models / "VAE" / "notes.txt")
    vaes = ModelRegistry(models).addon_names("VAE")
    assert "sd-vae-ft-mse" in vaes and "diffusion_pytorch_model.safetensors" not in vaes
    assert "notes.txt" not in vaes


def test_a_vae_is_found_by_stem_and_a_missing_one_lists_what_is_here(models: Path) -> None:
    library = ModelRegistry(models).addons
    assert library.find("VAE", "animevae").name == "animevae.pt"
    assert library.find("VAE", "AnimeVAE.pt").name == "animevae.pt"
    assert library.find("VAE", "nai").name == "nai.vae.pt"
    with pytest.raises(ModelNotFound) as caught:
        library.find("VAE", "animvae")
    assert "Did you mean: animevae.pt" in str(caught.value)
    assert "Installed: nai.vae.pt, animevae.pt, kl-f8-anime2.safetensors" in str(caught.value)


def test_the_door_names_every_missing_addon_and_resolves_the_vae(models: Path) -> None:
    registry = ModelRegistry(models)
    limits = Limits()
    entry = registry.models["nai"]

    def checked(prompt: str, **fields: object) -> GenerationRequest:
        request = GenerationRequest(prompt=prompt, model="nai", **fields)  # type: ignore[arg-type]
        return registry.check_addons(check_request(request, limits, entry.defaults))

    assert checked("1girl").vae == "nai.vae.pt"  # the model's default
    assert checked("1girl", vae="animevae").vae == "animevae.pt"
    assert checked("1girl", vae="None").vae == "None"
    assert checked("1girl", vae="Automatic").vae == "nai.vae.pt"
    assert checked("1girl <hypernet:anime:0.5>").prompt == "1girl <hypernet:anime:0.5>"
    with pytest.raises(ModelNotFound) as one:
        checked("1girl <lora:ghibli:0.8>")
    assert str(one.value).startswith("Unknown LoRA 'ghibli'.")
    with pytest.raises(InvalidRequest) as several:
        checked("1girl <lora:ghibli:0.8> <hypernet:aini>", vae="blessed2.vae.pt")
    message = str(several.value)
    assert "VAE blessed2.vae.pt, LoRA ghibli, hypernetwork aini" in message
    assert "\n" not in message


def test_model_defaults_come_from_its_file_then_the_admin(models: Path) -> None:
    (models / f"{DEMO}.toml").write_text(
        '[defaults]\nvae = "animevae.pt"\nhypernet = "anime:0.5"\n', encoding="utf-8"
    )
    registry = ModelRegistry(models)
    defaults = registry.models[DEMO].defaults
    assert (defaults.vae, defaults.hypernet) == ("animevae.pt", "anime:0.5")
    # The default hypernetwork is appended as A1111's `sd_hypernetwork` setting does, unless
    # the prompt names that one itself.
    req = check_request(GenerationRequest(prompt="1girl", model=DEMO), Limits(), defaults)
    assert req.prompt == "1girl<hypernet:anime:0.5>"
    again = check_request(req, Limits(), defaults)
    assert again.prompt == req.prompt
    own = check_request(
        GenerationRequest(prompt="1girl <hypernet:anime:0>", model=DEMO), Limits(), defaults
    )
    assert own.prompt == "1girl <hypernet:anime:0>"

    # An admin's choice wins over the file and survives a restart (a new registry).
    registry.set_addon_defaults(DEMO, vae="kl-f8-anime2", hypernet="furry_2")
    for fresh in (registry, ModelRegistry(models)):
        defaults = fresh.models[DEMO].defaults
        assert (defaults.vae, defaults.hypernet) == ("kl-f8-anime2.safetensors", "furry_2")
    with pytest.raises(ModelNotFound):
        registry.set_addon_defaults(DEMO, vae="missing.pt")
    with pytest.raises(InvalidRequest, match="weight 'x' is not allowed"):
        registry.set_addon_defaults(DEMO, hypernet="anime:x")
    assert registry.models[DEMO].defaults.vae == "kl-f8-anime2.safetensors"
    registry.set_addon_defaults(DEMO, vae="none", hypernet="None")
    defaults = registry.models[DEMO].defaults
    assert (defaults.vae, defaults.hypernet) == ("None", "")


def test_one_bad_admin_record_skips_only_itself(models: Path) -> None:
    (models / OVERRIDES_NAME).write_text(
        json.dumps({DEMO: {"vae": "gone.pt", "hypernet": "anime"}, "nai": {"vae": "None"}}),
        encoding="utf-8",
    )
    registry = ModelRegistry(models)
    assert registry.models[DEMO].defaults.hypernet == "anime"
    assert registry.models[DEMO].defaults.vae == "None"  # gone.pt: skipped, said in problems
    assert registry.models["nai"].defaults.vae == "None"
    assert any("gone.pt" in problem for problem in registry.problems)
    (models / OVERRIDES_NAME).write_text("{not json", encoding="utf-8")
    assert ModelRegistry(models).models[DEMO].defaults.vae == "None"


def test_short_hashes_are_a1111s(models: Path) -> None:
    library = ModelRegistry(models).addons
    vae = library.find("VAE", "animevae.pt")
    data = vae.path.read_bytes()
    assert library.short_hash(vae) == hashlib.sha256(data).hexdigest()[:10]
    embedding = library.find("embedding", "bad_prompt")
    assert library.short_hash(embedding) == hashlib.sha256(data).hexdigest()[:12]
