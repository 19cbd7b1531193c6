"""FT-L and LoRA on the real SmolLM2: an edit lands, restore is exact, save/load is exact."""
from __future__ import annotations

import pytest
import torch

from minedit.data import EditRequest
from minedit.editors import FTEditor, LoRAEditor, load_editor, make_editor
from minedit.editors.lora import peft_modules
from minedit.metrics import score_requests
from minedit.models import load_model

REQUEST = EditRequest(prompt="The Eiffel Tower is located in the city of", target="Rome")
PROBE = "The capital of France is"


@pytest.fixture(scope="module")
def own_smol():
    """A SmolLM2 of this module's own (conftest's session ``smol`` must never be edited)."""
    model, tokenizer = load_model("smollm2-135m")
    original = {k: v.clone() for k, v in model.state_dict().items()}
    modules = {n: m for n, m in model.named_modules()}
    return model, tokenizer, original, modules


def logits(model, tokenizer, text: str) -> torch.Tensor:
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(input_ids=ids).logits


def assert_pristine(model, original, modules):
    state = model.state_dict()
    assert state.keys() == original.keys()
    changed = [k for k in original if not torch.equal(state[k], original[k])]
    assert not changed, f"not restored: {changed[:3]}"
    assert all(m is modules[n] for n, m in model.named_modules()), "a module object was not put back"
    assert not peft_modules(model) and not hasattr(model, "peft_config")
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("name", [FTEditor.name, LoRAEditor.name])
def test_edit_restore_save_load(own_smol, name, tmp_path):
    model, tokenizer, original, modules = own_smol
    before = score_requests(model, tokenizer, [REQUEST], exact=False)[0]["rel"]
    assert before < 1.0  # the edit must change something to be tested

    editor = make_editor(name, model, tokenizer)
    stats = editor.edit(REQUEST)
    assert stats["train_acc"] == 1.0
    assert score_requests(model, tokenizer, [REQUEST], exact=False)[0]["rel"] == 1.0
    if name == LoRAEditor.name:
        assert peft_modules(model) == editor.module_names
    edited = logits(model, tokenizer, PROBE)

    editor.save(tmp_path / "saved")
    editor.restore()
    assert_pristine(model, original, modules)

    loaded = load_editor(tmp_path / "saved", model, tokenizer)
    assert type(loaded) is type(editor) and loaded.n_edits == 1
    assert torch.equal(logits(model, tokenizer, PROBE), edited)
    assert score_requests(model, tokenizer, [REQUEST], exact=False)[0]["rel"] == 1.0
    loaded.restore()
    assert_pristine(model, original, modules)


def test_ft_norm_constraint_bounds_total_drift(own_smol):
    model, tokenizer, original, modules = own_smol
    editor = make_editor("ft", model, tokenizer, norm_constraint=1e-3, steps=5)
    editor.edit(REQUEST)
    editor.edit(EditRequest(prompt="The Colosseum is located in the city of", target="Paris"))
    w = model.get_parameter(editor.param_name)
    drift = (w - original[editor.param_name]).abs().max().item()
    assert 0 < drift <= 1e-3 + 1e-7  # the ball is around the original weight, not the last edit's
    editor.restore()
    assert_pristine(model, original, modules)


def test_lora_init_is_seeded(own_smol):
    model, tokenizer, _, _ = own_smol
    rng = torch.get_rng_state()
    runs = []
    for _ in range(2):
        editor = make_editor("lora", model, tokenizer, seed=3, steps=2)
        editor.edit(REQUEST)
        runs.append({k: v.clone() for k, v in editor.state_tensors().items()})
        editor.restore()
    assert runs[0].keys() == runs[1].keys() and all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's global RNG is left alone


@pytest.mark.parametrize("name", [FTEditor.name, LoRAEditor.name])
def test_gpt2_conv1d(make_tiny, smol_tokenizer, name):
    """GPT-2 keeps its MLP weights transposed (transformers' Conv1D): editing and restore still work."""
    tokenizer = smol_tokenizer
    model = make_tiny("gpt2", vocab_size=len(tokenizer))
    original, modules = {k: v.clone() for k, v in model.state_dict().items()}, dict(model.named_modules())
    before = logits(model, tokenizer, PROBE)
    editor = make_editor(name, model, tokenizer, steps=3)
    assert editor.edit(REQUEST)["steps"] == 3
    assert not torch.equal(logits(model, tokenizer, PROBE), before)
    editor.restore()
    assert_pristine(model, original, modules)
    assert torch.equal(logits(model, tokenizer, PROBE), before)
