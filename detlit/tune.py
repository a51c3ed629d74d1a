"""``python -m detlit.tune``: hyper-parameter search with Optuna over ``python -m detlit.fit`` runs.

Example::

    python -m detlit.tune --config configs/sample_cpu.yaml --search configs/search_sample.yaml \\
        --trials 20 --storage sqlite:///runs/tune.db -- --trainer.max_epochs=4

Every trial is a normal detlit run; the study lives in the storage, so a search continues where it
stopped (see :mod:`detlit.training.tune`, which also describes the search-space YAML). Exit
status 1 when no trial completed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from detlit.common import command


def build_parser() -> argparse.ArgumentParser:
    parser = command.parser("tune", "Search hyper-parameters with Optuna.")
    parser.add_argument("--config", type=Path, required=True, help="the fit config the trials start from")
    parser.add_argument("--search", type=Path, required=True, help="search-space YAML")
    parser.add_argument(
        "--trials", type=command.positive_int, required=True, help="trials in the study in total (resumed ones count)"
    )
    parser.add_argument("--timeout", type=command.seconds, help="start no new trial after this many seconds")
    parser.add_argument(
        "--storage", help="Optuna storage URL (default: sqlite:///OUT/study.db, the study beside its trials)"
    )
    parser.add_argument("--study", default="detlit", help="study name in the storage")
    command.add_out(parser, None, "folder for the trials' runs and results (default: runs/tune/STUDY)")
    parser.add_argument("--pruner", choices=("median", "halving"), default="median")
    parser.add_argument("--seed", type=command.seed, default=0, help="sampler seed")
    parser.add_argument("fit_args", nargs="*", help="extra arguments for every trial's fit, after --")
    return parser


def run(args: argparse.Namespace) -> int:
    from detlit.training.tune import StudyOptions, tune

    options = StudyOptions(
        storage=args.storage, study=args.study, pruner=args.pruner, seed=args.seed, fit_args=tuple(args.fit_args)
    )
    return tune(
        config=args.config, search=args.search, trials=args.trials, options=options, out=args.out, timeout=args.timeout
    )


def main(argv: list[str] | None = None) -> None:
    command.run(build_parser(), run, argv)


if __name__ == "__main__":
    main()
