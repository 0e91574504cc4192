"""Procedural training data for the demo model: cartoon portraits with known tags and regions.

Each `Character` is a set of attributes (subject, hair colour and length, eye colour,
expression, accessories, background, style); `draw()` paints it at 128x128 and returns the
picture with a label map of which part each pixel shows, and `caption()` writes its tags in
NovelAI order (`1girl, silver hair, long hair, blue eyes, smile, hat, red background`), with
random tag dropout and shuffling so that prompts need not be exact.

The tests read generated images through `core_mask()` (pixels that show a part wherever the
jitter puts it) and the palettes here, so the model's semantics are measured against the same
definitions it was trained on.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw

from engine.prompting.presets import UC_PRESETS

SIZE = 128
JITTER = 4  # the face's centre moves up to this many pixels each way
COLOUR_JITTER = 14  # each channel of each colour moves up to this much

RGB = tuple[int, int, int]
Subject = Literal["1girl", "1boy", "cat"]
Expression = Literal["smile", "frown", "open mouth"]

HAIR_COLOURS: dict[str, RGB] = {
    "black": (30, 30, 38),
    "brown": (122, 74, 38),
    "blonde": (244, 212, 98),
    "red": (214, 36, 36),
    "blue": (44, 86, 222),
    "green": (46, 168, 70),
    "pink": (246, 150, 192),
    "purple": (138, 66, 192),
    "silver": (190, 196, 208),
    "orange": (244, 138, 36),
}
EYE_COLOURS: dict[str, RGB] = {
    "blue": (40, 100, 230),
    "red": (210, 30, 40),
    "green": (40, 170, 60),
    "brown": (110, 64, 30),
    "purple": (140, 60, 200),
    "yellow": (236, 200, 30),
}
FUR_COLOURS: dict[str, RGB] = {
    "black": (36, 36, 40),
    "white": (240, 240, 236),
    "orange": (236, 140, 50),
    "grey": (140, 140, 146),
}
BACKGROUNDS: dict[str, RGB] = {
    "white": (250, 250, 250),
    "black": (20, 20, 24),
    "red": (200, 50, 50),
    "blue": (70, 110, 210),
    "green": (80, 170, 90),
    "yellow": (240, 220, 110),
    "pink": (244, 180, 206),
    "outdoors": (130, 190, 240),  # sky over grass
}
GRASS: RGB = (90, 170, 70)
SKIN: RGB = (250, 222, 198)
MOUTH: RGB = (120, 30, 40)
OUTLINE: RGB = (30, 20, 20)
CLOTHES: tuple[RGB, ...] = ((60, 60, 120), (230, 230, 230), (180, 40, 60), (60, 120, 80))
ACCESSORY_COLOURS: tuple[RGB, ...] = ((200, 30, 50), (40, 40, 50), (250, 250, 250), (60, 90, 200))

EXPRESSIONS: tuple[Expression, ...] = ("smile", "frown", "open mouth")
ACCESSORIES = ("hat", "glasses", "ribbon")
QUALITY = ("masterpiece", "best quality")
# Words of NovelAI's undesired-content preset: trained as "no particular picture" (the
# unconditional caption), so the bot's default negative prompt behaves like an empty one.
UC_WORDS = tuple(
    sorted({w.strip() for text in UC_PRESETS.values() for w in text.split(",") if w.strip()})
)

# Parts, painted in this order; a later part hides an earlier one.
PARTS = (
    "background",
    "ground",
    "clothes",
    "back hair",
    "face",
    "ears",
    "eyes",
    "pupils",
    "mouth",
    "whiskers",
    "front hair",
    "glasses",
    "ribbon",
    "hat",
)
LABEL = {name: i for i, name in enumerate(PARTS)}


@dataclass(frozen=True)
class Character:
    """What a picture shows; every field becomes a tag (or its absence)."""

    subject: Subject = "1girl"
    hair: str = "black"  # HAIR_COLOURS key; fur colour (FUR_COLOURS) for a cat
    long_hair: bool = False
    eyes: str = "blue"
    expression: Expression = "smile"
    accessories: frozenset[str] = frozenset()
    background: str = "white"
    monochrome: bool = False
    # Untagged variation, drawn at random: position and the exact shades.
    dx: int = 0
    dy: int = 0
    clothes: int = 0
    accessory_colour: int = 0
    shade_seed: int = 0


@dataclass(frozen=True)
class Drawing:
    image: Image.Image  # RGB, SIZE x SIZE
    labels: NDArray[np.uint8]  # (SIZE, SIZE): index into PARTS of the part each pixel shows

    def mask(self, *parts: str) -> NDArray[np.bool_]:
        return np.isin(self.labels, [LABEL[p] for p in parts])


def random_character(rng: np.random.Generator) -> Character:
    subject: Subject = ("1girl", "1girl", "1boy", "cat")[int(rng.integers(4))]
    palette = FUR_COLOURS if subject == "cat" else HAIR_COLOURS
    allowed = ("hat", "glasses", "ribbon") if subject == "1girl" else ("hat", "glasses")
    return Character(
        subject=subject,
        hair=_choice(rng, list(palette)),
        long_hair=subject == "1girl" and bool(rng.random() < 0.6),
        eyes=_choice(rng, list(EYE_COLOURS)),
        expression=EXPRESSIONS[int(rng.integers(len(EXPRESSIONS)))],
        accessories=frozenset(
            a for a in ACCESSORIES if a in allowed and subject != "cat" and rng.random() < 0.25
        ),
        background=_choice(rng, list(BACKGROUNDS)),
        monochrome=bool(rng.random() < 0.06),
        dx=int(rng.integers(-JITTER, JITTER + 1)),
        dy=int(rng.integers(-JITTER, JITTER + 1)),
        clothes=int(rng.integers(len(CLOTHES))),
        accessory_colour=int(rng.integers(len(ACCESSORY_COLOURS))),
        shade_seed=int(rng.integers(2**31)),
    )


def _choice(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def tags(c: Character) -> list[str]:
    """The character's full tag list in NovelAI order."""
    out: list[str]
    if c.subject == "cat":
        out = ["no humans", "cat", f"{c.hair} fur", f"{c.eyes} eyes"]
    else:
        out = [c.subject, f"{c.hair} hair"]
        out.append("long hair" if c.long_hair else "short hair")
        out += [f"{c.eyes} eyes", c.expression]
        out += [a for a in ACCESSORIES if a in c.accessories]
    out.append("outdoors" if c.background == "outdoors" else f"{c.background} background")
    if c.monochrome:
        out.append("monochrome")
    return out


