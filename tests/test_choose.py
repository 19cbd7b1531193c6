"""minedit.choose: the recommendation rule over compare rows, pinned on hand-written rows."""
from __future__ import annotations

import json
import math
from pathlib import Path

from minedit.choose import recommend, scaling_rows, shortfalls

ROOT = Path(__file__).resolve().parent.parent


def row(editor, T=100, protocol="retention", seconds=1.0, kb=8.0, **metrics):
    return {"editor": editor, "T": T, "protocol": protocol, "metrics": metrics, "seconds_per_edit": seconds,
            "inference_overhead": 1.0, "bytes_per_edit": kb * 1024}


ROWS = [
    row("none", seconds=0.0, kb=0.0, rel=0.1, gen=0.1, loc=1.0),
    row("grace", seconds=0.9, kb=8.3, rel=1.0, gen=0.1, loc=1.0),
    row("elder", seconds=0.8, kb=432.2, rel=1.0, gen=0.91, loc=1.0),
    row("lemoe", seconds=0.2, kb=432.2, rel=1.0, gen=0.9, loc=1.0),
    row("ft", seconds=1.0, kb=34.6, rel=0.34, gen=0.26, loc=0.62),
    row("elder", T=10, seconds=0.8, kb=432.2, rel=1.0, gen=1.0, loc=1.0),
    row("grace", protocol="immediate", seconds=0.9, kb=8.3, rel=1.0, gen=0.1, loc=1.0),
    {"editor": "wise", "T": 100, "protocol": "retention", "skipped": "projected 40.0 min > budget 30 min"},
]


def test_recommend_orders_by_state_then_time_then_name():
    assert recommend(ROWS, 100) == ["grace", "ft", "lemoe", "elder"]  # no need: every editor that ran, cheapest first
    assert recommend(ROWS, 100, {"rel": 0.95, "loc": 0.95}) == ["grace", "lemoe", "elder"]
    assert recommend(ROWS, 100, {"rel": 0.95, "gen": 0.8, "loc": 0.95}) == ["lemoe", "elder"]
    assert recommend(ROWS, 100, {"gen": 0.91}) == ["elder"]  # a value equal to the floor meets it
    assert recommend(ROWS, 100, {"rel": 0.95}, max_seconds=0.5) == ["lemoe"]
    assert recommend(ROWS, 100, {"rel": 0.95}, max_kb=8.3) == ["grace"]  # a ceiling met exactly
    assert recommend(ROWS, 10) == ["elder"] and recommend(ROWS, 100, protocol="immediate") == ["grace"]
    assert recommend(ROWS, 1000) == [] and "none" not in recommend(ROWS, 100)


def test_unmeasured_metrics_and_skipped_rows_meet_nothing():
    rows = [row("grace", rel=1.0, rel_em=None), row("elder", rel=1.0, rel_em=float("nan")), row("ft", rel=1.0)]
    assert recommend(rows, 100, {"rel_em": 0.0}) == []
    assert shortfalls(rows[0], {"rel_em": 0.5}) == ["rel_em not measured"]
    assert shortfalls(ROWS[-1]) == ["skipped: projected 40.0 min > budget 30 min"]
    assert shortfalls(ROWS[4], {"rel": 0.95, "loc": 0.5}, max_seconds=0.5, max_kb=10) == [
        "rel 0.340 < 0.95", "1.00 s/edit > 0.5", "34.6 KB/edit > 10"]
    assert shortfalls(ROWS[1], {"rel": 1.0}, max_seconds=math.inf) == []


def test_scaling_rows_read_the_stored_vlm_benchmark():
    metrics = ["rel", "t_gen", "m_gen", "t_loc", "m_loc"]
    records = json.loads((ROOT / "benchmarks" / "results" / "vlm_bench_scaling.json").read_text())
    rows = scaling_rows(records, metrics)
    assert len(rows) == len(records)
    for record, r in zip(records, rows):
        assert (r["editor"], r["T"], r["protocol"]) == (record["editor"], record["T"], "retention")
        if "skipped" in record:
            assert r["skipped"] == record["skipped"] and "metrics" not in r
        else:
            assert r["metrics"] == {m: record[m] for m in metrics}
            assert r["bytes_per_edit"] == record["state_bytes_per_edit"]
    assert recommend(rows, 100, {"t_loc": 0.95, "m_loc": 0.95, "rel": 0.95}) == ["grace"]
