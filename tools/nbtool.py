"""Notebook upkeep: build a notebook from a percent-format script, execute it, strip noisy metadata.

    python tools/nbtool.py build SRC.py OUT.ipynb   # cells from '# %%' / '# %% [markdown]' markers
    python tools/nbtool.py run NB.ipynb             # execute in place (kernel: this environment)
    python tools/nbtool.py clean NB.ipynb ...       # drop execution counts' noise, timings, widget state

Committed notebooks keep their (small) outputs so a reader sees the expected plots and tables.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat

KEEP_CELL_META = {"tags"}


def build(src: Path, out: Path) -> None:
    text = src.read_text(encoding="utf-8")
    cells = []
    for block in re.split(r"^# %%", text, flags=re.M)[1:]:
        header, _, body = block.partition("\n")
        body = body.strip("\n")
        if header.strip().startswith("[markdown]"):
            lines = [line[2:] if line.startswith("# ") else line.lstrip("#") for line in body.splitlines()]
            cells.append(nbformat.v4.new_markdown_cell("\n".join(lines)))
        else:
            cells.append(nbformat.v4.new_code_cell(body))
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                   "language_info": {"name": "python"}}
    nbformat.write(nb, out)


def clean(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                   "language_info": {"name": "python"}}
    for i, cell in enumerate(nb.cells):
        cell.metadata = {k: v for k, v in cell.metadata.items() if k in KEEP_CELL_META}
        cell["id"] = f"cell-{i:02d}"
        if cell.cell_type == "code":
            # stderr (progress bars, warnings) is noise in a committed notebook
            cell.outputs = [o for o in cell.outputs if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
            for o in cell.outputs:
                o.pop("metadata", None) if o.get("output_type") == "stream" else None
    nbformat.write(nb, path)


def run(path: Path, timeout: int = 600) -> None:
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    nbformat.write(nb, path)
    clean(path)


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    if cmd == "build":
        build(Path(args[0]), Path(args[1]))
    elif cmd == "run":
        for a in args:
            run(Path(a))
    elif cmd == "clean":
        for a in args:
            clean(Path(a))
    else:
        sys.exit(f"unknown command {cmd!r}")
