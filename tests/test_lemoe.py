"""LEMoE: one new frozen expert per batch, fixed keys, routing consistency, save/load, exact restore; planning."""
import pytest
import torch

from conftest import edit_score_restore, reloaded
from minedit.data import EditRequest
from minedit.editors import LemoeConfig, LemoeEditor
from minedit.errors import ConfigError
from minedit.infer import encode_pair, pad_id, predict_tokens
from minedit.moe import FFNExpert
from minedit.planning import balanced_assign, kmeans, plan_batches

BATCH_A = [EditRequest("What is the capital of Peru?", "Oslo"), EditRequest("What is the capital of Chile?", "Rome")]
BATCH_B = [EditRequest("Who wrote the novel Dracula?", "Jane Austen"), EditRequest("Who wrote Hamlet?", "Leo Tolstoy")]
TINY = dict(layer=2, rank=8, steps=150, lr=2e-2, gate="none")


def test_one_frozen_expert_per_batch_with_fixed_keys(fresh_tiny_llama):
    model, tok = fresh_tiny_llama
    editor = LemoeEditor(model, tok, LemoeConfig(**TINY))
    try:
        stats = editor.edit_batch(BATCH_A)
        assert [s["expert"] for s in stats] == [0, 0] and stats[0]["experts"] == 1 and editor.n_edits == 2
        mix = editor.mixture
        first = {k: v.clone() for k, v in mix.wrappers[0].experts[0].state_dict().items()}
        keys = mix.routers[0].keys.clone()
        assert isinstance(mix.wrappers[0].experts[0], FFNExpert) and mix.wrappers[0].experts[0].frozen
        editor.edit_batch(BATCH_B)
        assert mix.n_experts() == [2] and editor.n_edits == 4
        assert all(torch.equal(first[k], v) for k, v in mix.wrappers[0].experts[0].state_dict().items())
        assert torch.equal(mix.routers[0].keys[: len(keys)], keys) and len(keys) == 2  # one key per edit; old keys never move
        assert "keys" not in dict(mix.routers[0].named_parameters())
    finally:
        editor.restore()
    assert not editor.patches and not model._forward_pre_hooks


def test_training_and_inference_route_alike_and_save_load(fresh_tiny_llama, tmp_path):
    model, tok = fresh_tiny_llama
    editor = LemoeEditor(model, tok, LemoeConfig(**TINY))
    try:
        stats = editor.edit_batch(BATCH_A) + editor.edit_batch(BATCH_B)
        assert all(s["routed_to_own"] for s in stats)
        pairs = [encode_pair(tok, r.prompt, r.target) for r in BATCH_A + BATCH_B]
        edited = predict_tokens(model, pairs, pad_id(tok))
        assert [int(c) for c in editor.mixture.last[0].chosen[:, 0]] == [0, 0, 1, 1]  # inference: the own expert
        editor.save(tmp_path / "lemoe")
    finally:
        editor.restore()
    with reloaded(tmp_path / "lemoe", model, tok) as loaded:
        assert isinstance(loaded, LemoeEditor) and loaded.n_edits == 4
        assert all(torch.equal(a, b) for a, b in zip(edited, predict_tokens(model, pairs, pad_id(tok))))


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_edits_and_restores_on_tiny_models(kind, make_tiny, smol_tokenizer):
    editor = LemoeEditor(make_tiny(kind, vocab_size=len(smol_tokenizer)), smol_tokenizer, LemoeConfig(**TINY))
    assert edit_score_restore(editor, BATCH_A[0])["rel"] == 1.0


def test_config_checks(tiny_llama):
    model, tok = tiny_llama
    with pytest.raises(ConfigError, match="must be -1"):
        LemoeEditor(model, tok, LemoeConfig(layer=2, feature_layer=2))
    with pytest.raises(ConfigError, match="unknown gate"):
        LemoeEditor(model, tok, LemoeConfig(layer=2, gate="magic"))
    with pytest.raises(ConfigError, match="outside"):
        LemoeEditor(model, tok, LemoeConfig(layer=9))
    with pytest.raises(ConfigError, match="query_hidden"):
        LemoeEditor(model, tok, LemoeConfig(layer=2, train_query=True))


