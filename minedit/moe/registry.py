"""A name -> class table for each kind of part (experts, routers, features, gates, allocation policies).

``--set router=NAME`` (and ``gate=``, ``feature=``) picks a registered part by name; a user's new
idea joins the table with ``@ROUTERS.register("mine")`` (or :func:`minedit.moe.register_router`)
and is then usable from the command line and the benchmarks like the built-in ones.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Generic, TypeVar

from ..errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names to classes for one kind of part; unknown names are a user error naming the choices."""

    def __init__(self, kind: str):
        self.kind = kind
        self._table: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator: ``@REGISTRY.register("name")``; re-registering a name replaces it."""
        def add(cls: type[T]) -> type[T]:
            self._table[name] = cls
            return cls
        return add

    def get(self, name: str) -> type[T]:
        if name not in self._table:
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(sorted(self._table))}")
        return self._table[name]

    def build(self, name: str, **options: Any) -> T:
        """An instance of part ``name``, given the options its constructor takes (the others are left out:
        one editor config serves every part, e.g. ``tau`` reaches only the routers that have one)."""
        cls = self.get(name)
        params = inspect.signature(cls.__init__).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return cls(**options)
        return cls(**{k: v for k, v in options.items() if k in params})

    def names(self) -> list[str]:
        return sorted(self._table)

    def __contains__(self, name: str) -> bool:
        return name in self._table
