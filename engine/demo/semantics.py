"""How well the demo model answers its tags, measured over many seeds.

The tests assert on these measurements and `python -m bench.demo_model` prints them as the
table in docs/demo-model.md, so both read the pictures the same way: the hair colour where hair
always is (`demo_data.core_mask`), the mouth's shape (`demo_data.expression`).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from engine.demo import data as demo_data
from engine.generate import generate
from engine.models import LoadedModel
from engine.prompting.presets import UC_PRESETS, uc_preset_name
from engine.request import GenerationRequest, Limits

SEEDS = tuple(range(1000, 1032))
GUIDANCE = 7.0  # the scale the measurements use unless they vary it
STEPS = 20
BATCH = 16  # images per sampling loop
EMPHASIS_GUIDANCE = 4.0  # low enough that red hair is not already as red as it gets
GUIDANCE_COLOURS = ("red", "blue")  # the hair test's colours: their draws at 7 are shared

# What the chat bots send by default: NAI's quality tags, its "Low Quality + Bad Anatomy"
# undesired-content preset as the negative prompt, CFG scale 11.
QUALITY_TAGS = "masterpiece, best quality"
CHAT_NEGATIVE_PROMPT = UC_PRESETS[uc_preset_name("lqba")]
CHAT_GUIDANCE = 11.0
# Hair and background with different colours in one prompt: every hair colour once, every
# background at least once (the issue's own example, red hair on blue, among them).
CONFLICTING_PAIRS: tuple[tuple[str, str], ...] = (
    ("black", "white"),
    ("brown", "pink"),
    ("blonde", "green"),
    ("red", "blue"),
    ("blue", "red"),
    ("green", "yellow"),
    ("pink", "black"),
    ("purple", "white"),
    ("silver", "red"),
    ("orange", "blue"),
)
BINDING_SEEDS = SEEDS[:16]

Predicate = Callable[[Image.Image], bool]


@dataclass(frozen=True)
class Drawn:
    prompt: str
    negative_prompt: str
    guidance_scale: float
    images: tuple[Image.Image, ...]

    def share(self, predicate: Predicate) -> float:
        """The share of images for which `predicate(image)` is true."""
        return sum(predicate(image) for image in self.images) / len(self.images)

    def mean(self, measure: Callable[[Image.Image], float]) -> float:
        return float(np.mean([measure(image) for image in self.images]))


def draw_many(
    model: LoadedModel,
    prompt: str,
    *,
    negative_prompt: str = "",
    guidance_scale: float = GUIDANCE,
    seeds: Sequence[int] = SEEDS,
    steps: int = STEPS,
) -> Drawn:
    """One 128x128 image per seed (default sampler), drawn `BATCH` at a time."""
    requests = [
        GenerationRequest(
            prompt=prompt,
            negative_prompt=negative_prompt,
            guidance_scale=guidance_scale,
            num_inference_steps=steps,
            width=demo_data.SIZE,
            height=demo_data.SIZE,
            seed=seed,
        )
        for seed in seeds
    ]
    images: list[Image.Image] = []
    for start in range(0, len(requests), BATCH):
        for result in generate(model, requests[start : start + BATCH], limits=Limits()):
            images.append(Image.open(io.BytesIO(result.png)).convert("RGB"))
    return Drawn(prompt, negative_prompt, guidance_scale, tuple(images))


def has_hair(colour: str) -> Predicate:
    return lambda image: demo_data.hair_colour(image) == colour


def has_background(colour: str) -> Predicate:
    return lambda image: demo_data.background_colour(image) == colour


def has_expression(expression: str) -> Predicate:
    return lambda image: demo_data.expression(image) == expression


@dataclass(frozen=True)
class Row:
    """One line of the accuracy table."""

    what: str
    prompt: str
    negative_prompt: str
    guidance_scale: float
    result: str


def accuracy_table(model: LoadedModel, seeds: Sequence[int] = SEEDS) -> list[Row]:
    """What the docs table shows: each attribute's accuracy and the prompt-syntax effects."""
    rows: list[Row] = []

    def add(what: str, drawn: Drawn, result: str) -> None:
        rows.append(Row(what, drawn.prompt, drawn.negative_prompt, drawn.guidance_scale, result))

    for colour in demo_data.HAIR_COLOURS:
        drawn = draw_many(model, f"1girl, {colour} hair", seeds=seeds)
        add(f"hair reads {colour}", drawn, f"{drawn.share(has_hair(colour)):.0%}")
    for expression in demo_data.EXPRESSIONS:
        drawn = draw_many(model, f"1girl, {expression}", seeds=seeds)
        add(f"mouth reads {expression}", drawn, f"{drawn.share(has_expression(expression)):.0%}")
    for prompt in ("1girl, [red hair]", "1girl, red hair", "1girl, (red hair:1.4)"):
        drawn = draw_many(model, prompt, seeds=seeds, guidance_scale=EMPHASIS_GUIDANCE)
        add("hair redness (R - (G+B)/2)", drawn, f"{drawn.mean(demo_data.hair_redness):.1f}")
    for negative in ("", "red hair"):
        drawn = draw_many(model, "1girl", negative_prompt=negative, seeds=seeds)
        add("hair redness (R - (G+B)/2)", drawn, f"{drawn.mean(demo_data.hair_redness):.1f}")
    for scale in (1.0, GUIDANCE):
        hits = [
            draw_many(model, f"1girl, {c} hair", seeds=seeds, guidance_scale=scale).share(
                has_hair(c)
            )
            for c in GUIDANCE_COLOURS
        ]
        what = f"hair colour right, mean of {', '.join(GUIDANCE_COLOURS)}"
        rows.append(Row(what, "1girl, <colour> hair", "", scale, f"{np.mean(hits):.0%}"))
    return rows


def pair_prompt(hair: str, background: str) -> str:
    """A chat prompt naming both colours, as a user types it (the bots add nothing more)."""
    return f"{QUALITY_TAGS}, 1girl, {hair} hair, {background} background"


def draw_pair(
    model: LoadedModel, hair: str, background: str, seeds: Sequence[int] = BINDING_SEEDS
) -> Drawn:
    """`pair_prompt(hair, background)` with the chat defaults, one image per seed."""
    return draw_many(
        model,
        pair_prompt(hair, background),
        negative_prompt=CHAT_NEGATIVE_PROMPT,
        guidance_scale=CHAT_GUIDANCE,
        seeds=seeds,
    )


@dataclass(frozen=True)
class Binding:
    """How often one colour lands where the prompt put it, over the pairs that name it."""

    colour: str
    hair: float | None  # share of the pictures whose hair reads as `colour`; None: not asked
    background: float | None


def binding_table(
    model: LoadedModel,
    seeds: Sequence[int] = BINDING_SEEDS,
    pairs: Sequence[tuple[str, str]] = CONFLICTING_PAIRS,
) -> list[Binding]:
    """Per colour: the share of hair and of background reads that land right in `pairs`."""
    hair: dict[str, list[float]] = {}
    background: dict[str, list[float]] = {}
    for hair_colour, background_colour in pairs:
        drawn = draw_pair(model, hair_colour, background_colour, seeds)
        hair.setdefault(hair_colour, []).append(drawn.share(has_hair(hair_colour)))
        background.setdefault(background_colour, []).append(
            drawn.share(has_background(background_colour))
        )
    colours = [*demo_data.HAIR_COLOURS, *(c for c in background if c not in hair)]
    return [
        Binding(
            colour,
            float(np.mean(hair[colour])) if colour in hair else None,
            float(np.mean(background[colour])) if colour in background else None,
        )
        for colour in colours
    ]
