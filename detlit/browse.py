"""``python -m detlit.browse``: look at images as the model will see them, before training.

Examples::

    python -m detlit.browse --config configs/sample_cpu.yaml
    python -m detlit.browse --config configs/sample_cpu.yaml --data.augment strong --n 25 --seed 3
    python -m detlit.browse --config configs/sample_cpu.yaml --split val --out browse-val

``--config`` and ``--data.*`` are read as ``python -m detlit.fit`` reads them; see
:mod:`detlit.training.browse`.
"""

from __future__ import annotations

import argparse

from detlit.common import command

CELL = 384  # pixels: larger images are scaled down to fit their grid cell before drawing


def build_parser() -> argparse.ArgumentParser:
    parser = command.parser(
        "browse",
        "Draw training or validation images with their boxes, as the data pipeline delivers them.",
        epilog="--config CONFIG.yaml and --data.* overrides are read as python -m detlit.fit reads them.",
    )
    parser.add_argument(
        "--split", choices=("train", "val"), default="train", help="loader to draw from (default: train)"
    )
    parser.add_argument("--n", type=command.positive_int, default=16, help="number of images (default: 16)")
    command.add_out(parser, "browse", "output folder (default: browse)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the augmentations (default: 0)")
    parser.add_argument("--cell", type=int, default=CELL, help=f"grid cell size in pixels (default: {CELL})")
    command.add_overwrite(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from detlit.training.browse import browse

    return browse(args.passthrough, args.split, args.n, args.out, args.seed, args.cell, args.overwrite)


def main(argv: list[str] | None = None) -> None:
    command.run(build_parser(), run, argv, passthrough=True)


if __name__ == "__main__":
    main()
