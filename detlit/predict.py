"""``python -m detlit.predict``: run a trained checkpoint or exported model on images; draw, and write COCO results.

Examples::

    python -m detlit.predict --ckpt runs/sample/version_0/checkpoints/last.ckpt data/sample/val
    python -m detlit.predict --model runs/sample/version_0/checkpoints/last.onnx data/sample/val
    python -m detlit.predict --ckpt model.ckpt photos/ --recursive --out photos-predicted --csv
    python -m detlit.predict --ckpt model.ckpt "shots/*.jpg" --device cuda --precision bf16 --batch-size 8

What lands in ``--out`` and how thresholds work: :mod:`detlit.inference.predict`. Exit status: 0
when at least one image was predicted, 1 when none could be read, 2 on bad arguments.
"""

from __future__ import annotations

import argparse

from detlit.common import command


def build_parser() -> argparse.ArgumentParser:
    parser = command.parser("predict", "Detect objects in images with a trained detlit checkpoint or exported model.")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or quoted glob patterns")
    model = parser.add_mutually_exclusive_group(required=True)
    command.add_ckpt(model, required=False)
    command.add_model(model)
    command.add_out(parser, "predictions", "output folder (default: predictions)")
    parser.add_argument("--recursive", action="store_true", help="take images in subfolders of folder inputs too")
    command.add_batch_size(parser)
    command.add_device(parser)
    parser.add_argument(
        "--precision", choices=["32", "bf16", "16"], default="32", help="32-bit or mixed precision (default: 32)"
    )
    parser.add_argument(
        "--score-threshold",
        type=command.fraction,
        metavar="T",
        help="keep detections scoring at least T in every class (default: the model's per-class thresholds, else 0.5)",
    )
    parser.add_argument(
        "--resize",
        choices=["detlit", "detectron2"],
        default="detlit",
        help="detlit's resize as in validation (default), or detectron2's DefaultPredictor resize",
    )
    command.add_slicing(parser)
    parser.add_argument("--csv", action="store_true", help="also write predictions.csv, one row per detection")
    command.add_overwrite(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from detlit.inference.predict import predict
    from detlit.inference.slicing import Slicing

    return predict(
        inputs=args.inputs,
        model=args.ckpt or args.model,
        out=args.out,
        recursive=args.recursive,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        score_threshold=args.score_threshold,
        resize=args.resize,
        slicing=Slicing.from_args(args),
        write_csv=args.csv,
        overwrite=args.overwrite,
    )


def main(argv: list[str] | None = None) -> None:
    command.run(build_parser(), run, argv)


if __name__ == "__main__":
    main()
