"""``python -m detlit.export``: a checkpoint as TorchScript or ONNX, with its parity checked.

Examples::

    python -m detlit.export --ckpt runs/sample/version_0/checkpoints/last.ckpt --format onnx
    python -m detlit.export --ckpt model.ckpt --format torchscript --out exported --images photos/

Writes ``<checkpoint name>.torchscript`` or ``.onnx`` and its metadata json into ``--out`` (default:
the checkpoint's folder), only after the exported model's detections matched the checkpoint's on
at least 8 images (see :mod:`detlit.deploy.export`). Exit status: 0 written, 2 on bad arguments or
a failed parity check (nothing written).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from detlit.common import command


def build_parser() -> argparse.ArgumentParser:
    parser = command.parser("export", "Export a detlit checkpoint to TorchScript or ONNX, with a parity check.")
    command.add_ckpt(parser)
    parser.add_argument("--format", required=True, choices=["torchscript", "onnx"], help="the exported model's format")
    command.add_out(parser, None, "output folder (default: the checkpoint's folder)")
    parser.add_argument(
        "--images",
        type=Path,
        metavar="FOLDER",
        help="images for the parity check when the checkpoint's validation images cannot be found (else generated)",
    )
    command.add_overwrite(parser)
    return parser


def run(args: argparse.Namespace) -> None:
    from detlit.deploy.export import export

    export(ckpt=args.ckpt, kind=args.format, out=args.out, images=args.images, overwrite=args.overwrite)


def main(argv: list[str] | None = None) -> None:
    command.run(build_parser(), run, argv)


if __name__ == "__main__":
    main()
