"""``KEY=VALUE`` settings from the command line (``--set`` of ``minedit bench``, the zoo build, benchmarks)."""
from __future__ import annotations

import json

from .errors import ConfigError


def parse_assignment(text: str, flag: str = "--set") -> tuple[str, object]:
    """``"eps=2.0"`` -> ``("eps", 2.0)``: the value is read as JSON (numbers, true/false, null, lists),
    else kept as a string; the key's type is checked later, against the config it sets."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"{flag} expects KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def parse_assignments(items, flag: str = "--set") -> dict[str, object]:
    """A dict of several ``KEY=VALUE`` strings (a later key wins)."""
    return dict(parse_assignment(item, flag) for item in items)
