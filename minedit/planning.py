"""Edit-order planning: group pending edits into semantically tight batches before a batch editor sees them.

LEMoE (Wang & Li 2024, Sec. 3.3) observes that which edits share a batch (and so an expert) matters,
and clusters the pending edits so that every batch is about related things. :func:`plan_batches`
does this with k-means on the edits' routing features, with *equal-size* clusters (each batch is one
``edit_batch`` call of exactly ``batch_size`` edits, the last one possibly smaller):

1. k-means++ seeding and Lloyd iterations on unit-length features (cosine geometry), ``k = ceil(N / b)``;
2. capacity-constrained assignment: every (edit, centroid) pair in order of distance, an edit taking
   the nearest centroid that still has room (a greedy balanced assignment);
3. batches in order of their first edit in the data, edits inside a batch in data order.

``method="none"`` keeps the data order; ``"random"`` shuffles with the seed. The runner edits in the
planned order and still reports its rows in the data's order.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .errors import ConfigError

METHODS = ("none", "random", "kmeans")


def kmeans(x: torch.Tensor, k: int, seed: int = 0, iters: int = 25) -> torch.Tensor:
    """(k, d) centroids of ``x`` (N, d): k-means++ seeding, then Lloyd's iterations (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    centroids = [x[torch.randint(len(x), (1,), generator=gen)].squeeze(0)]
    for _ in range(1, k):
        d2 = torch.cdist(x, torch.stack(centroids)).min(-1).values ** 2  # (N,)
        probs = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1.0 / len(d2))
        centroids.append(x[torch.multinomial(probs, 1, generator=gen)].squeeze(0))
    c = torch.stack(centroids)
    for _ in range(iters):
        assign = torch.cdist(x, c).argmin(-1)  # (N,)
        new = torch.stack([x[assign == j].mean(0) if (assign == j).any() else c[j] for j in range(k)])
        if torch.allclose(new, c):
            break
        c = new
    return c


def balanced_assign(x: torch.Tensor, centroids: torch.Tensor, capacity: int) -> torch.Tensor:
    """(N,) cluster of each row: nearest centroid with room left, pairs taken in order of distance."""
    dist = torch.cdist(x, centroids)  # (N, k)
    assign = torch.full((len(x),), -1, dtype=torch.long)
    room = torch.full((len(centroids),), capacity, dtype=torch.long)
    for flat in dist.flatten().argsort(stable=True).tolist():
        i, j = divmod(flat, len(centroids))
        if assign[i] < 0 and room[j] > 0:
            assign[i], room[j] = j, room[j] - 1
    return assign


def plan_batches(features: torch.Tensor, batch_size: int, method: str = "kmeans", seed: int = 0) -> list[list[int]]:
    """Batches of edit indices (each at most ``batch_size``) for ``features`` (N, d), by ``method``."""
    if method not in METHODS:
        raise ConfigError(f"unknown plan {method!r}; use one of {', '.join(METHODS)}")
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    n = len(features)
    if method == "none" or batch_size == 1 and method != "random":
        order = list(range(n))
    elif method == "random":
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    else:
        x = F.normalize(features.detach().float().cpu(), dim=-1)
        k = math.ceil(n / batch_size)
        assign = balanced_assign(x, kmeans(x, k, seed), batch_size)
        groups = [sorted((assign == j).nonzero().flatten().tolist()) for j in range(k)]
        groups = sorted((g for g in groups if g), key=lambda g: g[0])
        return [g[i: i + batch_size] for g in groups for i in range(0, len(g), batch_size)]
    return [order[i: i + batch_size] for i in range(0, n, batch_size)]


def edit_features(model, tokenizer, requests, feature, batch_size: int = 32) -> torch.Tensor:
    """(N, d): ``feature`` (a :class:`~minedit.moe.features.SequenceFeature`) of each edit's prompt, as the
    router sees it while training on that edit."""
    from .moe.features import sequence_features
    from .sequence import tracker_for
    from .training import make_edit_batch

    out = []
    tracker = tracker_for(model)
    try:
        for start in range(0, len(requests), batch_size):
            chunk = requests[start: start + batch_size]
            batch = make_edit_batch(tokenizer, [r.prompt for r in chunk], [r.target for r in chunk], [r.image for r in chunk])
            with tracker.teacher_forcing(batch.key_positions):
                out.append(sequence_features(model, batch.model_inputs(), feature).cpu())
    finally:
        tracker.release()
    return torch.cat(out)
