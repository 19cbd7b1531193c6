"""WISE: TIES by hand, shard masks, the margin loss, the router's score by hand, sharding and merging,
exact restore, save/load, and on SmolLM2 an edit recalled while an unrelated prompt keeps the main memory."""
import pytest
import torch
import torch.nn.functional as F

from conftest import edit_score_restore, reloaded
from minedit.arch import layer_module_name
from minedit.data import EditRequest, LocalityPrompt
from minedit.editors import WiseConfig, WiseEditor, get_editor
from minedit.editors.wise import SideMemory, activation_score, margin_loss, shard_mask, ties_merge
from minedit.hooks import record
from minedit.infer import encode_pair, generate_greedy, pad_id, predict_tokens
from minedit.metrics import reference_predictions, score_requests

EDITS = [EditRequest("What is the capital of Peru?", "Oslo"), EditRequest("Who wrote the novel Dracula?", "Jane Austen"),
         EditRequest("Which language is spoken in Chile?", "Dutch")]
# a tiny random model's activations are small: margins and steps at its scale
TINY = dict(layer=2, steps=200, lr=0.05, alpha=0.02, beta=0.5, gamma=0.3, shards=2, shard_edits=1)


# --- the parts, by hand ---------------------------------------------------------------------------------


def test_ties_merge_matches_a_hand_computation():
    deltas = torch.tensor([[3.0, -1.0, 0.0, 2.0], [-4.0, -2.0, 1.0, 0.0], [1.0, 5.0, 0.0, -3.0]])
    # density 0.5 keeps 2 of 4 per row: [3,0,0,2], [-4,-2,0,0], [0,5,0,-3]; column sums -1, 3, 0, -1
    # elect -, +, +, -; mean of the kept values of the elected sign: -4, 5, 0 (none), -3
    assert torch.equal(ties_merge(deltas, 0.5), torch.tensor([-4.0, 5.0, 0.0, -3.0]))
    # no trim: column 0 sums to 0 (elected +): mean(3, 1) = 2; column 2: only the 1 is non-zero
    assert torch.equal(ties_merge(deltas, 1.0), torch.tensor([2.0, 5.0, 1.0, -3.0]))
    # disjoint supports (shards that never overlap): the merge is the sum, whatever the shape
    a, b = torch.tensor([[1.5, 0.0], [0.0, -2.0]]), torch.tensor([[0.0, -0.5], [4.0, 0.0]])
    assert torch.equal(ties_merge(torch.stack([a, b]), 1.0), a + b)


def test_shard_masks_have_the_ratio_and_are_seeded():
    a, b = shard_mask(2000, 0.2, seed=1), shard_mask(2000, 0.2, seed=2)
    assert a.dtype == torch.bool and a.shape == (2000,) and int(a.sum()) == int(b.sum()) == 400
    assert torch.equal(a, shard_mask(2000, 0.2, seed=1)) and not torch.equal(a, b)
    assert 0.02 < (a & b).float().mean().item() < 0.06  # independent masks overlap on about rho^2 = 4% of neurons


def test_margin_loss_by_hand():
    edit, irrelevant = torch.tensor(12.0), torch.tensor([1.0, 7.0])
    # max(0, s_i - 5): 0, 2 -> 1; max(0, 20 - 12) = 8; max(0, 10 - (12 - s_i)): 0, 5 -> 2.5
    assert margin_loss(edit, irrelevant, 5.0, 20.0, 10.0).item() == pytest.approx(1 + 8 + 2.5)
    assert margin_loss(torch.tensor(30.0), torch.tensor([1.0, 2.0]), 5.0, 20.0, 10.0).item() == 0.0


# --- the editor on a tiny model -------------------------------------------------------------------------


