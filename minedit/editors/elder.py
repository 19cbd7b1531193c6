"""ELDER: a mixture of LoRA experts with guided routing and deferral by routing codes.

Li et al., "ELDER: Enhancing Lifelong Model Editing with Mixture-of-LoRA" (AAAI 2025):
- Sec. 3.1, Eq. 1-2: the MLP output projection of a few late layers becomes W x + sum_topk g_e B_e A_e x,
  with g from a softmax router over one sequence-level feature (:mod:`minedit.moe`);
- Sec. 3.2, guided loss: each edit gets a preset expert set per layer and the router is trained with
  -log p(preset) next to the LM loss, so the same knowledge keeps the same allocation;
- Sec. 3.3, deferral: an edit's top-k choices in every layer form a binary code; at inference the
  experts apply only if the input's code is within a Hamming threshold of a stored code.

Per edit, only the layers from the lowest wrapped one upwards are re-run (``UpperStack``); the routing
feature comes from a lower layer, so it is captured once, in the cached pass, and routed by the same
function during training and inference.

``remedy``: what minedit adds to the published form (``remedy=()`` or ``"none"``), one part each;
notebook 03 measures the published form's shortfall over 100 sequential edits and each part's share:
- ``"fresh"``: each edit's preset is k experts that no earlier edit trained (the pool grows by k per
  layer once all are taken, as LEMoE grows one expert per batch); after the edit they and their
  router rows are frozen. Published ELDER draws the preset among E shared experts, so a later edit
  overwrites what an earlier one stored in a shared expert.
- ``"anchor"``: a cosine router whose fresh rows start at the edit's own feature. A new expert then
  wins near its edit and nowhere else; with ELDER's Linear router every new edit's guided loss
  pulls the others' features towards its experts too (router drift).
- ``"similarity"``: a :class:`~minedit.moe.gates.SimilarityGate` next to the code memory: once every
  edit has experts of its own, an unrelated input still routes exactly like *some* edit (its code
  is stored), and only its distance to every edit's feature tells it apart.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch

from ..arch import default_edit_layer, layer_module_name, num_layers
from ..moe import (CosineTopKRouter, HammingGate, LastTokenHidden, MeanAndLastHidden, MeanPooledHidden, Mixture,
                   SimilarityGate, TopKRouter, guided_loss)
from ..sequence import tracker_for
from ..training import UpperStack, make_edit_batch, optimize
from .base import Editor, EditorConfig

REMEDIES = ("fresh", "anchor", "similarity")
FEATURES = {"mean+last": MeanAndLastHidden, "mean": MeanPooledHidden, "last": LastTokenHidden}


@dataclass(frozen=True)
class ElderConfig(EditorConfig):
    layers: Optional[tuple[int, ...]] = None  # wrapped decoder layers; None: the 3 ending at 2/3 depth (18-20 of 30)
    module: str = "mlp_out"  # ArchSpec field wrapped in each layer (ELDER: the FFN output projection)
    n_experts: int = 8  # initial experts per layer (ELDER's public code)
    rank: int = 8  # LoRA rank of each expert (ELDER's public code)
    alpha: float = 16.0  # LoRA scale alpha / r = 2, as minedit's LoRA baseline
    top_k: int = 2  # experts per layer and sequence (ELDER's public code)
    feature: str = "mean+last"  # routing feature (see minedit.moe.features): "mean+last", "mean" or "last"
    feature_layer: Optional[int] = None  # its decoder layer (-1: embeddings); None: 0, or 2/5 of the depth for "last"
    last_weight: float = 0.5  # "mean+last": weight of the last-token half
    steps: int = 40  # max optimisation steps per edit
    lr: float = 1e-2  # Adam lr of experts and router (a fresh expert starts at B = 0 and has few steps)
    stop_loss: float = 0.05  # stop once the preset is routed to, all target tokens are right and LM loss < this
    guided_weight: float = 1.0  # weight of the guided loss (not published)
    hamming_threshold: int = 0  # deferral: max differing code bits to a stored code (not published)
    remedy: Union[tuple[str, ...], str] = REMEDIES  # parts of minedit's remedy, see above; () or "none": as published
    tau: float = 50.0  # "anchor": cosine router sharpness
    min_similarity: float = 0.85  # "similarity": defer below this cosine similarity to every edit's feature


class ElderEditor(Editor):
    """ELDER (Li et al. 2024) on :mod:`minedit.moe`, registered as ``elder``."""

    name = "elder"
    config_class = ElderConfig

    def __init__(self, model, tokenizer, config: ElderConfig | None = None):
        super().__init__(model, tokenizer, config)
        c = self.config
        self.remedy = () if c.remedy in ("none", ()) else (c.remedy,) if isinstance(c.remedy, str) else tuple(c.remedy)
        if set(self.remedy) - set(REMEDIES):
            unknown = sorted(set(self.remedy) - set(REMEDIES))
            raise ValueError(f"unknown remedy part(s) {unknown}; use some of {REMEDIES}")
        if "anchor" in self.remedy and "fresh" not in self.remedy:
            raise ValueError("remedy 'anchor' needs 'fresh': a row anchored at one edit cannot serve shared experts")
        if c.feature not in FEATURES:
            raise ValueError(f"unknown feature {c.feature!r}; use one of {sorted(FEATURES)}")
        if not 1 <= c.top_k <= c.n_experts:
            raise ValueError(f"top_k must be in 1..n_experts, got {c.top_k} of {c.n_experts}")
        n = num_layers(model)
        top = default_edit_layer(model)
        layers = c.layers if c.layers is not None else tuple(range(max(1, top - 2), top + 1))
        self.layers = sorted({layer % n for layer in layers})
        self.module_names = [layer_module_name(model, layer, c.module) for layer in self.layers]
        self.first_layer = self.layers[0]  # UpperStack re-runs the layers from here on
        if c.feature_layer is not None:
            self.feature_layer = c.feature_layer if c.feature_layer < 0 else c.feature_layer % n
        else:  # pooled: the first layer's output (notebook 03: rephrases land nearest their edit); last: 2/5 depth
            self.feature_layer = 0 if c.feature != "last" else min(self.first_layer - 1, (2 * n) // 5)
        if self.feature_layer >= self.first_layer:
            raise ValueError(f"feature_layer {self.feature_layer} must lie below the lowest wrapped layer "
                             f"{self.first_layer}: the routing feature must not depend on the experts")
        self.mixture: Mixture | None = None
        self._reset_memory()

    def _reset_memory(self) -> None:
        self.features = torch.zeros(0, 0)  # (N, d): each edit's routing feature (for inspection)
        self.presets = torch.zeros(0, len(self.layers), self.config.top_k, dtype=torch.long)  # (N, layers, k)

    # --- structure -----------------------------------------------------------------------------
    def _install(self) -> Mixture:
        if self.mixture is None:
            c = self.config
            gen = torch.Generator().manual_seed(c.seed)
            d = self.model.get_input_embeddings().weight.shape[1]
            if c.feature == "mean+last":
                feature, d = MeanAndLastHidden(self.feature_layer, c.last_weight), 2 * d
            else:
                feature = FEATURES[c.feature](self.feature_layer)
            if "anchor" in self.remedy:
                routers = [CosineTopKRouter(d, 0, c.top_k, c.tau) for _ in self.layers]
            else:
                routers = [TopKRouter(d, 0, c.top_k) for _ in self.layers]
            gates = [HammingGate(c.hamming_threshold)]
            if "similarity" in self.remedy:
                gates.append(SimilarityGate(c.min_similarity))
            device = self.model.get_input_embeddings().weight.device
            mixture = Mixture(self.model, tracker_for(self.model), feature, [r.to(device) for r in routers], gates)
            mixture.install(self.module_names, self._swap_module)
            for i, router in enumerate(mixture.routers):
                mixture.add_experts(i, c.n_experts, c.rank, c.alpha, gen)
                router.requires_grad_(False)
            self.mixture = mixture
        return self.mixture

    def _preset(self, gen: torch.Generator, feature: torch.Tensor) -> torch.Tensor:
        """(layers, k) expert indices this edit is guided to (allocating fresh experts if needed)."""
        mix, c = self.mixture, self.config
        rows = []
        for i, wrapper in enumerate(mix.wrappers):
            if "fresh" not in self.remedy:  # ELDER: a random preset set among the shared experts
                rows.append(torch.randperm(len(wrapper.experts), generator=gen)[: c.top_k].sort().values)
                continue
            free = [e for e, expert in enumerate(wrapper.experts) if not expert.frozen]
            if len(free) < c.top_k:
                free += mix.add_experts(i, c.top_k - len(free), c.rank, c.alpha, gen)
            rows.append(torch.tensor(free[: c.top_k]))
            if "anchor" in self.remedy:
                mix.routers[i].anchor(rows[-1], feature[0])
        return torch.stack(rows)

    # --- editing -------------------------------------------------------------------------------
    def _edit_one(self, request) -> dict:
        mix, c = self._install(), self.config
        gen = self._generator()
        batch = make_edit_batch(self.tokenizer, [request.prompt], [request.target], [request.image])
        with mix.tracker.teacher_forcing(batch.key_positions):
            stack = UpperStack(self.model, self.first_layer, batch)  # the feature hook fires in this pass
        feature = mix.feature.value.clone()  # (1, d)
        preset = self._preset(gen, feature)  # (layers, k), on the CPU
        target = preset.to(feature.device)
        if "fresh" in self.remedy:  # only the edit's own experts learn (a free expert stays fresh)
            experts = [mix.wrappers[i].experts[e] for i, row in enumerate(preset.tolist()) for e in row]
        else:  # ELDER: whichever shared experts the router picks
            experts = [e for w in mix.wrappers for e in w.experts]
        params = [p for e in experts for p in e.parameters()] + [p for r in mix.routers for p in r.parameters()]

        def step():
            routings = mix.route(feature)
            mix.publish([r.weights for r in routings])
            with mix.tracker.teacher_forcing(batch.key_positions):
                loss, acc = stack.target_loss(batch.labels)
            guide = sum(guided_loss(r.probs, target[i][None]) for i, r in enumerate(routings)) / len(routings)
            on_preset = torch.equal(mix.code(routings)[0], target)
            # Gradient of LM + guided loss; the value optimize() checks for early stopping is the LM loss,
            # and the targets count as right only once the router picks the preset.
            return loss + c.guided_weight * (guide - guide.detach()), acc if on_preset else 0.0

        for p in params:
            p.requires_grad_(True)
        try:
            stats = optimize(params, step, c.steps, c.lr, c.stop_loss)
        finally:
            for p in params:
                p.requires_grad_(False)
                p.grad = None
            mix.state.clear()
        if "fresh" in self.remedy:  # the edit's experts and router rows keep what they learnt
            for i, row in enumerate(preset):
                for e in row.tolist():
                    mix.wrappers[i].experts[e].freeze()
                mix.routers[i].freeze_rows(row)
        code = mix.remember(feature).cpu()  # the edit's code (and feature) into the gates
        feature = feature.cpu()
        self.features = feature if len(self.features) == 0 else torch.cat([self.features, feature])
        self.presets = torch.cat([self.presets, preset[None]])
        return {**stats, "routed_to_preset": bool(torch.equal(code, preset)), "experts": sum(mix.n_experts())}

    # --- restore, save, load -------------------------------------------------------------------
    def _reset(self) -> None:
        if self.mixture is not None:
            self.mixture.remove()
            self.mixture.tracker.release()
        self.mixture = None
        self._reset_memory()

    def state_tensors(self) -> dict[str, torch.Tensor]:
        mix = self.mixture
        if mix is None:
            return {}
        out = {"features": self.features, "presets": self.presets}
        for g, gate in enumerate(mix.gates):
            out[f"gate{g}"] = gate.codes if isinstance(gate, HammingGate) else gate.keys
        for i, (wrapper, router) in enumerate(zip(mix.wrappers, mix.routers)):
            out[f"layer{i}.A"] = torch.stack([e.A for e in wrapper.experts])  # (E, r, d_in)
            out[f"layer{i}.B"] = torch.stack([e.B for e in wrapper.experts])  # (E, d_out, r)
            out[f"router{i}.weight"], out[f"router{i}.bias"] = router.weight, router.bias
        return out

    def state_meta(self) -> dict:
        mix = self.mixture
        frozen = [[e.frozen for e in w.experts] for w in mix.wrappers] if mix else []
        return {"modules": self.module_names, "feature_layer": self.feature_layer, "frozen": frozen}

    def load_state(self, tensors, meta) -> None:
        if not tensors:
            return
        if list(meta.get("modules", self.module_names)) != self.module_names:
            raise ValueError(f"saved ELDER wraps {meta['modules']}, this config wraps {self.module_names}")
        mix = self._install()
        with torch.no_grad():
            for i, wrapper in enumerate(mix.wrappers):
                A, B = tensors[f"layer{i}.A"], tensors[f"layer{i}.B"]
                if len(A) > len(wrapper.experts):
                    mix.add_experts(i, len(A) - len(wrapper.experts), self.config.rank, self.config.alpha)
                for e, expert in enumerate(wrapper.experts):
                    expert.A.copy_(A[e])
                    expert.B.copy_(B[e])
                    if meta["frozen"][i][e]:
                        expert.freeze()
                        mix.routers[i].freeze_rows(torch.tensor([e]))
                mix.routers[i].weight.copy_(tensors[f"router{i}.weight"])
                mix.routers[i].bias.copy_(tensors[f"router{i}.bias"])
        for g, gate in enumerate(mix.gates):
            if isinstance(gate, HammingGate):
                gate.codes = tensors[f"gate{g}"].long()
            else:
                gate.keys = tensors[f"gate{g}"]
        self.features, self.presets = tensors["features"], tensors["presets"].long()
