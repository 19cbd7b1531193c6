"""The mixture layer: a frozen module plus a pool of experts, weighted per sequence.

Li et al. 2024 (ELDER), Sec. 3.1, Eq. 1, on a frozen module ``W`` (a Linear, or a whole MLP for
LEMoE's bypass, Wang & Li 2024, Eq. 2):

    h = W(x) + sum_e g_e(s) * expert_e(x),        g(s): (E,) routing weights of the *sequence* s

:class:`ExpertLayer` is PEFT-style: the original module stays inside as ``base_layer`` and the
wrapper is swapped in by name (through a :class:`~minedit.patch.Patcher`), so swapping the original
back restores the model bit for bit. It does not route: it reads its (B, E) weights from a shared
:class:`RoutingState` that a :class:`~minedit.moe.mixture.Mixture` fills once per sequence, and applies
them where the sequence tracker says the decision holds (the last prompt token onwards). Experts whose
weight is zero for the whole batch are skipped, so a deferred batch costs one ``base_layer`` call and a
pool of hundreds of experts costs only the few that are routed to.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..sequence import SequenceTracker


@dataclass
class RoutingState:
    """Per-sequence routing weights shared by a mixture's layers: ``weights[layer]`` is (B, E_layer).

    ``None`` (or a missing entry) means "no expert": the layer returns ``base_layer(x)``.
    """

    tracker: SequenceTracker
    weights: dict[int, torch.Tensor | None] = field(default_factory=dict)

    def clear(self) -> None:
        self.weights.clear()


class ExpertLayer(nn.Module):
    """``base_layer(x) + sum_e g[:, e] * experts[e](x)`` with ``g`` read from a shared :class:`RoutingState`."""

    def __init__(self, base: nn.Module, state: RoutingState, index: int, d_in: int, d_out: int):
        super().__init__()
        self.base_layer = base
        self.experts = nn.ModuleList()
        self.d_in, self.d_out = d_in, d_out
        self.index = index  # this layer's key in ``state.weights``
        object.__setattr__(self, "state", state)  # shared plain object, not a submodule

    def add(self, expert: nn.Module) -> int:
        """Append an expert (moved to the base layer's device and dtype); returns its index."""
        p = next(self.base_layer.parameters())
        self.experts.append(expert.to(p.device, p.dtype))
        return len(self.experts) - 1

    def forward(self, x: torch.Tensor, base_out: torch.Tensor | None = None) -> torch.Tensor:
        """``base_out``: ``base_layer(x)`` when the caller already has it (training re-uses it every step)."""
        out = self.base_layer(x) if base_out is None else base_out  # (B, L, d_out)
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
        where = self.state.tracker.applies_from(L, B, x.device)  # (B, L): last prompt token onwards
        delta = torch.zeros_like(out)
        for e in active:
            rows = g[:, e].nonzero().flatten()  # only the sequences routed to expert e pay for it
            contrib = g[rows, e, None, None].to(out.dtype) * self.experts[e](x[rows])  # (b, L, d_out)
            delta = delta.index_add(0, rows, contrib)
        return out + delta * where.unsqueeze(-1).to(out.dtype)

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_out={self.d_out}, experts={len(self.experts)}"


MoELoRALinear = ExpertLayer  # the name notebooks 03-04 teach it under (a mixture of LoRA experts on a Linear)