def test_router_score_is_the_norm_of_the_activation_difference(fresh_tiny_llama):
    model, tok = fresh_tiny_llama
    editor = WiseEditor(model, tok, WiseConfig(**TINY))
    try:
        assert editor.edit(EDITS[0])["train_acc"] == 1.0
        mem, j = editor.memory, editor.owner[0]
        mlp_name, out_name = layer_module_name(model, 2, "mlp"), layer_module_name(model, 2, "mlp_out")
        mlp = model.get_submodule(mlp_name)
        W = mem.base_layer.weight
        W_side = W + mem.deltas[j]  # the side memory W', a full matrix
        for text in (EDITS[0].prompt, "The weather is nice today and"):
            ids = torch.tensor([tok(text).input_ids])
            with torch.no_grad(), record(model, [mlp_name], point="input") as inputs, \
                    record(model, [out_name, f"{out_name}.base_layer"]) as outputs:
                model(ids)
            m = inputs[mlp_name][0, -1]  # the MLP's input at the query (last) position
            a = F.silu(mlp.gate_proj(m)) * mlp.up_proj(m)  # A(x): Llama's SwiGLU activation, by hand
            by_hand = torch.linalg.vector_norm(a @ W_side.T - a @ W.T)
            assert activation_score(a, mem.deltas[j]).item() == pytest.approx(by_hand.item(), rel=1e-4)
            routed = by_hand.item() > mem.eps[j].item()
            assert mem._choice.tolist() == [j if routed else -1]  # the router used exactly this score
            change = outputs[out_name][0, -1] - outputs[f"{out_name}.base_layer"][0, -1]
            assert torch.linalg.vector_norm(change).item() == pytest.approx(by_hand.item() if routed else 0.0, rel=1e-4, abs=1e-6)
        assert mem._choice is not None
    finally:
        editor.restore()


def test_shards_move_only_their_mask_and_merge_by_ties(fresh_tiny_llama):
    model, tok = fresh_tiny_llama
    editor = WiseEditor(model, tok, WiseConfig(**TINY))
    seen = {}
    merge = editor._merge

    def spy():
        seen["before"] = editor.memory.deltas.clone()
        merge()

    editor._merge = spy
    try:
        first = editor.edit(EDITS[0])
        assert first["memory"] == 1 and not first["merged"] and len(editor.memory.deltas) == 2
        moved = editor.memory.deltas[1] != 0
        assert moved.any() and not (moved & ~editor._mask(0)[None]).any()  # knowledge sharding: shard 0's columns
        assert torch.equal(editor.memory.deltas[0], torch.zeros_like(moved, dtype=torch.float))  # nothing merged yet
        second = editor.edit(EDITS[1])  # the round's last shard is full: TIES-merge both into memory 0
        assert second["memory"] == 2 and second["merged"] and len(editor.memory.deltas) == 1
        before = seen["before"]
        assert torch.equal(editor.memory.deltas[0], before[0] + ties_merge(before[1:] - before[0], editor.config.density))
        assert editor.owner == [0, 0] and torch.isfinite(editor.memory.eps).all()
        third = editor.edit(EDITS[2])  # a new round: its shard starts from the merged memory
        assert third["memory"] == 1 and len(editor.memory.deltas) == 2
        moved = (editor.memory.deltas[1] - editor.memory.deltas[0]) != 0
        assert moved.any() and not (moved & ~editor._mask(2)[None]).any()
    finally:
        editor.restore()


def test_a_later_edit_leaves_earlier_edits_outputs_as_they_were(fresh_tiny_llama):
    """``protect``: the change an edit makes is orthogonal to the earlier edits' activations (AlphaEdit's projection)."""
    model, tok = fresh_tiny_llama
    editor = WiseEditor(model, tok, WiseConfig(**{**TINY, "shard_edits": 3, "mask_ratio": 1.0, "protect": True}))
    try:
        editor.edit(EDITS[0])
        before = editor.memory.deltas[1].clone()
        editor.edit(EDITS[1])  # the same shard, the same memory
        change = editor.memory.deltas[1] - before
        old = editor.anchors[0]  # A(x) where the first edit's target tokens are predicted
        assert change.abs().max() > 1e-3  # the second edit did change the memory ...
        assert (old @ change.T).abs().max() < 1e-4 * (old @ before.T).abs().max()  # ... but not the first's outputs
        assert (editor.anchors[1] @ change.T).abs().max() > 1e-3
    finally:
        editor.restore()


