"""Allocation policies: which experts an edit (or a batch of edits) is given, and what happens after.

A policy answers two questions for a mixture editor, one per layer: which experts should this
edit's sequence be routed to (the *preset*, what ELDER's guided loss pulls the router towards), and
which experts may its training change. After training, ``commit`` freezes what must be kept.
Registered in :data:`POLICIES`:

- ``shared`` :class:`SharedPreset`: ELDER as published (Li et al. 2024, Sec. 3.2): a random preset
  of k among E shared experts; every expert the router picks may learn, so later edits can
  overwrite what earlier ones stored.
- ``fresh`` :class:`FreshExperts`: k experts no earlier edit trained (the pool grows by k per layer
  once all are taken), frozen with their router rows after the edit; ``anchor`` also points the
  new experts' router scores at the edit's feature (routers with an ``anchor`` method).
- ``per-batch`` :class:`OnePerBatch`: LEMoE (Wang & Li 2024, Sec. 3.1): one new expert per layer for
  each batch of edits, trained on that batch only, then frozen ("no forgetting by design").
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .experts import ExpertSpec
from .mixture import Mixture
from .registry import Registry

POLICIES: Registry["AllocationPolicy"] = Registry("allocation policy")


@dataclass
class Allocation:
    """One edit's (or batch's) experts: ``preset[layer]`` expert indices (layers, k) and what may learn."""

    preset: torch.Tensor  # (layers, k) long, on the CPU
    trainable: list[nn.Module] = field(default_factory=list)


class AllocationPolicy:
    """Base: ``allocate`` before training, ``commit`` after it."""

    def __init__(self, spec: ExpertSpec, k: int):
        self.spec, self.k = spec, k  # what a new expert looks like; experts per layer and edit

    def new_experts(self, mixture: Mixture, layer: int, n: int, generator: torch.Generator | None) -> list[int]:
        """Add ``n`` fresh experts of ``spec`` to ``layer``; returns their indices."""
        wrapper = mixture.wrappers[layer]
        experts = [self.spec.build(wrapper.d_in, wrapper.d_out, generator) for _ in range(n)]
        return mixture.add_experts(layer, experts, generator)

    def allocate(self, mixture: Mixture, feature: torch.Tensor, generator: torch.Generator) -> Allocation:
        raise NotImplementedError

    def commit(self, mixture: Mixture, allocation: Allocation) -> None:
        """After training: nothing to keep apart (subclasses freeze)."""


@POLICIES.register("shared")
class SharedPreset(AllocationPolicy):
    """A random preset of k among a layer's shared experts; every expert may learn."""

    def allocate(self, mixture, feature, generator) -> Allocation:
        rows = [torch.randperm(len(w.experts), generator=generator)[: self.k].sort().values for w in mixture.wrappers]
        return Allocation(torch.stack(rows), [e for w in mixture.wrappers for e in w.experts])


@POLICIES.register("fresh")
class FreshExperts(AllocationPolicy):
    """k experts no edit has trained (new ones when fewer are free); frozen, with their router rows, after."""

    def __init__(self, spec: ExpertSpec, k: int, anchor: bool = True):
        super().__init__(spec, k)
        self.anchor = anchor  # point the new experts' router scores at the edit's feature

    def allocate(self, mixture, feature, generator) -> Allocation:
        rows = []
        for i, wrapper in enumerate(mixture.wrappers):
            free = [e for e, expert in enumerate(wrapper.experts) if not expert.frozen]
            if len(free) < self.k:
                free += self.new_experts(mixture, i, self.k - len(free), generator)
            rows.append(torch.tensor(free[: self.k]))
            router = mixture.routers[i]
            if self.anchor and hasattr(router, "anchor"):
                router.anchor(rows[-1], feature[0])
        preset = torch.stack(rows)
        return Allocation(preset, [mixture.wrappers[i].experts[e] for i, row in enumerate(preset.tolist()) for e in row])

    def commit(self, mixture, allocation) -> None:
        for i, row in enumerate(allocation.preset):
            for e in row.tolist():
                mixture.wrappers[i].experts[e].freeze()
            router = mixture.routers[i]
            if hasattr(router, "freeze_rows"):
                router.freeze_rows(row)


@POLICIES.register("per-batch")
class OnePerBatch(FreshExperts):
    """LEMoE: one new expert per layer for every batch of edits (k = 1), frozen after the batch.

    ``anchor``: the router's keys for the new expert come from the batch's features: their mean (one
    key per expert, LEMoE's KV anchor) or, with ``per_edit``, one key per edit of the batch.
    """

    def __init__(self, spec: ExpertSpec, k: int = 1, anchor: bool = True, per_edit: bool = False):
        super().__init__(spec, 1, anchor)
        self.per_edit = per_edit

    def allocate(self, mixture, feature, generator) -> Allocation:
        rows = []
        for i in range(len(mixture.wrappers)):
            rows.append(torch.tensor(self.new_experts(mixture, i, 1, generator)))
            router = mixture.routers[i]
            if self.anchor and hasattr(router, "anchor"):
                router.anchor(rows[-1], feature if self.per_edit else feature.mean(0))
        preset = torch.stack(rows)
        return Allocation(preset, [mixture.wrappers[i].experts[e] for i, row in enumerate(preset.tolist()) for e in row])
