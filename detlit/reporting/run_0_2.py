"""Reading a run written by detlit 0.2, which kept no record of its own: the fallback for such runs only.

A 0.2 run folder has no ``run.json`` or ``metrics.jsonl``. What the report needs of it is spread
over the files of its logger and its log: the metrics in TensorBoard's event files, the
hyper-parameters in the logger's ``hparams.yaml`` (and a Python repr in ``run.log``), the command,
the versions and the time stamps in ``run.log``'s lines. This module reads them as 0.2's report
did; runs that keep their records are read from those (:mod:`detlit.reporting.run_reader`).
A resumed 0.2 run's earlier steps are read here too (``earlier_metrics`` in its record).
"""

from __future__ import annotations

import ast
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from detlit.common.run_folder import RunFolder, Series

log = logging.getLogger(__name__)

TIMING = "first to last line of run.log"
"""Where a 0.2 run's start and end come from."""
VERSIONS = "run.log"
"""Where a 0.2 run's versions come from."""
LOG_LINE = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}),(\d{3}) (\w+) ([\w.]+): (.*)$")


@dataclass
class LogInfo:
    """What ``run.log`` records: first and last time stamps, the command, the environment."""

    started: datetime | None = None
    ended: datetime | None = None
    command: str | None = None
    environment: dict[str, str] = field(default_factory=dict)
    model_hparams: dict[str, Any] = field(default_factory=dict)


def parse_run_log(text: str) -> LogInfo:
    """Time stamps, command, ``environment:`` block and model hyper-parameters of a ``run.log``."""
    info = LogInfo()
    in_environment = False
    for line in text.splitlines():
        match = LOG_LINE.match(line)
        if match is None:
            if in_environment and line.strip():
                key, *value = re.split(r"\s{2,}", line.strip(), maxsplit=1)
                info.environment[key] = value[0] if value else ""
            continue
        stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")
        info.started = info.started or stamp
        info.ended = stamp
        message = match.group(5)
        in_environment = message == "environment:"
        if message.startswith("command: ") and info.command is None:
            info.command = message[len("command: ") :]
        elif message.startswith("model hyper-parameters: ") and not info.model_hparams:
            try:
                parsed = ast.literal_eval(message[len("model hyper-parameters: ") :])
            except (ValueError, SyntaxError):
                parsed = None  # a value without a literal repr (a class): the hparams.yaml has them
            if isinstance(parsed, dict):
                info.model_hparams = parsed
    return info


def read_log(run: RunFolder) -> LogInfo:
    """``run.log`` read (an empty :class:`LogInfo` without one)."""
    if not run.run_log.is_file():
        return LogInfo()
    return parse_run_log(run.run_log.read_text(encoding="utf-8", errors="replace"))


def read_scalars(run: RunFolder) -> tuple[dict[str, Series], tuple[float, float] | None]:
    """Every scalar of the folder's TensorBoard event files, and the first and last wall time.

    A step logged twice (a resumed run repeats the steps after its checkpoint) keeps the later value.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not run.event_files():
        return {}, None
    accumulator = EventAccumulator(str(run.path), size_guidance={"scalars": 0})
    try:
        accumulator.Reload()
    except Exception as err:  # a damaged event file must not stop the report: it says so instead
        log.warning("cannot read the event files in %s: %s", run.path, err)
        return {}, None
    scalars: dict[str, Series] = {}
    walls: list[float] = []
    for tag in accumulator.Tags()["scalars"]:
        by_step: dict[int, float] = {}
        for event in accumulator.Scalars(tag):
            by_step[int(event.step)] = float(event.value)
            walls.append(float(event.wall_time))
        scalars[tag] = sorted(by_step.items())
    return scalars, ((min(walls), max(walls)) if walls else None)


def steps_and_epochs(scalars: dict[str, Series]) -> tuple[int | None, int | None]:
    """Optimizer steps (the last training step logged, plus one) and epochs (the last ``epoch`` value,
    plus one), as far as the event files tell."""
    steps = max((series[-1][0] for tag, series in scalars.items() if tag.startswith("train/") and series), default=None)
    epochs = scalars.get("epoch")
    return (
        None if steps is None else steps + 1,
        int(max(value for _, value in epochs)) + 1 if epochs else None,
    )
