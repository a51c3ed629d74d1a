"""The run folder: the one module that knows its layout, and the run's own records in it.

A training run writes one folder; its files, and who writes them:

==============================================  =========================================================
``config.yaml``                                 the command's config (``config.<what>-<stamp>.yaml`` for a
                                                resumed run or a later test of it)
``run.log``                                     the plain-text log, for people
``run.json``                                    the run's record, for programs (:data:`RECORD_VERSION`)
``metrics.jsonl``                               every value Lightning hands its loggers, one JSON object
                                                per line, appended as the run goes
``checkpoints/``                                ``last.ckpt`` and the best ones (``best-*.ckpt``)
``model_final.pth``, ``detectron2_config.yaml``  the weights and config for detectron2's own tools
``hparams.yaml``, ``events.out.tfevents.*``     what TensorBoard's (or CSV's: ``metrics.csv``) logger
                                                writes; detlit 0.2 read its metrics back from them
==============================================  =========================================================

Where the folder is (:func:`folder_of`): where Lightning puts the run's checkpoints, minus
``checkpoints/``: ``<save_dir>/<name>/version_<N>`` for TensorBoard's and CSV's loggers,
``<trainer.default_root_dir>/<experiment id>/<run id>`` for a logger without a local folder (MLflow
with a tracking server), and ``trainer.default_root_dir`` without a logger.

Everything else reads and writes these files through this module: the training callbacks, the
``--ckpt last|best`` search, the report, export, the benchmark tools. A run written by detlit 0.2
has no ``run.json`` (:meth:`RunFolder.has_record`); its readers keep the old reading for it.
Both records are read bounded: a run folder may come from someone else.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

from detlit.common.files import read_bounded
from detlit.common.outputs import write_text
from detlit.common.paths import not_a_file
from detlit.common.safe_json import parse
from detlit.errors import ConfigError

Series: TypeAlias = list[tuple[int, float]]
"""(step, value) pairs of one logged name, ascending steps."""

CONFIG = "config.yaml"
RUN_LOG = "run.log"
RECORD = "run.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
BEST_PREFIX = "best"
BEST_CHECKPOINT = "best-epoch{epoch:02d}-map{val/map:.4f}"
"""The best checkpoints' names (Lightning's ``ModelCheckpoint.filename``, ``.ckpt`` added)."""
DETECTRON2_WEIGHTS = "model_final.pth"
DETECTRON2_CONFIG = "detectron2_config.yaml"
LR_FIND = "lr_find.png"
HPARAMS = "hparams.yaml"
EVENTS = "events.out.tfevents.*"
VERSION_PREFIX = "version_"
NUMBERED_LOGGERS = ("TensorBoardLogger", "CSVLogger")
"""Loggers whose runs are ``<save_dir>/<name>/version_<N>``: the ones ``--ckpt last|best`` searches."""

RECORD_KIND = "detlit run record"
RECORD_VERSION = 1
MAX_RECORD_BYTES = 16 * 2**20
MAX_RECORD_CONTAINERS = 20_000
MAX_METRICS_BYTES = 64 * 2**20
"""A year of a run logging 100 names every 10 steps is under this; a larger file is not detlit's."""
STEP, TIME = "step", "time"
"""The two names of a metrics line that are no logged value."""


