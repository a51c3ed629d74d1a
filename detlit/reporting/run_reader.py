"""What a training run left behind, read: its folder, the data it names, and an evaluation's metrics.

:func:`read_run` reads a run folder (``config.yaml``, ``run.log``, ``hparams.yaml``, the
TensorBoard event files, the checkpoints); :func:`read_split` finds, fingerprints and checks a
dataset split its config names; :func:`read_eval` reads the ``metrics.json`` of
``python -m detlit.evaluate``. A part the run folder lacks stays empty, with a note saying why.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np

from detlit.common.files import locate, sha256_file
from detlit.common.safe_yaml import load_yaml, read_text
from detlit.data.checks import Report, check_file
from detlit.data.coco import CocoDataset
from detlit.errors import ConfigError, DataError
from detlit.evaluation.cocoeval import COCO_NAMES
from detlit.evaluation.result import Evaluation, unique_names

log = logging.getLogger(__name__)

Series: TypeAlias = list[tuple[int, float]]  # (step, value), ascending steps

RUN_FILES = ("config.yaml", "run.log", "hparams.yaml")
LOG_LINE = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}),(\d{3}) (\w+) ([\w.]+): (.*)$")


# === reading the run folder ========================================================================


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


def read_scalars(folder: Path) -> tuple[dict[str, Series], tuple[float, float] | None]:
    """Every scalar of the folder's TensorBoard event files, and the first and last wall time.

    A step logged twice (a resumed run repeats the steps after its checkpoint) keeps the later value.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not any(folder.glob("events.out.tfevents.*")):
        return {}, None
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    try:
        accumulator.Reload()
    except Exception as err:  # a damaged event file must not stop the report: it says so instead
        log.warning("cannot read the event files in %s: %s", folder, err)
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
    """The files of one run folder, read."""

    folder: Path
    config: dict[str, Any]
    config_text: str | None
    config_note: str | None
    hparams: dict[str, Any]
    log: LogInfo
    scalars: dict[str, Series]
    wall_times: tuple[float, float] | None
    checkpoints: list[Path]

    @property
    def name(self) -> str:
        return f"{self.folder.parent.name}/{self.folder.name}"

    def data_setting(self, key: str) -> Any:
        """A ``data.*`` setting: config.yaml first, the saved hyper-parameters second."""
        data = self.config.get("data")
        if isinstance(data, dict) and key in data:
            return data[key]
        return self.hparams.get(key)

    def model_setting(self, key: str) -> Any:
        model = self.config.get("model")
        if isinstance(model, dict) and key in model:
            return model[key]
        return self.hparams.get(key, self.log.model_hparams.get(key))

    def series(self, tag: str) -> Series:
        return self.scalars.get(tag, [])


def check_run_folder(folder: Path) -> None:
    """Raise one sentence unless ``folder`` is a detlit run folder.

    Raises:
        ConfigError: it does not exist, or holds none of config.yaml, run.log, hparams.yaml and
            an events.out.tfevents file.
    """
    if not folder.is_dir():
        raise ConfigError(f"--run {folder} is not a folder; pass a run folder such as runs/<name>/version_<n>")
    if any((folder / name).is_file() for name in RUN_FILES) or any(folder.glob("events.out.tfevents.*")):
        return
    versions = sorted(
        (p for p in folder.glob("version_*") if p.is_dir() and p.name[8:].isdigit()), key=lambda p: int(p.name[8:])
    )
    hint = f" (it holds {len(versions)} runs: pass one of them, e.g. --run {versions[-1]})" if versions else ""
    raise ConfigError(
        f"--run {folder} is not a detlit run folder: it has no config.yaml, run.log or TensorBoard event file{hint}"
    )


