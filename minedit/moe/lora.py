"""LoRA experts and the mixture-of-LoRA wrapper of one Linear.

Hu et al. 2022 (LoRA), Sec. 4.1, one expert:  delta_e(x) = (alpha / r) * B_e A_e x,
A_e: (r, d_in) small random, B_e: (d_out, r) zeros, so a new expert changes nothing until trained.
Li et al. 2024 (ELDER), Sec. 3.1, Eq. 1, the mixture on a frozen W:

    h = W x + sum_e g_e(s) * delta_e(x),        g(s): (E,) routing weights of the *sequence* s

:class:`MoELoRALinear` is PEFT-style: the original module stays inside as ``base_layer`` and the
wrapper is swapped in by name (``Editor._swap_module``), so swapping the original back restores the
model bit for bit. It does not route: it reads its (B, E) weights from a shared
:class:`RoutingState` that a :class:`~minedit.moe.mixture.Mixture` fills once per sequence, and it
applies them where the sequence tracker says the decision holds (the last prompt token onwards).
Experts whose weight is zero for the whole batch are skipped, so a deferred batch costs one
``base_layer`` call and a pool of hundreds of experts costs only the few that are routed to.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..sequence import SequenceTracker


class LoRAExpert(nn.Module):
    """One low-rank expert ``(alpha / r) * B A x``; ``freeze()`` takes it out of every later optimisation."""

    def __init__(self, d_in: int, d_out: int, rank: int, alpha: float, generator: torch.Generator | None = None):
        super().__init__()
        bound = 1.0 / math.sqrt(d_in)  # PEFT's kaiming_uniform(a=sqrt(5)) bound for A
        a = (torch.rand(rank, d_in, generator=generator) * 2 - 1) * bound
        self.A = nn.Parameter(a)  # (r, d_in)
        self.B = nn.Parameter(torch.zeros(d_out, rank))  # (d_out, r): zero, so a new expert is a no-op
        self.scale = alpha / rank
        self.frozen = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.A.T) @ self.B.T * self.scale  # (..., d_out)

    def freeze(self) -> None:
        self.frozen = True
        self.requires_grad_(False)


@dataclass
class RoutingState:
    """Per-sequence routing weights shared by a mixture's wrappers: ``weights[layer]`` is (B, E_layer).

    ``None`` (or a missing entry) means "no expert": the wrapper returns ``base_layer(x)``.
    """

    tracker: SequenceTracker
    weights: dict[int, torch.Tensor | None] = field(default_factory=dict)

    def clear(self) -> None:
        self.weights.clear()


def linear_dims(base: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of a Linear, or of transformers' Conv1D, which stores its weight as (d_in, d_out)."""
    w = base.weight
    return (w.shape[0], w.shape[1]) if type(base).__name__ == "Conv1D" else (w.shape[1], w.shape[0])


class MoELoRALinear(nn.Module):
    """``base_layer(x) + sum_e g[:, e] * experts[e](x)`` with ``g`` read from a shared :class:`RoutingState`."""

    def __init__(self, base: nn.Module, state: RoutingState, index: int):
        super().__init__()
        self.base_layer = base
        self.experts = nn.ModuleList()
        self.d_in, self.d_out = linear_dims(base)
        self.index = index  # this wrapper's key in ``state.weights``
        object.__setattr__(self, "state", state)  # shared plain object, not a submodule

    def add_expert(self, rank: int, alpha: float, generator: torch.Generator | None = None) -> int:
        """Append a fresh (no-op) expert; returns its index."""
        w = self.base_layer.weight
        self.experts.append(LoRAExpert(self.d_in, self.d_out, rank, alpha, generator).to(w.device, w.dtype))
        return len(self.experts) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)  # (B, L, d_out)
        g = self.state.weights.get(self.index)  # (B, E) or None
        if g is None:
            return out
        if x.dim() != 3 or g.shape[0] != x.shape[0]:
            raise RuntimeError(f"routing weights for {g.shape[0]} sequences, input {tuple(x.shape)}: "
                               "was the routing feature computed for this batch?")
        active = (g != 0).any(0).nonzero().flatten().tolist()  # experts routed to by some row
        if not active:
            return out  # every row deferred: exactly the base layer
        B, L = x.shape[:2]
        where = self.state.tracker.applies_from(L, B).to(x.device)  # (B, L): last prompt token onwards
        delta = torch.zeros_like(out)
        for e in active:
            rows = g[:, e].nonzero().flatten()  # only the sequences routed to expert e pay for it
            contrib = g[rows, e, None, None].to(out.dtype) * self.experts[e](x[rows])  # (b, L, d_out)
            delta = delta.index_add(0, rows, contrib)
        return out + delta * where.unsqueeze(-1).to(out.dtype)

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_out={self.d_out}, experts={len(self.experts)}"
