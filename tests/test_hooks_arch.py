"""Hooks (trace / record / replace_module) on a tiny Llama, and the architecture table on tiny models."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from conftest import TINY_FF, TINY_HIDDEN, TINY_LAYERS, build_tiny_llava
from minedit.arch import (ARCHITECTURES, ArchSpec, UnknownArchitectureError, arch_spec, decoder_layers, default_edit_layer,
                          layer_module_name, num_layers)
from minedit.hooks import record, replace_module, trace

IDS = torch.tensor([[504, 3575, 282, 4649, 314], [19556, 905, 30, 1035, 986]])


def _logits(model, **kw):
    with torch.no_grad():
        return model(input_ids=IDS, **kw).logits


def _hooks(model) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Ids of every forward (pre-)hook, by module. transformers itself keeps some hooks on decoder layers once
    ``output_hidden_states`` was used, so tests compare against a snapshot instead of asking for none at all."""
    return {n: (tuple(m._forward_hooks), tuple(m._forward_pre_hooks)) for n, m in model.named_modules()
            if m._forward_hooks or m._forward_pre_hooks}


# --- trace ---------------------------------------------------------------------------------------


def test_trace_replaces_an_output_only_inside_the_block(tiny_llama, make_tiny):
    model, _ = tiny_llama
    before = _hooks(model)
    base = _logits(model)
    seen = []

    def silence(act, name):
        seen.append((name, tuple(act.shape)))
        return torch.zeros_like(act)

    with trace(model, {"model.layers.1.mlp": silence}):
        silenced = _logits(model)
    assert seen == [("model.layers.1.mlp", (2, 5, TINY_HIDDEN))]
    assert not torch.allclose(silenced, base)
    assert torch.equal(_logits(model), base)  # the hook is gone
    assert _hooks(model) == before
    # a silenced MLP is the same model as one whose output projection is zero (Llama's MLP has no bias)
    zeroed = make_tiny("llama", vocab_size=model.config.vocab_size)
    with torch.no_grad():
        zeroed.model.layers[1].mlp.down_proj.weight.zero_()
    assert torch.allclose(silenced, _logits(zeroed), atol=1e-6)


def test_trace_hook_returning_none_changes_nothing(tiny_llama):
    model, _ = tiny_llama
    base = _logits(model)
    calls = []
    with trace(model, {"model.layers.0": lambda act, name: calls.append(name)}):
        again = _logits(model)
    assert calls == ["model.layers.0"]
    assert torch.equal(again, base)


def test_trace_input_point_replaces_the_first_input(tiny_llama):
    model, _ = tiny_llama
    before = _hooks(model)
    with trace(model, {"model.norm": lambda act, name: torch.zeros_like(act)}, point="input"):
        out = _logits(model)
    assert torch.equal(out, torch.zeros_like(out))  # RMSNorm(0) = 0 and the LM head has no bias
    assert _hooks(model) == before


def test_trace_name_predicate_hooks_every_match(tiny_llama):
    model, _ = tiny_llama
    before = _hooks(model)
    names = []
    with trace(model, {lambda n: n.endswith(".mlp"): lambda act, name: names.append(name)}):
        _logits(model)
    assert names == [f"model.layers.{i}.mlp" for i in range(TINY_LAYERS)]
    assert _hooks(model) == before


def test_trace_removes_hooks_after_an_exception(tiny_llama):
    model, _ = tiny_llama
    before = _hooks(model)
    mlp = model.get_submodule("model.layers.2.mlp")
    norm = model.get_submodule("model.norm")
    with pytest.raises(RuntimeError, match="boom"):
        with trace(model, {"model.layers.2.mlp": lambda a, n: a * 2, "model.norm": lambda a, n: None}):
            assert len(mlp._forward_hooks) == 1 and len(norm._forward_hooks) == 1
            raise RuntimeError("boom")
    assert mlp._forward_hooks == {} and norm._forward_hooks == {}

    def failing(act, name):
        raise RuntimeError(f"in the model at {name}")

    with pytest.raises(RuntimeError, match="in the model at model.layers.2.mlp"):
        with trace(model, {"model.layers.2.mlp": failing}, point="input"):
            assert len(mlp._forward_pre_hooks) == 1
            model(input_ids=IDS)  # the forward pass itself raises, from inside the hook
    assert mlp._forward_pre_hooks == {}
    assert _hooks(model) == before


