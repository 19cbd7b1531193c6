"""Generate a lifelong VLM editing benchmark from minedit's larger visual world, in the MMEdit (E-VQA) format.

Writes two JSON lists under ``vlm_bench/`` (one record per line) and, from them, the PNG renders they name
under ``vlm_bench/images/{eval,train}/`` (git-ignored: the images are a deterministic product of the JSON):

- ``eval.json``: 1,203 edits for sequential (lifelong) editing, in shuffled order (take the first T);
- ``train.json``: 3,383 edits on other scenes, for meta-training an editor (LiveEdit's expert generator).
  Its images are meant to be rendered in memory (:func:`record_images`); ``--split train`` (or ``all``)
  writes them as files too, for ``load_edits("mmedit:.../train.json")``.

Each record edits one visual question to a counterfactual answer of the same kind and carries the MMEdit
fields ``src``, ``pred``, ``alt``, ``rephrase`` (another phrasing, T-Gen), ``image``, ``image_rephrase``
(another render of the same scene, M-Gen), ``loc`` / ``loc_ans`` (a text-only question from
``zsre_sample.json``, T-Loc) and ``m_loc`` / ``m_loc_q`` / ``m_loc_a`` (another scene's image, a question and
its true answer, M-Loc), plus fields the loader ignores: ``id``, ``scene`` (caption), ``kind``, ``scene_id``,
``scene_spec`` (the :class:`minedit.world.Scene` fields), ``image_seed``, ``image_rephrase_seed``, and the
same for the M-Loc image (``m_loc_scene``, ``m_loc_kind``, ``m_loc_scene_id``, ``m_loc_scene_spec``,
``m_loc_seed``), and ``m_loc_hard``. Every image is ``world.render(world.Scene(**spec), seed)``, so a consumer
may also render in memory and never touch the files (:func:`record_images`).

Guarantees (checked by ``tests/test_vlm_bench.py``):

- no conflict: within a split, no two records edit the same (scene, question kind), and different scenes
  never share a render, so no two edits give one image and question different answers;
- the world's 1,368 scenes are cut into four disjoint sets, stratified by scene type and size: evaluation
  edits (23%), evaluation M-Loc scenes (6%), training M-Loc scenes (6%), training edits (the rest). An M-Loc
  scene is never edited in its split, so its true answer stays true after all of that split's edits, and no
  scene of one split appears in the other (edited, rephrase or M-Loc image). Each split asks every
  question of every one of its edit scenes: as many records as the world allows;
- render seeds are all distinct, in the held-out range that tiny-llava never trained on
  (:data:`minedit.world.HELD_OUT_SEED_BASE`): evaluation below 1.5e9, training from 1.5e9;
- the text locality questions of the two splits are disjoint halves of the pool;
- hard cases: exactly half of each split's records (``m_loc_hard: true``) ask the M-Loc image the edit's own
  question, ``m_loc_q == src``, with a true answer other than ``alt``; the other half ask it a question of
  another kind. The M-Loc scene always differs from the edited one in colour and in shape (or digit).

Sizes: eval.json 1.2 MB and train.json 3.3 MB (committed); the images, ~7 KB each: evaluation 3,609 PNGs,
29 MB, rendered in ~8 s on one core; training 10,149 PNGs, 80 MB, ~24 s (written only on request).
Usage: ``python data_samples/generate_vlm_bench.py [--seed 0] [--out-dir DIR]`` (records and evaluation
images), ``--images-only``: render only the missing images of the committed JSON (idempotent, for set-up);
``--split train`` or ``--split all``: the training split's images instead, or both.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
from pathlib import Path

from PIL import Image

from minedit import world

HERE = Path(__file__).resolve().parent
OUT = HERE / "vlm_bench"
SPLITS = ("eval", "train")
FRACTIONS = {"eval": 0.23, "eval_m_loc": 0.06, "train_m_loc": 0.06}  # of each scene group; training takes the rest
HARD_FRACTION = 0.5
BASE = world.HELD_OUT_SEED_BASE
SEED_RANGES = {"eval": (BASE, BASE + BASE // 2), "train": (BASE + BASE // 2, 2 * BASE)}
ROLES = ("image", "image_rephrase", "m_loc")


def scene_spec(scene: world.Scene) -> dict:
    """The scene's fields that are set: ``world.Scene(**scene_spec(s)) == s``."""
    return {k: v for k, v in dataclasses.asdict(scene).items() if v is not None}


def scene_id(scene: world.Scene) -> str:
    """A stable, unique name, e.g. ``"shapes:red:circle:1:left:small"`` or ``"digit:cyan:1:7"``."""
    return ":".join(str(v) for v in scene_spec(scene).values())


def split_scenes(rng: random.Random) -> dict[str, list[world.Scene]]:
    """The larger world's scenes, cut into four disjoint roles within each (type, size) group."""
    groups: dict[tuple, list[world.Scene]] = {}
    for scene in world.all_scenes(world.ALL_COLOURS, world.ALL_SIZES):
        groups.setdefault((scene.kind, scene.count == 1, scene.size), []).append(scene)
    roles: dict[str, list[world.Scene]] = {"eval": [], "eval_m_loc": [], "train_m_loc": [], "train": []}
    for group in groups.values():
        rng.shuffle(group)
        start = 0
        for role, fraction in FRACTIONS.items():
            stop = start + round(fraction * len(group))
            roles[role] += group[start:stop]
            start = stop
        roles["train"] += group[start:]
    return roles


def _unrelated(other: world.Scene, scene: world.Scene) -> bool:
    return other.colour != scene.colour and (other.shape, other.digit) != (scene.shape, scene.digit)


