"""The training command's library: :class:`DetlitCLI`, a LightningCLI, and :func:`cli_main`.

``python -m detlit.fit`` trains; ``python -m detlit.fit validate`` and ``python -m detlit.fit test``
(also ``detlit validate`` / ``detlit test``) run Lightning's ``Trainer.validate`` / ``Trainer.test``
on a checkpoint (``--ckpt``), with the same config. After training, the best checkpoint is tested
on ``data.test_json`` when one is given (``--test_after_fit false`` switches that off).

``--ckpt`` names a checkpoint file, or ``last`` / ``best`` of the newest run under the logger's
folder: to resume training (fit) or to evaluate (validate, test). A checkpoint of a run folder
continues in that folder: TensorBoard shows the resumed or tested numbers beside the training
curves, and the config of that command is saved beside the original one. detlit 0.1's
``--ckpt_path`` still works (in configs too).
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import shutil
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
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException
from matplotlib.figure import Figure

from detlit.common.outputs import write_failure
from detlit.common.paths import special_kind, too_long
from detlit.common.run_folder import BEST_CHECKPOINT, RunFolder, find_checkpoint, numbered_runs, refuse_reused
from detlit.common.safe_yaml import register_cli_loader
from detlit.data.datamodule import CocoDataModule
from detlit.errors import ConfigError, DetlitError
from detlit.model.checkpoints import check_optimizer, check_resume, read_checkpoint
from detlit.model.module import DetectionModule
from detlit.training.callbacks import (
    Detectron2Export,
    RunLog,
    RunRecord,
    SaveRunConfig,
    ValidateLastEpoch,
    hold_early_messages,
    planned_folder,
)
from detlit.training.checkpointing import AtomicCheckpointIO, SaveOnSigterm
from detlit.training.progress import PlainProgress, quiet_lightning
from detlit.training.settings import build_optimizer, check_fit_settings, fit_precision_to_device

log = logging.getLogger(__name__)

STAGES = ("fit", "validate", "test")

# The data decides these; the model receives them, so they are never typed twice.
LINKED_FROM_DATA_AT_PARSE = ("min_size_train", "max_size_train", "min_size_test", "max_size_test")
LINKED_FROM_DATA_AT_INSTANTIATION = ("num_classes", "class_names", "category_ids")
# The config groups of the two checkpoint callbacks (the best by a metric, and last.ckpt).
CHECKPOINT_KEYS = ("checkpoint", "last_checkpoint")


class DetlitCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--ckpt",
            "--ckpt_path",
            type=str | None,
            default=None,
            help="checkpoint to resume training from (fit) or to evaluate (validate, test): a .ckpt file, or "
            "last / best of the newest run",
        )
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="after training, test the best checkpoint on data.test_json when one is given",
        )
        parser.add_argument(
            "--tune_lr",
            type=bool,
            default=False,
            help="run Lightning's learning-rate finder on the data, print its suggestion and exit",
        )
        parser.add_argument("--tune_lr_steps", type=int, default=100, help="steps of the learning-rate range test")
        parser.add_argument(
            "--progress_seconds",
            type=float,
            default=30.0,
            help="when output is not a terminal: seconds between progress lines (console and run.log)",
        )
        for name in LINKED_FROM_DATA_AT_PARSE:
            parser.link_arguments(f"data.{name}", f"model.{name}")
        for name in LINKED_FROM_DATA_AT_INSTANTIATION:
            parser.link_arguments(f"data.{name}", f"model.{name}", apply_on="instantiate")
        # Two checkpoint callbacks: the best ones by a validation metric, and `last.ckpt`, which
        # does not wait for a metric (Lightning defers monitored saves until one exists) and can
        # be written every N steps or minutes for long epochs. Plain class groups, not Lightning's
        # callback groups, so that `instantiate_trainer` decides whether the trainer gets them.
        for key in CHECKPOINT_KEYS:
            parser.add_class_arguments(ModelCheckpoint, key, fail_untyped=False, sub_configs=True)
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/map",
                "checkpoint.mode": "max",
                "checkpoint.save_last": False,
                "checkpoint.filename": BEST_CHECKPOINT,
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

    def __init__(self, *args: Any, stage: str = "fit", **kwargs: Any):
        self.stage = stage
        # config.yaml goes into the run folder whatever the logger (Lightning's own needs trainer.log_dir).
        kwargs.setdefault("save_config_callback", SaveRunConfig)
        super().__init__(*args, **kwargs)

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        # Configs and command-line values may come from someone else: plain YAML, bounded (common/safe_yaml).
        return super().init_parser(**{**kwargs, "parser_mode": register_cli_loader()})

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # detlit's command hands Lightning the command line it read (less the stage word) as
        # ``args``; with the same words in sys.argv Lightning would warn, listing both, every run.
        argv = sys.argv
        if args is not None:
            sys.argv = argv[:1]
        try:
            super().parse_arguments(parser, args)
        finally:
            sys.argv = argv
        # Every setting of the trainer, its checkpoints and this command in range before the seed is
        # set or anything is built (training/settings): Lightning checks some late, some never.
        check_fit_settings(self.config)
        fit_precision_to_device(self.config)

    def before_instantiate_classes(self) -> None:
        # A resumed (or evaluated) run continues in the run folder its checkpoint came from; `--ckpt
        # last` finds the newest one. The original config.yaml stays; this command's config is saved
        # beside it. A new run never writes into a folder that holds another run.
        logger = self.config.trainer.logger
        init: Any = getattr(logger, "init_args", None)
        kind = str(getattr(logger, "class_path", ""))
        save_dir, name = getattr(init, "save_dir", None), getattr(init, "name", None)
        runs = None if init is None else numbered_runs(kind, save_dir, name)
        if self.config.ckpt is None:
            if self.stage != "fit":
                raise ConfigError(f"{self.stage} needs a checkpoint: pass --ckpt CKPT (a .ckpt file, last or best)")
            if runs is not None:
                refuse_reused(runs, init.version)
            return
        if runs is None:
            self.config.ckpt = str(find_checkpoint(self.config.ckpt, Path(self.config.trainer.default_root_dir))[0])
            return
        checkpoint, version = find_checkpoint(self.config.ckpt, runs)
        self.config.ckpt = str(checkpoint)
        if version is not None:
            init.version = version
            stamp = time.strftime("%Y%m%d-%H%M%S")
            what = "resumed" if self.stage == "fit" else self.stage
            filename = RunFolder.config_name(what, stamp)
            self.save_config_kwargs = {**self.save_config_kwargs, "config_filename": filename}
        log.info("%s from %s", "resuming" if self.stage == "fit" else f"{self.stage} of", checkpoint)

    def instantiate_classes(self) -> None:
        # Lightning refuses some settings in its constructors (ModelCheckpoint, Trainer): one sentence too.
        try:
            super().instantiate_classes()
        except MisconfigurationException as err:
            raise ConfigError(lightning_refusal(err)) from err

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer with what every run gets: the checkpoint callbacks, detlit's own callbacks and
        the atomic checkpoint writer, minus what a switched-off trainer feature would reject, so that
        ``--trainer.enable_checkpointing=false`` or ``--trainer.logger=false`` just work."""
        settings = {**self.config_init.get("trainer", {}), **kwargs}
        callbacks = [*as_list(settings.get("callbacks")), *self.run_callbacks(settings)]
        plugins = as_list(settings.get("plugins"))
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        return super().instantiate_trainer(**{**kwargs, "callbacks": callbacks, "plugins": plugins})

    def run_callbacks(self, settings: dict[str, Any]) -> list[Callback]:
        """The callbacks detlit adds to the config's own, for the trainer ``settings``."""
        callbacks: list[Callback] = []
        if settings.get("enable_checkpointing") is not False:
            callbacks += [self.config_init[key] for key in CHECKPOINT_KEYS]
        callbacks += [RunLog(), Detectron2Export(), SaveOnSigterm(), ValidateLastEpoch()]
        callbacks.append(RunRecord(self.config.as_dict()))
        if settings.get("logger") is not False:
            callbacks.append(LearningRateMonitor("step"))
        if settings.get("enable_progress_bar") is not False:
            # A bar on a terminal; in a file, a pipe or a CI log it would show nothing until the end.
            terminal = sys.stdout.isatty()
            callbacks.append(RichProgressBar() if terminal else PlainProgress(self.config.progress_seconds))
        return callbacks