def test_trace_unknown_name_raises_and_leaves_no_hooks(tiny_llama):
    model, _ = tiny_llama
    before = _hooks(model)
    with pytest.raises(KeyError, match="model.layers.9.mlp"):
        with trace(model, {"model.layers.0.mlp": lambda a, n: None, "model.layers.9.mlp": lambda a, n: None}):
            pass
    with pytest.raises(KeyError, match="matched no module"):
        with trace(model, {lambda n: n.endswith("nothing"): lambda a, n: None}):
            pass
    assert model.get_submodule("model.layers.0.mlp")._forward_hooks == {}
    assert _hooks(model) == before


def test_trace_rejects_unknown_point(tiny_llama):
    model, _ = tiny_llama
    with pytest.raises(ValueError, match="point"):
        with trace(model, {"model.norm": lambda a, n: None}, point="middle"):
            pass


# --- record --------------------------------------------------------------------------------------


def test_record_reads_activations(tiny_llama):
    model, _ = tiny_llama
    _logits(model, output_hidden_states=True)  # let transformers install its own capture hooks first
    before = _hooks(model)
    names = ["model.layers.0", "model.layers.3", "model.norm", "model.layers.1.mlp.down_proj"]
    with torch.no_grad():
        with record(model, names) as acts:
            out = model(input_ids=IDS, output_hidden_states=True)
        with record(model, ["model.layers.1.mlp.down_proj", "model.layers.0"], point="input") as inputs:
            model(input_ids=IDS)
    assert set(acts) == set(names)
    assert torch.equal(acts["model.layers.0"], out.hidden_states[1])
    assert torch.equal(acts["model.norm"], out.hidden_states[-1])  # HF's last hidden state is after the final norm
    assert torch.equal(out.logits, model.lm_head(acts["model.norm"]))
    assert acts["model.layers.1.mlp.down_proj"].shape == (2, 5, TINY_HIDDEN)
    assert inputs["model.layers.1.mlp.down_proj"].shape == (2, 5, TINY_FF)
    assert torch.equal(inputs["model.layers.0"], out.hidden_states[0])  # the embeddings
    assert _hooks(model) == before


def test_record_detaches_by_default():
    lin = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    with record(lin, [""]) as kept:
        lin(x)
    with record(lin, [""], detach=False) as attached:
        lin(x)
    assert not kept[""].requires_grad and attached[""].requires_grad
    assert torch.equal(kept[""], attached[""].detach())


# --- replace_module -------------------------------------------------------------------------------


