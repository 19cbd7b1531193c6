"""``python -m minedit.zoo build|eval|export tiny-llava``, ``build liveedit-generator``: build, measure or export a zoo model."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import ZOO
from ..errors import UserError
from ..keyvalue import parse_assignments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minedit.zoo", description=__doc__)
    parser.add_argument("command", choices=["build", "eval", "export"])
    parser.add_argument("name", choices=ZOO)
    parser.add_argument("--out", default=None, help="build: artifact folder (default: data_samples/tiny_llava or data_samples/liveedit); export: target folder")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="build: recipe override (repeatable)")
    parser.add_argument("--examples", type=int, default=400, help="eval: held-out renders to score")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from .build_tiny_llava import Recipe, build, evaluate
    from ..editors.base import config_from_dict
    from .tiny_llava import export, load

    if args.name == "liveedit-generator":
        from . import build_liveedit

        if args.command != "build":
            parser.error("liveedit-generator has only: build")
        try:
            recipe = config_from_dict(build_liveedit.Recipe, parse_assignments(args.set))
        except UserError as err:
            parser.error(str(err))
        print(json.dumps(build_liveedit.build(Path(args.out) if args.out else None, recipe), indent=1))
        return 0
    if args.command == "build":
        try:  # a value of the wrong type is refused naming the field (``--set align_steps=many``)
            recipe = config_from_dict(Recipe, parse_assignments(args.set))
        except UserError as err:
            parser.error(str(err))
        report = build(Path(args.out) if args.out else None, recipe)
        print(json.dumps(report, indent=1))
    elif args.command == "eval":
        model, processor = load()
        print(json.dumps(evaluate(model, processor, args.examples), indent=1))
    else:
        if not args.out:
            parser.error("export needs --out FOLDER")
        print(export(Path(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
