"""Add-ons end to end on the demo model: a VAE file, a hypernetwork, LoRAs and an embedding in
A1111's formats drawn through generate(), their infotext, pasting it back, and bad files."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch

from bot.parse import parse_request
from engine.device import DeviceOptions
from engine.errors import BadAddonFile, InvalidRequest
from engine.generate import generate
from engine.models import LoadedModel, ModelRegistry
from engine.request import GenerationRequest, GenerationResult, Limits
from tests.addon_files import (
    word_vectors,
    write_embedding,
    write_hypernetwork,
    write_lora,
    write_vae,
)
from tests.conftest import png_pixels

pytestmark = pytest.mark.slow
DEMO = "aidraw-demo"
BASE = GenerationRequest(
    prompt="1girl, red hair, smile",
    negative_prompt="lowres",
    width=64,
    height=64,
    num_inference_steps=4,
    seed=77,
    model=DEMO,
)


@pytest.fixture(scope="module")
def model(demo_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """The demo model in a models dir with add-on files written for it."""
    models = tmp_path_factory.mktemp("models")
    os.symlink(demo_models_dir / DEMO, models / DEMO)
    plain = ModelRegistry(demo_models_dir).load(DEMO, DeviceOptions(device="cpu")).pipe
    write_vae(models / "VAE" / "same.safetensors", plain)
    write_vae(models / "VAE" / "warm.safetensors", plain, shift=0.05)
    write_hypernetwork(models / "hypernetworks" / "anime.pt", (64,), scale=0.2)
    write_lora(models / "Lora" / "style.safetensors", plain, metadata={"ss_output_name": "sty"})
    write_lora(models / "Lora" / "other.safetensors", plain, seed=1)
    write_embedding(models / "embeddings" / "redhead.pt", word_vectors(plain, "red hair"))
    write_lora(models / "Lora" / "huge.safetensors", _wide_pipe(plain))
    return ModelRegistry(models).load(DEMO, DeviceOptions(device="cpu"))


def _wide_pipe(pipe):  # type: ignore[no-untyped-def]
    """A stand-in whose text encoder is wider than the demo's: its LoRA cannot fit."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(**{**pipe.text_encoder.config.to_dict(), "hidden_size": 96})
    return _Pipe(pipe.unet, CLIPTextModel(config))


@dataclasses.dataclass
class _Pipe:
    unet: torch.nn.Module
    text_encoder: torch.nn.Module


def draw(model: LoadedModel, **changes: object) -> GenerationResult:
    request = dataclasses.replace(BASE, **changes)  # type: ignore[arg-type]
    return generate(model, [request], limits=Limits())[0]


def same_pixels(a: GenerationResult, b: GenerationResult) -> bool:
    return bool((png_pixels(a.png) == png_pixels(b.png)).all())


def test_weight_zero_and_the_checkpoints_own_vae_change_nothing(model: LoadedModel) -> None:
    plain = draw(model)
    assert "VAE" not in plain.infotext and "Lora hashes" not in plain.infotext
    for prompt in (
        BASE.prompt + " <lora:style:0>",
        BASE.prompt + " <hypernet:anime:0>",
        "<lora:style:0><lora:other:0>" + BASE.prompt,
    ):
        assert same_pixels(draw(model, prompt=prompt), plain), prompt
    same_vae = draw(model, vae="same")  # the demo's own VAE, written as an A1111 file
    assert same_pixels(same_vae, plain)
    assert ", VAE hash: " in same_vae.infotext and ", VAE: same.safetensors," in same_vae.infotext


