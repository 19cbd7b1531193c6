"""``python -m minedit continual``: learn tasks in order with one or more learners, write ``results.json``.

Everything a user can get wrong (an unknown learner, a missing or malformed task file, a bad ``--set``,
an output folder that cannot be written) is found before the model is loaded and reported as one line
(exit status 2). The output folder is written atomically: ``results.json``, ``results.md`` (a table)
and ``results.png`` (the accuracy matrices as heatmaps).
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from ..fsio import atomic_folder, check_writable_folder
from ..keyvalue import parse_assignments
from ..paths import samples_dir
from .suite import DEFAULT_ORDER, TASKS, Task, generated_task, load_task

DEFAULT_LEARNERS = ("seq-lora", "seq-moe-lora", "joint", "llava-cmoe")


class ContinualUsageError(UserError, ValueError):
    """Bad ``continual`` arguments."""


def add_parser(sub, default) -> None:
    p = sub.add_parser("continual", help="learn visual tasks one after another; accuracy matrix, Last, BWT")
    p.add_argument("--model", default=default("tiny-llava"), help="a vision-language model (bundled name or folder)")
    p.add_argument("--learner", default=default(",".join(DEFAULT_LEARNERS)),
                   help=f"comma-separated learners (default: {','.join(DEFAULT_LEARNERS)})")
    p.add_argument("--tasks", default=default(None),
                   help="comma-separated task files (.json) or names of generated tasks, in order; "
                        "default: the shipped suite data_samples/continual/ in its order")
    p.add_argument("--train", type=int, default=default(None), help="use at most N training records per task")
    p.add_argument("--test", type=int, default=default(None), help="use at most N test records per task")
    p.add_argument("--set", action="append", default=default([]), metavar="KEY=VALUE", help="ContinualConfig override")
    p.add_argument("--batch-size", type=int, default=default(16))
    p.add_argument("--out", default=default("runs/continual"), help="output folder")
    p.add_argument("--quiet", action="store_true", default=default(False), help="no progress bars")


def shipped_tasks() -> list[Path]:
    folder = samples_dir() / "continual"
    return [folder / f"{name}.json" for name in DEFAULT_ORDER]


def resolve_tasks(spec: str | None, n_train: int | None, n_test: int | None) -> list[Task]:
    """Task files or generated-task names, read and checked (no model needed)."""
    items = [s.strip() for s in spec.split(",")] if spec else [str(p) for p in shipped_tasks()]
    tasks = []
    for item in items:
        if not item:
            raise ContinualUsageError("--tasks has an empty entry")
        if item in TASKS:
            task = generated_task(item, n_train or 320, n_test or 100)
        elif item.endswith(".json") or Path(item).exists():
            task = load_task(item)
        else:
            raise ContinualUsageError(f"--tasks: {item!r} is neither a task file nor a task name ({', '.join(TASKS)})")
        tasks.append(Task(task.name, task.train[:n_train], task.test[:n_test]))
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ContinualUsageError(f"--tasks names a task twice: {', '.join(names)}")
    return tasks


def table(results: dict) -> str:
    """A markdown table: one row per learner."""
    lines = ["| learner | Last | BWT | oracle Last | locator acc. | params added / task | s / task |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results["learners"].items():
        def fmt(key, scale=100.0):
            return f"{r[key] * scale:.1f}" if key in r else ""
        params = sum(r["params_added_per_task"]) / len(r["params_added_per_task"])
        secs = sum(r["seconds_per_task"]) / len(r["seconds_per_task"])
        lines.append(f"| {name} | {fmt('last')} | {fmt('bwt')} | {fmt('oracle_last')} | {fmt('locator_accuracy')} "
                     f"| {params:,.0f} | {secs:.1f} |")
    start = ", ".join(f"{t} {a * 100:.0f}" for t, a in zip(results["tasks"], results["start_accuracy"]))
    return "\n".join(lines) + f"\n\nunedited model's accuracy (%): {start}\n"


def continual(args) -> dict:
    from ..editors.base import config_from_dict
    from .learners import LEARNERS, ContinualConfig

    learners = [s.strip() for s in args.learner.split(",") if s.strip()]
    unknown = [n for n in learners if n not in LEARNERS]
    if not learners or unknown:
        raise ContinualUsageError(f"unknown learner(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(LEARNERS.names())}")
    for flag, value in (("--train", args.train), ("--test", args.test), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise ContinualUsageError(f"{flag} must be at least 1, got {value}")
    cfg = config_from_dict(ContinualConfig, parse_assignments(args.set))
    tasks = resolve_tasks(args.tasks, args.train, args.test)
    out = check_writable_folder(args.out)

    from ..models import load_model
    from ..plot import accuracy_matrices, save_figure
    from ..vision import is_multimodal
    from .runner import run

    model, processor = load_model(args.model)
    if not is_multimodal(processor):
        raise ContinualUsageError(f"--model {args.model}: the continual tasks ask about images; give a vision-language model")
    results = run(model, processor, tasks, learners, cfg, args.batch_size, progress=not args.quiet)
    results["model"] = args.model
    with atomic_folder(out) as tmp:
        (tmp / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        (tmp / "results.md").write_text(table(results))
        save_figure(accuracy_matrices(results), tmp / "results.png")
    print(table(results))
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'results.png'}")
    return results
