"""Inspect one prompt on an edited model: its answer before and after, which experts fire, and why.

A mixture editor decides *once per sequence* (ELDER, Li et al. 2024, Sec. 3.1-3.3; LEMoE, Wang & Li 2024,
Sec. 3.2): a feature of the prompt goes through one router per wrapped layer (Eq. 2: softmax, top-k, the
weights renormalised), and the gates may send the whole sequence back to the original model (ELDER's Eq. 5:
deferral when the routing code is more than ``threshold`` bits from every stored code; minedit's similarity
gate: deferral below a cosine similarity to every edit's feature). GRACE (Hartvigsen et al. 2023, Sec. 3)
and WISE (Wang et al. 2024, Eq. 3) make the same kind of decision with one codebook key or one side memory.

:func:`inspect_prompt` returns an :class:`Inspection`, a frozen record of floats and strings:

- ``before`` / ``after``: greedy answers of the unedited and the edited model. The unedited answer comes from
  the same model with the editor's changes suspended (:meth:`minedit.patch.Patcher.suspended`: the original
  modules are put back for the block, then the edited ones), so nothing is left changed;
- ``layers``: per wrapped module, the router's weights over its experts (zero outside the chosen ones) and
  the experts that *fired*: those whose weight reached the layer after the gates (none when deferred);
- ``gates``: per gate, what it measured, its threshold, its decision and the **margin**, signed so that
  ``margin >= 0`` lets the prompt through and ``margin < 0`` defers it (how far it is from flipping).

The routing is recomputed from the features the mixture captured at the prompt's prefill
(``Mixture.capture``, ``Mixture.route``, ``Mixture.defer``): the same functions of the same inputs as at
inference, so the record is what the model used (``tests/test_inspection.py`` checks it against the
layers' outputs). Capturing uses hooks that are removed when the call returns.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import pandas as pd
import torch

from .editors.wise import activation_score
from .hooks import record
from .infer import generate_greedy, input_device, pad_id
from .moe import HammingGate, SimilarityGate
from .vision import text_tokenizer


@dataclass(frozen=True)
class LayerRoute:
    """One wrapped module's routing of the prompt."""

    module: str  # the wrapped module's name, e.g. "model.layers.18.mlp.down_proj"
    weights: tuple[float, ...]  # (E,) the router's weights before the gates: zero outside the chosen experts
    fired: tuple[int, ...]  # experts that changed this prompt's output (empty where the prompt is deferred)


@dataclass(frozen=True)
class GateCall:
    """One gate's decision on the prompt."""

    gate: str  # the gate's class, e.g. "SimilarityGate"
    measure: str  # what ``score`` is, e.g. "cosine to the nearest edit"
    score: float
    threshold: float
    margin: float  # >= 0: the gate lets the prompt through; < 0: it defers (WISE: > 0 passes, 0 defers)
    defer: bool


@dataclass(frozen=True)
class Inspection:
    """What an edited model does with one prompt (see the module docstring)."""

    prompt: str
    editor: str  # the editor's registry name
    before: str  # greedy answer of the unedited model
    after: str  # greedy answer of the edited model
    layers: tuple[LayerRoute, ...]
    gates: tuple[GateCall, ...]
    deferred: bool  # True: no expert (key, side memory) answers; the original model does

    def weights(self) -> pd.DataFrame:
        """Router weights, one row per wrapped layer and one column per expert (NaN past a layer's pool)."""
        width = max((len(layer.weights) for layer in self.layers), default=0)
        rows = {layer_label(layer.module): list(layer.weights) + [math.nan] * (width - len(layer.weights))
                for layer in self.layers}
        return pd.DataFrame.from_dict(rows, orient="index", columns=[f"e{e}" for e in range(width)])

    def table(self) -> pd.DataFrame:
        """One row per wrapped layer: pool size, the router's chosen experts with their weights, what fired."""
        rows = []
        for layer in self.layers:
            chosen = [(e, w) for e, w in enumerate(layer.weights) if w > 0]
            rows.append({"layer": layer_label(layer.module), "experts": len(layer.weights),
                         "router's choice": ", ".join(f"e{e} {w:.2f}" for e, w in chosen),
                         "fired": ", ".join(f"e{e}" for e in layer.fired) or "none (deferred)"})
        return pd.DataFrame(rows, columns=["layer", "experts", "router's choice", "fired"])

    def gate_table(self) -> pd.DataFrame:
        """One row per gate: what it measured, the threshold, the margin (>= 0 passes) and the decision."""
        return pd.DataFrame([{"gate": g.gate, "measures": g.measure, "score": g.score, "threshold": g.threshold,
                              "margin": g.margin, "defers": g.defer} for g in self.gates],
                            columns=["gate", "measures", "score", "threshold", "margin", "defers"])