@dataclass(frozen=True)
class RunFolder:
    """One run's folder; every file of it is named here."""

    path: Path

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def run_log(self) -> Path:
        return self.path / RUN_LOG

    @property
    def record(self) -> Path:
        return self.path / RECORD

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / LAST_CHECKPOINT

    @property
    def detectron2_weights(self) -> Path:
        return self.path / DETECTRON2_WEIGHTS

    @property
    def detectron2_config(self) -> Path:
        return self.path / DETECTRON2_CONFIG

    @property
    def hparams(self) -> Path:
        return self.path / HPARAMS

    @property
    def lr_find(self) -> Path:
        """The learning-rate finder's plot (``--tune_lr``)."""
        return self.path / LR_FIND

    @property
    def name(self) -> str:
        """``<name>/<version>``, as the report titles the run."""
        return f"{self.path.parent.name}/{self.path.name}"

    @property
    def version(self) -> int | None:
        return version_number(self.path)

    def event_files(self) -> list[Path]:
        return sorted(self.path.glob(EVENTS))

    def checkpoint_files(self) -> list[Path]:
        return sorted(self.checkpoints.glob("*.ckpt")) if self.checkpoints.is_dir() else []

    def best_checkpoints(self) -> list[Path]:
        """The best checkpoints, oldest first."""
        best = [path for path in self.checkpoint_files() if path.name.startswith(BEST_PREFIX)]
        return sorted(best, key=lambda path: path.stat().st_mtime)

    def has_record(self) -> bool:
        """Whether the run keeps its own records (detlit 0.3 on); a detlit 0.2 run does not."""
        return self.record.is_file()

    def is_run(self) -> bool:
        """Whether the folder holds any file a run writes at its start."""
        named = (self.record, self.config, self.run_log, self.hparams)
        return any(path.is_file() for path in named) or bool(self.event_files())

    def holds_files(self) -> bool:
        return self.path.is_dir() and any(self.path.iterdir())

    def relative(self, path: str | Path | None) -> str | None:
        """``path`` relative to the folder when it lies inside it (the record moves with the folder)."""
        if path is None or str(path) == "":
            return None
        try:
            return str(Path(path).resolve().relative_to(self.path.resolve()))
        except ValueError:
            return str(path)

    def resolve(self, value: Any) -> Path | None:
        """A path the record holds: relative to the folder, or as written."""
        if not isinstance(value, str) or not value:
            return None
        path = Path(value)
        return path if path.is_absolute() else self.path / path

    @staticmethod
    def config_name(what: str, stamp: str) -> str:
        """The config file of a later command in the folder (a resumed run, a test)."""
        return f"config.{what}-{stamp}.yaml"


# === where runs are ===============================================================================


def version_name(version: int | str) -> str:
    """A logger's version as its folder name: ``version_<N>`` for a number, a string as it is."""
    return version if isinstance(version, str) else f"{VERSION_PREFIX}{version}"


def version_number(folder: Path) -> int | None:
    """N of a ``version_<N>`` folder; None for any other name."""
    tail = folder.name[len(VERSION_PREFIX) :]
    return int(tail) if folder.name.startswith(VERSION_PREFIX) and tail.isdigit() else None


def runs_in(folder: Path) -> list[RunFolder]:
    """The ``version_<N>`` runs in ``folder``, by N."""
    numbered = [(version_number(path), path) for path in folder.glob(f"{VERSION_PREFIX}*") if path.is_dir()]
    return [RunFolder(path) for number, path in sorted((n, p) for n, p in numbered if n is not None)]


def numbered_runs(logger_class: str, save_dir: Any, name: Any) -> Path | None:
    """The folder of a logger's ``version_<N>`` runs from its config (class path and init arguments);
    None for a logger that names its runs otherwise (MLflow: by run id)."""
    if not any(kind in logger_class for kind in NUMBERED_LOGGERS):
        return None
    return Path(str(save_dir)) / str(name or "")


def folder_of(loggers: Sequence[Any], default_root_dir: str | Path) -> Path:
    """The folder a run writes into: where Lightning puts its checkpoints, without ``checkpoints/``.

    Lightning's own rule (``ModelCheckpoint``): the first logger's ``save_dir`` (or, for a logger
    without a local folder such as MLflow's with a tracking server, ``trainer.default_root_dir``),
    its ``name`` and its ``version``; ``trainer.default_root_dir`` without a logger. The rule asks
    ``name`` and ``version`` of the logger, which an MLflow logger answers by starting its run.
    """
    if not loggers:
        return Path(default_root_dir)
    logger = loggers[0]
    save_dir = logger.save_dir if logger.save_dir is not None else default_root_dir
    return Path(os.path.join(save_dir, str(logger.name), version_name(logger.version)))


