"""ELDER: a mixture of LoRA experts with guided routing and deferral by routing codes.

Li et al., "ELDER: Enhancing Lifelong Model Editing with Mixture-of-LoRA" (AAAI 2025):
- Sec. 3.1, Eq. 1-2: the MLP output projection of a few late layers becomes W x + sum_topk g_e B_e A_e x,
  with g from a softmax router over one sequence-level feature (:mod:`minedit.moe`);
- Sec. 3.2, guided loss: each edit gets a preset expert set per layer and the router is trained with
  -log p(preset) next to the LM loss, so the same knowledge keeps the same allocation;
- Sec. 3.3, deferral: an edit's top-k choices in every layer form a binary code; at inference the
  experts apply only if the input's code is within a Hamming threshold of a stored code.

Composed from :mod:`minedit.moe` parts, each picked by name: ``feature`` (FEATURES), ``router``
(ROUTERS), ``gate`` (GATES), and the allocation policy that ``remedy`` implies (POLICIES).

Per edit, only the layers from the lowest wrapped one upwards are re-run (``UpperStack``); the routing
feature comes from a lower layer, so it is captured once, in the cached pass, and routed by the same
function during training and inference.

``remedy``: what minedit adds to the published form (``remedy=()`` or ``"none"``), one part each;
notebook 04 measures the published form's shortfall over 100 sequential edits and each part's share:
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
from ..errors import ConfigError
from ..moe import FEATURES, GATES, ROUTERS, ExpertSpec, FreshExperts, HammingGate, Mixture, SharedPreset, guided_loss
from ..training import UpperStack, make_edit_batch, optimize, trainable
from .base import Editor, EditorConfig

REMEDIES = ("fresh", "anchor", "similarity")


@dataclass(frozen=True)
class ElderConfig(EditorConfig):
    layers: Optional[tuple[int, ...]] = None  # wrapped decoder layers; None: the 3 ending at 2/3 depth (18-20 of 30)
    module: str = "mlp_out"  # ArchSpec field wrapped in each layer (ELDER: the FFN output projection)
    n_experts: int = 8  # initial experts per layer (ELDER's public code)
    rank: int = 8  # LoRA rank of each expert (ELDER's public code)
    alpha: float = 16.0  # LoRA scale alpha / r = 2, as minedit's LoRA baseline
    top_k: int = 2  # experts per layer and sequence (ELDER's public code)
    feature: str = "mean+last"  # routing feature, a FEATURES name: "mean+last", "mean", "last" (notebook 03)
    feature_layer: Optional[int] = None  # its decoder layer (-1: embeddings); None: 0, or 2/5 of the depth for "last"
    last_weight: float = 0.5  # "mean+last": weight of the last-token half
    router: Optional[str] = None  # a ROUTERS name; None: "cosine" with the "anchor" remedy, else ELDER's "topk"
    gate: Optional[str] = None  # a GATES name beside the code memory; None: "similarity" with that remedy; "none"
    steps: int = 40  # max optimisation steps per edit
    lr: float = 1e-2  # Adam lr of experts and router (a fresh expert starts at B = 0 and has few steps)
    stop_loss: float = 0.05  # stop once the preset is routed to, all target tokens are right and LM loss < this
    guided_weight: float = 1.0  # weight of the guided loss (not published)
    hamming_threshold: int = 0  # deferral: max differing code bits to a stored code (not published)
    remedy: Union[tuple[str, ...], str] = REMEDIES  # parts of minedit's remedy, see above; () or "none": as published
    tau: float = 50.0  # "cosine" router sharpness
    min_similarity: float = 0.85  # threshold of the extra gate ("similarity": defer below this cosine similarity)


class ElderEditor(Editor):
    """ELDER (Li et al. 2024) on :mod:`minedit.moe`, registered as ``elder``."""

    name = "elder"
    config_class = ElderConfig

    def __init__(self, model, tokenizer, config: ElderConfig | None = None):
        super().__init__(model, tokenizer, config)
        c = self.config
        remedy = () if c.remedy in ("none", ()) else (c.remedy,) if isinstance(c.remedy, str) else tuple(c.remedy)
        if set(remedy) - set(REMEDIES):
            raise ConfigError(f"unknown remedy part(s) {sorted(set(remedy) - set(REMEDIES))}; use some of {REMEDIES}")
        if "anchor" in remedy and "fresh" not in remedy:
            raise ConfigError("remedy 'anchor' needs 'fresh': a row anchored at one edit cannot serve shared experts")
        if not 1 <= c.top_k <= c.n_experts:
            raise ConfigError(f"top_k must be in 1..n_experts, got {c.top_k} of {c.n_experts}")
        self.remedy = remedy
        n, top = num_layers(model), default_edit_layer(model)
        self.layers = sorted({layer % n for layer in (c.layers if c.layers is not None else range(max(1, top - 2), top + 1))})
        self.module_names = [layer_module_name(model, layer, c.module) for layer in self.layers]
        self.first_layer = self.layers[0]  # UpperStack re-runs the layers from here on
        # pooled: the first layer's output (notebook 03: rephrases land nearest their edit); last: 2/5 depth
        default = 0 if c.feature != "last" else min(self.first_layer - 1, (2 * n) // 5)
        self.feature_layer = c.feature_layer if c.feature_layer is not None else default
        FEATURES.build(c.feature, layer=self.feature_layer).check_below(self.first_layer)
        self.router_name = c.router or ("cosine" if "anchor" in remedy else "topk")
        self.gate_name = c.gate or ("similarity" if "similarity" in remedy else "none")
        ROUTERS.get(self.router_name)  # unknown names fail here, before any edit
        if self.gate_name != "none":
            GATES.get(self.gate_name)
        spec = ExpertSpec("lora", c.rank, c.alpha)
        self.policy = FreshExperts(spec, c.top_k, "anchor" in remedy) if "fresh" in remedy else SharedPreset(spec, c.top_k)
        self.mixture: Mixture | None = None
        self._reset()

    def _reset(self) -> None:
        self.mixture = None
        self.features = torch.zeros(0, 0)  # (N, d): each edit's routing feature (for inspection)
        self.presets = torch.zeros(0, len(self.layers), self.config.top_k, dtype=torch.long)  # (N, layers, k)

    def _install(self) -> Mixture:
        if self.mixture is None:
            c, gen = self.config, torch.Generator().manual_seed(self.config.seed)
            feature = FEATURES.build(c.feature, layer=self.feature_layer, last_weight=c.last_weight)
            d = feature.dim(self.model)
            routers = [ROUTERS.build(self.router_name, d=d, n_experts=0, k=c.top_k, tau=c.tau) for _ in self.layers]
            gates = [HammingGate(c.hamming_threshold)]
            if self.gate_name != "none":
                gates.append(GATES.build(self.gate_name, threshold=c.min_similarity))
            self.mixture = Mixture(self.model, feature, routers, gates)
            self.mixture.install(self.module_names, self.patches)
            for i in range(len(self.layers)):
                self.policy.new_experts(self.mixture, i, c.n_experts, gen)
            self.mixture.routers.requires_grad_(False)
        return self.mixture

    def _edit_one(self, request) -> dict:
        mix, c = self._install(), self.config
        batch = make_edit_batch(self.tokenizer, [request.prompt], [request.target], [request.image])
        with mix.tracker.teacher_forcing(batch.key_positions), mix.capture() as features:
            stack = UpperStack(self.model, self.first_layer, batch)  # the feature hooks fire in this pass
        feature = features[mix.router_feature]  # (1, d)
        allocation = self.policy.allocate(mix, feature, self._generator())
        target = allocation.preset.to(feature.device)  # (layers, k)
        params = [p for e in allocation.trainable for p in e.parameters()] + list(mix.routers.parameters())

        def step():
            with mix.routed(features) as routings, mix.tracker.teacher_forcing(batch.key_positions):
                loss, acc = stack.target_loss(batch.labels)
            guide = sum(guided_loss(r.probs, target[i][None]) for i, r in enumerate(routings)) / len(routings)
            on_preset = torch.equal(mix.code(routings)[0], target)
            # Gradient of LM + guided loss; the value optimize() checks for early stopping is the LM loss,
            # and the targets count as right only once the router picks the preset.
            return loss + c.guided_weight * (guide - guide.detach()), acc if on_preset else 0.0

        with trainable(params):
            stats = optimize(params, step, c.steps, c.lr, c.stop_loss)
        self.policy.commit(mix, allocation)  # fresh experts and their router rows keep what they learnt
        code = mix.remember(features).cpu()  # the edit's code (and feature) into the gates
        feature = feature.cpu()
        self.features = feature if len(self.features) == 0 else torch.cat([self.features, feature])
        self.presets = torch.cat([self.presets, allocation.preset[None]])
        return {**stats, "routed_to_preset": bool(torch.equal(code, allocation.preset)), "experts": sum(mix.n_experts())}

    # --- save, load ----------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        if self.mixture is None:
            return {}
        return {"features": self.features, "presets": self.presets,
                **{f"mixture.{k}": v for k, v in self.mixture.state_dict().items()}}

    def state_meta(self) -> dict:
        return {"modules": self.module_names, "feature_layer": self.feature_layer}

    def load_state(self, tensors, meta) -> None:
        if not tensors:
            return
        if list(meta.get("modules", self.module_names)) != self.module_names:
            raise ConfigError(f"saved ELDER wraps {meta['modules']}, this config wraps {self.module_names}")
        self._install().load_state_dict({k[len("mixture."):]: v for k, v in tensors.items() if k.startswith("mixture.")})
        self.features, self.presets = tensors["features"], tensors["presets"].long()
