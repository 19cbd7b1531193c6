"""minedit.moe parts against their formulas, the mixture's state round trip, the keyed and dense routers,
the visual feature, allocation policies, the feature-layer guard, one-call teardown, and UpperStack parity."""
import pytest
import torch
import torch.nn.functional as F

from conftest import build_tiny_llava
from minedit.arch import layer_module_name
from minedit.errors import ConfigError
from minedit.moe import (FEATURES, ROUTERS, DenseRouter, ExpertLayer, ExpertSpec, FactorExpert, FFNExpert, FreshExperts,
                         HammingGate, KeyedRouter, LoRAExpert, MeanPooledHidden, Mixture, OnePerBatch, SharedPreset,
                         SimilarityGate, TopKRouter, VisionFeature, sequence_features)
from minedit.moe.layer import RoutingState
from minedit.patch import Patcher
from minedit.sequence import tracker_for
from minedit.training import FrozenHead, UpperStack, make_edit_batch

GEN = lambda seed=0: torch.Generator().manual_seed(seed)  # noqa: E731


def _randomise(module, seed):
    gen = GEN(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def test_expert_formulas():
    x = torch.randn(2, 5, 12, generator=GEN(1))
    lora = LoRAExpert(12, 7, rank=3, alpha=6.0, generator=GEN(2))
    assert torch.equal(lora(x), torch.zeros(2, 5, 7))  # B = 0: a new expert is a no-op
    _randomise(lora, 3)
    assert torch.allclose(lora(x), 2.0 * x @ lora.A.T @ lora.B.T, atol=1e-6)  # (alpha / r) B A x
    ffn = FFNExpert(12, 7, width=4, generator=GEN(4))
    assert torch.equal(ffn(x), torch.zeros(2, 5, 7))
    _randomise(ffn, 5)
    assert torch.allclose(ffn(x), F.silu(x @ ffn.W_in.T) @ ffn.W_out.T, atol=1e-6)
    U, V = torch.randn(4, 12, generator=GEN(6)), torch.randn(4, 7, generator=GEN(7))
    factors = FactorExpert(U, V)
    ln = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)
    assert torch.allclose(factors(x), torch.relu(ln @ U.T) @ V, atol=1e-5)  # LiveEdit: ReLU(LN(h) U^T) V
    assert factors.frozen and not any(p.requires_grad for p in factors.parameters())


def test_expert_layer_applies_weighted_experts_from_the_query_position():
    """h = W x + sum_e g_e expert_e(x), from each row's key position on, with mixed kinds and ranks."""
    base = torch.nn.Linear(12, 7)
    tracker = tracker_for(torch.nn.Identity())
    layer = ExpertLayer(base, RoutingState(tracker), 0, 12, 7)
    experts = [LoRAExpert(12, 7, 2, 4.0, GEN(1)), LoRAExpert(12, 7, 5, 5.0, GEN(2)), FFNExpert(12, 7, 3, GEN(3))]
    for i, e in enumerate(experts):
        _randomise(e, 10 + i)
        layer.add(e)
    x = torch.randn(2, 6, 12, generator=GEN(4))
    g = torch.tensor([[0.7, 0.0, 0.3], [0.0, 1.0, 0.0]])
    layer.state.weights[0] = g
    with tracker.teacher_forcing(torch.tensor([2, 4])):
        out = layer(x)
    delta = sum(g[:, e, None, None] * experts[e](x) for e in range(3))
    from_key = (torch.arange(6)[None] >= torch.tensor([2, 4])[:, None])[..., None]
    assert torch.allclose(out, base(x) + delta * from_key, atol=1e-6)
    layer.state.weights[0] = torch.zeros(2, 3)
    assert torch.equal(layer(x), base(x))  # every row deferred: exactly the base layer


def test_upper_stack_matches_a_full_forward(tiny_llama):
    model, tok = tiny_llama
    batch = make_edit_batch(tok, ["What is the capital of Peru?", "Who wrote it?"], ["Oslo", "Jane Austen"])
    with torch.no_grad():
        full = model(**batch.model_inputs()).logits
        for first in (0, 2, 3):
            assert torch.allclose(UpperStack(model, first, batch).logits(), full, atol=1e-5)


@pytest.mark.parametrize("kind", ["llama", "gpt2", "gpt_neox", "gptj"])
def test_upper_stack_from_a_layer_or_its_mlp_matches_a_full_forward(kind, make_tiny, smol_tokenizer):
    """Right-padded rows: a mask that is dropped (GPT-2 passes it positionally) shows in the logits."""
    model, tok = make_tiny(kind, vocab_size=len(smol_tokenizer)), smol_tokenizer
    batch = make_edit_batch(tok, ["What is the capital of Peru?", "Who wrote it?"], ["Oslo", "Jane Austen"])
    with torch.no_grad():
        full = model(**batch.model_inputs()).logits
        for first in (0, 2, 3):
            for from_mlp in (False, True):
                stack = UpperStack(model, first, batch, from_mlp=from_mlp)
                assert torch.allclose(stack.logits(), full, atol=1e-5), (first, from_mlp)


