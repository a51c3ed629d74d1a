"""The trainer's, the checkpoint callbacks' and the optimizer's settings, checked before a run starts.

Lightning and torch check some of these late (a negative learning rate at the first
``configure_optimizers``, ``accumulate_grad_batches: 0`` as a division by zero) and some never (a
negative clipping value); detlit checks every setting its users set against the range where it
means something (:data:`TRAINER`, :data:`CHECKPOINT`), before any class is built or any file is
written, and ends a value outside it in one sentence naming the setting
(:mod:`detlit.common.ranges`).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

import torch

from detlit.common import ranges
from detlit.errors import ConfigError

log = logging.getLogger(__name__)

DURATION = re.compile(r"(\d+):(\d\d):(\d\d):(\d\d)")  # Lightning's DD:HH:MM:SS (lightning/pytorch/callbacks/timer.py)


@dataclass(frozen=True)
class Rule:
    """The range of one setting.

    Attributes:
        kind: ``whole`` (a whole number), ``seed`` (true, false or a 32-bit seed), ``number`` (a
            finite number), ``batches`` (a fraction
            of the batches from 0 to 1, or a whole number of them), ``interval`` (``batches``
            above 0, or a duration) or ``duration`` (``DD:HH:MM:SS``, a mapping of days, hours,
            minutes and seconds, or a timedelta).
        low: the smallest value that means something (whole numbers and numbers).
        fix: what to give instead, ending the sentence.
    """

    kind: str
    low: float | None
    fix: str


TRAINER = {
    "max_epochs": Rule("whole", -1, "use 1 or more epochs, or -1 for no limit"),
    "min_epochs": Rule("whole", 0, "use 0 or more epochs, or null"),
    "max_steps": Rule("whole", -1, "use 1 or more optimizer steps, or -1 for no limit"),
    "min_steps": Rule("whole", 0, "use 0 or more optimizer steps, or null"),
    "accumulate_grad_batches": Rule("whole", 1, "use 1 (no accumulation) or more batches per optimizer step"),
    "gradient_clip_val": Rule("number", 0, "use a threshold above 0, or 0 or null for no clipping"),
    "check_val_every_n_epoch": Rule("whole", 1, "use 1 or more epochs between validations, or null"),
    "val_check_interval": Rule(
        "interval", None, "use a fraction of an epoch above 0 and at most 1.0, a whole number of batches, or a duration"
    ),
    "limit_train_batches": Rule("batches", None, "use a fraction from 0.0 to 1.0 or a whole number of batches"),
    "limit_val_batches": Rule("batches", None, "use a fraction from 0.0 to 1.0 or a whole number of batches"),
    "limit_test_batches": Rule("batches", None, "use a fraction from 0.0 to 1.0 or a whole number of batches"),
    "limit_predict_batches": Rule("batches", None, "use a fraction from 0.0 to 1.0 or a whole number of batches"),
    "overfit_batches": Rule("batches", None, "use a fraction from 0.0 to 1.0 or a whole number of batches"),
    "log_every_n_steps": Rule("whole", 1, "use 1 or more optimizer steps between logged values, or null"),
    "num_sanity_val_steps": Rule("whole", -1, "use 0 or more batches, or -1 for the whole validation set"),
    "max_time": Rule("duration", None, "give DD:HH:MM:SS (e.g. 00:12:00:00), or null for no limit"),
}
"""The trainer's settings a detlit user sets, and their ranges (null: Lightning's default)."""

CHECKPOINT = {
    "save_top_k": Rule("whole", -1, "use 0 or more checkpoints, or -1 to keep every one"),
    "every_n_train_steps": Rule("whole", 0, "use 0 (off) or more optimizer steps, or null"),
    "every_n_epochs": Rule("whole", 0, "use 0 (off) or more epochs, or null"),
}
"""The checkpoint callbacks' settings (``checkpoint.*``, ``last_checkpoint.*``) and their ranges."""

COMMAND = {
    "seed_everything": Rule("seed", 0, f"use true, false or a seed from 0 to {ranges.MAX_SEED}"),
    "tune_lr_steps": Rule("whole", 1, "use 1 or more steps of the learning-rate range test"),
    "progress_seconds": Rule("number", 0, "use 0 (a line every step) or more seconds between progress lines"),
}
"""The fit command's own settings with a range."""