def caption_words() -> set[str]:
    """Every tag a caption can hold (`tags`, quality tags, undesired-content words)."""
    words: set[str] = {*QUALITY, *UC_WORDS, *EXPRESSIONS, *ACCESSORIES}
    for palette, noun in (
        (HAIR_COLOURS, "hair"),
        (EYE_COLOURS, "eyes"),
        (FUR_COLOURS, "fur"),
        (BACKGROUNDS, "background"),
    ):
        words.update(f"{colour} {noun}" for colour in palette)
    words.update(
        ["1girl", "1boy", "cat", "no humans", "long hair", "short hair", "outdoors", "monochrome"]
    )
    return words


def caption(c: Character, rng: np.random.Generator, *, dropout: float = 0.1) -> str:
    """A training caption: the tags with some dropped, sometimes shuffled or with quality tags."""
    kept = [
        t for i, t in enumerate(tags(c)) if rng.random() >= (dropout / 2 if i == 0 else dropout)
    ]
    if rng.random() < 0.25:
        kept = [kept[i] for i in rng.permutation(len(kept))]
    if rng.random() < 0.4:
        kept = [*QUALITY, *kept]
    return ", ".join(kept)


def unconditional_caption(rng: np.random.Generator) -> str:
    """What classifier-free-guidance dropout trains on: empty, or undesired-content words."""
    if rng.random() < 0.6:
        return ""
    count = int(rng.integers(1, len(UC_WORDS) + 1))
    return ", ".join(UC_WORDS[i] for i in sorted(rng.choice(len(UC_WORDS), count, replace=False)))


