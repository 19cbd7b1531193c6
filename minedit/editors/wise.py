"""WISE: a side memory beside one FFN value matrix, an activation router, knowledge shards merged by TIES.

Wang et al., "WISE: Rethinking the Knowledge Memory for Lifelong Model Editing of Large Language Models"
(NeurIPS 2024), Sec. 3. The *main memory* is the value matrix W (``mlp_out``: ``down_proj`` on Llama-like models)
of one late decoder layer and is never changed; the *side memory* W' starts as a copy of W and takes every
edit. minedit keeps W' as its difference D = W' - W, so that

    side output      x W'^T = x W^T + x D^T
    routing score    Delta(x) = || A(x) (W' - W)^T ||_2 = || A(x) D^T ||_2          (WISE Eq. 3)

with A(x) the value matrix's input (the FFN's activation) at the sequence's query position (the last prompt
token, :mod:`minedit.sequence`): the score is the size of the change the side memory would make there.

- Routing: a sequence goes through W' (from its query position on) if Delta(x) > eps, else through W, untouched.
  eps = ``eps_ratio`` * the smallest Delta(x_e) of the memory's edits (WISE's ``act_ratio``). The edits' A(x_e) are
  kept (d_ff floats each), so eps follows the memory when later edits or a merge move it.
- One edit: loss  -log p_W'(y_e | x_e) + L_a  with the margin loss (WISE Eq. 5)
      L_a = max(0, Delta(x_i) - alpha) + max(0, beta - Delta(x_e)) + max(0, gamma - (Delta(x_e) - Delta(x_i))),
  x_e the edit prompt, x_i irrelevant inputs: every token of ``irrelevant`` sentences drawn from the generic pool
  shipped in ``data_samples/generic_prompts.txt`` (never an edit's locality prompts: those are the test; never a
  sentence naming the edit's subject). ``full_margin=False`` keeps only the edit's hinge max(0, beta - Delta(x_e)).
- Knowledge sharding (WISE Eq. 6): each shard owns a random ``mask_ratio`` (rho) of D's input neurons (columns,
  seeded); an edit of a shard changes only those. A shard takes ``shard_edits`` edits, then the next one fills.
- How an edit changes D (minedit's, not WISE's plain masked SGD on D): D_new = D + V B^T on the shard's columns.
  B (c, n_targets) solves rows B = I for the edit's activations at its target positions, with the least response
  E|B^T a|^2 on the generic pool (ROME's covariance-whitened key, Meng et al. 2022) and, with ``protect``,
  orthogonal to the earlier edits' activations (AlphaEdit's null-space projection, Fang et al. ICLR 2025; at most
  half the columns' directions, the largest), so earlier edits' outputs stay as they were. V (d_out, n_targets),
  what the change adds at those positions, is trained by Adam on the loss above. With ``cancel``, the part of the
  memory's response the generic pool would see is then removed in closed form, in directions no edit uses.
  Why: SmolLM2's FFN activations at different prompts have cosine ~0.8, and masked gradient steps on D overwrote
  earlier edits (20 ZsRE-format edits: Rel 0.51; with protection 1.00).
- Limits measured on ``zsre_bench.json`` (retention, seed 0, T = 100). Defaults (no protection): Rel .43, Gen .25,
  Loc 1.00: the router keeps unrelated questions out (0-10% routed), but later edits overwrite earlier ones.
  ``protect`` (+ ``cancel``) keeps earlier edits (Rel 1.00 at T = 20) at a price that grows with T: a direction
  orthogonal to every earlier edit's activation needs a large B, the memory's norm grows (||D|| 250 -> 4,400)
  and every unrelated question scores above eps (Rel .28, Gen .04, Loc .02; without the merge, Rel .77, Loc .01;
  on all columns, ``mask_ratio=1``, Rel 1.00, Gen .25, Loc .47). The merge trims what each shard learnt (TIES
  keeps 53% of its entries): with protection, Rel .77 before the merge and .28 after.
- WISE-Merge (Eq. 7): once the round's ``shards`` (k) shards are full, D_merged += TIES(D_1 - D_merged, ...,
  D_k - D_merged) (:func:`ties_merge`); the next round's shards start from the merged memory.
- WISE-Retrieve (``retrieve=True``): full shards are kept apart, each with its own eps; a sequence goes to the
  memory with the highest score among those above their eps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..arch import default_edit_layer, layer_module_name, linear_dims, num_layers
from ..errors import ConfigError
from ..hooks import record
from ..infer import input_device, pad_id, right_pad
from ..paths import sample
from ..sequence import SequenceTracker, tracker_for
from ..training import UpperStack, make_edit_batch
from ..vision import text_tokenizer
from .base import Editor, EditorConfig

POOL_FILE = "generic_prompts.txt"


@dataclass(frozen=True)
class WiseConfig(EditorConfig):
    layer: int | None = None  # decoder layer whose value matrix gets the side memory; None: 2/3 of the depth
    mask_ratio: float = 0.2  # share of D's entries a shard may change (WISE's rho; its ablation's best)
    shards: int = 2  # k shards trained side by side per merge round (WISE's default k = 2)
    shard_edits: int = 50  # edits per shard before the next one fills (WISE: T / k per round: T = 100 here)
    density: float = 0.53  # TIES trim: each shard's delta keeps this share of its entries (EasyEdit's WISE)
    retrieve: bool = False  # WISE-Retrieve: keep full shards apart and route to the best one, never merge
    alpha: float = 5.0  # margin: irrelevant inputs' scores pushed below this (WISE's act_margin)
    beta: float = 20.0  # margin: the edit's score pushed above this
    gamma: float = 10.0  # margin: the edit's score at least this far above each irrelevant one
    eps_ratio: float = 0.9  # eps = this * the smallest edit score of a memory (0.5 routed 95% of unrelated questions)
    irrelevant: int = 8  # generic sentences drawn per edit for the margin loss (all their tokens)
    steps: int = 20  # max Adam steps per edit (8.5 on average over 20 ZsRE-format edits)
    lr: float = 0.5  # Adam lr on V, the change's output at the edit's positions (0.2 needed 30 steps)
    stop_loss: float = 0.05  # stop once every target token is right, CE is below this and the edit scores >= beta
    protect: bool = False  # on (with cancel), T = 100: Rel/Gen/Loc .28/.04/.02 against .43/.25/1.00 off (module doc)
    cancel: bool = False  # remove the generic-pool response in unused directions (with protect: no better, see above)
    full_margin: bool = True  # WISE's whole L_a; False: the edit's hinge only (T = 100: Rel .79 Loc .27 vs .32 / .00)


def activation_score(acts: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """WISE's routing score ||A(x) (W' - W)^T||_2 of activations (..., d_in) for D = W' - W (d_out, d_in)."""
    return torch.linalg.vector_norm(acts @ delta.mT, dim=-1)


