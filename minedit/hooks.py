"""Read or replace activations of any module, by name, and always remove the hooks.

The contract follows TransformerLens: a hook is ``fn(activation, name) -> activation | None``;
returning a tensor replaces the activation, returning ``None`` leaves it as it was.

>>> with trace(model, {"model.layers.3.mlp": lambda act, name: act * 0}):
...     model(**batch)                       # layer 3's MLP is silenced here only

``point="output"`` hooks a module's output (for tuple outputs, the first element), ``point="input"``
its first positional input.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Mapping

import torch
import torch.nn as nn

HookFn = Callable[[torch.Tensor, str], "torch.Tensor | None"]


def _resolve(model: nn.Module, key: "str | Callable[[str], bool]") -> list[tuple[str, nn.Module]]:
    if callable(key):
        found = [(n, m) for n, m in model.named_modules() if key(n)]
        if not found:
            raise KeyError("hook predicate matched no module")
        return found
    try:
        return [(key, model.get_submodule(key))]
    except AttributeError as err:
        raise KeyError(f"no module named {key!r} in {type(model).__name__}") from err


def _output_hook(fn: HookFn, name: str):
    def hook(module, args, output):
        if isinstance(output, tuple):
            new = fn(output[0], name)
            return None if new is None else (new, *output[1:])
        return fn(output, name)

    return hook


def _input_hook(fn: HookFn, name: str):
    def hook(module, args):
        new = fn(args[0], name)
        return None if new is None else (new, *args[1:])

    return hook


@contextmanager
def trace(model: nn.Module, hooks: Mapping["str | Callable[[str], bool]", HookFn], point: str = "output") -> Iterator[None]:
    """Attach ``hooks`` (module name or name predicate -> fn) for the duration of the block."""
    if point not in ("output", "input"):
        raise ValueError(f"point must be 'output' or 'input', not {point!r}")
    handles = []
    try:
        for key, fn in hooks.items():
            for name, module in _resolve(model, key):
                if point == "output":
                    handles.append(module.register_forward_hook(_output_hook(fn, name)))
                else:
                    handles.append(module.register_forward_pre_hook(_input_hook(fn, name)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def record(model: nn.Module, names: list[str], point: str = "output", detach: bool = True) -> Iterator[dict[str, torch.Tensor]]:
    """Collect activations into a dict (name -> tensor of the last forward) inside the block."""
    store: dict[str, torch.Tensor] = {}

    def keep(act: torch.Tensor, name: str) -> None:
        store[name] = act.detach() if detach else act

    with trace(model, {n: keep for n in names}, point=point):
        yield store


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Swap the submodule ``name`` for ``new`` (PEFT's ``setattr(parent, child, wrapper)``); return the old one."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old