def as_list(value: Any) -> list[Any]:
    """A trainer setting that takes one item or a list of them (callbacks, plugins), as a new list."""
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def cli_main(args: list[str] | None = None, stage: str = "fit") -> None:
    """Parse a fit config and run ``stage`` (fit, validate or test) with Lightning's Trainer."""
    if stage not in STAGES:
        raise ConfigError(f"unknown stage '{stage}'; use one of {', '.join(STAGES)}")
    check_config_files(sys.argv[1:] if args is None else args)
    quiet_lightning()
    hold_early_messages()  # run.log starts with them
    cli = DetlitCLI(
        DetectionModule,
        CocoDataModule,
        run=False,
        auto_configure_optimizers=False,
        args=args,
        save_config_kwargs={"overwrite": True},
        stage=stage,
    )
    trainer, model, data, ckpt = cli.trainer, cli.model, cli.datamodule, cli.config.ckpt
    check_before_start(trainer, model, data, stage, ckpt)
    if stage == "fit" and cli.config.tune_lr:
        suggest_lr(trainer, model, data, cli.config.tune_lr_steps)
        return
    with plain_failures(), nothing_left_of_a_failed_start(trainer):
        if stage == "validate":
            trainer.validate(model, datamodule=data, ckpt_path=ckpt, weights_only=True)
        elif stage == "test":
            require_test_data(data)
            trainer.test(model, datamodule=data, ckpt_path=ckpt, weights_only=True)
        else:
            trainer.fit(model, datamodule=data, ckpt_path=ckpt, weights_only=True)
            if cli.config.test_after_fit and data.test_data is not None and not trainer.interrupted:
                trainer.test(model, datamodule=data, ckpt_path=checkpoint_to_test(trainer), weights_only=True)


