"""Shared machinery for editors that train a few parameters per edit.

- :func:`make_edit_batch`: prompt + target token ids, labels only on the target (``-100`` on the
  prompt), the position where each prompt ends (the key / routing position).
- :class:`UpperStack`: the frozen layers *below* the edited layer give the same output at every
  optimisation step, so their output is computed once per edit and only the layers from the edited
  one upwards are re-run (on SmolLM2, editing layer 20 of 30 skips two thirds of each forward pass).
- :func:`optimize`: Adam with early stopping, deterministic.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .arch import arch_spec, decoder_layers
from .infer import Pair, encode_pair, pad_id, right_pad, stack_pixels


@dataclass
class EditBatch:
    """Right-padded prompt + target sequences, (B, L) each, and where each prompt ends (B,)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor  # -100 except on target tokens
    key_positions: torch.Tensor  # index of the last prompt token of each row
    pixel_values: torch.Tensor | None = None  # images of the rows that ask about one (vision-language edits)

    def model_inputs(self) -> dict:
        """Keyword arguments of the model's forward pass for this batch."""
        inputs = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if self.pixel_values is not None:
            inputs["pixel_values"] = self.pixel_values
        return inputs


def make_edit_batch(tokenizer, prompts: Sequence[str], targets: Sequence[str],
                    images: Sequence[object | None] | None = None) -> EditBatch:
    """Tokenise each ``prompt`` followed by its target (with the leading space, as scored).

    ``images[i]``: the image prompt ``i`` asks about (a path), or None; ``tokenizer`` is then the
    model's processor (see :func:`minedit.infer.encode_pair`).
    """
    images = list(images) if images is not None else [None] * len(prompts)
    pairs = [encode_pair(tokenizer, p, t, image) for p, t, image in zip(prompts, targets, images)]
    return batch_from_pairs(pairs, pad_id(tokenizer))


def batch_from_pairs(pairs: Sequence[Pair], pad: int) -> EditBatch:
    """Right-pad encoded pairs into one batch, labels on the target tokens only."""
    seqs = [list(p.prompt_ids) + list(p.target_ids) for p in pairs]
    ids, mask = right_pad(seqs, pad)
    labels = torch.full_like(ids, -100)
    for row, p in enumerate(pairs):
        n = len(p.prompt_ids)
        labels[row, n: n + len(p.target_ids)] = torch.tensor(p.target_ids)
    return EditBatch(ids, mask, labels, torch.tensor([len(p.prompt_ids) - 1 for p in pairs]),
                     stack_pixels([p.pixel_values for p in pairs]))


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled positions (labels aligned with the inputs)."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)


def target_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Teacher-forced token accuracy over labelled positions."""
    pred, gold = logits[:, :-1].argmax(-1), labels[:, 1:]
    keep = gold != -100
    return (pred[keep] == gold[keep]).float().mean().item()


class _Stop(Exception):
    pass


class UpperStack:
    """Re-run only decoder layers ``first_layer..`` on a cached input to layer ``first_layer``.

    The cache is the input (hidden states and every keyword argument: masks, rotary embeddings)
    that the model itself passed to layer ``first_layer``, captured by one forward pass that stops
    there. ``logits()`` then matches a full forward (``tests/test_training.py`` checks parity).
    """

    def __init__(self, model: nn.Module, first_layer: int, batch: EditBatch):
        self.model = model
        self.layers = list(decoder_layers(model))[first_layer:]
        spec = arch_spec(model)
        self.norm = model.get_submodule(spec.final_norm)
        self.head = model.get_output_embeddings()
        captured: dict = {}

        def grab(module, args, kwargs):
            captured["hidden"], captured["kwargs"] = args[0] if args else kwargs.pop("hidden_states"), kwargs
            raise _Stop

        handle = self.layers[0].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            with torch.no_grad():
                model(**batch.model_inputs(), use_cache=False)
        except _Stop:
            pass
        finally:
            handle.remove()
        self.hidden = captured["hidden"].detach()  # (B, L, d)
        self.kwargs = {k: v for k, v in captured["kwargs"].items() if k != "hidden_states"}

    def hidden_states(self) -> torch.Tensor:
        """(B, L, d) final hidden states (after the last norm), with gradients through the upper layers."""
        h = self.hidden
        for layer in self.layers:
            out = layer(h, **self.kwargs)
            h = out[0] if isinstance(out, tuple) else out
        return self.norm(h)

    def logits(self) -> torch.Tensor:
        """(B, L, V) logits at every position."""
        return self.head(self.hidden_states())

    def target_loss(self, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
        """LM loss and token accuracy on the labelled positions only (see :func:`target_loss`)."""
        return target_loss(self.hidden_states(), self.head, labels)


def target_loss(hidden: torch.Tensor, head: nn.Module, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Next-token loss and token accuracy of final hidden states (B, L, d) on the labelled positions.

    The LM head (a vocabulary-sized matmul) runs only where a target token is predicted, which on
    short edit prompts is a large part of each step's cost.
    """
    h = hidden[:, :-1]  # position p predicts token p + 1
    gold = labels[:, 1:]
    keep = gold != -100
    logits = head(h[keep])  # (N, V)
    gold = gold[keep]
    loss = F.cross_entropy(logits, gold)
    return loss, (logits.argmax(-1) == gold).float().mean().item()


@contextmanager
def trainable(params: Iterable[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """Gradients on for ``params`` inside the block only (models are loaded frozen); grads dropped after."""
    params = list(params)
    for p in params:
        p.requires_grad_(True)
    try:
        yield params
    finally:
        for p in params:
            p.requires_grad_(False)
            p.grad = None


def optimize(params: Iterable[torch.Tensor], step_loss: Callable[[], tuple[torch.Tensor, float]], steps: int,
             lr: float, stop_loss: float = 0.0, after_step: Callable[[], None] | None = None) -> dict:
    """Adam on ``params`` for at most ``steps``; ``step_loss()`` returns (loss, target accuracy).

    Stops early once the targets are predicted (accuracy 1.0) and the loss is below ``stop_loss``.
    ``after_step`` runs after each update (e.g. a norm constraint).
    """
    params = list(params)
    opt = torch.optim.Adam(params, lr=lr)
    loss_value, acc, step = float("nan"), 0.0, 0
    for step in range(1, steps + 1):
        opt.zero_grad(set_to_none=True)
        loss, acc = step_loss()
        loss_value = loss.item()
        if acc >= 1.0 and loss_value <= stop_loss:
            step -= 1
            break
        loss.backward()
        opt.step()
        if after_step is not None:
            after_step()
    return {"steps": step, "loss": loss_value, "train_acc": acc}
