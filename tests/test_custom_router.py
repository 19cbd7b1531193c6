"""The README's under-40-line custom router: defined, registered, and benchmarked against ELDER's router."""
import re
import subprocess
import sys

from conftest import REPO


def _example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- example: custom-router -->\n```python\n(.*?)```", text, re.S)
    assert match, "README lost its custom-router example"
    return match.group(1)


def test_example_is_under_40_lines():
    code = [line for line in _example().splitlines() if line.strip()]
    assert len(code) < 40, len(code)


def test_custom_router_runs_end_to_end(tmp_path):
    script = tmp_path / "custom_router.py"
    script.write_text(_example(), encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = dict(line.split(" ", 1) for line in done.stdout.strip().splitlines())
    assert set(rows) == {"nearest-edit", "elder"}
    rel = float(re.search(r"'rel': ([0-9.]+)", rows["nearest-edit"]).group(1))
    assert rel >= 0.9  # the new router keeps its edits
