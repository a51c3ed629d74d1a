"""``python -m detlit.serve``: an HTTP service for a checkpoint or an exported model, on LitServe.

Examples::

    python -m detlit.serve --ckpt runs/sample/version_0/checkpoints/last.ckpt
    python -m detlit.serve --model runs/sample/version_0/checkpoints/last.onnx --port 8080
    curl --data-binary @photo.jpg -H "Content-Type: image/jpeg" http://127.0.0.1:8000/predict

``POST /predict`` answers the detections of one image as JSON, ``GET /health`` says ``ok``
(endpoints, payloads and limits: :mod:`detlit.deploy.serve`). Runs until stopped (Ctrl+C).
"""

from __future__ import annotations

import argparse

from detlit.common import command


def build_parser() -> argparse.ArgumentParser:
    parser = command.parser("serve", "Serve a detlit checkpoint or exported model over HTTP (LitServe).")
    model = parser.add_mutually_exclusive_group(required=True)
    command.add_ckpt(model, required=False)
    command.add_model(model)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    command.add_device(parser)
    command.add_batch_size(parser)
    parser.add_argument(
        "--batch-timeout",
        type=float,
        default=0.01,
        metavar="SECONDS",
        help="longest wait for concurrent requests to fill a batch (default: 0.01)",
    )
    parser.add_argument(
        "--score-threshold",
        type=command.fraction,
        metavar="T",
        help="keep detections scoring at least T in every class (default: the model's per-class thresholds, else 0.5)",
    )
    parser.add_argument(
        "--max-image-bytes",
        type=command.positive_int,
        default=20 * 2**20,
        metavar="N",
        help="largest request body accepted (default: 20 MiB)",
    )
    parser.add_argument(
        "--max-image-pixels",
        type=command.positive_int,
        default=40_000_000,
        metavar="N",
        help="largest image accepted, width x height (default: 40 million)",
    )
    return parser


def run(args: argparse.Namespace) -> None:
    from detlit.deploy.serve import serve

    serve(
        args.ckpt or args.model,
        args.host,
        args.port,
        args.device,
        args.batch_size,
        args.batch_timeout,
        args.score_threshold,
        args.max_image_bytes,
        args.max_image_pixels,
    )


def main(argv: list[str] | None = None) -> None:
    command.run(build_parser(), run, argv)


if __name__ == "__main__":
    main()
