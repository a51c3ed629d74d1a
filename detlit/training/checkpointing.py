"""Checkpoints that survive what kills long runs: full disks, preemption signals.

* :class:`AtomicCheckpointIO` writes every checkpoint to a temporary file in the same folder,
  flushes it to disk (fsync) and renames it over the target: a checkpoint on disk is either the
  old one or the complete new one, never a partial file. A failed write (a full disk) removes the
  temporary file, leaves the previous checkpoint untouched, and ends in one clear sentence.
  Loading uses ``torch.load(weights_only=True)``: a checkpoint cannot run code.
* :class:`SaveOnSigterm` saves ``last.ckpt`` when the process receives SIGTERM (what SLURM,
  Kubernetes and cloud preemption send). Lightning stops after the current batch and calls
  ``on_exception``; the checkpoint then holds a consistent state to resume from with
  ``--ckpt last``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from detlit.common.outputs import atomic_write, write_failure
from detlit.errors import DetlitError

log = logging.getLogger(__name__)


class CheckpointWriteError(DetlitError):
    """A checkpoint could not be written (the previous one is intact)."""


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` through a temporary file, fsync and rename (``atomic_write``)."""
    try:
        with atomic_write(path) as handle:
            torch.save(obj, handle)
    except (OSError, RuntimeError) as failure:
        err = write_failure(failure)
        if err is None:
            raise
        reason = err.strerror or str(err)
        raise CheckpointWriteError(
            f"could not write checkpoint {path} ({reason}); earlier checkpoints are intact: free disk space "
            "(or point the logger's save_dir at a disk with room) and resume with --ckpt last"
        ) from err


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with atomic local writes and weights-only loading."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "://" in str(path):  # remote storage: fsspec's own transaction
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, Path(path))

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> Any:
        return super().load_checkpoint(path, map_location, weights_only=True if weights_only is None else weights_only)


class SaveOnSigterm(Callback):
    """On SIGTERM or Ctrl-C (SIGINT), saves ``last.ckpt`` next to the run's other checkpoints before
    the process exits; training only (an interrupted validation or test has nothing to resume)."""

    interrupted = False  # set when Ctrl-C stopped a run: the command then exits with 130

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt):
            type(self).interrupted = True
            what = "Ctrl-C"
        elif isinstance(exception, SIGTERMException):
            what = "SIGTERM"
        else:
            return
        if not trainer.training or trainer.global_step == 0:
            log.warning("%s received before the first optimizer step: nothing to save", what)
            return
        folders = [c.dirpath for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.dirpath]
        if not folders:
            log.warning("%s received; no checkpoint folder is configured, so nothing was saved", what)
            return
        path = Path(folders[0]) / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
        trainer.save_checkpoint(path)
        log.warning("%s received at step %d: saved %s; resume with --ckpt last", what, trainer.global_step, path)
