"""Probabilistic Task Locator (PTL): which task's router should serve this input? (LLaVA-CMoE, 2025, Sec. 3.3)

Each task keeps its own router (the *low-level* routing among experts) and a small variational
auto-encoder fitted to a frozen sequence feature ``x`` of that task's training inputs (the *high-level*
routing among tasks). At inference every task's VAE reconstructs ``x``; a task whose inputs look like
``x`` reconstructs it well. Raw errors are not comparable across VAEs (one task's inputs are simply
more varied than another's), so each error is z-scored by the errors that VAE made on its own training
inputs, and the task with the lowest score wins:

    e_t(x) = ||x~ - D_t(mu_t(x~))||^2 / d,   x~ = (x - m_t) / s_t      (standardised by task t's inputs)
    z_t(x) = (e_t(x) - mean_t) / std_t,      task(x) = argmin_t z_t(x)

The VAE is trained with the usual ELBO (reconstruction + ``beta`` * KL to N(0, I)); at inference its
encoder's mean is decoded (no sampling), so the locator is deterministic.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..moe.routers import Routing, TopKRouter


@dataclass(frozen=True)
class LocatorConfig:
    hidden: int = 16  # a narrow VAE: 2 x 576 x 16 weights (~19k parameters) per task, a fraction of one expert
    latent: int = 4  # a task's inputs differ in few directions (the scene); 4 keeps the bottleneck tight
    beta: float = 0.01  # a light KL: the VAE must reconstruct its own task well, not match the prior
    steps: int = 600  # full-batch Adam on a few hundred cached features: well under a second per task
    lr: float = 3e-3


class TaskVAE(nn.Module):
    """One task's VAE on a standardised frozen feature (d,): d -> hidden -> (mu, logvar) in latent -> d."""

    def __init__(self, d: int, hidden: int, latent: int, generator: torch.Generator | None = None):
        super().__init__()
        self.encoder = nn.Linear(d, hidden)
        self.mu, self.logvar = nn.Linear(hidden, latent), nn.Linear(hidden, latent)
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.Tanh(), nn.Linear(hidden, d))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                bound = module.in_features ** -0.5
                nn.init.uniform_(module.weight, -bound, bound, generator=generator)
                nn.init.zeros_(module.bias)
        self.register_buffer("shift", torch.zeros(d))  # m_t: the task's mean input
        self.register_buffer("scale", torch.ones(d))  # s_t: its per-dimension spread
        self.register_buffer("err_mean", torch.zeros(()))  # mean_t, std_t of its training errors
        self.register_buffer("err_std", torch.ones(()))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.encoder((x - self.shift) / self.scale))
        return self.mu(h), self.logvar(h)

    def error(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) mean squared reconstruction error of standardised ``x`` (B, d), decoding the mean."""
        mu, _ = self.encode(x)
        return ((self.decoder(mu) - (x - self.shift) / self.scale) ** 2).mean(-1)

    def fit(self, x: torch.Tensor, cfg: LocatorConfig, generator: torch.Generator | None = None) -> list[float]:
        """Fit to one task's features (N, d): standardise, ELBO by full-batch Adam, then the error statistics."""
        self.shift.copy_(x.mean(0))
        self.scale.copy_(x.std(0).clamp_min(1e-3 * x.std(0).mean().clamp_min(1e-6)))
        opt = torch.optim.Adam(self.parameters(), lr=cfg.lr)
        target = (x - self.shift) / self.scale
        losses = []
        for _ in range(cfg.steps):
            mu, logvar = self.encode(x)
            z = mu + torch.randn(mu.shape, generator=generator) * (0.5 * logvar).exp()
            recon = F.mse_loss(self.decoder(z), target)
            kl = -0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum(-1).mean()
            loss = recon + cfg.beta * kl
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(recon.item())
        with torch.no_grad():
            err = self.error(x)
            self.err_mean.copy_(err.mean())
            self.err_std.copy_(err.std().clamp_min(1e-6))
        self.requires_grad_(False)
        return losses


