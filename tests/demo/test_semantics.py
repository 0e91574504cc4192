"""The shipped demo model answers its tags: measured over many seeds on the trained weights.

Each test draws 32 seeds (16 per pair for colour binding; fixed, so the numbers do not change
from run to run) and reads the pictures back with `engine.demo.data`'s detectors; thresholds
leave room for the model's misses. docs/demo-model.md shows the same measurements as tables
(`python -m bench.demo_model`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import pytest
from PIL import Image

from engine.demo import data as demo_data
from engine.demo.semantics import (
    BINDING_SEEDS,
    CONFLICTING_PAIRS,
    EMPHASIS_GUIDANCE,
    GUIDANCE_COLOURS,
    Binding,
    Drawn,
    binding_table,
    draw_many,
    has_expression,
    has_hair,
)
from engine.prompting.presets import UC_PRESETS, uc_preset_name

pytestmark = pytest.mark.slow
redness = demo_data.hair_redness


@pytest.fixture(scope="module")
def draw(demo_model) -> Callable[..., Drawn]:  # type: ignore[no-untyped-def]
    """draw(prompt, **options): 32 seeds of `prompt`, drawn once per module."""

    @cache
    def drawn(prompt: str, negative_prompt: str = "", guidance_scale: float = 7.0) -> Drawn:
        return draw_many(
            demo_model, prompt, negative_prompt=negative_prompt, guidance_scale=guidance_scale
        )

    return drawn


def hair_blueness(image: Image.Image) -> float:
    rgb = demo_data.hair_mean(image)
    return float(rgb[2] - (rgb[0] + rgb[1]) / 2)


def test_red_hair_is_redder_than_blue_hair_seed_by_seed(draw) -> None:  # type: ignore[no-untyped-def]
    red, blue = draw("1girl, red hair"), draw("1girl, blue hair")
    pairs = list(zip(red.images, blue.images, strict=True))
    assert sum(redness(r) > redness(b) for r, b in pairs) >= 0.9 * len(pairs)
    assert sum(hair_blueness(b) > hair_blueness(r) for r, b in pairs) >= 0.9 * len(pairs)


@pytest.mark.parametrize(("colour", "other"), [("red", "blue"), ("blue", "red")])
def test_hair_reads_as_the_asked_colour(draw, colour: str, other: str) -> None:  # type: ignore[no-untyped-def]
    """The hair's nearest palette colour is the asked one far more often than chance (10 %),
    and hardly ever the other (the shipped weights: red 91 %, blue 94 %; see the docs)."""
    asked = draw(f"1girl, {colour} hair")
    assert asked.share(has_hair(colour)) >= 0.25
    assert asked.share(has_hair(other)) <= 0.1


def test_smile_frown_and_open_mouth_are_told_apart(draw) -> None:  # type: ignore[no-untyped-def]
    """The mouth reader (its shape under the eyes) reads what was asked (shipped: 97-100 %)."""
    for asked in demo_data.EXPRESSIONS:
        drawn = draw(f"1girl, {asked}")
        assert drawn.share(has_expression(asked)) >= 0.8, asked
        for other in set(demo_data.EXPRESSIONS) - {asked}:
            assert drawn.share(has_expression(other)) <= 0.1, (asked, other)


def test_emphasis_makes_hair_more_or_less_red(draw) -> None:  # type: ignore[no-untyped-def]
    weak, plain, strong = (
        draw(prompt, guidance_scale=EMPHASIS_GUIDANCE).mean(redness)
        for prompt in ("1girl, [red hair]", "1girl, red hair", "1girl, (red hair:1.4)")
    )
    assert weak < plain < strong


def test_negative_prompt_takes_red_out_of_the_hair(draw) -> None:  # type: ignore[no-untyped-def]
    free, against = draw("1girl"), draw("1girl", negative_prompt="red hair")
    assert against.mean(redness) < free.mean(redness) - 5
    assert against.share(has_hair("red")) <= free.share(has_hair("red"))


def test_higher_guidance_follows_the_prompt_more_often(draw) -> None:  # type: ignore[no-untyped-def]
    def accuracy(scale: float) -> float:
        hits = [
            draw(f"1girl, {c} hair", guidance_scale=scale).share(has_hair(c))
            for c in GUIDANCE_COLOURS
        ]
        return sum(hits) / len(hits)

    assert accuracy(7.0) > accuracy(1.0) + 0.05


def test_the_bots_defaults_keep_the_tags_working(draw) -> None:  # type: ignore[no-untyped-def]
    """NAI's quality tags and undesired-content preset at scale 11, as the bots send them, keep
    red hair redder than blue hair seed by seed, and the asked mouth."""
    red, blue, frown = (
        draw(
            f"masterpiece, best quality, 1girl, {tags}",
            negative_prompt=UC_PRESETS[uc_preset_name("lqba")],
            guidance_scale=11.0,
        )
        for tags in ("red hair", "blue hair", "frown")
    )
    pairs = list(zip(red.images, blue.images, strict=True))
    assert sum(redness(r) > redness(b) for r, b in pairs) >= 0.9 * len(pairs)
    assert frown.share(has_expression("frown")) >= 0.8


@pytest.fixture(scope="module")
def binding(demo_model) -> dict[str, Binding]:  # type: ignore[no-untyped-def]
    """Per colour, its binding rates over `CONFLICTING_PAIRS` (16 seeds each, chat defaults)."""
    return {row.colour: row for row in binding_table(demo_model)}


def test_the_binding_pairs_name_every_colour_with_a_different_one() -> None:
    assert len(BINDING_SEEDS) >= 16
    assert {hair for hair, _ in CONFLICTING_PAIRS} == set(demo_data.HAIR_COLOURS)
    backgrounds = {background for _, background in CONFLICTING_PAIRS}
    assert backgrounds == set(demo_data.BACKGROUNDS) - {"outdoors"}
    assert all(hair != background for hair, background in CONFLICTING_PAIRS)


def test_a_named_background_leaves_the_hair_its_own_colour(binding) -> None:  # type: ignore[no-untyped-def]
    """`masterpiece, best quality, 1girl, <colour> hair, <other> background` with the chat
    defaults: the hair reads as the asked colour in most pictures (shipped: 80 % over the ten
    colours, eight of them at 100 %; the release before: 57 %, five at 88-100 %)."""
    hair = [binding[colour].hair for colour in demo_data.HAIR_COLOURS]
    assert sum(hair) / len(hair) >= 0.7
    assert sum(share >= 0.8 for share in hair) >= 7


def test_a_named_background_shows_behind_another_hair_colour(binding) -> None:  # type: ignore[no-untyped-def]
    """The same pictures' backgrounds: white and black land where asked (shipped: 100 % each;
    43 % over the seven colours; the release before: 17 %, none above 47 %)."""
    assert binding["white"].background >= 0.8 and binding["black"].background >= 0.8
    backgrounds = [row.background for row in binding.values() if row.background is not None]
    assert sum(backgrounds) / len(backgrounds) >= 0.35


@pytest.mark.xfail(
    strict=True,
    reason="issue 20's goal, not reached: backgrounds take the hair's colour (docs/demo-model.md)",
)
def test_every_colour_lands_on_the_thing_it_names(binding) -> None:  # type: ignore[no-untyped-def]
    """The goal: each hair colour on the hair and each background colour on the background, in
    at least 80 % of seeds, when the other is named with a different colour."""
    short = {
        (row.colour, part): share
        for row in binding.values()
        for part, share in (("hair", row.hair), ("background", row.background))
        if share is not None and share < 0.8
    }
    assert not short
