"""One object that owns every change an editor makes to a model, so one call undoes all of them.

PEFT's reversible-wrapper idea (Hu et al. 2022; the PEFT library's ``base_layer``) applied to a whole
edit: module swaps, in-place parameter changes, hooks, and anything else with an undo step (a
shared :class:`~minedit.sequence.SequenceTracker` releasing its hook). :class:`Patcher` records
each change as it is made and :meth:`Patcher.undo` reverts them in reverse order: the model comes
back bit for bit, with no hook left behind. ``Editor`` and ``Mixture`` both record into the
editor's patcher, so ``editor.restore()`` is the one teardown call.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn as nn

from .hooks import replace_module


class Patcher:
    """Module swaps, parameter backups, hooks and undo callbacks on one model, undone by :meth:`undo`."""

    def __init__(self, model: nn.Module):
        self.model = model
        self._modules: dict[str, nn.Module] = {}  # name -> the original module
        self._params: dict[str, torch.Tensor] = {}  # name -> a copy of the original values
        self._undo: list[Callable[[], None]] = []  # hook removals and other undo steps, in order made

    def swap(self, name: str, new: nn.Module) -> nn.Module:
        """Put ``new`` where module ``name`` is; returns the original (the first one, if swapped twice)."""
        current = self.model.get_submodule(name)
        if name not in self._modules and hasattr(current, "base_layer"):
            raise RuntimeError(f"{name} is already wrapped by {type(current).__name__} (another editor's edit); "
                               "call restore() on that editor first")
        old = replace_module(self.model, name, new)
        self._modules.setdefault(name, old)
        return self._modules[name]

    def swapped_elsewhere(self, name: str, original: nn.Module) -> None:
        """Record that ``name`` held ``original`` before code we do not own (PEFT's injection) replaced it."""
        self._modules.setdefault(name, original)

    def original(self, name: str) -> nn.Module:
        """The module that stood at ``name`` before the first swap (or the current one)."""
        return self._modules.get(name) or self.model.get_submodule(name)

    def backup(self, name: str) -> nn.Parameter:
        """Remember parameter ``name`` before it is changed in place; returns the parameter."""
        param = self.model.get_parameter(name)
        if name not in self._params:
            self._params[name] = param.detach().clone()
        return param

    def original_value(self, name: str) -> torch.Tensor | None:
        """The backed-up original values of parameter ``name`` (None if it was never changed)."""
        return self._params.get(name)

    def hook(self, handle) -> None:
        """Keep a hook handle (``register_forward_hook`` and friends); undo removes it."""
        self._undo.append(handle.remove)

    def on_undo(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` at undo (after the hooks recorded before it are removed, before earlier ones)."""
        self._undo.append(fn)

    def undo(self) -> None:
        """Revert everything, newest first: hooks and callbacks, then modules, then parameter values."""
        while self._undo:
            self._undo.pop()()
        for name, module in reversed(list(self._modules.items())):
            replace_module(self.model, name, module)
        with torch.no_grad():
            for name, value in self._params.items():
                self.model.get_parameter(name).copy_(value)
        self._modules.clear()
        self._params.clear()

    @contextmanager
    def suspended(self) -> Iterator[None]:
        """The original model inside the block: swapped modules and changed parameter values are put back, then
        re-applied on exit. Hooks stay (an editor's hooks only observe: a feature, the sequence's positions), so a
        timing inside the block counts their small cost on the unedited side too. What inference overhead is
        measured against (:func:`minedit.runner.measure_overhead`), on the same model, seconds apart."""
        edited_modules = {name: replace_module(self.model, name, module) for name, module in self._modules.items()}
        edited_values = {}
        with torch.no_grad():
            for name, value in self._params.items():
                param = self.model.get_parameter(name)
                edited_values[name] = param.detach().clone()
                param.copy_(value)
        try:
            yield
        finally:
            for name, module in reversed(list(edited_modules.items())):
                replace_module(self.model, name, module)
            with torch.no_grad():
                for name, value in edited_values.items():
                    self.model.get_parameter(name).copy_(value)

    def __bool__(self) -> bool:
        return bool(self._modules or self._params or self._undo)
