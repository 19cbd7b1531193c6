"""Command line: ``python -m minedit bench ...`` runs a lifelong-editing benchmark.

Bad input (missing file, unknown format, editor or model, malformed JSON, bad record) ends with
exit status 2 and one line naming the problem, never a traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import random
import sys
from pathlib import Path

from .arch import UnknownArchitectureError
from .data import DataError
from .models import ModelLoadError

SAMPLES = Path(__file__).resolve().parents[1] / "data_samples"
DEFAULT_DATA = {
    "default": f"zsre:{SAMPLES / 'zsre_sample.json'}",
    "tiny-llava": f"mmedit:{SAMPLES / 'mmedit_world' / 'vqa_sample.json'}",
}
USER_ERRORS = (DataError, ModelLoadError, UnknownArchitectureError, KeyError, ValueError, FileNotFoundError)


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        raise UsageError(message)


def _parse_override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UsageError(f"--set expects KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m minedit", description="minedit: lifelong model editing with mixtures of low-rank experts")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="apply N edits in sequence and measure Rel/Gen/Loc")
    bench.add_argument("--model", default="smollm2-135m", help="bundled name, local folder or hub id")
    bench.add_argument("--editor", default="none", help="registered editor name")
    bench.add_argument("--data", default=None, help="FORMAT:PATH (zsre:, counterfact:, mmedit:); default: the shipped sample")
    bench.add_argument("--edits", type=int, default=20, help="number of edits T (the first T records)")
    bench.add_argument("--protocol", default="retention", choices=["retention", "immediate"])
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--out", default="runs/latest", help="output folder")
    bench.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="editor config override (repeatable)")
    bench.add_argument("--edit-batch", type=int, default=1, help="edits per edit_batch call")
    bench.add_argument("--skip-bad", action="store_true", help="skip bad records and report them instead of stopping")
    bench.add_argument("--no-exact", action="store_true", help="skip exact-match generation (faster)")
    prepare = sub.add_parser("prepare", help="convert the bundled models into the model cache (once)")
    prepare.add_argument("--model", action="append", default=None, help="bundled model name (default: all)")
    return parser


def prepare(args) -> None:
    from .models import BUNDLED, resolve

    for name in args.model or list(BUNDLED):
        if name not in BUNDLED:
            raise UsageError(f"unknown bundled model {name!r}; choose from {', '.join(BUNDLED)}")
        print(f"{name}: {resolve(name)}")


def _table(result: dict) -> str:
    metrics = result["metrics"]
    lines = [f"{'metric':<22}{'value':>10}"]
    lines += [f"{name:<22}{value:>10.3f}" for name, value in metrics.items()]
    lines.append(f"{'seconds_per_edit':<22}{result['seconds_per_edit']:>10.3f}")
    lines.append(f"{'inference_overhead':<22}{result['inference_overhead']:>10.3f}")
    return "\n".join(lines)


def _no_nan(obj):
    """NaN (a metric with nothing to score, e.g. exact match under --no-exact) becomes JSON null."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_no_nan(v) for v in obj]
    return obj


def bench(args) -> dict:
    import torch

    from .data import load_edits
    from .editors import config_from_dict, get_editor
    from .models import load_model
    from .plot import edit_curves, save_figure
    from .runner import RunConfig, run_lifelong

    if args.edits < 1:
        raise UsageError(f"--edits must be at least 1, got {args.edits}")
    editor_cls = get_editor(args.editor)
    overrides = dict(_parse_override(s) for s in args.set)
    config_fields = {f.name for f in dataclasses.fields(editor_cls.config_class)}
    if "seed" in config_fields:
        overrides.setdefault("seed", args.seed)
    config = config_from_dict(editor_cls.config_class, overrides)
    data = args.data or DEFAULT_DATA.get(args.model, DEFAULT_DATA["default"])
    requests = load_edits(data, errors="skip" if args.skip_bad else "raise", limit=args.edits)
    for problem in requests.skipped:
        print(f"skipped: {problem}", file=sys.stderr)
    if len(requests) < args.edits:
        raise UsageError(f"{requests.path}: asked for {args.edits} edits, the file has {len(requests)} usable records")

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    model, tokenizer = load_model(args.model)
    editor = editor_cls(model, tokenizer, config)
    run = run_lifelong(editor, requests, RunConfig(protocol=args.protocol, edit_batch_size=args.edit_batch, exact=not args.no_exact))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "editor": args.editor, "model": args.model, "data": data, "n_edits": len(requests),
        "protocol": args.protocol, "seed": args.seed, "metrics": run.metrics,
        "seconds_per_edit": run.seconds_per_edit, "inference_overhead": run.inference_overhead,
        "latency_seconds": run.latency, "config": dataclasses.asdict(config), "skipped": [str(p) for p in requests.skipped],
    }
    (out / "results.json").write_text(json.dumps(_no_nan(result), indent=1) + "\n", encoding="utf-8")
    with open(out / "edits.jsonl", "w", encoding="utf-8") as f:
        for row in run.rows:
            f.write(json.dumps(_no_nan(row)) + "\n")
    save_figure(edit_curves(run.rows, title=f"{args.editor} on {args.model}, {args.protocol}, T={len(requests)}"), out / "results.png")
    print(_table(result))
    print(f"wrote {out / 'results.json'}, {out / 'edits.jsonl'}, {out / 'results.png'}")
    return result


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args = build_parser().parse_args(argv)
        if args.command == "bench":
            bench(args)
        elif args.command == "prepare":
            prepare(args)
        return 0
    except UsageError as err:
        print(f"minedit: error: {err}", file=sys.stderr)
        return 2
    except USER_ERRORS as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"minedit: error: {message}", file=sys.stderr)
        return 2