def margin_loss(edit: torch.Tensor, irrelevant: torch.Tensor, alpha: float, beta: float, gamma: float) -> torch.Tensor:
    """WISE's routing loss L_a for the edit's score and the irrelevant inputs' scores (hinges, averaged)."""
    return (F.relu(irrelevant - alpha).mean() + F.relu(beta - edit).mean()
            + F.relu(gamma - (edit.unsqueeze(-1) - irrelevant)).mean())


def ties_merge(deltas: torch.Tensor, density: float) -> torch.Tensor:
    """TIES-Merging (Yadav et al., NeurIPS 2023) of task vectors ``deltas`` (k, ...) into one (...):
    trim each to its ``int(density * numel)`` largest entries by magnitude, elect each entry's sign as the sign
    of the trimmed values' sum (a zero sum counts as +), and average only the non-zero values of that sign."""
    flat = deltas.reshape(len(deltas), -1)
    keep = int(density * flat.shape[1])
    if keep < flat.shape[1]:
        top = flat.abs().topk(keep, dim=1).indices
        flat = torch.zeros_like(flat).scatter_(1, top, flat.gather(1, top))
    elected = torch.where(flat.sum(0) >= 0, 1.0, -1.0).to(flat.dtype)
    agree = torch.sign(flat) == elected  # zeros never agree: they take no part in the mean
    merged = (flat * agree).sum(0) / agree.sum(0).clamp(min=1)
    return merged.reshape(deltas.shape[1:])


