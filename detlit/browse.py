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
MIN_CELL, MAX_CELL = 32, 1024  # smaller shows nothing; at most 100 cells of 1024 pixels hold 300 MB
MAX_N = 100


def build_parser() -> argparse.ArgumentParser:
    parser = command.parser(
        "browse",
        "Draw training or validation images with their boxes, as the data pipeline delivers them.",
        epilog="--config CONFIG.yaml and --data.* overrides are read as python -m detlit.fit reads them.",
    )
    parser.add_argument(
        "--split", choices=("train", "val"), default="train", help="loader to draw from (default: train)"
    )
    parser.add_argument(
        "--n",
        type=command.whole_number(1, MAX_N, " (a grid of more is not readable)"),
        default=16,
        help=f"number of images (default: 16, at most {MAX_N})",
    )
    command.add_out(parser, "browse", "output folder (default: browse)")
    parser.add_argument("--seed", type=command.seed, default=0, help="seed of the augmentations (default: 0)")
    parser.add_argument(
        "--cell",
        type=command.whole_number(
            MIN_CELL, MAX_CELL, " (a grid of such cells takes gigabytes)", "too small to show anything"
        ),
        default=CELL,
        help=f"grid cell size in pixels (default: {CELL}, {MIN_CELL} to {MAX_CELL})",
    )
    command.add_overwrite(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from detlit.training.browse import browse

    return browse(
        cli_args=args.passthrough,
        split=args.split,
        n=args.n,
        out=args.out,
        seed=args.seed,
        cell=args.cell,
        overwrite=args.overwrite,
    )


def main(argv: list[str] | None = None) -> None:
    command.run(build_parser(), run, argv, passthrough=True)


if __name__ == "__main__":
    main()
