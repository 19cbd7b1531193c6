"""minedit: lifelong model editing with mixtures of low-rank experts.

The public API, imported on first use (``import minedit`` itself loads neither torch nor transformers)::

    import minedit
    model, tokenizer = minedit.load_model("smollm2-135m")
    requests = minedit.load_edits(f"zsre:{minedit.samples_dir() / 'zsre_sample.json'}", limit=10)
    editor = minedit.get_editor("grace")(model, tokenizer, minedit.GraceConfig())
    result = minedit.run_lifelong(editor, requests, minedit.RunConfig(protocol="retention"))
"""
from __future__ import annotations

import importlib

# public name -> the module that defines it
_API = {
    "load_model": "minedit.models",
    "load_edits": "minedit.data",
    "EditRequest": "minedit.data",
    "get_editor": "minedit.editors",
    "register_editor": "minedit.editors",
    "run_lifelong": "minedit.runner",
    "RunConfig": "minedit.runner",
    "score_requests": "minedit.metrics",
    "samples_dir": "minedit.paths",
    "EditorConfig": "minedit.editors",
    "ElderConfig": "minedit.editors",
    "FTConfig": "minedit.editors",
    "GraceConfig": "minedit.editors.grace",
    "LoRAEditorConfig": "minedit.editors",
    "LemoeConfig": "minedit.editors",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'minedit' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
