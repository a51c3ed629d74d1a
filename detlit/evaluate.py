"""``python -m detlit.evaluate``: every metric of a model (or of any detector's results) on a COCO set.

Examples::

    python -m detlit.evaluate --ckpt runs/sample/version_0/checkpoints/last.ckpt \\
        --json data/sample/val.json --images data/sample/val --out eval/sample
    python -m detlit.evaluate --model runs/sample/version_0/checkpoints/last.onnx \\
        --json data/sample/val.json --images data/sample/val --out eval/sample-onnx
    python -m detlit.evaluate --results coco_results.json --json test.json --out eval/other

Writes into ``--out`` (default ``eval/<json name>``): ``metrics.json``, ``per_class.csv``,
``coco_results.json`` (with a model), the pictures (confusion, PR and F1 curves, the error
breakdown), and prints the tables (see :mod:`detlit.inference.evaluate`). A file there is
replaced only with ``--overwrite``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from detlit.common import command


def build_parser() -> argparse.ArgumentParser:
    parser = command.parser("evaluate", "Evaluate a model, or a results file, on a COCO set.")
    source = parser.add_mutually_exclusive_group(required=True)
    command.add_ckpt(source, required=False, help="detlit checkpoint to run on the images")
    command.add_model(
        source, help="exported model (.torchscript, .onnx, .xml) of python -m detlit.export to run on the images"
    )
    source.add_argument("--results", type=Path, metavar="RESULTS", help="a COCO results json (any detector's)")
    command.add_json(parser, help="COCO ground-truth json")
    command.add_images(parser, required=False, help="folder of the json's images (needed with --ckpt or --model)")
    command.add_out(parser, None, "output folder (default: eval/<json name>)")
    command.add_device(parser)
    command.add_batch_size(parser)
    parser.add_argument(
        "--score-threshold", type=command.fraction, default=0.5, help="the fixed threshold of P/R/F1 (default 0.5)"
    )
    parser.add_argument(
        "--iou-threshold",
        type=command.fraction,
        default=0.5,
        help="IoU of P/R/F1 and the confusion matrix (default 0.5)",
    )
    command.add_slicing(parser, merge="nms")  # every detection is kept: greedy merging would grow boxes
    command.add_overwrite(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from detlit.inference.evaluate import evaluate
    from detlit.inference.slicing import Slicing

    return evaluate(
        json_path=args.json,
        images=args.images,
        out=args.out,
        model=args.ckpt or args.model,
        results=args.results,
        device=args.device,
        batch_size=args.batch_size,
        score_threshold=args.score_threshold,
        iou_threshold=args.iou_threshold,
        slicing=Slicing.from_args(args),
        overwrite=args.overwrite,
    )


def main(argv: list[str] | None = None) -> None:
    command.run(build_parser(), run, argv)


if __name__ == "__main__":
    main()
