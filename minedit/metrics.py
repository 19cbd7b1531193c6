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
For image edits (MMEdit, LiveEdit): **T-Gen** rephrases the question, **M-Gen** asks it about
another picture of the same thing, **T-Loc** is a text-only prompt and **M-Loc** an unrelated
image question (both scored like Loc), and Rel/T-Gen/M-Gen also get exact match.
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
from .vision import text_tokenizer

METRICS = ("rel", "gen", "loc", "rel_em", "gen_em")
MULTIMODAL_METRICS = ("rel", "t_gen", "m_gen", "t_loc", "m_loc", "rel_em", "t_gen_em", "m_gen_em")
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


def _asks_about_image(request: EditRequest) -> bool:
    return request.image is not None


def target_probes(tokenizer, request: EditRequest) -> list[tuple[str, Pair]]:
    """(metric, pair) for every prompt that must now give the target: rel, then gen or t_gen / m_gen."""
    if not _asks_about_image(request):
        return [("rel", encode_pair(tokenizer, request.prompt, request.target)),
                *(("gen", encode_pair(tokenizer, p, request.target)) for p in request.rephrases)]
    probes = [("rel", encode_pair(tokenizer, request.prompt, request.target, request.image)),
              *(("t_gen", encode_pair(tokenizer, p, request.target, request.image)) for p in request.rephrases)]
    if request.image_rephrase is not None:
        probes.append(("m_gen", encode_pair(tokenizer, request.prompt, request.target, request.image_rephrase)))
    return probes


def locality_probes(tokenizer, request: EditRequest) -> list[tuple[str, Pair]]:
    """(metric, pair) for every prompt whose predictions must not change: loc, or t_loc / m_loc."""
    text = "t_loc" if _asks_about_image(request) else "loc"
    probes = [(text, encode_pair(tokenizer, loc.prompt, loc.answer)) for loc in request.locality]
    if request.m_loc_image is not None:
        probes.append(("m_loc", encode_pair(tokenizer, request.m_loc_question, request.m_loc_answer, request.m_loc_image)))
    return probes


def locality_pairs(tokenizer, request: EditRequest) -> list[Pair]:
    return [pair for _, pair in locality_probes(tokenizer, request)]


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
    """Per-request metrics: ``rel, gen, loc, rel_em, gen_em`` for text edits and ``rel, t_gen, m_gen,
    t_loc, m_loc, rel_em, t_gen_em, m_gen_em`` for image edits (NaN where a request has no such prompt).

    ``reference``: :func:`reference_predictions` of the unedited model; without it, locality is NaN.
    """
    pad = pad_id(tokenizer)
    targets = [target_probes(tokenizer, r) for r in requests]
    locs = [locality_probes(tokenizer, r) if reference is not None else [] for r in requests]
    preds = predict_tokens(model, [p for i in range(len(requests)) for _, p in (*targets[i], *locs[i])], pad, batch_size)
    texts: list[str] = []
    if exact:
        asked = [p for group in targets for _, p in group]
        gens = generate_greedy(model, [p.prompt_ids for p in asked], [len(p.target_ids) + _EXTRA_TOKENS for p in asked],
                               pad, batch_size, pixels=[p.pixel_values for p in asked])
        texts = [text_tokenizer(tokenizer).decode(ids, skip_special_tokens=True) for ids in gens]
    rows, at, at_gen = [], 0, 0
    for i, request in enumerate(requests):
        names = MULTIMODAL_METRICS if _asks_about_image(request) else METRICS
        scores: dict[str, list[float]] = {name: [] for name in names}
        for name, pair in targets[i]:
            scores[name].append(token_accuracy(preds[at], pair.target_ids))
            if exact:
                scores[f"{name}_em"].append(float(exact_match(texts[at_gen], request.target)))
                at_gen += 1
            at += 1
        for j, (name, _) in enumerate(locs[i]):
            scores[name].append((preds[at] == reference[i][j]).float().mean().item())
            at += 1
        rows.append({name: _mean(values) for name, values in scores.items()})
    return rows


def summarize(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over requests, ignoring NaN (the multimodal set when rows have image metrics)."""
    names = MULTIMODAL_METRICS if any("t_gen" in row for row in rows) else METRICS
    return {name: nanmean([row.get(name, math.nan) for row in rows]) for name in names}
