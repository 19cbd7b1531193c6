"""The course's exercises, read from the notebook sources: every check fails on the learner's stub and
passes on the solution; the learner's cell falls back to the library; plausible wrong answers fail."""
from __future__ import annotations

import sys
import io
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch

from minedit import course

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import nbtool  # noqa: E402  (tools/nbtool.py: the notebook builder and sync gate)

EXERCISES = [ex for src in nbtool.sources() for ex in nbtool.exercises(src)]
IDS = [f"{ex.notebook}:{ex.function}" for ex in EXERCISES]


def run_cell(ex, learner: bool) -> dict:
    """Execute the exercise cell as the learner's or the solutions notebook has it; ``model`` and ``tokenizer``
    are None, so checks skip their full-model parts (the notebooks run those)."""
    ns: dict = {"model": None, "tokenizer": None}
    exec(ex.imports, ns)
    with redirect_stdout(io.StringIO()) as out:
        exec(ex.stub if learner else ex.solution, ns)
    ns["_printed"] = out.getvalue()
    return ns


def test_every_notebook_has_an_exercise():
    assert {ex.notebook for ex in EXERCISES} == {src.stem for src in nbtool.sources()}
    assert len(EXERCISES) >= 10


@pytest.mark.parametrize("ex", EXERCISES, ids=IDS)
def test_check_fails_on_the_stub(ex):
    ns = run_cell(ex, learner=True)
    with pytest.raises(NotImplementedError):
        getattr(course, ex.check)(ns[ex.function])


@pytest.mark.parametrize("ex", EXERCISES, ids=IDS)
def test_check_passes_on_the_solution(ex):
    ns = run_cell(ex, learner=False)
    getattr(course, ex.check)(ns[ex.function])
    assert ns[ex.result] is ns[ex.function], "a passing solution is what the later cells use"
    assert "check passed" in ns["_printed"]


@pytest.mark.parametrize("ex", EXERCISES, ids=IDS)
def test_learner_cell_falls_back_to_the_library(ex):
    """The learner's notebook runs top to bottom before any exercise is written: the cell hands the later
    cells minedit's own function, and that function passes the same check."""
    ns = run_cell(ex, learner=True)
    assert "not written yet" in ns["_printed"]
    fallback = ns[ex.result]
    assert fallback is not ns[ex.function]
    getattr(course, ex.check)(fallback)


def test_stub_has_no_solution_and_solution_has_no_markers():
    for ex in EXERCISES:
        assert "NotImplementedError" in ex.stub and "BEGIN SOLUTION" not in ex.stub
        assert "BEGIN SOLUTION" not in ex.solution and "END SOLUTION" not in ex.solution
        assert "NotImplementedError" not in ex.solution


# Plausible mistakes a learner makes: each must fail its check with an AssertionError.
def _topk_unnormalised(probs, k):
    top, idx = probs.topk(k, dim=-1)
    return torch.zeros_like(probs).scatter(-1, idx, top)


def _lookup_any_ball(query, keys, radii):  # any key within its radius, not the nearest one
    if len(keys) == 0:
        return torch.full((len(query),), -1, dtype=torch.long)
    inside = torch.cdist(query, keys) <= radii
    return torch.where(inside.any(-1), inside.float().argmax(-1), torch.full((len(query),), -1))


def _radius_rule_no_eps(distance, radius, same_target, eps):
    if distance is None or distance > radius:
        return "add", radius, eps
    return ("expand", max(radius, distance), None) if same_target else ("split", distance / 2, distance / 2)


def _defer_mean(codes, memory, threshold):  # the mean distance instead of the nearest stored code
    if len(memory) == 0:
        return torch.ones(len(codes), dtype=torch.bool)
    overlap = (codes[:, None, :, :, None] == memory[None, :, :, None, :]).any(-1).sum((-1, -2))
    return (2 * (codes.shape[1] * codes.shape[2] - overlap)).float().mean(-1) > threshold


