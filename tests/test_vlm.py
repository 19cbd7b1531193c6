"""The vision-language path: the visual world, tiny-llava, image prompts, multimodal metrics and edits."""
from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

from minedit import world
from minedit.data import DataError, load_edits
from minedit.infer import continuation_logits, encode_pair, pad_id, predict_tokens
from minedit.metrics import MULTIMODAL_METRICS, reference_predictions, score_requests
from minedit.vision import expand_ids, pixel_values, render_prompt

from conftest import SAMPLES, edit_score_restore

MMEDIT_SAMPLE = SAMPLES / "mmedit_world" / "vqa_sample.json"


@pytest.fixture(scope="module")
def vlm():
    """(model, processor) of tiny-llava, as ``load_model`` gives them. Do not edit it."""
    from minedit.models import load_model

    return load_model("tiny-llava")


# ---------------------------------------------------------------- the visual world

def test_render_is_deterministic_and_renders_differ():
    scene = world.Scene("shapes", "red", shape="triangle", count=3)
    a, b = world.render(scene, 7), world.render(scene, 7)
    assert a.tobytes() == b.tobytes()
    assert a.size == (world.IMAGE_SIZE, world.IMAGE_SIZE)
    assert world.render(scene, 8).tobytes() != a.tobytes()


def test_scene_answers_and_questions():
    scene = world.Scene("shapes", "blue", shape="circle", count=1, position="left")
    assert scene.question_kinds == ("colour", "shape", "count", "position")
    assert [scene.answer(k) for k in scene.question_kinds] == ["blue", "circle", "one", "left"]
    digit = world.Scene("digit", "green", digit=7)
    assert digit.answer("digit") == "seven" and digit.caption() == "the digit seven in green"
    with pytest.raises(ValueError, match="no 'count' question"):
        digit.answer("count")
    assert len(set(world.all_scenes())) == len(list(world.all_scenes())) == 228


def test_held_out_renders_never_meet_training_renders():
    train = world.examples(500, seed=0)
    held = world.examples(500, seed=0, held_out=True)
    assert max(e.seed for e in train) < world.HELD_OUT_SEED_BASE <= min(e.seed for e in held)
    assert world.examples(20, seed=3) == world.examples(20, seed=3)


def test_answers_are_single_tokens(smol_tokenizer):
    words = [*world.COLOURS, *world.SHAPES, *world.COUNTS, *world.POSITIONS, *world.DIGITS]
    assert all(len(smol_tokenizer(" " + w).input_ids) == 1 for w in words)


# ---------------------------------------------------------------- processor and image prompts

def test_expand_ids_matches_the_llava_processor(vlm):
    _, processor = vlm
    image = world.render(world.Scene("digit", "red", digit=3), 1)
    text = render_prompt(processor, "What digit is shown?")
    assert text == "<empty_output>\nQuestion: What digit is shown?\nAnswer:"
    ours = expand_ids(processor, text, pixel_values(processor, image))
    theirs = processor(images=[image], text=[text], return_tensors="pt")
    assert ours == theirs["input_ids"][0].tolist()
    assert ours.count(processor.image_token_id) == 16
    assert torch.equal(pixel_values(processor, image), theirs["pixel_values"])


def test_one_image_token_count_for_processor_config_and_spec(vlm):
    """vision.num_image_tokens agrees with the model's config, the processor's expansion and the zoo's spec."""
    from minedit.vision import num_image_tokens
    from minedit.zoo.tiny_llava import TinyLlavaSpec
    from minedit.zoo.tiny_llava import num_image_tokens as spec_tokens

    model, processor = vlm
    n = model.config.image_seq_length
    assert num_image_tokens(model.config.vision_config) == num_image_tokens(processor) == spec_tokens() == n == 16
    assert num_image_tokens(TinyLlavaSpec(image_size=96, patch_size=16)) == 36
    pixels = pixel_values(processor, world.examples(1, seed=0)[0].image())
    image_ids = expand_ids(processor, processor.image_token, pixels)
    assert image_ids.count(processor.tokenizer.convert_tokens_to_ids(processor.image_token)) == n