def test_upper_stack_from_the_mlp_gives_the_same_loss_and_gradients_with_experts_routed(fresh_tiny_llama):
    """LEMoE's training path: a bypass on the last layer's MLP, trained from the cached MLP input."""
    model, tok = fresh_tiny_llama
    batch = make_edit_batch(tok, ["What is the capital of Peru?", "Who wrote it?"], ["Oslo", "Jane Austen"])
    patches, mix = _pool(model)
    try:
        expert = mix.wrappers[1].experts[2]  # the FFN expert beside layer 3's whole MLP
        results = []
        for from_mlp in (False, True):
            with mix.tracker.teacher_forcing(batch.key_positions):
                stack = UpperStack(model, 3, batch, from_mlp=from_mlp)  # layer 3 is routed while caching too
                expert.requires_grad_(True)
                mix.state.weights = {0: torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.2, 0.8]]),
                                     1: torch.tensor([[0.3, 0.0, 0.7], [0.0, 0.0, 1.0]])}
                loss, _ = stack.target_loss(batch.labels)
                mix.state.clear()
            results.append((loss, torch.autograd.grad(loss, list(expert.parameters()))))
            expert.requires_grad_(False)
        (loss_a, grads_a), (loss_b, grads_b) = results
        assert torch.allclose(loss_a, loss_b, atol=1e-6) and loss_a > 0
        assert all(torch.allclose(a, b, atol=1e-6) and a.abs().sum() > 0 for a, b in zip(grads_a, grads_b))
    finally:
        patches.undo()


@pytest.mark.parametrize("bias", [False, True])
def test_frozen_head_matches_the_linear_and_its_input_gradient(bias):
    head = torch.nn.Linear(12, 50, bias=bias).requires_grad_(False)
    x = torch.randn(7, 12, generator=GEN(3), requires_grad=True)
    fast = FrozenHead(head)
    assert fast.fast
    out_a, out_b = fast(x), head(x)
    assert torch.allclose(out_a, out_b, atol=1e-6)
    g = torch.randn(7, 50, generator=GEN(4))
    (grad_a,), (grad_b,) = torch.autograd.grad(out_a, x, g), torch.autograd.grad(out_b, x, g)
    assert torch.allclose(grad_a, grad_b, atol=1e-6)
    with torch.no_grad():
        head.weight.mul_(2.0)  # changed in place: the transposed copy is made again
        assert torch.allclose(fast(x), head(x), atol=1e-6)
    head.weight.requires_grad_(True)  # a head being trained takes the plain path
    assert not FrozenHead(head).fast


def _pool(model, seed=0):
    """A mixture on layers 2, 3 with mixed experts (LoRA r=2 and r=6, an FFN), keyed and top-k routers, two gates."""
    patches = Patcher(model)
    feature = MeanPooledHidden(0)
    d = feature.dim(model)
    mix = Mixture(model, feature, [TopKRouter(d, 0, 2), KeyedRouter(d, k=1, hidden=8, generator=GEN(seed))],
                  [HammingGate(2), SimilarityGate(-1.0)])
    mix.install([layer_module_name(model, 2, "mlp_out"), layer_module_name(model, 3, "mlp")], patches)
    for i, w in enumerate(mix.wrappers):
        experts = [ExpertSpec("lora", 2, 4.0).build(w.d_in, w.d_out, GEN(seed + i)),
                   ExpertSpec("lora", 6, 6.0).build(w.d_in, w.d_out, GEN(seed + 5 + i)),
                   ExpertSpec("ffn", 3).build(w.d_in, w.d_out, GEN(seed + 9 + i))]
        mix.add_experts(i, experts, GEN(seed + 20 + i))
        for e in experts:
            _randomise(e, seed + 30 + i)
        w.experts[0].freeze()
    return patches, mix


