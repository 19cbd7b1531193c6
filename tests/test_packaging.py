"""``pip install .`` (not editable) gives a minedit that finds its shipped samples and tiny-llava's parts.

The package is installed with ``pip install --no-deps --no-build-isolation --target`` (offline: setuptools
comes from the running environment) from a copy of the source, then imported in a subprocess whose working
directory is outside the checkout. Skip with ``MINEDIT_SKIP_PACKAGING=1``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.skipif(os.environ.get("MINEDIT_SKIP_PACKAGING") == "1", reason="MINEDIT_SKIP_PACKAGING=1")

PROBE = """
import json, sys
import minedit
from minedit import paths
from minedit.cli import default_data
from minedit.zoo.tiny_llava import artifact_dir
samples = paths.samples_dir()
print(json.dumps({"minedit": minedit.__file__, "samples": str(samples), "artifact": str(artifact_dir()),
                  "default_data": default_data("smollm2-135m"), "vlm_data": default_data("tiny-llava"),
                  "files": sorted(p.name for p in samples.iterdir())}))
"""


def _skip(folder: str, names: list[str]) -> list[str]:
    """What the copy leaves out: caches, and the VLM benchmark's rendered images (not packaged: made from its records)."""
    return [n for n in names if n == "__pycache__" or n.endswith(".pyc")
            or (n == "images" and os.path.basename(folder) == "vlm_bench")]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    base = tmp_path_factory.mktemp("pkg")
    src, target = base / "src", base / "site"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("minedit", "data_samples"):  # a copy: the build writes build/ and *.egg-info beside the sources
        shutil.copytree(REPO / name, src / name, ignore=_skip)
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                           "--no-build-isolation", "--no-index", "--target", str(target), "."],
                          cwd=src, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    return target


def _probe(installed, cwd, **env):
    environment = {k: v for k, v in os.environ.items() if k != "MINEDIT_DATA"}
    environment.update(PYTHONPATH=str(installed), OMP_NUM_THREADS="1", **env)
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, env=environment, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_installed_package_finds_its_samples(installed, tmp_path):
    found = _probe(installed, tmp_path)
    assert found["minedit"].startswith(str(installed))
    assert found["samples"] == str(installed / "minedit" / "data_samples")
    assert {"zsre_sample.json", "zsre_bench.json", "counterfact_sample.json", "mmedit_world", "tiny_llava"} <= set(found["files"])
    assert found["artifact"] == str(installed / "minedit" / "data_samples" / "tiny_llava")
    assert (installed / "minedit" / "data_samples" / "tiny_llava" / "model.safetensors").stat().st_size > 1_000_000
    images = list((installed / "minedit" / "data_samples" / "mmedit_world" / "images").glob("*.png"))
    assert len(images) == len(list((REPO / "data_samples" / "mmedit_world" / "images").glob("*.png"))) > 0
    assert found["default_data"] == f"zsre:{installed / 'minedit' / 'data_samples' / 'zsre_sample.json'}"
    assert (installed / "minedit" / "data_samples" / "vlm_bench" / "eval.json").stat().st_size > 100_000
    assert found["vlm_data"].startswith(f"mmedit:{installed}")
    assert (installed / "minedit" / "data_samples" / "liveedit" / "generator.safetensors").stat().st_size > 100_000
    assert (installed / "minedit" / "data_samples" / "continual" / "corners.json").stat().st_size > 10_000
    assert (installed / "minedit" / "continual" / "locator.py").is_file()


def test_minedit_data_overrides_the_lookup(installed, tmp_path):
    found = _probe(installed, tmp_path, MINEDIT_DATA=str(tmp_path))
    assert found["samples"] == str(tmp_path)


def test_every_subpackage_is_listed_in_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "minedit").rglob("__init__.py")}
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