def test_each_addon_changes_the_picture_and_says_so_in_the_infotext(model: LoadedModel) -> None:
    plain = draw(model)
    lora = draw(model, prompt=BASE.prompt + " <lora:style:1>")
    hypernet = draw(model, prompt=BASE.prompt + "<hypernet:anime:1>")
    warm = draw(model, vae="warm.safetensors")
    for other in (lora, hypernet, warm):
        assert not same_pixels(other, plain)
    style_hash = model.addons._library.short_hash(model.addons._library.find("LoRA", "style"))
    assert f'Lora hashes: "style: {style_hash}"' in lora.infotext
    assert lora.infotext.splitlines()[0].endswith("<lora:style:1>")  # the tag stays (A1111)
    assert hypernet.infotext.splitlines()[0].endswith("<hypernet:anime:1>")
    # The LoRA's alias (its ss_output_name) names the same file.
    alias = draw(model, prompt=BASE.prompt + " <lora:sty:1>")
    assert same_pixels(alias, lora)
    # Undone exactly: the plain picture again, bit for bit, after 3 swaps.
    for prompt in ("<lora:other:1>", "<lora:style:0.5><lora:other:-1>", ""):
        draw(model, prompt=BASE.prompt + prompt)
    assert draw(model).png == plain.png


def test_an_embedding_of_words_draws_what_the_words_draw(model: LoadedModel) -> None:
    words = draw(model, prompt="1girl, red hair, smile")
    embedded = draw(model, prompt="1girl, redhead, smile")
    assert same_pixels(embedded, words)
    assert "TI hashes: " in embedded.infotext and "redhead: " in embedded.infotext
    assert "TI hashes" not in words.infotext
    negative = draw(model, prompt="1girl", negative_prompt="redhead")
    assert same_pixels(negative, draw(model, prompt="1girl", negative_prompt="red hair"))


def test_a_pasted_infotext_draws_the_same_picture(model: LoadedModel) -> None:
    first = draw(
        model,
        prompt="1girl, redhead <lora:style:0.7> <hypernet:anime:0.5>",
        vae="warm.safetensors",
    )
    for key in ("Lora hashes", "TI hashes", "VAE hash", "VAE"):
        assert f"{key}: " in first.infotext
    pasted = parse_request(first.infotext)
    again = generate(model, [dataclasses.replace(pasted, model=DEMO)], limits=Limits())[0]
    assert again.png == first.png


def test_a_bad_file_is_refused_in_one_line_and_the_model_keeps_drawing(
    model: LoadedModel,
) -> None:
    plain = draw(model)
    with pytest.raises(BadAddonFile) as caught:
        draw(model, prompt=BASE.prompt + "<lora:style:1><lora:huge:1>")
    message = str(caught.value)
    assert message.startswith("Cannot use the LoRA huge.safetensors: ") and "\n" not in message
    assert draw(model).png == plain.png  # nothing was half-applied
    with pytest.raises(InvalidRequest, match="Unknown LoRA 'missing'"):
        draw(model, prompt=BASE.prompt + "<lora:missing:1>")


def test_requests_with_other_addons_never_share_a_batch(model: LoadedModel) -> None:
    a = dataclasses.replace(BASE, prompt="1girl <lora:style:1>")
    b = dataclasses.replace(BASE, prompt="1girl <lora:other:1>")
    with pytest.raises(ValueError, match="extra networks"):
        generate(model, [a, b], limits=Limits())
    with pytest.raises(ValueError, match="vae"):
        generate(model, [BASE, dataclasses.replace(BASE, vae="warm.safetensors")], limits=Limits())


def test_add_on_files_read_from_disk_are_counted_once_while_unchanged(
    model: LoadedModel,
) -> None:
    library = model.addons._library
    lora, hypernet = library.find("LoRA", "other"), library.find("hypernetwork", "anime")
    vae = library.find("VAE", "warm.safetensors")
    for file in (lora, hypernet, vae):  # a new file (as after an edit) is read again
        os.utime(file.path, ns=(file.path.stat().st_atime_ns, file.path.stat().st_mtime_ns + 1))
    before = dict(model.addons.loads)
    for _ in range(2):
        draw(model, prompt=BASE.prompt + " <lora:other:0.5><hypernet:anime:0.5>", vae=vae.name)
    after = dict(model.addons.loads)  # what /metrics reports as aidraw_extra_network_loads
    assert {kind: after[kind] - before[kind] for kind in after} == {
        "LoRA": 1,
        "hypernetwork": 1,
        "VAE": 1,
    }