def test_mixture_state_round_trip_reproduces_outputs_exactly(fresh_tiny_llama):
    model, tok = fresh_tiny_llama
    ids = torch.tensor([tok("What is the capital of Peru?").input_ids, tok("Who wrote Hamlet, a play?").input_ids])
    with torch.no_grad():
        base = model(ids).logits
    patches, mix = _pool(model, seed=0)
    with torch.no_grad(), mix.capture() as f:
        model(ids[:1])
    mix.remember(f)
    assert mix.code(mix.route(f)) is not None and mix.n_experts() == [3, 3]
    with torch.no_grad():
        edited = model(ids).logits
    assert not torch.allclose(edited, base)
    state = {k: v.clone() for k, v in mix.state_dict().items()}
    assert any(".ffn." in k for k in state) and any(k.endswith("lora.A") for k in state)
    patches.undo()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, base)

    patches, other = _pool(model, seed=7)  # different random parts, then the saved state
    other.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, edited)
    assert [e.frozen for e in other.wrappers[0].experts] == [True, False, False]
    assert torch.equal(other.routers[1].keys, mix.routers[1].keys) and len(other.gates[0]) == 1
    patches.undo()


def test_keyed_router_keys_are_fixed_and_route_by_top_k_softmax():
    router = KeyedRouter(6, k=1, hidden=4, generator=GEN(0))
    router.grow(3, GEN(1))
    assert "keys" not in dict(router.named_parameters()) and "keys" in router.state_dict()
    feats = torch.randn(5, 6, generator=GEN(2))
    v = router.query[2](F.silu(router.query[0](feats)))  # v = W_up SiLU(W_down e)
    r = router(feats)
    assert torch.allclose(r.probs, (v @ router.keys.T).softmax(-1), atol=1e-6)
    assert torch.equal(r.chosen[:, 0], r.probs.argmax(-1)) and torch.allclose(r.weights.sum(-1), torch.ones(5))
    keys = router.keys.clone()
    opt = torch.optim.Adam(router.parameters(), lr=0.1)
    router(feats).probs[:, 0].sum().backward()
    opt.step()
    assert torch.equal(router.keys, keys)  # in no optimiser
    router.anchor(torch.tensor([2]), feats[0])
    assert router(feats[:1]).chosen.tolist() == [[2]]  # an anchored key scores its own query highest


def test_dense_router_is_softmax_times_sigmoid():
    router = DenseRouter(6, tau=10.0)
    router.grow(4, GEN(0))
    feats = torch.randn(3, 6, generator=GEN(1))
    s = 10.0 * F.normalize(feats, dim=-1) @ router.keys.T
    r = router(feats)
    assert torch.allclose(r.weights, s.softmax(-1) * torch.sigmoid(s), atol=1e-6) and r.chosen is None
    assert (r.weights.sum(-1) < 1).all()  # the sigmoid lets every weight be small at once


def test_registries_build_parts_and_name_the_choices():
    assert isinstance(ROUTERS.build("cosine", d=4, k=2, tau=3.0, n_experts=0, unrelated=1), TopKRouter)
    with pytest.raises(ConfigError, match="unknown router 'magic'; choose one of: .*topk"):
        ROUTERS.get("magic")
    assert FEATURES.build("last", layer=1, last_weight=0.3).layer == 1


@pytest.mark.parametrize("layer", [-5, -2, 2, 3, 30])
def test_feature_layer_guard_refuses_every_layer_at_or_above_the_experts(layer, smol):
    from minedit.editors import ElderConfig, ElderEditor

    model, tok = smol
    with pytest.raises(ConfigError, match="must be -1"):
        ElderEditor(model, tok, ElderConfig(layers=(2, 3), feature_layer=layer))
    assert ElderEditor(model, tok, ElderConfig(layers=(2, 3), feature_layer=-1)).feature_layer == -1


def test_allocation_policies(fresh_tiny_llama):
    model, _ = fresh_tiny_llama
    spec, feat = ExpertSpec("lora", 2, 4.0), torch.randn(1, 32, generator=GEN(0))
    patches = Patcher(model)
    mix = Mixture(model, MeanPooledHidden(0), [TopKRouter(32, 0, 2), TopKRouter(32, 0, 2)])
    mix.install([layer_module_name(model, i, "mlp_out") for i in (2, 3)], patches)
    shared = SharedPreset(spec, 2)
    for i in range(2):
        shared.new_experts(mix, i, 4, GEN(i))
    a = shared.allocate(mix, feat, GEN(1))
    assert a.preset.shape == (2, 2) and len(a.trainable) == 8  # every shared expert may learn
    fresh = FreshExperts(spec, 2)
    b = fresh.allocate(mix, feat, GEN(2))
    fresh.commit(mix, b)
    assert b.preset.tolist() == [[0, 1], [0, 1]] and all(e.frozen for e in b.trainable)
    assert fresh.allocate(mix, feat, GEN(3)).preset.tolist() == [[2, 3], [2, 3]]
    fresh.commit(mix, fresh.allocate(mix, feat, GEN(3)))
    c = fresh.allocate(mix, feat, GEN(4))  # all 4 taken: the pool grows by k
    assert c.preset.tolist() == [[4, 5], [4, 5]] and mix.n_experts() == [6, 6]
    per_batch = OnePerBatch(spec)
    d = per_batch.allocate(mix, torch.randn(5, 32, generator=GEN(5)), GEN(5))
    assert d.preset.tolist() == [[6], [6]] and mix.n_experts() == [7, 7] and len(d.trainable) == 2
    patches.undo()