class ProbabilisticTaskLocator(nn.Module):
    """One :class:`TaskVAE` per task seen so far; :meth:`locate` picks the task whose VAE fits best."""

    def __init__(self, d: int, cfg: LocatorConfig = LocatorConfig()):
        super().__init__()
        self.d, self.cfg = d, cfg
        self.vaes = nn.ModuleList()

    @property
    def n_tasks(self) -> int:
        return len(self.vaes)

    def add_task(self, features: torch.Tensor, generator: torch.Generator | None = None) -> TaskVAE:
        """Fit a new task's VAE on its training features (N, d) (the other tasks' VAEs are untouched)."""
        vae = TaskVAE(self.d, self.cfg.hidden, self.cfg.latent, generator)
        vae.fit(features.float(), self.cfg, generator)
        self.vaes.append(vae)
        return vae

    @torch.no_grad()
    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """(B, T) z-scored reconstruction errors ``z_t(x)``: lower fits better."""
        x = features.float()
        return torch.stack([(v.error(x) - v.err_mean) / v.err_std for v in self.vaes], dim=-1)

    def locate(self, features: torch.Tensor) -> torch.Tensor:
        """(B,) the index of the best-fitting task for each row."""
        if not self.vaes:
            raise RuntimeError("no task learnt yet")
        return self.scores(features).argmin(-1)

    def load_tasks(self, n: int) -> None:
        """Make room for ``n`` tasks' VAEs before ``load_state_dict``."""
        self.vaes = nn.ModuleList(TaskVAE(self.d, self.cfg.hidden, self.cfg.latent) for _ in range(n))

    def n_parameters_per_task(self) -> int:
        return sum(p.numel() for p in self.vaes[0].parameters()) if self.vaes else 0


class TaskRouters(nn.Module):
    """One layer's routers, one per task: per sequence, the routing of the task the locator names.

    The pool of experts is shared; task ``t``'s router scores the experts that existed while ``t`` was
    learnt (later experts get weight 0 from it), so an old task's routing never changes once its
    router is frozen. ``grow(n)`` (the mixture adds experts) widens only the newest task's router.
    The locator is shared by every layer's :class:`TaskRouters` and saved once, by the learner.
    """

    def __init__(self, d: int, k: int, locator: ProbabilisticTaskLocator):
        super().__init__()
        self.d, self.k = d, k
        self.routers = nn.ModuleList()
        self.register_buffer("pool", torch.zeros((), dtype=torch.long))  # experts in the layer
        object.__setattr__(self, "locator", locator)  # shared, not a submodule
        self.oracle: torch.Tensor | int | None = None  # task ids (B,), or one for every row, replacing the locator's

    @property
    def n_experts(self) -> int:
        return int(self.pool)

    def add_task(self, generator: torch.Generator | None = None) -> None:
        """A new task's router over the current pool (its rows drawn fresh)."""
        self.routers.append(TopKRouter(self.d, self.n_experts, self.k, generator=generator).to(self.pool.device))

    def grow(self, n: int, generator: torch.Generator | None = None) -> None:
        self.pool += n
        if len(self.routers):
            self.routers[-1].grow(n, generator)

    def shrink(self, n: int) -> None:
        self.pool -= n
        if len(self.routers):
            self.routers[-1].shrink(n)

    def forward(self, features: torch.Tensor) -> Routing:
        B, E = len(features), self.n_experts
        if self.oracle is None:
            tasks = self.locator.locate(features)  # (B,)
        else:
            tasks = torch.as_tensor(self.oracle, device=features.device).expand(B) if not torch.is_tensor(self.oracle) \
                or self.oracle.dim() == 0 else self.oracle
        weights = features.new_zeros(B, E)
        probs = features.new_zeros(B, E)
        k = min(self.k, E)
        chosen = torch.zeros(B, k, dtype=torch.long, device=features.device)
        for t in tasks.unique().tolist():
            rows = (tasks == t).nonzero().flatten()
            r = self.routers[t](features[rows])
            e = r.weights.shape[-1]
            weights = weights.index_put((rows[:, None], torch.arange(e)[None]), r.weights)
            probs = probs.index_put((rows[:, None], torch.arange(e)[None]), r.probs)
            chosen[rows, : r.chosen.shape[-1]] = r.chosen
        defer = torch.zeros(B, dtype=torch.bool, device=features.device)
        return Routing(weights, defer, probs, chosen)

    @staticmethod
    @contextmanager
    def forced(routers, tasks: "torch.Tensor | int | None"):
        """Inside the block every layer routes with the routers of ``tasks`` ((B,), or one task for every row;
        None: the locator's choice). Training a task uses its own routers: its VAE does not exist yet."""
        for r in routers:
            r.oracle = tasks
        try:
            yield
        finally:
            for r in routers:
                r.oracle = None

    def load_tasks(self, n: int) -> None:
        """Make room for ``n`` task routers before ``load_state_dict``."""
        self.routers = nn.ModuleList(TopKRouter(self.d, 0, self.k) for _ in range(n))