def test_encode_pair_with_image_keeps_target_tokens(vlm, smol_tokenizer):
    _, processor = vlm
    image = world.render(world.Scene("shapes", "green", shape="square", count=2), 5)
    pair = encode_pair(processor, "What color is the object?", "yellow", image)
    assert pair.target_ids == tuple(smol_tokenizer(" yellow").input_ids)
    assert pair.pixel_values.shape == (1, 3, 64, 64)
    text = encode_pair(processor, "The capital of France is", "Paris")
    assert text.pixel_values is None and text == encode_pair(smol_tokenizer, "The capital of France is", "Paris")


def test_cached_continuation_equals_one_forward_with_images(vlm):
    model, processor = vlm
    image = world.render(world.Scene("shapes", "purple", shape="diamond", count=4), 2)
    pairs = [encode_pair(processor, "How many shapes are there?", "four of them", image),
             encode_pair(processor, "The capital of Italy is", "Rome")]
    logits, mask = continuation_logits(model, pairs, pad_id(processor))
    for row, pair in enumerate(pairs):  # each row alone, one plain forward over prompt + target
        ids = torch.tensor([list(pair.prompt_ids) + list(pair.target_ids)])
        extra = {"pixel_values": pair.pixel_values} if pair.pixel_values is not None else {}
        with torch.no_grad():
            full = model(input_ids=ids, **extra).logits[0, len(pair.prompt_ids) - 1: -1]
        n = int(mask[row].sum())
        torch.testing.assert_close(logits[row, :n], full, atol=2e-4, rtol=1e-4)


# ---------------------------------------------------------------- tiny-llava

def test_tiny_llava_is_a_real_llava_over_smollm2(vlm, smol):
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    model, processor = vlm
    assert isinstance(model, LlavaForConditionalGeneration) and isinstance(processor, LlavaProcessor)
    assert model.config.text_config.model_type == "llama"
    lm = model.model.language_model
    # Everything but the attention projections (which carry the merged LoRA) is SmolLM2's own weights.
    assert torch.equal(lm.embed_tokens.weight, smol[0].model.embed_tokens.weight)
    assert torch.equal(lm.layers[5].mlp.down_proj.weight, smol[0].model.layers[5].mlp.down_proj.weight)
    assert not torch.equal(lm.layers[5].self_attn.q_proj.weight, smol[0].model.layers[5].self_attn.q_proj.weight)
    assert not any(p.requires_grad for p in model.parameters())


def test_tiny_llava_answers_held_out_renders(vlm):
    from minedit.zoo.build_tiny_llava import evaluate

    model, processor = vlm
    report = evaluate(model, processor, 120, seed=1)  # other held-out renders than the build's check
    assert report["exact_match"] >= 0.9, report


def test_export_loads_as_a_llava_hf_folder(vlm, tmp_path):
    from minedit.models import load_model
    from minedit.zoo.tiny_llava import export

    model, processor = vlm
    export(tmp_path / "tl")
    again, proc2 = load_model(str(tmp_path / "tl"))
    pair = encode_pair(processor, "What shape is shown?", "circle", world.render(world.Scene("shapes", "red", shape="circle"), 0))
    assert predict_tokens(again, [pair], pad_id(proc2)) == predict_tokens(model, [pair], pad_id(processor))
    assert type(proc2.image_processor).__name__.startswith("CLIPImageProcessor")


def test_tiny_build_is_deterministic(tmp_path):
    from safetensors.torch import load_file

    from minedit.zoo.build_tiny_llava import Recipe, build

    recipe = Recipe(align_images=64, align_steps=3, align_batch=8, tune_examples=8, tune_steps=2, tune_batch=2,
                    eval_examples=4)
    build(tmp_path / "a", recipe)
    build(tmp_path / "b", recipe)
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(".lora_A" in k for k in a) and any("vision_tower" in k for k in a)


# ---------------------------------------------------------------- data, metrics, edits

def test_shipped_mmedit_sample_loads():
    requests = load_edits(f"mmedit:{MMEDIT_SAMPLE}")
    assert len(requests) >= 200
    r = requests[0]
    assert r.image and r.image_rephrase and r.m_loc_image and r.rephrases and r.locality
    assert r.image != r.image_rephrase and Image.open(r.image).size == (64, 64)