def draw(c: Character) -> Drawing:
    """Paint `c`: flat colours, hard edges, a label for every pixel."""
    shade = np.random.default_rng(c.shade_seed)
    canvas = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.zeros((SIZE, SIZE), dtype=np.uint8)

    def paint(part: str, colour: RGB, shape: Image.Image) -> None:
        mask = np.asarray(shape, dtype=bool)
        jitter = shade.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
        canvas[mask] = np.clip(np.array(colour) + jitter, 0, 255).astype(np.uint8)
        labels[mask] = LABEL[part]

    for part, colour, shape in _shapes(c):
        paint(part, colour, shape)
    image = Image.fromarray(canvas, "RGB")
    if c.monochrome:
        image = image.convert("L").convert("RGB")
    return Drawing(image=image, labels=labels)


def _blank() -> tuple[Image.Image, ImageDraw.ImageDraw]:
    shape = Image.new("1", (SIZE, SIZE), 0)
    return shape, ImageDraw.Draw(shape)


def _shapes(c: Character) -> Iterator[tuple[str, RGB, Image.Image]]:
    """Each part's colour and shape (a 1-bit mask), back to front."""
    x0, y0 = 64 + c.dx, 66 + c.dy  # face centre

    def box(left: float, top: float, right: float, bottom: float) -> list[float]:
        return [x0 + left, y0 + top, x0 + right, y0 + bottom]

    shape, d = _blank()
    d.rectangle([0, 0, SIZE, SIZE], fill=1)
    yield "background", BACKGROUNDS[c.background], shape
    if c.background == "outdoors":
        shape, d = _blank()
        d.rectangle([0, 88, SIZE, SIZE], fill=1)
        yield "ground", GRASS, shape

    if c.subject == "cat":
        yield from _cat_shapes(c)
        return

    hair = HAIR_COLOURS[c.hair]
    shape, d = _blank()
    d.ellipse(box(-34, 40, 34, 90), fill=1)
    yield "clothes", CLOTHES[c.clothes], shape
    if c.long_hair:
        shape, d = _blank()
        d.rounded_rectangle(box(-36, -38, 36, 56), radius=18, fill=1)
        yield "back hair", hair, shape
    shape, d = _blank()
    d.ellipse(box(-26, -30, 26, 32), fill=1)
    yield "face", SKIN, shape
    shape, d = _blank()
    d.ellipse(box(-17, -6, -5, 8), fill=1)
    d.ellipse(box(5, -6, 17, 8), fill=1)
    yield "eyes", EYE_COLOURS[c.eyes], shape
    shape, d = _blank()
    d.ellipse(box(-13, -2, -9, 4), fill=1)
    d.ellipse(box(9, -2, 13, 4), fill=1)
    yield "pupils", OUTLINE, shape
    shape, d = _blank()
    # Big, thick mouths: at 8x downsampling a thin one would be a single latent pixel. They also
    # differ at a coarser scale than their curve: a smile's corners reach up to the cheeks, a
    # frown is narrower and its corners hang low.
    if c.expression == "smile":
        d.arc(box(-18, -2, 18, 20), 10, 170, fill=1, width=5)
    elif c.expression == "frown":
        d.arc(box(-10, 18, 10, 38), 190, 350, fill=1, width=5)
    else:
        d.ellipse(box(-9, 11, 9, 27), fill=1)
    yield "mouth", MOUTH, shape
    shape, d = _blank()
    if c.subject == "1girl":
        d.chord(box(-30, -40, 30, 6), 180, 360, fill=1)  # crown
        d.rectangle(box(-27, -18, 27, -10), fill=1)  # straight bangs
        d.rectangle(box(-30, -18, -22, 8), fill=1)  # side locks
        d.rectangle(box(22, -18, 30, 8), fill=1)
    else:
        d.chord(box(-29, -38, 29, 0), 180, 360, fill=1)
        spikes = [(x0 + x, y0 - 12 + (6 if i % 2 else 0)) for i, x in enumerate(range(-28, 29, 8))]
        d.polygon([(x0 - 29, y0 - 19), *spikes, (x0 + 29, y0 - 19)], fill=1)
    yield "front hair", hair, shape
    accessory = ACCESSORY_COLOURS[c.accessory_colour]
    if "glasses" in c.accessories:
        shape, d = _blank()
        d.ellipse(box(-20, -9, -2, 11), outline=1, width=2)
        d.ellipse(box(2, -9, 20, 11), outline=1, width=2)
        d.line(box(-2, 0, 2, 0), fill=1, width=2)
        yield "glasses", OUTLINE, shape
    if "ribbon" in c.accessories:
        shape, d = _blank()
        d.polygon([(x0 + 24, y0 - 30), (x0 + 40, y0 - 40), (x0 + 40, y0 - 20)], fill=1)
        d.polygon([(x0 + 24, y0 - 30), (x0 + 10, y0 - 42), (x0 + 12, y0 - 20)], fill=1)
        yield "ribbon", accessory, shape
    if "hat" in c.accessories:
        shape, d = _blank()
        d.rectangle(box(-40, -36, 40, -30), fill=1)  # brim
        d.rounded_rectangle(box(-24, -60, 24, -33), radius=6, fill=1)  # crown
        yield "hat", accessory, shape


