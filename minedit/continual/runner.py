"""The continual runner: tasks in order, each learner's accuracy on every task after every task.

For each learner (:data:`~minedit.continual.learners.LEARNERS`) the tasks are learnt one after another
(``joint``: all at once) and after each one every task's test split is scored, giving the accuracy
matrix ``R[i][j]`` (after task ``i``, on task ``j``). From it (Lopez-Paz & Ranzato 2017, as CoIN reports):

    Last = mean_j R[T-1][j]                      (accuracy once every task is learnt)
    BWT  = mean_{j < T-1} (R[T-1][j] - R[j][j])  (backward transfer: negative = forgetting)

plus, for ``llava-cmoe``, Last with the oracle task id and the task locator's accuracy and confusion
matrix; and for every learner the parameters added per task and the seconds per task.

The frozen layers below the mixture are computed once per record for all learners
(:func:`cache_tasks`); each learner is removed after its run (``restore``), leaving the model bit for bit
as it was, so one process compares them all.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..arch import num_layers
from ..moe.features import masked_mean
from ..training import UpperStack, make_edit_batch
from .learners import LEARNERS, CachedBatch, ContinualConfig, answered
from .suite import Task

log = logging.getLogger(__name__)


def text_positions(batch, image_token: int | None) -> torch.Tensor:
    """(B, L) bool: the attended text positions up to each row's last prompt token (where ``TextHidden`` pools)."""
    L = batch.attention_mask.shape[1]
    keep = batch.attention_mask.bool() & (torch.arange(L)[None] <= batch.key_positions[:, None])
    return keep if image_token is None else keep & (batch.input_ids != image_token)


@torch.no_grad()
def cache_tasks(model, processor, tasks: Sequence[Task], first_layer: int, batch_size: int = 16,
                progress: bool = True) -> list[dict[str, list[CachedBatch]]]:
    """Every task's train and test records in batches, computed up to decoder layer ``first_layer`` once."""
    out, image_token = [], getattr(model.config, "image_token_id", None)
    total = sum(-(-len(t.train) // batch_size) - (-len(t.test) // batch_size) for t in tasks)
    bar = tqdm(total=total, desc="caching the frozen layers", disable=not progress)
    for index, task in enumerate(tasks):
        splits = {}
        for split in ("train", "test"):
            records = getattr(task, split)
            splits[split] = []
            for i in range(0, len(records), batch_size):
                rows = records[i:i + batch_size]
                batch = make_edit_batch(processor, [r.question for r in rows], [r.answer for r in rows],
                                        [r.image() for r in rows])
                stack = UpperStack(model, first_layer, batch)
                feature = masked_mean(stack.hidden, text_positions(batch, image_token)).float()
                splits[split].append(CachedBatch(stack, batch, feature, index))
                bar.update()
        out.append(splits)
    bar.close()
    return out


@torch.no_grad()
def base_accuracy(model, cached: Sequence[dict]) -> list[float]:
    """The unedited model's accuracy on every task's test split (what it can do before learning)."""
    head = model.get_output_embeddings()
    accs = []
    for splits in cached:
        right = total = 0
        for cb in splits["test"]:
            right += int(answered(cb.stack.hidden_states(), head, cb.batch.labels).sum())
            total += len(cb.feature)
        accs.append(right / total)
    return accs


def accuracy(learner, batches: Sequence[CachedBatch], oracle: bool = False) -> float:
    right = sum(int(learner.correct(cb, oracle).sum()) for cb in batches)
    return right / sum(len(cb.feature) for cb in batches)


def summarise(matrix: list[list[float]]) -> dict:
    """Last accuracy and backward transfer of an accuracy matrix (rows: after each task)."""
    last = matrix[-1]
    out = {"last": sum(last) / len(last)}
    if len(matrix) > 1:
        out["bwt"] = sum(last[j] - matrix[j][j] for j in range(len(matrix) - 1)) / (len(matrix) - 1)
    return out


def run_learner(model, name: str, cached: Sequence[dict], cfg: ContinualConfig, progress: bool = True) -> dict:
    """Train learner ``name`` on the cached tasks in order; its accuracy matrix and costs."""
    learner = LEARNERS.get(name)(model, cfg)
    tests = [splits["test"] for splits in cached]
    result: dict = {"matrix": [], "seconds_per_task": [], "params_added_per_task": [], "tasks": []}
    try:
        rounds = [[b for s in cached for b in s["train"]]] if learner.joint else [s["train"] for s in cached]
        before = 0  # the baselines' LoRA exists from the start: it counts as added by the first task
        for batches in tqdm(rounds, desc=name, disable=not progress):
            t0 = time.perf_counter()
            stats = learner.learn(batches)
            result["seconds_per_task"].append(time.perf_counter() - t0)
            result["params_added_per_task"].append(learner.n_parameters() - before)
            before = learner.n_parameters()
            result["matrix"].append([accuracy(learner, test) for test in tests])
            result["tasks"].append({k: v for k, v in stats.items() if k != "seconds"})
        result.update(summarise(result["matrix"]))
        result["expert_params_one_per_layer"] = learner.expert_parameters()
        if hasattr(learner, "locate"):
            result["oracle_last"] = sum(accuracy(learner, test, oracle=True) for test in tests) / len(tests)
            confusion = torch.zeros(len(tests), len(tests), dtype=torch.long)
            for j, test in enumerate(tests):
                for cb in test:
                    confusion[j] += torch.bincount(learner.locate(cb), minlength=len(tests))
            result["locator_confusion"] = confusion.tolist()
            result["locator_accuracy"] = float(confusion.diag().sum() / confusion.sum())
    finally:
        learner.restore()
    return result


def run(model, processor, tasks: Sequence[Task], learners: Sequence[str], cfg: ContinualConfig = ContinualConfig(),
        batch_size: int = 16, progress: bool = True) -> dict:
    """Every learner on the same tasks, in order; the dictionary ``results.json`` holds."""
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    first = num_layers(model) - cfg.layers
    cached = cache_tasks(model, processor, tasks, first, batch_size, progress)
    results = {"tasks": [t.name for t in tasks], "config": asdict(cfg), "batch_size": batch_size,
               "records": {t.name: {"train": len(t.train), "test": len(t.test)} for t in tasks},
               "cache_seconds": time.perf_counter() - t0, "start_accuracy": base_accuracy(model, cached),
               "learners": {}}
    for name in learners:
        log.info("learner %s", name)
        results["learners"][name] = run_learner(model, name, cached, cfg, progress)
    results["seconds"] = time.perf_counter() - t0
    return results
