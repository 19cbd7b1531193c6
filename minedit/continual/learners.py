"""Continual learners on a (vision-)language model: what each trains per task, and what it keeps.

Every learner is a :class:`~minedit.moe.mixture.Mixture` on the MLP output projections of the top
``ContinualConfig.layers`` decoder layers, so every learner trains the same kind of parameters in the same
places and the comparison is about *how* they are organised across tasks (LLaVA-CMoE, 2025, Sec. 4):

- ``seq-lora``: one LoRA per layer (a pool of one expert), trained on each task in turn. New tasks
  overwrite old ones: the forgetting everything else is measured against.
- ``joint``: the same LoRA trained on all tasks at once, shuffled together. Continual learning forbids
  this (it sees every task's data at the end); it is the upper bound.
- ``seq-moe-lora``: LLaVA-CMoE without its task locator: PGKE grows experts per task (:mod:`.probe`),
  old experts are frozen, but one router per layer serves every task and keeps training, so old tasks
  are routed to new experts.
- ``llava-cmoe``: PGKE plus the Probabilistic Task Locator (:mod:`.locator`): each task keeps its own
  router per layer, frozen after its task, and the task's VAE picks which router serves an input.
  ``oracle=True`` at prediction uses the true task's router (the reviewers' upper bound on the locator).

Training and prediction run on cached batches (:class:`CachedBatch`, made by :mod:`.runner`): the frozen
layers below the mixture compute the same thing for every learner and every step, so they run once per
record (:class:`~minedit.training.UpperStack`); the routing feature (routers and task locator) is the mean over
the prompt's text tokens of the hidden state entering the lowest mixture layer (``TextHidden(layer=first - 1)``).
"""
from __future__ import annotations

import copy
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn

from ..arch import layer_module_name, num_layers
from ..moe.experts import ExpertSpec
from ..moe.features import TextHidden
from ..moe.mixture import Mixture
from ..moe.registry import Registry
from ..moe.routers import TopKRouter
from ..patch import Patcher
from ..training import EditBatch, UpperStack
from .locator import LocatorConfig, ProbabilisticTaskLocator, TaskRouters
from .probe import expansion_layers, load_balancing_loss, most_used

log = logging.getLogger(__name__)
LEARNERS: Registry["ContinualLearner"] = Registry("continual learner")


@dataclass(frozen=True)
class ContinualConfig:
    layers: int = 6  # the top 6 decoder layers take experts: the frozen 24 below run once per record (cached)
    rank: int = 8  # an expert is a rank-8 LoRA on one layer's MLP output projection
    alpha: float = 16.0  # LoRA scale alpha / r = 2, as minedit's other LoRA parts
    lora_rank: int = 16  # the LoRA baselines' single adapter: as many parameters as two experts per layer
    k: int = 2  # experts per sequence inside a task's router (MoE-LLaVA's top-2)
    steps: int = 100  # optimiser steps per task (batches of 16: 5 passes over 320 records); the run fits 30 min
    lr: float = 5e-3  # Adam; a few hundred steps must learn a task (measured: 1e-3 learns too slowly)
    initial_experts: int = 1  # every layer's pool for the first task (nothing to probe against yet); 2 cost 1.02x
    # one expert per layer per task on average over six tasks, 1 keeps the growth below it
    new_experts: int = 1  # experts a layer gets when PGKE expands it
    expand_alpha: float = 0.0  # PGKE's threshold mean - alpha * std: 0 grows the layers used above average
    probe_fraction: float = 0.1  # PGKE probes train on about 10% of a task's data (the paper's figure)
    probe_steps: int = 20  # brief: the probe only has to show which layers reach for a new expert
    lb_weight: float = 0.1  # load-balancing loss weight in the probe (Switch Transformer's 0.01 x 10: few experts)
    seed: int = 0
    locator: LocatorConfig = LocatorConfig()


@dataclass
class CachedBatch:
    """One batch of a task's records with everything below the mixture computed once."""

    stack: UpperStack
    batch: EditBatch
    feature: torch.Tensor  # (B, d) the routing feature
    task: int  # index of the task in the run