def read_run(folder: Path) -> Run:
    """Read a run folder (see :func:`check_run_folder`); missing parts stay empty."""
    check_run_folder(folder)
    config, config_text, config_note = _read_yaml(folder / "config.yaml")
    hparams, _, _ = _read_yaml(folder / "hparams.yaml")
    log_path = folder / "run.log"
    log_info = (
        parse_run_log(log_path.read_text(encoding="utf-8", errors="replace")) if log_path.is_file() else LogInfo()
    )
    scalars, walls = read_scalars(folder)
    checkpoints = sorted((folder / "checkpoints").glob("*.ckpt")) if (folder / "checkpoints").is_dir() else []
    return Run(folder, config, config_text, config_note, hparams, log_info, scalars, walls, checkpoints)


def choose_checkpoint(run: Run, evaluated: Path | None = None) -> tuple[Path | None, str]:
    """The checkpoint to draw examples with, and why it was chosen."""
    if evaluated is not None and evaluated.suffix == ".ckpt" and evaluated.is_file():
        return evaluated, "the checkpoint --eval evaluated"
    best = sorted((p for p in run.checkpoints if p.name.startswith("best")), key=lambda p: p.stat().st_mtime)
    if best:
        return best[-1], "the best checkpoint"
    last = [p for p in run.checkpoints if p.name == "last.ckpt"]
    if last:
        return last[0], "the last checkpoint"
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
    note: str | None = None

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
    split.json_path = locate(json_value, anchors)
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
        confusion: (K+1, K+1) counts, rows true class, columns predicted (last: background).
        category_ids: original id of each class, when known.
    """

    source: str
    overall: dict[str, float]
    per_class: list[dict[str, Any]]
    confusion: np.ndarray | None = None
    category_ids: list[int] | None = None
    iou_threshold: float | None = None
    score_threshold: float | None = None

    @property
    def class_names(self) -> list[str]:
        return [str(row["class"]) for row in self.per_class]


PER_CLASS_KEYS = ("ap", "ap50", "precision", "recall", "f1", "threshold")
OVERALL_EXTRA = ("precision", "recall", "f1", "precision@thr", "recall@thr", "f1@thr")


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
        overall = {str(k): float_or_nan(v) for k, v in document["overall"].items()}
        rows = [
            {
                "class": str(row["class"]),
                "objects": row.get("objects"),
                **{k: float_or_nan(row.get(k)) for k in PER_CLASS_KEYS},
            }
            for row in document["per_class"]
        ]
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ConfigError(f"{path} is not a metrics.json of python -m detlit.evaluate ({err})") from err
    confusion = document.get("confusion_matrix", {}).get("counts")
    ids = document.get("category_ids")
    metrics = FinalMetrics(
        source=(
            f"{path} (python -m detlit.evaluate of {document.get('source', '?')} on {document.get('json', '?')}, "
            f"{document.get('images', '?')} images)"
        ),
        overall=overall,
        per_class=rows,
        confusion=np.asarray(confusion, dtype=np.int64) if confusion else None,
        category_ids=[int(i) for i in ids] if isinstance(ids, list) else None,
        iou_threshold=float_or_nan(document.get("iou_threshold")),
        score_threshold=float_or_nan(document.get("score_threshold")),
    )
    return metrics, document


def metrics_from_scalars(scalars: Mapping[str, Series], class_names: Sequence[str]) -> FinalMetrics | None:
    """The last validation's numbers from the event files (None without validation metrics)."""
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
    return FinalMetrics(
        source=f"the last validation in the TensorBoard event files (step {step})", overall=overall, per_class=rows
    )


def metrics_from_evaluation(evaluation: Evaluation, source: str) -> FinalMetrics:
    rows = [{k: row[k] for k in ("class", "objects", *PER_CLASS_KEYS)} for row in evaluation.per_class()]
    return FinalMetrics(
        source=source,
        overall={k: v for k, v in evaluation.scalars().items() if "/" not in k},
        per_class=rows,
        confusion=evaluation.confusion.astype(np.int64),
        iou_threshold=evaluation.iou_threshold,
        score_threshold=evaluation.score_threshold,
    )
