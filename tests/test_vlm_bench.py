"""The lifelong VLM editing benchmark (data_samples/vlm_bench/) and the larger world it is drawn from.

The original world must draw exactly what it drew before the larger one was added (tiny-llava's shipped
artifact and the MMEdit sample were made from it): the hashes below were computed before that change.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import random

import pytest
from PIL import Image

from conftest import SAMPLES
from minedit import world
from minedit.data import load_edits

BENCH = SAMPLES / "vlm_bench"
_spec = importlib.util.spec_from_file_location("generate_vlm_bench", SAMPLES / "generate_vlm_bench.py")
gen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fields(scene: world.Scene) -> tuple:
    return scene.kind, scene.colour, scene.shape, scene.count, scene.position, scene.digit


# ---------------------------------------------------------------- the original world, unchanged

PINNED_RENDERS = [  # (scene, seed, sha256 of the pixels), computed before the world grew
    (world.Scene("shapes", "red", shape="triangle", count=3), 7,
     "fbb3e70f4eae33f9c191809d846e110aecb7e698b05fd23df4cb866d87c00073"),
    (world.Scene("shapes", "blue", shape="circle", count=1, position="left"), 0,
     "c6ec92587eb66eabc9d00ed5383809868fd417e9e210238e9902837fd4e46a2a"),
    (world.Scene("digit", "green", digit=7), 1234567,
     "3f7736e3bc99ab59aa4b30a2728ced332d838528639d75e99e9200f800ae4332"),
    (world.Scene("shapes", "purple", shape="diamond", count=4), world.HELD_OUT_SEED_BASE + 5,
     "3064d6c08b375ab7232dd01193d88594d4470a9b98bbacb7133a41d3001c8c7f"),
    (world.Scene("shapes", "orange", shape="square", count=1, position="bottom"), 42,
     "47777839bf7a1b51bed0403f2593d6babcdc503fb55760ff676d0dd435a9796f"),
    (world.Scene("digit", "yellow", digit=0), 2 * 10**9 - 1,
     "9b40d38a61cd22987b9054928a957ece54f64a4cef90333c37d43e9a12cebd0e"),
]


@pytest.mark.parametrize("scene, seed, digest", PINNED_RENDERS)
def test_original_renders_are_pixel_identical(scene, seed, digest):
    assert _sha(world.render(scene, seed).tobytes()) == digest


def test_original_world_lists_draws_and_samples_as_before():
    h = hashlib.sha256()
    for scene in world.all_scenes():
        h.update(repr(_fields(scene)).encode())
        h.update(world.render(scene, 3).tobytes())
    assert h.hexdigest() == "f41ccadbcbeffccb264aa5884b58377e0fbfe95da545dac3eb4c9aeb3ba0947a"
    h = hashlib.sha256()
    for e in world.examples(300, seed=0) + world.examples(300, seed=1, held_out=True):
        h.update(repr((_fields(e.scene), e.seed, e.question_kind, e.question, e.answer)).encode())
        h.update(e.image().tobytes())
    assert h.hexdigest() == "48841d8bd482de19f6f2c388988f1a85720dfb77522388a8938cca3f05346c7e"
    rng = random.Random(5)
    sampled = [_fields(world.sample_scene(rng)) for _ in range(2000)]
    assert _sha(repr(sampled).encode()) == "a6b72bfc18371542113558f39a36e0c4e712a9a2c5c5bd46e723c23aac09cd8d"
    assert world.ANSWERS["colour"] == tuple(world.COLOURS) and len(world.COLOURS) == 6 and "size" not in world.ANSWERS


# ---------------------------------------------------------------- the larger world

def test_larger_world_counts_and_questions():
    scenes = list(world.all_scenes(world.ALL_COLOURS, world.ALL_SIZES))
    assert len(set(scenes)) == len(scenes) == 1368
    assert sum(len(s.question_kinds) for s in scenes) == 5232
    assert len({s.caption() for s in scenes}) == len(scenes)
    assert set(world.all_scenes()) <= set(scenes)
    small = world.Scene("digit", "pink", digit=3, size="small")
    assert small.question_kinds == ("digit", "colour", "size") and small.answer("size") == "small"
    assert small.caption() == "the small digit three in pink"
    assert world.Scene("shapes", "red", shape="circle", count=2, size="large").caption() == "two large red circles"
    for scene in scenes:
        for kind in scene.question_kinds:
            assert scene.answer(kind) in world.ALL_ANSWERS[kind] and len(world.QUESTIONS[kind]) >= 2


def test_every_answer_is_one_token():
    from tokenizers import Tokenizer

    from minedit.bundled import resolve

    # SmolLM2's own tokenizer file (what AutoTokenizer wraps), without importing transformers or the model.
    tokenizer = Tokenizer.from_file(f"{resolve('smollm2-135m')}/tokenizer.json")
    words = {w for answers in world.ALL_ANSWERS.values() for w in answers}
    assert {w for w in words if len(tokenizer.encode(" " + w).ids) != 1} == set()
    assert len(tokenizer.encode(" teal").ids) == 2  # the check can fail: a word that is not one token


def test_colours_stay_apart_under_shading():
    """Any two fills differ by more than both shadings together in some channel (+-25 old, +-10 new)."""
    jitter = {c: 25 if c in world.COLOURS else 10 for c in world.ALL_COLOURS}
    names = list(world.ALL_COLOURS)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            gap = max(abs(x - y) for x, y in zip(world.ALL_COLOURS[a], world.ALL_COLOURS[b]))
            assert gap > jitter[a] + jitter[b] + 10, (a, b)


def _ink(image) -> int:
    """Pixels far from the pale background: the drawn area."""
    return sum(1 for p in image.getdata() if min(p) < 200)


def test_sizes_are_clearly_different():
    for kind, extra in (("digit", dict(digit=8)), ("shapes", dict(shape="square", count=1, position="left")),
                        ("shapes", dict(shape="square", count=3))):
        areas = {size: [_ink(world.render(world.Scene(kind, "blue", size=size, **extra), seed)) for seed in range(8)]
                 for size in world.ALL_SIZES}
        assert max(areas["small"]) < min(areas[None]) and max(areas[None]) < min(areas["large"]), (kind, areas)


# ---------------------------------------------------------------- the benchmark records

@pytest.fixture(scope="module")
def bench():
    return {split: json.loads((BENCH / f"{split}.json").read_text(encoding="utf-8")) for split in gen.SPLITS}


def test_committed_json_is_what_the_script_generates(bench):
    pool = json.loads((SAMPLES / "zsre_sample.json").read_text(encoding="utf-8"))
    assert gen.make_bench(0, pool) == bench


def test_sizes_and_hard_case_fraction(bench):
    assert len(bench["eval"]) >= 1000 and len(bench["train"]) >= 1500
    for records in bench.values():
        assert sum(r["m_loc_hard"] for r in records) == round(gen.HARD_FRACTION * len(records))


def test_records_are_consistent_and_never_conflict(bench):
    for split, records in bench.items():
        assert len({(r["scene_id"], r["kind"]) for r in records}) == len(records)  # one edit per (scene, question)
        assert len({r[role] for r in records for role in gen.ROLES}) == 3 * len(records)
        for r in records:
            scene, other = world.Scene(**r["scene_spec"]), world.Scene(**r["m_loc_scene_spec"])
            assert gen.scene_id(scene) == r["scene_id"] and gen.scene_id(other) == r["m_loc_scene_id"]
            assert r["pred"] == scene.answer(r["kind"]) and r["scene"] == scene.caption()
            assert r["alt"] != r["pred"] and r["alt"] in world.ALL_ANSWERS[r["kind"]]
            assert r["src"] != r["rephrase"] and {r["src"], r["rephrase"]} <= set(world.QUESTIONS[r["kind"]])
            assert r["m_loc_a"] == other.answer(r["m_loc_kind"]) and r["m_loc_q"] in world.QUESTIONS[r["m_loc_kind"]]
            assert other.colour != scene.colour and (other.shape, other.digit) != (scene.shape, scene.digit)
            if r["m_loc_hard"]:  # the edit's own question on another image, whose answer is not the new one
                assert r["m_loc_q"] == r["src"] and r["m_loc_kind"] == r["kind"] and r["m_loc_a"] != r["alt"]
            else:
                assert r["m_loc_kind"] != r["kind"]
            assert r["loc"].startswith("nq question:") and r["loc_ans"]


def test_m_loc_scenes_are_never_edited_and_splits_share_nothing(bench):
    scenes, seeds = {}, {}
    for split, records in bench.items():
        edited = {r["scene_id"] for r in records}
        m_loc = {r["m_loc_scene_id"] for r in records}
        assert edited.isdisjoint(m_loc)  # so an M-Loc answer stays true after all of the split's edits
        scenes[split] = edited | m_loc
        seeds[split] = [r[f"{role}_seed"] for r in records for role in gen.ROLES]
        lo, hi = gen.SEED_RANGES[split]
        assert all(lo <= s < hi for s in seeds[split]) and lo >= world.HELD_OUT_SEED_BASE
    assert scenes["eval"].isdisjoint(scenes["train"])
    assert len(set(seeds["eval"]) | set(seeds["train"])) == len(seeds["eval"]) + len(seeds["train"])
    assert {r["loc"] for r in bench["eval"]}.isdisjoint({r["loc"] for r in bench["train"]})
    assert {r["id"] for r in bench["eval"]}.isdisjoint({r["id"] for r in bench["train"]})


# ---------------------------------------------------------------- images from the JSON

def test_images_render_from_the_json_and_load(bench, tmp_path, capsys):
    subset = {"eval": bench["eval"][:4], "train": bench["train"][:2]}
    for split, records in subset.items():
        gen.write_records(records, tmp_path / f"{split}.json")
    gen.main(["--images-only", "--out-dir", str(tmp_path), "--split", "all"])
    assert "wrote 18 images" in capsys.readouterr().out
    assert sum(gen.render_images(records, tmp_path) for records in subset.values()) == 0  # idempotent
    for split, records in subset.items():
        data = load_edits(f"mmedit:{tmp_path / f'{split}.json'}")
        assert [(q.prompt, q.target, q.m_loc_question, q.m_loc_answer) for q in data] == \
               [(r["src"], r["alt"], r["m_loc_q"], r["m_loc_a"]) for r in records]
        for request, record in zip(data, records):
            again = gen.record_images(record)
            assert again["image"].tobytes() != again["image_rephrase"].tobytes()  # two renders of one scene
            for role, path in (("image", request.image), ("image_rephrase", request.image_rephrase),
                               ("m_loc", request.m_loc_image)):
                with Image.open(path) as image:
                    assert image.convert("RGB").tobytes() == again[role].tobytes()
    first, second = gen.record_images(bench["eval"][7]), gen.record_images(bench["eval"][7])
    assert all(first[role].tobytes() == second[role].tobytes() for role in gen.ROLES)
