"""Command line: ``python -m minedit bench ...`` runs a lifelong-editing benchmark; ``compare`` runs several
editors at several T on one loaded model (:mod:`minedit.compare`); ``continual`` a continual task sequence
(:mod:`minedit.continual.command`).

Bad input (missing file, unknown format, editor or model, malformed JSON, bad record, an output folder
that cannot be written) is a :class:`~minedit.errors.UserError`: exit status 2 and one line naming the
problem, never a traceback, and found before the model is loaded where it can be. Anything else is a
bug and keeps its traceback (exit status 1).

``--checkpoint-every N`` saves the editor and the rows so far under ``OUT/checkpoint/`` every N edits
(atomically: a killed run leaves the previous checkpoint or the new one); ``--resume OUT`` continues
the run from there with its stored settings and ends with the results of an uninterrupted run.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import random
import sys
from pathlib import Path

from .errors import UserError
from .fsio import atomic_folder, atomic_write_text, check_writable_folder, no_nan as _no_nan, settle
from .keyvalue import parse_assignments
from .paths import default_data

CHECKPOINT, PROGRESS_FILE, RUN_FILE, EDITOR_DIR = "checkpoint", "progress.json", "run.json", "editor"
# The settings a checkpoint stores and a resumed run reuses (argparse dests of ``bench``).
RUN_SETTINGS = ("model", "editor", "data", "edits", "protocol", "seed", "set", "edit_batch", "plan", "skip_bad",
                "no_exact", "checkpoint_every", "device", "dtype")


class UsageError(UserError, ValueError):
    """Bad command-line input: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        raise UsageError(message)


def build_parser(given_only: bool = False) -> argparse.ArgumentParser:
    """The parser of ``python -m minedit``; ``given_only``: no defaults, so a parse holds only the flags given."""
    parser = _Parser(prog="python -m minedit", description="minedit: lifelong model editing with mixtures of low-rank experts",
                     argument_default=argparse.SUPPRESS if given_only else None)

    def default(value):
        return argparse.SUPPRESS if given_only else value

    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="apply N edits in sequence and measure Rel/Gen/Loc",
                           argument_default=argparse.SUPPRESS if given_only else None)
    bench.add_argument("--model", default=default("smollm2-135m"), help="bundled name, local folder or hub id")
    bench.add_argument("--editor", default=default("none"), help="registered editor name")
    bench.add_argument("--data", default=default(None), help="FORMAT:PATH (zsre:, counterfact:, mmedit:); default: the shipped sample")
    bench.add_argument("--edits", type=int, default=default(20), help="number of edits T (the first T records)")
    bench.add_argument("--protocol", default=default("retention"), choices=["retention", "immediate"])
    bench.add_argument("--seed", type=int, default=default(0))
    bench.add_argument("--out", default=default("runs/latest"), help="output folder")
    bench.add_argument("--set", action="append", default=default([]), metavar="KEY=VALUE", help="editor config override (repeatable)")
    bench.add_argument("--edit-batch", type=int, default=default(1), help="edits per edit_batch call")
    bench.add_argument("--plan", default=default("none"), choices=["none", "random", "kmeans"],
                       help="edit order: data order, shuffled (seeded), or k-means clusters of --edit-batch edits (LEMoE)")
    bench.add_argument("--skip-bad", action="store_true", default=default(False), help="skip bad records and report them instead of stopping")
    bench.add_argument("--no-exact", action="store_true", default=default(False), help="skip exact-match generation (faster)")
    bench.add_argument("--device", default=default("cpu"), help="cpu, cuda, cuda:N, mps, or auto (CUDA when available)")
    bench.add_argument("--dtype", default=default("float32"), choices=["float32", "bfloat16", "float16"], help="model weights' dtype")
    bench.add_argument("--checkpoint-every", type=int, default=default(0), metavar="N",
                       help="save the editor and the rows so far under OUT/checkpoint/ every N edits (0: never)")
    bench.add_argument("--resume", default=default(None), metavar="OUT",
                       help="continue the killed run whose output folder is OUT, from its last checkpoint, with its settings")
    add_compare_parser(sub, default)
    from .continual.command import add_parser as add_continual

    add_continual(sub, default)
    prepare = sub.add_parser("prepare", help="convert the bundled models into the model cache (once)")
    prepare.add_argument("--model", action="append", default=default(None), help="bundled model name (default: all)")
    return parser


