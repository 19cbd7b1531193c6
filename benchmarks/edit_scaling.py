"""How editors scale with the number of edits T: seconds per edit, inference overhead, memory per edit.

    .venv/bin/python benchmarks/edit_scaling.py --editors none,ft,lora,grace --T 10,100,1000

For each editor and each T it applies T edits in sequence on a freshly restored model (retention protocol)
and reports: seconds per edit, inference overhead (edited latency / unedited latency on the same prompts),
the editor's saved state in bytes per edit (what a lifelong editor accumulates), the process's peak memory,
and Rel/Gen/Loc. A T whose projected run would pass ``--budget-minutes`` is skipped and said so.
The runs are :func:`minedit.compare.compare`'s (``python -m minedit compare`` is the command-line form);
this script adds several ``--edit-batch`` sizes and keeps its flat JSON rows (``state_bytes_per_edit``).
Run it on a quiet machine: timings on a shared CPU are noisy.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from minedit.compare import compare, default_data, markdown_table, parse_overrides
from minedit.data import load_edits
from minedit.models import load_model

ROOT = Path(__file__).resolve().parents[1]


def flat_row(row: dict, batch: int, plan: str) -> dict:
    """A compare row in this benchmark's flat format (the results files in benchmarks/results/ use it)."""
    head = {"editor": row["editor"], "T": row["T"], "batch": batch}
    if "skipped" in row:
        return {**head, "skipped": row["skipped"]}
    return {**head, "plan": plan, "seconds_per_edit": row["seconds_per_edit"], "inference_overhead": row["inference_overhead"],
            "state_bytes_per_edit": row["bytes_per_edit"], "peak_rss_mb": row["peak_rss_mb"], "wall_seconds": row["wall_seconds"],
            **{k: v for k, v in row["metrics"].items() if not k.endswith("_em")}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--editors", default="none,ft,lora,grace")
    p.add_argument("--T", default="10,100,1000", help="comma-separated numbers of edits")
    p.add_argument("--data", default=None, help="FORMAT:PATH (default: zsre_bench.json; for tiny-llava the MMEdit sample)")
    p.add_argument("--budget-minutes", type=float, default=30.0, help="skip a T whose projected run passes this")
    p.add_argument("--set", action="append", default=[], metavar="EDITOR.KEY=VALUE", help="config override")
    p.add_argument("--edit-batch", default="1", help="comma-separated edits per edit_batch call (LEMoE: one expert per batch)")
    p.add_argument("--plan", default="none", choices=["none", "random", "kmeans"], help="edit order within each run")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "edit_scaling.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("minedit.compare").setLevel(logging.INFO)  # one line per finished run, as it finishes

    editors = args.editors.split(",")
    sizes = sorted({int(t) for t in args.T.split(",")})
    requests = load_edits(args.data or default_data(args.model), limit=sizes[-1])
    fit, too_many = [T for T in sizes if T <= len(requests)], [T for T in sizes if T > len(requests)]
    overrides = parse_overrides(args.set, editors)
    model, tokenizer = load_model(args.model)
    rows, table = [], []
    for b in (int(b) for b in args.edit_batch.split(",")):
        result = compare(model, tokenizer, requests, editors, fit, overrides=overrides, budget_minutes=args.budget_minutes,
                         exact=False, edit_batch=b, plan=args.plan, progress=sys.stderr.isatty()) if fit else {"rows": []}
        rows += [flat_row(r, b, args.plan) for r in result["rows"]]
        rows += [{"editor": name, "T": T, "batch": b, "skipped": f"data has only {len(requests)} records"}
                 for name in editors for T in too_many]
        table.append(f"edits per call: {b}\n\n{markdown_table(result)}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