@pytest.mark.parametrize("retrieve", [False, True])
def test_restore_is_exact_and_save_load_predicts_the_same(retrieve, fresh_tiny_llama, tmp_path):
    model, tok = fresh_tiny_llama
    before = {k: v.clone() for k, v in model.state_dict().items()}
    editor = WiseEditor(model, tok, WiseConfig(**TINY, retrieve=retrieve))
    pairs = [encode_pair(tok, r.prompt, r.target) for r in EDITS] + [encode_pair(tok, "The sky is", "blue")]
    try:
        stats = editor.edit_batch(EDITS)
        assert [s["memory"] for s in stats] == ([0, 1, 2] if retrieve else [1, 2, 1])
        assert len(editor.memory.deltas) == (3 if retrieve else 2)
        edited = predict_tokens(model, pairs, pad_id(tok))
        editor.save(tmp_path / "wise")
    finally:
        editor.restore()
    assert not any(isinstance(m, SideMemory) for m in model.modules()) and not model._forward_pre_hooks
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    with reloaded(tmp_path / "wise", model, tok) as loaded:
        assert isinstance(loaded, WiseEditor) and loaded.n_edits == 3 and loaded.config.retrieve == retrieve
        assert all(torch.equal(a, b) for a, b in zip(edited, predict_tokens(model, pairs, pad_id(tok))))
        loaded.edit(EditRequest("Who painted the Mona Lisa?", "Picasso"))  # a loaded editor keeps editing
        assert loaded.n_edits == 4
        assert len(loaded.anchors) == 4 and loaded.anchors[0].shape[-1] == loaded.keys.shape[-1]  # protection kept


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_edits_and_restores_on_tiny_models(kind, make_tiny, smol_tokenizer):
    editor = WiseEditor(make_tiny(kind, vocab_size=len(smol_tokenizer), n_layers=3), smol_tokenizer, WiseConfig(**TINY))
    assert edit_score_restore(editor, EDITS[0])["rel"] == 1.0


# --- on SmolLM2 -----------------------------------------------------------------------------------------


def test_an_edit_is_recalled_and_an_unrelated_prompt_keeps_the_main_memory(smol):
    model, tok = smol
    request = EditRequest("What is the capital of Peru?", "Oslo", rephrases=("Which city is the capital of Peru?",),
                          locality=(LocalityPrompt("nq question: who wrote hamlet", "William Shakespeare"),))
    reference = reference_predictions(model, tok, [request])
    unrelated = torch.tensor([encode_pair(tok, "The Eiffel Tower is in the city of", "Paris").prompt_ids])
    with torch.no_grad():
        base_logits = model(unrelated).logits
    editor = get_editor("wise")(model, tok)
    try:
        stats = editor.edit(request)
        assert stats["train_acc"] == 1.0 and stats["score"] > stats["eps"]
        score = score_requests(model, tok, [request], reference)[0]
        assert score["rel"] == 1.0 and score["rel_em"] == 1.0 and score["loc"] == 1.0
        pair = encode_pair(tok, request.prompt, request.target)  # generate decides at the prefill, like scoring
        assert tuple(generate_greedy(model, [pair.prompt_ids], [len(pair.target_ids)], pad_id(tok))[0]) == pair.target_ids
        with torch.no_grad():
            assert torch.equal(model(unrelated).logits, base_logits)  # routed to the main memory: bit for bit
        assert editor.memory._choice.tolist() == [-1]
    finally:
        editor.restore()