def add_compare_parser(sub, default) -> None:
    from .compare import DEFAULT_EDITORS

    p = sub.add_parser("compare", help="every chosen editor at several T on the same model and data: one table and plot")
    p.add_argument("--model", default=default("smollm2-135m"), help="bundled name, local folder or hub id")
    p.add_argument("--data", default=default(None), help="FORMAT:PATH; default: zsre_bench.json (tiny-llava: the MMEdit sample)")
    p.add_argument("--editors", default=default(",".join(DEFAULT_EDITORS)), help="comma-separated registered editors")
    p.add_argument("--edits", default=default("10,100"), help="comma-separated numbers of edits T (the first T records)")
    p.add_argument("--protocol", default=default("retention"), choices=["retention", "immediate", "both"])
    p.add_argument("--seed", type=int, default=default(0), help="seeds every run the same way")
    p.add_argument("--set", action="append", default=default([]), metavar="EDITOR.KEY=VALUE",
                   help="an editor's config override, e.g. grace.eps=2.0 (repeatable)")
    p.add_argument("--no-exact", action="store_true", default=default(False), help="skip exact-match generation (faster)")
    p.add_argument("--budget-minutes", type=float, default=default(30.0),
                   help="skip a run whose time, projected from the editor's previous T, passes this")
    p.add_argument("--edit-batch", type=int, default=default(1), help="edits per edit_batch call (every editor)")
    p.add_argument("--plan", default=default("none"), choices=["none", "random", "kmeans"], help="edit order within each run")
    p.add_argument("--device", default=default("cpu"), help="cpu, cuda, cuda:N, mps, or auto (CUDA when available)")
    p.add_argument("--dtype", default=default("float32"), choices=["float32", "bfloat16", "float16"], help="model weights' dtype")
    p.add_argument("--out", default=default("runs/compare"), help="output folder (compare.json, compare.md, compare.png)")


def _positive_ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise UsageError(f"{flag} expects a comma-separated list of positive integers, got {text!r}")
    return sorted(set(values))


def compare_command(args) -> dict:
    """Run ``minedit compare``: flags, editors, configs, data and output folder are checked before the model loads."""
    from .compare import default_data as compare_data, editor_configs, markdown_table, parse_overrides, write_results
    from .data import load_edits
    from .editors import EDITORS
    from .models import as_dtype, pick_device

    editors = [name.strip() for name in args.editors.split(",")]
    unknown = [name for name in editors if name not in EDITORS]
    if not all(editors) or unknown:
        raise UsageError(f"--editors: unknown editor(s) {', '.join(map(repr, unknown)) or '(empty name)'}; "
                         f"choose from {', '.join(sorted(EDITORS))}")
    if len(set(editors)) != len(editors):
        raise UsageError(f"--editors names an editor twice: {args.editors}")
    sizes = _positive_ints(args.edits, "--edits")
    if not args.budget_minutes > 0 or args.edit_batch < 1:
        raise UsageError("--budget-minutes must be positive and --edit-batch at least 1")
    protocols = ["retention", "immediate"] if args.protocol == "both" else [args.protocol]
    overrides = parse_overrides(args.set, editors)
    editor_configs(editors, overrides, args.seed)  # unknown fields and bad values fail here, before the model loads
    data = args.data or compare_data(args.model)
    requests = load_edits(data, limit=sizes[-1])
    if len(requests) < sizes[-1]:
        raise UsageError(f"{requests.path}: asked for {sizes[-1]} edits, the file has {len(requests)} records")
    dtype, device = as_dtype(args.dtype), pick_device(args.device)
    out = check_writable_folder(args.out)

    from .compare import compare
    from .models import load_model

    model, tokenizer = load_model(args.model, dtype=dtype, device=device)
    result = compare(model, tokenizer, requests, editors, sizes, protocols, overrides, budget_minutes=args.budget_minutes,
                     exact=not args.no_exact, seed=args.seed, edit_batch=args.edit_batch, plan=args.plan,
                     progress=True)
    result["settings"].update(model=args.model, data=data, device=str(device), dtype=args.dtype)
    paths = write_results(result, out)
    print(markdown_table(result))
    print(f"wrote {', '.join(map(str, paths))}")
    return result


def prepare(args) -> None:
    from .bundled import BUNDLED, resolve

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


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path.parent.parent}: no checkpoint to resume ({what} {path} not found)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: unreadable checkpoint ({type(err).__name__})") from None


def _resumed_args(args, argv: list[str]) -> tuple[argparse.Namespace, dict]:
    """The stored settings of the run in ``args.resume`` (flags given beside ``--resume`` must agree)."""
    out = Path(args.resume)
    folder = settle(out / CHECKPOINT)
    stored = _read_json(folder / RUN_FILE, "checkpoint")
    progress = _read_json(folder / PROGRESS_FILE, "progress file")
    if not (folder / EDITOR_DIR).is_dir() or not {"args", "rng"} <= set(stored):
        raise UserError(f"{folder}: incomplete checkpoint (no saved editor or settings)")
    given = vars(build_parser(given_only=True).parse_args(argv))
    if "out" in given and Path(given["out"]).resolve() != out.resolve():
        raise UsageError(f"--resume {out} writes into {out}; drop --out {given['out']}")
    for name in RUN_SETTINGS:
        if name in given and given[name] != stored["args"].get(name, given[name]):
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"--resume {out}: {flag} {given[name]!r} conflicts with the run's {flag} {stored['args'][name]!r}")
    resumed = argparse.Namespace(**{"plan": "none", **stored["args"], "out": str(out), "resume": str(out)})
    return resumed, {"rng": stored.get("rng"), "progress": progress}


