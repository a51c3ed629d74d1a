"""Callbacks that make a run readable: its records, a plain-text log, detectron2's files, a summary.

Every file they write is named by :mod:`detlit.common.run_folder`, the one module that knows the
run folder's layout: :class:`RunRecord` keeps ``run.json`` and ``metrics.jsonl``, :class:`RunLog`
``run.log``, :class:`Detectron2Export` the detectron2 weights and config, :class:`SaveRunConfig`
``config.yaml``; all in the one folder :func:`~detlit.common.run_folder.folder_of` names, whatever
the logger (TensorBoard, CSV, MLflow, or none).
"""

from __future__ import annotations

import logging
import logging.handlers
import shlex
import sys
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, Timer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from detlit.common import run_folder
from detlit.common.env import collect_env, format_env
from detlit.common.files import sha256_file
from detlit.common.outputs import write_text
from detlit.common.run_folder import RunFolder
from detlit.errors import ConfigError
from detlit.model.config import portable_config
from detlit.model.module import DetectionModule, NonFiniteLossError
from detlit.training.checkpointing import atomic_torch_save

log = logging.getLogger("detlit")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Lightning's logger does not propagate to the root logger, so it gets the handler too.
CAPTURED_LOGGERS = ("", "lightning.pytorch", "lightning.fabric")
DATA_SPLITS = ("train", "val", "test")


def captured_loggers() -> list[logging.Logger]:
    """The loggers whose messages run.log keeps: the root, and Lightning's where they do not pass
    their messages on to it (once each)."""
    loggers = [logging.getLogger(name) for name in CAPTURED_LOGGERS]
    return [logger for logger in loggers if logger is loggers[0] or not logger.propagate]


def _fmt(metrics: dict[str, Any], prefix: str) -> str:
    return ", ".join(f"{k}={float(v):.4f}" for k, v in sorted(metrics.items()) if k.startswith(prefix))


def planned_folder(trainer: Trainer) -> Path:
    """The run folder of ``trainer`` (:func:`~detlit.common.run_folder.folder_of`), from its own loggers:
    the metrics tap :class:`RunRecord` adds is not one of them."""
    loggers = [logger for logger in trainer.loggers if not isinstance(logger, MetricsTap)]
    return run_folder.folder_of(loggers, trainer.default_root_dir)


class RunFolderCallback(Callback):
    """Knows the run folder on every process.

    The folder is found on rank 0 and broadcast (a logger may answer its name and version on rank 0
    only), in ``setup``, which every process runs: never inside a rank-zero-only hook, where the
    broadcast would hang DDP.
    """

    folder: Path | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        found = str(planned_folder(trainer)) if trainer.is_global_zero else ""
        self.folder = Path(trainer.strategy.broadcast(found))

    @property
    def run(self) -> RunFolder | None:
        return RunFolder(self.folder) if self.folder is not None else None


