"""A continual task suite on the visual world (CoIN-like): several visual tasks, learned one after another.

LLaVA-CMoE (2025) is evaluated on CoIN, eight instruction-tuning tasks (ScienceQA, TextVQA, GQA, ...)
learned in sequence without replay. This module builds a small counterpart that ``tiny-llava`` can
learn on a CPU: each task asks one *kind* of question about scenes of several objects, a kind
tiny-llava was never trained on (it knows single objects: their colour, shape, count, position), so
it starts near chance and must learn every task, and later tasks can erode earlier ones.

A scene is a tuple of :class:`Item` s, each in one cell of a 2x2 grid (cells 0-3: top-left,
top-right, bottom-left, bottom-right), drawn with :mod:`minedit.world`'s shapes, digits and colours;
a render seed places and shades them, so every record is ``(scene, seed, question, answer)`` and
its image is drawn on demand (:func:`render_items`). Every answer is one word, one SmolLM2 token.

The tasks (:data:`TASKS`; ``data_samples/generate_continual.py`` writes the default six to disk).
One object, a feature tiny-llava already reads, mapped to an answer it was never taught:

- ``is_colour``      "Is the shape green?"                                  yes / no
- ``corners``        "How many corners does the shape have?"                zero / three / four
- ``warm_or_cold``   "Is the color of the shape warm or cold?"              warm / cold
- ``one_more``       "If one more shape were added, how many ...?"          two .. four
- ``next_number``    "Which number comes after the digit in the picture?"   one .. nine
- ``digit_parity``   "Is the digit even or odd?"                            even / odd

Several objects, relations between them (harder: with experts on the top six layers only, 150 steps
learn ``count_colour`` to about 0.6 and barely move the others; measured in ``benchmarks/README.md``):

- ``count_colour``   "How many red shapes are there?"                       one .. three
- ``exists``         "Is there a blue circle in the picture?"               yes / no
- ``left_or_right``  "Is the red shape left or right of the green shape?"   left / right
- ``largest_colour`` "What color is the largest shape?"                     a colour (tiny-llava already
  answers it: the largest shape dominates the image)
- ``bigger_side``    "Which shape is bigger, the left one or the right one?" left / right
- ``digit_sum``      "What is the sum of the two digits?"                   zero .. eight
- ``shape_of``       "What shape is the green one?"                         a shape

The default order (:data:`DEFAULT_ORDER`) puts tasks that answer with the same words (numbers) apart
and between others, so a later task can overwrite what an earlier one answers.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from ..data import DataError
from ..fsio import atomic_write_text
from ..world import (ALL_COLOURS, COLOURS, DIGITS, HELD_OUT_SEED_BASE, IMAGE_SIZE, SHAPES, _draw_digit, _draw_shape,
                     _shade, add_noise, canvas)

CELLS = ("top-left", "top-right", "bottom-left", "bottom-right")
# Side in pixels of a shape in a 32-px cell: small and large are far apart, so "bigger" has an answer.
SIDES = {"small": (8, 11), "medium": (13, 17), "large": (22, 27)}
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")


@dataclass(frozen=True)
class Item:
    """One object of a scene: a shape (or a digit, ``shape="digit"``), its colour, size and cell."""

    shape: str
    colour: str
    size: str = "medium"
    cell: int = 0
    digit: int | None = None

    def as_list(self) -> list:
        return [self.shape, self.colour, self.size, self.cell, self.digit]

    @classmethod
    def from_list(cls, value: list) -> "Item":
        shape, colour, size, cell, digit = value
        return cls(shape, colour, size, int(cell), None if digit is None else int(digit))


def render_items(items: tuple[Item, ...], seed: int, size: int = IMAGE_SIZE) -> Image.Image:
    """Draw the scene: each item inside its cell (position jittered by ``seed``), pale background, noise."""
    rng = np.random.default_rng(seed)
    image, background = canvas(rng, size)
    draw = ImageDraw.Draw(image)
    half = size // 2
    for item in items:
        x0, y0 = (item.cell % 2) * half, (item.cell // 2) * half
        fill = _shade(ALL_COLOURS[item.colour], rng, 25 if item.colour in COLOURS else 10)
        if item.shape == "digit":  # a seven-segment digit 14-22 px high
            cell = Image.new("RGB", (half, half), tuple(int(v) for v in background))
            _draw_digit(ImageDraw.Draw(cell), item.digit, rng, half, fill)
            mask = np.any(np.asarray(cell) != np.asarray(background, dtype=np.uint8), axis=-1)
            image.paste(cell, (x0, y0), Image.fromarray((mask * 255).astype(np.uint8)))
            continue
        s = float(rng.uniform(*SIDES[item.size]))
        x = x0 + float(rng.uniform(1, half - s - 1))
        y = y0 + float(rng.uniform(1, half - s - 1))
        _draw_shape(draw, item.shape, x, y, s, fill)
    return add_noise(image, rng)


@dataclass(frozen=True)
class TaskRecord:
    """One visual question of a task: a scene and render seed (or an image file), question, answer."""

    task: str
    question: str
    answer: str
    items: tuple[Item, ...] = ()
    seed: int = 0
    image_path: str | None = None  # a real image instead of a generated scene

    def image(self) -> Image.Image:
        if self.image_path is not None:
            with Image.open(self.image_path) as img:
                return img.convert("RGB")
        return render_items(self.items, self.seed)

    def to_json(self) -> dict:
        return {"question": self.question, "answer": self.answer, "items": [i.as_list() for i in self.items],
                "seed": self.seed}


# --- the tasks: each draws one (items, question, answer) from a random.Random ---------------------------
def _cells(rng: random.Random, n: int) -> list[int]:
    return rng.sample(range(4), n)


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _distinct(rng: random.Random, pool, n: int) -> list:
    return rng.sample(list(pool), n)


def count_colour(rng):
    colour, other = _distinct(rng, COLOURS, 2)
    k = rng.randint(1, 3)
    n_other = rng.randint(0, 4 - k)
    cells = _cells(rng, k + n_other)
    items = [Item(rng.choice(SHAPES), colour if i < k else other, "medium", c) for i, c in enumerate(cells)]
    return items, f"How many {colour} shapes are there?", NUMBERS[k]


def exists(rng):
    colours, shapes = _distinct(rng, COLOURS, 2), _distinct(rng, SHAPES, 2)
    cells = _cells(rng, 2)
    items = [Item(shapes[0], colours[0], "medium", cells[0]), Item(shapes[1], colours[1], "medium", cells[1])]
    if rng.random() < 0.5:
        colour, shape = (colours[0], shapes[0]) if rng.random() < 0.5 else (colours[1], shapes[1])
        return items, f"Is there {_a(colour)} {shape} in the picture?", "yes"
    # absent: one of the present colours with the other object's shape (binding), or a new colour
    colour, shape = (colours[0], shapes[1]) if rng.random() < 0.5 else (rng.choice([c for c in COLOURS if c not in colours]), shapes[0])
    return items, f"Is there {_a(colour)} {shape} in the picture?", "no"


def left_or_right(rng):
    a, b = _distinct(rng, COLOURS, 2)
    rows = (rng.randrange(2), rng.randrange(2))
    a_left = rng.random() < 0.5
    cell_a, cell_b = 2 * rows[0] + (0 if a_left else 1), 2 * rows[1] + (1 if a_left else 0)
    items = [Item(rng.choice(SHAPES), a, "medium", cell_a), Item(rng.choice(SHAPES), b, "medium", cell_b)]
    return items, f"Is the {a} shape left or right of the {b} shape?", "left" if a_left else "right"


def largest_colour(rng):
    n = rng.randint(2, 3)
    colours, cells = _distinct(rng, COLOURS, n), _cells(rng, n)
    items = [Item(rng.choice(SHAPES), colours[i], "large" if i == 0 else "small", cells[i]) for i in range(n)]
    return items, "What color is the largest shape?", colours[0]


def bigger_side(rng):
    row_l, row_r = rng.randrange(2), rng.randrange(2)
    left_big = rng.random() < 0.5
    sizes = ("large", "small") if left_big else ("small", "large")
    colours = _distinct(rng, COLOURS, 2)
    items = [Item(rng.choice(SHAPES), colours[0], sizes[0], 2 * row_l), Item(rng.choice(SHAPES), colours[1], sizes[1], 2 * row_r + 1)]
    return items, "Which shape is bigger, the left one or the right one?", "left" if left_big else "right"


def digit_sum(rng):
    a, b = rng.randrange(5), rng.randrange(5)
    row = rng.randrange(2)
    colour = rng.choice(list(COLOURS))
    items = [Item("digit", colour, "large", 2 * row, a), Item("digit", colour, "large", 2 * row + 1, b)]
    return items, "What is the sum of the two digits?", NUMBERS[a + b]


def shape_of(rng):
    colours, shapes, cells = _distinct(rng, COLOURS, 2), _distinct(rng, SHAPES, 2), _cells(rng, 2)
    items = [Item(shapes[i], colours[i], "medium", cells[i]) for i in range(2)]
    ask = rng.randrange(2)
    return items, f"What shape is the {colours[ask]} one?", shapes[ask]


# --- one object: features tiny-llava already reads (colour, shape, digit, count), mapped to new answers ----
WARM = ("red", "orange", "yellow")
CORNERS = {"circle": "zero", "triangle": "three", "square": "four", "diamond": "four"}


def _one(rng, shape=None, colour=None):
    return Item(shape or rng.choice(SHAPES), colour or rng.choice(list(COLOURS)), "medium", rng.randrange(4))


def digit_parity(rng):
    d = rng.randrange(10)
    return [Item("digit", rng.choice(list(COLOURS)), "medium", rng.randrange(4), d)], \
        "Is the digit even or odd?", "even" if d % 2 == 0 else "odd"


def next_number(rng):
    d = rng.randrange(9)
    return [Item("digit", rng.choice(list(COLOURS)), "medium", rng.randrange(4), d)], \
        "Which number comes after the digit in the picture?", DIGITS[d + 1]


def corners(rng):
    item = _one(rng)
    return [item], "How many corners does the shape have?", CORNERS[item.shape]


def is_colour(rng):
    item = _one(rng)
    asked = item.colour if rng.random() < 0.5 else rng.choice([c for c in COLOURS if c != item.colour])
    return [item], f"Is the shape {asked}?", "yes" if asked == item.colour else "no"


def warm_or_cold(rng):
    item = _one(rng)
    return [item], "Is the color of the shape warm or cold?", "warm" if item.colour in WARM else "cold"


def one_more(rng):
    k, shape, colour = rng.randint(1, 3), rng.choice(SHAPES), rng.choice(list(COLOURS))
    return [Item(shape, colour, "medium", c) for c in _cells(rng, k)], \
        "If one more shape were added, how many shapes would there be?", NUMBERS[k + 1]


TASKS: dict[str, Callable] = {f.__name__: f for f in (
    digit_parity, next_number, corners, is_colour, warm_or_cold, one_more,
    count_colour, exists, left_or_right, largest_colour, bigger_side, digit_sum, shape_of)}
# The default continual run: six tasks tiny-llava cannot do at the start; four answer with numbers.
DEFAULT_ORDER = ("is_colour", "corners", "warm_or_cold", "one_more", "next_number", "count_colour")


def make_task(name: str, n_train: int, n_test: int, seed: int = 0) -> dict[str, list[TaskRecord]]:
    """``n_train`` and ``n_test`` records of task ``name``; test renders use held-out seeds (and fresh scenes)."""
    draw = TASKS[name]
    out = {}
    for split, n, base in (("train", n_train, 0), ("test", n_test, HELD_OUT_SEED_BASE)):
        rng = random.Random(f"{name}/{split}/{seed}")
        out[split] = []
        for _ in range(n):
            items, question, answer = draw(rng)
            out[split].append(TaskRecord(name, question, answer, tuple(items), base + rng.randrange(HELD_OUT_SEED_BASE)))
    return out


@dataclass(frozen=True)
class Task:
    """A named task with its train and test records (from :func:`make_task` or :func:`load_task`)."""

    name: str
    train: tuple[TaskRecord, ...]
    test: tuple[TaskRecord, ...]

    def answers(self) -> list[str]:
        """The distinct answers of the task, sorted (chance accuracy is about one over their number)."""
        return sorted({r.answer for r in self.train + self.test})


def generated_task(name: str, n_train: int, n_test: int, seed: int = 0) -> Task:
    splits = make_task(name, n_train, n_test, seed)
    return Task(name, tuple(splits["train"]), tuple(splits["test"]))


def save_task(task: Task, path: Path) -> None:
    payload = {"task": task.name, "train": [r.to_json() for r in task.train], "test": [r.to_json() for r in task.test]}
    atomic_write_text(path, json.dumps(payload, separators=(",", ":")) + "\n")


def _record(rec, path: Path, task: str, index: int) -> TaskRecord:
    if not isinstance(rec, dict):
        raise DataError(path, "a record must be a JSON object", index)
    for key in ("question", "answer"):
        if not isinstance(rec.get(key), str) or not rec[key].strip():
            raise DataError(path, "missing or empty string", index, key)
    if "image" in rec:  # a real image, relative to the file
        image = (path.parent / str(rec["image"])).resolve()
        if not image.is_file():
            raise DataError(path, f"image file not found: {image}", index, "image")
        return TaskRecord(task, rec["question"], rec["answer"], image_path=str(image))
    items = rec.get("items")
    if not isinstance(items, list) or not items:
        raise DataError(path, "needs 'image' (a file) or 'items' (a non-empty list of scene objects)", index, "items")
    try:
        parsed = tuple(Item.from_list(i) for i in items)
    except (TypeError, ValueError):
        raise DataError(path, "each item is [shape, colour, size, cell, digit]", index, "items") from None
    for item in parsed:
        if item.colour not in ALL_COLOURS or item.size not in SIDES or not 0 <= item.cell < 4 \
                or (item.shape == "digit") != (item.digit is not None) or (item.shape != "digit" and item.shape not in SHAPES):
            raise DataError(path, f"not a drawable item: {item.as_list()}", index, "items")
    if not isinstance(rec.get("seed"), int):
        raise DataError(path, "missing or not an integer", index, "seed")
    return TaskRecord(task, rec["question"], rec["answer"], parsed, rec["seed"])


def load_task(path: "str | Path") -> Task:
    """Read a task file: ``{"task": NAME, "train": [...], "test": [...]}``; each record has ``question``,
    ``answer`` and either ``image`` (a path relative to the file) or ``items`` + ``seed`` (a generated scene)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such task file")
    try:
        payload = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(path, f"not valid JSON ({err})") from None
    if not isinstance(payload, dict):
        raise DataError(path, "a task file is a JSON object with 'task', 'train' and 'test'")
    name = payload.get("task")
    if not isinstance(name, str) or not name:
        raise DataError(path, "missing task name", field="task")
    splits = {}
    for split in ("train", "test"):
        records = payload.get(split)
        if not isinstance(records, list) or not records:
            raise DataError(path, "missing or empty list of records", field=split)
        splits[split] = tuple(_record(r, path, name, i) for i, r in enumerate(records))
    return Task(name, splits["train"], splits["test"])


