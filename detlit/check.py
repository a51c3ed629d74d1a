"""``python -m detlit.check``: validate a COCO dataset, report, and optionally write a repaired copy.

Examples::

    python -m detlit.check data/train.json --images data/images
    python -m detlit.check data/train.json --images data/images --fix data/train.fixed.json
    python -m detlit.check data/train.json --images data/images --report check.json --quiet
    python -m detlit.check data/train.json --images data/images --config configs/sample_cpu.yaml

Exit status: 0 when no error remains (in the repaired copy, with ``--fix``), 1 when errors
remain, 2 when the input cannot be read at all.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from detlit.common import command
from detlit.common.ranges import MAX_IMAGE_SIDE
from detlit.data.checks import Resize


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
    sizes = parser.add_argument_group(
        "object sizes after the resize",
        "the resizes of training and inference, as python -m detlit.fit's data.* settings: each option given, else "
        "--config's, else the default",
    )
    sizes.add_argument("--config", type=Path, metavar="CONFIG.yaml", help="a fit config to take the sizes from")
    side, default = command.whole_number(1, MAX_IMAGE_SIDE, " (tile larger images instead)"), Resize()
    for key, what in (
        ("min_size_test", "shortest edge at inference"),
        ("max_size_test", "cap on the longest edge at inference"),
        ("min_size_train", "shortest-edge sizes in training"),
        ("max_size_train", "cap on the longest edge in training"),
    ):
        value = getattr(default, key)
        shown = " ".join(map(str, value)) if isinstance(value, tuple) else value
        many = "+" if isinstance(value, tuple) else None
        option = f"--{key.replace('_', '-')}"
        sizes.add_argument(option, type=side, nargs=many, metavar="N", help=f"{what} (default: {shown})")
    command.add_overwrite(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from detlit.data.check import check, resize_settings

    resize = resize_settings(
        config=args.config,
        min_size_train=args.min_size_train,
        max_size_train=args.max_size_train,
        min_size_test=args.min_size_test,
        max_size_test=args.max_size_test,
    )
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
        resize=resize,
    )


def main(argv: list[str] | None = None) -> None:
    command.run(build_parser(), run, argv)


if __name__ == "__main__":
    main()