def _cat_shapes(c: Character) -> Iterator[tuple[str, RGB, Image.Image]]:
    x0, y0 = 64 + c.dx, 70 + c.dy
    fur = FUR_COLOURS[c.hair]
    shape, d = _blank()
    d.polygon([(x0 - 34, y0 - 8), (x0 - 30, y0 - 50), (x0 - 6, y0 - 28)], fill=1)
    d.polygon([(x0 + 34, y0 - 8), (x0 + 30, y0 - 50), (x0 + 6, y0 - 28)], fill=1)
    yield "ears", fur, shape
    shape, d = _blank()
    d.ellipse([x0 - 38, y0 - 34, x0 + 38, y0 + 34], fill=1)
    yield "face", fur, shape
    shape, d = _blank()
    d.ellipse([x0 - 20, y0 - 12, x0 - 6, y0 + 2], fill=1)
    d.ellipse([x0 + 6, y0 - 12, x0 + 20, y0 + 2], fill=1)
    yield "eyes", EYE_COLOURS[c.eyes], shape
    shape, d = _blank()
    d.rectangle([x0 - 14, y0 - 11, x0 - 12, y0 + 1], fill=1)
    d.rectangle([x0 + 12, y0 - 11, x0 + 14, y0 + 1], fill=1)
    yield "pupils", OUTLINE, shape
    shape, d = _blank()
    d.polygon([(x0 - 4, y0 + 8), (x0 + 4, y0 + 8), (x0, y0 + 13)], fill=1)
    d.arc([x0 - 8, y0 + 8, x0, y0 + 18], 0, 180, fill=1, width=2)
    d.arc([x0, y0 + 8, x0 + 8, y0 + 18], 0, 180, fill=1, width=2)
    yield "mouth", MOUTH, shape
    shape, d = _blank()
    for side in (-1, 1):
        for lift in (-4, 2, 8):
            d.line([x0 + side * 14, y0 + 12, x0 + side * 36, y0 + 12 + lift], fill=1, width=1)
    yield "whiskers", OUTLINE, shape


def core_mask(c: Character, *parts: str) -> NDArray[np.bool_]:
    """Pixels that show `parts` of `c` wherever the jitter moves it and whatever its hair length.

    Tests read a generated image's hair here, since they cannot know the jitter.
    """
    return _combined_mask(_canonical(c), parts, (False, True), every=True)


def reach_mask(c: Character, *parts: str) -> NDArray[np.bool_]:
    """Pixels that may show `parts` of `c` somewhere within the jitter (e.g. where a mouth is)."""
    return _combined_mask(_canonical(c), parts, (c.long_hair,), every=False)


def expression_region(c: Character) -> NDArray[np.bool_]:
    """Where `c`'s mouth is with any expression: the pixels where smile, frown and open mouth
    differ. Training weights its loss here (a mouth is too small a share of the picture to be
    learned from the plain loss). Empty for a cat, which has no expressions.
    """
    if c.subject == "cat":
        return np.zeros((SIZE, SIZE), dtype=bool)
    return _expression_region(c.dx, c.dy)


