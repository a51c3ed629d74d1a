"""``python -m detlit.check``: validate a COCO dataset, report, and optionally write a repaired copy.

Examples::

    python -m detlit.check data/train.json --images data/images
    python -m detlit.check data/train.json --images data/images --fix data/train.fixed.json
    python -m detlit.check data/train.json --images data/images --report check.json --quiet
    python -m detlit.check data/train.json --images data/images --fix out.json --drop-category cells

Exit status: 0 when no error remains (in the repaired copy, with ``--fix``), 1 when errors
remain, 2 when the input cannot be read at all.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from detlit.common import command
from detlit.common.ranges import MAX_IMAGE_SIDE
from detlit.data.checks import Resize

SIZE_OPTIONS = {
    "min_size_test": "shortest edge at inference",
    "max_size_test": "cap on the longest edge at inference",
    "min_size_train": "shortest-edge sizes in training",
    "max_size_train": "cap on the longest edge in training",
}


def build_parser() -> argparse.ArgumentParser:
    parser = command.parser("check", "Validate a COCO detection dataset: structure, files, boxes, labels.")
    parser.add_argument("json", type=Path, help="COCO annotation json")
    command.add_images(parser)
    for option, metavar, what in (
        ("--fix", "OUT.json", "write a repaired copy here"),
        ("--report", "REPORT.json", "write findings and statistics as JSON"),
        ("--val", "VAL.json", "the validation json of this one: report classes one of them lacks"),
        ("--val-images", "FOLDER", "folder of --val's images (default: --images)"),
    ):
        parser.add_argument(option, type=Path, metavar=metavar, help=what)
    parser.add_argument("--no-decode", action="store_true", help="read image headers only (faster; no hashing)")
    for option, metavar, what in (
        ("--drop-category", "NAME", "remove a category and its annotations from the --fix copy (name or id)"),
        ("--merge-category", "A=B", "give category A's annotations category B in the --fix copy, remove A"),
    ):
        parser.add_argument(option, action="append", default=[], metavar=metavar, help=f"{what}; repeatable")
    sizes = parser.add_argument_group(
        "object sizes after the resize",
        "the resizes of training and inference, as python -m detlit.fit's data.* settings: each option given, else "
        "--config's, else the default",
    )
    sizes.add_argument("--config", type=Path, metavar="CONFIG.yaml", help="a fit config to take the sizes from")
    side, default = command.whole_number(1, MAX_IMAGE_SIDE, " (tile larger images instead)"), Resize()
    for key, what in SIZE_OPTIONS.items():
        value = getattr(default, key)
        shown, many = (" ".join(map(str, value)), "+") if isinstance(value, tuple) else (value, None)
        option = f"--{key.replace('_', '-')}"
        sizes.add_argument(option, type=side, nargs=many, metavar="N", help=f"{what} (default: {shown})")
    command.add_overwrite(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from detlit.data.check import check

    return check(
        json_path=args.json,
        images=args.images,
        fix=args.fix,
        report_path=args.report,
        overwrite=args.overwrite,
        decode=not args.no_decode,
        verbose=args.verbose,
        quiet=args.quiet,
        val=args.val,
        val_images=args.val_images,
        config=args.config,
        sizes={key: getattr(args, key) for key in SIZE_OPTIONS},
        drop_categories=args.drop_category,
        merge_categories=args.merge_category,
    )


def main(argv: list[str] | None = None) -> None:
    command.run(build_parser(), run, argv)


if __name__ == "__main__":
    main()