def _kv_mean_of_keys(v, keys, owner, n_experts, k):  # averages an expert's keys instead of taking its best one
    sums = torch.zeros(n_experts, keys.shape[1]).index_add(0, owner, keys)
    means = sums / torch.bincount(owner, minlength=n_experts).clamp_min(1)[:, None]
    top, idx = (v @ means.T).softmax(-1).topk(k, dim=-1)
    return torch.zeros(len(v), n_experts).scatter(-1, idx, top / top.sum(-1, keepdim=True))


def _soft_route_softmax_over_all(visual, sentinel, s):  # the softmax shared with the filtered-out experts too
    return s.softmax(-1) * torch.sigmoid(s) * (visual > sentinel)


def _soft_route_nan_without_survivors(visual, sentinel, s):  # softmax over nothing but -inf: NaN, not zeros
    return s.masked_fill(visual <= sentinel, float("-inf")).softmax(-1) * torch.sigmoid(s)


def _locate_raw_errors(errors, err_mean, err_std):  # the raw errors: one task's VAE simply errs less on everything
    return errors.argmin(-1)


def _locate_argmax(errors, err_mean, err_std):  # the highest z-score: the task whose VAE fits worst
    return ((errors - err_mean) / err_std).argmax(-1)


def _locate_without_spread(errors, err_mean, err_std):  # centred but not scaled by each VAE's spread
    return (errors - err_mean).argmin(-1)


class _RouterDotProduct(course.NearestEditRouter):  # scores k . s: an edit with a large feature norm wins everywhere
    def logits(self, features):
        return self.tau * features.to(self.weight) @ self.weight.T


class _RouterNoTopK(course.NearestEditRouter):  # softmax over every expert: no top-k, no renormalisation
    def forward(self, features):
        routing = super().forward(features)
        return type(routing)(routing.probs, routing.defer, routing.probs, routing.chosen)


class _RouterNoSharpness(course.NearestEditRouter):  # plain cosine: a near-uniform softmax
    def logits(self, features):
        return super().logits(features) / self.tau


class _RouterGrowReplaces(course.NearestEditRouter):  # grow(n) starts over with n random keys: old edits lost
    def grow(self, n, generator=None):
        self.weight = torch.nn.Parameter(torch.randn(n, self.d, generator=generator), self.weight.requires_grad)
        self.bias = torch.nn.Parameter(torch.zeros(n), self.bias.requires_grad)
        self.frozen = torch.zeros(n, dtype=torch.bool)


