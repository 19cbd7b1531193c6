"""The lifelong runner: apply T edits in sequence and measure them under one of two protocols.

- ``retention``: apply all T edits, then score every edit on the final model (what lifelong
  editing is about: are the early edits still there, is the rest of the model intact?).
- ``immediate``: score each edit right after it is applied (EasyEdit's sequential numbers).

Locality compares against the unedited model's predictions, computed before the first edit.
Inference overhead is the latency of the edited model over the unedited one on the same prompts, timed
alternately at the end of the run (the unedited model is the same one with the editor's changes suspended), so
a machine that gets busier or quieter during a long run moves both sides alike.

A long run can be continued after a crash: every ``checkpoint_every`` edits ``run_lifelong`` hands a
:class:`Progress` (rows so far, the unedited predictions, the curve) to ``on_checkpoint``, which saves
it with the editor; ``run_lifelong(editor, requests, config, resume=progress)`` on an editor reloaded
from that save continues from there and ends with the rows and metrics of an uninterrupted run.
"""
from __future__ import annotations

import logging
import statistics
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Sequence

import torch

from tqdm.auto import tqdm

from .data import DataError, EditRequest
from .editors.base import Editor
from .infer import encode_pair, pad_id, predict_tokens
from .metrics import reference_predictions, score_requests, summarize
from .vision import is_multimodal, text_tokenizer

log = logging.getLogger(__name__)
PROTOCOLS = ("retention", "immediate")


@dataclass(frozen=True)
class RunConfig:
    protocol: str = "retention"  # "retention" or "immediate"
    edit_batch_size: int = 1  # edits per ``edit_batch`` call (1 = strictly sequential)
    score_batch_size: int = 32  # prompts per scoring forward pass
    exact: bool = True  # also compute exact-match of greedy generation (costs a generate call)
    latency_prompts: int = 32  # prompts timed for the inference overhead
    latency_repeats: int = 5  # unedited/edited timing pairs, alternated; medians (a busy CPU moves both sides)
    progress: bool = True  # tqdm progress bar
    checkpoints: tuple[int, ...] = ()  # also score all edits so far after these many edits (a retention curve)
    checkpoint_every: int = 0  # call ``on_checkpoint`` after every this many edits (0: never), to resume a crash
    plan: str = "none"  # edit order: "none" (data order), "random" (seeded), "kmeans" (LEMoE's planning)
    plan_seed: int = 0  # seed of "random" and "kmeans" planning


@dataclass
class Progress:
    """How far a lifelong run got: everything besides the editor's own state needed to continue it."""

    done: int  # edits applied
    rows: list[dict[str, Any]]  # the rows of those edits (seconds, stats, and scores under ``immediate``)
    reference: list[list[list[int]]]  # the unedited model's locality predictions (token ids)
    curve: list[dict[str, float]] = field(default_factory=list)
    batches: list[list[int]] = field(default_factory=list)  # the planned edit batches (request indices)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Progress":
        known = {f.name for f in fields(cls)}  # progress saved by older versions also held "base_latency"
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class RunResult:
    """Per-edit rows, averaged metrics, seconds per edit and inference overhead of one run."""

    rows: list[dict[str, Any]]
    metrics: dict[str, float]
    seconds_per_edit: float
    inference_overhead: float
    latency: dict[str, float] = field(default_factory=dict)  # seconds: {"unedited", "edited"}
    curve: list[dict[str, float]] = field(default_factory=list)  # {"T", metrics...} at each checkpoint


def check_lengths(tokenizer, requests: Sequence[EditRequest], max_tokens: int) -> None:
    """Raise :class:`DataError` naming file, record and field for a prompt over ``max_tokens`` tokens
    (text tokens; an image adds its fixed number of image tokens, far below the limit)."""
    multimodal = is_multimodal(tokenizer)
    tokenizer = text_tokenizer(tokenizer)
    for i, request in enumerate(requests):
        path, _, index = (request.source or f"request#{i}").rpartition("#")
        path, index = path or "requests", int(index) if index.isdigit() else i
        if request.image is not None and not multimodal:
            raise DataError(path, "asks about an image, but the model is text-only "
                            "(use a vision-language model, e.g. --model tiny-llava)", index, "image")
        fields = {"prompt": request.prompt, "target": request.target,
                  **{f"rephrases[{j}]": r for j, r in enumerate(request.rephrases)},
                  **{f"locality[{j}]": loc.prompt + " " + loc.answer for j, loc in enumerate(request.locality)},
                  **({"m_loc_q": request.m_loc_question} if request.m_loc_question else {})}
        for name, text in fields.items():
            n = len(tokenizer(text).input_ids)
            if n > max_tokens:
                raise DataError(path, f"too long: {n} tokens, the limit is {max_tokens}", index, name)


def max_prompt_tokens(model) -> int:
    """Half the model's context: room for the prompt plus a target (editors add nothing positional)."""
    config = getattr(model.config, "text_config", model.config)
    return int(getattr(config, "max_position_embeddings", 2048)) // 2


