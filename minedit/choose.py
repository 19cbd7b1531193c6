"""Which editor, for what: pick editors from ``minedit compare`` rows under a use's needs.

A comparison (``python -m minedit compare``, :func:`minedit.compare.compare`) holds one row per editor, number of
edits T and protocol: quality metrics (Rel/Gen/Loc, or Rel/T-Gen/M-Gen/T-Loc/M-Loc for image edits) and costs
(seconds per edit, bytes of editor state per edit). A *use* says what it needs at its T: a floor on some metrics
(``at_least={"rel": 0.95, "loc": 0.95}``) and a ceiling on the costs. :func:`shortfalls` lists the needs one row
misses; :func:`recommend` keeps the editors that miss none and orders them cheapest first.

The rules, all of them (``minedit.course.check_recommend`` holds a learner's version to the same):

- only rows at the use's T and protocol count;
- ``none`` (the unedited model, the reference row every comparison includes) is never recommended, and a
  skipped row (it has ``"skipped"``: the run was left out) meets no need;
- a floor is met when the metric is *at least* the floor (a Rel of 1.0 meets a floor of 1.0); a metric the row
  does not have, or holds as None or NaN (not measured: exact match off), does not meet it;
- ceilings: ``seconds_per_edit <= max_seconds`` and ``bytes_per_edit / 1024 <= max_kb`` (KB of 1024 bytes);
- order: the smallest state per edit first (it grows with every edit and ships with the model), then the
  fewest seconds per edit, then the editor's name, so equal costs still give one order.

Seconds per edit are wall time on the machine that ran the comparison (noisy on a shared CPU); state per
edit and the quality metrics do not depend on the machine.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

UNEDITED = "none"  # the reference row's editor name


def _value(metrics: Mapping[str, Any], name: str) -> float | None:
    """A measured metric, or None when the row lacks it or holds None/NaN."""
    value = metrics.get(name)
    return None if value is None or value != value else float(value)  # NaN != NaN


def shortfalls(row: Mapping[str, Any], at_least: Mapping[str, float] | None = None, max_seconds: float = math.inf,
               max_kb: float = math.inf) -> list[str]:
    """What ``row`` (one comparison row) misses, one short line per unmet need (``"gen 0.097 < 0.8"``);
    an empty list when it meets them all. A skipped row misses everything: ``["skipped: <why>"]``."""
    if "skipped" in row:
        return [f"skipped: {row['skipped']}"]
    missed = []
    for name, floor in (at_least or {}).items():
        value = _value(row["metrics"], name)
        if value is None:
            missed.append(f"{name} not measured")
        elif value < floor:
            missed.append(f"{name} {value:.3f} < {floor:g}")
    if row["seconds_per_edit"] > max_seconds:
        missed.append(f"{row['seconds_per_edit']:.2f} s/edit > {max_seconds:g}")
    if row["bytes_per_edit"] / 1024 > max_kb:
        missed.append(f"{row['bytes_per_edit'] / 1024:.1f} KB/edit > {max_kb:g}")
    return missed


def recommend(rows: Sequence[Mapping[str, Any]], T: int, at_least: Mapping[str, float] | None = None,
              max_seconds: float = math.inf, max_kb: float = math.inf, protocol: str = "retention") -> list[str]:
    """The editors whose row at ``T`` and ``protocol`` meets every need, cheapest first (module docstring)."""
    fits = [r for r in rows if r["T"] == T and r["protocol"] == protocol and r["editor"] != UNEDITED
            and not shortfalls(r, at_least, max_seconds, max_kb)]
    fits.sort(key=lambda r: (r["bytes_per_edit"], r["seconds_per_edit"], r["editor"]))
    return [r["editor"] for r in fits]


def scaling_rows(records: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """Rows of ``benchmarks/edit_scaling.py``'s JSON (flat: ``rel``, ..., ``state_bytes_per_edit``) in the shape
    ``compare`` writes, so :func:`recommend` reads both. Its runs are retention runs; a skipped one stays skipped."""
    rows = []
    for r in records:
        key = {"editor": r["editor"], "T": r["T"], "protocol": "retention"}
        if "skipped" in r:
            rows.append({**key, "skipped": r["skipped"]})
            continue
        rows.append({**key, "metrics": {m: r.get(m) for m in metrics}, "seconds_per_edit": r["seconds_per_edit"],
                     "inference_overhead": r["inference_overhead"], "bytes_per_edit": r.get("state_bytes_per_edit", 0.0)})
    return rows
