"""``python -m detlit.export``: a checkpoint as TorchScript, ONNX or OpenVINO, with its parity checked.

Examples::

    python -m detlit.export --ckpt runs/sample/version_0/checkpoints/last.ckpt --format onnx
    python -m detlit.export --ckpt model.ckpt --format torchscript --out exported --images photos/
    python -m detlit.export --ckpt runs/sample/version_0/checkpoints/last.ckpt --format openvino --int8
    python -m detlit.export --ckpt runs/sample/version_0/checkpoints/last.ckpt --format onnx --half

Writes ``<checkpoint name>.torchscript``, ``.onnx`` or ``.xml`` (with its ``.bin``) and its metadata
json into ``--out`` (default: the checkpoint's folder), only after the exported model's detections
matched the checkpoint's on at least 8 images (see :mod:`detlit.deploy.export`); with ``--int8``,
``<checkpoint name>.int8.onnx`` or ``.int8.xml`` after its accuracy check, with ``--half``
``<checkpoint name>.fp16.onnx`` for GPUs after its own (:mod:`detlit.deploy.precision`). Exit
status: 0 written, 2 on bad arguments, a failed parity or accuracy check, or an int8 model that is
not faster without ``--keep-slower`` (nothing written).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from detlit.common import command


def build_parser() -> argparse.ArgumentParser:
    parser = command.parser(
        "export", "Export a detlit checkpoint to TorchScript, ONNX or OpenVINO, with a parity check."
    )
    command.add_ckpt(parser)
    parser.add_argument(
        "--format", required=True, choices=["torchscript", "onnx", "openvino"], help="the exported model's format"
    )
    command.add_out(parser, None, "output folder (default: the checkpoint's folder)")
    parser.add_argument(
        "--images",
        type=Path,
        metavar="FOLDER",
        help="images for the parity check when the checkpoint's validation images cannot be found (else generated); "
        "with --int8, the images to calibrate on",
    )
    reduced = parser.add_mutually_exclusive_group()
    reduced.add_argument(
        "--int8",
        action="store_true",
        help="write an int8 model (onnx, openvino) calibrated on the run's validation images (or --images), kept "
        "only if its val AP and AP50 are within 0.01 of the float32 export's",
    )
    reduced.add_argument(
        "--half",
        action="store_true",
        help="write a float16 ONNX model for GPUs (onnxruntime-gpu, TensorRT), kept only if its val AP and AP50 are "
        "within 0.01 of the float32 export's",
    )
    parser.add_argument(
        "--keep-slower",
        action="store_true",
        help="with --int8 (or --half checked on a GPU): keep the model even if it is not faster than float32",
    )
    command.add_overwrite(parser)
    return parser


def run(args: argparse.Namespace) -> None:
    from detlit.deploy.export import export

    export(
        ckpt=args.ckpt,
        kind=args.format,
        out=args.out,
        images=args.images,
        overwrite=args.overwrite,
        precision="int8" if args.int8 else "fp16" if args.half else "fp32",
        keep_slower=args.keep_slower,
    )


def main(argv: list[str] | None = None) -> None:
    command.run(build_parser(), run, argv)


if __name__ == "__main__":
    main()
