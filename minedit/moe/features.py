"""Sequence features: one vector per sequence, computed once (at the prefill) and kept while decoding.

Routers route on these. ELDER (Li et al. 2024, Sec. 3.1) routes on a sequence-level representation
instead of per token, so every token of an input, and an input's rephrase, reach the same experts;
LEMoE (Wang & Li 2024, Sec. 3.2) routes on the mean-pooled token embedding of the prompt.

A feature is read by a forward hook on one module that lies *below* every wrapped layer, so it does
not depend on the experts: routing can be computed as soon as it is captured (for all layers at
once) and an editor can cache everything below the experts (``UpperStack``) and still route.
Which position(s) make up "the prompt" comes from the :class:`~minedit.sequence.SequenceTracker`:
the last input position at a prefill (prompts are left-padded), ``key_positions`` while training.

- :class:`LastTokenHidden`: the output of decoder layer ``layer`` at the last prompt token.
- :class:`MeanPooledHidden`: that output averaged over the prompt's tokens (padding excluded);
  ``layer=-1`` averages the token embeddings, which is LEMoE's feature.
- :class:`MeanAndLastHidden`: both, each unit length, concatenated (the last one scaled by
  ``last_weight``): *what* the prompt is about and *how* it asks (notebook 03 measures why).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..arch import arch_spec, decoder_layers
from ..sequence import SequenceTracker

Callback = Callable[[torch.Tensor], None]


class SequenceFeature:
    """Base class: hook ``module_for(model)``; on a new sequence store ``pool(h)`` (B, d) and call back."""

    def __init__(self, layer: int):
        self.layer = layer
        self.value: torch.Tensor | None = None  # (B, d): the current sequences' features
        self._handles: list = []
        self._tracker: SequenceTracker | None = None
        self._callback: Callback | None = None

    def module_for(self, model: nn.Module) -> nn.Module:
        return decoder_layers(model)[self.layer]

    def attach(self, model: nn.Module, tracker: SequenceTracker, callback: Callback) -> None:
        self.detach()
        self._tracker, self._callback = tracker, callback
        self._handles.append(self.module_for(model).register_forward_hook(self._hook))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, module, args, output) -> None:
        if not self._tracker.new_sequence:
            return None  # decoding against the cache: the sequence keeps its feature
        h = output[0] if isinstance(output, tuple) else output  # (B, L, d)
        self.value = self.pool(h.detach()).float()  # (B, d)
        self._callback(self.value)
        return None

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class LastTokenHidden(SequenceFeature):
    """Hidden state after decoder layer ``layer`` at the position that makes the sequence's decision."""

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        B, L = h.shape[:2]
        return h[torch.arange(B), self._tracker.query_index(L, B).to(h.device)]  # (B, d)


class MeanPooledHidden(SequenceFeature):
    """Hidden state after decoder layer ``layer`` (``-1``: token embeddings) averaged over the prompt.

    The prompt is every attended position up to the query position: padding is left out through
    the attention mask, which a pre-hook on the model keeps (the tracker does not store it).
    """

    def __init__(self, layer: int):
        super().__init__(layer)
        self._mask: torch.Tensor | None = None  # (B, L) attention mask of the current forward call

    def module_for(self, model: nn.Module) -> nn.Module:
        if self.layer == -1:
            return model.get_submodule(arch_spec(model).embed)
        return super().module_for(model)

    def attach(self, model: nn.Module, tracker: SequenceTracker, callback: Callback) -> None:
        super().attach(model, tracker, callback)

        def keep_mask(module, args, kwargs):
            self._mask = kwargs.get("attention_mask")
            return None

        self._handles.append(model.register_forward_pre_hook(keep_mask, with_kwargs=True))

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        return self.mean(h)

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        B, L = h.shape[:2]
        keep = torch.ones(B, L, dtype=torch.bool, device=h.device)
        if self._mask is not None and self._mask.dim() == 2 and self._mask.shape == (B, L):
            keep &= self._mask.to(h.device).bool()
        last = self._tracker.query_index(L, B).to(h.device)  # (B,)
        keep &= torch.arange(L, device=h.device)[None] <= last[:, None]
        w = keep.unsqueeze(-1).to(h.dtype)  # (B, L, 1)
        return (h * w).sum(1) / w.sum(1).clamp_min(1.0)  # (B, d)


class MeanAndLastHidden(MeanPooledHidden):
    """``[mean / |mean|, last_weight * last / |last|]`` of decoder layer ``layer``'s output, (B, 2d).

    The mean over the prompt carries the subject and relation words, so a rephrase lands next to its
    edit; the last token carries the kind of prompt (a question of the edited kind or not), which
    keeps unrelated inputs away from every edit.
    """

    def __init__(self, layer: int, last_weight: float = 0.5):
        super().__init__(layer)
        self.last_weight = last_weight

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        B, L = h.shape[:2]
        last = h[torch.arange(B), self._tracker.query_index(L, B).to(h.device)]  # (B, d)
        mean = F.normalize(self.mean(h).float(), dim=-1)
        return torch.cat([mean, self.last_weight * F.normalize(last.float(), dim=-1)], dim=-1)  # (B, 2d)
