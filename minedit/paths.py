"""Where minedit's shipped files are: the edit samples and the tiny-llava artifact (``data_samples/``).

:func:`samples_dir` is the one lookup every module uses, in this order:

1. ``$MINEDIT_DATA``, when set (a folder laid out like ``data_samples/``);
2. ``data_samples/`` beside the ``minedit`` package, in a source checkout (and an editable install);
3. the copy installed with the package (``minedit/data_samples/``, shipped as package data by
   ``pyproject.toml``), for ``pip install .`` or a wheel.
"""
from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_MARKER = "zsre_sample.json"  # a file every copy of data_samples/ has


def samples_dir() -> Path:
    """The ``data_samples`` folder (see the module docstring for the lookup order)."""
    if os.environ.get("MINEDIT_DATA"):
        return Path(os.environ["MINEDIT_DATA"]).expanduser()
    for candidate in (_PACKAGE.parent / "data_samples", _PACKAGE / "data_samples"):
        if (candidate / _MARKER).is_file():
            return candidate
    return _PACKAGE / "data_samples"  # not found: callers name this path in their error


def sample(*parts: str) -> Path:
    """A path inside :func:`samples_dir`, e.g. ``sample("mmedit_world", "vqa_sample.json")``."""
    return samples_dir().joinpath(*parts)


def default_data(model: str) -> str:
    """The shipped sample a model is benchmarked on when ``--data`` is not given."""
    if model == "tiny-llava":
        return f"mmedit:{sample('mmedit_world', 'vqa_sample.json')}"
    return f"zsre:{sample('zsre_sample.json')}"
