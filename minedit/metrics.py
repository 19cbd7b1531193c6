"""Reliability, generality and locality: EasyEdit's token-level definitions plus exact match.

- **Rel** (reliability): teacher-forced token accuracy of the target after the edit prompt:
  the fraction of target positions where the argmax token equals the target token.
- **Gen** (generality): the same on each rephrased prompt, averaged.
- **Loc** (locality): on each unrelated prompt, with its answer teacher-forced, the fraction of
  positions where the edited model's argmax equals the *unedited* model's argmax.
- **Rel-EM / Gen-EM**: greedy generation, normalised (case, punctuation, spaces), must start with
  the target as whole words. Token accuracy gives partial credit per token given the gold prefix;
  exact match asks for the whole answer the way a user sees it, so the two disagree on multi-token
  targets (notebook 00 shows where).
Targets are tokenised with their leading space, as they follow the prompt (:func:`infer.encode_pair`).
"""
from __future__ import annotations

import math
import re
import string
from typing import Sequence

import torch

from .data import EditRequest
from .infer import Pair, encode_pair, generate_greedy, pad_id, predict_tokens

METRICS = ("rel", "gen", "loc", "rel_em", "gen_em")
_EXTRA_TOKENS = 2  # generate a little past the target so "Paris" vs "Parisian" is told apart


def token_accuracy(pred: torch.Tensor, target: Sequence[int]) -> float:
    """Fraction of positions where ``pred`` equals ``target`` (EasyEdit's ``test_prediction_acc``)."""
    target = torch.as_tensor(list(target))
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in length")
    return (pred == target).float().mean().item()


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, fold white space (SQuAD-style)."""
    text = text.lower()
    text = "".join(" " if ch in string.punctuation else ch for ch in text)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(generated: str, target: str) -> bool:
    """True if ``generated`` starts with ``target`` as whole words, after normalisation."""
    gen, want = normalize_answer(generated), normalize_answer(target)
    return bool(want) and (gen == want or gen.startswith(want + " "))


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def nanmean(values: Sequence[float]) -> float:
    """Mean of the values that are not NaN (NaN when none are)."""
    return _mean([v for v in values if not math.isnan(v)])


def locality_pairs(tokenizer, request: EditRequest) -> list[Pair]:
    return [encode_pair(tokenizer, loc.prompt, loc.answer) for loc in request.locality]


def reference_predictions(model, tokenizer, requests: Sequence[EditRequest], batch_size: int = 32) -> list[list[torch.Tensor]]:
    """The unedited model's argmax tokens on every locality prompt, for :func:`score_requests`."""
    pairs = [locality_pairs(tokenizer, r) for r in requests]
    flat = predict_tokens(model, [p for group in pairs for p in group], pad_id(tokenizer), batch_size)
    out, i = [], 0
    for group in pairs:
        out.append(flat[i: i + len(group)])
        i += len(group)
    return out


def score_requests(model, tokenizer, requests: Sequence[EditRequest], reference: Sequence[Sequence[torch.Tensor]] | None = None,
                   batch_size: int = 32, exact: bool = True) -> list[dict[str, float]]:
    """Per-request ``rel, gen, loc, rel_em, gen_em`` (NaN where a request has no such prompts).

    ``reference``: :func:`reference_predictions` of the unedited model; without it, ``loc`` is NaN.
    """
    pad = pad_id(tokenizer)
    rel = [encode_pair(tokenizer, r.prompt, r.target) for r in requests]
    gen = [[encode_pair(tokenizer, p, r.target) for p in r.rephrases] for r in requests]
    loc = [locality_pairs(tokenizer, r) if reference is not None else [] for r in requests]
    groups = [[rel[i], *gen[i], *loc[i]] for i in range(len(requests))]
    preds = predict_tokens(model, [p for g in groups for p in g], pad, batch_size)
    gens: list[list[int]] = []
    if exact:
        asked = [p for i in range(len(requests)) for p in (rel[i], *gen[i])]
        gens = generate_greedy(model, [p.prompt_ids for p in asked], [len(p.target_ids) + _EXTRA_TOKENS for p in asked],
                               pad, batch_size)
    rows, at, at_gen = [], 0, 0
    for i, request in enumerate(requests):
        n_gen, n_loc = len(gen[i]), len(loc[i])
        mine = preds[at: at + 1 + n_gen + n_loc]
        at += 1 + n_gen + n_loc
        row = {
            "rel": token_accuracy(mine[0], rel[i].target_ids),
            "gen": _mean([token_accuracy(p, pair.target_ids) for p, pair in zip(mine[1: 1 + n_gen], gen[i])]),
            "loc": _mean([(p == ref).float().mean().item() for p, ref in zip(mine[1 + n_gen:], reference[i])])
            if reference is not None and n_loc else math.nan,
            "rel_em": math.nan, "gen_em": math.nan,
        }
        if exact:
            texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in gens[at_gen: at_gen + 1 + n_gen]]
            at_gen += 1 + n_gen
            row["rel_em"] = float(exact_match(texts[0], request.target))
            row["gen_em"] = _mean([float(exact_match(t, request.target)) for t in texts[1:]])
        rows.append(row)
    return rows


def summarize(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over requests, ignoring NaN."""
    return {name: nanmean([row[name] for row in rows]) for name in METRICS}
