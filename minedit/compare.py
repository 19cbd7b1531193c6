"""Compare editors on one model and one data set at several numbers of edits T (``python -m minedit compare``).

Every (editor, T, protocol) run applies the first T edit requests to the *same* loaded model with a fresh
editor, seeded the same way, and then ``editor.restore()`` takes the model back: a fingerprint of every
module, hook and tensor taken before the first run must match after each one, so a row never depends on the
editors that ran before it (a restore that leaves something behind is a bug: :class:`RestoreError`).

Each row holds the run's metrics (Rel/Gen/Loc, or the five image-edit metrics, plus exact match when on),
seconds per edit, inference overhead (edited / unedited latency), the editor's saved state in bytes per
edit (what a lifelong editor accumulates), and the process's peak memory so far; or ``skipped`` and why,
when the editor's seconds per edit at the previous T project the run past the time budget. ``none``, the
unedited reference, is never skipped.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from .editors import get_editor
from .editors.base import config_from_dict
from .errors import ConfigError
from .metrics import METRICS, MULTIMODAL_METRICS
from .runner import PROTOCOLS, RunConfig, run_lifelong

log = logging.getLogger(__name__)
DEFAULT_EDITORS = ("none", "ft", "lora", "grace", "wise", "elder", "lemoe")
FILES = ("compare.json", "compare.md", "compare.png")


class RestoreError(RuntimeError):
    """An editor's ``restore()`` did not bring the model back exactly: a bug, never bad input."""


def default_data(model: str) -> str:
    """The data a comparison runs on without ``--data``: ``zsre_bench.json``; tiny-llava's MMEdit sample."""
    from .paths import default_data as bench_default, sample

    return bench_default(model) if model == "tiny-llava" else f"zsre:{sample('zsre_bench.json')}"