class SaveRunConfig(SaveConfigCallback):
    """Saves the command's config as ``config.yaml`` in the run folder, whatever the logger.

    Lightning's own callback writes into ``trainer.log_dir``, which a logger without a local folder
    (MLflow with a tracking server) does not have; this one writes where the run's other files go.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "save_to_log_dir": False})

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        folder = planned_folder(trainer)  # rank 0 only, where the logger knows its folder
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / self.config_filename
        if path.exists() and not self.overwrite:
            raise FileExistsError(f"{path} exists")
        self.parser.save(self.config, str(path), skip_none=False, overwrite=self.overwrite, multifile=self.multifile)


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
        run = self.run
        if run is None or not isinstance(pl_module, DetectionModule):
            return
        run.path.mkdir(parents=True, exist_ok=True)
        atomic_torch_save({"model": pl_module.model.state_dict()}, run.detectron2_weights)
        write_text(run.detectron2_config, portable_config(pl_module.cfg).dump())
        log.info("detectron2 weights and config: %s, %s", run.detectron2_weights, run.detectron2_config)


EARLY_MESSAGES = 10_000  # messages kept from before run.log exists (the data check's, the config's)


class EarlyMessages(logging.handlers.BufferingHandler):
    """Holds the messages logged before the run folder exists, for ``run.log`` (bounded: past
    :data:`EARLY_MESSAGES` the oldest are dropped)."""

    def __init__(self) -> None:
        super().__init__(EARLY_MESSAGES)
        self.setLevel(logging.INFO)

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.buffer) >= self.capacity:
            del self.buffer[0]
        self.buffer.append(record)

    def shouldFlush(self, record: logging.LogRecord) -> bool:
        return False


def hold_early_messages() -> EarlyMessages:
    """Start keeping messages for ``run.log``: :class:`RunLog` writes them first when it opens it."""
    held = EarlyMessages()
    for logger in captured_loggers():
        logger.addHandler(held)
    return held


def _release_early_messages(handler: logging.Handler) -> None:
    """Write the held messages to ``handler`` and stop holding."""
    for name in CAPTURED_LOGGERS:
        logger = logging.getLogger(name)
        for held in [h for h in logger.handlers if isinstance(h, EarlyMessages)]:
            for record in held.buffer:
                if record.levelno >= handler.level:
                    handler.handle(record)
            held.buffer.clear()
            logger.removeHandler(held)


class RunLog(RunFolderCallback):
    """Writes ``run.log`` in the run folder: command, environment, config, every log message,
    and the metrics of each epoch; prints where the results are at the end of training."""

    def __init__(self, file_name: str = run_folder.RUN_LOG):
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
        _release_early_messages(self.handler)
        for logger in captured_loggers():
            logger.addHandler(self.handler)
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
        lines = [ending(trainer)]
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
        if self.run is not None:
            lines.append(f"  run folder:       {self.run.path}")
            if self.run.event_files():
                lines.append(f"  TensorBoard:      tensorboard --logdir {self.run.path.parent}")
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


class MetricsTap(Logger):
    """One more logger beside the run's own: what Lightning hands its loggers, to ``metrics.jsonl``.

    Lightning decides when a logger writes (every ``trainer.log_every_n_steps`` optimizer steps,
    at epoch ends, after each validation and test) and what it gets (``self.log`` values, the
    learning rates of ``LearningRateMonitor``); every logger gets the same. Being one of them, the
    metrics file holds exactly what TensorBoard, CSV or MLflow receive, at the same steps, and it
    holds it without them too. Its name and version are empty, so that where it is the only logger
    (``--trainer.logger=false``) the checkpoints stay in ``trainer.default_root_dir/checkpoints``.
    """

    def __init__(self, run: RunFolder, save_dir: str | None) -> None:
        super().__init__()
        self.target = run
        self._save_dir = save_dir

    @property
    def name(self) -> str:
        return ""

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str | None:
        return self._save_dir

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        run_folder.append_metrics(self.target, -1 if step is None else step, metrics, time.time())

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """The hyper-parameters go to ``run.json`` (:class:`RunRecord`), as plain JSON."""


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def why_stopped(trainer: Trainer) -> str:
    """Why training ended normally: ``early_stopping``, ``max_time``, ``max_steps``, ``max_epochs``, or
    ``a callback`` (one that set ``trainer.should_stop``)."""
    for callback in trainer.callbacks:  # type: ignore[attr-defined]  # set by Lightning's callback connector
        if isinstance(callback, EarlyStopping):
            reason = getattr(callback, "stopping_reason", None)  # Lightning >= 2.5
            if (reason.value != 0) if reason is not None else callback.stopped_epoch > 0:
                return "early_stopping"
        remaining = callback.time_remaining() if isinstance(callback, Timer) else None
        if remaining is not None and remaining <= 0:
            return "max_time"
    if trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps:
        return "max_steps"
    if trainer.max_epochs not in (None, -1) and trainer.current_epoch >= trainer.max_epochs:
        return "max_epochs"
    return "a callback" if trainer.should_stop else "max_epochs"


def ending(trainer: Trainer) -> str:
    """How training ended, in words: ``training finished`` when it ran its planned schedule, else
    what stopped it, how far it got and that the learning-rate schedule did not finish."""
    reason = why_stopped(trainer)
    total = trainer.estimated_stepping_batches
    planned = int(total) if isinstance(total, (int, float)) and total != float("inf") else None
    if reason in ("max_epochs", "max_steps") and (planned is None or trainer.global_step >= planned):
        return "training finished"
    epochs = f"{trainer.current_epoch} of {trainer.max_epochs} epochs, " if trainer.max_epochs else ""
    steps = f"step {trainer.global_step:,} of {planned:,}" if planned else f"step {trainer.global_step:,}"
    return (
        f"training stopped by {reason.replace('_', ' ')} after {epochs}{steps}: the learning-rate schedule did "
        "not finish; continue with --ckpt last (the report says more)"
    )


def why_interrupted(exception: BaseException) -> str:
    """What stopped a stage that did not end normally: ``SIGTERM``, ``Ctrl-C``, ``diverged`` (a loss
    or the model's outputs not finite, with ``model.on_nonfinite_loss: stop``) or ``error``."""
    if isinstance(exception, SIGTERMException):
        return "SIGTERM"
    if isinstance(exception, KeyboardInterrupt):
        return "Ctrl-C"
    if isinstance(exception, NonFiniteLossError):
        return "diverged"
    return "error"


class RunRecord(RunFolderCallback):
    """Keeps the run's own records (:mod:`detlit.common.run_folder`), whatever the logger: ``run.json``,
    written when a fit starts and rewritten (atomically) as it goes and when it ends, and
    ``metrics.jsonl``, appended by :class:`MetricsTap`. Rank 0 writes both.

    ``run.json`` holds the command, the resolved config, the model's and data's hyper-parameters,
    the versions, the class map, the data fingerprints (sha256 of each json), the schedule planned
    and done, why training stopped, the checkpoints, and one entry per command that worked in the
    folder (``sessions``: a resumed fit, a later test). A validate or test command adds its session
    to a record that exists; it never starts one in a folder without (a detlit 0.2 run).

    Args:
        config: the command's resolved config (the CLI's), recorded as it is.
    """

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        self.config = config
        self.record: dict[str, Any] | None = None
        self.session: dict[str, Any] | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        run = self.run
        assert run is not None  # set by RunFolderCallback.setup
        if not any(isinstance(logger, MetricsTap) for logger in trainer.loggers):
            save_dir = None if trainer.loggers else str(trainer.default_root_dir)
            trainer.loggers = [*trainer.loggers, MetricsTap(run, save_dir)]
        if trainer.is_global_zero:
            self._start(trainer, pl_module, str(getattr(stage, "value", stage)), run)

    def _start(self, trainer: Trainer, pl_module: LightningModule, stage: str, run: RunFolder) -> None:
        earlier = self.record if self.record is not None else _earlier_record(run)
        if stage != "fit" and earlier is None:
            return  # a test of a run without a record (detlit 0.2): its metrics go to metrics.jsonl only
        self.session = {
            "stage": stage,
            "command": shlex.join(sys.orig_argv),
            "started": _now(),
            "ended": None,
            "status": "running",
            "checkpoint": None,  # known once Lightning restores it, after setup
        }
        record = earlier or {"started": self.session["started"], "sessions": []}
        if earlier is None and run.checkpoint_files():
            # A run without a record (detlit 0.2) resumed in its folder: its earlier metrics are in its
            # event files. (A new run's folder holds no checkpoint yet; its logger's files it may.)
            record["earlier_metrics"] = "tensorboard"
        record["sessions"] = [*record.get("sessions", []), self.session]
        if stage == "fit":
            record.update(self._describe(trainer, pl_module, run))
            record.update(status="running", ended=None, stopped_by=None, error=None)
        self.record = record
        self._write(run)

    def _describe(self, trainer: Trainer, pl_module: LightningModule, run: RunFolder) -> dict[str, Any]:
        """What the record says of the run at its start."""
        hparams = dict(pl_module.hparams)
        datamodule = getattr(trainer, "datamodule", None)
        data = dict(datamodule.hparams) if datamodule is not None else {}
        logger = next((lg for lg in trainer.loggers if not isinstance(lg, MetricsTap)), None)
        planned = {
            "max_epochs": trainer.max_epochs,
            "max_steps": trainer.max_steps,
            "max_time": _setting(self.config, "trainer", "max_time"),
            "accumulate_grad_batches": trainer.accumulate_grad_batches,
            "warmup_steps": hparams.get("warmup_steps"),
            "lr_schedule": hparams.get("lr_schedule"),
        }
        return {
            "folder": str(run.path.resolve()),
            "command": shlex.join(sys.orig_argv),
            "logger": None if logger is None else f"{type(logger).__module__}.{type(logger).__qualname__}",
            "config": self.config,
            "hparams": {"model": hparams, "data": data},
            "versions": collect_env(),
            "classes": {"names": hparams.get("class_names"), "category_ids": hparams.get("category_ids")},
            "data": {split: _fingerprint(data, split) for split in DATA_SPLITS if data.get(f"{split}_json")},
            "schedule": {"planned": planned, "done": {"epochs": trainer.current_epoch, "steps": trainer.global_step}},
            "metrics": run.metrics.name,
        }

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The loaders exist now: the planned steps are known.
        if self.record is None or not trainer.is_global_zero:
            return
        planned = self.record["schedule"]["planned"]
        batches = trainer.num_training_batches
        planned["batches_per_epoch"] = batches if batches != float("inf") else None
        total = trainer.estimated_stepping_batches
        planned["total_steps"] = int(total) if total != float("inf") else None
        self._write_run()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.record is not None and trainer.is_global_zero:
            self._done(trainer)
            self._write_run()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.record is not None and trainer.is_global_zero:
            self.record["stopped_by"] = why_stopped(trainer)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._end(trainer, "finished")

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        reason = why_interrupted(exception)
        if self.record is not None and self.session is not None and self.session["stage"] == "fit":
            self.record["stopped_by"] = reason
            failed = reason in ("error", "diverged")
            self.record["error"] = f"{type(exception).__name__}: {exception}" if failed else None
        self._end(trainer, "failed" if reason in ("error", "diverged") else "stopped")

    def _end(self, trainer: Trainer, status: str) -> None:
        if self.record is None or self.session is None or not trainer.is_global_zero:
            return
        self.session.update(ended=_now(), status=status, checkpoint=_text(trainer.ckpt_path))
        if self.session["stage"] == "fit":
            self._done(trainer)
            self.record.update(status=status, ended=self.session["ended"])
            # A fit with nothing left to train (its time or steps already spent) never calls on_train_end.
            self.record["stopped_by"] = self.record.get("stopped_by") or why_stopped(trainer)
            self.record["checkpoints"] = self._checkpoints(trainer)
        self.session = None
        self._write_run()

    def _done(self, trainer: Trainer) -> None:
        assert self.record is not None
        self.record["schedule"]["done"] = {"epochs": trainer.current_epoch, "steps": trainer.global_step}

    def _checkpoints(self, trainer: Trainer) -> dict[str, Any]:
        """The best checkpoint with its score, and the last one, as the checkpoint callbacks know them."""
        run = self.run
        assert run is not None
        best, last = None, None
        for callback in trainer.checkpoint_callbacks:
            if not isinstance(callback, ModelCheckpoint):
                continue
            if callback.monitor and callback.best_model_path and best is None:
                score = callback.best_model_score
                best = {
                    "path": run.relative(callback.best_model_path),
                    "monitor": callback.monitor,
                    "score": None if score is None else float(score),
                }
            last = last or run.relative(callback.last_model_path or None)
        if last is None and run.last_checkpoint.is_file():  # written on SIGTERM or Ctrl-C
            last = run.relative(run.last_checkpoint)
        return {"best": best, "last": last}

    def _write_run(self) -> None:
        if self.run is not None:
            self._write(self.run)

    def _write(self, run: RunFolder) -> None:
        assert self.record is not None
        run.path.mkdir(parents=True, exist_ok=True)
        run_folder.write_record(run, self.record)


def _earlier_record(run: RunFolder) -> dict[str, Any] | None:
    """The record of a run this command continues (resumed, or tested later), if it has a readable one."""
    if not run.has_record():
        return None
    try:
        return run_folder.read_record(run)
    except ConfigError as err:
        log.warning("%s; a new record replaces it", err)
        return None


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _setting(config: Mapping[str, Any] | None, *keys: str) -> Any:
    value: Any = config
    for key in keys:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


def _fingerprint(data: Mapping[str, Any], split: str) -> dict[str, Any]:
    """A split's json as configured, where it was found, and its sha256; its image folder."""
    configured = data.get(f"{split}_json")
    path = Path(str(configured))
    found = path.is_file()
    return {
        "json": str(configured),
        "path": str(path.resolve()) if found else None,
        "sha256": sha256_file(path) if found else None,
        "images": None if data.get(f"{split}_images") is None else str(data.get(f"{split}_images")),
    }
