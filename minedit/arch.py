"""Architecture table: where the decoder layers and MLP modules of a Hugging Face model live.

Every editor asks this table, keyed by ``config.model_type`` (never by a substring of a model
name), which module to wrap. Paths are dotted names as in ``model.named_modules()``.
Template idea after EasyEdit's per-architecture hparams, kept apart from method settings.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch.nn as nn

from .errors import UserError


class UnknownArchitectureError(UserError, ValueError):
    """Raised for a ``model_type`` that the table does not list."""


@dataclass(frozen=True)
class ArchSpec:
    """Module paths of one decoder-only architecture.

    ``layer`` paths are relative to one decoder block; the others are absolute.
    """

    layers: str  # ModuleList of decoder blocks
    embed: str  # token embedding
    final_norm: str  # norm before the LM head
    mlp: str  # MLP block inside a decoder block
    mlp_in: str  # first MLP projection (d -> d_ff); "up" projection
    mlp_out: str  # MLP output projection (d_ff -> d); the "value" matrix editors touch
    attn: str  # attention block inside a decoder block
    conv1d: bool = False  # GPT-2 stores Linear weights transposed (transformers' Conv1D)
    # the MLP's output is added to the residual stream as is (no norm after it; parallel blocks too), so a
    # layer's output minus its MLP's output does not depend on the MLP (UpperStack(from_mlp=True) relies on it);
    # False for post-norm blocks such as Gemma 2's
    mlp_residual: bool = True


_LLAMA_LIKE = ArchSpec(
    layers="model.layers", embed="model.embed_tokens", final_norm="model.norm",
    mlp="mlp", mlp_in="mlp.up_proj", mlp_out="mlp.down_proj", attn="self_attn",
)

ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "phi3": replace(_LLAMA_LIKE, mlp_in="mlp.gate_up_proj"),
    "gpt2": ArchSpec(
        layers="transformer.h", embed="transformer.wte", final_norm="transformer.ln_f",
        mlp="mlp", mlp_in="mlp.c_fc", mlp_out="mlp.c_proj", attn="attn", conv1d=True,
    ),
    "gptj": ArchSpec(
        layers="transformer.h", embed="transformer.wte", final_norm="transformer.ln_f",
        mlp="mlp", mlp_in="mlp.fc_in", mlp_out="mlp.fc_out", attn="attn",
    ),
    "gpt_neox": ArchSpec(
        layers="gpt_neox.layers", embed="gpt_neox.embed_in", final_norm="gpt_neox.final_layer_norm",
        mlp="mlp", mlp_in="mlp.dense_h_to_4h", mlp_out="mlp.dense_4h_to_h", attn="attention",
    ),
}

# Multimodal wrappers: the language model's spec, with its absolute paths under a prefix.
# Newer transformers keep LLaVA's text model at ``model.language_model``; older ones at
# ``language_model`` (whose own spec then starts with ``model.``). The first prefix that exists wins.
_MULTIMODAL_PREFIXES: dict[str, tuple[str, ...]] = {
    "llava": ("model.language_model.", "language_model."),
    "llava_next": ("model.language_model.", "language_model."),
}


def _prefixed(spec: ArchSpec, prefix: str, strip: str = "") -> ArchSpec:
    def fix(path: str) -> str:
        return prefix + (path[len(strip):] if strip and path.startswith(strip) else path)

    return replace(spec, layers=fix(spec.layers), embed=fix(spec.embed), final_norm=fix(spec.final_norm))


def arch_spec(model: nn.Module) -> ArchSpec:
    """The :class:`ArchSpec` for ``model``, looked up by ``model.config.model_type``."""
    config = model.config
    model_type = config.model_type
    if model_type in _MULTIMODAL_PREFIXES:
        text_type = config.text_config.model_type
        if text_type not in ARCHITECTURES:
            raise UnknownArchitectureError(f"unknown language model type {text_type!r} inside {model_type!r}")
        inner = ARCHITECTURES[text_type]
        names = dict(model.named_modules())
        for prefix in _MULTIMODAL_PREFIXES[model_type]:
            for strip in ("model.", ""):
                candidate = _prefixed(inner, prefix, strip)
                if candidate.layers in names:
                    return candidate
        raise UnknownArchitectureError(f"cannot find the language model's layers in {model_type!r}")
    if model_type not in ARCHITECTURES:
        known = ", ".join(sorted([*ARCHITECTURES, *_MULTIMODAL_PREFIXES]))
        raise UnknownArchitectureError(f"unknown model_type {model_type!r}; minedit knows: {known}")
    return ARCHITECTURES[model_type]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of decoder blocks."""
    return model.get_submodule(arch_spec(model).layers)


def num_layers(model: nn.Module) -> int:
    return len(decoder_layers(model))


def layer_module_name(model: nn.Module, layer: int, part: str = "mlp_out") -> str:
    """Absolute module name of ``part`` (an :class:`ArchSpec` field) in decoder block ``layer``.

    Negative ``layer`` counts from the top, like Python indexing.
    """
    spec = arch_spec(model)
    n = num_layers(model)
    if not -n <= layer < n:
        raise IndexError(f"layer {layer} out of range for a model with {n} layers")
    return f"{spec.layers}.{layer % n}.{getattr(spec, part)}"


def default_edit_layer(model: nn.Module) -> int:
    """A middle-to-late layer, where factual-recall edits usually sit (about 2/3 of the depth)."""
    return (2 * num_layers(model)) // 3


def linear_dims(module: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of a Linear, or of transformers' Conv1D (GPT-2), which stores its weight as (d_in, d_out)."""
    w = module.weight
    return (w.shape[0], w.shape[1]) if type(module).__name__ == "Conv1D" else (w.shape[1], w.shape[0])


def module_dims(model: nn.Module, name: str) -> tuple[int, int]:
    """(d_in, d_out) of the module at ``name``: a Linear's, or (d, d) for a block on the residual stream
    (a whole decoder MLP, which LEMoE's bypass experts sit beside)."""
    module = model.get_submodule(name)
    if hasattr(module, "weight") and getattr(module.weight, "dim", lambda: 0)() == 2:
        return linear_dims(module)
    d = model.get_input_embeddings().weight.shape[1]
    return d, d


# Vision-language models: the module whose output is the image tokens the language model reads
# (LLaVA's projector: one (n_patches, d) block per image), newer and older transformers layouts.
_VISION_OUTPUT: dict[str, tuple[str, ...]] = {
    "llava": ("model.multi_modal_projector", "multi_modal_projector"),
    "llava_next": ("model.multi_modal_projector", "multi_modal_projector"),
}


def vision_output_name(model: nn.Module) -> str:
    """Name of the module that turns an image into the language model's image tokens (B_img, P, d)."""
    model_type = model.config.model_type
    names = dict(model.named_modules())
    for name in _VISION_OUTPUT.get(model_type, ()):
        if name in names:
            return name
    raise UnknownArchitectureError(f"{model_type!r} has no vision side minedit knows "
                                   f"(vision-language types: {', '.join(sorted(_VISION_OUTPUT))})")
