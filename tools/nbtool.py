"""Notebook upkeep: one percent-format source per notebook, built into a learner's and a solutions notebook.

    python tools/nbtool.py build-all [--run]        # notebooks/src/*.py -> notebooks/*.ipynb + notebooks/solutions/*.ipynb
    python tools/nbtool.py run NB.ipynb ...         # execute in place (kernel: this environment), then clean
    python tools/nbtool.py check                    # CI gate: committed notebooks == what their sources build
    python tools/nbtool.py build SRC.py OUT.ipynb [--learner]
    python tools/nbtool.py clean NB.ipynb ...       # drop noisy metadata, stderr, widget views

Sources (``notebooks/src/NN_name.py``): cells start at ``# %%`` (code) or ``# %% [markdown]``. An exercise
is a code cell whose solution lies between ``# BEGIN SOLUTION`` and ``# END SOLUTION``:

- the **solutions** notebook (``notebooks/solutions/``) keeps the solution, drops the markers, and is
  committed executed, with its (small) outputs, so a reader sees the expected tables and plots;
- the **learner's** notebook (``notebooks/``) replaces the solution by ``raise NotImplementedError(...)``
  (or by the lines of an optional ``# BEGIN STUB`` ... ``# END STUB`` block, uncommented) and is
  committed without outputs: a learner runs it, and a stored "check passed" would be a lie. Its
  exercise checks go through ``minedit.course.checked``, which falls back to the library's function
  while an exercise is a stub, so the notebook runs top to bottom before anything is written.
``# NBVAL_CHECK_OUTPUT`` cells are compared with their stored output by nbval (solutions only).

``check`` rebuilds every notebook into memory and fails naming the file and the first differing cell:
the learner's notebook must equal its build exactly; a solutions notebook must have the built cell
types and sources, and every code cell executed.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
SRC_DIR = ROOT / "notebooks" / "src"
LEARNER_DIR = ROOT / "notebooks"
SOLUTIONS_DIR = ROOT / "notebooks" / "solutions"
KEEP_CELL_META = {"tags"}
METADATA = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"}}
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
SOLUTION_RE = re.compile(r"^([ \t]*)# BEGIN SOLUTION[^\n]*\n(.*?)^[ \t]*# END SOLUTION[^\n]*\n?", re.M | re.S)
STUB_RE = re.compile(r"^[ \t]*# BEGIN STUB[^\n]*\n(.*?)^[ \t]*# END STUB[^\n]*\n?", re.M | re.S)
CHECKED_RE = re.compile(r"^(\w+) = course\.checked\(\s*(\w+)\s*,\s*course\.(check_\w+)", re.M)


@dataclass(frozen=True)
class Cell:
    kind: str  # "code" or "markdown"
    source: str  # as written in the source file (markers included)


@dataclass(frozen=True)
class Exercise:
    """One exercise of a notebook source: the function the learner writes and the check that judges it."""

    notebook: str  # source file stem, e.g. "00_meet_the_model"
    function: str  # e.g. "my_token_accuracy"
    check: str  # a function of minedit.course, e.g. "check_token_accuracy"
    result: str  # the name the later cells use: the learner's function once it passes, else the library's
    solution: str  # the whole exercise cell, as in the solutions notebook
    stub: str  # the same, as in the learner's notebook
    imports: str  # the notebook's import statements (first code cell)


def parse(src: Path) -> list[Cell]:
    text = src.read_text(encoding="utf-8")
    cells = []
    for block in re.split(r"^# %%", text, flags=re.M)[1:]:
        header, _, body = block.partition("\n")
        body = body.strip("\n")
        if header.strip().startswith("[markdown]"):
            lines = [line[2:] if line.startswith("# ") else line.lstrip("#") for line in body.splitlines()]
            cells.append(Cell("markdown", "\n".join(lines)))
        else:
            cells.append(Cell("code", body))
    return cells


def render(source: str, learner: bool) -> str:
    """A code cell's source for one audience: the solution kept (markers dropped) or replaced by the stub."""
    def solution(m: re.Match) -> str:
        indent, body = m.group(1), m.group(2)
        if not learner:
            return STUB_RE.sub("", body)
        stub = STUB_RE.search(body)
        if stub:
            return "".join(re.sub(r"^([ \t]*)# ?", r"\1", line, count=1) for line in stub.group(1).splitlines(True))
        return f'{indent}raise NotImplementedError("your code here: see the exercise above")\n'

    out = SOLUTION_RE.sub(solution, source)
    if learner:  # the learner's notebook stores no outputs, so there is nothing for nbval to compare
        out = "\n".join(line for line in out.splitlines() if line.strip() != "# NBVAL_CHECK_OUTPUT")
    return out.rstrip("\n")


