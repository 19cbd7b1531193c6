"""Sequence features: one vector per sequence, computed once (at the prefill) and kept while decoding.

Routers and gates decide on these. ELDER (Li et al. 2024, Sec. 3.1) routes on a sequence-level
representation instead of per token, so every token of an input, and an input's rephrase, reach
the same experts; LEMoE (Wang & Li 2024, Sec. 3.2) routes on the mean-pooled token embedding of
the prompt; LiveEdit (Chen et al. 2024, Sec. 3.3) filters experts on the *image's* features.

A feature is read by a forward hook on one module that lies *below* every wrapped layer, so it does
not depend on the experts: routing can be computed as soon as the features are captured (for all
layers at once) and an editor can cache everything below the experts (``UpperStack``) and still route.
Which position(s) make up "the prompt" comes from the :class:`~minedit.sequence.SequenceTracker`:
the last input position at a prefill (prompts are left-padded), ``key_positions`` while training.

At every prefill a feature first forgets its value (:meth:`SequenceFeature.begin`, with the model's
forward arguments), so none is ever stale (a batch without images gets no old image feature); a
:class:`~minedit.moe.mixture.Mixture` routes once every one of its features has its new value. Registered in :data:`FEATURES` (``--set feature=NAME``):

- ``last`` :class:`LastTokenHidden`: decoder layer ``layer``'s output at the last prompt token.
- ``mean`` :class:`MeanPooledHidden`: that output averaged over the prompt's tokens (padding
  excluded); ``layer=-1`` averages the token embeddings, which is LEMoE's feature.
- ``mean+last`` :class:`MeanAndLastHidden`: both, each unit length, concatenated (the last one
  scaled by ``last_weight``): *what* the prompt is about and *how* it asks (notebook 04 measures why).
- ``vision`` :class:`VisionFeature`: the mean of an image's tokens as the language model receives
  them (LLaVA's projector output); zeros for a sequence without an image.
- ``image+text`` :class:`ImageTextHidden`: decoder layer ``layer``'s output averaged over the image's
  tokens and, apart, over the text's: LiveEdit's two routing signals read at one layer (the image
  half is zero without an image).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..arch import arch_spec, decoder_layers, vision_output_name
from ..errors import ConfigError
from ..sequence import SequenceTracker, tracker_for
from .registry import Registry

FEATURES: Registry["SequenceFeature"] = Registry("feature")
Callback = Callable[[torch.Tensor], None]


def masked_mean(h: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """(B, d) mean of ``h`` (B, L, d) over the positions where ``where`` (B, L) is True; zeros where none is."""
    w = where.unsqueeze(-1).to(h.dtype)  # (B, L, 1)
    return (h * w).sum(1) / w.sum(1).clamp_min(1.0)


class SequenceFeature(nn.Module):
    """Base: hook ``module_for(model)``; at a prefill store ``pool(h)`` (B, d) in ``value`` and call back.

    A feature is an ``nn.Module`` so a learned one (a projection) is saved with its mixture's state.
    """

    def __init__(self, layer: int = 0):
        super().__init__()
        self.layer = layer  # decoder layer whose output is read; -1: the token embeddings
        self.value: torch.Tensor | None = None  # (B, d): the current sequences' features
        self.tracker: SequenceTracker | None = None
        self._callback: Callback | None = None
        self._handles: list = []

    def dim(self, model: nn.Module) -> int:
        return model.get_input_embeddings().weight.shape[1]

    def check_below(self, first_layer: int) -> None:
        """Refuse a layer that is not strictly below the lowest wrapped layer (or -1, the embeddings)."""
        if self.layer != -1 and not 0 <= self.layer < first_layer:
            raise ConfigError(f"feature_layer {self.layer} must be -1 (token embeddings) or 0..{first_layer - 1}: "
                              f"below the lowest wrapped layer {first_layer}, so the feature does not depend on the experts")

    def module_for(self, model: nn.Module) -> nn.Module:
        if self.layer == -1:
            return model.get_submodule(arch_spec(model).embed)
        return decoder_layers(model)[self.layer]

    def attach(self, model: nn.Module, tracker: SequenceTracker, callback: Callback) -> list:
        """Start reading ``model``: ``callback(value)`` at every prefill. Returns the hook handles
        (:meth:`detach` removes them; a :class:`~minedit.patch.Patcher` may own them too)."""
        self.detach()
        self.tracker, self._callback = tracker, callback

        def start(module, args, kwargs):
            if self.tracker.new_sequence:
                self.begin(kwargs)

        self._handles = [model.register_forward_pre_hook(start, with_kwargs=True),
                         self.module_for(model).register_forward_hook(self._hook)]
        return list(self._handles)

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def begin(self, kwargs: dict) -> None:
        """A new batch of sequences starts (the model's forward keyword arguments): forget the old value."""
        self.value = None

    def _hook(self, module, args, output) -> None:
        if not self.tracker.new_sequence:
            return None  # decoding against the cache: the sequence keeps its feature
        h = output[0] if isinstance(output, tuple) else output  # (B, L, d)
        self.value = self.pool(h.detach()).float()  # (B, d)
        self._callback(self.value)
        return None

    def query_index(self, h: torch.Tensor) -> torch.Tensor:
        B, L = h.shape[:2]
        return self.tracker.query_index(L, B, h.device)  # (B,)

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@FEATURES.register("last")
class LastTokenHidden(SequenceFeature):
    """Hidden state after decoder layer ``layer`` at the position that makes the sequence's decision."""

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        return h[torch.arange(len(h), device=h.device), self.query_index(h)]  # (B, d)


@FEATURES.register("mean")
class MeanPooledHidden(SequenceFeature):
    """Hidden state after decoder layer ``layer`` (``-1``: token embeddings) averaged over the prompt.

    The prompt is every attended position up to the query position: padding is left out through
    the attention mask of the forward call (kept by :meth:`begin`).
    """

    def __init__(self, layer: int = 0):
        super().__init__(layer)
        self._mask: torch.Tensor | None = None  # (B, L) attention mask of the current forward call

    def begin(self, kwargs: dict) -> None:
        super().begin(kwargs)
        self._mask = kwargs.get("attention_mask")

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        return self.mean(h)

    def prompt_positions(self, h: torch.Tensor) -> torch.Tensor:
        """(B, L) bool: attended positions up to each row's query position."""
        B, L = h.shape[:2]
        keep = torch.ones(B, L, dtype=torch.bool, device=h.device)
        if self._mask is not None and self._mask.dim() == 2 and self._mask.shape == (B, L):
            keep &= self._mask.to(h.device).bool()
        return keep & (torch.arange(L, device=h.device)[None] <= self.query_index(h)[:, None])

    def mean(self, h: torch.Tensor, where: torch.Tensor | None = None) -> torch.Tensor:
        """(B, d) average over ``where`` (default: the prompt); zeros for a row where nothing is selected."""
        return masked_mean(h, self.prompt_positions(h) if where is None else where)


@FEATURES.register("mean+last")
class MeanAndLastHidden(MeanPooledHidden):
    """``[mean / |mean|, last_weight * last / |last|]`` of decoder layer ``layer``'s output, (B, 2d).

    The mean over the prompt carries the subject and relation words, so a rephrase lands next to its
    edit; the last token carries the kind of prompt (a question of the edited kind or not), which
    keeps unrelated inputs away from every edit.
    """

    def __init__(self, layer: int = 0, last_weight: float = 0.5):
        super().__init__(layer)
        self.last_weight = last_weight

    def dim(self, model: nn.Module) -> int:
        return 2 * super().dim(model)

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        last = h[torch.arange(len(h), device=h.device), self.query_index(h)]  # (B, d)
        mean = F.normalize(self.mean(h).float(), dim=-1)
        return torch.cat([mean, self.last_weight * F.normalize(last.float(), dim=-1)], dim=-1)  # (B, 2d)


@FEATURES.register("vision")
class VisionFeature(SequenceFeature):
    """Mean of a sequence's image tokens as the language model receives them (B, d); zeros without an image.

    The module is located through the architecture table (:func:`minedit.arch.vision_output_name`).
    Its output holds one (P, d) block per image, in the order of the rows that carry the image token;
    :meth:`begin` sets every row to zero first, so a text-only batch (the projector does not run)
    gets zeros, never the previous batch's images. ``present`` says which rows have an image.
    """

    def __init__(self, layer: int = -1):
        super().__init__(layer)  # the vision side lies below every decoder layer
        self.present: torch.Tensor | None = None  # (B,) bool

    def check_below(self, first_layer: int) -> None:
        return None

    def module_for(self, model: nn.Module) -> nn.Module:
        return model.get_submodule(vision_output_name(model))

    def begin(self, kwargs: dict) -> None:
        ids = kwargs.get("input_ids")
        self.value = None
        self.present = None if ids is None else (ids == self._image_token).any(-1)  # (B,)
        if ids is not None and kwargs.get("pixel_values") is None:  # the projector will not run
            self.value = torch.zeros(len(ids), self._d, device=ids.device)
            self._callback(self.value)

    def attach(self, model: nn.Module, tracker: SequenceTracker, callback: Callback) -> list:
        self._d, self._image_token = self.dim(model), model.config.image_token_id
        return super().attach(model, tracker, callback)

    def _hook(self, module, args, output) -> None:
        if not self.tracker.new_sequence or self.present is None:
            return None
        images = output.detach().float().mean(-2)  # (B_img, d)
        value = torch.zeros(len(self.present), images.shape[-1], device=images.device)
        rows = self.present.nonzero().flatten().to(images.device)
        if len(rows) != len(images):
            raise RuntimeError(f"{len(images)} images for {len(rows)} rows with an image token")
        self.value = value.index_copy(0, rows, images)
        self._callback(self.value)
        return None


@FEATURES.register("text")
class TextHidden(MeanPooledHidden):
    """Decoder layer ``layer``'s output averaged over the prompt's *text* tokens, image tokens left out (B, d).

    On a text-only model this is ``mean``. On a VLM the image tokens outnumber the words (tiny-llava: 16
    patches beside a 6-12 token question) and pull every prompt's mean toward "an image": LLaVA-CMoE's task
    locator tells tasks by their instructions, so it reads this (measured on the continual suite's six tasks,
    per-task VAEs on 160 training records each: 100% of test records placed vs 97.7-99.6% on ``mean``).
    Image positions are those holding the model's image token (LLaVA expands it to one per patch).
    """

    def attach(self, model: nn.Module, tracker: SequenceTracker, callback: Callback) -> list:
        self._image_token = getattr(model.config, "image_token_id", None)  # None: a text-only model
        return super().attach(model, tracker, callback)

    def begin(self, kwargs: dict) -> None:
        super().begin(kwargs)
        ids = kwargs.get("input_ids")
        self._image = None if ids is None or self._image_token is None else ids == self._image_token  # (B, L)

    def image_positions(self, h: torch.Tensor) -> torch.Tensor:
        """(B, L) bool: prompt positions that hold an image token (none on a text-only call)."""
        prompt = self.prompt_positions(h)
        if self._image is not None and self._image.shape == prompt.shape:
            return prompt & self._image.to(h.device)
        return torch.zeros_like(prompt)

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        return self.mean(h, self.prompt_positions(h) & ~self.image_positions(h))


@FEATURES.register("image+text")
class ImageTextHidden(TextHidden):
    """``[mean over image tokens, mean over text tokens]`` of decoder layer ``layer``'s output, (B, 2d).

    LiveEdit (Chen et al. 2024, Sec. 3.3) routes in two stages on features of one layer's hidden states:
    the image part for the visual hard filter, the text part for the soft routing (:class:`TextHidden`).
    A row without an image gets zeros in its first half.
    """

    def dim(self, model: nn.Module) -> int:
        return 2 * super().dim(model)

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        image = self.image_positions(h)
        return torch.cat([self.mean(h, image), self.mean(h, self.prompt_positions(h) & ~image)], dim=-1)  # (B, 2d)


def sequence_features(model: nn.Module, batch: dict, feature: SequenceFeature) -> torch.Tensor:
    """(B, d): ``feature`` of each sequence of one forward pass of ``model`` on ``batch`` (its keyword
    arguments, prompts left-padded), without any mixture; the hooks are gone afterwards."""
    tracker, captured = tracker_for(model), []
    feature.attach(model, tracker, captured.append)
    try:
        with torch.inference_mode():
            model(**batch)
    finally:
        feature.detach()
        tracker.release()
    return captured[-1]
