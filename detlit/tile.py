"""``python -m detlit.tile``: cut a COCO dataset of large images into a dataset of tiles, for small objects.

Example::

    python -m detlit.tile --json data/all.json --images data/images --out data/tiles --size 640

Writes the tiles under ``--out/images`` and ``--out/annotations.json`` (see :mod:`detlit.data.tiling`);
``python -m detlit.split`` keeps the tiles of one source image on one side. Ctrl-C stops it with exit
status 130 and one line; ``annotations.json`` is written last, so it never lists a missing tile.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from detlit.common import command
from detlit.common.ranges import MAX_OVERLAP, MIN_TILE_SIZE


def build_parser() -> argparse.ArgumentParser:
    parser = command.parser("tile", "Cut a COCO dataset of large images into overlapping tiles for training.")
    command.add_json(parser)
    command.add_images(parser)
    where = "a new folder (or one tile wrote before, with --overwrite) for images/ and annotations.json"
    parser.add_argument("--out", type=Path, required=True, metavar="FOLDER", help=where)
    parser.add_argument(
        "--size",
        type=command.whole_number(MIN_TILE_SIZE, small="below the smallest tile"),
        default=640,
        metavar="SIZE",
        help="tile side in pixels; use the --slice SIZE you will predict with (default: 640)",
    )
    parser.add_argument(
        "--overlap",
        type=command.overlap,
        default=0.2,
        metavar="F",
        help=f"overlap of neighbouring tiles, a fraction of SIZE, 0 to {MAX_OVERLAP} (default: 0.2)",
    )
    parser.add_argument(
        "--min-visibility",
        type=command.fraction,
        default=0.5,
        metavar="F",
        help="share of an object's box that must lie inside a tile for the tile to keep it, clipped (default: 0.5)",
    )
    parser.add_argument(
        "--empty-ratio",
        type=command.fraction,
        default=0.1,
        metavar="F",
        help="share of the tiles without objects that are kept, chosen with --seed (default: 0.1: small objects "
        "leave most tiles empty; a few teach what background looks like, all of them would fill the epochs)",
    )
    parser.add_argument("--seed", type=command.seed, default=0, help="seed of the choice of empty tiles (default: 0)")
    command.add_overwrite(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from detlit.data.tiling import Tiling, tile

    settings = Tiling(
        size=args.size,
        overlap=args.overlap,
        min_visibility=args.min_visibility,
        empty_ratio=args.empty_ratio,
        seed=args.seed,
    )
    try:
        status, summary = tile(
            json_path=args.json, images=args.images, out=args.out, tiling=settings, overwrite=args.overwrite
        )
    except KeyboardInterrupt:
        print("stopped by Ctrl-C; annotations.json is not written: run again with --overwrite", file=sys.stderr)
        return command.EXIT_INTERRUPTED
    print(summary.line())
    return status


def main(argv: list[str] | None = None) -> None:
    command.run(build_parser(), run, argv)


if __name__ == "__main__":
    main()
