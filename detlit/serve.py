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
    numbers = [  # option, type, default, metavar, help; the ranges are checked by detlit.deploy.serve.Limits
        ("--batch-timeout", float, 0.01, "SECONDS", "longest wait for requests to fill a batch (0..60; default: 0.01)"),
        ("--max-image-bytes", int, 20 * 2**20, "N", "largest request body accepted (up to 1 GiB; default: 20 MiB)"),
        ("--max-image-pixels", int, 40_000_000, "N", "largest image accepted, width x height (default: 40 million)"),
        (
            "--body-timeout",
            float,
            30.0,
            "SECONDS",
            "a request body must arrive within it, else 408 (1..600; default: 30)",
        ),
        (
            "--max-pending-bodies",
            int,
            16,
            "N",
            "most requests read or answered at once, then 503 (1..1024; default: 16)",
        ),
    ]
    for option, kind, default, metavar, text in numbers:
        parser.add_argument(option, type=kind, default=default, metavar=metavar, help=text)
    parser.add_argument(
        "--score-threshold",
        type=command.fraction,
        metavar="T",
        help="keep detections scoring at least T in every class (default: the model's per-class thresholds, else 0.5)",
    )
    command.add_slicing(parser)
    return parser


def run(args: argparse.Namespace) -> None:
    from detlit.deploy.serve import Limits, serve
    from detlit.inference.slicing import Slicing

    limits = Limits(
        batch_size=args.batch_size,
        batch_timeout=args.batch_timeout,
        max_bytes=args.max_image_bytes,
        max_pixels=args.max_image_pixels,
        body_timeout=args.body_timeout,
        max_pending=args.max_pending_bodies,
    )
    serve(
        model=args.ckpt or args.model,
        host=args.host,
        port=args.port,
        device=args.device,
        score_threshold=args.score_threshold,
        limits=limits,
        slicing=Slicing.from_args(args),
    )


def main(argv: list[str] | None = None) -> None:
    command.run(build_parser(), run, argv)


if __name__ == "__main__":
    main()