def make_records(split: str, edit_scenes: list[world.Scene], m_loc_scenes: list[world.Scene],
                 loc_pool: list[dict], rng: random.Random) -> list[dict]:
    """One record per (scene, question kind) of ``edit_scenes``, shuffled; M-Loc images from ``m_loc_scenes``."""
    pairs = [(scene, kind) for scene in edit_scenes for kind in scene.question_kinds]
    rng.shuffle(pairs)
    n_hard = round(HARD_FRACTION * len(pairs))
    hard_flags = [True] * n_hard + [False] * (len(pairs) - n_hard)
    rng.shuffle(hard_flags)
    lo, hi = SEED_RANGES[split]
    used: set[int] = set()

    def fresh_seed() -> int:
        while (seed := rng.randrange(lo, hi)) in used:
            pass  # pragma: no cover (a collision among ~10^4 draws from 5e8 is rare)
        used.add(seed)
        return seed

    records = []
    for i, ((scene, kind), hard) in enumerate(zip(pairs, hard_flags)):
        question, rephrase = rng.sample(world.QUESTIONS[kind], 2)
        truth = scene.answer(kind)
        alt = rng.choice([a for a in world.ALL_ANSWERS[kind] if a != truth])
        if hard:  # the same question about an unrelated image whose answer the edit must not take
            other = rng.choice([m for m in m_loc_scenes if kind in m.question_kinds and _unrelated(m, scene)
                                and m.answer(kind) != alt])
            other_kind, other_q = kind, question
        else:
            other = rng.choice([m for m in m_loc_scenes if _unrelated(m, scene)])
            other_kind = rng.choice([k for k in other.question_kinds if k != kind])
            other_q = rng.choice(world.QUESTIONS[other_kind])
        loc = loc_pool[i % len(loc_pool)]
        seeds = [fresh_seed() for _ in ROLES]
        names = {role: f"images/{split}/{i:04d}_{role}.png" for role in ROLES}
        records.append({
            "src": question, "pred": truth, "alt": alt, "rephrase": rephrase,
            "image": names["image"], "image_rephrase": names["image_rephrase"],
            "loc": loc["loc"], "loc_ans": loc["loc_ans"],
            "m_loc": names["m_loc"], "m_loc_q": other_q, "m_loc_a": other.answer(other_kind),
            "id": f"{split}-{i:04d}", "scene": scene.caption(), "kind": kind,
            "scene_id": scene_id(scene), "scene_spec": scene_spec(scene),
            "image_seed": seeds[0], "image_rephrase_seed": seeds[1],
            "m_loc_scene": other.caption(), "m_loc_kind": other_kind, "m_loc_scene_id": scene_id(other),
            "m_loc_scene_spec": scene_spec(other), "m_loc_seed": seeds[2], "m_loc_hard": hard,
        })
    return records


def make_bench(seed: int, loc_pool: list[dict]) -> dict[str, list[dict]]:
    """``{"eval": records, "train": records}``, a deterministic function of ``seed`` and ``loc_pool``."""
    rng = random.Random(seed)
    roles = split_scenes(rng)
    distinct = list({rec["loc"]: rec for rec in loc_pool}.values())  # one record per locality question
    rng.shuffle(distinct)
    half = len(distinct) // 2
    locs = {"eval": distinct[:half], "train": distinct[half:]}
    return {split: make_records(split, roles[split], roles[f"{split}_m_loc"], locs[split], rng) for split in SPLITS}


def record_images(record: dict) -> dict[str, Image.Image]:
    """The record's three images, rendered in memory from its scene specs and seeds."""
    scene, other = world.Scene(**record["scene_spec"]), world.Scene(**record["m_loc_scene_spec"])
    return {"image": world.render(scene, record["image_seed"]),
            "image_rephrase": world.render(scene, record["image_rephrase_seed"]),
            "m_loc": world.render(other, record["m_loc_seed"])}


def render_images(records: list[dict], root: Path) -> int:
    """Write the images ``records`` name (paths relative to ``root``) that are missing; returns how many."""
    written = 0
    for record in records:
        missing = [role for role in ROLES if not (root / record[role]).is_file()]
        if not missing:
            continue
        images = record_images(record)
        for role in missing:
            path = root / record[role]
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            images[role].save(tmp, format="PNG")
            os.replace(tmp, path)  # never leave a half-written PNG behind
            written += 1
    return written


def write_records(records: list[dict], path: Path) -> None:
    """A JSON list with one record per line (small, and diffs stay readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ",\n".join(json.dumps(r, ensure_ascii=False) for r in records)
    path.write_text(f"[\n{lines}\n]\n", encoding="utf-8")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=OUT)
    parser.add_argument("--images-only", action="store_true", help="render the missing images of the existing JSON")
    parser.add_argument("--split", choices=(*SPLITS, "all"), default="eval", help="whose images to write")
    args = parser.parse_args(argv)
    splits = SPLITS if args.split == "all" else (args.split,)
    if args.images_only:
        bench = {s: json.loads((args.out_dir / f"{s}.json").read_text(encoding="utf-8")) for s in SPLITS}
    else:
        loc_pool = json.loads((HERE / "zsre_sample.json").read_text(encoding="utf-8"))
        bench = make_bench(args.seed, loc_pool)
        for split in SPLITS:
            write_records(bench[split], args.out_dir / f"{split}.json")
        shutil.rmtree(args.out_dir / "images", ignore_errors=True)  # renders of the old records, if any
    written = sum(render_images(bench[s], args.out_dir) for s in splits)
    sizes = ", ".join(f"{len(bench[s])} {s}" for s in SPLITS)
    print(f"{args.out_dir}: {sizes} records; wrote {written} images ({'/'.join(splits)})")


if __name__ == "__main__":
    main()