@cache
def _expression_region(dx: int, dy: int) -> NDArray[np.bool_]:
    mouths = [draw(Character(expression=e, dx=dx, dy=dy)).mask("mouth") for e in EXPRESSIONS]
    region: NDArray[np.bool_] = np.logical_or.reduce(mouths)
    return region


def _canonical(c: Character) -> Character:
    return dataclasses.replace(c, dx=0, dy=0, shade_seed=0)


@cache
def _combined_mask(
    c: Character, parts: tuple[str, ...], lengths: tuple[bool, ...], *, every: bool
) -> NDArray[np.bool_]:
    offsets = range(-JITTER, JITTER + 1, JITTER if every else 1)
    masks = [
        draw(dataclasses.replace(c, dx=dx, dy=dy, long_hair=long_hair)).mask(*parts)
        for dx, dy, long_hair in itertools.product(offsets, offsets, lengths)
    ]
    combined: NDArray[np.bool_] = (
        np.logical_and.reduce(masks) if every else np.logical_or.reduce(masks)
    )
    return combined


# --- Reading a picture back (tests and the accuracy table) --------------------------------------


def mean_colour(image: Image.Image, mask: NDArray[np.bool_]) -> NDArray[np.float64]:
    """The mean RGB of `image` where `mask` is set."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    mean: NDArray[np.float64] = pixels[mask].mean(axis=0)
    return mean


def nearest(rgb: NDArray[np.float64], palette: dict[str, RGB]) -> str:
    """The palette name closest to `rgb`."""
    return min(palette, key=lambda name: float(np.sum((rgb - np.array(palette[name])) ** 2)))


def redness(rgb: NDArray[np.float64]) -> float:
    """How red a colour is: red over the mean of green and blue (-255 to 255)."""
    return float(rgb[0] - (rgb[1] + rgb[2]) / 2)


def hair_mean(image: Image.Image) -> NDArray[np.float64]:
    """The mean colour of a girl's hair, read where it always is (short or long, any jitter)."""
    return mean_colour(image, core_mask(Character(), "front hair", "back hair"))


def hair_colour(image: Image.Image) -> str:
    """The palette hair colour nearest to a girl's hair in `image`."""
    return nearest(hair_mean(image), HAIR_COLOURS)


def hair_redness(image: Image.Image) -> float:
    return redness(hair_mean(image))


def background_colour(image: Image.Image) -> str:
    """The palette background nearest to the mean of the pixels that are background behind a
    girl wherever she is placed (`outdoors` for sky over grass)."""
    return nearest(mean_colour(image, core_mask(Character(), "background")), BACKGROUNDS)


def expression(image: Image.Image) -> Expression | None:
    """Smile, frown or open mouth, from the shape of the mouth-coloured pixels; None if none."""
    mouths = [reach_mask(Character(expression=e), "mouth") for e in EXPRESSIONS]
    window = np.logical_or.reduce(mouths) & ~reach_mask(Character(), "eyes", "pupils")
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    # Mouth-coloured: nearer the mouth's colour than to any hair colour (brown is close).
    distance = np.sqrt(np.sum((pixels - np.array(MOUTH)) ** 2, axis=-1))
    nearest_hair = np.min(
        [np.sqrt(np.sum((pixels - np.array(rgb)) ** 2, axis=-1)) for rgb in HAIR_COLOURS.values()],
        axis=0,
    )
    close = (distance < 45) & (distance < nearest_hair)
    ys, xs = np.nonzero(close & window)
    if len(xs) < 12:
        return None
    centre = float(np.median(xs))
    middle = np.abs(xs - centre) <= 2
    sides = np.abs(xs - centre) >= 6
    if middle.sum() == 0 or sides.sum() == 0:
        return "open mouth"
    if np.ptp(ys[middle]) >= 7:
        return "open mouth"
    return "smile" if ys[middle].mean() > ys[sides].mean() else "frown"