def test_mmedit_loader_names_record_and_field_of_a_bad_image(tmp_path):
    records = json.loads(MMEDIT_SAMPLE.read_text())[:3]
    (tmp_path / "broken.png").write_bytes(b"not a png")
    records[1] = {**records[1], "image": "broken.png"}
    for r in (records[0], records[2]):
        for key in ("image", "image_rephrase", "m_loc"):
            r[key] = str(MMEDIT_SAMPLE.parent / r[key])
    records[1]["image_rephrase"] = str(MMEDIT_SAMPLE.parent / records[1]["image_rephrase"])
    records[1]["m_loc"] = str(MMEDIT_SAMPLE.parent / records[1]["m_loc"])
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    with pytest.raises(DataError, match=r"record 1: field 'image': not a readable image"):
        load_edits(f"mmedit:{path}")
    assert len(load_edits(f"mmedit:{path}", errors="skip")) == 2


def test_multimodal_scores_of_the_unedited_model(vlm):
    model, processor = vlm
    requests = load_edits(f"mmedit:{MMEDIT_SAMPLE}", limit=6)
    reference = reference_predictions(model, processor, requests)
    rows = score_requests(model, processor, requests, reference)
    for row, r in zip(rows, requests):
        assert list(row) == list(MULTIMODAL_METRICS)
        assert row["t_loc"] == 1.0 and row["m_loc"] == 1.0  # nothing edited yet
    assert sum(row["rel"] for row in rows) <= 1  # targets are counterfactual answers
    # the unedited model answers the true answer instead
    truth = [r.ground_truth for r in requests]
    pairs = [encode_pair(processor, r.prompt, t, r.image) for r, t in zip(requests, truth)]
    hits = [list(p.target_ids) == pred.tolist() for p, pred in zip(pairs, predict_tokens(model, pairs, pad_id(processor)))]
    assert sum(hits) >= 5


def test_grace_edits_the_vlm_through_its_language_model(vlm):
    from minedit.editors import make_editor
    from minedit.runner import RunConfig, run_lifelong

    model, processor = vlm
    before = {k: v.clone() for k, v in model.state_dict().items()}
    requests = load_edits(f"mmedit:{MMEDIT_SAMPLE}", limit=4)
    editor = make_editor("grace", model, processor)
    assert editor.module_name.startswith("model.language_model.layers.")
    result = run_lifelong(editor, requests, RunConfig(progress=False, latency_repeats=1))
    assert list(result.metrics) == list(MULTIMODAL_METRICS)
    assert result.metrics["rel"] == 1.0 and result.metrics["rel_em"] == 1.0
    assert result.metrics["t_loc"] == 1.0 and result.metrics["m_loc"] == 1.0
    assert not math.isnan(result.metrics["m_gen"])
    editor.restore()
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_bench_cli_defaults_to_the_shipped_mmedit_sample(tmp_path, capsys):
    from minedit.cli import main

    out = tmp_path / "run"
    assert main(["bench", "--model", "tiny-llava", "--editor", "grace", "--edits", "2", "--no-exact", "--out", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["data"].startswith("mmedit:") and result["data"].endswith("vqa_sample.json")
    assert list(result["metrics"]) == list(MULTIMODAL_METRICS)
    assert result["metrics"]["rel"] == 1.0 and result["metrics"]["rel_em"] is None  # --no-exact
    assert "m_loc" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["ft", "lora", "elder"])
def test_every_editor_edits_the_vlm_and_restores_it(vlm, name):
    from minedit.editors import make_editor

    model, processor = vlm
    request = load_edits(f"mmedit:{MMEDIT_SAMPLE}", limit=1)[0]
    row = edit_score_restore(make_editor(name, model, processor), request)
    assert row["rel"] == 1.0, row


def test_image_edits_on_a_text_model_fail_with_one_line(tmp_path, capsys):
    from minedit.cli import main

    code = main(["bench", "--model", "smollm2-135m", "--data", f"mmedit:{MMEDIT_SAMPLE}", "--edits", "2", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "vqa_sample.json: record 0: field 'image': asks about an image, but the model is text-only" in err
