"""Stage 7, training: what a run prints: progress as plain log lines for output that is not a
terminal, and Lightning's own messages once each, without its adverts (:func:`quiet_lightning`).

A progress bar redraws one line of a terminal; written to a file, a pipe or a CI log it shows
nothing until its end. :class:`PlainProgress` logs instead, at the first step, then every
``every_seconds`` and at the last step of each epoch, one line with the step out of the run's
total, the epoch, the loss, images per second, the time spent and the time left::

    step 40/600 (6.7%), epoch 1/15 batch 40/40, loss 1.2345, 3.21 images/s, elapsed 0:02:05, left 0:29:10

The lines go through logging, so they reach the console and ``run.log`` alike.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from datetime import timedelta
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar

log = logging.getLogger(__name__)


ADVERTS = ("\N{ELECTRIC LIGHT BULB} Tip:",)  # Lightning's suggestions to install its cloud products
LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")
# Deprecations inside Lightning that a user cannot act on (its own use of torch's pytree API).
FOREIGN_DEPRECATIONS = (r".*isinstance\(treespec, LeafSpec\)` is deprecated",)


def _no_advert(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(ADVERTS)


def quiet_lightning() -> None:
    """Lightning's messages through detlit's one handler (console and run.log), once each.

    Lightning gives its top-level logger a console handler of its own, so with detlit's every
    message printed twice; its adverts and the deprecation warnings of its own internals are
    dropped. Its warnings and errors are kept.
    """
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_no_advert)
    for message in FOREIGN_DEPRECATIONS:
        warnings.filterwarnings("ignore", message=message)


def duration(seconds: float) -> str:
    """``H:MM:SS`` (whole seconds)."""
    return str(timedelta(seconds=round(seconds)))


class PlainProgress(ProgressBar):
    """Lightning's progress bar as log lines (rank 0 only)."""

    def __init__(self, every_seconds: float = 30.0):
        super().__init__()
        self.every_seconds = every_seconds
        self.enabled = True
        self.started: float | None = None
        self.steps_at_start = 0
        self.images = 0
        self.last_line = -math.inf

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.started = time.monotonic()
        self.steps_at_start = trainer.global_step  # a resumed run counts its speed from here
        self.images = 0
        self.last_line = -math.inf

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.images += (len(batch) if isinstance(batch, (list, tuple)) else 1) * trainer.world_size
        now = time.monotonic()
        last_batch = batch_idx + 1 >= self.total_train_batches
        if not self.enabled or (now - self.last_line < self.every_seconds and batch_idx > 0 and not last_batch):
            return
        self.last_line = now
        log.info("%s", self.line(trainer, batch_idx, _loss(outputs), now))

    def line(self, trainer: Trainer, batch_idx: int, loss: float | None, now: float) -> str:
        """The progress line after batch ``batch_idx`` of the current epoch."""
        elapsed = now - (self.started if self.started is not None else now)
        step, total = trainer.global_step, trainer.estimated_stepping_batches
        parts = [f"step {step}/{total} ({100 * step / total:.1f}%)" if math.isfinite(total) else f"step {step}"]
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs is not None and trainer.max_epochs > 0 else ""
        batches = self.total_train_batches
        batches_text = f"/{batches}" if math.isfinite(batches) else ""
        parts.append(f"epoch {trainer.current_epoch + 1}{epochs} batch {batch_idx + 1}{batches_text}")
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if elapsed > 0:
            parts.append(f"{self.images / elapsed:.2f} images/s")
        parts.append(f"elapsed {duration(elapsed)}")
        done = step - self.steps_at_start
        if done > 0 and math.isfinite(total) and elapsed > 0:
            parts.append(f"left {duration(elapsed / done * max(total - step, 0))}")
        return ", ".join(parts)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.enabled and not trainer.sanity_checking:
            log.info("validating after epoch %d: %s", trainer.current_epoch + 1, _batches(self.total_val_batches))

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.enabled:
            log.info("testing: %s", _batches(sum(trainer.num_test_batches)))


def _batches(count: float) -> str:
    if not math.isfinite(count):
        return "every batch"
    return "1 batch" if count == 1 else f"{int(count)} batches"


def _loss(outputs: Any) -> float | None:
    """The training step's loss from what ``training_step`` returned."""
    value = outputs.get("loss") if isinstance(outputs, dict) else outputs
    return float(value.detach()) if isinstance(value, torch.Tensor) else None