def answered(hidden: torch.Tensor, head: nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """(B,) bool: final hidden states (B, L, d) predict every labelled token of their row (greedy).

    The LM head runs only where an answer token is predicted (a vocabulary-sized matmul at every position
    would cost more than the six decoder layers)."""
    gold = labels[:, 1:]
    keep = gold != -100  # (B, L-1)
    hit = torch.ones_like(gold, dtype=torch.bool)
    hit[keep] = head(hidden[:, :-1][keep]).argmax(-1) == gold[keep]
    return hit.all(-1)


class ContinualLearner:
    """Base: a mixture on the top layers; :meth:`learn` one task, :meth:`correct` on a cached batch."""

    name = "base"
    joint = False  # True: learn() is called once with every task's batches

    def __init__(self, model: nn.Module, cfg: ContinualConfig = ContinualConfig()):
        self.model, self.cfg = model, cfg
        n = num_layers(model)
        if not 0 < cfg.layers < n:
            raise ValueError(f"layers={cfg.layers}: the model has {n} decoder layers")
        self.first = n - cfg.layers
        self.names = [layer_module_name(model, layer, "mlp_out") for layer in range(self.first, n)]
        self.patcher = Patcher(model)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.d = model.get_input_embeddings().weight.shape[1]
        self.mixture = Mixture(model, TextHidden(layer=self.first - 1), self.make_routers())
        self.mixture.install(self.names, self.patcher)
        self.tasks_learnt = 0

    def make_routers(self) -> list[nn.Module]:
        return [TopKRouter(self.d, 0, self.cfg.k, generator=self.generator) for _ in self.names]

    def restore(self) -> None:
        """Undo everything: the model is bit for bit what it was."""
        self.patcher.undo()

    def n_parameters(self) -> int:
        """Every parameter the learner has added to the model (experts, routers, locator)."""
        return sum(p.numel() for w in self.mixture.wrappers for p in w.experts.parameters()) + \
            sum(p.numel() for p in self.mixture.routers.parameters())

    def expert_parameters(self) -> int:
        """Parameters of one expert in every layer: what naive expansion adds per task."""
        spec = ExpertSpec(rank=self.cfg.rank, alpha=self.cfg.alpha)
        return sum(sum(p.numel() for p in spec.build(w.d_in, w.d_out).parameters()) for w in self.mixture.wrappers)

    # --- training and prediction on cached batches ----------------------------------------------
    def step_loss(self, cb: CachedBatch, extra=None) -> torch.Tensor:
        with self.mixture.tracker.teacher_forcing(cb.batch.key_positions), self.mixture.routed(cb.feature) as routings:
            loss, _ = cb.stack.target_loss(cb.batch.labels)
        return loss if extra is None else loss + extra(routings)

    def train(self, params: Sequence[torch.Tensor], batches: Sequence[CachedBatch], steps: int, extra=None) -> float:
        """Adam on ``params`` over ``batches`` (a fresh shuffled pass each epoch); returns the last loss."""
        params = [p for p in params]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=self.cfg.lr)
        order: list[int] = []
        loss = torch.tensor(float("nan"))
        try:
            for _ in range(steps):
                if not order:
                    order = torch.randperm(len(batches), generator=self.generator).tolist()
                loss = self.step_loss(batches[order.pop()], extra)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        finally:
            for p in params:
                p.requires_grad_(False)
                p.grad = None
        return float(loss.detach())

    @torch.no_grad()
    def correct(self, cb: CachedBatch, oracle: bool = False) -> torch.Tensor:
        """(B,) bool: every answer token predicted (greedy) under teacher forcing."""
        with self.mixture.tracker.teacher_forcing(cb.batch.key_positions), self.routing_for(cb, oracle):
            with self.mixture.routed(cb.feature):
                h = cb.stack.hidden_states()  # (B, L, d)
        return answered(h, self.mixture.model.get_output_embeddings(), cb.batch.labels)

    def routing_for(self, cb: CachedBatch, oracle: bool):
        """A context in which the mixture routes ``cb`` (LLaVA-CMoE: with the true task's routers if ``oracle``)."""
        return nullcontext()

    def learn(self, batches: Sequence[CachedBatch]) -> dict:
        raise NotImplementedError


@LEARNERS.register("seq-lora")
class SequentialLoRA(ContinualLearner):
    """One LoRA (a pool of one expert, weight 1) per layer, trained on every task in turn."""

    name = "seq-lora"

    def __init__(self, model, cfg=ContinualConfig()):
        super().__init__(model, cfg)
        spec = ExpertSpec(rank=cfg.lora_rank, alpha=cfg.alpha * cfg.lora_rank / cfg.rank)  # same alpha / r
        for i, w in enumerate(self.mixture.wrappers):
            self.mixture.add_experts(i, [spec.build(w.d_in, w.d_out, self.generator)], self.generator)

    def make_routers(self):
        return [TopKRouter(self.d, 0, 1, generator=self.generator) for _ in self.names]  # one expert: weight 1

    def n_parameters(self) -> int:
        return sum(p.numel() for w in self.mixture.wrappers for p in w.experts.parameters())

    def learn(self, batches):
        params = [p for w in self.mixture.wrappers for p in w.experts.parameters()]
        loss = self.train(params, batches, self.cfg.steps * (len({b.task for b in batches}) if self.joint else 1))
        self.tasks_learnt += 1
        return {"loss": loss}


@LEARNERS.register("joint")
class JointLoRA(SequentialLoRA):
    """The LoRA of ``seq-lora`` trained once on every task's data, shuffled together (the upper bound)."""

    name = "joint"
    joint = True


