"""``python -m detlit.split``: a seeded, stratified, leak-free train/val split of a COCO dataset.

Examples::

    python -m detlit.split data/all.json --images data/images --out data/split
    python -m detlit.split data/all.json --images data/images --out data/folds --folds 5
    python -m detlit.split export/train.json export/valid.json --images export/train export/valid \\
        --out data/split --val-fraction 0.15 --group-pattern '(.+)\\.rf\\.'

Writes ``--out/train.json`` and ``--out/val.json`` together, both or neither (with ``--folds K``:
``--out/fold_1/train.json`` ... ``--out/fold_K/val.json``, all or none; see
:mod:`detlit.data.split`). Ctrl-C stops it with exit status 130 and one line, before or after
the pair is written, never between.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from detlit.common import command


def val_fraction(text: str) -> float:
    value = command.fraction(text)
    if value in (0.0, 1.0):
        raise argparse.ArgumentTypeError(f"{value:g} leaves one side empty; give a fraction between 0 and 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = command.parser("split", "Split a COCO dataset into train and val.")
    parser.add_argument("json", type=Path, nargs="+", help="COCO json file(s); several are merged first")
    parser.add_argument(
        "--images", type=Path, nargs="+", required=True, metavar="FOLDER", help="image folder of each json"
    )
    parser.add_argument("--out", type=Path, required=True, metavar="FOLDER", help="folder for train.json and val.json")
    parser.add_argument(
        "--val-fraction", type=val_fraction, help="share of the images in val (default 0.1; not with --folds)"
    )
    parser.add_argument(
        "--folds",
        type=command.folds,
        metavar="K",
        help="K train/val pairs in --out/fold_1 ... fold_K (not with --val-fraction)",
    )
    parser.add_argument("--seed", type=command.seed, default=0, help="seed of the split (default 0)")
    parser.add_argument("--group-by", metavar="FIELD", help="image field whose equal values stay together")
    parser.add_argument(
        "--group-pattern",
        metavar="REGEX",
        help="images whose file_name gives the same match (first group) stay together, e.g. '(.+)\\.rf\\.'",
    )
    command.add_overwrite(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        from detlit.data.split import split

        return split(
            jsons=args.json,
            images=args.images,
            out=args.out,
            val_fraction=args.val_fraction,
            seed=args.seed,
            group_by=args.group_by,
            group_pattern=args.group_pattern,
            overwrite=args.overwrite,
            quiet=args.quiet,
            folds=args.folds,
        )
    except KeyboardInterrupt:
        print("stopped by Ctrl-C; split writes train.json and val.json together or not at all", file=sys.stderr)
        return command.EXIT_INTERRUPTED


def main(argv: list[str] | None = None) -> None:
    command.run(build_parser(), run, argv)


if __name__ == "__main__":
    main()