def refuse_reused(runs: Path, version: int | str | None) -> None:
    """Raise one sentence when a version named by the config is a run folder that holds a run."""
    if version is None or version == "":
        return
    folder = RunFolder(runs / version_name(version))
    if folder.holds_files():
        raise ConfigError(
            f"{folder.path} already holds a run; leave trainer.logger.init_args.version unset for a new version_N, "
            "or continue that run with --ckpt last"
        )


def find_checkpoint(ckpt: str, runs: Path) -> tuple[Path, int | None]:
    """The checkpoint ``--ckpt`` names and the run version under ``runs`` it belongs to (None: none).

    ``last`` means the ``last.ckpt`` of the newest ``version_N`` under ``runs`` that has one;
    ``best`` the newest best checkpoint of the newest run that has one.

    Raises:
        ConfigError: no such checkpoint; a folder, a missing file or a special file.
    """
    if ckpt in ("last", "best"):
        found = []
        for run in runs_in(runs):
            files = [run.last_checkpoint] if ckpt == "last" else run.best_checkpoints()
            found += [(run.version, path.stat().st_mtime, path) for path in files if path.is_file()]
        if not found:
            pattern = LAST_CHECKPOINT if ckpt == "last" else f"{BEST_PREFIX}*.ckpt"
            raise ConfigError(
                f"--ckpt {ckpt}: no {runs}/{VERSION_PREFIX}*/{CHECKPOINTS}/{pattern}; pass a .ckpt file instead"
            )
        checkpoint = max(found, key=lambda item: (item[0] or -1, item[1]))[2]
    else:
        checkpoint = Path(ckpt)
        if checkpoint.is_dir():
            raise ConfigError(f"--ckpt {ckpt} is a folder; pass a .ckpt file, last or best")
        problem = not_a_file(checkpoint)
        if problem is not None:
            raise ConfigError(f"--ckpt {ckpt} {problem}; pass a .ckpt file, last or best")
    owner = run_of_checkpoint(checkpoint)
    same_runs = owner is not None and owner.path.parent.resolve() == runs.resolve()
    return checkpoint, owner.version if owner is not None and same_runs else None


def run_of_checkpoint(checkpoint: Path) -> RunFolder | None:
    """The run folder a checkpoint was written into; None for a checkpoint kept elsewhere."""
    if checkpoint.parent.name != CHECKPOINTS:
        return None
    return RunFolder(checkpoint.parent.parent)


# === the record: run.json ============================================================================


