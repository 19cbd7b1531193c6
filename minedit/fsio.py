"""Atomic writes: a reader (or a resumed run) sees the old file or folder or the new one, never half of one.

- :func:`atomic_folder` yields a temporary folder beside the target; when the ``with`` block ends
  without an error it is renamed into place. An existing target is kept (as ``.NAME.old``) until the
  rename has succeeded, and :func:`settle` puts it back if a crash fell between the two renames.
- :func:`atomic_write_text` writes a file through a temporary file and ``os.replace``.

Used by editor saves, the model cache, the tiny-llava artifact, results files and run checkpoints.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import UserError


def _old(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def settle(target: "str | os.PathLike") -> Path:
    """Finish an interrupted replacement of ``target``: restore the old folder if the new one never arrived."""
    target = Path(target)
    old = _old(target)
    if old.exists():
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)  # the new one arrived; the old one is leftover
        else:
            os.rename(old, target)
    return target


@contextmanager
def atomic_folder(target: "str | os.PathLike", replace: bool = True) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it becomes ``target`` in one rename.

    ``replace=False``: an existing ``target`` wins (e.g. a concurrent writer of the same cache entry
    got there first) and what was written here is dropped.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    settle(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the result is an ordinary folder
        if not target.exists():
            try:
                os.rename(tmp, target)
            except OSError:
                if replace or not target.exists():
                    raise
        elif replace:
            old = _old(target)
            os.rename(target, old)
            try:
                os.rename(tmp, target)
            except BaseException:
                os.rename(old, target)  # put the previous one back
                raise
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: "str | os.PathLike", text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file renamed over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def check_writable_folder(folder: "str | os.PathLike") -> Path:
    """``folder`` if it can be created and written, else a one-line :class:`~minedit.errors.UserError`.

    Nothing is left behind: the nearest existing ancestor is probed with a temporary folder.
    """
    folder = Path(folder).expanduser()
    probe = folder.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        where = "is a file" if probe == folder.absolute() else f"is inside {probe}, which is a file"
        raise UserError(f"output folder {folder} {where}")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".minedit-probe-", dir=probe))
    except OSError as err:
        raise UserError(f"output folder {folder} cannot be written ({err.strerror or type(err).__name__}: {probe})") from None
    return folder


def no_nan(obj):
    """NaN (a metric with nothing to score, e.g. exact match under --no-exact) becomes JSON null."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: no_nan(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [no_nan(v) for v in obj]
    return obj