def parse_overrides(items: Sequence[str], editors: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["grace.eps=2.0"]`` -> ``{"grace": {"eps": 2.0}}``; the editor must be one of ``editors``."""
    from .keyvalue import parse_assignment

    overrides: dict[str, dict[str, Any]] = {}
    for item in items:
        key, value = parse_assignment(item, "--set")
        name, dot, field = key.partition(".")
        if not dot or not field:
            raise ConfigError(f"--set expects EDITOR.KEY=VALUE (e.g. grace.eps=2.0), got {item!r}")
        if name not in editors:
            raise ConfigError(f"--set {item}: {name!r} is not among the compared editors ({', '.join(editors)})")
        overrides.setdefault(name, {})[field] = value
    return overrides


def editor_configs(editors: Sequence[str], overrides: Mapping[str, Mapping[str, Any]], seed: int = 0) -> dict:
    """Each editor's config (its seed set to ``seed`` unless overridden); unknown names and fields raise user errors."""
    configs = {}
    for name in editors:
        cls = get_editor(name)
        values = dict(overrides.get(name, {}))
        if "seed" in {f.name for f in dataclasses.fields(cls.config_class)}:
            values.setdefault("seed", seed)
        configs[name] = config_from_dict(cls.config_class, values)
    return configs


def state_bytes(editor) -> int:
    """Bytes of the tensors the editor saves (``state_tensors``): what it holds beyond the model."""
    return sum(t.numel() * t.element_size() for t in editor.state_tensors().values())


def peak_rss_mb() -> float | None:
    """The process's peak resident memory so far, in MB (None where ``resource`` is missing)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # macOS reports bytes, Linux KiB


def fingerprint(model: torch.nn.Module) -> dict[str, tuple]:
    """What an exact restore must bring back: each module's class and hook count, and each tensor's shape,
    dtype, requires_grad and two float64 reductions (any changed value moves them)."""
    prints: dict[str, tuple] = {}
    for name, module in model.named_modules():
        hooks = len(module._forward_hooks) + len(module._forward_pre_hooks) + len(module._backward_hooks)
        prints[f"module {name or '(model)'}"] = (type(module).__name__, hooks)
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            x = tensor.detach()
            sums = ((x.sum(dtype=torch.float64).item(), torch.linalg.vector_norm(x, dtype=torch.float64).item())
                    if x.is_floating_point() else (int(x.long().sum()),))
            prints[f"tensor {name}"] = (tuple(x.shape), str(x.dtype), tensor.requires_grad, *sums)
    return prints


def check_restored(model, before: dict[str, tuple], editor: str) -> None:
    """Raise :class:`RestoreError` naming the first difference from the ``before`` fingerprint."""
    after = fingerprint(model)
    for key in sorted(before.keys() | after.keys()):
        if before.get(key) != after.get(key):
            raise RestoreError(f"{editor}.restore() left the model changed: {key} was {before.get(key)}, "
                               f"is {after.get(key)}")


def run_one(model, tokenizer, requests, name: str, config, run_config: RunConfig, seed: int,
            reference: dict[str, tuple] | None = None) -> dict[str, Any]:
    """One seeded run of editor ``name`` on ``requests``, then restore (checked against ``reference``)."""
    random.seed(seed)
    torch.manual_seed(seed)
    cuda = next(model.parameters()).is_cuda
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    editor = get_editor(name)(model, tokenizer, config)
    start = time.perf_counter()
    try:
        run = run_lifelong(editor, requests, run_config)
        wall, nbytes = time.perf_counter() - start, state_bytes(editor)
    finally:
        editor.restore()
    if reference is not None:
        check_restored(model, reference, name)
    row = {"metrics": run.metrics, "seconds_per_edit": run.seconds_per_edit, "inference_overhead": run.inference_overhead,
           "bytes_per_edit": nbytes / len(requests), "peak_rss_mb": peak_rss_mb(), "wall_seconds": wall}
    if cuda:
        row["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return row


def machine_info() -> dict[str, Any]:
    """Where the timings were taken."""
    import transformers

    return {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def compare(model, tokenizer, requests: Sequence, editors: Sequence[str], sizes: Sequence[int],
            protocols: Sequence[str] = ("retention",), overrides: Mapping[str, Mapping[str, Any]] | None = None,
            budget_minutes: float = 30.0, exact: bool = True, seed: int = 0, edit_batch: int = 1, plan: str = "none",
            progress: bool = True, run_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run every editor at every T (the first T requests) under every protocol on the same model.

    ``overrides``: per-editor config fields, ``{"grace": {"eps": 2.0}}``. ``run_options``: further
    :class:`~minedit.runner.RunConfig` fields (e.g. ``latency_repeats``). Returns ``{"rows", "settings",
    "machine"}``; rows come editor by editor, then protocol, then T ascending.
    """
    sizes = sorted(set(sizes))
    if not editors or not sizes or sizes[0] < 1:
        raise ValueError(f"need at least one editor and sizes >= 1, got {list(editors)} and {sizes}")
    if sizes[-1] > len(requests):
        raise ValueError(f"T = {sizes[-1]} needs {sizes[-1]} edit requests, got {len(requests)}")
    if unknown := [p for p in protocols if p not in PROTOCOLS]:
        raise ValueError(f"unknown protocol(s) {unknown}; use {PROTOCOLS}")
    configs = editor_configs(editors, overrides or {}, seed)
    reference = fingerprint(model)
    runs = [(name, protocol, T) for name in editors for protocol in protocols for T in sizes]
    rate: dict[tuple[str, str], float] = {}  # wall seconds per edit of (editor, protocol) at its last T
    rows = []
    for name, protocol, T in tqdm(runs, desc="compare", unit="run", disable=not progress):
        key = {"editor": name, "T": T, "protocol": protocol}
        projected = rate.get((name, protocol), 0.0) * T
        if name != "none" and projected > budget_minutes * 60:
            reason = f"projected {projected / 60:.1f} min > budget {budget_minutes:g} min"
            log.info("%s T=%d %s: skipped, %s", name, T, protocol, reason)
            rows.append({**key, "skipped": reason})
            continue
        run_config = RunConfig(**{"protocol": protocol, "exact": exact, "edit_batch_size": edit_batch, "plan": plan,
                                  "plan_seed": seed, "progress": progress, **(run_options or {})})
        row = run_one(model, tokenizer, list(requests[:T]), name, configs[name], run_config, seed, reference)
        rate[(name, protocol)] = row["wall_seconds"] / T
        log.info("%s T=%d %s: %s", name, T, protocol, json.dumps(row))
        rows.append({**key, **row})
    settings = {"editors": list(editors), "sizes": sizes, "protocols": list(protocols), "seed": seed, "exact": exact,
                "budget_minutes": budget_minutes, "edit_batch": edit_batch, "plan": plan,
                "configs": {name: dataclasses.asdict(config) for name, config in configs.items()}}
    return {"rows": rows, "settings": settings, "machine": machine_info()}


def metric_names(rows: Sequence[dict]) -> list[str]:
    """The metrics the rows report (in METRICS / MULTIMODAL_METRICS order), leaving out all-NaN ones (exact match off)."""
    def present(m):
        return any(m in r.get("metrics", {}) and r["metrics"][m] == r["metrics"][m] for r in rows)  # NaN != NaN

    return [m for m in dict.fromkeys(METRICS + MULTIMODAL_METRICS) if present(m)]


def markdown_table(result: dict) -> str:
    """One markdown table, one line per row; a skipped row says why."""
    rows = result["rows"]
    metrics = metric_names(rows)
    header = ["editor", "T", "protocol", *metrics, "s/edit", "overhead", "KB/edit"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["editor"], str(r["T"]), r["protocol"]]
        if "skipped" in r:
            cells += [f"skipped: {r['skipped']}"] + [""] * (len(header) - 4)
        else:
            cells += [f"{r['metrics'][m]:.3f}" if r["metrics"].get(m) == r["metrics"].get(m) else "" for m in metrics]
            cells += [f"{r['seconds_per_edit']:.3f}", f"{r['inference_overhead']:.2f}", f"{r['bytes_per_edit'] / 1024:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(result: dict, out: "str | os.PathLike") -> list[Path]:
    """``compare.json``, ``compare.md`` and ``compare.png`` in ``out``, each written atomically."""
    from .fsio import atomic_write_text, no_nan
    from .plot import compare_curves, save_figure

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = result["settings"]
    about = ", ".join(f"{k} {settings[k]}" for k in ("model", "data", "seed") if k in settings)
    atomic_write_text(out / FILES[0], json.dumps(no_nan(result), indent=1) + "\n")
    atomic_write_text(out / FILES[1], markdown_table(result) + (f"\n{about}; {result['machine']['date']}\n" if about else ""))
    fd, tmp = tempfile.mkstemp(prefix=".compare-", suffix=".png", dir=out)
    os.close(fd)
    try:
        save_figure(compare_curves(result["rows"], title=about), tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out / FILES[2])
    finally:
        Path(tmp).unlink(missing_ok=True)
    return [out / name for name in FILES]
