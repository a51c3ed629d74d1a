"""``python -m detlit.sample``: write the synthetic sample COCO dataset (shapes on textures).

Example::

    python -m detlit.sample --out data/sample --train 200 --val 40
    python -m detlit.sample --out data/small --small-objects --train 24 --val 8
    python -m detlit.sample --out data/custom --image-size 800 1200 --object-size 10 40 --objects 5 30

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
    layout = parser.add_argument_group("layout", "image sizes, object sizes and counts (default: the demo's)")
    layout.add_argument(
        "--small-objects",
        action="store_true",
        help="large images with many small objects, for sliced inference and tiled training: "
        "--image-size 1600 2400 --object-size 8 32 --objects 20 80 (each can still be given)",
    )
    # Their ranges are the Layout's own (checked when the job starts): --help imports no numpy.
    layout.add_argument(
        "--image-size",
        type=command.positive_int,
        nargs=2,
        metavar=("MIN", "MAX"),
        help="smallest and largest image side in pixels (default: 240 to 320, the demo's three sizes)",
    )
    layout.add_argument(
        "--object-size",
        type=command.positive_int,
        nargs=2,
        metavar=("MIN", "MAX"),
        help="smallest and largest object side in pixels (default: 24 110)",
    )
    layout.add_argument(
        "--objects",
        type=command.positive_int,
        nargs=2,
        metavar=("MIN", "MAX"),
        help="fewest and most objects in an image that holds any; some hold none (default: 1 8)",
    )
    command.add_overwrite(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from detlit.data.sample import Layout, sample

    out = args.out or args.folder or Path("data/sample")
    layout = Layout.chosen(
        small_objects=args.small_objects, image_size=args.image_size, object_size=args.object_size, objects=args.objects
    )
    return sample(out_dir=out, train=args.train, val=args.val, seed=args.seed, layout=layout, overwrite=args.overwrite)


def main(argv: list[str] | None = None) -> None:
    command.run(build_parser(), run, argv)


if __name__ == "__main__":
    main()
