"""``python -m detlit.sample``: write the synthetic sample COCO dataset (shapes on textures).

Example::

    python -m detlit.sample --out data/sample --train 200 --val 40

Writes ``train.json``, ``val.json`` and the images under ``train/`` and ``val/`` (see
:mod:`detlit.data.sample`); the same seed gives the same files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from detlit.common import command

MAX_IMAGES = 100_000  # per split: about 2 GB of images


def build_parser() -> argparse.ArgumentParser:
    parser = command.parser("sample", "Write detlit's synthetic sample COCO dataset.")
    parser.add_argument("folder", nargs="?", type=Path, help=argparse.SUPPRESS)  # detlit 0.1: the folder came first
    command.add_out(parser, None, "output folder (default: data/sample)")
    images = command.whole_number(1, MAX_IMAGES, " (the sample is for trying detlit out)")
    parser.add_argument("--train", type=images, default=200, help="number of training images")
    parser.add_argument("--val", type=images, default=40, help="number of validation images")
    parser.add_argument("--seed", type=command.seed, default=0)
    command.add_overwrite(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from detlit.data.sample import sample

    out = args.out or args.folder or Path("data/sample")
    return sample(out_dir=out, train=args.train, val=args.val, seed=args.seed, overwrite=args.overwrite)


def main(argv: list[str] | None = None) -> None:
    command.run(build_parser(), run, argv)


if __name__ == "__main__":
    main()
