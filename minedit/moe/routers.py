"""Routers: one sequence feature in, expert weights and a defer decision out.

The protocol every router follows (a new routing idea is one new class):

    router(features (B, d)) -> Routing(weights (B, E), defer (B,) bool, probs (B, E), chosen (B, k))

``weights`` are what the experts are multiplied by (zero for experts not chosen), ``probs`` the full
distribution that a training loss can look at (ELDER's guided loss), ``defer`` rows that should get
the original model. A router whose expert pool grows (LEMoE adds an expert per batch, LiveEdit one
per edit) implements ``grow(n)``: the new experts' scores are appended, the old ones are kept.
A choice among several routers (LLaVA-CMoE's task locator) is a router too: one that holds the
task routers and, per sequence, returns the routing of the task it recognises. Optional methods an
allocation policy uses when a router has them: ``anchor(experts, feature)`` (point the new experts'
scores at an edit's feature) and ``freeze_rows(experts)`` (stop training those experts' scores).

Registered in :data:`ROUTERS` (``--set router=NAME``); a router's constructor takes the feature
width ``d``, ``k`` and any option of the editor's config it needs by keyword (``tau``, ...):
``topk`` :class:`TopKRouter`, ``cosine`` :class:`CosineTopKRouter`, ``keyed`` :class:`KeyedRouter`
(LEMoE's KV anchors), ``dense`` :class:`DenseRouter` (LiveEdit's softmax x sigmoid).

:class:`TopKRouter` is ELDER's (Li et al. 2024, Sec. 3.1, Eq. 2): a Linear over the sequence
feature, softmax, the top-k experts kept and their weights renormalised to sum to one,

    p = softmax(W s + b),   g_e = p_e / sum_{j in topk(p)} p_j  for e in topk(p), else 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import Registry

ROUTERS: Registry["Router"] = Registry("router")

@dataclass
class Routing:
    """One layer's routing of a batch of sequences."""

    weights: torch.Tensor  # (B, E): zero outside the chosen experts; rows sum to 1 (or 0 where deferred)
    defer: torch.Tensor  # (B,) bool: True -> the original layer answers
    probs: torch.Tensor  # (B, E): the router's full distribution (for training losses)
    chosen: Optional[torch.Tensor]  # (B, k) long: the chosen experts, ascending (the binary code); None: dense


class Router(Protocol):
    """What a :class:`~minedit.moe.mixture.Mixture` needs from a router."""

    n_experts: int

    def __call__(self, features: torch.Tensor) -> Routing: ...

    def grow(self, n: int, generator: torch.Generator | None = None) -> None: ...


def topk_routing(logits: torch.Tensor, k: int) -> Routing:
    """Softmax, keep the top ``k`` and renormalise them to sum to one (ELDER Eq. 2, LEMoE Eq. 4)."""
    probs = logits.softmax(-1)  # (B, E)
    k = min(k, probs.shape[-1])
    top, idx = probs.topk(k, dim=-1)  # (B, k)
    weights = torch.zeros_like(probs).scatter(-1, idx, top / top.sum(-1, keepdim=True))
    defer = torch.zeros(len(probs), dtype=torch.bool, device=probs.device)
    return Routing(weights, defer, probs, idx.sort(-1).values)


