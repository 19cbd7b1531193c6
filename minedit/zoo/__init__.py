"""Models that minedit builds itself (there is no model hub here): ``tiny-llava``.

``python -m minedit.zoo build tiny-llava`` trains and writes the artifact shipped in
``data_samples/``; ``load_model("tiny-llava")`` loads it (see :mod:`minedit.zoo.tiny_llava`).
"""
from __future__ import annotations

ZOO = ("tiny-llava",)