def build_notebook(src: Path, learner: bool) -> nbformat.NotebookNode:
    cells = []
    for i, cell in enumerate(parse(src)):
        if cell.kind == "markdown":
            nb_cell = nbformat.v4.new_markdown_cell(cell.source)
        else:
            nb_cell = nbformat.v4.new_code_cell(render(cell.source, learner))
        nb_cell["id"] = f"cell-{i:02d}"
        cells.append(nb_cell)
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata = dict(METADATA)
    return nb


def exercises(src: Path) -> list[Exercise]:
    """Every exercise of a source: a code cell with a solution block and a ``course.checked(fn, course.check_x``."""
    import ast

    cells = parse(src)
    first_code = ast.parse(next(c.source for c in cells if c.kind == "code"))
    imports = "\n".join(ast.unparse(node) for node in first_code.body if isinstance(node, (ast.Import, ast.ImportFrom)))
    found = []
    for cell in cells:
        if cell.kind != "code" or not SOLUTION_RE.search(cell.source):
            continue
        calls = list(CHECKED_RE.finditer(cell.source))
        if not calls:
            raise ValueError(f"{src.name}: an exercise cell without a `name = course.checked(...)` line:\n{cell.source[:200]}")
        for call in calls:
            found.append(Exercise(src.stem, call.group(2), call.group(3), call.group(1),
                                  render(cell.source, False), render(cell.source, True), imports))
    return found


def sources() -> list[Path]:
    return sorted(SRC_DIR.glob("[0-9][0-9]_*.py"))


