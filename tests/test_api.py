"""The public API: ``import minedit`` is cheap and side-effect free, and every advertised name resolves."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

import minedit
from conftest import REPO

API = ["load_model", "load_edits", "get_editor", "register_editor", "run_lifelong", "score_requests", "EditRequest",
       "EditorConfig", "ElderConfig", "FTConfig", "GraceConfig", "LoRAEditorConfig", "LemoeConfig", "RunConfig",
       "samples_dir"]


def test_import_minedit_loads_no_torch():
    code = "import sys, minedit; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'minedit')))"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['minedit']"
    assert proc.stderr == ""  # no logging, no warnings at import


@pytest.mark.parametrize("name", API)
def test_every_public_name_resolves(name):
    assert name in minedit.__all__ and name in dir(minedit)
    value = getattr(minedit, name)
    assert value is getattr(minedit, name)
    if name.endswith("Config"):
        assert dataclasses.is_dataclass(value) and value.__dataclass_params__.frozen


def test_public_names_are_the_defining_objects():
    from minedit.data import EditRequest, load_edits
    from minedit.editors import get_editor
    from minedit.editors.grace import GraceConfig
    from minedit.runner import run_lifelong

    assert minedit.EditRequest is EditRequest and minedit.load_edits is load_edits
    assert minedit.get_editor is get_editor and minedit.run_lifelong is run_lifelong
    assert minedit.GraceConfig is GraceConfig and get_editor("grace").config_class is GraceConfig


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'edit_everything'"):
        minedit.edit_everything  # noqa: B018
    assert not hasattr(minedit, "_private")


def _imports(path, module: str, package: str, known: set[str]) -> set[str]:
    """The minedit modules that ``module`` imports anywhere in its file (lazy imports inside functions too)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - max(node.level - 1, 0)] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            names = [target, *(f"{target}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in known and name != module}
    return found


def test_no_import_cycles_between_minedit_modules():
    """Counting lazy imports too: two modules that import each other (as models and zoo once did) are one
    module split in two, or need a third that both import."""
    files = {}
    for path in (REPO / "minedit").rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {m: _imports(p, m, m if p.name == "__init__.py" else m.rpartition(".")[0], set(files)) for m, p in files.items()}

    def reaches(start, goal):
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                if nxt == goal:
                    return True
                seen.add(nxt)
                todo.append(nxt)
        return False

    assert "minedit.zoo.tiny_llava" in graph and "minedit.bundled" in graph["minedit.zoo.tiny_llava"]
    cycles = sorted({tuple(sorted((a, b))) for a in graph for b in graph[a] if reaches(b, a)})
    assert cycles == [], f"import cycles through: {cycles}"
