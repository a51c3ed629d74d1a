"""What a training run left behind, read: its records, the data it names, and an evaluation's metrics.

:func:`read_run` reads a run folder through :mod:`detlit.common.run_folder`: the run's record
(``run.json``: command, versions, hyper-parameters, schedule, why it stopped) and its metrics
(``metrics.jsonl``), whatever logger the run had; for a run written by detlit 0.2, which has no
record, the old reading (:mod:`detlit.reporting.run_0_2`: ``run.log``, ``hparams.yaml``, the
TensorBoard event files). :func:`read_split` finds, fingerprints and checks a dataset split the
run names; :func:`read_eval` reads the ``metrics.json`` of ``python -m detlit.evaluate``. A part
the run folder lacks stays empty, with a note saying why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from detlit.common.files import locate, sha256_file
from detlit.common.run_folder import (
    CONFIG,
    RECORD,
    RUN_LOG,
    RunFolder,
    Series,
    read_metrics,
    read_record,
    runs_in,
)
from detlit.common.safe_yaml import load_yaml, read_text
from detlit.data.checks import Report, check_file
from detlit.data.coco import CocoDataset
from detlit.errors import ConfigError, DataError
from detlit.evaluation.cocoeval import COCO_NAMES
from detlit.evaluation.error_breakdown import ErrorBreakdown
from detlit.evaluation.evaluation import LOGGED_PER_CLASS, OVERALL, Evaluation, unique_names
from detlit.reporting import run_0_2

log = logging.getLogger(__name__)

__all__ = ["Series", "locate"]  # re-exported: the report's modules name them from here

TENSORBOARD = "the TensorBoard event files"


# === reading the run folder ========================================================================


def _read_yaml(path: Path) -> tuple[dict[str, Any], str | None, str | None]:
    """(parsed mapping, text, note): a missing or unreadable file gives an empty mapping and a note."""
    if not path.is_file():
        return {}, None, f"{path.name} is missing"
    try:
        text = read_text(path, path.name)
    except ConfigError as err:  # too large, or not UTF-8: not what detlit wrote
        return {}, None, str(err)
    try:
        parsed = load_yaml(text, path.name)
    except ConfigError as err:  # not plain, bounded YAML: shown as text, never built
        return {}, text, str(err)
    return (parsed if isinstance(parsed, dict) else {}), text, None


@dataclass
class Run:
    """One run folder, read: from its record, or from a detlit 0.2 run's files.

    Attributes:
        record: ``run.json`` as read (empty for a 0.2 run, or a record that could not be read).
        hparams: the model's and the data's hyper-parameters.
        started, ended: when the run started and ended (None: unknown).
        timing: where ``started`` and ``ended`` come from, for the report's row.
        environment: the versions and hardware the run recorded (empty: none).
        scalars: every logged series, by name.
        steps, epochs: optimizer steps and epochs done (None: unknown).
        metrics_source, versions_source: where the metrics and versions were read, for the report's text.
        keeps_records: whether the run keeps its own records (detlit 0.3 on); False for a detlit 0.2 run.
        notes: what could not be read, one sentence each.
    """

    folder: Path
    config: dict[str, Any]
    config_text: str | None
    config_note: str | None
    record: dict[str, Any] = field(default_factory=dict)
    hparams: dict[str, Any] = field(default_factory=dict)
    started: datetime | None = None
    ended: datetime | None = None
    timing: str = ""
    command: str | None = None
    environment: dict[str, str] = field(default_factory=dict)
    scalars: dict[str, Series] = field(default_factory=dict)
    wall_times: tuple[float, float] | None = None
    steps: int | None = None
    epochs: int | None = None
    checkpoints: list[Path] = field(default_factory=list)
    metrics_source: str = TENSORBOARD
    versions_source: str = run_0_2.VERSIONS
    keeps_records: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return RunFolder(self.folder).name

    def data_setting(self, key: str) -> Any:
        """A ``data.*`` setting: config.yaml first, the recorded hyper-parameters second."""
        data = self.config.get("data")
        if isinstance(data, dict) and key in data:
            return data[key]
        return self.hparams.get(key)

    def model_setting(self, key: str) -> Any:
        model = self.config.get("model")
        if isinstance(model, dict) and key in model:
            return model[key]
        return self.hparams.get(key)

    def series(self, tag: str) -> Series:
        return self.scalars.get(tag, [])

    def recorded_data(self, split: str) -> dict[str, Any]:
        """What the record says of a data split: the json as configured, where it was, its sha256."""
        data = self.record.get("data")
        entry = data.get(split) if isinstance(data, dict) else None
        return entry if isinstance(entry, dict) else {}


def check_run_folder(folder: Path) -> None:
    """Raise one sentence unless ``folder`` is a detlit run folder.

    Raises:
        ConfigError: it does not exist, or holds none of run.json, config.yaml, run.log,
            hparams.yaml and an events.out.tfevents file.
    """
    if not folder.is_dir():
        raise ConfigError(f"--run {folder} is not a folder; pass a run folder such as runs/<name>/version_<n>")
    if RunFolder(folder).is_run():
        return
    versions = runs_in(folder)
    hint = f" (it holds {len(versions)} runs: pass one of them, e.g. --run {versions[-1].path})" if versions else ""
    raise ConfigError(
        f"--run {folder} is not a detlit run folder: it has no {RECORD}, {CONFIG}, {RUN_LOG} or TensorBoard "
        f"event file{hint}"
    )


def read_run(folder: Path) -> Run:
    """Read a run folder (see :func:`check_run_folder`); missing parts stay empty."""
    check_run_folder(folder)
    files = RunFolder(folder)
    config, config_text, config_note = _read_yaml(files.config)
    run = Run(folder, config, config_text, config_note, checkpoints=files.checkpoint_files())
    if files.has_record():
        _read_records(files, run)
    else:
        _read_0_2(files, run)
    return run


def _read_records(files: RunFolder, run: Run) -> None:
    """The run from its own records: ``run.json`` and ``metrics.jsonl``."""
    run.keeps_records = True
    try:
        run.record = read_record(files)
    except ConfigError as err:
        run.notes.append(str(err))
    record = run.record
    hparams = _mapping(record.get("hparams"))
    run.hparams = {**_mapping(hparams.get("data")), **_mapping(hparams.get("model"))}
    run.started, run.ended = _time(record.get("started")), _time(record.get("ended"))
    run.timing = f"{RECORD}: start to end"
    run.command = record.get("command") if isinstance(record.get("command"), str) else None
    run.environment = {str(k): str(v) for k, v in _mapping(record.get("versions")).items()}
    run.versions_source = RECORD
    done = _mapping(_mapping(record.get("schedule")).get("done"))
    run.steps, run.epochs = _count(done.get("steps")), _count(done.get("epochs"))
    try:
        metrics = read_metrics(files)
    except ConfigError as err:
        run.notes.append(str(err))
        return
    run.metrics_source = files.metrics.name
    run.scalars, run.wall_times = metrics.series, metrics.times
    if metrics.unreadable:
        run.notes.append(f"{metrics.unreadable} lines of {files.metrics} could not be read and were left out")
    if record.get("earlier_metrics") == "tensorboard":
        # A detlit 0.2 run resumed: its steps before the resume are in its event files.
        earlier, walls = run_0_2.read_scalars(files)
        run.scalars = {
            tag: sorted({**dict(earlier.get(tag, [])), **dict(run.scalars.get(tag, []))}.items())
            for tag in {*earlier, *run.scalars}
        }
        run.metrics_source = f"{files.metrics.name} and {TENSORBOARD} (the run began under detlit 0.2)"
        times = [*(walls or ()), *(run.wall_times or ())]
        run.wall_times = (min(times), max(times)) if times else None
    if run.ended is None and run.wall_times is not None:
        run.ended = datetime.fromtimestamp(run.wall_times[1]).astimezone()
        run.timing = f"{RECORD}'s start to the last line of {files.metrics.name} (the run did not end)"


def _read_0_2(files: RunFolder, run: Run) -> None:
    """A run written by detlit 0.2: ``run.log``, the logger's ``hparams.yaml``, the event files."""
    hparams, _, _ = _read_yaml(files.hparams)
    info = run_0_2.read_log(files)
    run.hparams = {**info.model_hparams, **hparams}
    run.started, run.ended, run.timing = info.started, info.ended, run_0_2.TIMING
    run.command, run.environment = info.command, info.environment
    run.scalars, run.wall_times = run_0_2.read_scalars(files)
    run.steps, run.epochs = run_0_2.steps_and_epochs(run.scalars)


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _count(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def choose_checkpoint(run: Run, evaluated: Path | None = None) -> tuple[Path | None, str]:
    """The checkpoint to draw examples with, and why it was chosen."""
    if evaluated is not None and evaluated.suffix == ".ckpt" and evaluated.is_file():
        return evaluated, "the checkpoint --eval evaluated"
    files = RunFolder(run.folder)
    recorded = files.resolve(_mapping(_mapping(run.record.get("checkpoints")).get("best")).get("path"))
    if recorded is not None and recorded.is_file():
        return recorded, "the best checkpoint"
    best = files.best_checkpoints()
    if best:
        return best[-1], "the best checkpoint"
    if files.last_checkpoint.is_file():
        return files.last_checkpoint, "the last checkpoint"
    if run.checkpoints:
        return max(run.checkpoints, key=lambda p: p.stat().st_mtime), "the newest checkpoint"
    return None, ""


# === the dataset ===================================================================================


@dataclass
class DataSplit:
    """One dataset split named in the run's config, checked."""

    name: str
    configured_json: str | None
    json_path: Path | None = None
    image_root: Path | None = None
    report: Report | None = None
    dataset: CocoDataset | None = None
    json_sha256: str | None = None
    names_sha256: str | None = None
    recorded_sha256: str | None = None
    note: str | None = None

    @property
    def changed(self) -> bool:
        """Whether the json found now is not the one the run trained with (its recorded sha256 differs)."""
        return None not in (self.recorded_sha256, self.json_sha256) and self.recorded_sha256 != self.json_sha256

    @property
    def objects_per_category(self) -> dict[int, int]:
        """Objects (crowd regions excluded) per category id, from the check's statistics."""
        if self.report is None:
            return {}
        out = {}
        for key, count in self.report.stats.get("per_category", {}).items():
            cid, _, _ = str(key).partition(" ")
            if cid.lstrip("-").isdigit():
                out[int(cid)] = int(count)
        return out


def names_fingerprint(dataset: CocoDataset) -> str:
    """sha256 of the dataset's image file names, sorted, one per line: changes when images are added,
    removed or renamed, not when the json is merely re-written."""
    names = sorted(dataset.images.file_names())
    return hashlib.sha256("\n".join(names).encode("utf-8")).hexdigest()


def read_split(run: Run, name: str) -> DataSplit:
    """Find, fingerprint and check the ``name`` split (``train`` or ``val``) of the run's data."""
    json_value, images_value = run.data_setting(f"{name}_json"), run.data_setting(f"{name}_images")
    split = DataSplit(name, json_value)
    if not json_value:
        split.note = f"the run's config names no data.{name}_json"
        return split
    anchors = list(run.folder.resolve().parents)
    recorded = run.recorded_data(name)
    split.recorded_sha256 = recorded.get("sha256") if isinstance(recorded.get("sha256"), str) else None
    split.json_path = locate(recorded.get("path"), []) or locate(json_value, anchors)
    split.image_root = locate(images_value, anchors)
    if split.json_path is None:
        split.note = (
            f"data.{name}_json {json_value} was not found (relative to the current folder or the run's parent "
            "folders): dataset statistics and fingerprints are left out"
        )
        return split
    split.json_sha256 = sha256_file(split.json_path)
    image_root = split.image_root or Path(str(images_value or "."))
    files = split.image_root is not None
    try:
        report, split.dataset = check_file(split.json_path, image_root, files=files, decode=False, unlisted=False)
    except DataError as err:
        split.note = f"the {name} json could not be checked: {err}"
        return split
    split.report = report
    split.names_sha256 = names_fingerprint(split.dataset)
    if not files:
        split.note = f"data.{name}_images {images_value} was not found: image files were not checked"
    return split


# === metrics =====================================================================================


@dataclass
class FinalMetrics:
    """The numbers of the metrics tables and where they come from.

    Attributes:
        source: one sentence naming the source.
        overall: COCO numbers and precision / recall / F1 over all classes (NaN when unknown).
        per_class: per class: ``class``, ``objects``, ``ap``, ``ap50``, ``precision``, ``recall``,
            ``f1``, ``threshold`` (NaN when unknown).
        confusion: (K+1, K+1) counts, rows true class, columns predicted (last: background), with
            each class at its F1-optimal threshold (at the fixed one in files written before that).
        category_ids: original id of each class, when known.
        errors: the AP50 lost per error type (``metrics.json``'s ``errors``; None in files written
            before it, such as detlit 0.2's, and in logged metrics).
        evaluated_json: the ground truth an evaluation read (None: the run's own validation).
    """

    source: str
    overall: dict[str, float]
    per_class: list[dict[str, Any]]
    confusion: np.ndarray | None = None
    category_ids: list[int] | None = None
    iou_threshold: float | None = None
    score_threshold: float | None = None
    errors: ErrorBreakdown | None = None
    evaluated_json: Path | None = None  # the json an evaluation (--eval) counted the objects of

    @property
    def class_names(self) -> list[str]:
        return [str(row["class"]) for row in self.per_class]


PER_CLASS_KEYS = LOGGED_PER_CLASS
OVERALL_EXTRA = tuple(name for name in OVERALL if name not in COCO_NAMES)


def float_or_nan(value: Any) -> float:
    """A JSON or scalar value as a float; null and non-numbers are NaN."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def read_eval(eval_dir: Path) -> tuple[FinalMetrics, dict[str, Any]]:
    """The metrics of a ``python -m detlit.evaluate`` folder, and its ``metrics.json`` as read.

    Raises:
        ConfigError: the folder or its metrics.json is missing or unreadable.
    """
    path = eval_dir / "metrics.json"
    if not eval_dir.is_dir():
        raise ConfigError(f"--eval {eval_dir} is not a folder; pass the --out folder of python -m detlit.evaluate")
    if not path.is_file():
        raise ConfigError(f"--eval {eval_dir} has no metrics.json; pass the --out folder of python -m detlit.evaluate")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        evaluation = Evaluation.from_json(document)
        errors = ErrorBreakdown.from_json(document["errors"]) if "errors" in document else None
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ConfigError(f"{path} is not a metrics.json of python -m detlit.evaluate ({err})") from err
    ids = document.get("category_ids")
    source = (
        f"{path} (python -m detlit.evaluate of {document.get('source', '?')} on {document.get('json', '?')}, "
        f"{document.get('images', '?')} images)"
    )
    metrics = metrics_from_evaluation(evaluation, source)
    metrics.category_ids = [int(i) for i in ids] if isinstance(ids, list) else None
    metrics.errors = errors
    where = [eval_dir.resolve(), *eval_dir.resolve().parents]
    metrics.evaluated_json = locate(document.get("json"), where) if isinstance(document.get("json"), str) else None
    return metrics, document


def metrics_from_scalars(
    scalars: Mapping[str, Series], class_names: Sequence[str], where: str = TENSORBOARD
) -> FinalMetrics | None:
    """The last validation's numbers from a run's logged series, read from ``where`` (None without
    validation metrics)."""
    if not scalars.get("val/map"):
        return None
    step = scalars["val/map"][-1][0]

    def at_last(tag: str) -> float:
        series = scalars.get(tag, [])
        return series[-1][1] if series and series[-1][0] == step else math.nan

    overall = {name: at_last(f"val/{name}") for name in (*COCO_NAMES, *OVERALL_EXTRA)}
    names = list(class_names)
    if not names:
        # without the class names, the per-class tags name the classes
        names = sorted({tag.split("/", 2)[2] for tag in scalars if tag.startswith("val/ap/")})
    rows = []
    for name, key in zip(names, unique_names(names), strict=True):
        rows.append({"class": name, "objects": None, **{k: at_last(f"val/{k}/{key}") for k in PER_CLASS_KEYS}})
    return FinalMetrics(source=f"the last validation in {where} (step {step})", overall=overall, per_class=rows)


def metrics_from_evaluation(evaluation: Evaluation, source: str) -> FinalMetrics:
    rows = [{k: row[k] for k in ("class", "objects", *PER_CLASS_KEYS)} for row in evaluation.per_class()]
    return FinalMetrics(
        source=source,
        overall={k: v for k, v in evaluation.scalars().items() if "/" not in k},
        per_class=rows,
        # what the model confuses at the thresholds it is used with (a fixed 0.5 hides it in a young model)
        confusion=(evaluation.best_confusion if evaluation.best_confusion is not None else evaluation.confusion).astype(
            np.int64
        ),
        iou_threshold=evaluation.iou_threshold,
        score_threshold=evaluation.score_threshold,
    )
