"""Generate multimodal edit records in the MMEdit (EasyEdit E-VQA) format from minedit's visual world.

Writes ``mmedit_world/vqa_sample.json`` and the PNG renders it names, under ``mmedit_world/images/``.
Each record edits one visual question to a counterfactual answer of the same kind ("How many shapes
are there?" on three green squares: three -> two) and carries:

- ``src`` / ``pred`` / ``alt``: the question, the true answer, the new answer;
- ``rephrase``: the question in other words (T-Gen), same image;
- ``image_rephrase``: another render of the same scene (M-Gen);
- ``loc`` / ``loc_ans``: a text-only NQ-style question (T-Loc), taken from ``zsre_sample.json``;
- ``m_loc`` / ``m_loc_q`` / ``m_loc_a``: an unrelated image (other colour, other shape or digit) with
  its own question and true answer (M-Loc).

Renders use seeds from the held-out range (:data:`minedit.world.HELD_OUT_SEED_BASE`): tiny-llava never
trained on these pictures. Extra fields (``scene``, ``kind``) are ignored by the loader.
Usage: ``python data_samples/generate_mmedit.py [--n 220] [--seed 0]``.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from minedit import world

HERE = Path(__file__).resolve().parent
OUT = HERE / "mmedit_world"
N_RECORDS = 220


def _unrelated(rng: random.Random, scene: world.Scene) -> world.Scene:
    """A scene sharing neither colour nor shape (or digit) with ``scene``."""
    while True:
        other = world.sample_scene(rng)
        if other.colour != scene.colour and (other.shape, other.digit) != (scene.shape, scene.digit):
            return other


def _seed(rng: random.Random) -> int:
    return world.HELD_OUT_SEED_BASE + rng.randrange(world.HELD_OUT_SEED_BASE)


def make_records(n: int, seed: int, images: Path, loc_pool: list[dict]) -> list[dict]:
    rng = random.Random(seed)
    records = []
    images.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        scene = world.sample_scene(rng)
        kind = rng.choice(scene.question_kinds)
        question, rephrase = rng.sample(world.QUESTIONS[kind], 2)
        truth = scene.answer(kind)
        alt = rng.choice([a for a in world.ANSWERS[kind] if a != truth])
        other = _unrelated(rng, scene)
        other_kind = rng.choice(other.question_kinds)
        loc = loc_pool[i % len(loc_pool)]
        names = {}
        for role, sc in (("image", scene), ("image_rephrase", scene), ("m_loc", other)):
            names[role] = f"images/{i:04d}_{role}.png"
            world.render(sc, _seed(rng)).save(images.parent / names[role], optimize=True)
        records.append({
            "src": question, "pred": truth, "alt": alt, "rephrase": rephrase,
            "image": names["image"], "image_rephrase": names["image_rephrase"],
            "loc": loc["loc"], "loc_ans": loc["loc_ans"],
            "m_loc": names["m_loc"], "m_loc_q": rng.choice(world.QUESTIONS[other_kind]), "m_loc_a": other.answer(other_kind),
            "scene": scene.caption(), "kind": kind,
        })
    return records


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=N_RECORDS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=OUT)
    args = parser.parse_args(argv)
    loc_pool = json.loads((HERE / "zsre_sample.json").read_text(encoding="utf-8"))
    records = make_records(args.n, args.seed, args.out_dir / "images", loc_pool)
    path = args.out_dir / "vqa_sample.json"
    path.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {len(records)} records to {path}")


if __name__ == "__main__":
    main()
