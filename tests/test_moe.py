"""minedit.moe: routing invariants, one decision per sequence, exact deferral, exact restore, gates."""
import pytest
import torch

from minedit.arch import layer_module_name
from minedit.infer import continuation_logits, encode_pair, generate_greedy, pad_id
from minedit.arch import linear_dims
from minedit.moe import (CosineTopKRouter, ExpertSpec, HammingGate, LastTokenHidden, MeanAndLastHidden, MeanPooledHidden,
                         Mixture, MoELoRALinear, SimilarityGate, TopKRouter, guided_loss)
from minedit.patch import Patcher
from minedit.training import UpperStack, make_edit_batch

PROMPTS = ["What is the capital of Peru?", "Who wrote Hamlet, the play?"]


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _mixture(model, feature, layers=(2, 3), n_experts=4, k=2, gates=(), seed=0):
    """A mixture on ``layers``' MLP output with random, non-zero experts; ``patches.undo()`` removes it."""
    gen = torch.Generator().manual_seed(seed)
    patches = Patcher(model)
    mix = Mixture(model, feature, [TopKRouter(feature.dim(model), 0, k) for _ in layers], gates)
    mix.install([layer_module_name(model, layer, "mlp_out") for layer in layers], patches)
    spec = ExpertSpec("lora", rank=4, alpha=8.0)
    for i, w in enumerate(mix.wrappers):
        mix.add_experts(i, [spec.build(w.d_in, w.d_out, gen) for _ in range(n_experts)], gen)
        for expert in w.experts:
            expert.B.data = torch.randn(expert.B.shape, generator=gen) * 0.5  # experts that change the output
    return patches, mix


def test_topk_weights_sum_to_one_over_exactly_k():
    feats = torch.randn(16, 12, generator=torch.Generator().manual_seed(0))
    for router in (TopKRouter(12, 8, 2, generator=torch.Generator().manual_seed(1)),
                   CosineTopKRouter(12, 8, 3, generator=torch.Generator().manual_seed(1))):
        r = router(feats)
        assert torch.allclose(r.weights.sum(-1), torch.ones(16)) and torch.allclose(r.probs.sum(-1), torch.ones(16))
        assert ((r.weights != 0).sum(-1) == router.k).all()
        assert torch.equal(r.chosen, r.weights.nonzero()[:, 1].view(16, router.k))  # chosen = the non-zero experts
        assert torch.equal(r.chosen, r.probs.topk(router.k).indices.sort(-1).values)
        assert not r.defer.any()


def test_router_growth_keeps_old_scores():
    router, feats = TopKRouter(12, 4, 2), torch.randn(5, 12)
    before = router.logits(feats)
    router.grow(3)
    assert router.n_experts == 7 and torch.equal(router.logits(feats)[:, :4], before)


def test_cosine_anchor_routes_its_feature_to_its_experts():
    router, feats = CosineTopKRouter(12, 6, 2), torch.randn(3, 12)
    router.anchor(torch.tensor([2, 5]), feats[1])
    assert router(feats[1:2]).chosen.tolist() == [[2, 5]]


def test_guided_loss_is_kl_from_uniform_preset():
    preset = torch.tensor([[1, 3]])
    assert guided_loss(torch.tensor([[0.0, 0.5, 0.0, 0.5]]), preset).item() == pytest.approx(0.0, abs=1e-6)
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    assert guided_loss(probs, preset).item() == pytest.approx(-(0.5 * torch.log(2 * probs[0, [1, 3]])).sum().item())


def test_hamming_gate_counts_bits_and_survives_growth():
    gate = HammingGate(threshold=2)
    assert gate.defer(None, torch.tensor([[[0, 1]]])).tolist() == [True]  # no edit yet: the original model
    gate.add(None, torch.tensor([[0, 1], [2, 3]]))  # (layers=2, k=2)
    queries = torch.tensor([[[0, 1], [2, 3]], [[0, 1], [2, 7]], [[0, 5], [2, 7]], [[4, 5], [6, 7]]])
    assert gate.distances(queries)[:, 0].tolist() == [0, 2, 4, 8]  # one changed expert = 2 bits
    assert gate.defer(None, queries).tolist() == [False, False, True, True]
    # a 12-expert query (the pool grew) compares the same way
    assert gate.distances(torch.tensor([[[0, 11], [2, 3]]]))[:, 0].tolist() == [2]


def test_similarity_gate():
    gate, feats = SimilarityGate(0.9), torch.eye(3)
    assert gate.defer(feats).all()
    gate.add(feats[0])
    assert gate.defer(torch.stack([feats[0] * 3, feats[0] + 0.1 * feats[1], feats[1]])).tolist() == [False, False, True]


