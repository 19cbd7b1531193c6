"""Edit-time speed-up from computing the frozen layers below the edited layer once per edit.

    .venv/bin/python benchmarks/cache_speedup.py --editors grace,ft,lora --edits 10

Each editor applies the same edits twice from the restored model: with ``cache_lower=True`` (minedit's
default: ``UpperStack`` re-runs only the layers from the edited one up) and ``cache_lower=False`` (every
optimisation step runs the whole network). The edits must come out the same (same steps, same final loss up
to float rounding); the table gives seconds per edit and the speed-up. Run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import sys
import time
from minedit.data import load_edits
from minedit.editors import make_editor
from minedit.models import load_model
from minedit.paths import sample


def timed_edits(name, model, tokenizer, requests, cache_lower: bool) -> tuple[float, list[dict]]:
    editor = make_editor(name, model, tokenizer, cache_lower=cache_lower)
    start = time.perf_counter()
    stats = [editor.edit(r) for r in requests]
    took = (time.perf_counter() - start) / len(requests)
    editor.restore()
    return took, stats


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--editors", default="grace,ft,lora")
    p.add_argument("--edits", type=int, default=10)
    p.add_argument("--data", default=f"zsre:{sample('zsre_sample.json')}")
    args = p.parse_args(argv)
    model, tokenizer = load_model("smollm2-135m")
    requests = list(load_edits(args.data, limit=args.edits))
    print(f"{'editor':<8}{'cached s/edit':>15}{'full s/edit':>13}{'speed-up':>10}{'same steps':>12}")
    for name in args.editors.split(","):
        fast, fast_stats = timed_edits(name, model, tokenizer, requests, True)
        slow, slow_stats = timed_edits(name, model, tokenizer, requests, False)
        same = sum(a["steps"] == b["steps"] for a, b in zip(fast_stats, slow_stats))
        print(f"{name:<8}{fast:>15.3f}{slow:>13.3f}{slow / fast:>9.1f}x{same:>9}/{len(requests)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
