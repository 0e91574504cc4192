"""The CLIP tokenizer built offline must give exactly CLIP's token ids."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from engine.prompting.tokenizer import VOCAB_SIZE, build_tokenizer, find_bpe_file


@pytest.fixture(scope="module")
def clip_reference():  # type: ignore[no-untyped-def]
    """open_clip's SimpleTokenizer (CLIP's reference code), loaded without open_clip/__init__."""
    path = Path(find_bpe_file()).parent / "tokenizer.py"
    spec = importlib.util.spec_from_file_location("_open_clip_tokenizer", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.SimpleTokenizer()


PROMPTS = [
    "a photo of a cat",
    "1girl, silver hair, long hair, blue eyes, smile, hat, red background",
    "masterpiece, best quality, (smile:1.2), [frown], {{silver hair}}",
    "asuka langley sitting cross legged on a chair",
    "lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits",
    "Hatsune Miku 初音ミク, 🎨 painting!!! 3.5 x2 12345 don't it's",
    "artist:wlop, by greg-rutkowski; UPPER case\tand\nnewlines",
]


def test_vocabulary_has_clip_size() -> None:
    tokenizer = build_tokenizer()
    assert len(tokenizer) == VOCAB_SIZE
    assert tokenizer.model_max_length == 77
    assert tokenizer.bos_token_id == 49406 and tokenizer.eos_token_id == 49407


@pytest.mark.parametrize("prompt", PROMPTS)
def test_ids_match_clip_reference(clip_reference, prompt: str) -> None:  # type: ignore[no-untyped-def]
    ours = build_tokenizer()(prompt).input_ids
    theirs = [49406, *clip_reference.encode(prompt), 49407]
    assert ours == theirs


def test_known_ids() -> None:
    # Ids every SD user has seen in A1111's token counter / CLIP's own README example.
    assert build_tokenizer()("a photo of a cat").input_ids == [
        49406,
        320,
        1125,
        539,
        320,
        2368,
        49407,
    ]


def test_pads_to_77_with_eos() -> None:
    ids = build_tokenizer()("1girl", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and ids[-1] == 49407 and ids[3:] == [49407] * 74


@pytest.mark.parametrize("prompt", PROMPTS)
def test_the_light_tokenizer_gives_the_pipelines_ids_and_chunks(prompt: str) -> None:
    from engine.prompting.chunks import prompt_chunks
    from engine.prompting.tokenizer import ClipBpe

    light, full = ClipBpe(), build_tokenizer()
    ids = light([prompt], truncation=False, add_special_tokens=False, verbose=False)
    assert ids["input_ids"] == [full(prompt, add_special_tokens=False).input_ids]
    long = ", ".join([prompt] * 12) + " BREAK (cat:1.3)"
    assert prompt_chunks(light, long) == prompt_chunks(full, long)
    assert light.convert_ids_to_tokens([320, 1125]) == full.convert_ids_to_tokens([320, 1125])
