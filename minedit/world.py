"""A visual world small enough to learn on a CPU: coloured shapes, counts, positions, digits.

Every image is a :class:`Scene` (what is in it) rendered with a seed (where, how big, which shade,
how noisy), so the same concept has endless *renders*: the training set, the held-out renders that
measure ``tiny-llava``'s accuracy, and the "rephrased image" of a multimodal edit (MMEdit's
``image_rephrase``: the same concept, another picture) all come from :func:`render`.

- ``shapes`` scenes: one to four shapes of one kind and one colour; a single shape sits near one
  edge, so "where is it?" has an answer.
- ``digit`` scenes: one seven-segment digit in a colour.

Questions come in several phrasings per kind (:data:`QUESTIONS`); every answer is one word, and one
token for SmolLM2's tokenizer (" yellow", " triangle", " seven", ...), so exact match is clean.

The *larger world* adds six colours (:data:`MORE_COLOURS`) and a size ("small" or "large", with its own
question kind) for the lifelong editing benchmark (``data_samples/generate_vlm_bench.py``):
``all_scenes(ALL_COLOURS, ALL_SIZES)`` lists its 1,368 scenes (5,232 scene-question pairs). tiny-llava was
trained on the original world only, which is left exactly as it was: a scene with ``size=None`` draws the
same pixels as before, and :data:`COLOURS`, :data:`ANSWERS`, :func:`sample_scene`, :func:`all_scenes`
(with its defaults) and :func:`examples` give what they always gave.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40), "green": (40, 160, 60), "blue": (45, 75, 215),
    "yellow": (235, 200, 30), "purple": (140, 55, 170), "orange": (240, 130, 20),
}
SHAPES = ("circle", "square", "triangle", "diamond")
COUNTS = ("one", "two", "three", "four")
POSITIONS = ("left", "right", "top", "bottom")
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Every possible answer of each question kind, in a fixed order (class indices for classifiers).
ANSWERS: dict[str, tuple[str, ...]] = {"colour": tuple(COLOURS), "shape": SHAPES, "count": COUNTS,
                                       "position": POSITIONS, "digit": DIGITS}

# The larger world: hues far from the six above and from the pale background (each channel of their
# fill is shaded by up to +-10, not +-25, so gray and black stay neutral), and two sizes on either
# side of the original world's (None).
MORE_COLOURS: dict[str, tuple[int, int, int]] = {
    "pink": (245, 120, 190), "brown": (125, 75, 30), "black": (30, 30, 30),
    "gray": (130, 130, 130), "cyan": (30, 195, 205), "lime": (150, 225, 40),
}
ALL_COLOURS = {**COLOURS, **MORE_COLOURS}
SIZES = ("small", "large")
ALL_SIZES = (None, *SIZES)
ALL_ANSWERS: dict[str, tuple[str, ...]] = {**ANSWERS, "colour": tuple(ALL_COLOURS), "size": SIZES}
# Side of a shape in pixels, (one shape, several shapes), and height of a digit as a fraction of the image.
SHAPE_SIDES = {None: ((14, 20), (10, 13)), "small": ((7, 9), (6, 8)), "large": ((25, 29), (16, 19))}
DIGIT_HEIGHTS = {None: (0.45, 0.7), "small": (0.25, 0.32), "large": (0.8, 0.92)}

# Seven-segment layout: which of the segments a (top), b (top right), c (bottom right), d (bottom),
# e (bottom left), f (top left), g (middle) each digit lights.
SEGMENTS = ("abcdef", "bc", "abdeg", "abcdg", "bcfg", "acdfg", "acdefg", "abc", "abcdefg", "abcdfg")

QUESTIONS: dict[str, tuple[str, ...]] = {
    "colour": ("What color is the object?", "Which color does the object have?", "What is the color of the thing in the picture?"),
    "shape": ("What shape is shown?", "Which shape is in the picture?", "What kind of shape do you see?"),
    "count": ("How many shapes are there?", "What is the number of shapes in the image?", "Count the shapes. How many?"),
    "position": ("Where is the shape?", "In which part of the image is the shape?", "On which side of the picture is the shape?"),
    "digit": ("What digit is shown?", "Which number is written in the image?", "What number do you see?"),
    "size": ("What size is the object?", "How big is the thing in the picture?", "Is the object small or large?"),
}


@dataclass(frozen=True)
class Scene:
    """What an image shows (not how it is drawn)."""

    kind: str  # "shapes" or "digit"
    colour: str
    shape: str | None = None
    count: int = 1
    position: str | None = None  # only for a single shape
    digit: int | None = None
    size: str | None = None  # "small" or "large" (the larger world); None: the original world's sizes

    @property
    def question_kinds(self) -> tuple[str, ...]:
        sized = ("size",) if self.size else ()
        if self.kind == "digit":
            return ("digit", "colour") + sized
        return ("colour", "shape", "count") + (("position",) if self.count == 1 else ()) + sized

    def answer(self, question_kind: str) -> str:
        """The one-word answer to a question of ``question_kind`` about this scene."""
        if question_kind not in self.question_kinds:
            raise ValueError(f"a {self.kind} scene has no {question_kind!r} question")
        return {
            "colour": self.colour, "shape": self.shape, "count": COUNTS[self.count - 1],
            "position": self.position, "digit": DIGITS[self.digit] if self.digit is not None else None,
            "size": self.size,
        }[question_kind]

    def caption(self) -> str:
        """A short description in words, e.g. ``"two yellow circles"`` or ``"the small digit seven in red"``."""
        size = f"{self.size} " if self.size else ""
        if self.kind == "digit":
            return f"the {size}digit {DIGITS[self.digit]} in {self.colour}"
        noun = self.shape + ("s" if self.count > 1 else "")
        where = f" at the {self.position}" if self.position else ""
        return f"{COUNTS[self.count - 1]} {size}{self.colour} {noun}{where}"


def sample_scene(rng: random.Random) -> Scene:
    """A random scene: a quarter digits, the rest shapes (a third of those single and placed)."""
    colour = rng.choice(list(COLOURS))
    if rng.random() < 0.25:
        return Scene("digit", colour, digit=rng.randrange(10))
    count = rng.randint(1, 4) if rng.random() < 0.7 else 1
    position = rng.choice(POSITIONS) if count == 1 else None
    return Scene("shapes", colour, shape=rng.choice(SHAPES), count=count, position=position)


def all_scenes(colours=COLOURS, sizes=(None,)) -> Iterator[Scene]:
    """Every distinct scene of the world (228); ``all_scenes(ALL_COLOURS, ALL_SIZES)``: of the larger one."""
    for colour in colours:
        for size in sizes:
            for digit in range(10):
                yield Scene("digit", colour, digit=digit, size=size)
            for shape in SHAPES:
                for position in POSITIONS:
                    yield Scene("shapes", colour, shape=shape, count=1, position=position, size=size)
                for count in range(2, 5):
                    yield Scene("shapes", colour, shape=shape, count=count, size=size)


def _shade(rgb: tuple[int, int, int], rng: np.random.Generator, jitter: int = 25) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(np.array(rgb) + rng.integers(-jitter, jitter + 1, size=3), 0, 255))


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, x: float, y: float, s: float, fill) -> None:
    """Draw ``shape`` in the box with top-left corner (x, y) and side ``s``."""
    if shape == "circle":
        draw.ellipse([x, y, x + s, y + s], fill=fill)
    elif shape == "square":
        draw.rectangle([x + 1, y + 1, x + s - 1, y + s - 1], fill=fill)
    elif shape == "triangle":
        draw.polygon([(x + s / 2, y), (x + s, y + s), (x, y + s)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(x + s / 2, y), (x + s, y + s / 2), (x + s / 2, y + s), (x, y + s / 2)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _place(rng: np.random.Generator, scene: Scene, size: int) -> list[tuple[float, float, float]]:
    """Non-overlapping boxes (x, y, side) for the scene's shapes."""
    (lo, hi), (lo_many, hi_many) = SHAPE_SIDES[scene.size]
    if scene.count == 1:
        s = float(rng.uniform(lo, hi))
        spread = 0.2 if scene.size is None else 0.1  # sized shapes stay nearer the middle of their side
        along, across = rng.uniform((0.5 - spread) * size, (0.5 + spread) * size), rng.uniform(0.08 * size, 0.22 * size)
        centre = {"left": (across, along), "right": (size - across, along),
                  "top": (along, across), "bottom": (along, size - across)}[scene.position or "left"]
        x, y = (float(np.clip(c - s / 2, 1, size - s - 1)) for c in centre)
        return [(x, y, s)]
    for _ in range(5000):  # rejection sampling: four 10-13 px shapes fit in a few tries, four 16-19 px in ~60
        boxes: list[tuple[float, float, float]] = []
        for _ in range(scene.count):
            s = float(rng.uniform(lo_many, hi_many))
            x, y = rng.uniform(1, size - s - 1, size=2)
            if all(abs(x - bx) > (s + bs) / 2 + 2 or abs(y - by) > (s + bs) / 2 + 2 for bx, by, bs in boxes):
                boxes.append((float(x), float(y), s))
        if len(boxes) == scene.count:
            return boxes
    raise RuntimeError(f"could not place {scene}")  # pragma: no cover


