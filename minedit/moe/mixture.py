"""A mixture of LoRA experts over several layers, routed once per sequence.

The parts (this package): :class:`~minedit.moe.lora.MoELoRALinear` wrappers hold the experts, one
:class:`~minedit.moe.features.SequenceFeature` gives each sequence one vector, one router per wrapped
layer turns it into expert weights, and gates (ELDER's :class:`~minedit.moe.gates.HammingGate`,
a :class:`~minedit.moe.gates.SimilarityGate`) may send the whole sequence to the original model.
:class:`Mixture` wires them together:

1. ``install``: each named Linear is replaced by a wrapper through a ``swap`` callback (an editor
   passes its ``_swap_module``, so ``Editor.restore()`` puts the originals back bit for bit);
2. at every prefill the feature hook fires and :meth:`Mixture.on_feature` routes *all* layers at
   once (the gate sees the whole code: Li et al. 2024, Sec. 3.3), zeroes deferred rows and
   publishes the per-layer weights that the wrappers read for the rest of the sequence;
3. while an editor trains, the same feature (captured under ``tracker.teacher_forcing``) is routed
   by :meth:`route` with gradients, and :meth:`publish` hands the weights of the step to the
   wrappers; training and inference therefore compute routing by the same function of the same
   feature (LEMoE's "routing consistency").
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn

from .features import SequenceFeature
from .gates import Gate
from .lora import MoELoRALinear, RoutingState
from .routers import Router, Routing

SwapFn = Callable[[str, nn.Module], nn.Module]


class Mixture:
    """Wrappers, routers, feature and gate of one mixture-of-LoRA model edit."""

    def __init__(self, model: nn.Module, tracker, feature: SequenceFeature, routers: Sequence[Router],
                 gates: Sequence[Gate] = ()):
        self.model, self.tracker, self.feature, self.gates = model, tracker, feature, list(gates)
        self.routers = nn.ModuleList(routers)  # one per wrapped layer, same order as ``names``
        self.state = RoutingState(tracker)
        self.names: list[str] = []
        self.wrappers: list[MoELoRALinear] = []
        self.last: list[Routing] = []  # the routing of the latest prefill (inspection, tests)

    # --- structure -----------------------------------------------------------------------------
    def install(self, names: Sequence[str], swap: SwapFn) -> None:
        """Wrap each module in ``names`` (swapped in by ``swap(name, wrapper)``) and start routing."""
        if len(names) != len(self.routers):
            raise ValueError(f"{len(names)} modules but {len(self.routers)} routers")
        for i, name in enumerate(names):
            wrapper = MoELoRALinear(self.model.get_submodule(name), self.state, i)
            swap(name, wrapper)
            self.names.append(name)
            self.wrappers.append(wrapper)
        self.feature.attach(self.model, self.tracker, self.on_feature)

    def remove(self) -> None:
        """Stop routing (the editor's restore puts the original modules back)."""
        self.feature.detach()
        self.state.clear()

    def add_experts(self, layer: int, n: int, rank: int, alpha: float,
                    generator: torch.Generator | None = None) -> list[int]:
        """Append ``n`` fresh experts to wrapped layer ``layer`` (and scores for them to its router).

        New experts start with ``requires_grad=False``: an editor switches on what one edit trains.
        """
        wrapper, router = self.wrappers[layer], self.routers[layer]
        new = [wrapper.add_expert(rank, alpha, generator) for _ in range(n)]
        for e in new:
            wrapper.experts[e].requires_grad_(False)
        if router.n_experts < len(wrapper.experts):
            router.grow(len(wrapper.experts) - router.n_experts, generator)
        return new

    def n_experts(self) -> list[int]:
        return [len(w.experts) for w in self.wrappers]

    # --- routing -------------------------------------------------------------------------------
    def route(self, features: torch.Tensor) -> list[Routing]:
        """Every layer's routing of ``features`` (B, d); differentiable w.r.t. the routers."""
        return [router(features) for router in self.routers]

    @staticmethod
    def code(routings: Sequence[Routing]) -> torch.Tensor:
        """(B, layers, k) chosen expert indices: the binary routing code of each row."""
        return torch.stack([r.chosen for r in routings], dim=1)

    def publish(self, weights: Sequence[torch.Tensor | None]) -> None:
        """Hand per-layer (B, E) weights to the wrappers for the current sequences."""
        self.state.weights = dict(enumerate(weights))

    def defer(self, features: torch.Tensor, routings: Sequence[Routing]) -> torch.Tensor:
        """(B,) bool: a router defers, or a gate does (ELDER's code memory, a similarity test, ...)."""
        defer = torch.stack([r.defer for r in routings]).any(0)
        code = self.code(routings)
        for gate in self.gates:
            defer = defer | gate.defer(features, code).to(defer.device)
        return defer

    @torch.no_grad()
    def remember(self, feature: torch.Tensor) -> torch.Tensor:
        """After an edit: add the edit's feature (1, d) and its current routing code to every gate."""
        code = self.code(self.route(feature))[0]  # (layers, k)
        for gate in self.gates:
            gate.add(feature[0], code)
        return code

    @torch.no_grad()
    def on_feature(self, features: torch.Tensor) -> None:
        """Called by the feature hook at every prefill: route, gate, publish."""
        routings = self.route(features)
        keep = (~self.defer(features, routings)).to(features.dtype)[:, None]  # (B, 1)
        self.last = routings
        self.publish([r.weights * keep for r in routings])
