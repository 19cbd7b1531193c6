"""Batched inference on a (possibly edited) causal LM: teacher forcing and greedy generation.

Every scored sequence is run the way ``generate`` runs it: the prompt first (one prefill call, left
padded), then the continuation against the key/value cache. Editors that decide once per sequence
(GRACE's key, ELDER's router) decide at the prefill, from the last prompt token, so a score and a
generation see the same decision. ``tests/test_metrics.py`` checks this equals one plain forward.

Inputs are built on the CPU and moved to :func:`input_device` (where the model's input embeddings
are: the GPU of a model on one GPU, the first GPU of one spread by ``device_map``); results come back
to the CPU, so scores never depend on where the model runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from .vision import expand_ids, is_multimodal, pixel_values, render_prompt, text_tokenizer


@dataclass(frozen=True)
class Pair:
    """A prompt and the continuation to score, as token ids; ``pixel_values`` (1, 3, H, W) when the
    prompt asks about an image (its image tokens are in ``prompt_ids``)."""

    prompt_ids: tuple[int, ...]
    target_ids: tuple[int, ...]
    pixel_values: torch.Tensor | None = field(default=None, compare=False, repr=False)


def encode_pair(tokenizer, prompt: str, target: str, image=None) -> Pair:
    """Tokenise ``target`` exactly as it follows ``prompt`` in training: with its leading space.

    The target ids are the tail of ``tokenize(prompt + " " + target)`` after the prompt's ids, so a
    scored target and a trained target are the same tokens (scoring ``target`` alone, without the
    space, gives other tokens on byte-level BPE tokenizers and understates every editor).

    With ``image`` (a path or PIL image; ``tokenizer`` is then the model's processor), ``prompt`` is
    a question about the image, rendered by the processor's chat template (:mod:`minedit.vision`).
    """
    pixels = None
    if image is not None:  # a question about an image: the chat template, image tokens expanded
        if not is_multimodal(tokenizer):
            raise ValueError("a prompt with an image needs a vision-language model's processor, got a text tokenizer")
        prompt, pixels = render_prompt(tokenizer, prompt), pixel_values(tokenizer, image)
    sep = "" if prompt.endswith((" ", "\n")) or target.startswith(" ") else " "
    if pixels is None:
        tokenizer = text_tokenizer(tokenizer)
        prompt_ids, full_ids = tokenizer(prompt).input_ids, tokenizer(prompt + sep + target).input_ids
    else:
        prompt_ids, full_ids = expand_ids(tokenizer, prompt, pixels), expand_ids(tokenizer, prompt + sep + target, pixels)
        tokenizer = text_tokenizer(tokenizer)
    if full_ids[: len(prompt_ids)] == prompt_ids and len(full_ids) > len(prompt_ids):
        target_ids = full_ids[len(prompt_ids):]
    else:  # the tokenizer merged across the boundary: fall back to the target on its own
        target_ids = tokenizer(sep + target, add_special_tokens=False).input_ids
    if not target_ids:
        raise ValueError(f"target {target!r} tokenises to nothing")
    return Pair(tuple(prompt_ids), tuple(target_ids), pixels)


def input_device(model) -> torch.device:
    """The device of the model's input embeddings: where ids, masks and pixels must go."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and getattr(embeddings, "weight", None) is not None:
        return embeddings.weight.device
    return next(model.parameters()).device


def pad_id(tokenizer) -> int:
    tokenizer = text_tokenizer(tokenizer)
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def stack_pixels(pixels: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    """The pixel values of the rows that have an image, in row order (LLaVA fills image tokens in order)."""
    present = [p for p in pixels if p is not None]
    return torch.cat(present) if present else None


def left_pad(seqs: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and attention mask, both (B, L)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        if s:
            ids[row, width - len(s):] = torch.tensor(s)
            mask[row, width - len(s):] = 1
    return ids, mask


def right_pad(seqs: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask, both (B, L)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = torch.tensor(s)
        mask[row, : len(s)] = 1
    return ids, mask


def continuation_logits(model, pairs: Sequence[Pair], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits predicting every target token, (B, Lt, V), and the target mask (B, Lt).

    Position ``j`` holds the model's distribution for ``target_ids[j]`` given the prompt and the
    gold ``target_ids[:j]`` (teacher forcing).
    """
    device = input_device(model)
    prompt, prompt_mask = (t.to(device) for t in left_pad([p.prompt_ids for p in pairs], pad))
    target, target_mask = (t.to(device) for t in right_pad([p.target_ids for p in pairs], pad))
    positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    pv = stack_pixels([p.pixel_values for p in pairs])
    images = {"pixel_values": pv.to(device)} if pv is not None else {}
    out = model(input_ids=prompt, attention_mask=prompt_mask, position_ids=positions, use_cache=True, **images)
    logits = [out.logits[:, -1:]]  # (B, 1, V): predicts target[0]
    if target.shape[1] > 1:
        rest = target[:, :-1]
        mask = torch.cat([prompt_mask, target_mask[:, :-1]], dim=1)
        rest_pos = prompt_mask.sum(-1, keepdim=True) + torch.arange(rest.shape[1], device=device)
        out2 = model(input_ids=rest, attention_mask=mask, position_ids=rest_pos,
                     past_key_values=out.past_key_values, use_cache=True)
        logits.append(out2.logits)
    return torch.cat(logits, dim=1), target_mask.bool()


@torch.inference_mode()
def predict_tokens(model, pairs: Sequence[Pair], pad: int, batch_size: int = 32) -> list[torch.Tensor]:
    """Teacher-forced argmax token at each target position, one 1-D tensor per pair."""
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i].prompt_ids) + len(pairs[i].target_ids))
    result: list[torch.Tensor | None] = [None] * len(pairs)
    for start in range(0, len(order), batch_size):
        chunk = order[start: start + batch_size]
        logits, mask = continuation_logits(model, [pairs[i] for i in chunk], pad)
        argmax = logits.argmax(-1).cpu()
        for row, i in enumerate(chunk):
            result[i] = argmax[row, : int(mask[row].sum())].clone()
    return result  # type: ignore[return-value]


@torch.inference_mode()
def generate_greedy(model, prompts: Sequence[Sequence[int]], max_new_tokens: Sequence[int], pad: int,
                    batch_size: int = 32, pixels: Sequence[torch.Tensor | None] | None = None) -> list[list[int]]:
    """Greedy continuation ids of each prompt: at most ``max_new_tokens[i]`` tokens, up to and including
    the end-of-sequence token when the model stops (as ``generate`` would). ``pixels[i]``: the image
    of prompt ``i`` for a vision-language model (None for a text-only prompt)."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos = eos[0] if isinstance(eos, list) else eos
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    result: list[list[int]] = [[] for _ in prompts]
    device = input_device(model)
    for start in range(0, len(order), batch_size):
        chunk = order[start: start + batch_size]
        ids, mask = (t.to(device) for t in left_pad([prompts[i] for i in chunk], pad))
        steps = max(max_new_tokens[i] for i in chunk)
        pv = stack_pixels([pixels[i] for i in chunk]) if pixels is not None else None
        images = {"pixel_values": pv.to(device)} if pv is not None else {}
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=steps, do_sample=False,
                             pad_token_id=pad, temperature=None, top_p=None, top_k=None, **images)
        for row, i in enumerate(chunk):
            tokens = out[row, ids.shape[1]: ids.shape[1] + max_new_tokens[i]].tolist()
            result[i] = tokens[: tokens.index(eos) + 1] if eos is not None and eos in tokens else tokens
    return result