def _draw_digit(draw: ImageDraw.ImageDraw, digit: int, rng: np.random.Generator, size: int, fill,
                scale: str | None = None) -> None:
    h = float(rng.uniform(*DIGIT_HEIGHTS[scale]) * size)
    w, t = 0.55 * h, float(rng.uniform(2, 3) if scale == "small" else rng.uniform(3, 5))
    x0, y0 = rng.uniform(2, size - w - 2), rng.uniform(2, size - h - 2)
    mid = y0 + h / 2
    bars = {  # (x0, y0, x1, y1) of each segment
        "a": (x0, y0, x0 + w, y0 + t), "g": (x0, mid - t / 2, x0 + w, mid + t / 2), "d": (x0, y0 + h - t, x0 + w, y0 + h),
        "f": (x0, y0, x0 + t, mid), "b": (x0 + w - t, y0, x0 + w, mid),
        "e": (x0, mid, x0 + t, y0 + h), "c": (x0 + w - t, mid, x0 + w, y0 + h),
    }
    for segment in SEGMENTS[digit]:
        draw.rectangle(bars[segment], fill=fill)


def canvas(rng: np.random.Generator, size: int) -> tuple[Image.Image, np.ndarray]:
    """A blank image in a pale random background colour (first draw of a render's ``rng``), and that colour."""
    background = rng.integers(225, 251, size=3)
    pixels = np.broadcast_to(background, (size, size, 3)).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(pixels)), background