def write(nb: nbformat.NotebookNode, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


def _cells_equal(a, b, with_outputs: bool) -> bool:
    if a.cell_type != b.cell_type or a.source != b.source:
        return False
    if with_outputs and a.cell_type == "code":
        return not a.get("outputs") and not b.get("outputs") and a.get("execution_count") == b.get("execution_count")
    return True


def differences(src: Path) -> list[str]:
    """Why the committed notebooks of ``src`` differ from its build (empty when they agree)."""
    problems = []
    for learner, folder in ((True, LEARNER_DIR), (False, SOLUTIONS_DIR)):
        path = folder / f"{src.stem}.ipynb"
        rel = path.relative_to(ROOT)
        if not path.exists():
            problems.append(f"{rel}: missing (run `python tools/nbtool.py build-all`)")
            continue
        want, have = build_notebook(src, learner), nbformat.read(path, as_version=4)
        for i, (w, h) in enumerate(zip(want.cells, have.cells)):
            if not _cells_equal(w, h, with_outputs=learner):
                what = "outputs (a learner's notebook is committed without outputs)" if w.source == h.source and w.cell_type == h.cell_type else "source"
                problems.append(f"{rel}: cell {i} differs from {src.relative_to(ROOT)} ({what}): "
                                f"expected {w.source[:60]!r}, found {h.source[:60]!r}")
                break
        else:
            if len(want.cells) != len(have.cells):
                problems.append(f"{rel}: {len(have.cells)} cells, its source builds {len(want.cells)}")
            elif not learner:
                unrun = [i for i, c in enumerate(have.cells) if c.cell_type == "code" and c.get("execution_count") is None]
                if unrun:
                    problems.append(f"{rel}: not executed (cell {unrun[0]}); run `python tools/nbtool.py run {rel}`")
    return problems


def build_all() -> list[Path]:
    """Write every learner's notebook; write a solutions notebook only where its sources changed (its
    outputs are kept otherwise). Returns the solutions notebooks that need ``run``."""
    stale = []
    for src in sources():
        write(build_notebook(src, learner=True), LEARNER_DIR / f"{src.stem}.ipynb")
        path, fresh = SOLUTIONS_DIR / f"{src.stem}.ipynb", build_notebook(src, learner=False)
        if path.exists():
            old = nbformat.read(path, as_version=4)
            if len(old.cells) == len(fresh.cells) and all(_cells_equal(a, b, False) for a, b in zip(fresh.cells, old.cells)):
                continue
            old_code = [c for c in old.cells if c.cell_type == "code"]
            new_code = [c for c in fresh.cells if c.cell_type == "code"]
            if [c.source for c in old_code] == [c.source for c in new_code]:  # only the text changed: keep the outputs
                for new, kept in zip(new_code, old_code):
                    new.outputs, new.execution_count = kept.outputs, kept.execution_count
                write(fresh, path)
                continue
        write(fresh, path)
        stale.append(path)
    return stale


def clean(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nb.metadata = dict(METADATA)
    for i, cell in enumerate(nb.cells):
        cell.metadata = {k: v for k, v in cell.metadata.items() if k in KEEP_CELL_META}
        cell["id"] = f"cell-{i:02d}"
        if cell.cell_type == "code":
            # stderr (progress bars, warnings) is noise in a committed notebook; a widget view cannot be
            # shown without its kernel (each widget cell prints a static fallback instead)
            cell.outputs = [o for o in cell.outputs
                            if not (o.get("output_type") == "stream" and o.get("name") == "stderr")
                            and WIDGET_MIME not in o.get("data", {})]
            for o in cell.outputs:
                if o.get("output_type") == "stream":
                    o.pop("metadata", None)
    nbformat.write(nb, path)


def run(path: Path, timeout: int = 600) -> None:
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    nbformat.write(nb, path)
    seconds = []
    for i, cell in enumerate(nb.cells):
        timing = cell.metadata.get("execution", {})
        if "iopub.execute_input" in timing and "shell.execute_reply" in timing:
            from datetime import datetime

            start, end = (datetime.fromisoformat(timing[k].replace("Z", "+00:00")) for k in ("iopub.execute_input", "shell.execute_reply"))
            seconds.append(((end - start).total_seconds(), i))
    slow = ", ".join(f"cell {i}: {t:.0f}s" for t, i in sorted(seconds, reverse=True)[:5])
    print(f"{path}: {sum(t for t, _ in seconds):.0f}s in cells; slowest {slow}", file=sys.stderr)
    clean(path)


def check() -> int:
    problems = [p for src in sources() for p in differences(src)]
    for p in problems:
        print(p, file=sys.stderr)
    if not problems:
        print(f"{len(sources())} sources: learner's and solutions notebooks in sync")
    return 1 if problems else 0


if __name__ == "__main__":
    cmd, *args = sys.argv[1:] or ["help"]
    if cmd == "build":
        write(build_notebook(Path(args[0]), learner="--learner" in args), Path(args[1]))
    elif cmd == "build-all":  # --run: also execute the solutions notebooks whose code changed
        for p in build_all():
            if "--run" in args:
                print(f"running {p.relative_to(ROOT)}", file=sys.stderr)
                run(p)
            else:
                print(f"{p.relative_to(ROOT)}: sources changed, run `python tools/nbtool.py run {p.relative_to(ROOT)}`")
    elif cmd == "run":
        for a in args:
            run(Path(a))
    elif cmd == "clean":
        for a in args:
            clean(Path(a))
    elif cmd == "check":
        sys.exit(check())
    else:
        sys.exit(__doc__)
