"""Generate the continual task suite (LLaVA-CMoE's CoIN-like benchmark on minedit's visual world).

Writes one file per task of :data:`minedit.continual.suite.DEFAULT_ORDER` under ``continual/``:
``{"task": NAME, "train": [...], "test": [...]}``, each record ``question``, ``answer``, ``items`` (the
scene's objects: ``[shape, colour, size, cell, digit]``) and ``seed`` (its render). Images are drawn in
memory from those (``minedit.continual.suite.render_items``), never stored. Test records use render
seeds from :data:`minedit.world.HELD_OUT_SEED_BASE` on, which no training record (and no tiny-llava
training image) uses. Deterministic: the same seed writes the same bytes.

Usage: ``python data_samples/generate_continual.py [--train 320] [--test 150] [--seed 0] [--out-dir DIR]``
"""
from __future__ import annotations

import argparse
from pathlib import Path

from minedit.continual.suite import DEFAULT_ORDER, generated_task, save_task


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=320, help="training records per task")
    parser.add_argument("--test", type=int, default=150, help="test records per task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=str(Path(__file__).parent / "continual"))
    args = parser.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in DEFAULT_ORDER:
        save_task(generated_task(name, args.train, args.test, args.seed), out / f"{name}.json")


if __name__ == "__main__":
    main()