def test_conv1d_dims(make_tiny):
    gpt2 = make_tiny("gpt2")
    assert linear_dims(gpt2.get_submodule("transformer.h.0.mlp.c_proj")) == (64, 32)  # d_ff -> d
    llama = make_tiny("llama")
    assert linear_dims(llama.get_submodule("model.layers.0.mlp.down_proj")) == (64, 32)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_wrapper_restores_bit_exact(kind, make_tiny, smol_tokenizer):
    model = make_tiny(kind, vocab_size=len(smol_tokenizer))
    before, ids = _snapshot(model), torch.tensor([encode_pair(smol_tokenizer, PROMPTS[0], "Oslo").prompt_ids])
    with torch.no_grad():
        base = model(ids).logits
    patches, mix = _mixture(model, MeanPooledHidden(0))
    assert isinstance(model.get_submodule(mix.names[0]), MoELoRALinear)
    with torch.no_grad():
        assert not torch.allclose(model(ids).logits, base)  # no gate: the experts answer
    patches.undo()  # one call: wrappers, feature hooks and the sequence tracker
    assert not any(isinstance(m, MoELoRALinear) for m in model.modules())
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert not model._forward_hooks and not model._forward_pre_hooks
    with torch.no_grad():
        assert torch.equal(model(ids).logits, base)


def test_deferral_gives_the_base_logits_exactly(make_tiny, smol_tokenizer):
    model = make_tiny("llama", vocab_size=len(smol_tokenizer))
    pairs = [encode_pair(smol_tokenizer, p, "Oslo") for p in PROMPTS]
    base = continuation_logits(model, pairs, pad_id(smol_tokenizer))[0]
    gate = SimilarityGate(0.999)
    patches, mix = _mixture(model, MeanAndLastHidden(0), gates=[gate])
    try:
        assert torch.equal(continuation_logits(model, pairs, pad_id(smol_tokenizer))[0], base)  # no edit: all deferred
        with torch.no_grad(), mix.capture() as features:
            model(torch.tensor([pairs[0].prompt_ids]))
        gate.add(features["text"][0])  # prompt 0 is now "edited", prompt 1 is not
        edited = continuation_logits(model, pairs, pad_id(smol_tokenizer))[0]
        assert torch.equal(edited[1], base[1]) and not torch.allclose(edited[0], base[0])
        assert mix.last_deferred.tolist() == [False, True]
    finally:
        patches.undo()


@pytest.mark.parametrize("feature", [LastTokenHidden(1), MeanPooledHidden(1), MeanAndLastHidden(0), MeanPooledHidden(-1)])
def test_one_routing_for_prefill_generate_and_teacher_forced_training(feature, make_tiny, smol_tokenizer):
    """The same prompt gets the same feature, routing and logits whether trained on or scored (left-padded)."""
    model, tok = make_tiny("llama", vocab_size=len(smol_tokenizer)), smol_tokenizer
    patches, mix = _mixture(model, feature)
    try:
        target = "Oslo and more"
        batch = make_edit_batch(tok, [PROMPTS[0]], [target])
        with mix.tracker.teacher_forcing(batch.key_positions), mix.capture() as train:
            stack = UpperStack(model, 2, batch)
        with mix.routed(train), mix.tracker.teacher_forcing(batch.key_positions):
            key = int(batch.key_positions[0])
            train_logits = stack.logits()[0, key:]  # position key + j predicts target token j
        train_code = mix.code(mix.route(train))
        # scoring: left-padded next to a longer prompt, prefill then continuation against the cache
        pairs = [encode_pair(tok, PROMPTS[0], target), encode_pair(tok, PROMPTS[1] + " Tell me.", target)]
        with mix.capture() as scored:
            logits, mask = continuation_logits(model, pairs, pad_id(tok))
        assert torch.allclose(scored["text"][0], train["text"][0], atol=1e-5)
        assert torch.equal(mix.code(mix.last)[0], train_code[0])
        n = int(mask[0].sum())
        assert torch.allclose(logits[0, :n], train_logits[:n], atol=1e-4)
        # generate: the decode steps keep the prefill's routing (no new capture after the prefill)
        with mix.capture() as generated:
            generate_greedy(model, [pairs[0].prompt_ids], [4], pad_id(tok))
        assert torch.allclose(generated["text"][0], train["text"][0], atol=1e-5)
        assert torch.equal(mix.code(mix.last)[0], train_code[0])
    finally:
        patches.undo()
