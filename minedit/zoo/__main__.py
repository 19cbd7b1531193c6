"""``python -m minedit.zoo build|eval|export tiny-llava``: build, measure or export a zoo model."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from . import ZOO


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minedit.zoo", description=__doc__)
    parser.add_argument("command", choices=["build", "eval", "export"])
    parser.add_argument("name", choices=ZOO)
    parser.add_argument("--out", default=None, help="build: artifact folder (default: data_samples/tiny_llava); export: target folder")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="build: recipe override (repeatable)")
    parser.add_argument("--examples", type=int, default=400, help="eval: held-out renders to score")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from .build_tiny_llava import Recipe, build, evaluate
    from .tiny_llava import ARTIFACT, export, load

    if args.command == "build":
        fields = {f.name: f.type for f in dataclasses.fields(Recipe)}
        overrides = {}
        for item in args.set:
            key, _, value = item.partition("=")
            if key not in fields:
                parser.error(f"unknown recipe setting {key!r}; known: {', '.join(fields)}")
            try:
                overrides[key] = json.loads(value)
            except json.JSONDecodeError:
                parser.error(f"--set {key}: {value!r} is not a number, true/false or null")
        report = build(Path(args.out) if args.out else ARTIFACT, Recipe(**overrides))
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
