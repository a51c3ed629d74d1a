"""``python -m detlit.report``: what one training run did and what to change, in one page that opens offline.

Examples::

    python -m detlit.report --run runs/sample/version_0
    python -m detlit.report --run runs/sample/version_0 --eval eval/sample --out reports/sample.html

Writes ``report.html`` into the run folder (or ``--out``): one file with every picture embedded as
a ``data:`` URI and its style inline, so it opens offline and makes no request; and the same
content as Markdown, ``report.md`` beside it, with its pictures as PNG files in ``report_files/``
(for ``--out NAME.html``: ``NAME.md`` and ``NAME_files/``). An existing report is never replaced
unless ``--overwrite`` is given.

Sections: run summary (duration, hardware, versions, dataset fingerprints, the config), findings
and recommendations, final metrics (``--eval``'s ``metrics.json``, else the last validation in
the TensorBoard event files), training curves, precision-recall and F1 curves with the confusion
matrix, the best and worst validation images, and the dataset statistics. Whatever the run folder
lacks (validation, a checkpoint, data that moved) is named in its section; the report is written
anyway. A folder that is not a run folder ends in one sentence and exit status 2.

Each finding comes from one small rule (``rule_*``) with its threshold in a module constant, and
names the numbers that triggered it.
"""

from __future__ import annotations

import argparse
import ast
import base64
import hashlib
import html
import io
import json
import logging
import math
import re
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeAlias

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed or wanted

import matplotlib.pyplot as plt
import numpy as np
import yaml
from PIL import Image

from detlit import plots
from detlit.cli import run_cli
from detlit.coco import CocoDataset, ImageRecord, parse_coco
from detlit.env import collect_env
from detlit.errors import ConfigError, DataError, DetlitError
from detlit.evaluate import COCO_TITLES
from detlit.metrics import COCO_NAMES, Evaluation, unique_names
from detlit.validate import Report, check_file

log = logging.getLogger("detlit.report")

Series: TypeAlias = list[tuple[int, float]]  # (step, value), ascending steps

# --- thresholds of the findings rules ------------------------------------------------------------

LOW_CLASS_AP = 0.25  # a class AP below this is low whatever the other classes reach
WEAK_CLASS_AP_RATIO = 0.7  # ... and so is one below 70% of the mean AP over classes
FEW_INSTANCES = 100  # training objects of a class: fewer than this is few
FEW_INSTANCES_RATIO = 0.5  # ... and so is fewer than half the median class
SMALL_OBJECT_SHARE = 0.3  # share of small training objects (COCO: area < 32 x 32) worth a look
SMALL_AP_RATIO = 0.7  # AP_small below 70% of the overall AP
OVERFIT_VAL_RISE = 0.1  # val/loss 10% above its lowest point while train/loss kept falling
MIN_VALIDATIONS = 3  # validations needed before a trend is read
STILL_RISING_WINDOW = 3  # the last validations a metric's trend is read over
STILL_RISING_GAIN = 0.01  # val/map gain over that window (absolute) that says "train longer" ...
STILL_RISING_LAST_GAIN = 0.005  # ... when the last validation still gained this much
DROPPED_BOXES_SHARE = 0.01  # boxes dropped by augmentation per epoch, as a share of training objects
CONFUSION_SHARE = 0.1  # share of a class's objects detected as one other class
CONFUSION_MIN_COUNT = 3  # ... and at least this many of them
SKIPPED_IMAGES = 1  # unreadable images skipped in an epoch (train) or a validation
NONFINITE_BATCHES = 1  # batches skipped for a non-finite loss
DATASET_ERRORS = 1  # errors found by the dataset check

# --- other settings --------------------------------------------------------------------------

MAX_IMAGES = 100  # validation images the model runs on for the example images
EXAMPLES = 4  # best and worst images shown, each
EXAMPLE_SIZE = 480  # pixels: drawn examples are scaled down to fit this square
PLOT_DPI = 90
RUN_FILES = ("config.yaml", "run.log", "hparams.yaml")
LOSS_PARTS = ("loss", "loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc")
IGNORED_TAGS = ("hp_metric", "epoch")
LOG_LINE = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}),(\d{3}) (\w+) ([\w.]+): (.*)$")
NO_VALUE = "-"


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
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError as err:
        return {}, text, f"{path.name} is not valid YAML ({str(err).splitlines()[0]})"
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


def locate(value: Any, anchors: Sequence[Path]) -> Path | None:
    """An existing file or folder named in a config: absolute, or relative to the current folder
    or to one of ``anchors`` (a run is often reported from elsewhere than where it was trained)."""
    if not isinstance(value, str) or not value:
        return None
    path = Path(value).expanduser()
    if path.is_absolute():
        return path if path.exists() else None
    for base in (Path.cwd(), *anchors):
        if (base / path).exists():
            return base / path
    return None


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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def names_fingerprint(raw: Mapping[str, Any]) -> str:
    """sha256 of the json's image file names, sorted, one per line: changes when images are added,
    removed or renamed, not when the json is merely re-written."""
    images = raw.get("images")
    names = sorted(str(i.get("file_name")) for i in images if isinstance(i, dict)) if isinstance(images, list) else []
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
        report, raw = check_file(split.json_path, image_root, files=files, decode=False, unlisted=False)
        split.dataset, _ = parse_coco(raw, split.json_path, image_root)
    except DataError as err:
        split.note = f"the {name} json could not be checked: {err}"
        return split
    split.report = report
    split.names_sha256 = names_fingerprint(raw)
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


