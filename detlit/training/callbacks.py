"""Callbacks that make a run readable: a plain-text log next to TensorBoard, and a summary."""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only

from detlit.common.env import collect_env, format_env
from detlit.common.outputs import write_text
from detlit.model.config import portable_config
from detlit.model.module import DetectionModule
from detlit.training.checkpointing import atomic_torch_save

log = logging.getLogger("detlit")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Lightning's logger does not propagate to the root logger, so it gets the handler too.
CAPTURED_LOGGERS = ("", "lightning.pytorch", "lightning.fabric")


def _fmt(metrics: dict[str, Any], prefix: str) -> str:
    return ", ".join(f"{k}={float(v):.4f}" for k, v in sorted(metrics.items()) if k.startswith(prefix))


class RunFolderCallback(Callback):
    """Knows the run folder on every process.

    ``Trainer.log_dir`` is a collective call (rank 0 broadcasts the folder), so it is read in
    ``setup`` on all processes, never inside a rank-zero-only hook, where it would hang DDP.
    """

    folder: Path | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        log_dir = trainer.log_dir
        self.folder = Path(log_dir) if log_dir is not None else None


class ValidateLastEpoch(Callback):
    """Validates the last epoch of a run even where ``trainer.check_val_every_n_epoch`` skips it.

    A config that validates every few epochs (the demo: every 5) still ends with validation
    numbers, a best checkpoint and a final summary when ``--trainer.max_epochs`` is not a multiple
    of it. Lightning reads ``check_val_every_n_epoch`` at the end of each epoch; for the last one
    it is set to 1, and restored when training ends.
    """

    def __init__(self) -> None:
        self.saved: int | None = None

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        every, last = trainer.check_val_every_n_epoch, trainer.max_epochs
        if every is None or last is None or last < 1 or trainer.current_epoch != last - 1:
            return
        if last % every:
            self.saved, trainer.check_val_every_n_epoch = every, 1
            log.info("validating the last epoch (%d) too: trainer.check_val_every_n_epoch is %d", last, every)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.saved is not None:
            trainer.check_val_every_n_epoch, self.saved = self.saved, None


class Detectron2Export(RunFolderCallback):
    """At the end of training, writes ``model_final.pth`` and ``detectron2_config.yaml`` in the run
    folder: the weights and config that detectron2's own ``DetectionCheckpointer`` and
    ``DefaultPredictor`` load, without detlit."""

    @rank_zero_only
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        folder = self.folder
        if folder is None or not isinstance(pl_module, DetectionModule):
            return
        folder.mkdir(parents=True, exist_ok=True)
        weights = folder / "model_final.pth"
        atomic_torch_save({"model": pl_module.model.state_dict()}, weights)
        write_text(folder / "detectron2_config.yaml", portable_config(pl_module.cfg).dump())
        log.info("detectron2 weights and config: %s, %s", weights, folder / "detectron2_config.yaml")


class RunLog(RunFolderCallback):
    """Writes ``run.log`` in the run folder: command, environment, config, every log message,
    and the metrics of each epoch; prints where the results are at the end of training."""

    def __init__(self, file_name: str = "run.log"):
        self.file_name = file_name
        self.handler: logging.Handler | None = None
        self.described = False  # the command and environment are logged once per process

    @property
    def path(self) -> Path | None:
        return Path(self.handler.baseFilename) if isinstance(self.handler, logging.FileHandler) else None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero:
            self._open(trainer, pl_module, stage)

    def _open(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        folder = self.folder
        if self.handler is not None or folder is None:
            return
        folder.mkdir(parents=True, exist_ok=True)
        self.handler = logging.FileHandler(folder / self.file_name, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter(LOG_FORMAT))
        self.handler.setLevel(logging.INFO)
        for name in CAPTURED_LOGGERS:
            logging.getLogger(name).addHandler(self.handler)
        logging.captureWarnings(True)
        if self.described:  # a later stage of the same command (the test after training)
            log.info("%s stage", getattr(stage, "value", stage))
            return
        self.described = True
        log.info("command: %s", shlex.join(sys.orig_argv))
        log.info("environment:\n%s", format_env(collect_env()))
        log.info("model hyper-parameters: %s", dict(pl_module.hparams))
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None:
            log.info("data hyper-parameters: %s", dict(datamodule.hparams))
        log.info("run folder: %s", folder)

    @rank_zero_only
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        log.info(
            "epoch %d (step %d): %s",
            trainer.current_epoch,
            trainer.global_step,
            _fmt(trainer.callback_metrics, "train/"),
        )

    @rank_zero_only
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            log.info(
                "epoch %d (step %d): %s",
                trainer.current_epoch,
                trainer.global_step,
                _fmt(trainer.callback_metrics, "val/"),
            )

    @rank_zero_only
    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        tested = trainer.ckpt_path or "the model as training left it"
        log.info("testing %s", tested)

    @rank_zero_only
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        log.info("test: %s", _fmt(trainer.callback_metrics, "test/"))

    @rank_zero_only
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        lines = ["training finished"]
        val = _fmt(trainer.callback_metrics, "val/")
        if val:
            lines.append(f"  final validation: {val}")
        for checkpoint in trainer.checkpoint_callbacks:
            if not isinstance(checkpoint, ModelCheckpoint):
                continue
            if checkpoint.monitor and checkpoint.best_model_path:
                score = float(checkpoint.best_model_score or 0)
                best = f"{checkpoint.best_model_path} ({checkpoint.monitor}={score:.4f})"
                lines.append(f"  best checkpoint:  {best}")
            if checkpoint.last_model_path:
                lines.append(f"  last checkpoint:  {checkpoint.last_model_path}")
        if self.folder is not None:
            lines.append(f"  run folder:       {self.folder}")
            lines.append(f"  TensorBoard:      tensorboard --logdir {self.folder.parent}")
        log.info("\n".join(lines))

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.close()

    def close(self) -> None:
        """Stop writing ``run.log``. Lightning calls ``teardown`` after a stage that ends normally
        only: the command closes the log itself when a stage fails, before it may remove the run
        folder of a run that never started."""
        if self.handler is not None:
            for name in CAPTURED_LOGGERS:
                logging.getLogger(name).removeHandler(self.handler)
            self.handler.close()
            self.handler = None
