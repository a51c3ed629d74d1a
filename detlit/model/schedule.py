"""Learning-rate schedule: linear warm-up, then cosine, multi-step or constant, per optimizer step.

The length of the schedule is the trainer's real number of optimizer steps
(``Trainer.estimated_stepping_batches``: epochs, batches per device, devices and gradient
accumulation included), so it is never typed by hand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

Schedule = Literal["cosine", "multistep", "constant"]


def lr_factor(
    step: int,
    total_steps: int,
    warmup_steps: int = 0,
    warmup_factor: float = 0.001,
    schedule: Schedule = "cosine",
    milestones: Sequence[float] = (0.78, 0.93),
    gamma: float = 0.1,
    final_factor: float = 0.0,
) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based).

    Args:
        step: optimizer steps taken so far.
        total_steps: optimizer steps of the whole run.
        warmup_steps: steps of linear warm-up from ``warmup_factor`` to 1.
        warmup_factor: multiplier at step 0.
        schedule: decay after warm-up: ``cosine`` (to ``final_factor`` at the last step),
            ``multistep`` (x ``gamma`` at each milestone) or ``constant``.
        milestones: fractions of ``total_steps`` where ``multistep`` decays (detectron2's 3x
            schedule decays at 210k and 250k of 270k iterations: 0.78 and 0.93).
        gamma: ``multistep`` decay factor.
        final_factor: multiplier that ``cosine`` reaches at the last step.
    """
    if schedule == "cosine":
        progress = min(1.0, step / max(1, total_steps - 1))
        decay = final_factor + (1.0 - final_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule == "multistep":
        decay = gamma ** sum(step >= round(m * total_steps) for m in milestones)
    elif schedule == "constant":
        decay = 1.0
    else:
        raise ValueError(f"unknown lr schedule '{schedule}'; known: cosine, multistep, constant")
    if step < warmup_steps:
        alpha = step / warmup_steps
        decay *= warmup_factor * (1.0 - alpha) + alpha
    return decay


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int,
    warmup_factor: float,
    schedule: Schedule,
    milestones: Sequence[float],
    gamma: float,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR following :func:`lr_factor`, to be stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, total_steps, warmup_steps, warmup_factor, schedule, milestones, gamma),
    )