def layer_label(module: str) -> str:
    """``"model.layers.18.mlp.down_proj"`` -> ``"layer 18"`` (the module name when it holds no layer number)."""
    found = re.search(r"\.(\d+)\.", module)
    return f"layer {found.group(1)}" if found else module


def wrapped_modules(editor) -> list[str]:
    """Names of the modules ``editor`` wrapped (empty before its first edit). Mixture editors (ELDER, LEMoE,
    LiveEdit), GRACE and WISE are supported; the others (FT, LoRA) change weights and route nothing."""
    if hasattr(editor, "mixture"):
        return list(editor.mixture.names) if editor.mixture is not None else []
    if hasattr(editor, "codebook") or hasattr(editor, "memory"):
        installed = getattr(editor, "codebook", None) or getattr(editor, "memory", None)
        return [editor.module_name] if installed is not None else []
    raise TypeError(f"cannot inspect editor {editor.name!r}: supported are mixture editors (elder, lemoe, "
                    "liveedit), grace and wise")


def inspect_prompt(editor, prompt: str, max_new_tokens: int = 6) -> Inspection:
    """The answers before and after ``editor``'s edits, and the routing and gate decisions on ``prompt``."""
    model, tok = editor.model, editor.tokenizer
    ids = text_tokenizer(tok)(prompt).input_ids
    names = wrapped_modules(editor)  # also refuses an editor it cannot inspect, before any work
    if not names:  # no edit yet: nothing is wrapped
        layers, gates, deferred = (), (), True
    elif hasattr(editor, "mixture"):
        layers, gates, deferred = _mixture_routing(editor.mixture, model, ids)
    else:
        layers, gates, deferred = _single_module_routing(editor, ids)
    after = _answer(model, tok, ids, max_new_tokens)
    with editor.patches.suspended():
        before = _answer(model, tok, ids, max_new_tokens)
    return Inspection(prompt, editor.name, before, after, layers, gates, deferred)


def summary(inspections: Sequence[Inspection]) -> pd.DataFrame:
    """One row per inspection: the answers, the experts that fired per layer, each gate's margin."""
    rows = []
    for ins in inspections:
        row = {"prompt": ins.prompt, "before": ins.before, "after": ins.after, "deferred": ins.deferred}
        for layer in ins.layers:
            row[f"fired, {layer_label(layer.module)}"] = ", ".join(f"e{e}" for e in layer.fired) or "-"
        for g in ins.gates:
            row[f"{g.gate} margin"] = g.margin
        rows.append(row)
    return pd.DataFrame(rows)