def plain(value: Any) -> Any:
    """``value`` as plain JSON data: mappings, lists, strings, finite numbers, booleans and null.

    Paths and other objects become their text, classes and functions their import path, numpy and
    torch scalars numbers, and NaN or infinity null (JSON has neither).
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(item) for item in value]
    if isinstance(value, type) or (callable(value) and hasattr(value, "__qualname__")):
        return f"{getattr(value, '__module__', '')}.{value.__qualname__}".lstrip(".")
    item = getattr(value, "item", None)  # numpy and torch scalars
    if callable(item) and getattr(value, "ndim", None) == 0:
        return plain(item())
    return str(value)


def write_record(folder: RunFolder, record: Mapping[str, Any]) -> None:
    """Replace ``run.json`` with ``record`` atomically (a reader sees the old record or the new one)."""
    document = {"record": RECORD_KIND, "version": RECORD_VERSION, **plain(record)}
    write_text(folder.record, json.dumps(document, indent=1, allow_nan=False) + "\n")


def read_record(folder: RunFolder) -> dict[str, Any]:
    """The run's record, read bounded.

    Raises:
        ConfigError: ``run.json`` is missing, not a regular file, larger than :data:`MAX_RECORD_BYTES`,
            unreadable, nested deeper or wider than a record is, not JSON, or not a detlit run record.
    """
    path = folder.record
    data = read_bounded(path, MAX_RECORD_BYTES, ConfigError, _not_detlits("run record"))
    try:
        document = parse(data, MAX_RECORD_CONTAINERS)
    except ValueError as err:
        raise ConfigError(f"{path} is not a detlit run record ({err}); remove it or train the run again") from err
    if not isinstance(document, dict) or document.get("record") != RECORD_KIND:
        raise ConfigError(f'{path} is not a detlit run record (no "record": "{RECORD_KIND}"); remove it')
    return document


def recorded_data(checkpoint: Path, split: str) -> dict[str, Any]:
    """What the record of a checkpoint's run says of a data split (``json`` as configured, its ``path``
    and ``sha256`` when training started); empty for a checkpoint outside a run folder, or a run
    without a readable record."""
    run = run_of_checkpoint(checkpoint)
    if run is None or not run.has_record():
        return {}
    try:
        data = read_record(run).get("data")
    except ConfigError:
        return {}
    entry = data.get(split) if isinstance(data, dict) else None
    return entry if isinstance(entry, dict) else {}


def _not_detlits(what: str) -> str:
    """The fix for a record file that is not the one detlit writes (a folder, a pipe, too large)."""
    return f"a run folder holds the {what} detlit writes: remove this one or train the run again"


# === the metrics: metrics.jsonl ======================================================================


def append_metrics(folder: RunFolder, step: int, values: Mapping[str, Any], time: float) -> None:
    """Append one line to ``metrics.jsonl``: the values logged at ``step``; NaN and infinities as the
    strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` (strict JSON has no such numbers; Python's
    ``float`` reads these names).

    One short append per call: an interrupted run leaves every line before the last whole, and
    the reader skips a last line cut short.
    """
    row = {STEP: int(step), TIME: round(float(time), 3), **{str(k): _number(v) for k, v in values.items()}}
    folder.path.mkdir(parents=True, exist_ok=True)
    with folder.metrics.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, allow_nan=False) + "\n")


NON_FINITE = ("NaN", "Infinity", "-Infinity")


def _number(value: Any) -> float | str | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if math.isnan(number):
        return "NaN"
    return number if math.isfinite(number) else ("Infinity" if number > 0 else "-Infinity")


@dataclass
class Metrics:
    """What ``metrics.jsonl`` holds, by name: each name's (step, value) series, a step logged twice
    (a resumed run repeats the steps after its checkpoint) keeping its later value; the first and
    last time a line was written; and the lines that could not be read."""

    series: dict[str, Series]
    times: tuple[float, float] | None
    unreadable: int = 0


def read_metrics(folder: RunFolder) -> Metrics:
    """``metrics.jsonl``, read bounded (at most :data:`MAX_METRICS_BYTES`, one flat object per line);
    an empty :class:`Metrics` without the file.

    Raises:
        ConfigError: the file is not a regular file, larger than :data:`MAX_METRICS_BYTES` or unreadable.
    """
    if not folder.metrics.exists():
        return Metrics({}, None)
    data = read_bounded(folder.metrics, MAX_METRICS_BYTES, ConfigError, _not_detlits("metrics file"))
    by_name: dict[str, dict[int, float]] = {}
    times: list[float] = []
    unreadable = 0
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            row = parse(line, max_containers=1)
            step = int(row[STEP])
        except (ValueError, TypeError, KeyError):
            unreadable += 1  # a line cut short by an interrupted run, or not detlit's
            continue
        if not isinstance(row, dict):
            unreadable += 1
            continue
        if isinstance(row.get(TIME), (int, float)):
            times.append(float(row[TIME]))
        for name, value in row.items():
            if name in (STEP, TIME) or not (value is None or value in NON_FINITE or isinstance(value, (int, float))):
                continue
            by_name.setdefault(name, {})[step] = math.nan if value is None else float(value)
    series = {name: sorted(points.items()) for name, points in by_name.items()}
    return Metrics(series, (min(times), max(times)) if times else None, unreadable)