@LEARNERS.register("seq-moe-lora")
class SequentialMoELoRA(ContinualLearner):
    """PGKE expansion with frozen old experts, but one router per layer shared by (and trained on) every task."""

    name = "seq-moe-lora"

    def spec(self) -> ExpertSpec:
        return ExpertSpec(rank=self.cfg.rank, alpha=self.cfg.alpha)

    def begin_task(self) -> None:
        """Before a task's probe: LLaVA-CMoE gives the task its own routers here; this learner keeps one."""

    def task_router_params(self) -> list[torch.Tensor]:
        return list(self.mixture.routers.parameters())

    def probe(self, batches: Sequence[CachedBatch]) -> torch.Tensor:
        """PGKE: one probe expert per layer, trained briefly with the load-balancing loss; (L,) its usage."""
        n_old = self.mixture.n_experts()
        for i, w in enumerate(self.mixture.wrappers):
            self.mixture.add_experts(i, [self.spec().build(w.d_in, w.d_out, self.generator)], self.generator)
        probes = [p for w in self.mixture.wrappers for p in w.experts[-1].parameters()]
        n = max(1, round(len(batches) * self.cfg.probe_fraction))
        sample = [batches[j] for j in torch.randperm(len(batches), generator=self.generator)[:n].tolist()]
        lb = lambda routings: self.cfg.lb_weight * torch.stack([load_balancing_loss(r.probs) for r in routings]).mean()
        self.train(probes + self.task_router_params(), sample, self.cfg.probe_steps, extra=lb)
        with torch.no_grad():
            weights = [torch.cat([r.weights for r in self.mixture.route(cb.feature)[i:i + 1]])
                       for cb in sample for i in range(len(self.names))]
            per_layer = [torch.cat(weights[i::len(self.names)]) for i in range(len(self.names))]  # (N, E) each
        usage = torch.stack([w[:, -1].mean() for w in per_layer])
        self.source = [most_used(w, n_old[i]) for i, w in enumerate(per_layer)]
        for i in range(len(self.names)):
            self.mixture.pop_experts(i, 1)
        return usage

    def learn(self, batches):
        t0 = time.perf_counter()
        self.begin_task()
        with self.training_routes():
            grow, usage, loss = self._grow_and_train(batches)
        for w in self.mixture.wrappers:
            for expert in w.experts:
                expert.freeze()
        self.end_task(batches)
        self.tasks_learnt += 1
        return {"loss": loss, "grown": grow.tolist(), "probe_usage": None if usage is None else usage.tolist(),
                "experts": self.mixture.n_experts(), "seconds": time.perf_counter() - t0}

    def training_routes(self):
        """The routing context of a task's probe and training (LLaVA-CMoE: the new task's own routers)."""
        return nullcontext()

    def _grow_and_train(self, batches):
        if self.tasks_learnt == 0:
            grow = torch.ones(len(self.names), dtype=torch.bool)
            usage = None
        else:
            usage = self.probe(batches)
            grow = expansion_layers(usage, self.cfg.expand_alpha)
        new: list[torch.Tensor] = []
        for i, w in enumerate(self.mixture.wrappers):
            if not grow[i]:
                continue
            if self.tasks_learnt == 0:
                experts = [self.spec().build(w.d_in, w.d_out, self.generator) for _ in range(self.cfg.initial_experts)]
            else:  # copies of the layer's most-used old expert, trainable
                experts = [copy.deepcopy(w.experts[self.source[i]]) for _ in range(self.cfg.new_experts)]
                for e in experts:
                    e.frozen = False
            for e in self.mixture.add_experts(i, experts, self.generator):
                new += list(w.experts[e].parameters())
        loss = self.train(new + self.task_router_params(), batches, self.cfg.steps)
        return grow, usage, loss

    def end_task(self, batches) -> None:
        """After a task: LLaVA-CMoE fits the task's VAE and freezes its routers here."""


@LEARNERS.register("llava-cmoe")
class LlavaCMoE(SequentialMoELoRA):
    """PGKE + PTL: per-task routers per layer, frozen after their task; the task locator chooses among them."""

    name = "llava-cmoe"

    def __init__(self, model, cfg=ContinualConfig()):
        self.locator = ProbabilisticTaskLocator(model.get_input_embeddings().weight.shape[1], cfg.locator)
        super().__init__(model, cfg)

    def make_routers(self):
        return [TaskRouters(self.d, self.cfg.k, self.locator) for _ in self.names]

    def begin_task(self):
        for router in self.mixture.routers:
            router.add_task(self.generator)

    def task_router_params(self):
        return [p for router in self.mixture.routers for p in router.routers[-1].parameters()]

    def training_routes(self):
        return TaskRouters.forced(self.mixture.routers, self.tasks_learnt)

    def end_task(self, batches):
        self.locator.add_task(torch.cat([cb.feature for cb in batches]), self.generator)

    def n_parameters(self) -> int:
        return super().n_parameters() + sum(p.numel() for p in self.locator.parameters())

    def routing_for(self, cb, oracle):
        return TaskRouters.forced(self.mixture.routers, torch.full((len(cb.feature),), cb.task) if oracle else None)

    @torch.no_grad()
    def locate(self, cb: CachedBatch) -> torch.Tensor:
        return self.locator.locate(cb.feature)
