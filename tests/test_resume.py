"""Resumable lifelong runs: a real ``python -m minedit bench`` killed with SIGKILL after a checkpoint and resumed
with ``--resume`` ends with the per-edit rows and metrics of an uninterrupted run (timings aside)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO
from minedit.cli import main
from minedit.fsio import atomic_folder, settle

RUN = ["--editor", "grace", "--edits", "8", "--checkpoint-every", "4", "--no-exact", "--seed", "3"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def _bench(*argv, timeout=300):
    return subprocess.run([sys.executable, "-m", "minedit", "bench", *argv], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def _results(out):
    result = json.loads((out / "results.json").read_text(encoding="utf-8"))
    rows = [json.loads(line) for line in (out / "edits.jsonl").read_text(encoding="utf-8").splitlines()]
    for row in rows:
        assert row.pop("seconds") >= 0  # wall-clock: the only thing allowed to differ
    timings = ("seconds_per_edit", "inference_overhead", "latency_seconds")
    return {k: v for k, v in result.items() if k not in timings}, rows


def _kill_after_first_checkpoint(out) -> int:
    proc = subprocess.Popen([sys.executable, "-m", "minedit", "bench", *RUN, "--out", str(out)], cwd=REPO, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    progress = out / "checkpoint" / "progress.json"
    deadline = time.monotonic() + 240
    while not progress.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err  # killed, not finished or crashed
    return json.loads(progress.read_text(encoding="utf-8"))["done"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(uninterrupted output folder, killed-and-resumed output folder, edits done when killed)."""
    base = tmp_path_factory.mktemp("resume")
    full, resumed = base / "full", base / "resumed"
    done = _kill_after_first_checkpoint(resumed)
    assert not (resumed / "results.json").exists()
    proc = _bench("--resume", str(resumed))
    assert proc.returncode == 0, proc.stderr
    assert main(["bench", *RUN, "--out", str(full)]) == 0  # in process: the same code, no second start-up
    return full, resumed, done


def test_killed_run_resumes_to_the_uninterrupted_results(runs):
    full, resumed, done = runs
    assert done == 4
    (expected, expected_rows), (got, got_rows) = _results(full), _results(resumed)
    assert got == expected
    assert got_rows == expected_rows and len(got_rows) == 8
    assert json.loads((resumed / "checkpoint" / "progress.json").read_text())["done"] == 8


def test_resume_refuses_conflicting_flags(runs, capsys):
    _, resumed, _ = runs
    assert main(["bench", "--resume", str(resumed), "--edits", "20"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "--edits 20 conflicts with the run's --edits 8" in err[0]
    assert main(["bench", "--resume", str(resumed), "--out", str(resumed.parent / "elsewhere")]) == 2
    assert "drop --out" in capsys.readouterr().err


def test_resume_without_checkpoint_is_a_user_error(tmp_path, capsys):
    assert main(["bench", "--resume", str(tmp_path / "never-ran")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "no checkpoint to resume" in err[0]


def test_atomic_folder_keeps_the_old_folder_until_the_new_one_is_complete(tmp_path):
    target = tmp_path / "state"
    with atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("one")
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as tmp:
            (tmp / "a.txt").write_text("two")
            raise RuntimeError("crash while writing")
    assert (target / "a.txt").read_text() == "one" and sorted(p.name for p in tmp_path.iterdir()) == ["state"]
    # a crash between "old out of the way" and "new into place" is undone by settle()
    os.rename(target, tmp_path / ".state.old")
    settle(target)
    assert (target / "a.txt").read_text() == "one"
    with atomic_folder(target, replace=False) as tmp:  # an existing folder wins
        (tmp / "a.txt").write_text("three")
    assert (target / "a.txt").read_text() == "one"


@pytest.mark.parametrize("protocol", ["immediate", "retention"])
def test_run_lifelong_resumes_from_a_progress_in_process(make_tiny, smol_tokenizer, tmp_path, protocol):
    """run_lifelong itself: a run resumed from its Progress at 2 of 5 edits (editor saved and reloaded on a fresh
    model) gives the rows of the uninterrupted run; under ``immediate`` the done rows come from the checkpoint."""
    from minedit.data import load_edits
    from minedit.editors import GraceEditor, load_editor
    from minedit.editors.grace import GraceConfig
    from minedit.runner import RunConfig, run_lifelong
    from conftest import ZSRE_SAMPLE

    requests = load_edits(f"zsre:{ZSRE_SAMPLE}", limit=5)
    config = RunConfig(protocol=protocol, edit_batch_size=2, checkpoint_every=2, exact=False, checkpoints=(2, 5),
                       latency_prompts=2, latency_repeats=1, progress=False)
    grace = GraceConfig(steps=20, seed=5)
    saved = []

    def keep(progress):
        saved.append(progress)
        if progress.done == 2:
            editor.save(tmp_path / "editor")

    editor = GraceEditor(make_tiny("llama", vocab_size=len(smol_tokenizer)), smol_tokenizer, grace)
    full = run_lifelong(editor, requests, config, on_checkpoint=keep)
    # batches end at 2, 4, 5: a checkpoint after each multiple of 2 passed and at the end
    assert [p.done for p in saved] == [2, 4, 5]
    first = saved[0]
    assert all("rel" not in row for row in first.rows) or protocol == "immediate"  # a snapshot, not the live rows
    if protocol == "immediate":
        first.rows[0]["rel"] = 0.125  # a marker: the rows of done edits are kept, not rescored
    reloaded = load_editor(tmp_path / "editor", make_tiny("llama", vocab_size=len(smol_tokenizer)), smol_tokenizer)
    assert reloaded.n_edits == 2
    resumed = run_lifelong(reloaded, requests, config, resume=first)

    def strip(rows):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]

    if protocol == "immediate":
        assert resumed.rows[0]["rel"] == 0.125
        resumed.rows[0]["rel"] = full.rows[0]["rel"]
    assert strip(resumed.rows) == strip(full.rows)
    assert [point["T"] for point in resumed.curve] == [2, 5] and resumed.curve == full.curve
    assert resumed.seconds_per_edit == pytest.approx(sum(row["seconds"] for row in resumed.rows) / 5)
    with pytest.raises(ValueError, match="cannot resume"):
        run_lifelong(GraceEditor(make_tiny("llama", vocab_size=len(smol_tokenizer)), smol_tokenizer, grace),
                     requests, config, resume=first)  # a fresh editor holds none of the 2 edits
