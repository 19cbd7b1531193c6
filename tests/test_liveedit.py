"""LiveEdit's parts against their formulas (visual hard filter, softmax x sigmoid, the generator), the
build's cached features against the inference feature, and the editor: no training per edit, text-only
queries untouched, exact restore, save/load round trip."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from minedit.data import load_edits
from minedit.infer import continuation_logits, encode_pair, pad_id
from minedit.moe import FactorExpert, ImageTextHidden, sequence_features
from minedit.moe.filtering import VisualFilterRouter
from minedit.moe.generator import ANSWER, IMAGE, PAD, QUESTION, ExpertGenerator, expert_delta, segments_for
from minedit.training import UpperStack, batch_from_pairs

from conftest import SAMPLES, edit_score_restore

GEN = lambda seed=0: torch.Generator().manual_seed(seed)  # noqa: E731
MMEDIT_SAMPLE = SAMPLES / "mmedit_world" / "vqa_sample.json"


def test_visual_filter_keeps_experts_nearer_than_the_sentinel_and_weights_survivors_softmax_times_sigmoid():
    router = VisualFilterRouter(2 * 6, width=5, tau=4.0, generator=GEN(0))
    router.centre.copy_(torch.randn(12, generator=GEN(4)))  # what the build sets: its edits' mean feature
    edits = torch.randn(4, 12, generator=GEN(1))
    router.grow(4)
    router.anchor(torch.arange(4), edits)
    queries = torch.cat([edits[:2] + 0.05 * torch.randn(2, 12, generator=GEN(2)), torch.randn(3, 12, generator=GEN(3))])
    queries[-1, :6] = 0  # a text-only query
    r = router(queries)
    q, e = queries - router.centre, edits - router.centre
    phi = F.normalize(q[:, :6] @ router.proj_image.T, dim=-1)
    psi = F.normalize(q[:, 6:] @ router.proj_text.T, dim=-1)
    keys_phi = F.normalize(e[:, :6] @ router.proj_image.T, dim=-1)
    keys_psi = F.normalize(e[:, 6:] @ router.proj_text.T, dim=-1)
    keep = phi @ keys_phi.T > phi @ F.normalize(router.sentinel, dim=0)[:, None]
    keep[-1] = False  # no image: no expert
    s = 4.0 * psi @ keys_psi.T + router.bias
    expected = torch.zeros(5, 4)
    for b in range(5):
        if keep[b].any():
            expected[b, keep[b]] = s[b, keep[b]].softmax(-1) * torch.sigmoid(s[b, keep[b]])
    assert torch.allclose(r.weights, expected, atol=1e-6)
    assert r.defer.tolist() == (~keep.any(-1)).tolist() and r.defer[-1]
    assert keep[0, 0] and keep[1, 1]  # a near copy of an edit's features keeps that edit's expert


def test_routing_training_keeps_an_edits_scene_and_rejects_every_other():
    """Phase 1 of the build on synthetic features: scenes are clusters of image features (renders are
    noisy copies), question kinds clusters of text features, all sharing one large direction (as a late
    layer's states do). After training, another render of an edit's scene passes the filter for that
    scene's edits only, an image of a scene never edited for none, and the soft routing weights the
    edit of the query's own kind most."""
    from minedit.zoo.build_liveedit import Recipe, train_routing

    g, d = GEN(5), 32
    scene_at = torch.randn(16, d, generator=g) * 3  # 12 edited scenes, 4 never edited (M-Loc images)
    kind_at = torch.randn(2, d, generator=g) * 3  # 2 kinds of question
    common = torch.randn(2 * d, generator=g) * 10

    def feature(scene, kind):
        return torch.cat([scene_at[scene], kind_at[kind]]) + common + 0.3 * torch.randn(2 * d, generator=g)

    def record(scene, kind):
        probes = [("rel", {"feat": feature(scene, kind)}), ("m_gen", {"feat": feature(scene, kind)}),
                  ("m_loc", {"feat": feature(12 + scene % 4, kind)})]
        return {"scene": scene, "kind": kind, "edit": {"feat": feature(scene, kind)}, "probes": probes}

    records = [record(s, k) for s in range(12) for k in range(2)]  # edit e: scene e // 2, kind e % 2
    router = VisualFilterRouter(2 * d, width=16, generator=GEN(6))
    history = train_routing(router, records, Recipe(route_steps=300, route_batch=24, route_lr=1e-2))
    assert history[-1]["visual"] < 0.2 * history[0]["visual"]
    assert torch.allclose(router.centre, torch.stack([r["edit"]["feat"] for r in records]).mean(0))
    router.grow(len(records))
    router.anchor(torch.arange(len(records)), torch.stack([r["edit"]["feat"] for r in records]))
    renders = torch.stack([r["probes"][1][1]["feat"] for r in records])  # M-Gen: another render of the scene
    visual, sentinel, _ = router.scores(renders)
    same_scene = torch.arange(24)[None] // 2 == torch.arange(24)[:, None] // 2
    assert torch.equal(visual > sentinel, same_scene)
    visual, sentinel, _ = router.scores(torch.stack([r["probes"][2][1]["feat"] for r in records]))
    assert not (visual > sentinel).any()  # unrelated images keep nothing
    assert (router(renders).weights.argmax(-1) == torch.arange(24)).all()  # its own kind's edit weighs most


def test_generator_shapes_padding_and_batched_delta_match_the_factor_expert():
    g = ExpertGenerator(16, rank=3, width=8, heads=2, generator=GEN(0))
    ids = torch.tensor([[9, 9, 4, 5, 6, 7]])
    seg = segments_for(ids, torch.ones_like(ids), torch.tensor([3]), image_token=9)
    assert seg.tolist() == [[IMAGE, IMAGE, QUESTION, QUESTION, ANSWER, ANSWER]]
    hidden = torch.randn(1, 6, 16, generator=GEN(1))
    U, V = g(hidden, seg)
    assert U.shape == V.shape == (1, 3, 16)
    padded = torch.cat([hidden, torch.randn(1, 3, 16, generator=GEN(2))], dim=1)  # padding is never attended
    U2, V2 = g(padded, torch.cat([seg, torch.full((1, 3), PAD)], dim=1))
    assert torch.allclose(U, U2, atol=1e-6) and torch.allclose(V, V2, atol=1e-6)
    x = torch.randn(1, 4, 16, generator=GEN(3))
    assert torch.allclose(expert_delta(x, U, V)[0], FactorExpert(U[0], V[0])(x[0]), atol=1e-6)


@pytest.fixture(scope="module")
def vlm():
    from minedit.models import load_model

    return load_model("tiny-llava")


@pytest.fixture(scope="module")
def requests_():
    return load_edits(f"mmedit:{MMEDIT_SAMPLE}", limit=4)


def test_the_builds_cached_feature_is_the_inference_feature(vlm, requests_):
    """The build reads routing features from a teacher-forced pass; the editor's router reads them at a
    left-padded prefill. Both must be the same vectors, or the trained routing would not transfer."""
    from minedit.zoo.build_liveedit import image_text_means

    model, processor = vlm
    layer = 29
    pairs = [encode_pair(processor, r.prompt, r.target, r.image) for r in requests_[:2]]
    batch = batch_from_pairs(pairs, pad_id(processor))
    stack = UpperStack(model, layer, batch)
    seg = segments_for(batch.input_ids, batch.attention_mask, batch.key_positions, model.config.image_token_id)
    cached = image_text_means(stack.hidden, seg)
    text_only = encode_pair(processor, "what is the capital of Peru?", "Lima")
    prompts = [p.prompt_ids for p in pairs] + [text_only.prompt_ids]
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id(processor)] * (width - len(p)) + list(p) for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    pixels = torch.cat([p.pixel_values for p in pairs])
    live = sequence_features(model, {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels},
                             ImageTextHidden(layer - 1))
    assert torch.allclose(live[:2], cached, atol=1e-4)
    assert torch.equal(live[2, :576], torch.zeros(576)) and live[2, 576:].abs().sum() > 0


