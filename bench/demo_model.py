"""What the trained demo model draws: the grid and the accuracy table in docs/demo-model.md.

Draws a grid of images for a few prompts (docs/demo-grid.png), a strip of training pictures
(docs/demo-data.png), and measures, over many seeds,
how often each tag shows up in the picture (the same measurements the tests assert on, from
`engine.demo.semantics`). Prints the table as Markdown.
Usage: python -m bench.demo_model [--seeds N] [--grid PATH] [--no-table]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from engine.demo import data as demo_data
from engine.demo import semantics as demo_semantics
from engine.demo.model import DEMO_NAME, save_demo_model
from engine.device import DeviceOptions
from engine.models import LoadedModel, ModelRegistry

GRID_PROMPTS = (
    "1girl, silver hair, long hair, blue eyes, smile, red background",
    "1girl, pink hair, short hair, green eyes, open mouth, ribbon, yellow background",
    "1boy, black hair, red eyes, frown, glasses, blue background",
    "1girl, blonde hair, long hair, purple eyes, smile, hat, outdoors",
    "no humans, cat, orange fur, green eyes, pink background",
    "masterpiece, best quality, 1girl, (red hair:1.3), (smile:1.2), white background",
)
GRID_SEEDS = tuple(range(1, 7))
LABEL_WIDTH = 330


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=len(demo_semantics.SEEDS))
    parser.add_argument("--grid", type=Path, default=Path("docs/demo-grid.png"))
    parser.add_argument("--data", type=Path, default=Path("docs/demo-data.png"))
    parser.add_argument("--no-table", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        save_demo_model(Path(tmp))
        model = ModelRegistry(Path(tmp)).load(DEMO_NAME, DeviceOptions())

    training_pictures().save(args.data, optimize=True)
    print(f"wrote {args.data}")
    started = time.perf_counter()
    grid = draw_grid(model)
    grid.save(args.grid, optimize=True)
    print(f"wrote {args.grid} ({time.perf_counter() - started:.0f} s)")
    if args.no_table:
        return
    started = time.perf_counter()
    seeds = range(1000, 1000 + args.seeds)
    rows = demo_semantics.accuracy_table(model, seeds)
    print(f"\n{len(seeds)} seeds ({seeds.start}-{seeds.stop - 1}) per line, Euler a, ", end="")
    print(f"{demo_semantics.STEPS} steps, 128x128 ({time.perf_counter() - started:.0f} s)\n")
    print("| measured | prompt | negative prompt | CFG scale | result |")
    print("|---|---|---|---|---|")
    for row in rows:
        negative = f"`{row.negative_prompt}`" if row.negative_prompt else ""
        print(
            f"| {row.what} | `{row.prompt}` | {negative} | {row.guidance_scale:g} | {row.result} |"
        )
    print_binding_table(model, seeds[: len(demo_semantics.BINDING_SEEDS)])


def print_binding_table(model: LoadedModel, seeds: range) -> None:
    """Per colour, how often it lands on the hair or the background it was named for."""
    started = time.perf_counter()
    rows = demo_semantics.binding_table(model, seeds)
    pairs = ", ".join(f"{h}/{b}" for h, b in demo_semantics.CONFLICTING_PAIRS)
    prompt = demo_semantics.pair_prompt("<hair>", "<background>")
    print(f"\nColours bound to their noun with the chat defaults: `{prompt}`, the lqba negative")
    print(f"preset, CFG scale {demo_semantics.CHAT_GUIDANCE:g}; pairs (hair/background) {pairs};")
    print(f"{len(seeds)} seeds ({seeds.start}-{seeds.stop - 1}) per pair, Euler a, ", end="")
    print(f"{demo_semantics.STEPS} steps ({time.perf_counter() - started:.0f} s)\n")
    print("| colour | hair reads it | background reads it |")
    print("|---|---|---|")
    for row in rows:
        hair = "" if row.hair is None else f"{row.hair:.0%}"
        background = "" if row.background is None else f"{row.background:.0%}"
        print(f"| {row.colour} | {hair} | {background} |")


def draw_grid(model: LoadedModel) -> Image.Image:
    """One row per prompt (the prompt written on its left), one column per seed."""
    size = 128
    grid = Image.new(
        "RGB", (LABEL_WIDTH + size * len(GRID_SEEDS), size * len(GRID_PROMPTS)), "white"
    )
    pen = ImageDraw.Draw(grid)
    for row, prompt in enumerate(GRID_PROMPTS):
        drawn = demo_semantics.draw_many(
            model, prompt, seeds=GRID_SEEDS, steps=28, guidance_scale=demo_semantics.GUIDANCE
        )
        for column, image in enumerate(drawn.images):
            grid.paste(image, (LABEL_WIDTH + column * size, row * size))
        words = prompt.split(", ")
        lines = [", ".join(words[i : i + 3]) for i in range(0, len(words), 3)]
        pen.multiline_text((8, row * size + 8), ",\n".join(lines), fill="black", spacing=6)
    return grid


def training_pictures(count: int = 8, seed: int = 0) -> Image.Image:
    """The first `count` training pictures of `seed` in a row, as `make train-demo` draws them."""
    rng = np.random.default_rng(seed)
    strip = Image.new("RGB", (128 * count, 128))
    for i in range(count):
        strip.paste(demo_data.draw(demo_data.random_character(rng)).image, (128 * i, 0))
    return strip


if __name__ == "__main__":
    main()
