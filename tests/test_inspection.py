"""The routing inspector: what it reports is what the model used, an edit's prompt fires that edit's experts,
deferral is reported where it happens, the unedited answer is the unedited model's bit for bit, and inspecting
changes nothing (tiny random models, seeded)."""
import math

import matplotlib
import pytest
import torch

from minedit.data import EditRequest
from minedit.editors import ElderConfig, ElderEditor, GraceConfig, GraceEditor, LemoeConfig, LemoeEditor, WiseConfig, WiseEditor, make_editor
from minedit.hooks import record
from minedit.infer import generate_greedy, pad_id
from minedit.inspection import inspect_prompt, plot_weights, summary

matplotlib.use("Agg")

EDITS = [EditRequest("What is the capital of Peru?", "Oslo"), EditRequest("Who wrote the novel Dracula?", "Jane Austen")]
UNRELATED = "The weather today is sunny and warm, so we"
PROMPTS = [EDITS[0].prompt, EDITS[1].prompt, UNRELATED]


def _logits(model, tok, prompts):
    with torch.no_grad():
        return [model(torch.tensor([tok(p).input_ids])).logits for p in prompts]


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _greedy(model, tok, prompt, n=6):
    out = generate_greedy(model, [tok(prompt).input_ids], [n], pad_id(tok))[0]
    return tok.decode(out, skip_special_tokens=True).strip()