def check_before_start(
    trainer: Trainer, model: DetectionModule, data: CocoDataModule, stage: str, ckpt: str | None
) -> None:
    """What would fail later, checked before anything is written: the run folder can be written,
    the optimizer accepts its settings (training only), and a checkpoint is whole, a detlit
    checkpoint of these classes, and (to resume) not finished and saved by that optimizer."""
    require_writable(planned_run_folder(trainer))
    optimizer = build_optimizer(model.optimizer_factory, model.parameter_groups()) if stage == "fit" else None
    if ckpt is None:
        return
    checkpoint = read_checkpoint(Path(ckpt))
    check_resume(
        checkpoint,
        Path(ckpt),
        data.class_names,
        data.category_ids,
        trainer.max_epochs if stage == "fit" else None,
        trainer.max_steps if stage == "fit" else -1,
    )
    if optimizer is not None:
        check_optimizer(checkpoint, Path(ckpt), optimizer)


def planned_run_folder(trainer: Trainer) -> Path:
    """The folder this run will write into (:func:`~detlit.common.run_folder.folder_of`), without creating it."""
    return planned_folder(trainer)


def require_writable(folder: Path) -> None:
    """Raise one sentence when ``folder`` (or the nearest folder above it that exists) cannot be written,
    or holds a name the filesystem cannot (found before any folder of it is made)."""
    problem = too_long(folder)
    if problem is not None:
        raise ConfigError(
            f"cannot write the run folder: {problem}; choose a shorter --trainer.logger.init_args.save_dir or name"
        )
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    probe = existing / f".detlit-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(
            f"cannot write the run folder {folder} ({err.strerror or err}); choose a writable place with "
            "--trainer.logger.init_args.save_dir"
        ) from err


@contextmanager
def nothing_left_of_a_failed_start(trainer: Trainer) -> Iterator[None]:
    """Stop writing run.log when a stage fails, and remove the run folder this run created when it
    fails before its first optimizer step."""
    folder = planned_run_folder(trainer)
    existed = folder.exists()
    try:
        yield
    except BaseException:
        for callback in trainer.callbacks:  # type: ignore[attr-defined]  # set by Lightning's callback connector
            if isinstance(callback, RunLog):
                callback.close()
        started = trainer.global_step > 0 or bool(RunFolder(folder).checkpoint_files())
        if not existed and not started and trainer.is_global_zero:
            shutil.rmtree(folder, ignore_errors=True)
            log.info("nothing was trained: removed %s", folder)
        raise


