"""``python -m detlit.fit``: train a detector from a YAML config (a LightningCLI).

Examples::

    python -m detlit.fit --config configs/sample_cpu.yaml
    python -m detlit.fit --config configs/sample_cpu.yaml --trainer.max_epochs=2
    python -m detlit.fit --config configs/sample_cpu.yaml --ckpt_path last
    python -m detlit.fit --config configs/sample_cpu.yaml --print_config
    python -m detlit.fit --config configs/sample_cpu.yaml --tune_lr true
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.tuner import Tuner
from lightning.pytorch.utilities.exceptions import SIGTERMException
from matplotlib.figure import Figure

from detlit.common.command import run_cli
from detlit.data.datamodule import CocoDataModule
from detlit.errors import ConfigError, DetlitError
from detlit.model.module import DetectionModule
from detlit.training.callbacks import Detectron2Export, RunLog
from detlit.training.checkpointing import AtomicCheckpointIO, SaveOnSigterm

log = logging.getLogger("detlit.training.cli")

# The data decides these; the model receives them, so they are never typed twice.
LINKED_FROM_DATA_AT_PARSE = ("min_size_train", "max_size_train", "min_size_test", "max_size_test")
LINKED_FROM_DATA_AT_INSTANTIATION = ("num_classes", "class_names", "category_ids")


class DetlitCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--ckpt_path", type=str | None, default=None, help="checkpoint to resume training from")
        parser.add_argument(
            "--tune_lr",
            type=bool,
            default=False,
            help="run Lightning's learning-rate finder on the data, print its suggestion and exit",
        )
        parser.add_argument("--tune_lr_steps", type=int, default=100, help="steps of the learning-rate range test")
        for name in LINKED_FROM_DATA_AT_PARSE:
            parser.link_arguments(f"data.{name}", f"model.{name}")
        for name in LINKED_FROM_DATA_AT_INSTANTIATION:
            parser.link_arguments(f"data.{name}", f"model.{name}", apply_on="instantiate")
        # Two checkpoint callbacks: the best ones by a validation metric, and `last.ckpt`, which
        # does not wait for a metric (Lightning defers monitored saves until one exists) and can
        # be written every N steps or minutes for long epochs.
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/map",
                "checkpoint.mode": "max",
                "checkpoint.save_last": False,
                "checkpoint.filename": "best-epoch{epoch:02d}-map{val/map:.4f}",
                "checkpoint.auto_insert_metric_name": False,
                "last_checkpoint.monitor": None,
                "last_checkpoint.save_top_k": 0,
                "last_checkpoint.save_last": True,
                "trainer.default_root_dir": "runs",
                "trainer.logger": {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": "runs", "name": "detlit"},
                },
            }
        )

    def before_instantiate_classes(self) -> None:
        # A resumed run continues in the run folder its checkpoint came from; `--ckpt_path last`
        # finds the newest one. The original config.yaml stays; the resumed config is saved beside it.
        if self.config.ckpt_path is None:
            return
        logger = self.config.trainer.logger
        init = getattr(logger, "init_args", None)
        if init is None or "TensorBoardLogger" not in str(getattr(logger, "class_path", "")):
            return
        runs = Path(init.save_dir) / (init.name or "")
        checkpoint, version = resolve_checkpoint(self.config.ckpt_path, runs)
        self.config.ckpt_path = str(checkpoint)
        if version is not None:
            init.version = version
            stamp = time.strftime("%Y%m%d-%H%M%S")
            self.save_config_kwargs = {**self.save_config_kwargs, "config_filename": f"config.resumed-{stamp}.yaml"}
        log.info("resuming from %s", checkpoint)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        # Callbacks every run gets, minus those a switched-off trainer feature would reject:
        # `--trainer.enable_checkpointing=false` or `--trainer.logger=false` just work.
        callbacks = [*callbacks, RunLog(), Detectron2Export(), SaveOnSigterm()]
        if config.get("enable_checkpointing") is False:
            callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
        if config.get("logger") is not False:
            callbacks.append(LearningRateMonitor("step"))
        if config.get("enable_progress_bar") is not False:
            callbacks.append(RichProgressBar())
        plugins = config.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            config["plugins"] = [*plugins, AtomicCheckpointIO()]
        return super()._instantiate_trainer(config, callbacks)


def resolve_checkpoint(ckpt_path: str, runs: Path) -> tuple[Path, int | None]:
    """The checkpoint to resume from and the run version it belongs to (None: not a run folder).

    ``last`` means the ``last.ckpt`` of the newest ``version_N`` under ``runs``.
    """
    if ckpt_path == "last":
        candidates = sorted(
            runs.glob("version_*/checkpoints/last.ckpt"), key=lambda p: _version_number(p.parent.parent) or -1
        )
        if not candidates:
            raise ConfigError(f"--ckpt_path last: no {runs}/version_*/checkpoints/last.ckpt; start without --ckpt_path")
        checkpoint = candidates[-1]
    else:
        checkpoint = Path(ckpt_path)
        if not checkpoint.is_file():
            raise ConfigError(f"--ckpt_path {ckpt_path} does not exist; pass a .ckpt file or 'last'")
    run = checkpoint.parent.parent
    same_runs = run.parent.resolve() == runs.resolve() and checkpoint.parent.name == "checkpoints"
    return checkpoint, _version_number(run) if same_runs else None


def _version_number(folder: Path) -> int | None:
    prefix = "version_"
    tail = folder.name[len(prefix) :]
    return int(tail) if folder.name.startswith(prefix) and tail.isdigit() else None


def cli_main(args: list[str] | None = None) -> None:
    cli = DetlitCLI(
        DetectionModule,
        CocoDataModule,
        run=False,
        auto_configure_optimizers=False,
        args=args,
        save_config_kwargs={"overwrite": True},
    )
    if cli.config.tune_lr:
        suggest_lr(cli.trainer, cli.model, cli.datamodule, cli.config.tune_lr_steps)
        return
    with plain_failures():
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.ckpt_path, weights_only=True)


@contextmanager
def plain_failures() -> Iterator[None]:
    """Failures a user can act on, as one sentence; SIGTERM as exit status 143 (128 + 15)."""
    try:
        yield
    except SIGTERMException:
        log.warning("stopped by SIGTERM; resume with --ckpt_path last")
        sys.exit(128 + signal.SIGTERM)
    except RuntimeError as err:
        if "DataLoader worker" in str(err):
            raise DetlitError(
                f"a data-loading worker process died ({err}); usually the system ran out of memory: lower "
                "data.num_workers or data.batch_size, then resume with --ckpt_path last"
            ) from err
        raise


def suggest_lr(trainer: Trainer, model: DetectionModule, datamodule: CocoDataModule, steps: int = 100) -> float:
    """Lightning's learning-rate range test: ``steps`` steps from 1e-6 to 1, loss vs. rate."""
    finder = Tuner(trainer).lr_find(
        model, datamodule=datamodule, min_lr=1e-6, max_lr=1.0, num_training=steps, update_attr=False
    )
    found = finder.suggestion() if finder is not None else None
    if finder is None or found is None:
        raise ConfigError("the learning-rate finder found no suggestion; give it more batches (a larger train set)")
    suggestion = float(found)
    if trainer.log_dir:
        plot = Path(trainer.log_dir) / "lr_find.png"
        plot.parent.mkdir(parents=True, exist_ok=True)
        figure = finder.plot(suggest=True)
        if isinstance(figure, Figure):
            figure.savefig(plot)
        log.info("loss vs. learning rate: %s", plot)
    print(f"suggested learning rate: {suggestion:.3g} (set model.optimizer.init_args.lr)")
    return suggestion


def main(args: list[str] | None = None) -> None:
    run_cli(cli_main, args)


if __name__ == "__main__":
    main()
