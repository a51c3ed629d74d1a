"""``python -m detlit.fit``: train a detector from a YAML config (a LightningCLI); validate or test a checkpoint.

Examples::

    python -m detlit.fit --config configs/sample_cpu.yaml
    python -m detlit.fit --config configs/sample_cpu.yaml --trainer.max_epochs=2
    python -m detlit.fit --config configs/sample_cpu.yaml --ckpt last
    python -m detlit.fit --config configs/sample_cpu.yaml --print_config
    python -m detlit.fit --config configs/sample_cpu.yaml --tune_lr true
    python -m detlit.fit test --config configs/sample_cpu.yaml --ckpt best --data.test_json data/sample/val.json

A first word ``validate`` or ``test`` runs that Lightning stage on ``--ckpt`` instead of training
(``detlit validate ...`` and ``detlit test ...`` are the same). See :mod:`detlit.training.cli`.
"""

from __future__ import annotations

import sys

STAGES = ("fit", "validate", "test")


def main(argv: list[str] | None = None) -> None:
    from detlit.common.command import run_cli

    args = sys.argv[1:] if argv is None else list(argv)
    stage = args.pop(0) if args and args[0] in STAGES else "fit"

    def run(rest: list[str] | None) -> None:
        from detlit.training.cli import cli_main

        cli_main(args=rest, stage=stage)

    run_cli(run, args)


if __name__ == "__main__":
    main()