def check_fit_settings(config: Any) -> None:
    """Every setting of :data:`COMMAND`, :data:`TRAINER` and :data:`CHECKPOINT` in a parsed fit
    config, in range.

    Args:
        config: the fit command's parsed config (a jsonargparse namespace with ``trainer``,
            ``checkpoint`` and ``last_checkpoint``; a mapping in tests).

    Raises:
        ConfigError: one sentence naming the first setting out of range.
    """
    for name, rule in COMMAND.items():
        check(name, config.get(name) if isinstance(config, dict) else getattr(config, name, None), rule)
    trainer = _fields(config, "trainer")
    for name, rule in TRAINER.items():
        check(f"trainer.{name}", trainer.get(name), rule)
    for section in ("checkpoint", "last_checkpoint"):
        fields = _fields(config, section)
        for name, rule in CHECKPOINT.items():
            check(f"{section}.{name}", fields.get(name), rule)
    _check_order(trainer, "min_epochs", "max_epochs", "epochs")
    _check_order(trainer, "min_steps", "max_steps", "optimizer steps")


HALF_ON_CUDA = ("16-mixed", "16")  # fp16 automatic mixed precision: CUDA's; Lightning's "16" is its old name
CPU_PRECISION = "32-true"


def fit_precision_to_device(config: Any, cuda: bool | None = None) -> None:
    """Train a config's fp16 mixed precision in 32-bit where no CUDA GPU will run it.

    The shipped GPU config sets ``16-mixed`` with ``accelerator: auto`` so that it runs anywhere:
    on a CUDA GPU it trains in mixed precision; on the CPU Lightning would switch fp16 to bfloat16,
    which CPUs without bfloat16 units run slower than fp32, and in which detectron2's box
    arithmetic loses precision. ``bf16-mixed`` asked for by name is kept.

    Args:
        config: the fit command's parsed config (``trainer.accelerator``, ``trainer.precision``).
        cuda: whether a CUDA GPU is there (default: torch's answer).
    """
    trainer = _fields(config, "trainer")
    precision, accelerator = str(trainer.get("precision")), str(trainer.get("accelerator") or "auto")
    if precision not in HALF_ON_CUDA or accelerator not in ("auto", "cpu"):
        return
    if accelerator == "auto" and (torch.cuda.is_available() if cuda is None else cuda):
        return
    if isinstance(config, dict):
        config["trainer"]["precision"] = CPU_PRECISION
    else:
        config.trainer.precision = CPU_PRECISION
    log.info("precision %s is for CUDA GPUs and none will be used: training in %s on the CPU", precision, CPU_PRECISION)


def _fields(config: Any, section: str) -> dict[str, Any]:
    """A section of the config as a plain mapping of its top-level settings (empty when absent)."""
    node = config.get(section) if isinstance(config, dict) else getattr(config, section, None)
    if node is None:
        return {}
    return dict(node) if isinstance(node, dict) else dict(vars(node))


def check(name: str, value: Any, rule: Rule) -> None:
    """One setting against its rule; ``None`` (Lightning's default) is always fine."""
    if value is None:
        return
    if rule.kind == "seed":  # true: a random seed, false: none
        if not isinstance(value, bool):
            ranges.whole(name, value, 0, ranges.MAX_SEED, fix=rule.fix)
    elif rule.kind == "whole":
        ranges.whole(name, value, None if rule.low is None else int(rule.low), fix=rule.fix)
    elif rule.kind == "number":
        ranges.real(name, value, rule.low, fix=rule.fix)
    elif rule.kind == "duration" or (rule.kind == "interval" and isinstance(value, (str, dict, timedelta))):
        _duration(name, value, rule.fix)
    elif rule.kind in ("batches", "interval"):
        _batches(name, value, rule.fix, above_zero=rule.kind == "interval")


def _batches(name: str, value: Any, fix: str, above_zero: bool) -> None:
    """A fraction of the batches (a float from 0 to 1) or a number of them (a whole number)."""
    if isinstance(value, float):
        ranges.real(name, value, 0.0, 1.0, above=above_zero, fix=fix)
    else:
        ranges.whole(name, value, 1 if above_zero else 0, fix=fix)


