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


class FrozenHead(nn.Module):
    """A frozen LM head (a bias-free or biased ``nn.Linear``) that is quick to differentiate through.

    Per optimisation step the head is the largest matmul (SmolLM2: a (49,152 x 576) weight, 113 MB in
    float32), and on a CPU it is memory-bound: the forward ``x W^T`` is faster from a contiguous copy of
    ``W^T``, the backward ``g W`` from ``W`` itself (measured, 2 threads, 23 target rows: 24 + 23 ms
    instead of 41 + 23 ms). The copy (113 MB, about 0.2 s) is made at the first call and again only if the
    weight changes in place, so an editor keeps one for all its edits (``Editor.frozen_head()``) and hands
    it to each :class:`UpperStack`. Nothing here is trained; a head that is (``requires_grad``), is not an
    ``nn.Linear`` or is not on the CPU (where the layouts were measured) is called as is.
    """

    def __init__(self, head: nn.Module):
        super().__init__()
        object.__setattr__(self, "head", head)  # the model's own module, not a submodule of this helper
        self.fast = isinstance(head, nn.Linear) and not head.weight.requires_grad and head.weight.device.type == "cpu"
        self.version, self.weight_t = -1, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fast:
            return self.head(x)
        if self.version != self.head.weight._version:  # (re)made on first use and after an in-place change
            self.weight_t, self.version = self.head.weight.detach().t().contiguous(), self.head.weight._version
        out = _FrozenMatmul.apply(x, self.head.weight.detach(), self.weight_t)
        return out if self.head.bias is None else out + self.head.bias.detach()


class _FrozenMatmul(torch.autograd.Function):
    """``x @ weight_t`` with a gradient for ``x`` only, computed as ``grad @ weight`` (both layouts kept)."""

    @staticmethod
    def forward(ctx, x, weight, weight_t):
        ctx.save_for_backward(weight)
        return x @ weight_t

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return grad @ weight, None, None


class UpperStack:
    """Re-run only the top of the model, from decoder layer ``first_layer``, on a cached input.

    The cache is the input (hidden states and every other argument: masks, rotary embeddings)
    that the model itself passed to layer ``first_layer``, captured by one forward pass that stops
    there. ``logits()`` then matches a full forward (``tests/test_training.py`` checks parity).

    ``from_mlp=True`` (editors that change only that layer's MLP, e.g. LEMoE's bypass) caches one step
    later: the MLP's input ``m`` and the residual stream ``r`` it is added to (the layer's output minus
    the MLP's output, for architectures whose ``ArchSpec.mlp_residual`` holds), so a step computes
    ``r + mlp(m)`` and skips the layer's attention (on the last layer, only the final norm and the LM
    head follow).
    """

    def __init__(self, model: nn.Module, first_layer: int, batch: EditBatch, from_mlp: bool = False,
                 head: nn.Module | None = None):
        self.model = model
        spec = arch_spec(model)
        self.layers = list(decoder_layers(model))[first_layer:]
        self.norm = model.get_submodule(spec.final_norm)
        self.head = head if head is not None else model.get_output_embeddings()  # e.g. a FrozenHead of it
        self.mlp = None
        if from_mlp and not spec.mlp_residual:
            raise ValueError(f"{model.config.model_type}: the MLP's output is not added to the residual as is")
        captured: dict = {}

        def grab(module, args, kwargs):  # GPT-2 passes its causal mask positionally: keep every argument
            captured["hidden"] = args[0] if args else kwargs.pop("hidden_states")
            captured["args"], captured["kwargs"] = args[1:], kwargs
            if not from_mlp:
                raise _Stop

        def grab_mlp(module, args, output):
            captured["mlp_in"], captured["mlp_out"] = args[0], output

        def stop(module, args, output):
            captured["out"] = output[0] if isinstance(output, tuple) else output
            raise _Stop

        handles = [self.layers[0].register_forward_pre_hook(grab, with_kwargs=True)]
        if from_mlp:
            self.mlp = self.layers[0].get_submodule(spec.mlp)
            handles += [self.mlp.register_forward_hook(grab_mlp), self.layers[0].register_forward_hook(stop)]
        try:
            with torch.no_grad():
                model(**batch.model_inputs(), use_cache=False)
        except _Stop:
            pass
        finally:
            for handle in handles:
                handle.remove()
        self.hidden = captured["hidden"].detach()  # (B, L, d)
        self.args = captured["args"]
        self.kwargs = {k: v for k, v in captured["kwargs"].items() if k != "hidden_states"}
        if from_mlp:
            self.mlp_in = captured["mlp_in"].detach()  # (B, L, d) the MLP's input
            self.residual = (captured["out"] - captured["mlp_out"]).detach()  # (B, L, d) what it is added to
            # a wrapper (PEFT's and minedit's convention: ``base_layer``) gets its frozen module's output once
            self.mlp_base = None
            if hasattr(self.mlp, "base_layer"):
                with torch.no_grad():
                    self.mlp_base = self.mlp.base_layer(self.mlp_in)

    def hidden_states(self) -> torch.Tensor:
        """(B, L, d) final hidden states (after the last norm), with gradients through the upper layers."""
        layers = self.layers
        if self.mlp is not None:
            extra = {} if self.mlp_base is None else {"base_out": self.mlp_base}
            h, layers = self.residual + self.mlp(self.mlp_in, **extra), layers[1:]
        else:
            h = self.hidden
        for layer in layers:
            out = layer(h, *self.args, **self.kwargs)
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