@pytest.fixture
def artifact(tmp_path_factory):
    """An untrained generator artifact for tiny-llava's shapes (the editor's mechanics, not its quality)."""
    from minedit.zoo.build_liveedit import Recipe, save

    recipe = Recipe(width=32, heads=2, route_width=16)
    folder = tmp_path_factory.mktemp("liveedit")
    generator = ExpertGenerator(576, recipe.rank, recipe.width, recipe.heads, generator=GEN(0))
    with torch.no_grad():  # a trained generator's V is not zero: large enough to change the logits visibly
        generator.out_v.weight.copy_(torch.randn(generator.out_v.weight.shape, generator=GEN(2)) * 0.5)
    router = VisualFilterRouter(2 * 576, recipe.route_width, generator=GEN(1))
    from dataclasses import asdict

    save(folder, generator, router, {"layer": 29, "d": 576, "recipe": asdict(recipe)})
    return folder


def test_liveedit_generates_experts_without_training_and_leaves_text_only_prompts_alone(vlm, requests_, artifact):
    from minedit.editors import LiveEditConfig, LiveEditEditor

    model, processor = vlm
    editor = LiveEditEditor(model, processor, LiveEditConfig(generator=str(artifact)))
    own = encode_pair(processor, requests_[0].prompt, requests_[0].target, requests_[0].image)
    text = encode_pair(processor, "what is the capital of Peru?", "Lima")
    before = [continuation_logits(model, [p], pad_id(processor))[0] for p in (own, text)]
    params = {k: v.clone() for k, v in model.state_dict().items()}
    stats = editor.edit_batch(requests_[:2])
    assert [s["expert"] for s in stats] == [0, 1] and stats[-1]["experts"] == 2
    after = [continuation_logits(model, [p], pad_id(processor))[0] for p in (own, text)]
    assert not torch.allclose(after[0], before[0], atol=1e-4)  # its own prompt passes the filter (same image)
    assert torch.equal(after[1], before[1])  # text-only: no expert survives
    assert editor.mixture.last_deferred.tolist() == [True]
    assert all(torch.equal(params[k], v) for k, v in model.state_dict().items() if k in params)  # nothing trained
    editor.restore()