def _duration(name: str, value: Any, fix: str) -> None:
    """A duration as Lightning reads it, above zero."""
    if isinstance(value, str):
        match = DURATION.fullmatch(value.strip())
        if match is None:
            raise ConfigError(f"{name} is {value!r}, not a duration; {fix}")
        days, hours, minutes, seconds = (int(part) for part in match.groups())
        value = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    elif isinstance(value, dict):
        known = {"weeks", "days", "hours", "minutes", "seconds", "milliseconds", "microseconds"}
        if not value or set(value) - known or not all(ranges.is_real(v) and v >= 0 for v in value.values()):
            raise ConfigError(f"{name} is {value!r}, not a duration; {fix}")
        value = timedelta(**value)
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise ConfigError(f"{name} is {value!r}, not a duration above zero; {fix}")


def _check_order(trainer: dict[str, Any], low: str, high: str, unit: str) -> None:
    """A minimum above its maximum (a limit, not -1) can never be met: the run would stop first."""
    least, most = trainer.get(low), trainer.get(high)
    if least is not None and most is not None and most >= 0 and least > most:
        raise ConfigError(
            f"trainer.{low} is {least}, above trainer.{high} {most}: the run stops before it; lower trainer.{low} "
            f"or raise trainer.{high} to {least} {unit} or more"
        )


# --- the optimizer ----------------------------------------------------------------------------

HINTS = {
    "lr": "a learning rate above 0 (e.g. 0.02 for SGD, 0.0001 for AdamW)",
    "weight_decay": "0 (no decay) or more, e.g. 0.0001",
    "momentum": "a momentum from 0 to 1, e.g. 0.9",
    "betas": "two numbers from 0 to below 1, e.g. [0.9, 0.999]",
    "eps": "a small number above 0, e.g. 1e-8",
}

MESSAGES = (
    (re.compile(r"learning rate"), "lr"),
    (re.compile(r"epsilon"), "eps"),
    (re.compile(r"beta parameter"), "betas"),
    (re.compile(r"Invalid (\w+) value"), ""),  # torch's "Invalid momentum value: -1.0": the word is the argument
)


def build_optimizer(factory: Callable[[Any], torch.optim.Optimizer], groups: Any) -> torch.optim.Optimizer:
    """The optimizer of ``model.optimizer`` on ``groups``, with every setting finite and in range.

    torch checks its optimizers' arguments in their constructors with a ``ValueError`` (which
    Lightning would meet only at the first ``configure_optimizers``) and never checks for NaN;
    building it once at start turns both into one sentence naming ``model.optimizer.init_args.X``.

    Raises:
        ConfigError: the optimizer refuses an argument, or an argument is NaN or infinite, or the
            learning rate is not above 0.
    """
    name = _optimizer_name(factory)
    try:
        optimizer = factory(groups)
    except (ValueError, TypeError) as err:
        reason = " ".join(str(err).split())
        key = _argument_of(reason, factory)
        hint = HINTS.get(key, "a value the optimizer accepts")
        raise ConfigError(
            f"model.optimizer.init_args.{key or '...'}: {name} refuses it ({reason}); give {hint}"
        ) from err
    for key, value in optimizer.defaults.items():
        values = value if isinstance(value, (tuple, list)) else (value,)
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if any(not math.isfinite(v) for v in numbers):
            raise ConfigError(
                f"model.optimizer.init_args.{key} is {value}; give {HINTS.get(key, 'a finite number')} "
                "(not NaN or infinity)"
            )
    lr = optimizer.defaults.get("lr")
    if isinstance(lr, (int, float)) and lr <= 0:
        raise ConfigError(f"model.optimizer.init_args.lr is {lr}: nothing would be learned; give {HINTS['lr']}")
    return optimizer


def _optimizer_name(factory: Any) -> str:
    """The optimizer class's name behind a jsonargparse factory (a ``partial`` of the class)."""
    if isinstance(factory, partial):
        target = next((arg for arg in factory.args if isinstance(arg, type)), factory.func)
        return str(getattr(target, "__name__", "the optimizer"))
    return str(getattr(factory, "__name__", "the optimizer"))


def _argument_of(reason: str, factory: Any) -> str:
    """Which argument of the optimizer torch's message is about ('' when it cannot be told)."""
    for pattern, key in MESSAGES:
        found = pattern.search(reason)
        if found:
            return key or found.group(1)
    given = factory.keywords if isinstance(factory, partial) else {}
    return next((key for key in given if key in reason), "")