def measure_overhead(editor: Editor, requests: Sequence[EditRequest], config: RunConfig) -> dict[str, float]:
    """Median wall time of scoring the edit prompts of ``requests`` (prefill plus continuation) with the edited
    model and with its changes suspended (:meth:`~minedit.patch.Patcher.suspended`), in alternating pairs whose
    order flips each repeat: ``{"unedited": s, "edited": s}``. An editor that changes nothing reads 1.00."""
    model, tokenizer = editor.model, editor.tokenizer
    pairs = [encode_pair(tokenizer, r.prompt, r.target, r.image) for r in requests[: config.latency_prompts]]

    def timed() -> float:
        start = time.perf_counter()
        predict_tokens(model, pairs, pad_id(tokenizer), config.score_batch_size)
        return time.perf_counter() - start

    def unedited() -> float:
        with editor.patches.suspended():
            return timed()

    timed(), unedited()  # warm-up: first calls allocate
    times: dict[str, list[float]] = {"unedited": [], "edited": []}
    for repeat in range(config.latency_repeats):
        order = (("unedited", unedited), ("edited", timed))
        for side, fn in order if repeat % 2 == 0 else order[::-1]:
            times[side].append(fn())
    return {side: statistics.median(values) for side, values in times.items()}


def plan_for(editor: Editor, requests: Sequence[EditRequest], batch_size: int, method: str = "none",
             seed: int = 0) -> list[list[int]]:
    """The edit batches (request indices) in the order ``method`` plans them (:mod:`minedit.planning`),
    clustered on the editor's routing feature (``editor.routing_feature()``; else the mean token embedding)."""
    from .moe.features import MeanPooledHidden
    from .planning import edit_features, plan_batches

    if method in ("none", "random"):  # no features needed
        return plan_batches(torch.zeros(len(requests), 1), batch_size, method, seed)

    feature = editor.routing_feature() if hasattr(editor, "routing_feature") else MeanPooledHidden(-1)
    return plan_batches(edit_features(editor.model, editor.tokenizer, requests, feature), batch_size, method, seed)


def run_lifelong(editor: Editor, requests: Sequence[EditRequest], config: RunConfig = RunConfig(),
                 resume: Progress | None = None, on_checkpoint: Callable[[Progress], None] | None = None) -> RunResult:
    """Apply ``requests`` with ``editor`` one batch at a time and score them under ``config.protocol``.

    ``resume``: continue a run from its :class:`Progress` (``editor`` must hold its first ``resume.done``
    edits, e.g. reloaded with :func:`minedit.editors.load_editor`). ``on_checkpoint(progress)`` is called
    after every ``config.checkpoint_every`` edits, once the rows of those edits are complete.
    """
    if config.protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {config.protocol!r}; use one of {PROTOCOLS}")
    if not requests:
        raise ValueError("no edit requests to run")
    model, tokenizer = editor.model, editor.tokenizer
    check_lengths(tokenizer, requests, max_prompt_tokens(model))
    model.eval()
    rows: list[dict[str, Any]] = [
        {"index": i, "prompt": r.prompt, "target": r.target} for i, r in enumerate(requests)
    ]
    if resume is None:
        reference = reference_predictions(model, tokenizer, requests, config.score_batch_size)
        first, curve = 0, []
        batches = plan_for(editor, requests, config.edit_batch_size, config.plan, config.plan_seed)
    else:
        if editor.n_edits != resume.done or not 0 < resume.done <= len(requests) or len(resume.rows) != resume.done:
            raise ValueError(f"cannot resume: the progress is at {resume.done} edits of {len(requests)} "
                             f"({len(resume.rows)} rows), the editor holds {editor.n_edits}")
        reference = [[torch.tensor(ids, dtype=torch.long) for ids in group] for group in resume.reference]
        first, curve = resume.done, list(resume.curve)
        batches = resume.batches or [list(range(i, min(i + config.edit_batch_size, len(requests))))
                                     for i in range(0, len(requests), config.edit_batch_size)]
        for row in resume.rows:
            rows[row["index"]] = dict(row)

    def progress(done: int, edited: list[int]) -> Progress:
        return Progress(done=done, rows=[dict(rows[i]) for i in edited],
                        reference=[[t.tolist() for t in group] for group in reference],
                        curve=list(curve), batches=batches)

    bar = tqdm(total=len(requests), initial=first, desc=f"{editor.name} ({config.protocol})",
               disable=not config.progress, unit="edit")
    edited: list[int] = []  # request indices in the order they were edited
    for indices in batches:
        start = len(edited)
        edited += indices
        if len(edited) <= first:
            continue  # applied before the resumed checkpoint
        batch = [requests[i] for i in indices]
        t0 = time.perf_counter()
        stats = editor.edit_batch(batch)
        took = time.perf_counter() - t0
        model.eval()
        for i, stat in zip(indices, stats):
            rows[i].update(seconds=took / len(batch), **{f"stat_{k}": v for k, v in stat.items()})
        if config.protocol == "immediate":
            scored = score_requests(model, tokenizer, batch, [reference[i] for i in indices],
                                    config.score_batch_size, config.exact)
            for i, score in zip(indices, scored):
                rows[i].update(score)
        done = len(edited)
        if any(start < t <= done for t in config.checkpoints):
            so_far = score_requests(model, tokenizer, [requests[i] for i in edited], [reference[i] for i in edited],
                                    config.score_batch_size, config.exact)
            curve.append({"T": done, **summarize(so_far)})
        every = config.checkpoint_every
        if on_checkpoint is not None and every > 0 and (done // every > start // every or done == len(requests)):
            on_checkpoint(progress(done, edited))
        bar.update(len(batch))
    bar.close()
    if config.protocol == "retention":
        for row, score in zip(rows, score_requests(model, tokenizer, requests, reference, config.score_batch_size, config.exact)):
            row.update(score)
    latency = measure_overhead(editor, requests, config)
    return RunResult(
        rows=rows,
        metrics=summarize(rows),
        seconds_per_edit=sum(row["seconds"] for row in rows) / len(requests),  # stored seconds on resume
        inference_overhead=latency["edited"] / latency["unedited"],
        latency=latency,
        curve=curve,
    )