class Doubler(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return 2 * self.inner(x)


def test_replace_module(fresh_tiny_llama):
    model, _ = fresh_tiny_llama
    base = _logits(model)
    old = model.model.layers[2].mlp
    wrapper = Doubler(old)
    returned = replace_module(model, "model.layers.2.mlp", wrapper)
    assert returned is old
    assert model.get_submodule("model.layers.2.mlp") is wrapper and "model.layers.2.mlp.inner.down_proj" in dict(model.named_modules())
    assert not torch.allclose(_logits(model), base)
    assert replace_module(model, "model.layers.2.mlp", old) is wrapper
    assert torch.equal(_logits(model), base)
    # a top-level name (no dot) works too
    head = model.lm_head
    assert replace_module(model, "lm_head", nn.Identity()) is head and isinstance(model.lm_head, nn.Identity)


# --- architecture table -----------------------------------------------------------------------


ARCH_TYPES = ["llama", "mistral", "qwen2", "qwen3", "gemma", "phi3", "gpt2", "gptj", "gpt_neox"]


@pytest.mark.parametrize("model_type", ARCH_TYPES)
def test_arch_table_resolves_on_tiny_models(make_tiny, model_type):
    model = make_tiny(model_type, n_layers=3)
    assert model.config.model_type == model_type
    spec = arch_spec(model)
    assert spec is ARCHITECTURES[model_type]
    modules = dict(model.named_modules())
    assert isinstance(modules[spec.layers], nn.ModuleList) and len(modules[spec.layers]) == 3 == num_layers(model)
    assert decoder_layers(model) is modules[spec.layers]
    embed = modules[spec.embed]
    assert isinstance(embed, nn.Embedding) and embed.num_embeddings == model.config.vocab_size
    assert embed is model.get_input_embeddings()
    assert modules[spec.final_norm] is not None
    with torch.no_grad():
        with record(model, [spec.final_norm, layer_module_name(model, -1, "mlp_out"), layer_module_name(model, 0, "mlp_in")]) as acts:
            out = model(input_ids=torch.tensor([[3, 4, 5]]), output_hidden_states=True)
    assert torch.allclose(acts[spec.final_norm], out.hidden_states[-1])  # final_norm feeds the LM head
    assert acts[layer_module_name(model, -1, "mlp_out")].shape[-1] == TINY_HIDDEN  # mlp_out: d_ff -> d
    assert acts[layer_module_name(model, 0, "mlp_in")].shape[-1] in (TINY_FF, 2 * TINY_FF)  # phi3 fuses gate and up
    for layer in range(3):
        for part in ("mlp", "mlp_in", "mlp_out", "attn"):
            name = layer_module_name(model, layer, part)
            assert name == f"{spec.layers}.{layer}.{getattr(spec, part)}" and name in modules
        out_proj = modules[layer_module_name(model, layer)]
        weight_shape = tuple(out_proj.weight.shape)
        # transformers' Conv1D (GPT-2) stores (in, out); nn.Linear stores (out, in)
        assert weight_shape == ((TINY_FF, TINY_HIDDEN) if spec.conv1d else (TINY_HIDDEN, TINY_FF))
        assert isinstance(out_proj, nn.Linear) is not spec.conv1d


def test_layer_module_name_indexing(tiny_llama):
    model, _ = tiny_llama
    assert layer_module_name(model, -1) == "model.layers.3.mlp.down_proj"
    assert layer_module_name(model, 0, "attn") == "model.layers.0.self_attn"
    assert layer_module_name(model, -4, "mlp_in") == "model.layers.0.mlp.up_proj"
    for bad in (4, -5):
        with pytest.raises(IndexError, match="out of range"):
            layer_module_name(model, bad)
    assert default_edit_layer(model) == 2  # (2 * 4) // 3


def test_arch_is_chosen_by_model_type_not_by_name(make_tiny):
    model = make_tiny("gpt2")
    model.minedit_name = "meta-llama/Llama-2-7b"  # a misleading name changes nothing
    assert arch_spec(model) is ARCHITECTURES["gpt2"]


def test_unknown_model_type_raises(make_tiny):
    model = make_tiny("opt", n_layers=2)
    with pytest.raises(UnknownArchitectureError, match="'opt'") as info:
        arch_spec(model)
    assert "llama" in str(info.value) and "gpt2" in str(info.value)  # lists what it knows
    assert isinstance(info.value, ValueError)
    with pytest.raises(UnknownArchitectureError):
        layer_module_name(model, 0)
    fake = nn.Module()
    fake.config = SimpleNamespace(model_type="llama-ish")
    with pytest.raises(UnknownArchitectureError, match="llama-ish"):
        arch_spec(fake)


def test_unknown_language_model_inside_multimodal_wrapper():
    fake = nn.Module()
    fake.config = SimpleNamespace(model_type="llava", text_config=SimpleNamespace(model_type="t5"))
    with pytest.raises(UnknownArchitectureError, match="'t5'"):
        arch_spec(fake)


@pytest.fixture(scope="module")
def tiny_llava():
    try:
        return build_tiny_llava(n_layers=3)
    except Exception as err:  # pragma: no cover - depends on the transformers version
        pytest.skip(f"cannot build a tiny LLaVA with this transformers version: {type(err).__name__}: {err}")


def test_llava_resolves_layers_under_its_language_model(tiny_llava):
    model = tiny_llava
    assert model.config.model_type == "llava" and model.config.text_config.model_type == "llama"
    spec = arch_spec(model)
    assert isinstance(spec, ArchSpec)
    modules = dict(model.named_modules())
    assert "language_model" in spec.layers and spec.layers in modules
    assert num_layers(model) == 3
    assert modules[spec.embed] is model.get_input_embeddings()
    assert spec.final_norm in modules and "language_model" in spec.final_norm
    vision_layers = {n for n in modules if "vision_tower" in n}
    for layer in (0, -1):
        for part in ("mlp", "mlp_in", "mlp_out", "attn"):
            name = layer_module_name(model, layer, part)
            assert name in modules and name not in vision_layers
    assert layer_module_name(model, -1) == f"{spec.layers}.2.mlp.down_proj"
    assert isinstance(modules[layer_module_name(model, 0)], nn.Linear)
