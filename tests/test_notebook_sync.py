"""The sync gate: committed notebooks are exactly what notebooks/src/*.py builds, and a hand edit fails it."""
from __future__ import annotations

import sys
import shutil
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import nbtool  # noqa: E402  (tools/nbtool.py: the notebook builder and sync gate)


def test_committed_notebooks_match_their_sources():
    problems = [p for src in nbtool.sources() for p in nbtool.differences(src)]
    assert not problems, "\n".join(problems) + "\nrebuild: python tools/nbtool.py build-all (then run the solutions)"


@pytest.fixture
def copies(tmp_path, monkeypatch):
    """The committed notebooks copied to a temporary tree that the gate reads instead."""
    learner, solutions = tmp_path / "notebooks", tmp_path / "notebooks" / "solutions"
    solutions.mkdir(parents=True)
    for src in nbtool.sources():
        shutil.copy(nbtool.LEARNER_DIR / f"{src.stem}.ipynb", learner)
        shutil.copy(nbtool.SOLUTIONS_DIR / f"{src.stem}.ipynb", solutions)
    monkeypatch.setattr(nbtool, "LEARNER_DIR", learner)
    monkeypatch.setattr(nbtool, "SOLUTIONS_DIR", solutions)
    monkeypatch.setattr(nbtool, "ROOT", tmp_path)
    srcs = [Path(shutil.copy(s, tmp_path / s.name)) for s in nbtool.sources()]
    monkeypatch.setattr(nbtool, "sources", lambda: srcs)
    return learner, solutions


def _edit(path: Path, index: int, change) -> None:
    nb = nbformat.read(path, as_version=4)
    change(nb.cells[index])
    nbformat.write(nb, path)


def _first_code(path: Path) -> int:
    return next(i for i, c in enumerate(nbformat.read(path, as_version=4).cells) if c.cell_type == "code")


@pytest.mark.parametrize("folder", ["learner", "solutions"])
def test_gate_fails_on_a_hand_edited_cell(copies, folder):
    learner, solutions = copies
    assert nbtool.check() == 0
    path = (learner if folder == "learner" else solutions) / "02_grace.ipynb"
    i = _first_code(path)
    _edit(path, i, lambda c: setattr(c, "source", c.source + "\nprint('edited by hand')"))
    problems = [p for src in nbtool.sources() for p in nbtool.differences(src)]
    assert len(problems) == 1 and "02_grace.ipynb" in problems[0] and f"cell {i} " in problems[0], problems
    assert nbtool.check() == 1


def test_gate_fails_on_a_hand_edited_markdown_cell(copies):
    learner, _ = copies
    _edit(learner / "00_meet_the_model.ipynb", 0, lambda c: setattr(c, "source", c.source.replace("Objectives", "Goals")))
    assert nbtool.check() == 1


def test_gate_fails_on_a_learner_notebook_with_outputs(copies):
    learner, _ = copies
    path = learner / "03_mixture_of_lora.ipynb"
    _edit(path, _first_code(path), lambda c: c.outputs.append(nbformat.v4.new_output("stream", name="stdout", text="hi\n")))
    problems = nbtool.differences(next(s for s in nbtool.sources() if s.stem == "03_mixture_of_lora"))
    assert problems and "outputs" in problems[0]


def test_gate_fails_on_an_unexecuted_solutions_notebook(copies):
    _, solutions = copies
    path = solutions / "01_why_lifelong_is_hard.ipynb"
    _edit(path, _first_code(path), lambda c: setattr(c, "execution_count", None))
    problems = nbtool.differences(next(s for s in nbtool.sources() if s.stem == "01_why_lifelong_is_hard"))
    assert problems and "not executed" in problems[0]


def test_learner_build_raises_and_solutions_build_solves(tmp_path):
    for src in nbtool.sources():
        learner = "\n".join(c.source for c in nbtool.build_notebook(src, learner=True).cells)
        solution = "\n".join(c.source for c in nbtool.build_notebook(src, learner=False).cells)
        for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN STUB"):
            assert marker not in learner and marker not in solution, (src.name, marker)
        assert "raise NotImplementedError" in learner and "raise NotImplementedError" not in solution
        assert "NBVAL_CHECK_OUTPUT" not in learner  # nothing stored to compare with
