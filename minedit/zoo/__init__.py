"""Models that minedit builds itself (there is no model hub here): ``tiny-llava`` and LiveEdit's generator.

``python -m minedit.zoo build tiny-llava`` trains and writes the artifact shipped in
``data_samples/``; ``load_model("tiny-llava")`` loads it (see :mod:`minedit.zoo.tiny_llava`).
``python -m minedit.zoo build liveedit-generator`` meta-trains LiveEdit's expert generator for
tiny-llava (:mod:`minedit.zoo.build_liveedit`); the ``liveedit`` editor loads it.
"""
from __future__ import annotations

ZOO = ("tiny-llava", "liveedit-generator")
