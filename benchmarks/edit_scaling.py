"""How editors scale with the number of edits T: seconds per edit, inference overhead, memory per edit.

    .venv/bin/python benchmarks/edit_scaling.py --editors none,ft,lora,grace --T 10,100,1000

For each editor and each T it applies T edits in sequence on a freshly restored model (retention protocol)
and reports: seconds per edit, inference overhead (edited latency / unedited latency on the same prompts),
the editor's saved state in bytes per edit (what a lifelong editor accumulates), the process's peak memory,
and Rel/Gen/Loc. A T whose projected run would pass ``--budget-minutes`` is skipped and said so.
Run it on a quiet machine: timings on a shared CPU are noisy.
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from pathlib import Path

import torch

from minedit.data import load_edits
from minedit.editors import config_from_dict, get_editor
from minedit.cli import default_data
from minedit.keyvalue import parse_assignment
from minedit.metrics import METRICS, MULTIMODAL_METRICS
from minedit.models import load_model
from minedit.paths import sample
from minedit.runner import RunConfig, run_lifelong

ROOT = Path(__file__).resolve().parents[1]


def state_bytes(editor) -> int:
    return sum(t.numel() * t.element_size() for t in editor.state_tensors().values())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


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
    logging.basicConfig(level=logging.WARNING)

    sizes = [int(t) for t in args.T.split(",")]
    batch_sizes = [int(b) for b in args.edit_batch.split(",")]
    if args.data is None:
        args.data = default_data(args.model) if args.model == "tiny-llava" else f"zsre:{sample('zsre_bench.json')}"
    requests = load_edits(args.data, limit=max(sizes))
    model, tokenizer = load_model(args.model)
    overrides: dict[str, dict] = {}
    for item in args.set:
        key, value = parse_assignment(item)
        name, _, field = key.partition(".")
        overrides.setdefault(name, {})[field] = value
    rows = []
    runs = [(name, b) for name in args.editors.split(",") for b in batch_sizes]
    for name, b in runs:
        cls = get_editor(name)
        last_rate = None  # seconds per edit (editing + scoring) at the previous T
        for T in sizes:
            if T > len(requests):
                rows.append({"editor": name, "T": T, "batch": b, "skipped": f"data has only {len(requests)} records"})
                continue
            if last_rate is not None and last_rate * T > args.budget_minutes * 60:
                rows.append({"editor": name, "T": T, "batch": b, "skipped": f"projected {last_rate * T / 60:.0f} min > budget"})
                continue
            torch.manual_seed(0)
            editor = cls(model, tokenizer, config_from_dict(cls.config_class, overrides.get(name, {})))
            start = time.perf_counter()
            run = run_lifelong(editor, requests[:T], RunConfig(exact=False, progress=sys.stderr.isatty(), edit_batch_size=b,
                                                                   plan=args.plan))
            wall = time.perf_counter() - start
            last_rate = wall / T
            row = {"editor": name, "T": T, "batch": b, "plan": args.plan, "seconds_per_edit": run.seconds_per_edit,
                   "inference_overhead": run.inference_overhead, "state_bytes_per_edit": state_bytes(editor) / T,
                   "peak_rss_mb": peak_rss_mb(), "wall_seconds": wall,
                   **{k: v for k, v in run.metrics.items() if not k.endswith("_em")}}
            rows.append(row)
            editor.restore()
            print(json.dumps(row), file=sys.stderr, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n")
    metrics = [k for k in next((r for r in rows if "skipped" not in r), {}) if k in METRICS + MULTIMODAL_METRICS]
    metrics = list(dict.fromkeys(metrics))
    header = f"{'editor':<8}{'T':>6}{'batch':>6}{'s/edit':>9}{'overhead':>10}{'KB/edit':>9}{'peakMB':>8}" + "".join(f"{m:>7}" for m in metrics)
    print(header)
    for r in rows:
        if "skipped" in r:
            print(f"{r['editor']:<8}{r['T']:>6}{r['batch']:>6}  skipped: {r['skipped']}")
        else:
            print(f"{r['editor']:<8}{r['T']:>6}{r['batch']:>6}{r['seconds_per_edit']:>9.3f}{r['inference_overhead']:>10.3f}"
                  f"{r['state_bytes_per_edit'] / 1024:>9.1f}{r['peak_rss_mb']:>8.0f}" + "".join(f"{r[m]:>7.3f}" for m in metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
