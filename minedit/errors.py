"""The one line between a user's mistake and a bug.

Every error that bad *input* causes (a data file, a model path, a config value, a command-line
flag) is a :class:`UserError`: the command line prints it as one line and exits with status 2.
Anything else is a bug and keeps its traceback (exit status 1), so a fault inside an editor never
looks like a user mistake.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input from the user; the message names the file, record and field where there is one."""


class ConfigError(UserError, ValueError):
    """A config value (``--set KEY=VALUE``, a config dataclass field) that cannot be used."""
