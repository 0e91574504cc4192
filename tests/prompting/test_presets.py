"""NovelAI presets: quality tags, undesired-content presets, size names."""

from __future__ import annotations

import pytest

from engine.errors import InvalidRequest
from engine.prompting.presets import (
    NAI_SIZES,
    nai_size,
    nai_size_names,
    uc_preset_name,
    uc_preset_of,
    with_quality_tags,
    with_uc_preset,
)

# NAI v1's own texts (shared/notes/a1111-nai.md §5).
LQBA = (
    "lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, "
    "cropped, worst quality, low quality, normal quality, jpeg artifacts, signature, watermark, "
    "username, blurry"
)
LQ = (
    "lowres, text, cropped, worst quality, low quality, normal quality, jpeg artifacts, "
    "signature, watermark, username, blurry"
)


def test_quality_tags_come_first_as_on_nai() -> None:
    # NAI prepends (the community's Asuka parity prompt starts this way); koishi appends.
    assert with_quality_tags("masterpiece, asuka langley sitting cross legged on a chair") == (
        "masterpiece, best quality, masterpiece, asuka langley sitting cross legged on a chair"
    )


@pytest.mark.parametrize(
    ("negative", "preset", "expected"),
    [
        ("", "Low Quality + Bad Anatomy", LQBA),
        ("headdress, loli,", "Low Quality + Bad Anatomy", f"{LQBA}, headdress, loli,"),
        ("", "Low Quality", LQ),
        ("ugly", "lq", f"{LQ}, ugly"),
        ("ugly", "None", "ugly"),
        ("", "none", ""),
    ],
)
def test_uc_preset_goes_before_the_negative_prompt(
    negative: str, preset: str, expected: str
) -> None:
    assert with_uc_preset(negative, preset) == expected


@pytest.mark.parametrize(
    ("typed", "name"),
    [
        ("Low Quality + Bad Anatomy", "Low Quality + Bad Anatomy"),
        ("lqba", "Low Quality + Bad Anatomy"),
        ("LQ+BA", "Low Quality + Bad Anatomy"),
        ("low-quality-bad-anatomy", "Low Quality + Bad Anatomy"),
        ("low quality", "Low Quality"),
        ("LQ", "Low Quality"),
        ("None", "None"),
        ("off", "None"),
    ],
)
def test_uc_preset_names_are_read_loosely(typed: str, name: str) -> None:
    assert uc_preset_name(typed) == name


def test_unknown_uc_preset_lists_the_presets() -> None:
    with pytest.raises(InvalidRequest, match=r"Unknown undesired-content preset 'bad'.*lqba"):
        uc_preset_name("bad")


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("portrait", (512, 768)),
        ("landscape", (768, 512)),
        ("square", (640, 640)),
        ("Portrait (Normal)", (512, 768)),
        ("large portrait", (512, 1024)),
        ("portrait-large", (512, 1024)),
        ("large_square", (1024, 1024)),
        ("small landscape", (640, 384)),
        ("wallpaper landscape", (1920, 1088)),
    ],
)
def test_nai_size_names(name: str, size: tuple[int, int]) -> None:
    assert nai_size(name) == size


@pytest.mark.parametrize("name", ["large", "wallpaper", "wallpaper square", "huge", "portrait x"])
def test_unknown_size_names_list_the_known_ones(name: str) -> None:
    with pytest.raises(InvalidRequest, match="use WIDTHxHEIGHT or one of portrait, landscape"):
        nai_size(name)


def test_sizes_are_multiples_of_64_and_filter_by_pixels() -> None:
    assert all(w % 64 == 0 and h % 64 == 0 for w, h in NAI_SIZES.values())
    fitting = nai_size_names(1024 * 1024)
    assert "large-square" in fitting and "wallpaper-landscape" not in fitting
    assert nai_size_names() == list(NAI_SIZES)


@pytest.mark.parametrize("negative", ["", "hat, (blurry:1.2)"])
@pytest.mark.parametrize("preset", ["Low Quality + Bad Anatomy", "Low Quality"])
def test_a_uc_preset_is_read_back_by_name(preset: str, negative: str) -> None:
    assert uc_preset_of(with_uc_preset(negative, preset)) == (preset, negative)


def test_a_negative_prompt_without_a_preset_has_none() -> None:
    assert uc_preset_of("lowres, hat") == (None, "lowres, hat")
    assert uc_preset_of(with_uc_preset("hat", "None")) == (None, "hat")