def add_noise(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Gaussian pixel noise (sd 4; last draw of a render's ``rng``), so no two renders share a pixel pattern."""
    pixels = np.asarray(image, dtype=np.int16)
    noisy = pixels + rng.normal(0, 4, size=pixels.shape).round().astype(np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def render(scene: Scene, seed: int, size: int = IMAGE_SIZE) -> Image.Image:
    """Draw ``scene`` as an RGB image; the same (scene, seed) always gives the same pixels."""
    rng = np.random.default_rng(seed)
    image, _ = canvas(rng, size)
    draw = ImageDraw.Draw(image)
    fill = _shade(ALL_COLOURS[scene.colour], rng, 25 if scene.colour in COLOURS else 10)  # gray stays gray
    if scene.kind == "digit":
        _draw_digit(draw, scene.digit, rng, size, fill, scene.size)
    else:
        for x, y, s in _place(rng, scene, size):
            _draw_shape(draw, scene.shape, x, y, s, fill)
    return add_noise(image, rng)


@dataclass(frozen=True)
class Example:
    """One visual question: a scene, the seed of its render, a question and its answer."""

    scene: Scene
    seed: int
    question_kind: str
    question: str
    answer: str

    def image(self) -> Image.Image:
        return render(self.scene, self.seed)


# Render seeds of the two splits never meet: training draws below HELD_OUT_SEED_BASE.
HELD_OUT_SEED_BASE = 10**9


def examples(n: int, seed: int = 0, held_out: bool = False) -> list[Example]:
    """``n`` random visual questions; ``held_out=True`` uses render seeds no training example uses."""
    rng = random.Random(seed * 2 + int(held_out))
    out = []
    for _ in range(n):
        scene = sample_scene(rng)
        kind = rng.choice(scene.question_kinds)
        render_seed = rng.randrange(HELD_OUT_SEED_BASE) + (HELD_OUT_SEED_BASE if held_out else 0)
        out.append(Example(scene, render_seed, kind, rng.choice(QUESTIONS[kind]), scene.answer(kind)))
    return out