def _float(value: Any) -> float:
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
        overall = {str(k): _float(v) for k, v in document["overall"].items()}
        rows = [
            {
                "class": str(row["class"]),
                "objects": row.get("objects"),
                **{k: _float(row.get(k)) for k in PER_CLASS_KEYS},
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
        iou_threshold=_float(document.get("iou_threshold")),
        score_threshold=_float(document.get("score_threshold")),
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


# === the model on validation images =============================================================


@dataclass
class ImageOutcome:
    """Predictions on one validation image, judged at the per-class score thresholds."""

    record: ImageRecord
    boxes: np.ndarray  # kept detections, XYXY original pixels
    scores: np.ndarray
    labels: np.ndarray
    gt_boxes: np.ndarray  # XYXY original pixels, crowd regions included
    gt_labels: np.ndarray
    gt_crowd: np.ndarray
    tp: int
    fp: int
    fn: int

    @property
    def errors(self) -> int:
        return self.fp + self.fn

    @property
    def f1(self) -> float:
        """2 TP / (2 TP + FP + FN); 1.0 for an image without objects where nothing was detected."""
        denominator = 2 * self.tp + self.fp + self.fn
        return 1.0 if denominator == 0 else 2 * self.tp / denominator


@dataclass
class Examples:
    """The model's outcome on (up to ``MAX_IMAGES``) validation images."""

    checkpoint: Path
    outcomes: list[ImageOutcome]
    class_names: list[str]
    thresholds: np.ndarray
    threshold_source: str
    total_images: int
    unreadable: int
    evaluation: Evaluation | None


def spread(records: Sequence[ImageRecord], count: int) -> list[ImageRecord]:
    """``count`` records evenly spaced over the list (all of them when there are fewer)."""
    if count >= len(records):
        return list(records)
    if count <= 0:
        return []
    indices = sorted({round(i) for i in np.linspace(0, len(records) - 1, count)})
    return [records[i] for i in indices]


def run_examples(
    checkpoint: Path,
    dataset: CocoDataset,
    max_images: int,
    device: str,
    thresholds: Sequence[float] | None = None,
    threshold_source: str = "",
) -> Examples:
    """Run a checkpoint on up to ``max_images`` images of ``dataset``; judge each image.

    Every detection the model keeps (detectron2's test threshold) goes into an evaluation of these
    images. An image's true and false positives and misses count the detections at or above
    ``thresholds``; by default the checkpoint's F1-optimal ones from its last validation, else
    those of this evaluation.

    Raises:
        WeightsError: the checkpoint cannot be loaded.
        DataError: an object's category is unknown to the model.
    """
    import torch

    from detlit.dataset import eval_target
    from detlit.metrics import DetectionMetrics
    from detlit.predictor import Predictor, load_image

    predictor = Predictor.from_checkpoint(checkpoint, device=device, batch_size=4)
    names = list(predictor.label_map.names)
    predictor.score_thresholds[:] = predictor.module.cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST
    metric = DetectionMetrics(names)
    metric.warn_on_many_detections = False
    records = spread(dataset.images, max_images)
    predicted: list[tuple[ImageRecord, Any, dict[str, torch.Tensor]]] = []
    unreadable = 0
    for start in range(0, len(records), predictor.batch_size):
        arrays, kept = [], []
        for record in records[start : start + predictor.batch_size]:
            try:
                arrays.append(load_image(dataset.image_root / record.file_name))
                kept.append(record)
            except DataError as err:
                unreadable += 1
                log.warning("left out of the examples: %s", err)
        for record, output in zip(kept, predictor.predict(arrays), strict=True):
            target = eval_target(record, predictor.label_map)
            prediction = {
                "boxes": torch.as_tensor(output.boxes, dtype=torch.float64),
                "scores": torch.as_tensor(output.scores, dtype=torch.float64),
                "labels": torch.as_tensor(output.labels, dtype=torch.int64),
            }
            metric.update([prediction], [target])
            predicted.append((record, output, target))
    evaluation = metric.compute() if predicted else None
    if thresholds is None:
        saved = predictor.module.score_thresholds
        if saved is not None:
            thresholds, threshold_source = saved, "the checkpoint's F1-optimal score thresholds"
        elif evaluation is not None:
            thresholds = evaluation.score_thresholds()
            threshold_source = "the F1-optimal score thresholds on these images (the checkpoint holds none)"
        else:
            thresholds = [math.inf] * len(names)
    chosen = np.asarray(thresholds, dtype=np.float64)
    outcomes = [judge(record, output, target, chosen) for record, output, target in predicted]
    return Examples(checkpoint, outcomes, names, chosen, threshold_source, len(dataset.images), unreadable, evaluation)


def judge(record: ImageRecord, prediction: Any, target: Mapping[str, Any], thresholds: np.ndarray) -> ImageOutcome:
    """One image's detections at or above their class's threshold, matched to its objects."""
    from detlit.visualize import match_predictions

    keep = prediction.scores >= thresholds[prediction.labels]
    boxes, scores, labels = prediction.boxes[keep], prediction.scores[keep], prediction.labels[keep]
    gt_boxes, gt_labels = target["boxes"].numpy(), target["labels"].numpy()
    gt_crowd = target["iscrowd"].numpy().astype(bool)
    matching = match_predictions(boxes, labels, scores, gt_boxes, gt_labels, gt_crowd)
    return ImageOutcome(
        record,
        boxes,
        scores,
        labels,
        gt_boxes,
        gt_labels,
        gt_crowd,
        tp=int(matching.true_positive.sum()),
        fp=int(matching.false_positive.sum()),
        fn=int(matching.missed.sum()),
    )


def pick_examples(outcomes: Sequence[ImageOutcome], count: int) -> tuple[list[ImageOutcome], list[ImageOutcome]]:
    """(best, worst): the ``count`` images with the most errors (FP + FN; then the lowest F1), and of
    the rest the ``count`` with the highest F1 (then the most objects found). Images with objects
    come first among the best: an empty image without detections is perfect, but shows nothing."""
    count = min(count, len(outcomes) // 2) if len(outcomes) < 2 * count else count
    worst = sorted(outcomes, key=lambda o: (-o.errors, o.f1, o.record.id))[:count]
    taken = {o.record.id for o in worst}
    rest = [o for o in outcomes if o.record.id not in taken]
    best = sorted(rest, key=lambda o: (o.tp + o.fn == 0, -o.f1, -o.tp, o.errors, o.record.id))[:count]
    return best, worst


def draw_outcome(outcome: ImageOutcome, image_root: Path, class_names: Sequence[str]) -> bytes:
    """One image with ground truth and kept predictions, coloured by outcome, as PNG bytes."""
    from detlit.predictor import load_image
    from detlit.visualize import draw_comparison

    image = load_image(image_root / outcome.record.file_name)
    # Scaled to the display size before drawing (up or down), so labels and lines read the same
    # on every example whatever the size of its image.
    height, width = image.shape[:2]
    scale = EXAMPLE_SIZE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    shown = np.asarray(Image.fromarray(image).resize(size, resample))
    drawing = draw_comparison(
        shown,
        outcome.boxes * scale,
        outcome.labels,
        outcome.scores,
        outcome.gt_boxes * scale,
        outcome.gt_labels,
        class_names,
        outcome.gt_crowd,
    )
    return png_bytes(drawing)


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


# === findings and recommendations ================================================================


@dataclass(frozen=True)
class Recommendation:
    """One finding about the run: the rule that fired, the numbers behind it, and what to do."""

    rule: str
    title: str
    evidence: str
    advice: str


NOTHING_ALARMING = (
    "No rule found anything alarming: no weak rare class, no small-object gap, no over-fitting, no metric "
    "still rising at the end, no boxes dropped by augmentation, no confused class pair, no skipped images, "
    "no dataset errors."
)


def _fmt(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else NO_VALUE


def rule_weak_rare_classes(ap: Mapping[str, float], instances: Mapping[str, int]) -> Recommendation | None:
    """Classes with a low AP and few training objects: more data for them helps most.

    Low: AP below :data:`LOW_CLASS_AP` or below :data:`WEAK_CLASS_AP_RATIO` x the mean AP. Few:
    fewer than :data:`FEW_INSTANCES` objects or fewer than :data:`FEW_INSTANCES_RATIO` x the
    median class's.
    """
    known = {name: value for name, value in ap.items() if math.isfinite(value) and name in instances}
    if not known:
        return None
    mean_ap = statistics.fmean(known.values())
    median = statistics.median(instances[name] for name in known)
    weak = [
        name
        for name, value in known.items()
        if (value < LOW_CLASS_AP or value < WEAK_CLASS_AP_RATIO * mean_ap)
        and (instances[name] < FEW_INSTANCES or instances[name] < FEW_INSTANCES_RATIO * median)
    ]
    if not weak:
        return None
    listed = "; ".join(f"'{name}': AP {known[name]:.3f} with {instances[name]} training objects" for name in weak)
    return Recommendation(
        "weak_rare_classes",
        "Classes with a low AP and few training objects",
        f"{listed} (mean AP over classes {mean_ap:.3f}, median {median:g} training objects per class).",
        "More labelled examples of these classes help most; until then, oversample the images that hold them "
        "(`data.repeat_factor_threshold`, e.g. 0.001) and check their labels with `python -m detlit.check`.",
    )


def rule_small_objects(
    box_sizes: Mapping[str, int], map_all: float, map_small: float, min_size_test: Any = None
) -> Recommendation | None:
    """Many small objects (at least :data:`SMALL_OBJECT_SHARE`) and AP_small below
    :data:`SMALL_AP_RATIO` x the overall AP: the input resolution or the anchors are too coarse."""
    total = sum(box_sizes.values())
    if total == 0 or not (math.isfinite(map_all) and math.isfinite(map_small)) or map_all <= 0:
        return None
    share = box_sizes.get("small", 0) / total
    if share < SMALL_OBJECT_SHARE or map_small >= SMALL_AP_RATIO * map_all:
        return None
    now = f", now {min_size_test}" if min_size_test is not None else ""
    return Recommendation(
        "small_objects",
        "Many small objects, found poorly",
        f"{share:.0%} of the training objects are small (area under 32 x 32 pixels) and AP_small is "
        f"{map_small:.3f} against AP {map_all:.3f} over all sizes.",
        f"Raise the input resolution (`data.min_size_train` / `data.min_size_test`{now}) or give the RPN "
        "smaller anchors (`model.overrides` `MODEL.ANCHOR_GENERATOR.SIZES`, e.g. [[16], [32], [64], [128], [256]]).",
    )


def _mean_between(series: Series, low: int, high: int) -> float:
    """Mean of the values logged at steps in (low, high]; the last value before ``high`` if none."""
    inside = [value for step, value in series if low < step <= high]
    if inside:
        return statistics.fmean(inside)
    before = [value for step, value in series if step <= high]
    return before[-1] if before else math.nan


def rule_overfitting(train_loss: Series, val_loss: Series) -> Recommendation | None:
    """val/loss at least :data:`OVERFIT_VAL_RISE` above its lowest point while train/loss kept
    falling (at least :data:`MIN_VALIDATIONS` validations): the train/val gap grows."""
    if len(val_loss) < MIN_VALIDATIONS or not train_loss:
        return None
    best = min(range(len(val_loss)), key=lambda i: val_loss[i][1])
    best_step, best_value = val_loss[best]
    last_step, last_value = val_loss[-1]
    if best == len(val_loss) - 1 or not last_value >= best_value * (1 + OVERFIT_VAL_RISE):
        return None
    before_best = val_loss[best - 1][0] if best else -1
    train_then = _mean_between(train_loss, before_best, best_step)
    train_now = _mean_between(train_loss, val_loss[-2][0], last_step)
    if not train_now < train_then:
        return None
    return Recommendation(
        "overfitting",
        "Over-fitting: the train/val loss gap grows",
        f"val/loss rose {last_value / best_value - 1:.0%} from its lowest {best_value:.3f} (step {best_step}) to "
        f"{last_value:.3f} (step {last_step}) while train/loss fell from {train_then:.3f} to {train_now:.3f}: the "
        f"gap grew from {best_value - train_then:.3f} to {last_value - train_now:.3f}.",
        "Use the best checkpoint rather than the last; add augmentation (`data.augment: default` or `strong`) or "
        "weight decay, or stop early (an `EarlyStopping` callback on `val/map`, see docs/training.md).",
    )


def rule_still_improving(val_map: Series) -> Recommendation | None:
    """val/map still rising when training stopped: over the last :data:`STILL_RISING_WINDOW`
    validations it gained at least :data:`STILL_RISING_GAIN`, at the last one at least
    :data:`STILL_RISING_LAST_GAIN` (a curve that has flattened out does not count), and it ends at its best."""
    if len(val_map) < 2:
        return None
    window = min(STILL_RISING_WINDOW, len(val_map))
    start_step, start = val_map[-window]
    before = val_map[-2][1]
    end_step, end = val_map[-1]
    best = max(value for _, value in val_map)
    if not (end - start >= STILL_RISING_GAIN and end - before >= STILL_RISING_LAST_GAIN and end >= best):
        return None
    return Recommendation(
        "still_improving",
        "Validation metrics still rising at the end",
        f"val/map rose from {start:.3f} (step {start_step}) to {end:.3f} (step {end_step}) over the last "
        f"{window} validations, {end - before:+.3f} at the last one, and is at its best at the end.",
        "Train longer (`trainer.max_epochs`), or continue from this checkpoint with a fresh schedule "
        "(`model.weights` set to it).",
    )


def rule_boxes_dropped(dropped: Series, train_objects: int | None) -> Recommendation | None:
    """Augmentation drops boxes (``train/boxes_dropped_by_aug``, a sum per epoch): at least
    :data:`DROPPED_BOXES_SHARE` of the training objects per epoch, or any when that number is unknown."""
    total = sum(value for _, value in dropped)
    if not dropped or total <= 0:
        return None
    per_epoch = total / len(dropped)
    if train_objects:
        share = per_epoch / train_objects
        if share < DROPPED_BOXES_SHARE:
            return None
        evidence = (
            f"augmentation dropped {total:g} boxes in {len(dropped)} epochs, {per_epoch:.1f} per epoch: "
            f"{share:.1%} of the {train_objects} training objects."
        )
    else:
        evidence = f"augmentation dropped {total:g} boxes in {len(dropped)} epochs ({per_epoch:.1f} per epoch)."
    return Recommendation(
        "boxes_dropped",
        "Boxes dropped by augmentation",
        evidence,
        "Crops and affine moves push objects out of the image; a milder preset (`data.augment: default`) or "
        "gentler crop settings keep them. `python -m detlit.browse --config CONFIG` shows what training sees.",
    )


def rule_confusion(class_names: Sequence[str], counts: Any) -> Recommendation | None:
    """The largest off-diagonal cell of the confusion matrix relative to its row (the true class's
    objects): at least :data:`CONFUSION_SHARE` of them and :data:`CONFUSION_MIN_COUNT` objects."""
    matrix = np.asarray(counts, dtype=np.int64)
    classes = len(class_names)
    if matrix.ndim != 2 or matrix.shape[0] < classes or matrix.shape[1] < classes or classes < 2:
        return None
    best: tuple[float, int, int, int, int] | None = None
    for row in range(classes):
        objects = int(matrix[row].sum())
        for column in range(classes):
            if column == row or objects == 0:
                continue
            count = int(matrix[row, column])
            share = count / objects
            if best is None or share > best[0]:
                best = (share, count, objects, row, column)
    if best is None:
        return None
    share, count, objects, row, column = best
    if share < CONFUSION_SHARE or count < CONFUSION_MIN_COUNT:
        return None
    return Recommendation(
        "confusion",
        f"'{class_names[row]}' mistaken for '{class_names[column]}'",
        f"{count} of the {objects} '{class_names[row]}' objects ({share:.0%}) were detected as "
        f"'{class_names[column]}' (the largest off-diagonal cell of the confusion matrix, relative to its row).",
        "Check that the two classes are labelled consistently, add examples that tell them apart, or merge them "
        "if the difference does not matter for your use.",
    )


def rule_skipped_images(train_skipped: Series, val_skipped: Series) -> Recommendation | None:
    """Unreadable images skipped: at least :data:`SKIPPED_IMAGES` in an epoch or a validation."""
    train = max((value for _, value in train_skipped), default=0.0)
    val = max((value for _, value in val_skipped), default=0.0)
    if train < SKIPPED_IMAGES and val < SKIPPED_IMAGES:
        return None
    return Recommendation(
        "skipped_images",
        "Images skipped as unreadable",
        f"up to {train:g} training images per epoch (`train/skipped_images`) and {val:g} validation images per "
        "validation (`val/skipped_images`) could not be read and were skipped.",
        "Find them with `python -m detlit.check JSON --images FOLDER` (it decodes every image); `--fix OUT.json` "
        "writes a copy without them.",
    )


def rule_nonfinite_batches(skipped: Series) -> Recommendation | None:
    """Batches skipped for a non-finite loss: at least :data:`NONFINITE_BATCHES`."""
    total = sum(value for _, value in skipped)
    if total < NONFINITE_BATCHES:
        return None
    return Recommendation(
        "nonfinite_batches",
        "Batches skipped for a non-finite loss",
        f"{total:g} batches had a NaN or infinite loss and were skipped (`train/skipped_nonfinite`).",
        "Lower the learning rate or lengthen the warm-up (`model.warmup_steps`), clip gradients "
        "(`trainer.gradient_clip_val`), and check the images the log names.",
    )


def rule_dataset_errors(errors: Mapping[str, int]) -> Recommendation | None:
    """The dataset check found errors (at least :data:`DATASET_ERRORS`), keyed ``"<split> <kind>"``."""
    total = sum(errors.values())
    if total < DATASET_ERRORS:
        return None
    listed = ", ".join(f"{key} x{count}" for key, count in sorted(errors.items()))
    return Recommendation(
        "dataset_errors",
        "Errors in the dataset",
        f"the dataset check found {total} errors: {listed}.",
        "`python -m detlit.check JSON --images FOLDER` lists them; `--fix OUT.json` writes a repaired copy.",
    )


# === training curves ==============================================================================


Line: TypeAlias = tuple[str, Series, str]  # label, series, matplotlib line style
Panel: TypeAlias = tuple[str, list[Line]]


def _finite(series: Series) -> tuple[list[int], list[float]]:
    steps = [step for step, _ in series]
    values = [value if math.isfinite(value) else math.nan for _, value in series]
    return steps, values


def plot_panels(panels: Sequence[Panel], columns: int = 3) -> bytes:
    """Small line plots against the step, one panel per group, as PNG bytes."""
    rows = math.ceil(len(panels) / columns)
    cols = min(columns, len(panels))
    figure, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 2.9 * rows), squeeze=False)
    for axis in axes.flat[len(panels) :]:
        axis.set_visible(False)
    for axis, (title, lines) in zip(axes.flat, panels, strict=False):
        for label, series, style in lines:
            steps, values = _finite(series)
            marker = "o" if len(series) <= 30 else None
            axis.plot(steps, values, style, label=label, marker=marker, markersize=3)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("step", fontsize=8)
        axis.tick_params(labelsize=8)
        axis.grid(alpha=0.3)
        if len(lines) > 1:
            axis.legend(fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=PLOT_DPI)
    plt.close(figure)
    return buffer.getvalue()


def curve_figures(scalars: Mapping[str, Series]) -> list[tuple[str, str, bytes]]:
    """(name, caption, PNG) of the training-curve figures the event files allow."""
    used: set[str] = set(IGNORED_TAGS)
    figures = []

    loss_names = [*LOSS_PARTS]
    loss_names += sorted(
        {t.split("/", 1)[1] for t in scalars if t.split("/", 1)[0] in ("train", "val") and "/loss" in t}
        - set(LOSS_PARTS)
    )
    panels: list[Panel] = []
    for part in loss_names:
        lines = [
            (f"{stage}/{part}", scalars.get(f"{stage}/{part}", []), style)
            for stage, style in (("train", "-"), ("val", "--"))
        ]
        lines = [line for line in lines if line[1]]
        used.update(line[0] for line in lines)
        if lines:
            panels.append((part, lines))
    if panels:
        figures.append(
            ("losses", "Losses: training (solid) and validation (dashed), each part on its own.", plot_panels(panels))
        )

    panels = []
    rates = [(tag, scalars[tag], "-") for tag in sorted(scalars) if tag.startswith("lr-") or tag.startswith("lr/")]
    if rates:
        panels.append(("learning rate", rates))
    if scalars.get("train/grad_norm"):
        panels.append(("gradient norm", [("train/grad_norm", scalars["train/grad_norm"], "-")]))
    for panel in panels:
        used.update(line[0] for line in panel[1])
    if panels:
        figures.append(
            ("optimisation", "Learning rate per parameter group, and the gradient norm.", plot_panels(panels, 2))
        )

    groups = (
        ("AP", ("map", "map50", "map75")),
        ("AP by object size", ("map_small", "map_medium", "map_large")),
        ("AR", ("mar1", "mar10", "mar100", "mar_small", "mar_medium", "mar_large")),
        ("precision / recall / F1", OVERALL_EXTRA),
    )
    panels = []
    for title, names in groups:
        lines = [
            (f"val/{n}", scalars[f"val/{n}"], "--" if "@thr" in n else "-") for n in names if scalars.get(f"val/{n}")
        ]
        if lines:
            panels.append((title, lines))
    for prefix, title in (("val/ap/", "AP per class"), ("val/ap50/", "AP50 per class"), ("val/f1/", "F1 per class")):
        lines = [(tag[len(prefix) :], scalars[tag], "-") for tag in sorted(scalars) if tag.startswith(prefix)]
        if lines:
            panels.append((title, lines))
            used.update(prefix + line[0] for line in lines)
    for panel in panels:
        used.update(line[0] for line in panel[1])
    if panels:
        figures.append(("validation", "Validation metrics after each validation.", plot_panels(panels)))

    rest = [tag for tag in sorted(scalars) if tag not in used and not tag.startswith(("val/threshold/", "val/ar100/"))]
    rest = [tag for tag in rest if not re.match(r"val/(precision|recall)(@thr)?/", tag)]
    if rest:
        panels = [(tag, [(tag, scalars[tag], "-")]) for tag in rest[:12]]
        figures.append(("other", "Other logged scalars.", plot_panels(panels)))
    return figures


# === the document ===============================================================================


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Text:
    """A paragraph; text in backticks is shown as code."""

    text: str


@dataclass
class Note:
    """Something the report could not show, and why."""

    text: str


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    numeric: set[int] = field(default_factory=set)  # right-aligned columns


@dataclass
class Figure:
    name: str  # file name stem, unique in the report
    png: bytes
    caption: str


@dataclass
class Gallery:
    figures: list[Figure]
    columns: int = 2


@dataclass
class Code:
    """Preformatted text, collapsed under ``summary`` when one is given."""

    text: str
    summary: str | None = None
    language: str = ""


@dataclass
class Callout:
    title: str
    text: str
    kind: str = "warn"  # "warn" or "ok"


Block: TypeAlias = Heading | Text | Note | Table | Figure | Gallery | Code | Callout


@dataclass
class Document:
    title: str
    subtitle: str
    blocks: list[Block]

    def figures(self) -> list[Figure]:
        out: list[Figure] = []
        for block in self.blocks:
            if isinstance(block, Figure):
                out.append(block)
            elif isinstance(block, Gallery):
                out.extend(block.figures)
        return out


CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: #1d2330;
  max-width: 1180px; margin: 0 auto; padding: 20px 28px 60px; line-height: 1.45; background: #fff; }
h1 { font-size: 1.7em; margin-bottom: 0.1em; }
h2 { font-size: 1.3em; border-bottom: 2px solid #dfe3ea; padding-bottom: 4px; margin-top: 2em; }
h3 { font-size: 1.05em; margin-top: 1.4em; }
.subtitle { color: #5b6577; margin-top: 0; }
nav { background: #f5f7fa; border: 1px solid #dfe3ea; border-radius: 6px; padding: 8px 14px; font-size: 0.92em; }
nav a { margin-right: 14px; color: #2456a6; text-decoration: none; white-space: nowrap; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 0.88em; }
th, td { border: 1px solid #dfe3ea; padding: 3px 9px; text-align: left; vertical-align: top; }
th { background: #f0f3f7; }
td code { word-break: break-all; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fafbfc; }
code, pre { font-family: SFMono-Regular, Menlo, Consolas, monospace; font-size: 0.88em; }
code { background: #f0f3f7; padding: 0 3px; border-radius: 3px; }
pre { background: #f5f7fa; border: 1px solid #dfe3ea; padding: 10px; overflow-x: auto; }
details summary { cursor: pointer; color: #2456a6; }
figure { margin: 10px 0 18px; }
figure img { max-width: 100%; height: auto; border: 1px solid #dfe3ea; }
figcaption { font-size: 0.85em; color: #5b6577; }
.gallery { display: grid; gap: 14px; align-items: start; }
.columns2 { grid-template-columns: repeat(2, minmax(0, 1fr)); }
.columns3 { grid-template-columns: repeat(3, minmax(0, 1fr)); }
.gallery figure { margin: 0; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 6px 10px; }
.callout { border-left: 4px solid #d9534f; background: #fdf1f0; padding: 6px 12px; margin: 10px 0; }
.callout.ok { border-left-color: #3c9a4a; background: #eef8f0; }
.callout b { display: block; }
"""


def _inline_html(text: str) -> str:
    """Escaped text; spans in backticks become code."""
    parts = text.split("`")
    return "".join(f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p) for i, p in enumerate(parts))


def _anchor(text: str, index: int) -> str:
    return f"s{index}-" + re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_html(document: Document) -> str:
    """The document as one HTML page: inline style, pictures as data URIs, no script, no links out."""
    body: list[str] = []
    toc: list[str] = []
    for index, block in enumerate(document.blocks):
        if isinstance(block, Heading):
            anchor = _anchor(block.text, index)
            if block.level == 2:
                toc.append(f'<a href="#{anchor}">{html.escape(block.text)}</a>')
            body.append(f'<h{block.level} id="{anchor}">{html.escape(block.text)}</h{block.level}>')
        elif isinstance(block, Text):
            body.append(f"<p>{_inline_html(block.text)}</p>")
        elif isinstance(block, Note):
            body.append(f'<p class="note">{_inline_html(block.text)}</p>')
        elif isinstance(block, Callout):
            kind = "callout ok" if block.kind == "ok" else "callout"
            body.append(f'<div class="{kind}"><b>{html.escape(block.title)}</b>{_inline_html(block.text)}</div>')
        elif isinstance(block, Table):
            body.append(_html_table(block))
        elif isinstance(block, Figure):
            body.append(_html_figure(block))
        elif isinstance(block, Gallery):
            figures = "".join(_html_figure(f) for f in block.figures)
            body.append(f'<div class="gallery columns{block.columns}">{figures}</div>')
        elif isinstance(block, Code):
            pre = f"<pre>{html.escape(block.text)}</pre>"
            if block.summary:
                pre = f"<details><summary>{html.escape(block.summary)}</summary>{pre}</details>"
            body.append(pre)
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            # No request may leave the page: data: images only, no scripts, no fonts, no frames.
            '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
            "style-src 'unsafe-inline'\">",
            f"<title>{html.escape(document.title)}</title>",
            f"<style>{CSS}</style>",
            "</head>",
            "<body>",
            f"<h1>{html.escape(document.title)}</h1>",
            f'<p class="subtitle">{_inline_html(document.subtitle)}</p>',
            "<nav>" + " ".join(toc) + "</nav>",
            *body,
            "</body>",
            "</html>",
            "",
        ]
    )


def _html_table(table: Table) -> str:
    def cell(tag: str, column: int, text: str) -> str:
        css = ' class="num"' if column in table.numeric else ""
        return f"<{tag}{css}>{_inline_html(text)}</{tag}>"

    head = "".join(cell("th", i, c) for i, c in enumerate(table.columns))
    rows = "".join("<tr>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>" for row in table.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _html_figure(figure: Figure) -> str:
    alt = html.escape(figure.caption, quote=True)
    return (
        f'<figure><img src="{_data_uri(figure.png)}" alt="{alt}">'
        f"<figcaption>{_inline_html(figure.caption)}</figcaption></figure>"
    )


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(document: Document, files_dir: str) -> str:
    """The document as Markdown; figures link to ``files_dir/<name>.png`` (relative)."""
    out = [f"# {document.title}", "", document.subtitle, ""]
    for block in document.blocks:
        if isinstance(block, Heading):
            out += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Text):
            out += [block.text, ""]
        elif isinstance(block, Note):
            out += [f"> **Note:** {block.text}", ""]
        elif isinstance(block, Callout):
            out += [f"- **{block.title}.** {block.text}", ""]
        elif isinstance(block, Table):
            align = ["---:" if i in block.numeric else "---" for i in range(len(block.columns))]
            out.append("| " + " | ".join(_md_cell(c) for c in block.columns) + " |")
            out.append("| " + " | ".join(align) + " |")
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
            out.append("")
        elif isinstance(block, Figure):
            out += [f"![{_md_cell(block.caption)}]({files_dir}/{block.name}.png)", "", f"*{block.caption}*", ""]
        elif isinstance(block, Gallery):
            for figure in block.figures:
                out += [f"![{_md_cell(figure.caption)}]({files_dir}/{figure.name}.png)", "", figure.caption, ""]
        elif isinstance(block, Code):
            fence = "```"
            code = [f"{fence}{block.language}", block.text.rstrip("\n"), fence]
            if block.summary:
                out += [
                    "<details>",
                    f"<summary>{html.escape(block.summary)}</summary>",
                    "",
                    *code,
                    "",
                    "</details>",
                    "",
                ]
            else:
                out += [*code, ""]
    return "\n".join(out).rstrip("\n") + "\n"


# === the sections ================================================================================


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return NO_VALUE
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    number = _float(value)
    return f"{number:.{digits}f}" if math.isfinite(number) else NO_VALUE


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours} h {minutes:02d} min {secs:02d} s" if hours else f"{minutes} min {secs:02d} s"


@dataclass
class Context:
    """Everything the sections are built from."""

    run: Run
    train: DataSplit
    val: DataSplit
    metrics: FinalMetrics | None
    eval_dir: Path | None
    examples: Examples | None
    examples_note: str | None
    class_names: list[str]
    category_ids: list[int] | None

    def objects_by_class(self, split: DataSplit) -> dict[str, int]:
        """Objects of a split per class name (matched by category id when the ids are known)."""
        per_id = split.objects_per_category
        if not per_id:
            return {}
        if self.category_ids is not None and len(self.category_ids) == len(self.class_names):
            return {name: per_id.get(cid, 0) for name, cid in zip(self.class_names, self.category_ids, strict=True)}
        names = {}
        if split.dataset is not None:
            names = {c.name: per_id.get(c.id, 0) for c in split.dataset.categories}
        return {name: names[name] for name in self.class_names if name in names}

    def per_class_metrics(self) -> FinalMetrics | None:
        """The metrics whose per-class rows the report shows: the final metrics, unless they have no
        per-class number at all (event files of older runs) and the report ran the model itself."""
        metrics = self.metrics
        has_numbers = metrics is not None and any(
            math.isfinite(_float(row.get(key))) for row in metrics.per_class for key in PER_CLASS_KEYS
        )
        if has_numbers or self.examples is None or self.examples.evaluation is None:
            return metrics
        return metrics_from_evaluation(
            self.examples.evaluation,
            f"the model run by this report on {len(self.examples.outcomes)} validation images (the event files "
            "hold no per-class numbers)",
        )


HARDWARE_KEYS = ("platform", "cpu cores", "torch threads", "cuda available", "gpus")


def _setting_text(value: Any) -> str:
    return "null" if value is None else str(value)


def summary_section(context: Context) -> list[Block]:
    run = context.run
    blocks: list[Block] = [Heading("Run summary")]
    started, ended = run.log.started, run.log.ended
    rows = [["run folder", str(run.folder)]]
    if started and ended:
        rows += [
            ["started", started.isoformat(sep=" ")],
            ["duration (first to last line of run.log)", _duration((ended - started).total_seconds())],
        ]
    elif run.wall_times:
        first, last = run.wall_times
        rows.append(["duration (TensorBoard wall times)", _duration(last - first)])
    steps = max(
        (series[-1][0] for tag, series in run.scalars.items() if tag.startswith("train/") and series), default=None
    )
    epochs = run.scalars.get("epoch")
    if steps is not None:
        rows.append(["optimizer steps", str(steps + 1)])
    if epochs:
        rows.append(["epochs", f"{int(max(v for _, v in epochs)) + 1}"])
    environment = run.log.environment or collect_env()
    rows += [[key, value] for key, value in environment.items() if key in HARDWARE_KEYS]
    trainer = run.config.get("trainer")
    trainer = trainer if isinstance(trainer, dict) else {}
    for key in ("accelerator", "devices", "strategy", "precision", "max_epochs"):
        if key in trainer:
            rows.append([f"trainer.{key}", _setting_text(trainer[key])])
    rows.append(["checkpoints", ", ".join(p.name for p in run.checkpoints) or "none"])
    if run.log.command:
        rows.append(["command", f"`{run.log.command}`"])
    blocks.append(Table(["what", "value"], rows))

    width = max((len(key) for key in environment), default=0)
    versions = "\n".join(f"{key:<{width}}  {value}" for key, value in environment.items() if key not in HARDWARE_KEYS)
    if run.log.environment:
        blocks.append(Code(versions, summary="versions (recorded in run.log)"))
    else:
        blocks.append(Code(versions, summary="versions (of this machine: run.log records none)"))
    if run.config_text is not None:
        blocks.append(Code(run.config_text, summary="config.yaml", language="yaml"))
    if run.config_note:
        blocks.append(Note(run.config_note + "; data paths come from hparams.yaml where it has them."))

    blocks.append(Heading("Dataset fingerprint", 3))
    blocks.append(
        Text(
            "sha256 of each json file, and of its image file names sorted (one per line): equal fingerprints, "
            "same data."
        )
    )
    rows = []
    for split in (context.train, context.val):
        if split.configured_json is None:
            continue
        images = str(len(split.dataset.images)) if split.dataset is not None else NO_VALUE
        rows.append(
            [
                split.name,
                str(split.configured_json),
                images,
                f"`{split.json_sha256}`" if split.json_sha256 else NO_VALUE,
                f"`{split.names_sha256}`" if split.names_sha256 else NO_VALUE,
            ]
        )
    if rows:
        blocks.append(Table(["split", "json", "images", "sha256 of the json", "sha256 of the file names"], rows, {2}))
    for split in (context.train, context.val):
        if split.note and split.json_sha256 is None:
            blocks.append(Note(split.note))
    return blocks


def recommendations(context: Context) -> list[Recommendation]:
    """Every rule on the run's numbers; the ones that fired."""
    run, metrics = context.run, context.metrics
    found: list[Recommendation | None] = []
    instances = context.objects_by_class(context.train)
    per_class = context.per_class_metrics()
    if per_class is not None and instances:
        found.append(rule_weak_rare_classes({r["class"]: _float(r["ap"]) for r in per_class.per_class}, instances))
    if metrics is not None and context.train.report is not None:
        sizes = context.train.report.stats.get("box_sizes", {})
        overall = metrics.overall
        found.append(
            rule_small_objects(
                sizes,
                overall.get("map", math.nan),
                overall.get("map_small", math.nan),
                run.data_setting("min_size_test"),
            )
        )
    found.append(rule_overfitting(run.series("train/loss"), run.series("val/loss")))
    found.append(rule_still_improving(run.series("val/map")))
    train_objects = None
    if context.train.report is not None:
        train_objects = int(sum(context.train.report.stats.get("per_category", {}).values())) or None
    found.append(rule_boxes_dropped(run.series("train/boxes_dropped_by_aug"), train_objects))
    if metrics is not None and metrics.confusion is not None:
        found.append(rule_confusion(metrics.class_names, metrics.confusion))
    elif context.examples is not None and context.examples.evaluation is not None:
        found.append(rule_confusion(context.examples.class_names, context.examples.evaluation.confusion))
    found.append(rule_skipped_images(run.series("train/skipped_images"), run.series("val/skipped_images")))
    found.append(rule_nonfinite_batches(run.series("train/skipped_nonfinite")))
    errors: Counter[str] = Counter()
    for split in (context.train, context.val):
        if split.report is not None:
            errors.update(f"{split.name} {f.kind}" for f in split.report.errors)
    found.append(rule_dataset_errors(errors))
    return [r for r in found if r is not None]


def findings_section(context: Context) -> list[Block]:
    blocks: list[Block] = [Heading("Findings and recommendations")]
    found = recommendations(context)
    if not found:
        blocks.append(Callout("Nothing alarming", NOTHING_ALARMING, "ok"))
    for item in found:
        blocks.append(Callout(item.title, f"{item.evidence} {item.advice}"))
    missing = []
    if context.metrics is None:
        missing.append("final metrics")
    if context.train.report is None:
        missing.append("training-set statistics")
    if missing:
        blocks.append(Note(f"Rules that need the {' and '.join(missing)} could not run: see those sections."))
    return blocks


def metrics_section(context: Context) -> list[Block]:
    blocks: list[Block] = [Heading("Final metrics")]
    metrics = context.metrics
    if metrics is None:
        blocks.append(
            Note(
                "No validation metrics: the event files hold no `val/map` (validation was off or never ran), no "
                "--eval folder was given, and the model could not be run on validation images. "
                "`python -m detlit.evaluate --ckpt CHECKPOINT --json VAL.json --images VAL/ --out EVAL` and "
                "`--eval EVAL` fill this section."
            )
        )
        return blocks
    blocks.append(Text(f"Source: {metrics.source}."))
    rows = [[COCO_TITLES.get(k, k), _num(metrics.overall.get(k))] for k in COCO_NAMES]
    titles = {"precision": "precision", "recall": "recall", "f1": "F1"}
    threshold = metrics.score_threshold if metrics.score_threshold is not None else 0.5
    # Runs logged before these numbers existed have none of them: their rows are left out.
    if any(math.isfinite(_float(metrics.overall.get(name))) for name in OVERALL_EXTRA):
        for name in ("precision", "recall", "f1"):
            rows.append([f"{titles[name]} (each class at its F1-optimal threshold)", _num(metrics.overall.get(name))])
        for name in ("precision", "recall", "f1"):
            rows.append([f"{titles[name]} at score {threshold:g}", _num(metrics.overall.get(f"{name}@thr"))])
    blocks.append(Table(["metric", "value"], rows, {1}))

    blocks.append(Heading("Per class", 3))
    per_class = context.per_class_metrics() or metrics
    if per_class is not metrics:
        blocks.append(Text(f"Source: {per_class.source}."))
    instances = context.objects_by_class(context.train)
    val_objects = context.objects_by_class(context.val)
    rows = []
    for row in per_class.per_class:
        name = str(row["class"])
        objects = row.get("objects")
        rows.append(
            [
                name,
                _num(instances.get(name)),
                _num(objects if objects is not None else val_objects.get(name)),
                *(_num(row.get(k)) for k in ("ap", "ap50", "precision", "recall", "f1", "threshold")),
            ]
        )
    columns = ["class", "training objects", "validation objects", "AP", "AP50", "precision", "recall", "F1"]
    blocks.append(Table([*columns, "F1-optimal threshold"], rows, set(range(1, 9))))
    blocks.append(
        Text(
            "AP is COCO's AP at IoU .50:.95; precision, recall and F1 are at IoU 0.5 with each class at the score "
            "threshold that maximises its F1 (`-`: not logged, or no detection ever matched)."
        )
    )
    return blocks


def curves_section(context: Context) -> list[Block]:
    blocks: list[Block] = [Heading("Training curves")]
    if not context.run.scalars:
        blocks.append(Note("The run folder has no readable TensorBoard event file: no curves."))
        return blocks
    for name, caption, png in curve_figures(context.run.scalars):
        blocks.append(Figure(f"curves_{name}", png, caption))
    if not context.run.series("val/map"):
        blocks.append(Note("No validation scalars in the event files: validation was off or never finished."))
    return blocks


EVAL_PICTURES = (
    ("pr_curves", "Precision against recall per class (IoU 0.5)."),
    ("f1_curves", "F1 against the score threshold per class; dotted: each class's F1-optimal threshold."),
    (
        "confusion_matrix",
        "Confusion matrix: rows true class (last: false detections), columns predicted (last: missed).",
    ),
)


def evaluation_pictures_section(context: Context) -> list[Block]:
    blocks: list[Block] = [Heading("Precision-recall, F1 and confusion")]
    if context.eval_dir is not None:
        blocks.append(Text(f"From {context.eval_dir}."))
        gallery = Gallery([], columns=3)
        blocks.append(gallery)
        for name, caption in EVAL_PICTURES:
            path = context.eval_dir / f"{name}.png"
            if path.is_file():
                gallery.figures.append(Figure(f"eval_{name}", path.read_bytes(), caption))
            elif name == "confusion_matrix" and context.metrics is not None and context.metrics.confusion is not None:
                blocks.append(Note(f"{path.name} is missing; the counts from metrics.json:"))
                blocks.append(_confusion_table(context.metrics.class_names, context.metrics.confusion))
            else:
                blocks.append(Note(f"{path} is missing."))
        return blocks
    examples = context.examples
    if examples is None or examples.evaluation is None:
        blocks.append(
            Note(
                "Not available: no --eval folder, and the model was not run on validation images "
                f"({context.examples_note or 'see the example images section'})."
            )
        )
        return blocks
    blocks.append(
        Text(
            f"On the {len(examples.outcomes)} validation images the report ran the model on (of "
            f"{examples.total_images}); `python -m detlit.evaluate` and `--eval` give them for the whole set."
        )
    )
    gallery = Gallery([], columns=3)
    with tempfile.TemporaryDirectory() as folder:
        for name, caption in EVAL_PICTURES:
            draw: Callable[[Evaluation, Path], Path] = getattr(plots, name)
            path = draw(examples.evaluation, Path(folder) / f"{name}.png")
            gallery.figures.append(Figure(f"eval_{name}", path.read_bytes(), caption))
    blocks.append(gallery)
    return blocks


def _confusion_table(names: Sequence[str], counts: np.ndarray) -> Table:
    labels = [*names, "background"]
    rows = [[labels[i], *(str(int(v)) for v in counts[i])] for i in range(min(len(labels), len(counts)))]
    return Table(["true \\ predicted", *labels], rows, set(range(1, len(labels) + 1)))


LEGEND = (
    "Green: detection that found an object; red dashed: false detection; orange: missed object; grey dashed: crowd "
    "region (or a detection inside one)."
)


def examples_section(context: Context) -> list[Block]:
    blocks: list[Block] = [Heading("Best and worst validation images")]
    examples = context.examples
    if examples is None:
        blocks.append(Note(f"No example images: {context.examples_note}."))
        return blocks
    dataset = context.val.dataset
    assert dataset is not None
    blocks.append(
        Text(
            f"The model ({examples.checkpoint.name}) ran on {len(examples.outcomes)} of the {examples.total_images} "
            f"validation images (evenly spaced); detections kept at {examples.threshold_source}. Images are ranked "
            "by their errors (false detections + missed objects), then by F1. " + LEGEND
        )
    )
    if examples.unreadable:
        blocks.append(Note(f"{examples.unreadable} images could not be read and were left out."))
    best, worst = pick_examples(examples.outcomes, EXAMPLES)
    for title, chosen, prefix in (("Worst", worst, "worst"), ("Best", best, "best")):
        if not chosen:
            continue
        figures = []
        for rank, outcome in enumerate(chosen, 1):
            objects = outcome.tp + outcome.fn
            caption = (
                f"{outcome.record.file_name} (id {outcome.record.id}): {objects} objects, {outcome.tp} found, "
                f"{outcome.fp} false, {outcome.fn} missed, F1 {outcome.f1:.2f}"
            )
            png = draw_outcome(outcome, dataset.image_root, examples.class_names)
            figures.append(Figure(f"{prefix}_{rank}", png, caption))
        blocks += [Heading(title, 3), Gallery(figures)]
    return blocks


def dataset_section(context: Context) -> list[Block]:
    blocks: list[Block] = [Heading("Dataset statistics")]
    splits = [s for s in (context.train, context.val) if s.report is not None]
    for split in (context.train, context.val):
        if split.report is None and split.note:
            blocks.append(Note(f"{split.name}: {split.note}."))
    if not splits:
        return blocks
    blocks.append(
        Text(
            "From `python -m detlit.check` on each json (image headers read, images not decoded). Objects exclude "
            "crowd regions."
        )
    )
    columns = ["", *(s.name for s in splits)]
    keys = (
        ("images", lambda st: st["images"]),
        ("annotations", lambda st: st["annotations"]),
        ("categories", lambda st: st["categories"]),
        ("images without objects", lambda st: st["empty_images"]),
        ("objects per image (min / mean / max)", lambda st: "{min} / {mean} / {max}".format(**st["boxes_per_image"])),
        ("small / medium / large objects", lambda st: "{small} / {medium} / {large}".format(**st["box_sizes"])),
        ("crowd regions", lambda st: st["crowd"]),
    )
    rows = []
    for label, get in keys:
        row = [label]
        for split in splits:
            assert split.report is not None
            try:
                row.append(str(get(split.report.stats)))
            except (KeyError, TypeError):
                row.append(NO_VALUE)
        rows.append(row)
    blocks.append(Table(columns, rows, set(range(1, len(columns)))))

    categories: dict[str, list[str]] = {}
    for position, split in enumerate(splits):
        assert split.report is not None
        for key, count in split.report.stats.get("per_category", {}).items():
            categories.setdefault(str(key), [NO_VALUE] * len(splits))[position] = str(count)
    blocks.append(Heading("Objects per category", 3))
    blocks.append(
        Table(
            ["category (id name)", *(s.name for s in splits)],
            [[k, *v] for k, v in categories.items()],
            set(range(1, len(splits) + 1)),
        )
    )

    blocks.append(Heading("Findings of the check", 3))
    rows = []
    for split in splits:
        assert split.report is not None
        counted = Counter((f.severity.value, f.kind) for f in split.report.findings)
        first: dict[tuple[str, str], str] = {}
        for finding in split.report.findings:
            first.setdefault((finding.severity.value, finding.kind), finding.message)
        order = {"error": 0, "warning": 1, "info": 2}
        for (severity, kind), count in sorted(counted.items(), key=lambda item: (order.get(item[0][0], 3), item[0][1])):
            rows.append([split.name, severity, kind, str(count), first[(severity, kind)]])
    if rows:
        blocks.append(Table(["split", "severity", "kind", "count", "first example"], rows, {3}))
    else:
        blocks.append(Text("The check found nothing to report."))
    return blocks


SECTIONS = (
    summary_section,
    findings_section,
    metrics_section,
    curves_section,
    evaluation_pictures_section,
    examples_section,
    dataset_section,
)


# === building and writing ========================================================================


def _class_info(run: Run, metrics: FinalMetrics | None, train: DataSplit) -> tuple[list[str], list[int] | None]:
    """Class names and original category ids, from the evaluation, the run's hyper-parameters or the data."""
    names = run.model_setting("class_names")
    ids = run.model_setting("category_ids")
    if metrics is not None and metrics.category_ids is not None:
        return metrics.class_names, metrics.category_ids
    if isinstance(names, list) and names:
        return [str(n) for n in names], [int(i) for i in ids] if isinstance(ids, list) else None
    if train.dataset is not None:
        try:
            label_map = train.dataset.label_map()
        except DataError:
            return [], None
        return list(label_map.names), list(label_map.category_ids)
    return [], None


def build_report(
    run_dir: Path,
    eval_dir: Path | None = None,
    device: str = "cpu",
    max_images: int = MAX_IMAGES,
) -> Document:
    """Read a run folder (and an evaluation folder) and build the report.

    Raises:
        ConfigError: ``run_dir`` is not a run folder, or ``eval_dir`` is not an evaluation folder.
    """
    run = read_run(run_dir)
    log.info("read %s: %d scalar tags, %d checkpoints", run_dir, len(run.scalars), len(run.checkpoints))
    metrics, eval_document = read_eval(eval_dir) if eval_dir is not None else (None, {})
    train, val = read_split(run, "train"), read_split(run, "val")
    class_names, category_ids = _class_info(run, metrics, train)
    if metrics is None:
        metrics = metrics_from_scalars(run.scalars, class_names)

    examples, note = None, None
    evaluated = (
        locate(eval_document.get("source"), [eval_dir.resolve(), *eval_dir.resolve().parents]) if eval_dir else None
    )
    checkpoint, why = choose_checkpoint(run, evaluated)
    if max_images <= 0:
        note = "--max-images 0"
    elif checkpoint is None:
        note = f"no checkpoint in {run.folder / 'checkpoints'}"
    elif val.dataset is None or val.image_root is None:
        note = val.note or "the validation images were not found"
    else:
        thresholds, source = None, ""
        if metrics is not None and eval_dir is not None:
            # NaN / null: no threshold ever gave a true positive; such a class keeps no detection
            thresholds = [
                t if math.isfinite(t) else math.inf for t in (_float(r["threshold"]) for r in metrics.per_class)
            ]
            source = "the F1-optimal score thresholds of --eval"
        log.info("running %s (%s) on up to %d validation images", checkpoint, why, max_images)
        try:
            examples = run_examples(checkpoint, val.dataset, max_images, device, thresholds, source)
        except (DetlitError, RuntimeError, OSError) as err:
            note = f"{checkpoint} could not be run ({err})"
            log.warning("example images left out: %s", note)
    if metrics is None and examples is not None and examples.evaluation is not None:
        metrics = metrics_from_evaluation(
            examples.evaluation,
            f"the model run by this report on {len(examples.outcomes)} validation images (the event files hold no "
            "validation metrics)",
        )
    context = Context(run, train, val, metrics, eval_dir, examples, note, class_names, category_ids)
    blocks: list[Block] = []
    for section in SECTIONS:
        blocks += section(context)
    subtitle = f"Run folder `{run.folder}`, report written {datetime.now().isoformat(sep=' ', timespec='seconds')}."
    return Document(f"Training report: {run.name}", subtitle, blocks)


@dataclass
class OutputPaths:
    html: Path
    markdown: Path
    files: Path

    @classmethod
    def for_html(cls, html_path: Path) -> OutputPaths:
        return cls(html_path, html_path.with_suffix(".md"), html_path.with_name(f"{html_path.stem}_files"))


def prepare_outputs(out: Path, overwrite: bool) -> OutputPaths:
    """The report's three paths; an existing one stops here unless ``overwrite``.

    Raises:
        ConfigError: ``out`` does not end in .html, or the report exists and ``overwrite`` is off.
    """
    if out.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(f"--out {out} must end in .html (the Markdown copy goes next to it)")
    paths = OutputPaths.for_html(out)
    existing = [p for p in (paths.html, paths.markdown, paths.files) if p.exists()]
    if existing and not overwrite:
        raise ConfigError(
            f"{existing[0]} already exists; pass --overwrite to replace the report, or choose another --out"
        )
    return paths


def write_report(document: Document, paths: OutputPaths) -> None:
    """Write the HTML page, the Markdown copy and its pictures (stale pictures of an older report removed)."""
    paths.html.parent.mkdir(parents=True, exist_ok=True)
    paths.files.mkdir(exist_ok=True)
    figures = document.figures()
    names = {f"{figure.name}.png" for figure in figures}
    for old in paths.files.glob("*.png"):
        if old.name not in names:
            old.unlink()
    for figure in figures:
        (paths.files / f"{figure.name}.png").write_bytes(figure.png)
    paths.markdown.write_text(render_markdown(document, paths.files.name), encoding="utf-8")
    paths.html.write_text(render_html(document), encoding="utf-8")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m detlit.report", description="Write the report of a training run.")
    parser.add_argument("--run", type=Path, required=True, help="run folder, e.g. runs/sample/version_0")
    parser.add_argument("--eval", type=Path, help="output folder of python -m detlit.evaluate for this run")
    parser.add_argument("--out", type=Path, help="the HTML file (default RUN/report.html); the .md goes beside it")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report")
    parser.add_argument("--device", default="cpu", help="device for the example images: cpu, cuda or cuda:N")
    parser.add_argument(
        "--max-images", type=int, default=MAX_IMAGES, help="validation images to run the model on (0: none)"
    )
    return parser.parse_args(argv)


def report_main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    paths = prepare_outputs(args.out or args.run / "report.html", args.overwrite)
    document = build_report(args.run, args.eval, args.device, args.max_images)
    write_report(document, paths)
    print(f"report: {paths.html}\nMarkdown: {paths.markdown} (pictures in {paths.files})")
    return 0


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_cli(report_main, argv))


if __name__ == "__main__":
    main()