@ROUTERS.register("topk")
class TopKRouter(nn.Module):
    """Linear + softmax + top-k (ELDER). ``normalize``: route on the unit-length feature (hidden states
    have a few huge coordinates; on the raw feature one Adam step can move a logit by tens).

    Growing: ``grow(n)`` appends ``n`` rows to the Linear, drawn like the first ones; the existing
    rows are copied unchanged, so every old score stays what it was (the new experts only compete
    for probability mass). A fresh optimiser per edit picks up the new Parameter.
    Freezing: ``freeze_rows(experts)`` stops gradients into those experts' rows (their scores keep
    their function), as ``LoRAExpert.freeze`` does for the experts themselves.
    """

    def __init__(self, d: int, n_experts: int = 0, k: int = 2, normalize: bool = True,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.d, self.k, self.normalize = d, k, normalize
        self.weight = nn.Parameter(torch.empty(0, d))  # (E, d)
        self.bias = nn.Parameter(torch.empty(0))  # (E,)
        self.register_buffer("frozen", torch.zeros(0, dtype=torch.bool))  # (E,) rows that no longer learn
        self.grow(n_experts, generator)

    @property
    def n_experts(self) -> int:
        return self.weight.shape[0]

    def grow(self, n: int, generator: torch.Generator | None = None) -> None:
        bound = 1.0 / math.sqrt(self.d)  # nn.Linear's default range
        w = (torch.rand(n, self.d, generator=generator) * 2 - 1) * bound
        b = (torch.rand(n, generator=generator) * 2 - 1) * bound
        device, dtype = self.weight.device, self.weight.dtype
        grad = self.weight.requires_grad
        self.weight = nn.Parameter(torch.cat([self.weight.detach(), w.to(device, dtype)]), grad)
        self.bias = nn.Parameter(torch.cat([self.bias.detach(), b.to(device, dtype)]), grad)
        self.frozen = torch.cat([self.frozen, torch.zeros(n, dtype=torch.bool, device=device)])

    def shrink(self, n: int) -> None:
        """Drop the ``n`` newest rows (a probe expert removed again: LLaVA-CMoE's PGKE)."""
        keep = self.n_experts - n
        self.weight = nn.Parameter(self.weight.detach()[:keep].clone(), self.weight.requires_grad)
        self.bias = nn.Parameter(self.bias.detach()[:keep].clone(), self.bias.requires_grad)
        self.frozen = self.frozen[:keep].clone()

    def freeze_rows(self, experts: torch.Tensor) -> None:
        self.frozen[experts] = True

    def rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) with the frozen rows cut off from the gradient."""
        keep = self.frozen[:, None]
        weight = torch.where(keep, self.weight.detach(), self.weight)
        return weight, torch.where(keep[:, 0], self.bias.detach(), self.bias)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        s = F.normalize(features, dim=-1) if self.normalize else features  # an Adam step moves a logit by ~lr * sqrt(d)
        return F.linear(s.to(self.weight.dtype), *self.rows())  # (B, E)

    def forward(self, features: torch.Tensor) -> Routing:
        return topk_routing(self.logits(features), self.k)


@ROUTERS.register("cosine")
class CosineTopKRouter(TopKRouter):
    """Top-k over scaled cosine similarities, ``logits_e = tau * cos(s, w_e)``, rows settable as anchors.

    A cosine router (no bias) scores an expert by how much the feature points like the expert's row,
    so a row *anchored* at an edit's feature (``anchor``) wins near that edit and nowhere else, whatever
    the other rows are: adding an expert cannot steal earlier inputs far from its anchor. This is
    minedit's remedy for ELDER's router drift (notebook 04), in the spirit of LEMoE's KV anchors:
    a row anchored at its edit's feature already scores the maximum there, so the guided loss has
    (almost) nothing left to push, and frozen rows keep earlier edits routed as they were.
    """

    def __init__(self, d: int, n_experts: int = 0, k: int = 2, tau: float = 50.0,
                 generator: torch.Generator | None = None):
        super().__init__(d, n_experts, k, normalize=True, generator=generator)
        self.tau = tau  # sharpness: cos 0.98 vs 0.90 becomes logits 49 vs 45

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        s = F.normalize(features.to(self.weight.dtype), dim=-1)
        return self.tau * F.linear(s, F.normalize(self.rows()[0], dim=-1))  # (B, E); the bias is not used

    @torch.no_grad()
    def anchor(self, experts: torch.Tensor, feature: torch.Tensor) -> None:
        """Point the rows of ``experts`` at ``feature`` (d,), at a norm of sqrt(d) (Adam steps stay small)."""
        self.weight[experts.to(self.weight.device)] = F.normalize(feature.to(self.weight), dim=-1) * math.sqrt(self.d)


class KeyedScores(nn.Module):
    """Scores against fixed keys (buffers: in no optimiser, saved with the router); ``owner[j]`` is key j's
    expert, so an expert may hold one key or several (one per edit it learnt). An expert scores the best
    of its keys."""

    def __init__(self, d_key: int):
        super().__init__()
        self.d = d_key
        self.register_buffer("keys", torch.zeros(0, d_key))  # (K, d_key)
        self.register_buffer("owner", torch.zeros(0, dtype=torch.long))  # (K,) expert of each key
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # number of experts

    @property
    def n_experts(self) -> int:
        return int(self.count)

    def grow(self, n: int, generator: torch.Generator | None = None) -> None:
        """``n`` new experts with one random unit key each (fixed from now on, unless anchored at creation)."""
        new = F.normalize(torch.randn(n, self.d, generator=generator), dim=-1)
        self.keys = torch.cat([self.keys, new.to(self.keys)])
        self.owner = torch.cat([self.owner, torch.arange(n, device=self.owner.device) + self.count])
        self.count += n

    @torch.no_grad()
    def anchor(self, experts: torch.Tensor, feature: torch.Tensor) -> None:
        """Replace the keys of newly created ``experts`` by the query of ``feature`` (d,) or of each row of (n, d)."""
        rows = F.normalize(self.project(feature.reshape(-1, feature.shape[-1])), dim=-1).to(self.keys)  # (n, d)
        for e in experts.tolist():
            keep = self.owner != e
            self.keys = torch.cat([self.keys[keep], rows])
            self.owner = torch.cat([self.owner[keep], torch.full((len(rows),), e, device=self.owner.device)])

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return features

    def scores(self, query: torch.Tensor) -> torch.Tensor:
        """(B, E): each expert's best key score ``max_j k_j . v`` (-inf for an expert without keys)."""
        by_key = query @ self.keys.T  # (B, K)
        out = torch.full((len(query), self.n_experts), float("-inf"), device=query.device, dtype=by_key.dtype)
        return out.scatter_reduce(1, self.owner[None].expand_as(by_key), by_key, "amax")


