"""``python -m detlit.check``: validate a COCO dataset, report, and optionally write a repaired copy.

Examples::

    python -m detlit.check data/train.json --images data/images
    python -m detlit.check data/train.json --images data/images --fix data/train.fixed.json
    python -m detlit.check data/train.json --images data/images --report check.json --quiet

Exit status: 0 when no error remains (in the repaired copy, with ``--fix``), 1 when errors
remain, 2 when the input cannot be read at all.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from detlit.common import command


def build_parser() -> argparse.ArgumentParser:
    parser = command.parser("check", "Validate a COCO detection dataset: structure, files, boxes, labels.")
    parser.add_argument("json", type=Path, help="COCO annotation json")
    command.add_images(parser)
    parser.add_argument("--fix", type=Path, metavar="OUT.json", help="write a repaired copy here")
    parser.add_argument("--report", type=Path, metavar="REPORT.json", help="write findings and statistics as JSON")
    parser.add_argument("--no-decode", action="store_true", help="read image headers only (faster; no hashing)")
    parser.add_argument(
        "--val", type=Path, metavar="VAL.json", help="the validation json of this one: report classes one of them lacks"
    )
    parser.add_argument(
        "--val-images", type=Path, metavar="FOLDER", help="folder of --val's images (default: --images)"
    )
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
    )


def main(argv: list[str] | None = None) -> None:
    command.run(build_parser(), run, argv)


if __name__ == "__main__":
    main()
