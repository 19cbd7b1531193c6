"""Probe-Guided Knowledge Extension (PGKE): grow experts only in the layers that ask for them (LLaVA-CMoE, Sec. 3.2).

Adding a new expert to every layer for every task makes the model grow linearly with the tasks. PGKE
asks each layer first. Before a task is learnt, every candidate layer gets one *probe* expert next
to its old (frozen) experts, and a probe router over both; probes and probe routers train briefly
on a small part of the task's data (about 10%) with the task loss plus a load-balancing loss, which
keeps the router from collapsing onto old experts just because they are already trained. A layer
whose probe expert ends up used a lot is one where the old experts do not cover the new task:

    u_l = mean over the probe data of the probe router's weight on the probe expert of layer l
    layer l gets new experts  <=>  u_l > mean_l(u) - alpha * std_l(u)

New experts start as copies of the layer's most-used old expert on the new task (the probe router's
usage), so they begin from the nearest knowledge, not from scratch.

:func:`load_balancing_loss` is the Switch Transformer's (Fedus et al. 2022, Eq. 4), applied per
sequence: ``E * sum_e f_e * P_e`` with ``f_e`` the share of sequences whose top expert is ``e`` and
``P_e`` the mean routing probability of ``e``; it is 1 for perfectly balanced routing.
"""
from __future__ import annotations

import torch


def load_balancing_loss(probs: torch.Tensor) -> torch.Tensor:
    """Switch load balancing over a batch of routing distributions ``probs`` (B, E)."""
    E = probs.shape[-1]
    top = torch.zeros_like(probs).scatter(-1, probs.argmax(-1, keepdim=True), 1.0)  # (B, E) one-hot
    return E * (top.mean(0) * probs.mean(0)).sum()


def expansion_layers(usage: torch.Tensor, alpha: float) -> torch.Tensor:
    """(L,) bool: the layers whose probe usage ``usage`` (L,) exceeds ``mean - alpha * std`` (PGKE's rule)."""
    usage = usage.float()
    if len(usage) < 2:
        return torch.ones_like(usage, dtype=torch.bool)
    return usage > usage.mean() - alpha * usage.std()


def most_used(weights: torch.Tensor, n_old: int) -> int:
    """Index of the old expert (among the first ``n_old``) with the largest mean weight in ``weights`` (B, E)."""
    return int(weights[:, :n_old].mean(0).argmax())