def test_one_undo_removes_every_hook_and_wrapper(fresh_tiny_llama):
    model, tok = fresh_tiny_llama
    before = {k: v.clone() for k, v in model.state_dict().items()}
    patches, mix = _pool(model)
    assert model._forward_pre_hooks and any(isinstance(m, ExpertLayer) for m in model.modules())
    patches.undo()
    assert not model._forward_pre_hooks and not model._forward_hooks
    assert not any(isinstance(m, ExpertLayer) or m._forward_hooks for m in model.modules())
    assert model.state_dict().keys() == before.keys() and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not hasattr(model, "_minedit_sequence_tracker")


def test_vision_feature_is_the_image_tokens_mean_and_never_stale():
    model = build_tiny_llava()
    feature = VisionFeature()
    image_token = model.config.image_token_id
    n_tokens = (32 // 16) ** 2
    pixels = torch.randn(1, 3, 32, 32, generator=GEN(0))
    with_image = torch.tensor([[1] + [image_token] * n_tokens + [5, 6], [1, 7, 8, 9, 10, 11, 12]])
    projector = model.get_submodule("model.multi_modal_projector")
    seen = []
    handle = projector.register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    value = sequence_features(model, {"input_ids": with_image, "pixel_values": pixels}, feature)
    handle.remove()
    assert torch.allclose(value[0], seen[0][0].mean(0), atol=1e-6) and torch.equal(value[1], torch.zeros_like(value[1]))
    assert feature.present.tolist() == [True, False]
    text_only = sequence_features(model, {"input_ids": with_image[1:]}, feature)
    assert torch.equal(text_only, torch.zeros_like(text_only))  # not the previous batch's image
    assert not model._forward_pre_hooks and not projector._forward_hooks


def test_keyed_router_expert_with_several_keys_scores_its_best_key():
    router = KeyedRouter(4, k=1)
    router.grow(2, GEN(0))
    edits = torch.eye(4)[:3]  # three edits, learnt by expert 1
    router.anchor(torch.tensor([1]), edits)
    assert router.n_experts == 2 and router.owner.tolist() == [0, 1, 1, 1]
    r = router(torch.eye(4)[:3] * 2)
    assert r.chosen[:, 0].tolist() == [1, 1, 1]  # each edit reaches expert 1 through its own key
    assert router.scores(torch.eye(4)[3:])[0, 1] == 0.0  # orthogonal to every key of expert 1


def test_mixture_with_a_text_and_a_visual_feature_routes_once_both_are_in():
    """Routers read the text feature, a gate the image's: a text-only batch gets the zero image feature."""
    model = build_tiny_llava()
    patches = Patcher(model)
    features = {"text": MeanPooledHidden(0), "image": VisionFeature()}
    gate = SimilarityGate(0.99, feature="image")
    mix = Mixture(model, features, [TopKRouter(32, 0, 1)], [gate])
    mix.install([layer_module_name(model, 1, "mlp_out")], patches)
    w = mix.wrappers[0]
    mix.add_experts(0, [ExpertSpec("lora", 2, 4.0).build(w.d_in, w.d_out, GEN(0))], GEN(1))
    token = model.config.image_token_id
    ids = torch.tensor([[1] + [token] * 4 + [5, 6]])
    pixels = torch.randn(1, 3, 32, 32, generator=GEN(2))
    try:
        with torch.no_grad(), mix.capture() as edit:
            model(input_ids=ids, pixel_values=pixels)
        assert set(edit) == {"text", "image"} and edit["image"].abs().sum() > 0
        mix.remember(edit)  # the edit's image is now known to the gate
        with torch.no_grad():
            model(input_ids=ids, pixel_values=pixels)
            assert mix.last_deferred.tolist() == [False]  # same image: the experts answer
            model(input_ids=ids, pixel_values=torch.randn(1, 3, 32, 32, generator=GEN(3)))
            assert mix.last_deferred.tolist() == [True]  # another image: deferred
            with mix.capture() as text_only:
                model(input_ids=torch.tensor([[1, 5, 6, 7]]))
        assert torch.equal(text_only["image"], torch.zeros(1, 32)) and mix.last_deferred.tolist() == [True]
    finally:
        patches.undo()
    assert not model._forward_pre_hooks
