"""Sequence-level decisions inside a Hugging Face forward pass.

Several mechanisms decide *once per sequence*: GRACE looks its key up from the last prompt token,
ELDER routes on a sequence-level representation. Inside ``generate`` a wrapped module sees the
prompt once (the prefill) and then one token at a time, so it needs to know which call starts a new
sequence. :class:`SequenceTracker` puts one forward pre-hook on the top-level model and tells every
wrapped module whether the current call is a prefill (no key/value cache yet) and, while an editor
trains on prompt + target in one call, where each row's prompt ends.

Convention (the same in training, scoring and generation): the decision is made at the prefill
from the last input position (prompts are left-padded), or at ``key_positions`` while training,
and applies to that position and every later one of the same sequence.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn

_ATTR = "_minedit_sequence_tracker"


class SequenceTracker:
    """One per model: shared by every module that decides per sequence. Use :func:`tracker_for`."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.new_sequence = True  # the current forward call is a prefill
        self.key_positions: torch.Tensor | None = None  # (B,) set while training on prompt + target
        self._users = 0
        self._handle = model.register_forward_pre_hook(self._pre_forward, with_kwargs=True)

    def _pre_forward(self, module, args, kwargs):
        cache = kwargs.get("past_key_values")
        self.new_sequence = cache is None or cache.get_seq_length() == 0
        return None

    def query_index(self, length: int, batch: int, device: "torch.device | str | None" = None) -> torch.Tensor:
        """Per-row position (B,) whose activation makes the sequence's decision (on ``device``)."""
        if self.key_positions is not None:
            return self.key_positions.to(device) if device is not None else self.key_positions
        return torch.full((batch,), length - 1, dtype=torch.long, device=device)

    def applies_from(self, length: int, batch: int, device: "torch.device | str | None" = None) -> torch.Tensor:
        """(B, L) bool: the positions a decision applies to (the query position and later ones)."""
        if not self.new_sequence:
            return torch.ones((batch, length), dtype=torch.bool, device=device)
        start = self.query_index(length, batch, device)
        return torch.arange(length, device=device).unsqueeze(0) >= start.unsqueeze(1)

    @contextmanager
    def teacher_forcing(self, key_positions: torch.Tensor) -> Iterator[None]:
        """Forward calls inside the block are whole prompt + target sequences, prompt ending at ``key_positions``."""
        self.key_positions, self.new_sequence = key_positions, True
        try:
            yield
        finally:
            self.key_positions = None

    def release(self) -> None:
        """Drop one user; the hook goes when the last one leaves."""
        self._users -= 1
        if self._users <= 0:
            self._handle.remove()
            if getattr(self.model, _ATTR, None) is self:
                delattr(self.model, _ATTR)


def tracker_for(model: nn.Module) -> SequenceTracker:
    """The model's tracker, created on first use (call ``release()`` once per call of this)."""
    tracker = getattr(model, _ATTR, None)
    if tracker is None:
        tracker = SequenceTracker(model)
        object.__setattr__(model, _ATTR, tracker)  # a plain attribute, not a submodule
    tracker._users += 1
    return tracker
