"""Checkpoint files checked before anything loads them: whole, readable, a detlit checkpoint, which run.

A Lightning checkpoint is a zip archive whose members carry CRC-32 checksums; :func:`verify_file`
first holds the sizes its members declare against the file's size (a zip bomb of a few megabytes
would otherwise inflate to gigabytes, :mod:`detlit.common.archives`), then reads every member
against its checksum, so a truncated or partly overwritten file is refused with one sentence
instead of loading (or resuming from) damaged weights. :func:`read_checkpoint` then
loads it weights-only and checks that it is a detlit checkpoint. What fit resumes from is held
against the data and the trainer by :func:`check_resume`, and against the configured optimizer by
:func:`check_optimizer`.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from detlit.common.archives import check_archive
from detlit.common.paths import not_a_file
from detlit.errors import WeightsError

WRITTEN_BY = "a .ckpt file written by python -m detlit.fit"


def verify_file(path: Path, option: str = "--ckpt") -> None:
    """Raise one sentence unless ``path`` is a whole checkpoint archive (every member's checksum holds).

    ``option`` names the file in the sentence (``--ckpt``, ``--model.weights``; empty: the path alone).

    Raises:
        WeightsError: missing, a folder, not a zip archive (a text file, a truncated file), an
            archive that declares far more than the file holds (a zip bomb:
            :func:`detlit.common.archives.check_archive`), or a member that fails its checksum.
    """
    named = f"{option} {path}" if option else str(path)
    if path.is_dir():
        raise WeightsError(f"{named} is a folder; pass {WRITTEN_BY}")
    problem = not_a_file(path)  # a named pipe or a device would block, or never end
    if problem is not None:
        raise WeightsError(f"{named} {problem}; pass {WRITTEN_BY}")
    # Sizes first: testzip inflates every member, and torch.load would hold each one in memory.
    check_archive(path, named, f"pass {WRITTEN_BY}")
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise WeightsError(
            f"{named} is not a whole checkpoint ({err}): a truncated or unrelated file; pass {WRITTEN_BY}"
        ) from err
    if damaged is not None:
        raise WeightsError(
            f"{named} is damaged ({damaged} fails its checksum); use another checkpoint of the run "
            "(last.ckpt or a best-*.ckpt) or train again"
        )


def read_checkpoint(path: Path, option: str = "--ckpt") -> dict[str, Any]:
    """A verified detlit checkpoint, loaded weights-only on the CPU; ``option`` as for :func:`verify_file`.

    Raises:
        WeightsError: see :func:`verify_file`; or it cannot be loaded, or it is not a detlit
            checkpoint (no model weights and class names).
    """
    verify_file(path, option)
    named = f"{option} {path}" if option else str(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as err:
        reason = str(err).splitlines()[0]
        raise WeightsError(f"{named} cannot be loaded ({reason}); pass {WRITTEN_BY}") from err
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(hparams, dict) or "class_names" not in hparams or "state_dict" not in checkpoint:
        raise WeightsError(f"{named} is not a detlit checkpoint (no model and class names); pass {WRITTEN_BY}")
    return dict(checkpoint)


@dataclass(frozen=True)
class Progress:
    """How far the run of a checkpoint went."""

    epochs_completed: int
    global_step: int


def progress(checkpoint: dict[str, Any]) -> Progress:
    """Completed epochs and optimizer steps recorded in a checkpoint."""
    loop = checkpoint.get("loops", {}).get("fit_loop", {})
    completed = loop.get("epoch_progress", {}).get("current", {}).get("completed", checkpoint.get("epoch", 0))
    return Progress(int(completed), int(checkpoint.get("global_step", 0)))


def check_resume(
    checkpoint: dict[str, Any],
    path: Path,
    class_names: Sequence[str],
    category_ids: Sequence[int],
    max_epochs: int | None,
    max_steps: int,
) -> None:
    """Raise one sentence unless training can go on from ``checkpoint`` with these data and limits.

    Raises:
        WeightsError: the checkpoint's classes differ from the data's, or its run already reached
            ``max_epochs`` / ``max_steps``.
    """
    hparams = checkpoint["hyper_parameters"]
    theirs = (list(hparams.get("class_names") or []), list(hparams.get("category_ids") or []))
    ours = (list(class_names), list(category_ids))
    if theirs != ours:
        raise WeightsError(
            f"--ckpt {path} was trained on classes {theirs[0]} (ids {theirs[1]}), the data has {ours[0]} (ids "
            f"{ours[1]}); resume with the data of that run, or start a new run with --model.weights {path}"
        )
    done = progress(checkpoint)
    if max_epochs is not None and max_epochs >= 0 and done.epochs_completed >= max_epochs:
        raise WeightsError(
            f"--ckpt {path} already finished its run ({done.epochs_completed} of trainer.max_epochs {max_epochs} "
            "epochs); raise --trainer.max_epochs to train on, or start a new run with --model.weights"
        )
    if max_steps > 0 and done.global_step >= max_steps:
        raise WeightsError(
            f"--ckpt {path} already reached trainer.max_steps ({done.global_step} of {max_steps} steps); raise "
            "--trainer.max_steps to train on, or start a new run with --model.weights"
        )


def check_optimizer(checkpoint: dict[str, Any], path: Path, optimizer: torch.optim.Optimizer) -> None:
    """Raise one sentence unless ``optimizer`` (built as the run configures it) can take the checkpoint's state.

    Another optimizer class, or parameters grouped differently (another ``freeze_at``, another
    architecture), would otherwise fail deep inside torch's ``load_state_dict`` on resume.

    Raises:
        WeightsError: the saved state has other hyper-parameters, or other groups of parameters.
    """
    saved = checkpoint.get("optimizer_states") or []
    if not saved:
        return
    groups = saved[0].get("param_groups", [])
    ours = [len(group["params"]) for group in optimizer.param_groups]
    theirs = [len(group.get("params", [])) for group in groups]
    fix = "resume with that run's config.yaml, or start a new run with --model.weights"
    if ours != theirs:
        raise WeightsError(
            f"--ckpt {path} holds optimizer state for parameter groups of {theirs} tensors, this run trains {ours} "
            f"(another freeze_at or architecture); {fix} {path}"
        )
    wanted = set(optimizer.param_groups[0]) - {"params"}
    missing = sorted(wanted - set(groups[0])) if groups else []
    if missing:
        raise WeightsError(
            f"--ckpt {path} was trained with another optimizer than {type(optimizer).__name__} (its state lacks "
            f"{', '.join(missing)}); {fix} {path}"
        )