@ROUTERS.register("keyed")
class KeyedRouter(KeyedScores):
    """LEMoE's KV-anchor routing (Wang & Li 2024, Sec. 3.2, Eq. 3-4):

        v = W_up SiLU(W_down e),    g = top-k softmax(k_i . v)

    over the expert keys ``k_i`` (fixed at creation). ``hidden=None`` uses ``v = e`` (no projection).
    Whether the query projection trains is the editor's choice (it is an ordinary ``nn.Module``).
    """

    def __init__(self, d: int, k: int = 1, hidden: Optional[int] = None, generator: torch.Generator | None = None):
        super().__init__(d)
        self.k = k
        self.query = nn.Identity() if hidden is None else nn.Sequential(
            nn.Linear(d, hidden, bias=False), nn.SiLU(), nn.Linear(hidden, d, bias=False))
        if hidden is not None and generator is not None:
            with torch.no_grad():
                for layer in (self.query[0], self.query[2]):
                    layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) / math.sqrt(layer.in_features))

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return self.query(features.to(self.keys.dtype))  # (B, d)

    def forward(self, features: torch.Tensor) -> Routing:
        return topk_routing(self.scores(self.project(features)), self.k)  # (B, E) logits k_i . v


@ROUTERS.register("dense")
class DenseRouter(KeyedScores):
    """LiveEdit's textual soft routing (Chen et al. 2024, Sec. 3.3): every expert gets a weight,

        s_e = tau * cos(feature, key_e),      c = softmax(s) * sigmoid(s)

    no top-k, so there is no binary routing code (``chosen`` is None). The sigmoid lets every weight
    be small at once: a query near no edit's key gets little of any expert.
    """

    def __init__(self, d: int, tau: float = 10.0):
        super().__init__(d)
        self.tau = tau  # cos 0.9 vs 0.5 becomes scores 9 vs 5

    def forward(self, features: torch.Tensor) -> Routing:
        s = self.tau * self.scores(F.normalize(features.to(self.keys.dtype), dim=-1))  # (B, E)
        probs = s.softmax(-1)
        defer = torch.zeros(len(s), dtype=torch.bool, device=s.device)
        return Routing(probs * torch.sigmoid(s), defer, probs, None)


def guided_loss(probs: torch.Tensor, preset: torch.Tensor) -> torch.Tensor:
    """ELDER's guided loss (Sec. 3.2): -log p_e of every preset expert e, averaged (rows and experts).

    ``probs`` (B, E), ``preset`` (B, k) expert indices. Pushing every preset expert up (rather than
    their sum) makes the preset set itself the top-k, which is what the deferral code records.
    The constant ``log k`` is subtracted, which leaves the gradient unchanged and makes the loss
    KL(uniform over the preset || p): zero exactly when the router puts all its mass, evenly, on
    the preset, so an early-stopping threshold on the total loss means something.
    """
    k = preset.shape[-1]
    return -(probs.gather(-1, preset).clamp_min(1e-12) * k).log().mean()
