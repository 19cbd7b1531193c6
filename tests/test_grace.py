"""GRACE: codebook rules, deferral, agreement between scoring and generate, restore, save/load, architectures."""
import pytest
import torch

from conftest import edit_score_restore, reloaded
from minedit.data import EditRequest, LocalityPrompt
from minedit.editors.grace import GraceCodebook, GraceConfig, GraceEditor
from minedit.infer import encode_pair, generate_greedy, pad_id, predict_tokens
from minedit.metrics import reference_predictions, score_requests
from minedit.models import load_model


@pytest.fixture(scope="module")
def smol():
    """A copy of SmolLM2 of this module's own: these tests edit it (and restore it)."""
    return load_model("smollm2-135m")


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


REQUEST = EditRequest("What is the capital of Peru?", "Oslo", rephrases=("Which city is the capital of Peru?",),
                      locality=(LocalityPrompt("nq question: who wrote hamlet", "William Shakespeare"),))


def test_edit_sets_target_and_keeps_locality(smol):
    model, tok = smol
    ref = reference_predictions(model, tok, [REQUEST])
    editor = GraceEditor(model, tok)
    try:
        stats = editor.edit(REQUEST)
        assert stats["action"] == "add" and stats["keys"] == 1
        score = score_requests(model, tok, [REQUEST], ref)[0]
        assert score["rel"] == 1.0 and score["rel_em"] == 1.0
        assert score["loc"] == 1.0
        # generate (prefill + one token at a time) sees the same codebook decision as scoring
        pair = encode_pair(tok, REQUEST.prompt, REQUEST.target)
        out = generate_greedy(model, [pair.prompt_ids], [len(pair.target_ids)], pad_id(tok))[0]
        assert tuple(out) == pair.target_ids
    finally:
        editor.restore()


def test_restore_is_bit_exact_and_removes_wrapper(smol):
    model, tok = smol
    before = _state(model)
    editor = GraceEditor(model, tok)
    editor.edit(REQUEST)
    assert any(isinstance(m, GraceCodebook) for m in model.modules())
    editor.restore()
    assert not any(isinstance(m, GraceCodebook) for m in model.modules())
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not model._forward_pre_hooks  # the sequence tracker's hook is gone too


def test_unrelated_prompt_is_deferred_exactly(smol):
    model, tok = smol
    pairs = [encode_pair(tok, "The Eiffel Tower is in the city of", "Paris")]
    with torch.inference_mode():
        base_logits = model(torch.tensor([pairs[0].prompt_ids])).logits
    editor = GraceEditor(model, tok)
    try:
        editor.edit(REQUEST)
        with torch.inference_mode():
            edited_logits = model(torch.tensor([pairs[0].prompt_ids])).logits
        assert torch.equal(base_logits, edited_logits)  # outside every radius: the layer is untouched
    finally:
        editor.restore()


def test_codebook_rules_expand_and_split(smol):
    model, tok = smol
    far = GraceConfig(eps=1e6)  # every query is "near": exercises expand and split
    editor = GraceEditor(model, tok, far)
    try:
        assert editor.edit(EditRequest("What is the capital of Peru?", "Oslo"))["action"] == "add"
        expand = editor.edit(EditRequest("What is the capital of Chile?", "Oslo"))
        assert expand["action"] == "expand" and expand["keys"] == 1  # same answer: no new key
        stats = editor.edit(EditRequest("Who wrote Hamlet?", "Jane Austen"))
        assert stats["action"] == "split" and stats["keys"] == 2
        d = torch.linalg.vector_norm(editor.codebook.keys[0] - editor.codebook.keys[1]).item()
        assert editor.codebook.radii[0].item() == pytest.approx(d / 2) and editor.codebook.radii[1].item() == pytest.approx(d / 2)
    finally:
        editor.restore()
    near = GraceEditor(model, tok, GraceConfig(eps=1e-6))
    try:
        near.edit(EditRequest("What is the capital of Peru?", "Oslo"))
        assert near.edit(EditRequest("Who wrote Hamlet?", "Jane Austen"))["action"] == "add"
        assert near.codebook.radii.tolist() == pytest.approx([1e-6, 1e-6])
    finally:
        near.restore()


def test_save_load_round_trip(smol, tmp_path):
    model, tok = smol
    editor = GraceEditor(model, tok, GraceConfig(layer=18, eps=2.0))
    editor.edit(REQUEST)
    editor.edit(EditRequest("Who wrote Hamlet?", "Jane Austen"))
    pairs = [encode_pair(tok, r, "x") for r in (REQUEST.prompt, "Who wrote Hamlet?", "The sky is")]
    edited = predict_tokens(model, pairs, pad_id(tok))
    editor.save(tmp_path / "grace")
    editor.restore()
    assert sorted(p.name for p in (tmp_path / "grace").iterdir()) == ["editor.json", "state.safetensors"]
    with reloaded(tmp_path / "grace", model, tok) as loaded:
        assert isinstance(loaded, GraceEditor) and loaded.config.layer == 18 and loaded.n_edits == 2
        assert loaded.codebook.targets == ["Oslo", "Jane Austen"]
        for a, b in zip(edited, predict_tokens(model, pairs, pad_id(tok))):
            assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_works_on_other_architectures(kind, make_tiny, smol):
    tok = smol[1]
    editor = GraceEditor(make_tiny(kind, vocab_size=len(tok), n_layers=3), tok, GraceConfig(layer=1, steps=200))
    assert edit_score_restore(editor, EditRequest("What is the capital of Peru?", "Oslo"))["rel"] == 1.0