def check_config_files(args: list[str]) -> None:
    """Refuse a ``--config`` that names something other than a regular file: reading a named pipe
    blocks until someone writes to it, and a device such as ``/dev/zero`` never ends.

    A ``--config`` value that names nothing is left to the parser (it may be YAML text itself).
    """
    for position, arg in enumerate(args):
        if arg == "--config" and position + 1 < len(args):
            value = args[position + 1]
        elif arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        else:
            continue
        try:
            kind = special_kind(Path(value))
        except OSError:  # a name longer than the filesystem takes: YAML text, or the parser says so
            continue
        if kind is not None:
            raise ConfigError(f"--config {value} is {kind}, not a regular file; pass a YAML config file")


def refuses_a_trainer_setting(err: ValueError) -> bool:
    """Whether Lightning raised ``err`` about one of the trainer's settings (its messages start with
    the setting in backquotes), as it does for those it can only judge against the data, such as
    a ``val_check_interval`` beyond the epoch's batches."""
    named = re.match(r"\s*`(\w+)`", str(err))
    if named is None or named.group(1) not in inspect.signature(Trainer.__init__).parameters:
        return False
    frame = err.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and str(frame.tb_frame.f_globals.get("__name__", "")).startswith("lightning.")


def lightning_refusal(err: Exception) -> str:
    """Lightning's message for a setting it refuses, as one line with the fix."""
    reason = " ".join(str(err).split()).rstrip(".")
    return f"Lightning refuses the config ({reason}); fix that setting (--print_config shows every one)"


def require_test_data(data: CocoDataModule) -> None:
    if data.test_data is None:
        raise ConfigError(
            "test needs a test set: set data.test_json (and data.test_images) in the config or with --data.*"
        )


def checkpoint_to_test(trainer: Trainer) -> str | None:
    """The best checkpoint of the run; the last one without a best; None (the model in memory) without either."""
    checkpoints = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
    for callback in checkpoints:
        if callback.monitor and callback.best_model_path and Path(callback.best_model_path).is_file():
            log.info("testing the best checkpoint %s", callback.best_model_path)
            return callback.best_model_path
    for callback in checkpoints:
        if callback.last_model_path and Path(callback.last_model_path).is_file():
            log.info("no best checkpoint: testing the last one, %s", callback.last_model_path)
            return callback.last_model_path
    log.info("no checkpoint was written: testing the model as training left it")
    return None


@contextmanager
def plain_failures() -> Iterator[None]:
    """Failures a user can act on, as one sentence (a full disk, a dead loader worker, a trainer
    setting Lightning refuses only once it sees the data); SIGTERM as exit status 143 (128 + 15)
    and Ctrl-C as 130 (128 + 2), both after saving ``last.ckpt`` (:class:`SaveOnSigterm`)."""
    try:
        yield
    except SIGTERMException:
        log.warning("stopped by SIGTERM; resume with --ckpt last")
        sys.exit(128 + signal.SIGTERM)
    except SystemExit as stop:
        # Lightning answers Ctrl-C with sys.exit(1) after its on_exception hooks have run.
        if stop.code == 1 and SaveOnSigterm.interrupted:
            log.warning("stopped by Ctrl-C; resume with --ckpt last")
            sys.exit(128 + signal.SIGINT)
        raise
    except MisconfigurationException as err:
        raise ConfigError(lightning_refusal(err)) from err
    except ValueError as err:
        if isinstance(err, DetlitError) or not refuses_a_trainer_setting(err):
            raise
        raise ConfigError(lightning_refusal(err)) from err
    except (OSError, RuntimeError) as err:
        failed = write_failure(err)
        if failed is not None:
            raise DetlitError(
                f"could not write {failed.filename or 'the run folder'} ({failed.strerror}); free disk space or "
                "choose a writable folder with --trainer.logger.init_args.save_dir, then resume with --ckpt last"
            ) from err
        if isinstance(err, RuntimeError) and "DataLoader worker" in str(err):
            raise DetlitError(
                f"a data-loading worker process died ({err}); usually the system ran out of memory: lower "
                "data.num_workers or data.batch_size, then resume with --ckpt last"
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
    plot = RunFolder(planned_run_folder(trainer)).lr_find
    plot.parent.mkdir(parents=True, exist_ok=True)
    figure = finder.plot(suggest=True)
    if isinstance(figure, Figure):
        figure.savefig(plot)
    log.info("loss vs. learning rate: %s", plot)
    print(f"suggested learning rate: {suggestion:.3g} (set model.optimizer.init_args.lr)")
    return suggestion