def shard_mask(n: int, ratio: float, seed: int) -> torch.Tensor:
    """A bool mask over ``n`` input neurons with exactly ``round(ratio * n)`` True at random places from ``seed``."""
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: round(ratio * n)]] = True
    return mask


class SideMemory(nn.Module):
    """Wraps the value matrix: rows whose query scores above a memory's eps get that memory's D from the query on."""

    def __init__(self, base: nn.Module, tracker: SequenceTracker, d_in: int, d_out: int):
        super().__init__()
        self.base_layer, self.tracker = base, tracker
        self.register_buffer("deltas", torch.zeros(0, d_out, d_in))  # (M, d_out, d_in) D_j = W'_j - W
        self.register_buffer("eps", torch.zeros(0))  # (M,) threshold of each memory (inf: holds no edit)
        self.live: torch.Tensor | None = None  # while training: this D applies to every row
        self._choice: torch.Tensor | None = None  # (B,) memory of each row of the current sequence, -1 = main

    def route(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) the memory with the highest score among those above their eps, or -1 (main memory)."""
        B, L = x.shape[:2]
        if len(self.deltas) == 0:
            return torch.full((B,), -1, dtype=torch.long, device=x.device)
        query = x[torch.arange(B, device=x.device), self.tracker.query_index(L, B, x.device)]  # (B, d_in)
        scores = activation_score(query.to(self.deltas.dtype)[:, None, None], self.deltas).squeeze(-1)  # (B, M)
        best, index = torch.where(scores > self.eps, scores, torch.full_like(scores, -1.0)).max(-1)
        return torch.where(best >= 0, index, torch.full_like(index, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)  # (B, L, d_out)
        if self.live is None and len(self.deltas) == 0:
            return out
        B, L = x.shape[:2]
        where = self.tracker.applies_from(L, B, x.device).unsqueeze(-1)  # (B, L, 1)
        if self.live is not None:
            return torch.where(where, out + (x.to(self.live.dtype) @ self.live.T).to(out.dtype), out)
        if self.tracker.new_sequence or self._choice is None or len(self._choice) != B:
            self._choice = self.route(x.detach())
        choice = self._choice
        if (choice < 0).all():
            return out
        change = torch.zeros_like(out)  # (B, L, d_out): x D_j^T for the rows routed to memory j
        for j in choice[choice >= 0].unique().tolist():
            rows = (choice == j).nonzero().squeeze(1)
            change[rows] = (x[rows].to(self.deltas.dtype) @ self.deltas[j].T).to(out.dtype)
        return torch.where(where & (choice >= 0)[:, None, None], out + change, out)


class WiseEditor(Editor):
    """WISE (Wang et al. 2024), registered as ``wise``."""

    name = "wise"
    config_class = WiseConfig

    def __init__(self, model, tokenizer, config: WiseConfig | None = None):
        super().__init__(model, tokenizer, config)
        c = self.config
        if not 0 < c.mask_ratio <= 1 or not 0 < c.density <= 1:
            raise ConfigError(f"mask_ratio and density must be in (0, 1], got {c.mask_ratio} and {c.density}")
        if c.shards < 1 or c.shard_edits < 1:
            raise ConfigError(f"shards and shard_edits must be at least 1, got {c.shards} and {c.shard_edits}")
        self.layer = c.layer % num_layers(model) if c.layer is not None else default_edit_layer(model)
        self.module_name = layer_module_name(model, self.layer, "mlp_out")
        self._pool: list[tuple[str, list[int]]] | None = None  # the generic pool (lower-cased text, token ids)
        self._reset()

    def _reset(self) -> None:
        self.memory: SideMemory | None = None
        self._pool_acts: dict[int, torch.Tensor] = {}  # pool sentence -> A(x) at its tokens (L, d_in), kept
        self._moment: torch.Tensor | None = None  # E[A A^T] over the pool (see _second_moment)
        self.keys = torch.zeros(0)  # (N, d_in) every edit's A(x_e) at its query position
        self.owner: list[int] = []  # the memory each edit lives in
        self.anchors: list[torch.Tensor] = []  # per edit: A(x) (n_t, d_in) where its target tokens are predicted
        self._masks: tuple[int, torch.Tensor | None] = (-1, None)  # (shard number, its gradient mask)

    def _install(self) -> SideMemory:
        if self.memory is None:
            base = self.model.get_submodule(self.module_name)
            d_in, d_out = linear_dims(base)
            tracker = tracker_for(self.model)
            self.patches.on_undo(tracker.release)
            self.memory = SideMemory(base, tracker, d_in, d_out).to(base.weight.device)
            self._swap_module(self.module_name, self.memory)
            if not self.config.retrieve:  # memory 0 is the merged one: empty (never routed to) until a merge
                self._add_memory(self.memory.deltas.new_zeros(d_out, d_in))
        return self.memory

    def _add_memory(self, delta: torch.Tensor) -> None:
        mem = self.memory
        mem.deltas = torch.cat([mem.deltas, delta[None]])
        mem.eps = torch.cat([mem.eps, mem.eps.new_full((1,), math.inf)])

    def _shard_of(self, n: int) -> int:
        """The memory that edit number ``n`` trains; a shard's first edit opens it. WISE-Merge: from the newest
        memory (the merged one, or the round's previous shard), so that a shard's edits are trained, and protected,
        on top of every earlier edit they will be merged with; WISE-Retrieve: from W, as a memory of its own."""
        c, mem = self.config, self.memory
        if n % c.shard_edits == 0:
            self._add_memory(mem.deltas.new_zeros(mem.deltas.shape[1:]) if c.retrieve else mem.deltas[-1].clone())
        return n // c.shard_edits if c.retrieve else 1 + (n // c.shard_edits) % c.shards

    def _mask(self, n: int) -> torch.Tensor:
        """The gradient mask of edit ``n``'s shard, seeded by (seed, shard number)."""
        shard = n // self.config.shard_edits
        if self._masks[0] != shard:  # kept while the shard fills
            mask = shard_mask(self.memory.deltas.shape[2], self.config.mask_ratio,
                              self.config.seed * 1_000_003 + 500_009 + shard)
            self._masks = (shard, mask.to(self.memory.deltas.device))
        return self._masks[1]

    def _irrelevant(self, generator: torch.Generator, subject: str | None = None, every: bool = False) -> torch.Tensor:
        """(P, d_in): A(x) at every token of ``config.irrelevant`` sentences drawn from the generic pool (``every``:
        all of them); a sentence that names the edit's ``subject`` is about the edit, not irrelevant: never drawn."""
        if self._pool is None:
            tok = text_tokenizer(self.tokenizer)
            lines = [line.strip() for line in sample(POOL_FILE).read_text(encoding="utf-8").splitlines()]
            self._pool = [(line.lower(), tok(line).input_ids) for line in lines if line]
        allowed = [i for i, (text, _) in enumerate(self._pool) if not subject or subject.lower() not in text]
        pick = [allowed[i] for i in torch.randperm(len(allowed), generator=generator).tolist()]
        pick = pick if every else pick[: self.config.irrelevant]
        todo = [i for i in pick if i not in self._pool_acts]
        if todo:  # once per sentence (the side memory's input does not depend on the side memory)
            ids, mask = right_pad([self._pool[i][1] for i in todo], pad_id(self.tokenizer))
            device = input_device(self.model)
            with torch.no_grad(), record(self.model, [self.module_name], point="input") as got:
                self.model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
            for row, i in enumerate(todo):
                self._pool_acts[i] = got[self.module_name][row, : int(mask[row].sum())].float()
        return torch.cat([self._pool_acts[i] for i in pick]).to(self.memory.deltas.device)

    def _complement(self, index: int, cols: torch.Tensor, n_new: int, extra: torch.Tensor | None = None) -> torch.Tensor:
        """(c, m) orthonormal basis, on the shard's columns ``cols``, of what is orthogonal to the earlier edits'
        activations: every edit whose memory this one will share (all of them under WISE-Merge, the same memory
        under WISE-Retrieve). At most half of the columns' directions are protected (the largest singular ones):
        a new edit whose activations barely leave the protected span would need a huge change (measured: protecting
        all but a few directions, 100 edits on 307 columns blew the memory's scores up to ~10x its edits')."""
        eye = torch.eye(len(cols), device=self.memory.deltas.device)
        old = [a for a, o in zip(self.anchors, self.owner) if not self.config.retrieve or o == index]
        if not self.config.protect or not old:
            old = []
        keep = 0
        if old:
            U, S, _ = torch.linalg.svd(torch.cat(old)[:, cols].T)
            keep = min(int((S > 1e-4 * S[0]).sum()), len(cols) // 2)
            basis = U[:, keep:]
        else:
            basis = eye
        if extra is not None:  # also orthogonal to these rows (an edit's own activations)
            e = extra[:, cols] @ basis
            _, _, Vh = torch.linalg.svd(e, full_matrices=True)
            basis = basis @ Vh[len(extra):].T
        return basis

    def _second_moment(self) -> torch.Tensor:
        """(d_in, d_in) E[A(x) A(x)^T] over every token of the generic pool, computed once."""
        if self._moment is None:
            self._irrelevant(torch.Generator().manual_seed(0), every=True)
            acts = torch.cat(list(self._pool_acts.values()))
            self._moment = acts.T @ acts / len(acts)
        return self._moment

    def _directions(self, rows: torch.Tensor, cols: torch.Tensor, index: int) -> torch.Tensor:
        """(c, n_t) B with rows[:, cols] B = I, orthogonal to protected activations, and of least response
        E[|B^T a|^2] on generic activations a (ROME's covariance-whitened key, Meng et al. 2022, Eq. 2)."""
        Z = self._complement(index, cols, len(rows))  # (c, m)
        C = self._second_moment()[cols][:, cols].to(Z)
        G = Z.T @ C @ Z
        G = G + 1e-3 * G.diagonal().mean() * torch.eye(len(G), device=G.device)
        K = rows[:, cols] @ Z  # (n_t, m)
        GK = torch.linalg.solve(G, K.T)  # (m, n_t)
        return Z @ GK @ torch.linalg.inv(K @ GK)

    def _edit_one(self, request) -> dict:
        mem, c = self._install(), self.config
        n = self.n_edits
        index, cols = self._shard_of(n), self._mask(n).nonzero().squeeze(1)
        batch = make_edit_batch(self.tokenizer, [request.prompt], [request.target], [request.image])
        with mem.tracker.teacher_forcing(batch.key_positions), record(self.model, [self.module_name],
                                                                       point="input") as got:
            stack = UpperStack(self.model, self.layer, batch, from_mlp=True, head=self.frozen_head())
        q, n_t = int(batch.key_positions[0]), int((batch.labels[0] != -100).sum())
        rows = got[self.module_name][0, q: q + n_t].to(mem.deltas)  # (n_t, d_in) A(x) where targets are predicted
        key = rows[0]  # A(x_e) at the query position
        irrelevant = self._irrelevant(self._generator(), request.subject)  # (P, d_in)

        # D's change lives on the shard's columns, orthogonal to earlier edits' activations there, and is
        # parametrised by what it adds at this edit's own positions: change = V B^T with rows[:, cols] B = I
        B = self._directions(rows, cols, index)  # (c, n_t)
        start = mem.deltas[index]
        V = torch.zeros(start.shape[0], n_t, device=start.device, requires_grad=True)
        opt = torch.optim.Adam([V], lr=c.lr)
        loss_value, acc, step, la = float("nan"), 0.0, 0, float("nan")
        try:
            for step in range(1, c.steps + 1):
                live = start.index_add(1, cols, V @ B.T)
                mem.live = live
                with mem.tracker.teacher_forcing(batch.key_positions):
                    ce, acc = stack.target_loss(batch.labels)
                score = activation_score(key, live)
                margin = margin_loss(score, activation_score(irrelevant, live), c.alpha, c.beta, c.gamma)
                loss = ce + (margin if c.full_margin else F.relu(c.beta - score))
                loss_value, la = loss.item(), margin.item()
                if acc >= 1.0 and ce.item() <= c.stop_loss and score.item() >= c.beta:
                    step -= 1
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        finally:
            mem.live = None
        with torch.no_grad():
            new = start.index_add(1, cols, V @ B.T)
            if c.cancel:  # least E||D a||^2 over the generic pool, in directions no edit uses (closed form)
                Z = self._complement(index, cols, n_t, extra=rows)  # (c, m)
                S = self._second_moment().to(Z)
                G = Z.T @ S[cols][:, cols] @ Z
                G = G + 1e-3 * G.diagonal().mean() * torch.eye(len(G), device=G.device)
                M = -torch.linalg.solve(G, (new @ S[:, cols] @ Z).T).T  # (d_out, m)
                new = new.index_add(1, cols, M @ Z.T)
            mem.deltas[index] = new
        self.keys = torch.cat([self.keys.to(key).view(-1, len(key)), key[None]])
        self.anchors.append(rows)
        self.owner.append(index)
        merged = not c.retrieve and index == c.shards and (n + 1) % c.shard_edits == 0
        if merged:
            self._merge()
        self._refresh_eps()
        j = self.owner[-1]
        return {"steps": step, "loss": loss_value, "margin_loss": la, "train_acc": acc, "memory": index,
                "merged": merged, "score": activation_score(key, mem.deltas[j]).item(), "eps": mem.eps[j].item()}

    @torch.no_grad()
    def _merge(self) -> None:
        """WISE-Merge: the round's shards into memory 0 by TIES; their edits now live there."""
        mem = self.memory
        base = mem.deltas[0]
        mem.deltas = (base + ties_merge(mem.deltas[1:] - base, self.config.density))[None].contiguous()
        mem.eps = mem.eps[:1]
        self.owner = [0] * len(self.owner)

    @torch.no_grad()
    def _refresh_eps(self) -> None:
        """eps of each memory: ``eps_ratio`` times the smallest score of the edits it holds (inf if none)."""
        mem = self.memory
        owner = torch.tensor(self.owner, device=mem.deltas.device)
        eps = torch.full((len(mem.deltas),), math.inf, device=mem.deltas.device)
        for j in owner.unique().tolist():
            eps[j] = self.config.eps_ratio * activation_score(self.keys[owner == j], mem.deltas[j]).min()
        mem.eps = eps

    def state_tensors(self) -> dict[str, torch.Tensor]:
        if self.memory is None:
            return {}
        return {"deltas": self.memory.deltas, "eps": self.memory.eps, "keys": self.keys,
                "owner": torch.tensor(self.owner, dtype=torch.long),
                "anchors": torch.cat(self.anchors) if self.anchors else self.keys.new_zeros(0, self.keys.shape[-1]),
                "anchor_rows": torch.tensor([len(a) for a in self.anchors], dtype=torch.long)}

    def state_meta(self) -> dict:
        return {"layer": self.layer, "module": self.module_name}

    def load_state(self, tensors, meta) -> None:
        if not tensors:
            return
        if meta.get("module", self.module_name) != self.module_name:
            raise ValueError(f"saved side memory is for {meta['module']!r}, this editor uses {self.module_name!r}")
        mem = self._install()
        device = mem.base_layer.weight.device
        mem.deltas, mem.eps = tensors["deltas"].to(device), tensors["eps"].to(device)
        self.keys, self.owner = tensors["keys"].to(device), tensors["owner"].tolist()
        self.anchors = list(tensors["anchors"].to(device).split(tensors["anchor_rows"].tolist()))