def _save_checkpoint(out: Path, editor, progress, args) -> None:
    """``OUT/checkpoint/``: the editor, the progress and the run's settings, replaced in one rename."""
    import torch

    rng = {"torch": torch.random.get_rng_state().tolist(), "python": random.getstate()}
    with atomic_folder(out / CHECKPOINT) as tmp:
        editor.save(tmp / EDITOR_DIR)
        (tmp / PROGRESS_FILE).write_text(json.dumps(progress.to_dict()), encoding="utf-8")
        run = {"args": {name: getattr(args, name) for name in RUN_SETTINGS}, "rng": rng}
        (tmp / RUN_FILE).write_text(json.dumps(run), encoding="utf-8")


def _restore_rng(rng: dict | None) -> None:
    import torch

    if rng:
        torch.random.set_rng_state(torch.tensor(rng["torch"], dtype=torch.uint8))
        version, state, gauss = rng["python"]
        random.setstate((version, tuple(state), gauss))


def bench(args, argv: list[str] | None = None) -> dict:
    """Run ``minedit bench``: everything checkable (flags, config, data, output folder) is checked before the model loads."""
    import torch

    from .data import load_edits
    from .editors import config_from_dict, get_editor, load_editor
    from .models import as_dtype, load_model, pick_device
    from .plot import edit_curves, save_figure
    from .runner import Progress, RunConfig, run_lifelong

    saved = None
    if args.resume:
        args, saved = _resumed_args(args, argv if argv is not None else sys.argv[1:])
    if args.edits < 1:
        raise UsageError(f"--edits must be at least 1, got {args.edits}")
    if args.edit_batch < 1 or args.checkpoint_every < 0:
        raise UsageError("--edit-batch must be at least 1 and --checkpoint-every at least 0")
    try:
        editor_cls = get_editor(args.editor)
    except KeyError as err:  # the registry's UnknownEditorError (a KeyError in older registries)
        raise UsageError(str(err)) from None
    overrides = parse_assignments(args.set)
    config_fields = {f.name for f in dataclasses.fields(editor_cls.config_class)}
    if "seed" in config_fields:
        overrides.setdefault("seed", args.seed)
    config = config_from_dict(editor_cls.config_class, overrides)
    args.data = data = args.data or default_data(args.model)
    requests = load_edits(data, errors="skip" if args.skip_bad else "raise", limit=args.edits)
    for problem in requests.skipped:
        print(f"skipped: {problem}", file=sys.stderr)
    if len(requests) < args.edits:
        raise UsageError(f"{requests.path}: asked for {args.edits} edits, the file has {len(requests)} usable records")
    dtype, device = as_dtype(args.dtype), pick_device(args.device)
    resume = None
    if saved is not None:
        resume = Progress.from_dict(saved["progress"])
        if any((row["prompt"], row["target"]) != (requests[row["index"]].prompt, requests[row["index"]].target)
               for row in resume.rows if row["index"] < len(requests)):
            raise UserError(f"--resume {args.out}: the data in {data} changed since the checkpoint")
    out = check_writable_folder(args.out)

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    model, tokenizer = load_model(args.model, dtype=dtype, device=device)
    if saved is None:
        editor = editor_cls(model, tokenizer, config)
    else:
        editor = load_editor(out / CHECKPOINT / EDITOR_DIR, model, tokenizer)
        _restore_rng(saved["rng"])
    run_config = RunConfig(protocol=args.protocol, edit_batch_size=args.edit_batch, exact=not args.no_exact,
                           checkpoint_every=args.checkpoint_every, plan=args.plan, plan_seed=args.seed)
    run = run_lifelong(editor, requests, run_config, resume=resume,
                       on_checkpoint=lambda progress: _save_checkpoint(out, editor, progress, args))

    result = {
        "editor": args.editor, "model": args.model, "data": data, "n_edits": len(requests),
        "protocol": args.protocol, "seed": args.seed, "edit_batch": args.edit_batch, "plan": args.plan, "device": str(device), "dtype": args.dtype, "metrics": run.metrics,
        "seconds_per_edit": run.seconds_per_edit, "inference_overhead": run.inference_overhead,
        "latency_seconds": run.latency, "config": dataclasses.asdict(config), "skipped": [str(p) for p in requests.skipped],
    }
    atomic_write_text(out / "results.json", json.dumps(_no_nan(result), indent=1) + "\n")
    atomic_write_text(out / "edits.jsonl", "".join(json.dumps(_no_nan(row)) + "\n" for row in run.rows))
    save_figure(edit_curves(run.rows, title=f"{args.editor} on {args.model}, {args.protocol}, T={len(requests)}"), out / "results.png")
    print(_table(result))
    print(f"wrote {out / 'results.json'}, {out / 'edits.jsonl'}, {out / 'results.png'}")
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for a user error; a bug raises with its traceback)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        if args.command == "bench":
            bench(args, argv)
        elif args.command == "compare":
            compare_command(args)
        elif args.command == "prepare":
            prepare(args)
        elif args.command == "continual":
            from .continual.command import continual

            continual(args)
        return 0
    except UserError as err:
        print(f"minedit: error: {err}", file=sys.stderr)
        return 2
