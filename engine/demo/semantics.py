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
from engine.request import GenerationRequest, Limits

SEEDS = tuple(range(1000, 1032))
GUIDANCE = 7.0  # the scale the measurements use unless they vary it
STEPS = 20
BATCH = 16  # images per sampling loop
EMPHASIS_GUIDANCE = 4.0  # low enough that red hair is not already as red as it gets
GUIDANCE_COLOURS = ("red", "blue")  # the hair test's colours: their draws at 7 are shared

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
