"""``python -m detlit.audit``: rank likely label mistakes from predictions of models that did not train on the images.

Examples::

    python -m detlit.audit --json data/all.json --images data/images --out audit \\
        --fold runs/fold_1/version_0/checkpoints/last.ckpt data/folds/fold_1/val.json \\
        --fold runs/fold_2/version_0/checkpoints/last.ckpt data/folds/fold_2/val.json
    python -m detlit.audit --apply audit/mistakes.csv --json data/all.json --fix data/all.audited.json

Writes ``--out/mistakes.csv`` (every row) and ``--out/gallery.html`` with ``--out/crops/`` (the
``--top`` rows); ``--apply`` writes the corrected copy ``--fix`` of the json from the rows accepted
in an edited CSV (see :mod:`detlit.auditing`). Ctrl-C stops it with exit status 130 and one line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from detlit.common import command


def build_parser() -> argparse.ArgumentParser:
    parser = command.parser(
        "audit", "Rank likely label mistakes from out-of-fold predictions; apply the accepted ones."
    )
    command.add_json(parser, help="the COCO json to audit (with --apply: the json to correct, never written)")
    command.add_images(parser, required=False, help="folder the json's file names are relative to")
    models = "models that did not train on the images they predict"
    parser.add_argument(
        "--fold", nargs=2, action="append", default=[], type=Path, metavar=("CKPT", "VAL_JSON"),
        help=f"{models}: a fold's checkpoint and its val.json (python -m detlit.split --folds K); once per fold",
    )  # fmt: skip
    command.add_ckpt(
        parser, required=False, help="instead of --fold: one checkpoint that did not train on any image of --json"
    )
    command.add_out(parser, None, "folder for mistakes.csv, gallery.html and crops/")
    parser.add_argument(
        "--top", type=command.whole_number(1), default=200, metavar="N", help="rows in the gallery (default: 200)"
    )
    parser.add_argument(
        "--min-score", type=command.fraction, default=0.2, metavar="F",
        help="the least score of a row in mistakes.csv (default: 0.2)",
    )  # fmt: skip
    command.add_device(parser)
    command.add_batch_size(parser)
    parser.add_argument("--apply", type=Path, metavar="CSV", help="an edited mistakes.csv: apply its accepted rows")
    parser.add_argument("--fix", type=Path, metavar="FIXED_JSON", help="with --apply: the corrected copy to write")
    command.add_overwrite(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from detlit.auditing.audit import audit

    try:
        return audit(
            json_path=args.json,
            images=args.images,
            out=args.out,
            folds=[tuple(pair) for pair in args.fold],
            ckpt=args.ckpt,
            top=args.top,
            min_score=args.min_score,
            device=args.device,
            batch_size=args.batch_size,
            apply=args.apply,
            fix=args.fix,
            overwrite=args.overwrite,
        )
    except KeyboardInterrupt:
        print(
            "stopped by Ctrl-C; mistakes.csv and gallery.html are written last: run again with --overwrite",
            file=sys.stderr,
        )
        return command.EXIT_INTERRUPTED


def main(argv: list[str] | None = None) -> None:
    command.run(build_parser(), run, argv)


if __name__ == "__main__":
    main()
