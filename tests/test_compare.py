"""``minedit compare``: every editor x T x protocol on one model, restored between runs; files; CLI errors."""
from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import ZSRE_SAMPLE, build_tiny
from minedit.cli import main
from minedit.compare import RestoreError, compare, markdown_table, write_results
from minedit.data import load_edits
from minedit.editors import EDITORS, NoneEditor

FAST = dict(latency_prompts=4, latency_repeats=1)  # RunConfig fields: latency is not what these tests check
EDITORS_UNDER_TEST = ["none", "ft", "lora", "grace", "elder"]  # wise is left out: it is being written elsewhere


def run(model_tok, requests, editors, sizes, protocols=("retention",), **kwargs):
    model, tok = model_tok
    kwargs = {"exact": False, "progress": False, "run_options": FAST, **kwargs}
    return compare(model, tok, requests, editors, sizes, protocols, **kwargs)


def without_timings(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("seconds_per_edit", "inference_overhead", "peak_rss_mb", "wall_seconds")}


@pytest.fixture(scope="module")
def three_edits():
    return load_edits(f"zsre:{ZSRE_SAMPLE}", limit=3)


@pytest.fixture(scope="module")
def tiny(smol_tokenizer):
    """A tiny Llama of this module's own (compare edits it and restores it after every run)."""
    return build_tiny("llama", vocab_size=len(smol_tokenizer), seed=0), smol_tokenizer


@pytest.fixture(scope="module")
def full(tiny, three_edits):
    return run(tiny, three_edits, EDITORS_UNDER_TEST, [3, 1], ["retention", "immediate"],
               overrides={"elder": {"steps": 10}})


def test_a_row_for_every_editor_size_and_protocol(full):
    rows = full["rows"]
    expected = [(e, p, t) for e in EDITORS_UNDER_TEST for p in ("retention", "immediate") for t in (1, 3)]
    assert [(r["editor"], r["protocol"], r["T"]) for r in rows] == expected  # sizes sorted ascending
    for r in rows:
        assert "skipped" not in r
        assert set(r["metrics"]) == {"rel", "gen", "loc", "rel_em", "gen_em"}
        assert all(0.0 <= r["metrics"][m] <= 1.0 for m in ("rel", "gen", "loc"))
        assert math.isnan(r["metrics"]["rel_em"])  # exact match off
        assert r["seconds_per_edit"] >= 0 and r["inference_overhead"] > 0 and r["bytes_per_edit"] >= 0
    assert full["settings"]["configs"]["elder"]["steps"] == 10 and full["settings"]["sizes"] == [1, 3]
    assert {"platform", "cpu_count", "torch", "threads", "date"} <= set(full["machine"])


def test_none_is_the_unedited_model_and_editors_hold_state(full):
    rows = {(r["editor"], r["protocol"], r["T"]): r for r in full["rows"]}
    for protocol in ("retention", "immediate"):
        for T in (1, 3):
            none = rows["none", protocol, T]
            assert none["metrics"]["loc"] == 1.0 and none["bytes_per_edit"] == 0
            assert rows["grace", protocol, T]["bytes_per_edit"] > 0 and rows["elder", protocol, T]["bytes_per_edit"] > 0
    # With nothing edited, both protocols score the same model.
    assert rows["none", "retention", 3]["metrics"] == rows["none", "immediate", 3]["metrics"]


def test_a_row_does_not_depend_on_the_editors_before_it(tiny, three_edits, full):
    before = {k: v.clone() for k, v in tiny[0].state_dict().items()}
    after_ft = run(tiny, three_edits, ["ft", "none"], [3])["rows"]
    alone = run(tiny, three_edits, ["none"], [3])["rows"]
    assert without_timings(after_ft[1]) == without_timings(alone[0])
    ft_first = next(r for r in full["rows"] if (r["editor"], r["T"], r["protocol"]) == ("ft", 3, "retention"))
    assert without_timings(after_ft[0]) == without_timings(ft_first)  # seeded: same row after none as first
    assert all(torch.equal(before[k], v) for k, v in tiny[0].state_dict().items())  # the model is back bit for bit


class LeakyEditor(NoneEditor):
    """Changes a weight without recording it, so restore() cannot undo it: the bug compare must catch."""

    name = "leaky"

    def _edit_one(self, request):
        with torch.no_grad():
            self.model.model.norm.weight.add_(1.0)
        return {}


