"""LiveEdit: one generated low-rank expert per edit, routed by a visual hard filter and textual soft routing.

Chen et al. 2024, "Lifelong Knowledge Editing for Vision Language Models with Low-Rank Mixture-of-Experts"
(CVPR 2025). Composed from :mod:`minedit.moe` parts:

- Sec. 3.2, the expert generator (:class:`~minedit.moe.generator.ExpertGenerator`): the edit runs once
  through the frozen model (image, question and answer, teacher-forced); its hidden states at the
  input of the edited layer become a rank-4 :class:`~minedit.moe.experts.FactorExpert`
  ``ReLU(LN(h) U^T) V`` beside that layer's MLP. **No optimisation per edit**: ``edit_batch``
  generates a whole batch's experts in one forward pass.
- Sec. 3.3, routing (:class:`~minedit.moe.filtering.VisualFilterRouter`) on the
  :class:`~minedit.moe.features.ImageTextHidden` feature of the layer below: an expert survives only if
  the query image is nearer its edit's image than the learned vision sentinel; survivors are weighted by
  ``softmax(s) * sigmoid(s)`` over text similarity. A text-only query keeps no expert.

The generator and the routing projections are trained offline (``python -m minedit.zoo build
liveedit-generator``, :mod:`minedit.zoo.build_liveedit`) for one model; the artifact records the layer
and widths, and this editor refuses a model they do not fit.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from safetensors.torch import load_file

from ..arch import layer_module_name, num_layers
from ..errors import ConfigError
from ..moe import FactorExpert, ImageTextHidden, Mixture
from ..moe.filtering import VisualFilterRouter
from ..moe.generator import ExpertGenerator, segments_for
from ..training import UpperStack, make_edit_batch
from .base import Editor, EditorConfig

ARTIFACT_FILES = ("generator.safetensors", "liveedit.json")


@dataclass(frozen=True)
class LiveEditConfig(EditorConfig):
    # folder of a trained generator (None: the one shipped for tiny-llava in data_samples/liveedit);
    # the layer, rank and widths are the artifact's: a generator is trained for them
    generator: Optional[str] = None


def read_artifact(folder: "str | Path | None") -> tuple[dict, dict[str, torch.Tensor]]:
    """(``liveedit.json``, tensors) of a generator artifact; a missing one is a user error saying how to build it."""
    if folder is None:
        from ..zoo.build_liveedit import artifact_dir

        folder = artifact_dir()
    folder = Path(folder)
    if not all((folder / name).is_file() for name in ARTIFACT_FILES):
        raise ConfigError(f"{folder}: no LiveEdit generator here ({', '.join(ARTIFACT_FILES)}); "
                          "build one with: python -m minedit.zoo build liveedit-generator")
    meta = json.loads((folder / "liveedit.json").read_text(encoding="utf-8"))
    return meta, load_file(str(folder / "generator.safetensors"))


class LiveEditEditor(Editor):
    """LiveEdit (Chen et al. 2024) on :mod:`minedit.moe`, registered as ``liveedit``."""

    name = "liveedit"
    config_class = LiveEditConfig

    def __init__(self, model, tokenizer, config: LiveEditConfig | None = None):
        super().__init__(model, tokenizer, config)
        meta, tensors = read_artifact(self.config.generator)
        d, recipe = model.get_input_embeddings().weight.shape[1], meta["recipe"]
        if meta["d"] != d or not 0 < meta["layer"] < num_layers(model):
            raise ConfigError(f"the generator was trained for width {meta['d']} at layer {meta['layer']}; "
                              f"this model has width {d} and {num_layers(model)} layers")
        self.layer, self.meta = meta["layer"], meta
        self.module_name = layer_module_name(model, self.layer, "mlp")
        self.generator = ExpertGenerator(d, recipe["rank"], recipe["width"], recipe["heads"])
        self.generator.load_state_dict({k[len("generator."):]: v for k, v in tensors.items() if k.startswith("generator.")})
        self.generator.requires_grad_(False).eval().to(model.get_input_embeddings().weight.device)
        self._router_state = {k[len("router."):]: v for k, v in tensors.items() if k.startswith("router.")}
        self.mixture: Mixture | None = None

    def _reset(self) -> None:
        self.mixture = None

    def _install(self) -> Mixture:
        if self.mixture is None:
            d = self.model.get_input_embeddings().weight.shape[1]
            router = VisualFilterRouter(2 * d, self.meta["recipe"]["route_width"])
            router.load_state_dict({**self._router_state, "keys_image": router.keys_image,
                                    "keys_text": router.keys_text})
            self.mixture = Mixture(self.model, ImageTextHidden(self.layer - 1), [router])
            self.mixture.install([self.module_name], self.patches)
            router.requires_grad_(False)
        return self.mixture

    @torch.no_grad()
    def edit_batch(self, requests: Sequence) -> list[dict[str, Any]]:
        """One forward pass for the whole batch: an expert and its routing keys per edit, nothing trained."""
        mix = self._install()
        batch = make_edit_batch(self.tokenizer, [r.prompt for r in requests], [r.target for r in requests],
                                [r.image for r in requests])
        with mix.tracker.teacher_forcing(batch.key_positions), mix.capture() as features:
            hidden = UpperStack(self.model, self.layer, batch).hidden  # (B, L, d) the edited layer's input
        segments = segments_for(batch.input_ids, batch.attention_mask, batch.key_positions,
                                getattr(self.model.config, "image_token_id", None))
        U, V = self.generator(hidden, segments.to(hidden.device))  # (B, r, d) each
        new = mix.add_experts(0, [FactorExpert(U[i], V[i]) for i in range(len(requests))])
        mix.routers[0].anchor(torch.tensor(new), features[mix.router_feature])
        self.n_edits += len(requests)
        return [{"expert": e, "experts": mix.n_experts()[0]} for e in new]

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {} if self.mixture is None else self.mixture.state_dict()

    def state_meta(self) -> dict:
        return {"module": self.module_name, "generator": self.config.generator}

    def load_state(self, tensors, meta) -> None:
        if tensors:
            self._install().load_state_dict(tensors)