WRONG = [
    ("check_token_accuracy", lambda pred, target: float((pred == torch.as_tensor(list(target))).sum())),
    ("check_exact_match", lambda gen, target: gen.lower().startswith(target.lower())),
    ("check_projection", lambda w, w0, d: torch.clamp(w, -d, d)),
    ("check_grace_lookup", _lookup_any_ball),
    ("check_radius_rule", _radius_rule_no_eps),
    ("check_moe_lora", lambda x, base, A, B, scale, g: base(x)),
    ("check_topk", _topk_unnormalised),
    ("check_guided_loss", lambda probs, preset: -probs.gather(-1, preset).log().mean()),
    ("check_deferral", _defer_mean),
    ("check_kv_anchor", _kv_mean_of_keys),
    ("check_image_tokens", lambda config: (config.image_size // config.patch_size) ** 2 + 1),
    ("check_soft_route", _soft_route_softmax_over_all),
    ("check_soft_route", _soft_route_nan_without_survivors),
    ("check_locate", _locate_raw_errors),
    ("check_locate", _locate_argmax),
    ("check_locate", _locate_without_spread),
    ("check_router", _RouterDotProduct),
    ("check_router", _RouterNoTopK),
    ("check_router", _RouterNoSharpness),
    ("check_router", _RouterGrowReplaces),
]


@pytest.mark.parametrize("check,wrong", WRONG, ids=[c for c, _ in WRONG])
def test_check_fails_on_a_plausible_mistake(check, wrong):
    with pytest.raises(AssertionError):
        getattr(course, check)(wrong)


# Notebook 10: plausible mistakes in the recommendation rule (minedit.choose); each must fail check_recommend.
import math  # noqa: E402


def _fits(row, at_least, max_seconds, max_kb, strict_floor=False, strict_ceiling=False, unmeasured_meets=False, kb=1024):
    if "skipped" in row:
        return False
    for name, floor in (at_least or {}).items():
        value = row["metrics"].get(name)
        if value is None or value != value:
            if unmeasured_meets:
                continue
            return False
        if value < floor or (strict_floor and value == floor):
            return False
    if strict_ceiling:
        return row["seconds_per_edit"] < max_seconds and row["bytes_per_edit"] / kb < max_kb
    return row["seconds_per_edit"] <= max_seconds and row["bytes_per_edit"] / kb <= max_kb


def _recommender(keep_unedited=False, any_T=False, order=("bytes_per_edit", "seconds_per_edit", "editor"), **rule):
    def recommend(rows, T, at_least=None, max_seconds=math.inf, max_kb=math.inf, protocol="retention"):
        fits = [r for r in rows if (any_T or r["T"] == T) and r["protocol"] == protocol
                and (keep_unedited or r["editor"] != "none") and _fits(r, at_least, max_seconds, max_kb, **rule)]
        if order:
            fits = sorted(fits, key=lambda r: tuple(r[k] for k in order))
        return [r["editor"] for r in fits]
    return recommend


WRONG_RECOMMEND = {
    "floor met only above it (>)": _recommender(strict_floor=True),
    "ceiling met only below it (<)": _recommender(strict_ceiling=True),
    "recommends the unedited model": _recommender(keep_unedited=True),
    "rows at every T": _recommender(any_T=True),
    "bytes compared with the KB ceiling": _recommender(kb=1),
    "an unmeasured metric meets its floor": _recommender(unmeasured_meets=True),
    "fastest first": _recommender(order=("seconds_per_edit", "bytes_per_edit", "editor")),
    "data order": _recommender(order=()),
}


@pytest.mark.parametrize("wrong", WRONG_RECOMMEND.values(), ids=WRONG_RECOMMEND.keys())
def test_check_recommend_fails_on_a_plausible_mistake(wrong):
    with pytest.raises(AssertionError):
        course.check_recommend(wrong)


# 11: the similarity gate's margin
def _margin_dot_product(features, edit_features, threshold):  # no normalisation: a long feature wins everywhere
    return (features @ edit_features.T).max(-1).values - threshold


def _margin_mean_over_edits(features, edit_features, threshold):  # the mean similarity, not the nearest edit's
    return (torch.nn.functional.normalize(features, dim=-1) @ torch.nn.functional.normalize(edit_features, dim=-1).T).mean(-1) - threshold


def _margin_flipped(features, edit_features, threshold):  # threshold - similarity: positive where the gate defers
    return threshold - (torch.nn.functional.normalize(features, dim=-1) @ torch.nn.functional.normalize(edit_features, dim=-1).T).max(-1).values


def _margin_edits_only_normalised(features, edit_features, threshold):  # the query's norm still counts
    return (features @ torch.nn.functional.normalize(edit_features, dim=-1).T).max(-1).values - threshold


WRONG_MARGIN = {"dot product": _margin_dot_product, "mean over edits": _margin_mean_over_edits,
                "threshold minus similarity": _margin_flipped, "query not normalised": _margin_edits_only_normalised}


@pytest.mark.parametrize("wrong", WRONG_MARGIN.values(), ids=WRONG_MARGIN.keys())
def test_check_similarity_margin_fails_on_a_plausible_mistake(wrong):
    with pytest.raises(AssertionError):
        course.check_similarity_margin(wrong)
