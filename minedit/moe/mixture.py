"""A mixture of experts over several layers, routed once per sequence: the object editors compose.

The parts (this package): :class:`~minedit.moe.layer.ExpertLayer` wrappers hold the experts, one or
more :class:`~minedit.moe.features.SequenceFeature` give each sequence its vectors (a text feature,
a visual one), one router per wrapped layer turns a feature into expert weights, and gates (ELDER's
:class:`~minedit.moe.gates.HammingGate`, a :class:`~minedit.moe.gates.SimilarityGate`) may send a
whole sequence to the original model. :class:`Mixture` owns their lifecycle and state:

1. ``install(names, patcher)``: each named module is replaced by a wrapper and every hook is
   recorded in the editor's :class:`~minedit.patch.Patcher`, so ``editor.restore()`` is the one
   teardown (modules back bit for bit, hooks gone, the sequence tracker released);
2. at every prefill each feature hook fires; once all features are in, :meth:`Mixture.on_features`
   routes *all* layers at once (the gate sees the whole code: Li et al. 2024, Sec. 3.3), zeroes
   deferred rows and hands the weights to the wrappers for the rest of the sequence;
3. while an editor trains: ``with mixture.capture() as feats`` collects an edit's features from one
   forward pass, and ``with mixture.routed(feats) as routings`` routes them with gradients for one
   step. Training and inference therefore route by the same function of the same features
   (LEMoE's "routing consistency");
4. ``state_dict()`` / ``load_state_dict()``: tensors only, self-describing (each expert's kind is in
   its key), so a pool of mixed kinds and ranks, the routers, gates and features round-trip exactly.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..arch import module_dims
from ..patch import Patcher
from ..sequence import tracker_for
from .experts import expert_from_state
from .features import SequenceFeature
from .gates import Gate
from .layer import ExpertLayer, RoutingState
from .routers import Router, Routing

Features = Mapping[str, torch.Tensor]


class Mixture:
    """Wrappers, features, routers and gates of one mixture-of-experts model edit.

    ``features``: one feature (named ``"text"``) or a name -> feature mapping; routers read
    ``router_feature`` (default: the first), each gate its ``feature`` attribute (None: the first).
    """

    def __init__(self, model: nn.Module, features: "SequenceFeature | Mapping[str, SequenceFeature]",
                 routers: Sequence[Router], gates: Sequence[Gate] = (), router_feature: str | None = None):
        self.model = model
        self.features = dict(features) if isinstance(features, Mapping) else {"text": features}
        self.router_feature = router_feature or next(iter(self.features))
        self.routers = nn.ModuleList(routers)  # one per wrapped layer, same order as ``names``
        self.gates = nn.ModuleList(gates)
        self.names: list[str] = []
        self.wrappers: list[ExpertLayer] = []
        self.tracker = None
        self.state: RoutingState | None = None
        self.last: list[Routing] = []  # the routing of the latest prefill (inspection, tests)
        self.last_deferred: torch.Tensor | None = None  # (B,) bool of the latest prefill
        self._captured: dict[str, torch.Tensor] | None = None

    @property
    def feature(self) -> SequenceFeature:
        """The feature the routers read."""
        return self.features[self.router_feature]

    # --- structure -----------------------------------------------------------------------------
    def install(self, names: Sequence[str], patcher: Patcher) -> None:
        """Wrap each module in ``names`` and start routing; every change is recorded in ``patcher``."""
        if len(names) != len(self.routers):
            raise ValueError(f"{len(names)} modules but {len(self.routers)} routers")
        self.tracker = tracker_for(self.model)
        patcher.on_undo(self.tracker.release)
        self.state = RoutingState(self.tracker)
        for i, name in enumerate(names):
            d_in, d_out = module_dims(self.model, name)
            wrapper = ExpertLayer(self.model.get_submodule(name), self.state, i, d_in, d_out)
            patcher.swap(name, wrapper)
            self.names.append(name)
            self.wrappers.append(wrapper)
        device = self.model.get_input_embeddings().weight.device
        self.routers.to(device)
        self.gates.to(device)
        for feature in self.features.values():
            for handle in feature.attach(self.model, self.tracker, self._on_feature):
                patcher.hook(handle)
        patcher.on_undo(self.state.clear)

    def add_experts(self, layer: int, experts: Sequence[nn.Module],
                    generator: torch.Generator | None = None) -> list[int]:
        """Append ``experts`` to wrapped layer ``layer`` (and scores for them to its router).

        New experts start with ``requires_grad=False``: an editor switches on what one edit trains.
        """
        wrapper, router = self.wrappers[layer], self.routers[layer]
        new = [wrapper.add(expert.requires_grad_(False)) for expert in experts]
        if router.n_experts < len(wrapper.experts):
            router.grow(len(wrapper.experts) - router.n_experts, generator)
        return new

    def pop_experts(self, layer: int, n: int) -> None:
        """Remove the ``n`` newest experts of wrapped layer ``layer`` and their router scores (``shrink``)."""
        wrapper = self.wrappers[layer]
        wrapper.experts = nn.ModuleList(list(wrapper.experts)[: len(wrapper.experts) - n])
        self.routers[layer].shrink(n)

    def n_experts(self) -> list[int]:
        return [len(w.experts) for w in self.wrappers]

    # --- routing -------------------------------------------------------------------------------
    def _as_features(self, features: "Features | torch.Tensor") -> Features:
        return features if isinstance(features, Mapping) else {self.router_feature: features}

    def route(self, features: "Features | torch.Tensor") -> list[Routing]:
        """Every layer's routing of the features (B, d); differentiable w.r.t. the routers."""
        x = self._as_features(features)[self.router_feature]
        return [router(x) for router in self.routers]

    @staticmethod
    def code(routings: Sequence[Routing]) -> torch.Tensor | None:
        """(B, layers, k) chosen expert indices: each row's binary routing code (None for dense routers).
        Layers with fewer than the largest k are padded with -1 (no expert)."""
        if any(r.chosen is None for r in routings):
            return None
        k = max(r.chosen.shape[-1] for r in routings)
        return torch.stack([F.pad(r.chosen, (0, k - r.chosen.shape[-1]), value=-1) for r in routings], dim=1)

    def defer(self, features: "Features | torch.Tensor", routings: Sequence[Routing]) -> torch.Tensor:
        """(B,) bool: a router defers, or a gate does (ELDER's code memory, a similarity test, ...)."""
        features = self._as_features(features)
        defer = torch.stack([r.defer for r in routings]).any(0)
        code = self.code(routings)
        for gate in self.gates:
            feature = features[gate.feature or self.router_feature]
            defer = defer | gate.defer(feature, code).to(defer.device)
        return defer

    @contextmanager
    def capture(self) -> Iterator[dict[str, torch.Tensor]]:
        """``with mixture.capture() as feats: model(...)``: ``feats`` gets that prefill's features by name."""
        self._captured = captured = {}
        try:
            yield captured
        finally:
            self._captured = None

    @contextmanager
    def routed(self, features: "Features | torch.Tensor") -> Iterator[list[Routing]]:
        """Route ``features`` with gradients and apply the weights to every forward pass in the block."""
        routings = self.route(features)
        self.state.weights = {i: r.weights for i, r in enumerate(routings)}
        try:
            yield routings
        finally:
            self.state.clear()

    @torch.no_grad()
    def remember(self, features: "Features | torch.Tensor") -> torch.Tensor | None:
        """After an edit: add the edit's features (1, d) and its routing code to every gate; returns the code."""
        features = self._as_features(features)
        code = self.code(self.route(features))
        code = None if code is None else code[0]  # (layers, k)
        for gate in self.gates:
            gate.add(features[gate.feature or self.router_feature][0], code)
        return code

    def _on_feature(self, value: torch.Tensor) -> None:
        if all(f.value is not None for f in self.features.values()):
            self.on_features({name: f.value for name, f in self.features.items()})

    @torch.no_grad()
    def on_features(self, features: Features) -> None:
        """Called at every prefill once all features are in: route, gate, hand the weights to the wrappers."""
        if self._captured is not None:
            self._captured.update({name: v.clone() for name, v in features.items()})
        routings = self.route(features)
        deferred = self.defer(features, routings)
        keep = (~deferred).to(routings[0].weights.dtype)[:, None]  # (B, 1)
        self.last, self.last_deferred = routings, deferred
        self.state.weights = {i: r.weights * keep for i, r in enumerate(routings)}

    # --- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every expert (key ``layers.i.experts.e.KIND.param``), frozen flags, routers, gates, features."""
        out: dict[str, torch.Tensor] = {}
        for i, wrapper in enumerate(self.wrappers):
            for e, expert in enumerate(wrapper.experts):
                for key, value in expert.state_dict().items():
                    out[f"layers.{i}.experts.{e}.{expert.kind}.{key}"] = value
            out[f"layers.{i}.frozen"] = torch.tensor([bool(x.frozen) for x in wrapper.experts], dtype=torch.bool)
        for group, modules in (("routers", self.routers), ("gates", self.gates),
                               ("features", self.features.values())):
            for j, module in enumerate(modules):
                out.update({f"{group}.{j}.{k}": v for k, v in module.state_dict().items()})
        return out

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Rebuild every expert pool, router, gate and feature from :meth:`state_dict` (installed first)."""
        for i, wrapper in enumerate(self.wrappers):
            frozen = tensors[f"layers.{i}.frozen"].tolist()
            experts = []
            for e in range(len(frozen)):
                prefix = f"layers.{i}.experts.{e}."
                own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
                kind = next(iter(own)).split(".")[0]
                expert = expert_from_state(kind, {k[len(kind) + 1:]: v for k, v in own.items()})
                expert.freeze() if frozen[e] else expert.requires_grad_(False)
                experts.append(expert)
            wrapper.experts = nn.ModuleList()
            for expert in experts:
                wrapper.add(expert)
        for group, modules in (("routers", self.routers), ("gates", self.gates),
                               ("features", self.features.values())):
            for j, module in enumerate(modules):
                prefix = f"{group}.{j}."
                load_resized(module, {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})


def load_resized(module: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """``module.load_state_dict(state)`` for modules that grow (routers, gates): each parameter or
    buffer takes the saved tensor's shape, keeping its device (and, for parameters, dtype and
    ``requires_grad``). Keys must match exactly."""
    own = dict(module.state_dict())
    if set(own) != set(state):
        raise ValueError(f"{type(module).__name__}: saved keys {sorted(state)} do not match {sorted(own)}")
    for name, value in state.items():
        owner_name, _, attr = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        current = getattr(owner, attr)
        if isinstance(current, nn.Parameter):
            setattr(owner, attr, nn.Parameter(value.to(current.device, current.dtype).clone(), current.requires_grad))
        else:
            owner.register_buffer(attr, value.to(current.device).clone())
