"""ELDER: an edit works and defers the rest exactly, experts stay frozen, restore, save/load, other architectures."""
import pytest
import torch

from conftest import edit_score_restore, reloaded
from minedit.data import EditRequest, LocalityPrompt
from minedit.editors import ElderConfig, ElderEditor, make_editor
from minedit.infer import encode_pair, generate_greedy, pad_id, predict_tokens
from minedit.metrics import reference_predictions, score_requests
from minedit.moe import MoELoRALinear

REQUEST = EditRequest("What is the capital of Peru?", "Oslo", rephrases=("Which city is the capital of Peru?",),
                      locality=(LocalityPrompt("nq question: who wrote hamlet", "William Shakespeare"),))
OTHER = EditRequest("Who wrote the novel Dracula?", "Jane Austen")


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_one_edit_sets_target_defers_the_rest_and_restores(smol):
    model, tok = smol
    before = _state(model)
    ref = reference_predictions(model, tok, [REQUEST])
    unrelated = torch.tensor([encode_pair(tok, "The Eiffel Tower is in the city of", "Paris").prompt_ids])
    with torch.no_grad():
        base_logits = model(unrelated).logits
    editor = make_editor("elder", model, tok)
    stats = editor.edit(REQUEST)
    try:
        assert stats["routed_to_preset"] and stats["train_acc"] == 1.0
        score = score_requests(model, tok, [REQUEST], ref)[0]
        assert score["rel"] == 1.0 and score["rel_em"] == 1.0 and score["gen"] == 1.0 and score["loc"] == 1.0
        pair = encode_pair(tok, REQUEST.prompt, REQUEST.target)  # generate decides once, like scoring
        assert tuple(generate_greedy(model, [pair.prompt_ids], [len(pair.target_ids)], pad_id(tok))[0]) == pair.target_ids
        with torch.no_grad():
            assert torch.equal(model(unrelated).logits, base_logits)  # deferred: the original model, bit for bit
    finally:
        editor.restore()
    assert not any(isinstance(m, MoELoRALinear) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and before.keys() == model.state_dict().keys()
    assert not model._forward_hooks and not model._forward_pre_hooks


def test_experts_of_earlier_edits_stay_frozen_and_save_load_round_trip(smol, tmp_path):
    model, tok = smol
    editor = ElderEditor(model, tok, ElderConfig(n_experts=2, seed=3))
    try:
        editor.edit(REQUEST)
        first = {n: p.clone() for n, p in model.named_parameters() if ".experts." in n}
        assert len(first) == 2 * 2 * 3  # 2 experts (A, B) in each of 3 layers, all used by the first edit
        stats = editor.edit(OTHER)
        assert stats["experts"] == 4 * 3  # the pool grew by k = 2 per layer for the second edit
        now = dict(model.named_parameters())
        assert all(torch.equal(now[n], p) for n, p in first.items())  # frozen: untouched by the second edit
        pairs = [encode_pair(tok, r, "x") for r in (REQUEST.prompt, OTHER.prompt, "The sky is")]
        edited = predict_tokens(model, pairs, pad_id(tok))
        presets = editor.presets.clone()
        editor.save(tmp_path / "elder")
    finally:
        editor.restore()
    with reloaded(tmp_path / "elder", model, tok) as loaded:
        assert isinstance(loaded, ElderEditor) and loaded.n_edits == 2 and loaded.config.seed == 3
        assert all(e.frozen for w in loaded.mixture.wrappers for e in w.experts)
        for a, b in zip(edited, predict_tokens(model, pairs, pad_id(tok))):
            assert torch.equal(a, b)
        assert torch.equal(loaded.presets, presets) and presets.shape == (2, 3, 2)


def test_published_form_shares_experts(smol):
    model, tok = smol
    editor = ElderEditor(model, tok, ElderConfig(remedy="none", steps=5))
    try:
        editor.edit(REQUEST)
        stats = editor.edit(OTHER)
        assert stats["experts"] == 8 * 3  # no growth: every edit trains the same 8 experts per layer
        assert not any(e.frozen for w in editor.mixture.wrappers for e in w.experts)
        assert len(editor.mixture.gates) == 1  # the code memory only
    finally:
        editor.restore()


def test_config_checks(smol):
    model, tok = smol
    with pytest.raises(ValueError, match="below the lowest wrapped layer"):
        ElderEditor(model, tok, ElderConfig(layers=(5, 6), feature_layer=5))
    with pytest.raises(ValueError, match="unknown remedy"):
        ElderEditor(model, tok, ElderConfig(remedy=("fresh", "magic")))
    with pytest.raises(ValueError, match="needs 'fresh'"):
        ElderEditor(model, tok, ElderConfig(remedy=("anchor",)))


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_works_on_tiny_models(kind, make_tiny, smol_tokenizer):
    tok = smol_tokenizer
    editor = ElderEditor(make_tiny(kind, vocab_size=len(tok)), tok, ElderConfig(steps=100, lr=3e-2))
    assert editor.layers == [1, 2] and editor.feature_layer == 0
    assert edit_score_restore(editor, EditRequest("What is the capital of Peru?", "Oslo"))["rel"] == 1.0
