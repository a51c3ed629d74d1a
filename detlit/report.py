"""``python -m detlit.report``: what one training run did and what to change, in one page that opens offline.

Examples::

    python -m detlit.report --run runs/sample/version_0
    python -m detlit.report --run runs/sample/version_0 --eval eval/sample --out reports/sample

Writes ``report.html`` (self-contained), ``report.md`` and ``report_files/`` into ``--out`` (default:
the run folder); see :mod:`detlit.reporting.report`. A folder that is not a run folder ends in one
sentence and exit status 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from detlit.common import command


def build_parser() -> argparse.ArgumentParser:
    parser = command.parser("report", "Write the report of a training run.")
    parser.add_argument(
        "--run", type=Path, required=True, metavar="FOLDER", help="run folder, e.g. runs/sample/version_0"
    )
    parser.add_argument(
        "--eval", type=Path, metavar="FOLDER", help="output folder of python -m detlit.evaluate for this run"
    )
    command.add_out(parser, None, "folder for report.html, report.md and report_files/ (default: the run folder)")
    command.add_overwrite(parser)
    command.add_device(parser)
    command.add_batch_size(parser)
    parser.add_argument(
        "--max-images",
        type=command.whole_number(0),
        default=100,
        metavar="N",
        help="validation images to run the model on (0: none)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    from detlit.reporting.report import report

    return report(
        run=args.run,
        eval_dir=args.eval,
        out=args.out,
        overwrite=args.overwrite,
        device=args.device,
        batch_size=args.batch_size,
        max_images=args.max_images,
    )


def main(argv: list[str] | None = None) -> None:
    command.run(build_parser(), run, argv)


if __name__ == "__main__":
    main()