def test_training_the_query_projection_moves_earlier_routing(fresh_tiny_llama, tmp_path):
    """train_query: the shared W_up SiLU(W_down e) trains with each batch; ``moved_earlier`` is the share of
    earlier edits whose expert it changed, recomputed here from the saved route features."""
    model, tok = fresh_tiny_llama
    editor = LemoeEditor(model, tok, LemoeConfig(**TINY, query_hidden=16, train_query=True))
    try:
        first = editor.edit_batch(BATCH_A)
        assert "moved_earlier" in first[0] and first[0]["moved_earlier"] == 0.0  # nothing earlier to move
        mix = editor.mixture
        with torch.no_grad():
            before = mix.route(editor.seen)[0].chosen[:, 0].clone()
        W = [p.clone() for p in mix.routers[0].query.parameters()]
        second = editor.edit_batch(BATCH_B)
        assert any(not torch.equal(a, b) for a, b in zip(W, mix.routers[0].query.parameters()))  # the query trained
        with torch.no_grad():
            after = mix.route(editor.seen[: len(before)])[0].chosen[:, 0]
        assert second[0]["moved_earlier"] == pytest.approx(float((after != before).float().mean()))
        assert len(editor.seen) == 4
        seen = editor.seen.clone()
        editor.save(tmp_path / "q")
    finally:
        editor.restore()
    with reloaded(tmp_path / "q", model, tok) as loaded:
        assert torch.equal(loaded.seen, seen)


def test_planning_groups_clusters_into_equal_batches():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=gen) * 5
    labels = torch.arange(40) % 4  # data order interleaves the four topics
    x = centres[labels] + 0.1 * torch.randn(40, 16, generator=gen)
    batches = plan_batches(x, 10, "kmeans", seed=0)
    assert sorted(i for b in batches for i in b) == list(range(40)) and [len(b) for b in batches] == [10] * 4
    assert all(len({int(labels[i]) for i in b}) == 1 for b in batches)  # each batch is one topic
    assert plan_batches(x, 10, "none") == [list(range(i, i + 10)) for i in range(0, 40, 10)]
    shuffled = plan_batches(x, 10, "random", seed=1)
    assert shuffled == plan_batches(x, 10, "random", seed=1) and sorted(sum(shuffled, [])) == list(range(40))
    with pytest.raises(ConfigError, match="unknown plan"):
        plan_batches(x, 10, "magic")


def test_balanced_assignment_respects_capacity():
    x = torch.randn(23, 3, generator=torch.Generator().manual_seed(2))
    assign = balanced_assign(x, kmeans(x, 3, seed=0), capacity=8)
    assert (assign >= 0).all() and torch.bincount(assign, minlength=3).max() <= 8


def test_runner_edits_in_planned_order_and_reports_in_data_order(fresh_tiny_llama):
    from minedit.runner import RunConfig, run_lifelong

    model, tok = fresh_tiny_llama
    requests = [BATCH_A[0], BATCH_B[0], BATCH_A[1], BATCH_B[1]]
    editor = LemoeEditor(model, tok, LemoeConfig(**TINY))
    seen = []
    original = editor.edit_batch
    editor.edit_batch = lambda batch: seen.append([r.prompt for r in batch]) or original(batch)
    try:
        run = run_lifelong(editor, requests, RunConfig(edit_batch_size=2, plan="kmeans", progress=False, exact=False))
    finally:
        editor.restore()
    assert sorted(map(sorted, seen)) == sorted(map(sorted, [[r.prompt for r in BATCH_A], [r.prompt for r in BATCH_B]]))
    assert [row["prompt"] for row in run.rows] == [r.prompt for r in requests]  # rows stay in data order
    assert all(row["stat_expert"] == (0 if row["prompt"] in seen[0] else 1) for row in run.rows)