def _check_unchanged_and_unedited(editor, prompts, base_logits, base_answers):
    """Inspecting leaves the edited model as it was; ``before`` and ``patches.suspended()`` are the unedited model."""
    model, tok = editor.model, editor.tokenizer
    edited, hooks = _logits(model, tok, prompts), _hooks(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    found = [inspect_prompt(editor, p) for p in prompts]
    assert all(torch.equal(a, b) for a, b in zip(edited, _logits(model, tok, prompts)))
    assert _hooks(model) == hooks and all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with editor.patches.suspended():
        assert all(torch.equal(a, b) for a, b in zip(base_logits, _logits(model, tok, prompts)))
    assert _hooks(model) == hooks
    assert [f.before for f in found] == base_answers
    assert [f.after for f in found] == [_greedy(model, tok, p) for p in prompts]
    for f in found:
        assert f.deferred == any(g.defer for g in f.gates) or not f.gates
        for g in f.gates:
            assert g.defer == (g.margin < 0) or (g.gate == "WISE eps" and g.margin == 0)
    return found


def _check_mixture_used_the_reported_weights(editor, ins):
    """Run the prompt: each wrapper's output equals base + sum of the reported weights times its experts."""
    model, tok, mix = editor.model, editor.tokenizer, editor.mixture
    names = list(mix.names)
    with torch.no_grad(), record(model, names, point="input") as xs, record(model, names) as ys:
        model(torch.tensor([tok(ins.prompt).input_ids]))
    assert bool(mix.last_deferred[0]) == ins.deferred
    for i, (name, layer) in enumerate(zip(names, ins.layers)):
        wrapper, x = mix.wrappers[i], xs[name]
        used = mix.state.weights[i][0]  # what the layer multiplied its experts by
        assert torch.equal(used, torch.tensor(layer.weights, dtype=used.dtype) * (not ins.deferred))
        assert tuple(used.nonzero().flatten().tolist()) == layer.fired
        want = wrapper.base_layer(x)[0, -1]
        for e in layer.fired:
            want = want + layer.weights[e] * wrapper.experts[e](x)[0, -1]
        assert torch.allclose(ys[name][0, -1], want, atol=1e-5)


def test_elder_an_edit_fires_its_experts_and_an_unrelated_prompt_is_deferred(fresh_tiny_llama):
    model, tok = fresh_tiny_llama
    base_logits, base_answers = _logits(model, tok, PROMPTS), [_greedy(model, tok, p) for p in PROMPTS]
    editor = ElderEditor(model, tok, ElderConfig(steps=100, lr=3e-2, min_similarity=0.99))
    try:
        for request in EDITS:
            editor.edit(request)
        found = _check_unchanged_and_unedited(editor, PROMPTS, base_logits, base_answers)
        for n, ins in enumerate(found[:2]):  # each edit's prompt: its preset experts fire in every layer
            assert not ins.deferred and ins.after.startswith(EDITS[n].target)
            assert [set(layer.fired) for layer in ins.layers] == [set(p) for p in editor.presets[n].tolist()]
            assert all(math.isclose(sum(layer.weights), 1.0, rel_tol=1e-5) for layer in ins.layers)
            _check_mixture_used_the_reported_weights(editor, ins)
        unrelated = found[2]
        assert unrelated.deferred and all(layer.fired == () for layer in unrelated.layers)
        assert unrelated.after == unrelated.before
        assert [g.gate for g in unrelated.gates] == ["HammingGate", "SimilarityGate"]
        assert unrelated.gates[1].defer and unrelated.gates[1].score < 0.99
        _check_mixture_used_the_reported_weights(editor, unrelated)
        assert found[0].gates[0].score == 0 and found[0].gates[1].score == pytest.approx(1.0, abs=1e-4)
        assert list(found[0].weights().index) == ["layer 1", "layer 2"] and found[0].weights().shape[1] == 8
        assert len(summary(found)) == 3 and len(found[0].table()) == 2 and len(found[0].gate_table()) == 2
        ax = plot_weights(found[0])
        assert len(ax.patches) == sum(len(layer.fired) for layer in found[0].layers)  # fired experts outlined
    finally:
        editor.restore()
    assert not editor.patches and _hooks(model) == 0


def test_lemoe_each_batch_prompt_fires_its_own_expert(fresh_tiny_llama):
    model, tok = fresh_tiny_llama
    base_logits, base_answers = _logits(model, tok, PROMPTS), [_greedy(model, tok, p) for p in PROMPTS]
    editor = LemoeEditor(model, tok, LemoeConfig(layer=2, rank=8, steps=150, lr=2e-2, gate="none"))
    try:
        experts = [editor.edit_batch([r])[0]["expert"] for r in EDITS]
        assert experts == [0, 1]
        found = _check_unchanged_and_unedited(editor, PROMPTS, base_logits, base_answers)
        for n, ins in enumerate(found[:2]):
            assert not ins.deferred and ins.gates == () and [layer.fired for layer in ins.layers] == [(experts[n],)]
            _check_mixture_used_the_reported_weights(editor, ins)
        assert found[2].layers[0].fired != ()  # no gate: LEMoE's router sends every prompt to some expert
    finally:
        editor.restore()


def test_grace_reports_the_codebook_hit_and_its_radius(fresh_tiny_llama):
    model, tok = fresh_tiny_llama
    base_logits, base_answers = _logits(model, tok, PROMPTS), [_greedy(model, tok, p) for p in PROMPTS]
    editor = GraceEditor(model, tok, GraceConfig(layer=1, steps=200, eps=0.01))  # a tiny model's queries lie ~0.05 apart
    try:
        editor.edit(EDITS[0])
        found = _check_unchanged_and_unedited(editor, PROMPTS, base_logits, base_answers)
        hit, *others = found
        assert hit.layers[0].fired == (0,) and hit.gates[0].score == pytest.approx(0.0, abs=1e-4)
        assert hit.gates[0].threshold == pytest.approx(editor.config.eps) and hit.after.startswith(EDITS[0].target)
        for ins in found:  # the codebook's own choice on the same prompt
            with torch.no_grad():
                model(torch.tensor([tok(ins.prompt).input_ids]))
            assert editor.codebook._choice.tolist() == [ins.layers[0].fired[0] if ins.layers[0].fired else -1]
        assert any(ins.deferred and ins.after == ins.before for ins in others)
    finally:
        editor.restore()


def test_wise_reports_the_side_memory_score_against_eps(fresh_tiny_llama):
    model, tok = fresh_tiny_llama
    base_logits, base_answers = _logits(model, tok, PROMPTS), [_greedy(model, tok, p) for p in PROMPTS]
    config = WiseConfig(layer=2, steps=200, lr=0.05, alpha=0.02, beta=0.5, gamma=0.3, shards=2, shard_edits=1)
    editor = WiseEditor(model, tok, config)
    try:
        editor.edit(EDITS[0])
        found = _check_unchanged_and_unedited(editor, PROMPTS, base_logits, base_answers)
        assert not found[0].deferred and found[0].gates[0].margin > 0
        for ins in found:
            with torch.no_grad():
                model(torch.tensor([tok(ins.prompt).input_ids]))
            assert editor.memory._choice.tolist() == [ins.layers[0].fired[0] if ins.layers[0].fired else -1]
            assert ins.gates[0].threshold == pytest.approx(float(editor.memory.eps[editor.owner[0]]))
    finally:
        editor.restore()


def test_before_any_edit_and_unsupported_editors(fresh_tiny_llama):
    model, tok = fresh_tiny_llama
    ins = inspect_prompt(ElderEditor(model, tok, ElderConfig()), UNRELATED)
    assert ins.deferred and ins.layers == () and ins.before == ins.after == _greedy(model, tok, UNRELATED)
    with pytest.raises(TypeError, match="cannot inspect editor 'ft'"):
        inspect_prompt(make_editor("ft", model, tok), UNRELATED)