def plot_weights(inspection: Inspection, ax=None, title: str | None = None):
    """A seaborn heatmap of the router's weights (layer x expert); experts that fired are outlined. Returns ``ax``."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.patches import Rectangle

    frame = inspection.weights()
    if ax is None:
        _, ax = plt.subplots(figsize=(max(3.0, 0.45 * frame.shape[1] + 1.5), 0.5 * max(len(frame), 1) + 1.2))
    labels = frame.map(lambda w: f"{w:.2f}" if w > 0 else "")  # only the chosen experts are annotated
    sns.heatmap(frame, vmin=0, vmax=1, cmap="Blues", annot=labels, fmt="", cbar=False, linewidths=0.5,
                linecolor="white", mask=frame.isna(), ax=ax, annot_kws={"fontsize": 8})
    for row, layer in enumerate(inspection.layers):
        for e in layer.fired:
            ax.add_patch(Rectangle((e, row), 1, 1, fill=False, edgecolor="crimson", lw=2))
    state = "deferred: the original model answers" if inspection.deferred else "outlined: experts that fired"
    ax.set(title=title if title is not None else f"{inspection.prompt[:48]}\n{state}", xlabel="expert", ylabel="")
    ax.tick_params(axis="y", rotation=0)
    return ax


# --- capture ------------------------------------------------------------------------------------------
def _batch(model, ids: list[int]) -> dict[str, torch.Tensor]:
    device = input_device(model)
    return {"input_ids": torch.tensor([ids], device=device), "attention_mask": torch.ones(1, len(ids), dtype=torch.long, device=device)}


def _answer(model, tok, ids: list[int], max_new_tokens: int) -> str:
    out = generate_greedy(model, [ids], [max_new_tokens], pad_id(tok))[0]
    return text_tokenizer(tok).decode(out, skip_special_tokens=True).strip()


@torch.no_grad()
def _mixture_routing(mix, model, ids: list[int]) -> tuple[tuple[LayerRoute, ...], tuple[GateCall, ...], bool]:
    with mix.capture() as features:
        model(**_batch(model, ids))  # a prefill: the mixture's feature hooks fire and are captured
    routings = mix.route(features)
    deferred = bool(mix.defer(features, routings)[0])
    code = mix.code(routings)
    gates = tuple(gate_call(gate, features[gate.feature or mix.router_feature], code) for gate in mix.gates)
    layers = tuple(LayerRoute(name, tuple(r.weights[0].tolist()),
                              () if deferred else tuple(r.weights[0].nonzero().flatten().tolist()))
                   for name, r in zip(mix.names, routings))
    return layers, gates, deferred


def gate_call(gate, feature: torch.Tensor, code: torch.Tensor | None) -> GateCall:
    """A mixture gate's decision on one sequence (``feature`` (1, d), ``code`` (1, layers, k)) and its margin."""
    defer = bool(gate.defer(feature, code)[0])
    if isinstance(gate, HammingGate):
        dist = gate.distances(code)  # (1, N): bits to every stored code
        bits = float(dist.min()) if dist.shape[1] else math.inf
        return GateCall("HammingGate", "bits to the nearest edit's code", bits, float(gate.threshold),
                        float(gate.threshold) - bits, defer)
    if isinstance(gate, SimilarityGate):
        sim = float(gate.similarity(feature)[0])
        return GateCall("SimilarityGate", "cosine to the nearest edit", sim, float(gate.threshold),
                        sim - float(gate.threshold), defer)
    return GateCall(type(gate).__name__, "(unknown to the inspector)", math.nan, math.nan, math.nan, defer)


@torch.no_grad()
def _single_module_routing(editor, ids: list[int]) -> tuple[tuple[LayerRoute, ...], tuple[GateCall, ...], bool]:
    """GRACE (the nearest codebook key, within its radius or not) or WISE (the side memory whose activation
    score passes its eps): one wrapped module whose 'experts' are keys or memories, chosen with weight 1."""
    model, name = editor.model, editor.module_name
    with record(model, [name], point="input") as acts:
        model(**_batch(model, ids))
    x = acts[name]  # (1, L, d_in): the wrapped module's input, the query at the last prompt position
    if hasattr(editor, "codebook"):
        book = editor.codebook
        query = x[:, -1].float()
        choice = int(book.lookup(query)[0])  # the codebook's own decision: a key, or -1
        dist = torch.cdist(query, book.keys.to(query.device))[0]  # (K,)
        best = int(dist.argmin())
        distance, radius = float(dist[best]), float(book.radii[best])
        call = GateCall("GRACE radius", "distance to the nearest key", distance, radius, radius - distance, choice < 0)
        n = len(book.keys)
    else:
        mem = editor.memory
        choice = int(mem.route(x)[0])  # the side memory's own decision: a memory, or -1 (the main one)
        query = x[0, -1].to(mem.deltas.dtype)
        scores = activation_score(query[None, None], mem.deltas).squeeze(-1)  # (M,)
        gap = torch.where(torch.isfinite(mem.eps), scores - mem.eps, torch.full_like(scores, -math.inf))
        best = choice if choice >= 0 else int(gap.argmax())
        call = GateCall("WISE eps", "activation score of the side memory", float(scores[best]),
                        float(mem.eps[best]), float(gap[best]), choice < 0)
        n = len(mem.deltas)
    weights = tuple(1.0 if e == best else 0.0 for e in range(n))
    return (LayerRoute(name, weights, (choice,) if choice >= 0 else ()),), (call,), choice < 0
