"""GRACE: a discrete key-value codebook at one layer, with a deferral radius.

Hartvigsen et al., "Aging with GRACE: Lifelong Model Editing with Discrete Key-Value Adaptors"
(NeurIPS 2023), Sec. 3. One Linear (here the MLP output projection of one decoder layer) is wrapped:

    h = codebook value v_i      if ||x_q - k_i||_2 <= r_i for the nearest key k_i
    h = W x                     otherwise (deferral: the layer is untouched)

where ``x_q`` is the layer input at the last prompt token. An edit adds, expands or splits keys:
- nearest key farther than its radius + eps (or no key yet): add a key with radius eps;
- nearer, same target: expand that key's radius to reach the query;
- nearer, conflicting target: split, both radii become half the distance, and add the key.
The chosen key's value is trained (Adam, lr 1.0, up to 100 steps) so the model emits the target.
The value replaces the layer output from the last prompt token onwards (see ``minedit.sequence``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..arch import default_edit_layer, layer_module_name, linear_dims
from ..hooks import record
from ..sequence import SequenceTracker, tracker_for
from ..training import UpperStack, make_edit_batch, optimize
from .base import Editor, EditorConfig


@dataclass(frozen=True)
class GraceConfig(EditorConfig):
    layer: int | None = None  # decoder layer whose MLP output projection holds the codebook; None: 2/3 of the depth
    eps: float = 1.0  # initial radius and the margin for adding keys (GRACE's default, euclidean)
    steps: int = 100  # max value-training steps per edit (GRACE trains values for ~100 steps)
    lr: float = 1.0  # value learning rate (GRACE/EasyEdit use 1.0)
    stop_loss: float = 0.05  # stop once every target token is right and the loss is below this
    cache_lower: bool = True  # compute the frozen layers below the edited one once per edit (False: every step)


def radius_rule(distance: float | None, radius: float, same_target: bool, eps: float) -> tuple[str, float, float | None]:
    """GRACE's codebook update for a new edit's query (Hartvigsen et al. 2023, Sec. 3.2).

    ``distance``: from the query to the nearest key (``None`` when the codebook is empty); ``radius``: that
    key's radius; ``same_target``: whether that key was trained for the same answer.
    Returns ``(action, nearest key's new radius, new key's radius or None when no key is added)``.
    """
    if distance is None or distance > radius + eps:
        return "add", radius, eps  # far from every ball: a new key with the initial radius
    if same_target:
        return "expand", max(radius, distance), None  # same answer: grow the ball to reach the query
    return "split", distance / 2, distance / 2  # conflict: the two balls meet half-way


class GraceCodebook(nn.Module):
    """Wraps a Linear: replaces its output by a codebook value when the sequence's query is within a radius."""

    def __init__(self, base: nn.Module, tracker: SequenceTracker, d_in: int, d_out: int):
        super().__init__()
        self.base_layer, self.tracker = base, tracker
        self.register_buffer("keys", torch.zeros(0, d_in))  # (K, d_in)
        self.register_buffer("values", torch.zeros(0, d_out))  # (K, d_out)
        self.register_buffer("radii", torch.zeros(0))  # (K,)
        self.targets: list[str] = []  # the target each key was trained for (expand vs split)
        self.forced: int | None = None  # while training: use this key for every row ...
        self.live_value: torch.Tensor | None = None  # ... with this trainable value
        self._choice: torch.Tensor | None = None  # (B,) key index per row of the current sequence, -1 = defer

    def lookup(self, query: torch.Tensor) -> torch.Tensor:
        """(B,) nearest key index where within its radius, else -1."""
        if len(self.keys) == 0:
            return torch.full((query.shape[0],), -1, dtype=torch.long, device=query.device)
        dist = torch.cdist(query.float(), self.keys.to(query.device))  # (B, K)
        best, idx = dist.min(-1)
        return torch.where(best <= self.radii.to(best.device)[idx], idx, torch.full_like(idx, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)  # (B, L, d_out)
        if len(self.keys) == 0 and self.forced is None:
            return out
        B, L = x.shape[:2]
        if self.forced is not None:
            choice = torch.full((B,), self.forced, dtype=torch.long, device=x.device)
        elif self.tracker.new_sequence or self._choice is None or len(self._choice) != B:
            q = x[torch.arange(B, device=x.device), self.tracker.query_index(L, B, x.device)]  # (B, d_in)
            choice = self._choice = self.lookup(q.detach())
        else:
            choice = self._choice
        where = self.tracker.applies_from(L, B, x.device) & (choice >= 0).unsqueeze(1)  # (B, L)
        if not where.any():
            return out
        if self.forced is not None:
            value = self.live_value.expand(B, -1)
        else:
            value = self.values[choice.clamp(min=0)]  # (B, d_out)
        return torch.where(where.unsqueeze(-1), value.unsqueeze(1).to(out.dtype), out)


class GraceEditor(Editor):
    """GRACE (Hartvigsen et al. 2023), registered as ``grace``."""

    name = "grace"
    config_class = GraceConfig

    def __init__(self, model, tokenizer, config: GraceConfig | None = None):
        super().__init__(model, tokenizer, config)
        self.layer = self.config.layer if self.config.layer is not None else default_edit_layer(model)
        self.module_name = layer_module_name(model, self.layer, "mlp_out")
        self.codebook: GraceCodebook | None = None

    def _install(self) -> GraceCodebook:
        if self.codebook is None:
            base = self.model.get_submodule(self.module_name)
            d_in, d_out = linear_dims(base)
            tracker = tracker_for(self.model)
            self.patches.on_undo(tracker.release)
            self.codebook = GraceCodebook(base, tracker, d_in, d_out).to(base.weight.device)
            self._swap_module(self.module_name, self.codebook)
        return self.codebook

    def _edit_one(self, request) -> dict:
        book = self._install()
        batch = make_edit_batch(self.tokenizer, [request.prompt], [request.target], [request.image])
        stack = UpperStack(self.model, self.layer if self.config.cache_lower else 0, batch)
        with torch.no_grad(), book.tracker.teacher_forcing(batch.key_positions), \
                record(self.model, [f"{self.module_name}.base_layer"], point="input") as acts:
            stack.hidden_states()  # the codebook's own input does not depend on the codebook
            x = acts[f"{self.module_name}.base_layer"]  # (1, L, d_in)
            query = x[0, batch.key_positions[0]].float()  # (d_in,)
            init_value = book.base_layer(x)[0, batch.key_positions[0]].float()  # (d_out,): "no change"
        action, index = self._update_codebook(book, query, request.target, init_value)

        book.forced = index
        book.live_value = book.values[index].clone().requires_grad_(True)
        try:
            with book.tracker.teacher_forcing(batch.key_positions):
                stats = optimize([book.live_value], lambda: stack.target_loss(batch.labels), self.config.steps,
                                 self.config.lr, self.config.stop_loss)
            with torch.no_grad():
                book.values[index] = book.live_value.detach()
        finally:
            book.forced, book.live_value = None, None
        return {**stats, "action": action, "keys": len(book.keys)}

    def _update_codebook(self, book: GraceCodebook, query, target: str, init_value) -> tuple[str, int]:
        nearest, distance, radius, same = None, None, 0.0, False
        if len(book.keys):
            dist = torch.linalg.vector_norm(book.keys - query, dim=-1)
            d, i = dist.min(0)
            nearest, distance = int(i), d.item()
            radius, same = book.radii[nearest].item(), book.targets[nearest] == target
        action, nearest_radius, new_radius = radius_rule(distance, radius, same, self.config.eps)
        if nearest is not None:
            book.radii[nearest] = nearest_radius
        if new_radius is None:
            return action, nearest
        self._add_key(book, query, init_value, new_radius, target)
        return action, len(book.keys) - 1

    @staticmethod
    def _add_key(book: GraceCodebook, key, value, radius: float, target: str) -> None:
        book.keys = torch.cat([book.keys, key[None]])
        book.values = torch.cat([book.values, value[None]])
        book.radii = torch.cat([book.radii, torch.tensor([radius], device=book.radii.device)])
        book.targets.append(target)

    def _reset(self) -> None:
        self.codebook = None

    def state_tensors(self) -> dict[str, torch.Tensor]:
        if self.codebook is None:
            return {}
        return {"keys": self.codebook.keys, "values": self.codebook.values, "radii": self.codebook.radii}

    def state_meta(self) -> dict:
        return {"layer": self.layer, "module": self.module_name, "targets": self.codebook.targets if self.codebook else []}

    def load_state(self, tensors, meta) -> None:
        if not tensors:
            return
        book = self._install()
        device = book.base_layer.weight.device
        book.keys, book.values, book.radii = (tensors[k].to(device) for k in ("keys", "values", "radii"))
        book.targets = list(meta.get("targets", []))