def test_liveedit_save_load_round_trip_and_exact_restore(vlm, requests_, artifact, tmp_path):
    from minedit.editors import LiveEditConfig, LiveEditEditor, load_editor

    model, processor = vlm
    editor = LiveEditEditor(model, processor, LiveEditConfig(generator=str(artifact)))
    editor.edit_batch(requests_[:3])
    own = encode_pair(processor, requests_[1].prompt, requests_[1].target, requests_[1].image)
    edited = continuation_logits(model, [own], pad_id(processor))[0]
    editor.save(tmp_path / "saved")
    editor.restore()
    loaded = load_editor(tmp_path / "saved", model, processor)
    assert loaded.n_edits == 3 and torch.equal(continuation_logits(model, [own], pad_id(processor))[0], edited)
    loaded.restore()
    edit_score_restore(LiveEditEditor(model, processor, LiveEditConfig(generator=str(artifact))), requests_[3])


def test_liveedit_without_an_artifact_says_how_to_build_one(vlm, tmp_path):
    from minedit.editors import LiveEditConfig, LiveEditEditor
    from minedit.errors import ConfigError

    with pytest.raises(ConfigError, match="python -m minedit.zoo build liveedit-generator"):
        LiveEditEditor(*vlm, LiveEditConfig(generator=str(tmp_path)))


def test_the_shipped_generator_writes_working_experts_in_one_pass(vlm):
    """The trained artifact in data_samples/liveedit on 10 evaluation edits (scenes the build never saw),
    edited in one batch: the edits and their rephrases take the new answer, text-only questions keep
    theirs, and restore brings every weight back."""
    from minedit.editors import make_editor
    from minedit.metrics import reference_predictions, score_requests, summarize

    bench = SAMPLES / "vlm_bench" / "eval.json"
    requests = load_edits(f"mmedit:{bench}", limit=10)
    model, processor = vlm
    reference = reference_predictions(model, processor, requests)
    unedited = summarize(score_requests(model, processor, requests, reference, exact=False))
    editor = make_editor("liveedit", model, processor)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    editor.edit_batch(requests)
    edited = summarize(score_requests(model, processor, requests, reference, exact=False))
    editor.restore()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert unedited["rel"] < 0.5 and edited["rel"] >= 0.9 and edited["t_gen"] >= 0.8
    assert edited["t_loc"] == 1.0
