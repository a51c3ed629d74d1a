"""``python -m detlit.convert``: YOLO, Pascal VOC, LabelMe or CVAT labels into a COCO json, or COCO into YOLO.

Examples::

    python -m detlit.convert --from yolo --labels data/labels --images data/images --names data.yaml --out data/coco
    python -m detlit.convert --from voc --labels VOC2012/Annotations --images VOC2012/JPEGImages --out data/voc
    python -m detlit.convert --json data/all.json --images data/images --out data/yolo

Writes ``--out/annotations.json`` (or, from ``--json``, ``--out/labels/*.txt``, ``data.yaml`` and
``classes.txt``; see :mod:`detlit.data.formats.convert`). Every problem of the labels is logged with its
file and line; with any, nothing is written and the command ends in one sentence, exit status 2 (Ctrl-C: 130).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from detlit.common import command

FROM = ("yolo", "voc", "labelme", "cvat", "coco")


def build_parser() -> argparse.ArgumentParser:
    parser = command.parser(
        "convert", "Convert YOLO, Pascal VOC, LabelMe or CVAT labels into a COCO json, or a COCO json into YOLO labels."
    )
    parser.add_argument(
        "--from",
        dest="source",
        choices=FROM,
        help="the labels' format (default: told from --labels when that is unambiguous; coco with --json)",
    )
    parser.add_argument(
        "--to",
        dest="target",
        choices=("coco", "yolo"),
        help="the format written (default: yolo from --json, else coco)",
    )
    parser.add_argument(
        "--labels",
        type=Path,
        metavar="PATH",
        help="the labels: a folder of YOLO .txt, VOC .xml or LabelMe .json files (or one file), or CVAT's "
        "annotations.xml (default for YOLO: the image folder's 'labels' twin)",
    )
    command.add_json(parser, required=False, help="a COCO annotation json to write as YOLO labels")
    command.add_images(parser, help="folder the labels' images are relative to; nothing under it is written")
    parser.add_argument(
        "--names",
        type=Path,
        metavar="FILE",
        help="class names in order, one per line, or a YOLO data.yaml (YOLO: default classes.txt or data.yaml "
        "beside the labels; other formats: fixes the class order and refuses other labels)",
    )
    where = "folder for annotations.json (from --json: labels/, data.yaml and classes.txt)"
    parser.add_argument("--out", type=Path, required=True, metavar="FOLDER", help=where)
    command.add_overwrite(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from detlit.data.formats.convert import convert

    try:
        summary = convert(
            source=args.source,
            target=args.target,
            labels=args.labels,
            json_path=args.json,
            images=args.images,
            out=args.out,
            names=args.names,
            overwrite=args.overwrite,
        )
    except KeyboardInterrupt:
        print("stopped by Ctrl-C; convert writes its outputs whole at the end, so nothing was written", file=sys.stderr)
        return command.EXIT_INTERRUPTED
    print(summary.line())
    return 0


def main(argv: list[str] | None = None) -> None:
    command.run(build_parser(), run, argv)


if __name__ == "__main__":
    main()