def test_a_failed_restore_is_an_error(fresh_tiny_llama, three_edits, monkeypatch):
    monkeypatch.setitem(EDITORS, "leaky", LeakyEditor)
    with pytest.raises(RestoreError, match=r"leaky.restore\(\) left the model changed: tensor model.norm.weight"):
        run(fresh_tiny_llama, three_edits, ["leaky", "none"], [1])


def test_budget_skip_and_files(tiny, three_edits, tmp_path):
    result = run(tiny, three_edits, ["none", "grace"], [1, 3], budget_minutes=1e-9)
    rows = result["rows"]
    assert [("skipped" in r) for r in rows] == [False, False, False, True]  # none is never skipped
    assert rows[3]["editor"] == "grace" and rows[3]["T"] == 3 and "> budget" in rows[3]["skipped"]
    result["settings"].update(model="tiny", data="zsre:sample")
    paths = write_results(result, tmp_path / "out")
    assert [p.name for p in paths] == ["compare.json", "compare.md", "compare.png"]
    stored = json.loads(paths[0].read_text(encoding="utf-8"))
    assert [(r["editor"], r["T"]) for r in stored["rows"]] == [(r["editor"], r["T"]) for r in rows]
    assert stored["rows"][0]["metrics"]["rel_em"] is None  # NaN -> null
    table = [line for line in paths[1].read_text(encoding="utf-8").splitlines() if line.startswith("|")]
    assert table == markdown_table(result).splitlines()
    assert len(table) == 2 + len(rows) and table[0].split(" | ")[:6] == ["| editor", "T", "protocol", "rel", "gen", "loc"]
    assert "rel_em" not in table[0]  # all-NaN columns are left out
    assert table[2].startswith("| none | 1 | retention | ") and "skipped: projected" in table[5]
    none_cells = table[3].strip("| ").split(" | ")
    assert none_cells[5] == "1.000" and none_cells[-1] == "0.0"  # loc, KB/edit
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_compare_on_a_tiny_model_folder(tmp_path, smol_tokenizer, capsys):
    folder = tmp_path / "tiny"
    build_tiny("llama", vocab_size=len(smol_tokenizer)).save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    out = tmp_path / "cmp"
    code = main(["compare", "--model", str(folder), "--editors", "none,grace", "--edits", "2,1", "--protocol", "both",
                 "--no-exact", "--set", "grace.eps=2.0", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads((out / "compare.json").read_text(encoding="utf-8"))
    assert len(result["rows"]) == 2 * 2 * 2 and result["settings"]["model"] == str(folder)
    assert result["settings"]["data"].endswith("zsre_bench.json") and result["settings"]["configs"]["grace"]["eps"] == 2.0
    assert captured.out.count("\n| grace |") == 4 and "compare.png" in captured.out


@pytest.fixture
def no_model_load(monkeypatch):
    import minedit.models

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(minedit.models, "load_model", refuse)


@pytest.mark.parametrize("argv, words", [
    (["--editors", "none,nope"], ["unknown editor(s) 'nope'", "grace"]),
    (["--editors", "none,,grace"], ["--editors"]),
    (["--edits", "0,x"], ["--edits expects a comma-separated list of positive integers", "'0,x'"]),
    (["--edits", "10,5000"], ["zsre_bench.json", "asked for 5000 edits", "1039"]),
    (["--set", "eps=2.0"], ["--set expects EDITOR.KEY=VALUE"]),
    (["--set", "grace.nope=1"], ["unknown GraceConfig field(s): nope"]),
    (["--editors", "none,grace", "--set", "lemoe.rank=4"], ["'lemoe' is not among the compared editors"]),
    (["--protocol", "forever"], ["--protocol", "invalid choice"]),
    (["--data", "zsre:/nonexistent/edits.json"], ["/nonexistent/edits.json", "file not found"]),
    (["--budget-minutes", "0"], ["--budget-minutes must be positive"]),
])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys, no_model_load, argv, words):
    out = tmp_path / "out"
    assert main(["compare", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("minedit: error: "), err
    assert all(word in err[0] for word in words), err
    assert not out.exists()


def test_cli_unwritable_output_exits_2(tmp_path, capsys, no_model_load):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["compare", "--editors", "none", "--edits", "1", "--out", str(afile / "run")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "output folder" in err[0]
