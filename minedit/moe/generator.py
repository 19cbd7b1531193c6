"""LiveEdit's expert generator: one edit's hidden states in, a rank-r expert (U, V) out, no training per edit.

Chen et al. 2024 (LiveEdit, Sec. 3.2). The edit (image, question and answer, teacher-forced) runs
through the frozen model once; its hidden states at the input of the edited decoder layer, ``H``
(L, d), are read by ``2r`` learned queries with cross-attention, and each query's output becomes one
row of the expert's factors,

    A = softmax(Q (W_k (LN(H) + seg))^T / sqrt(w_h)) (W_v (LN(H) + seg))  # (2r, w), per head
    A = A + MLP(LN(A)),   U = A[:r] W_U,   V = A[r:] W_V                   # (r, d) each

where ``seg`` embeds which part of the edit a position belongs to (image, question, answer), so the
queries can look for "the answer" or "the image" by role. The expert is then
:class:`~minedit.moe.experts.FactorExpert`: ``delta(h) = ReLU(LN(h) U^T) V``, added (weighted by the
router) to the layer's output from the last prompt token on. The generator is trained offline
(:mod:`minedit.zoo.build_liveedit`) and never changes while editing.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# Roles of an edit's positions (the ``segments`` argument); padding attends nowhere.
PAD, IMAGE, QUESTION, ANSWER = 0, 1, 2, 3


class ExpertGenerator(nn.Module):
    """``(hidden (B, L, d), segments (B, L))`` -> ``U, V`` (B, r, d) each: one rank-``rank`` expert per edit."""

    def __init__(self, d: int, rank: int = 4, width: int = 256, heads: int = 4,
                 generator: torch.Generator | None = None):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of heads {heads}")
        self.d, self.rank, self.width, self.heads = d, rank, width, heads

        def linear(n_in: int, n_out: int, std: float) -> nn.Linear:
            layer = nn.Linear(n_in, n_out)
            with torch.no_grad():
                layer.weight.copy_(torch.randn(n_out, n_in, generator=generator) * std)
                layer.bias.zero_()
            return layer

        self.segment = nn.Embedding(4, d)  # PAD, IMAGE, QUESTION, ANSWER: added after the norm, at its scale
        with torch.no_grad():
            self.segment.weight.copy_(torch.randn(4, d, generator=generator))
        self.norm = nn.LayerNorm(d)
        self.queries = nn.Parameter(torch.randn(2 * rank, width, generator=generator) * 0.02)  # (2r, w)
        self.key, self.value = linear(d, width, d ** -0.5), linear(d, width, d ** -0.5)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(linear(width, 2 * width, width ** -0.5), nn.GELU(), linear(2 * width, width, 0.0))
        # rows of U: which inputs the expert fires on; LN(h) has norm sqrt(d), so rows of norm ~1 start the ReLU's
        # inputs near 1 (larger ones made Adam's first steps overshoot and the locality loss silence every unit)
        self.out_u = linear(width, d, (width * d) ** -0.5)
        # rows of V: what it adds; zero at first (as LoRA's B), so a new generator's experts change nothing and the
        # locality loss cannot start by silencing them (a ReLU pushed below zero everywhere never comes back)
        self.out_v = linear(width, d, 0.0)

    def forward(self, hidden: torch.Tensor, segments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, L, _ = hidden.shape
        h, wh = self.heads, self.width // self.heads
        x = self.norm(hidden.float()) + self.segment(segments)  # (B, L, d): a late layer's states run at norms
        # in the tens (a few dimensions in the hundreds), so the role is added once they are normalised
        k = self.key(x).view(B, L, h, wh).transpose(1, 2)  # (B, h, L, wh)
        v = self.value(x).view(B, L, h, wh).transpose(1, 2)  # (B, h, L, wh)
        q = self.queries.view(2 * self.rank, h, wh).transpose(0, 1)  # (h, 2r, wh)
        scores = q @ k.transpose(-1, -2) / math.sqrt(wh)  # (B, h, 2r, L)
        scores = scores.masked_fill((segments == PAD)[:, None, None, :], float("-inf"))
        a = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, 2 * self.rank, self.width)  # (B, 2r, w)
        a = a + self.mlp(self.mlp_norm(a))
        return self.out_u(a[:, : self.rank]), self.out_v(a[:, self.rank:])  # (B, r, d) each

    def extra_repr(self) -> str:
        return f"d={self.d}, rank={self.rank}, width={self.width}, heads={self.heads}"


def segments_for(input_ids: torch.Tensor, attention_mask: torch.Tensor, key_positions: torch.Tensor,
                 image_token: int | None) -> torch.Tensor:
    """(B, L) roles of a right-padded edit batch: image tokens, the rest of the prompt (up to each row's
    last prompt token), the answer after it, padding."""
    B, L = input_ids.shape
    pos = torch.arange(L, device=input_ids.device)[None]  # (1, L)
    seg = torch.where(pos <= key_positions[:, None].to(input_ids.device), QUESTION, ANSWER)
    if image_token is not None:
        seg = torch.where(input_ids == image_token, IMAGE, seg)
    return torch.where(attention_mask.bool(), seg, torch.full_like(seg, PAD))


def expert_delta(h: torch.Tensor, U: torch.Tensor, V: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``ReLU(LN(h) U^T) V`` for a batch of generated experts: h (B, n, d), U, V (B, r, d) -> (B, n, d).

    The same function as :class:`~minedit.moe.experts.FactorExpert`, batched over experts (training)."""
    return F.relu(F.layer_norm(h, h.shape[-1:], eps=eps) @ U.transpose(1, 2)) @ V
