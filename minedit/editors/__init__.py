"""The editor registry: one explicit table from CLI name to class; ``register_editor`` adds one."""
from __future__ import annotations

import os

from ..errors import UserError
from .base import Editor, EditorConfig, config_from_dict, read_meta
from .elder import ElderConfig, ElderEditor
from .ft import FTConfig, FTEditor
from .grace import GraceConfig, GraceEditor
from .lemoe import LemoeConfig, LemoeEditor
from .liveedit import LiveEditConfig, LiveEditEditor
from .lora import LoRAEditor, LoRAEditorConfig
from .none import NoneEditor
from .wise import WiseConfig, WiseEditor

EDITORS: dict[str, type[Editor]] = {
    NoneEditor.name: NoneEditor,
    GraceEditor.name: GraceEditor,
    ElderEditor.name: ElderEditor,
    FTEditor.name: FTEditor,
    LoRAEditor.name: LoRAEditor,
    LemoeEditor.name: LemoeEditor,
    LiveEditEditor.name: LiveEditEditor,
    WiseEditor.name: WiseEditor,
}


class UnknownEditorError(UserError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def register_editor(cls: type[Editor]) -> type[Editor]:
    """Add an editor class under its ``name`` (usable as a class decorator); returns the class."""
    if not (isinstance(cls, type) and issubclass(cls, Editor)) or not isinstance(getattr(cls, "name", None), str):
        raise TypeError(f"register_editor needs an Editor subclass with a name, got {cls!r}")
    EDITORS[cls.name] = cls
    return cls


def get_editor(name: str) -> type[Editor]:
    """The editor class registered as ``name``."""
    if name not in EDITORS:
        raise UnknownEditorError(f"unknown editor {name!r}; choose one of: {', '.join(sorted(EDITORS))}")
    return EDITORS[name]


def make_editor(name: str, model, tokenizer, **overrides) -> Editor:
    """An editor by registry name, with config fields overridden by keyword."""
    cls = get_editor(name)
    return cls(model, tokenizer, cls.config_class(**overrides))


def load_editor(directory: "str | os.PathLike", model, tokenizer) -> Editor:
    """Rebuild any saved editor on ``model``: the registry picks the class named in ``editor.json``."""
    return get_editor(read_meta(directory).get("editor", "?")).load(directory, model, tokenizer)


__all__ = ["EDITORS", "Editor", "EditorConfig", "ElderConfig", "ElderEditor", "FTConfig", "FTEditor", "GraceConfig",
           "GraceEditor", "LemoeConfig", "LemoeEditor", "LiveEditConfig", "LiveEditEditor", "LoRAEditor", "LoRAEditorConfig", "NoneEditor", "UnknownEditorError", "WiseConfig",
           "WiseEditor", "config_from_dict", "get_editor", "load_editor", "make_editor", "register_editor"]
