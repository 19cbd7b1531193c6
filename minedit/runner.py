"""The lifelong runner: apply T edits in sequence and measure them under one of two protocols.

- ``retention``: apply all T edits, then score every edit on the final model (what lifelong
  editing is about: are the early edits still there, is the rest of the model intact?).
- ``immediate``: score each edit right after it is applied (EasyEdit's sequential numbers).

Locality compares against the unedited model's predictions, computed before the first edit.
Inference overhead is the latency of the edited model over the unedited one on the same prompts.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

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
    latency_repeats: int = 3  # timings are the fastest of this many runs (robust to a busy CPU)
    progress: bool = True  # tqdm progress bar
    checkpoints: tuple[int, ...] = ()  # also score all edits so far after these many edits (a retention curve)


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


def measure_latency(model, tokenizer, requests: Sequence[EditRequest], config: RunConfig) -> float:
    """Fastest wall time of scoring the edit prompts of ``requests`` (prefill plus continuation)."""
    pairs = [encode_pair(tokenizer, r.prompt, r.target, r.image) for r in requests[: config.latency_prompts]]
    predict_tokens(model, pairs, pad_id(tokenizer), config.score_batch_size)  # warm-up: first calls allocate
    times = []
    for _ in range(config.latency_repeats):
        start = time.perf_counter()
        predict_tokens(model, pairs, pad_id(tokenizer), config.score_batch_size)
        times.append(time.perf_counter() - start)
    return min(times)


def run_lifelong(editor: Editor, requests: Sequence[EditRequest], config: RunConfig = RunConfig()) -> RunResult:
    """Apply ``requests`` with ``editor`` one batch at a time and score them under ``config.protocol``."""
    if config.protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {config.protocol!r}; use one of {PROTOCOLS}")
    if not requests:
        raise ValueError("no edit requests to run")
    model, tokenizer = editor.model, editor.tokenizer
    check_lengths(tokenizer, requests, max_prompt_tokens(model))
    model.eval()
    reference = reference_predictions(model, tokenizer, requests, config.score_batch_size)
    base_latency = measure_latency(model, tokenizer, requests, config)

    rows: list[dict[str, Any]] = [
        {"index": i, "prompt": r.prompt, "target": r.target} for i, r in enumerate(requests)
    ]
    edit_seconds, curve = 0.0, []
    bar = tqdm(total=len(requests), desc=f"{editor.name} ({config.protocol})", disable=not config.progress, unit="edit")
    for start in range(0, len(requests), config.edit_batch_size):
        batch = list(requests[start: start + config.edit_batch_size])
        t0 = time.perf_counter()
        stats = editor.edit_batch(batch)
        took = time.perf_counter() - t0
        edit_seconds += took
        model.eval()
        for offset, stat in enumerate(stats):
            rows[start + offset].update(seconds=took / len(batch), **{f"stat_{k}": v for k, v in stat.items()})
        if config.protocol == "immediate":
            scored = score_requests(model, tokenizer, batch, reference[start: start + len(batch)],
                                    config.score_batch_size, config.exact)
            for offset, score in enumerate(scored):
                rows[start + offset].update(score)
        done = start + len(batch)
        if any(start < t <= done for t in config.checkpoints):
            so_far = score_requests(model, tokenizer, requests[:done], reference[:done], config.score_batch_size, config.exact)
            curve.append({"T": done, **summarize(so_far)})
        bar.update(len(batch))
    bar.close()
    if config.protocol == "retention":
        for row, score in zip(rows, score_requests(model, tokenizer, requests, reference, config.score_batch_size, config.exact)):
            row.update(score)
    edited_latency = measure_latency(model, tokenizer, requests, config)
    return RunResult(
        rows=rows,
        metrics=summarize(rows),
        seconds_per_edit=edit_seconds / len(requests),
        inference_overhead=edited_latency / base_latency,
        latency={"unedited": base_latency, "edited": edited_latency},
        curve=curve,
    )
