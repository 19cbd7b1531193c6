"""The one ``Editor`` contract every method implements, plus exact restore and atomic save/load.

- ``Editor(model, tokenizer, config)``: the model is edited in place and stays an ordinary
  Hugging Face model (``generate`` works); ``config`` is the editor's frozen dataclass.
- ``edit(request)`` / ``edit_batch(requests)``: apply edits; they are never rolled back.
- ``restore()``: the original weights and modules come back bit for bit.
- ``save(dir)`` / ``load(dir, model, tokenizer)``: ``editor.json`` (name, config, metadata) plus
  ``state.safetensors`` (tensors only: loading never unpickles anything), written to a temporary
  folder and renamed into place, so a crash leaves either the old state or the new one.
"""
from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from ..data import EditRequest
from ..patch import Patcher
from ..training import FrozenHead

STATE_FILE, META_FILE = "state.safetensors", "editor.json"


@dataclasses.dataclass(frozen=True)
class EditorConfig:
    """Settings shared by every editor."""

    seed: int = 0  # seeds each edit's optimisation, so a run is reproducible


class Editor:
    """Base class: subclasses set ``name`` and ``config_class`` and implement ``_edit_one``
    (or ``edit_batch`` when a method edits a batch at once)."""

    name: ClassVar[str] = "base"
    config_class: ClassVar[type] = EditorConfig

    def __init__(self, model: nn.Module, tokenizer, config: EditorConfig | None = None):
        config = config if config is not None else self.config_class()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.n_edits = 0
        self.patches = Patcher(model)  # every module swap, parameter change and hook: restore() undoes them
        self._head: FrozenHead | None = None  # see frozen_head()

    # --- editing -------------------------------------------------------------------------------
    def edit(self, request: EditRequest) -> dict[str, Any]:
        """Apply one edit; returns a small dict of statistics (steps, loss, ...)."""
        return self.edit_batch([request])[0]

    def edit_batch(self, requests: Sequence[EditRequest]) -> list[dict[str, Any]]:
        """Apply several edits; the default applies them one after another."""
        stats = []
        for request in requests:
            stats.append(self._edit_one(request))
            self.n_edits += 1
        return stats

    def _edit_one(self, request: EditRequest) -> dict[str, Any]:
        raise NotImplementedError

    def frozen_head(self) -> FrozenHead:
        """The model's LM head for training steps, made once per editor (a transposed copy: :class:`FrozenHead`)."""
        if self._head is None:
            self._head = FrozenHead(self.model.get_output_embeddings())
        return self._head

    def _generator(self) -> torch.Generator:
        """A generator seeded by (config.seed, number of edits so far): each edit is reproducible."""
        return torch.Generator().manual_seed(self.config.seed * 1_000_003 + self.n_edits)

    # --- exact restore -------------------------------------------------------------------------
    def _backup_param(self, name: str) -> nn.Parameter:
        """Remember parameter ``name`` before it is changed in place; returns the parameter."""
        return self.patches.backup(name)

    def _swap_module(self, name: str, new: nn.Module) -> nn.Module:
        """Put ``new`` where module ``name`` is, remembering the first original; returns the original."""
        return self.patches.swap(name, new)

    def restore(self) -> None:
        """Undo every edit in one call: hooks removed, original modules back, original values copied back."""
        self.patches.undo()
        self.n_edits, self._head = 0, None
        self._reset()

    def _reset(self) -> None:
        """Forget the editor's own state (subclasses with state override this)."""

    # --- save / load ---------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Everything needed to rebuild the edits, as named tensors."""
        return {}

    def state_meta(self) -> dict[str, Any]:
        """JSON-serialisable state that is not a tensor."""
        return {}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Rebuild the edits on ``self.model`` from :meth:`state_tensors` and :meth:`state_meta`."""

    def save(self, directory: "str | os.PathLike") -> Path:
        """Write ``editor.json`` and ``state.safetensors`` into ``directory`` atomically."""
        directory = Path(directory)
        meta = {
            "editor": self.name,
            "config": dataclasses.asdict(self.config),
            "n_edits": self.n_edits,
            "model": getattr(self.model, "minedit_name", None),
            "state": self.state_meta(),
        }
        tensors = {k: v.detach().contiguous().clone() for k, v in self.state_tensors().items()}
        from ..fsio import atomic_folder  # the old save stays until the new one is complete

        with atomic_folder(directory) as tmp:
            save_file(tensors, str(tmp / STATE_FILE))
            (tmp / META_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        return directory

    @classmethod
    def load(cls, directory: "str | os.PathLike", model: nn.Module, tokenizer) -> "Editor":
        """Rebuild a saved editor on ``model`` (the same base model it was saved from)."""
        meta, tensors = read_saved(directory)
        if meta.get("editor") != cls.name:
            raise ValueError(f"{directory}: saved by editor {meta.get('editor')!r}, not {cls.name!r}")
        editor = cls(model, tokenizer, config_from_dict(cls.config_class, meta.get("config", {})))
        editor.load_state(tensors, meta.get("state", {}))
        editor.n_edits = int(meta.get("n_edits", 0))
        return editor


def read_meta(directory: "str | os.PathLike") -> dict[str, Any]:
    """The metadata (``editor.json``) of a saved editor folder."""
    directory = Path(directory)
    if not (directory / META_FILE).is_file() or not (directory / STATE_FILE).is_file():
        raise FileNotFoundError(f"{directory}: not a saved editor (needs {META_FILE} and {STATE_FILE})")
    try:
        return json.loads((directory / META_FILE).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{directory / META_FILE}: malformed JSON ({err.msg})") from None


def read_saved(directory: "str | os.PathLike") -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The metadata and tensors of a saved editor folder (safetensors only, never pickle)."""
    meta = read_meta(directory)
    return meta, load_file(str(Path(directory) / STATE_FILE))


def config_from_dict(config_class: type, values: dict[str, Any]):
    """Build a frozen config from JSON values: lists become tuples where the field is a tuple, and a value
    of the wrong type (``--set seed=abc``) is refused with a message naming the field."""
    from ..errors import ConfigError

    hints = typing.get_type_hints(config_class)
    names = {f.name for f in dataclasses.fields(config_class)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"unknown {config_class.__name__} field(s): {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(sorted(names))}")
    fixed = {}
    for key, value in values.items():
        options = _type_options(hints[key])
        if isinstance(value, list) and any(o is tuple or typing.get_origin(o) is tuple for o in options):
            value = tuple(value)
        if not _matches(value, options):
            raise ConfigError(f"{config_class.__name__}.{key}: expected {hints[key]}, got {value!r}")
        fixed[key] = value
    return config_class(**fixed)


def _type_options(hint) -> tuple:
    """The alternatives of ``X | Y`` / ``Optional[X]`` (or just ``(hint,)``)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _matches(value, options) -> bool:
    for option in options:
        base = typing.get_origin(option) or option
        if option is type(None) and value is None:
            return True
        if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if base is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if base in (bool, str, tuple, dict, list) and isinstance(value, base):
            return True
        if base is typing.Any or (base is typing.Literal and value in typing.get_args(option)):
            return True
    return False
