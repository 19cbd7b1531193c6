"""Experts: small modules beside a frozen layer, added to a mixture over time and frozen after use.

Every expert maps the wrapped module's input ``x`` (..., d_in) to a change of its output (..., d_out),
starts as a no-op (or is given its factors), and keeps all it needs in its tensors, so a mixture's
``state_dict`` rebuilds a pool of mixed kinds and ranks (:func:`expert_from_state`).

- :class:`LoRAExpert`: Hu et al. 2022 (LoRA), Sec. 4.1: ``delta(x) = (alpha / r) B A x``; ELDER's
  experts (Li et al. 2024, Eq. 1), wrapped around one Linear.
- :class:`FFNExpert`: LEMoE's ``f_i(x)`` (Wang & Li 2024, Sec. 3.1, Eq. 2): a small FFN
  ``W_out SiLU(W_in x)`` beside a whole decoder MLP (a bypass: ``h = FFN(x) + lambda sum g_i f_i(x)``).
- :class:`FactorExpert`: LiveEdit's generated expert (Chen et al. 2024, Sec. 3.2):
  ``ReLU(LN(x) U^T) V`` with ``U, V`` (r, d) given by a generator, never trained.

A new kind is one class registered in :data:`EXPERTS` with ``create`` (from an :class:`ExpertSpec`)
and ``from_state`` (from its own tensors).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import Registry

EXPERTS: Registry[nn.Module] = Registry("expert kind")


@dataclass(frozen=True)
class ExpertSpec:
    """What a new expert looks like; one spec per mixture editor config."""

    kind: str = "lora"  # a name in EXPERTS
    rank: int = 8  # LoRA rank / FFN expert width (ELDER's public code: r = 8)
    alpha: float = 16.0  # LoRA scale alpha / r = 2, as minedit's LoRA baseline

    def build(self, d_in: int, d_out: int, generator: torch.Generator | None = None) -> nn.Module:
        return EXPERTS.get(self.kind).create(d_in, d_out, self, generator)


class Expert(nn.Module):
    """Base: ``frozen`` experts are out of every later optimisation (``freeze()``)."""

    kind = "expert"

    def __init__(self):
        super().__init__()
        self.frozen = False

    def freeze(self) -> None:
        self.frozen = True
        self.requires_grad_(False)

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor]) -> "Expert":
        raise NotImplementedError


def _uniform(rows: int, cols: int, generator: torch.Generator | None) -> torch.Tensor:
    bound = 1.0 / math.sqrt(cols)  # PEFT's kaiming_uniform(a=sqrt(5)) bound for a (rows, cols) weight
    return (torch.rand(rows, cols, generator=generator) * 2 - 1) * bound


@EXPERTS.register("lora")
class LoRAExpert(Expert):
    """``(alpha / r) * B A x``: A (r, d_in) small random, B (d_out, r) zero, so a new expert changes nothing."""

    kind = "lora"

    def __init__(self, d_in: int, d_out: int, rank: int, alpha: float, generator: torch.Generator | None = None):
        super().__init__()
        self.A = nn.Parameter(_uniform(rank, d_in, generator))  # (r, d_in)
        self.B = nn.Parameter(torch.zeros(d_out, rank))  # (d_out, r)
        self.register_buffer("scale", torch.tensor(alpha / rank))  # ()

    @classmethod
    def create(cls, d_in, d_out, spec: ExpertSpec, generator=None) -> "LoRAExpert":
        return cls(d_in, d_out, spec.rank, spec.alpha, generator)

    @classmethod
    def from_state(cls, tensors) -> "LoRAExpert":
        (r, d_in), d_out = tensors["A"].shape, tensors["B"].shape[0]
        expert = cls(d_in, d_out, r, float(tensors["scale"]) * r)
        expert.load_state_dict(tensors)
        return expert

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.A.T) @ self.B.T * self.scale  # (..., d_out)


@EXPERTS.register("ffn")
class FFNExpert(Expert):
    """``W_out SiLU(W_in x)`` with width ``rank``; ``W_out`` starts at zero (a no-op, like LoRA's B)."""

    kind = "ffn"

    def __init__(self, d_in: int, d_out: int, width: int, generator: torch.Generator | None = None):
        super().__init__()
        self.W_in = nn.Parameter(_uniform(width, d_in, generator))  # (w, d_in)
        self.W_out = nn.Parameter(torch.zeros(d_out, width))  # (d_out, w)

    @classmethod
    def create(cls, d_in, d_out, spec: ExpertSpec, generator=None) -> "FFNExpert":
        return cls(d_in, d_out, spec.rank, generator)

    @classmethod
    def from_state(cls, tensors) -> "FFNExpert":
        expert = cls(tensors["W_in"].shape[1], tensors["W_out"].shape[0], tensors["W_in"].shape[0])
        expert.load_state_dict(tensors)
        return expert

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x @ self.W_in.T) @ self.W_out.T  # (..., d_out)


@EXPERTS.register("factors")
class FactorExpert(Expert):
    """``ReLU(LN(x) U^T) V`` from given factors U (r, d_in), V (r, d_out); frozen from the start."""

    kind = "factors"

    def __init__(self, U: torch.Tensor, V: torch.Tensor, eps: float = 1e-5):
        super().__init__()
        self.U = nn.Parameter(U.detach().clone(), requires_grad=False)  # (r, d_in)
        self.V = nn.Parameter(V.detach().clone(), requires_grad=False)  # (r, d_out)
        self.eps = eps  # LayerNorm without affine parameters (LiveEdit normalises h before U)
        self.frozen = True

    @classmethod
    def create(cls, d_in, d_out, spec, generator=None):
        raise ValueError("a FactorExpert is built from given factors: FactorExpert(U, V)")

    @classmethod
    def from_state(cls, tensors) -> "FactorExpert":
        return cls(tensors["U"], tensors["V"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.layer_norm(x, x.shape[-1:], eps=self.eps)
        return F.relu(h @ self.U.T) @ self.V  # (..., d_out)


def expert_from_state(kind: str, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """Rebuild an expert of a registered ``kind`` from its ``state_dict``."""
    return EXPERTS.get(kind).from_state(tensors)
