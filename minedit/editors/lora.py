"""LoRA as a lifelong editor: one low-rank adapter, trained on each edit and kept across edits.

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models" (ICLR 2022), Sec. 4.1: a frozen
weight ``W0`` gets a trainable low-rank update,

    h = W0 x + (alpha / r) * B A x,      A: (r, d_in) random,  B: (d_out, r) zeros at the start,

so the model is unchanged until ``B`` learns. The adapter layers come from PEFT
(``inject_adapter_in_model``): each targeted Linear is replaced by a PEFT LoRA layer that keeps the
original module as ``base_layer``. The model stays the same Hugging Face object (no ``PeftModel``).

As an editor (EasyEdit's ``LoRA`` baseline) the same adapter takes every edit in turn, with no
routing: each edit pulls ``B A`` towards its own target, so early edits fade and unrelated prompts
that pass through the adapted layers change too. Notebook 01 shows that collapse; ELDER and LEMoE
(see MECHANISMS.md) are answers to it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer

from ..arch import arch_spec, default_edit_layer, layer_module_name, num_layers
from ..training import UpperStack, make_edit_batch, optimize
from .base import Editor, EditorConfig


@dataclass(frozen=True)
class LoRAEditorConfig(EditorConfig):
    layers: tuple[int, ...] | None = None  # decoder layers to adapt; None: the one default edit layer (2/3 depth)
    modules: tuple[str, ...] = ("mlp_out",)  # ArchSpec fields inside each layer, e.g. ("mlp_in", "mlp_out")
    rank: int = 8  # r; EasyEdit's LoRA baseline and ELDER's experts use 8
    alpha: float = 16.0  # scaling alpha / r = 2
    dropout: float = 0.0  # no dropout: an edit is one example, dropout only slows it down
    lr: float = 5e-3  # Adam lr for A and B (EasyEdit's); 1e-3 misses 2 of 20 single zsRE edits in 40 steps
    steps: int = 40  # max steps per edit; single zsRE edits on SmolLM2 need 10 on average, 15 at most
    stop_loss: float = 0.05  # stop once every target token is right and the loss is below this
    cache_lower: bool = True  # compute the frozen layers below the edited one once per edit (False: every step)


class LoRAEditor(Editor):
    """Sequential LoRA (Hu et al. 2021) through PEFT, registered as ``lora``."""

    name = "lora"
    config_class = LoRAEditorConfig

    def __init__(self, model, tokenizer, config: LoRAEditorConfig | None = None):
        super().__init__(model, tokenizer, config)
        layers = self.config.layers if self.config.layers is not None else (default_edit_layer(model),)
        if not layers or not self.config.modules:
            raise ValueError("LoRA needs at least one layer and one module")
        self.module_names = [layer_module_name(model, layer, part) for layer in layers for part in self.config.modules]
        # Everything below the lowest adapted layer is frozen: UpperStack caches it once per edit.
        self.first_layer = min(layer % num_layers(model) for layer in layers)
        self.injected = False

    def _install(self) -> None:
        if self.injected:
            return
        if hasattr(self.model, "peft_config"):
            raise ValueError("the model already carries PEFT adapters; restore or reload it first")
        originals = {name: self.model.get_submodule(name) for name in self.module_names}
        config = LoraConfig(
            r=self.config.rank, lora_alpha=self.config.alpha, lora_dropout=self.config.dropout,
            target_modules=list(self.module_names),  # full names: exactly these modules, no suffix matching
            fan_in_fan_out=arch_spec(self.model).conv1d,  # GPT-2's Conv1D stores W transposed
        )
        # Restore bookkeeping first: Editor.restore() puts each original back where PEFT's wrapper is,
        # and a failed injection (say, a module PEFT cannot wrap) is undone the same way.
        for name, original in originals.items():
            self.patches.swapped_elsewhere(name, original)
        self.injected = True
        try:
            # A's random init comes from the config seed, without disturbing the caller's global RNG.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.config.seed)
                inject_adapter_in_model(config, self.model)
            for name, original in originals.items():
                if getattr(self.model.get_submodule(name), "base_layer", None) is not original:
                    raise RuntimeError(f"PEFT did not wrap {name!r} as expected")
        except Exception:
            self.restore()
            raise
        self._set_trainable(False)  # A and B learn only inside an edit

    def lora_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The adapter's A and B matrices, by their names in the model's state dict."""
        return {n: p for n, p in self.model.named_parameters() if ".lora_" in n}

    def _set_trainable(self, on: bool) -> None:
        for p in self.lora_parameters().values():
            p.requires_grad_(on)
            if not on:
                p.grad = None

    def _edit_one(self, request) -> dict:
        self._install()
        batch = make_edit_batch(self.tokenizer, [request.prompt], [request.target], [request.image])
        stack = UpperStack(self.model, self.first_layer if self.config.cache_lower else 0, batch)
        self._set_trainable(True)
        try:
            # A fresh Adam per edit (the adapter persists, the optimiser state does not), as EasyEdit does.
            return optimize(self.lora_parameters().values(), lambda: stack.target_loss(batch.labels),
                            self.config.steps, self.config.lr, self.config.stop_loss)
        finally:
            self._set_trainable(False)

    def _reset(self) -> None:
        # Editor.restore() has put the original modules back; drop what PEFT left on the model.
        if self.injected and "peft_config" in vars(self.model):
            del self.model.peft_config
        self.injected = False

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.lora_parameters()) if self.injected else {}

    def state_meta(self) -> dict:
        return {"modules": self.module_names, "first_layer": self.first_layer}

    def load_state(self, tensors, meta) -> None:
        if not tensors:
            return
        if list(meta.get("modules", self.module_names)) != self.module_names:
            raise ValueError(f"saved adapter targets {meta['modules']}, this config targets {self.module_names}")
        self._install()
        params = self.lora_parameters()
        if set(tensors) != set(params):
            raise ValueError(f"saved adapter tensors do not match: {sorted(set(tensors) ^ set(params))[:4]}")
        with torch.no_grad():
            for name, value in tensors.items():
                params[name].copy_(value)


def peft_modules(model) -> list[str]:
    """Names of PEFT adapter layers still in ``model`` (empty after a clean restore)."""
    return [n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
