"""The evaluate job: a model (or any detector's results file) on a COCO set, as ``python -m detlit.evaluate`` runs it.

It sits above the model because it runs one (through :class:`~detlit.inference.predictor.Predictor`);
the numbers themselves are :mod:`detlit.evaluation`'s (the metric, the
:class:`~detlit.evaluation.evaluation.Evaluation` value and its json, the COCO results writer).

Writes into the output folder (:data:`OUTPUTS`): ``metrics.json`` (the 12 COCO numbers, precision /
recall / F1 overall and per class at the F1-optimal and at the fixed score threshold, the
confusion matrix, and under ``errors`` the AP50 lost per error type,
:class:`~detlit.evaluation.error_breakdown.ErrorBreakdown`), ``per_class.csv``,
``coco_results.json`` (with a model), ``confusion_matrix.png``, ``pr_curves.png``,
``f1_curves.png`` and ``error_breakdown.png``, and prints the tables.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console
from rich.progress import track
from rich.table import Table

from detlit.common.console import console as rich_console
from detlit.common.outputs import check_folder, check_not_images, check_outputs, write_lock, write_together
from detlit.common.paths import not_a_file
from detlit.data.checks import load_checked
from detlit.data.coco import CocoDataset, LabelMap
from detlit.data.targets import eval_target
from detlit.errors import ConfigError
from detlit.evaluation.coco_results import coco_results, read_results, write_results
from detlit.evaluation.cocoeval import COCO_NAMES, COCO_TITLES
from detlit.evaluation.error_breakdown import ErrorBreakdown
from detlit.evaluation.evaluation import Evaluation
from detlit.evaluation.metric import DetectionMetrics
from detlit.inference.exported import is_exported
from detlit.inference.slicing import Slicing
from detlit.pictures import plots

if TYPE_CHECKING:
    from detlit.inference.predictor import Predictor

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
PER_CLASS_FILE = "per_class.csv"
RESULTS_FILE = "coco_results.json"
PICTURES = ("confusion_matrix.png", "confusion_matrix_fixed.png", "pr_curves.png", "f1_curves.png")
ERRORS_PICTURE = "error_breakdown.png"
ERRORS_KEY = "errors"  # metrics.json's key of the error breakdown (older files, detlit 0.2's say, have none)
OUTPUTS = (METRICS_FILE, PER_CLASS_FILE, RESULTS_FILE, *PICTURES, ERRORS_PICTURE)

Inputs = tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]]]


def predict_dataset(
    dataset: CocoDataset, predictor: Predictor, progress: bool = True
) -> tuple[Inputs, list[dict[str, Any]], LabelMap]:
    """Run a model (a :class:`~detlit.inference.predictor.Predictor` made with ``all_detections``, so
    every detection the model keeps counts) on every image of a dataset: the metric's inputs, the
    COCO results, and the model's label map.

    An image that cannot be read is logged and left out (its objects are then not counted).
    """
    label_map = predictor.label_map
    records = dataset.images
    preds, targets, image_ids, predictions = [], [], [], []
    paths = [dataset.image_root / record.file_name for record in records]
    outcomes = predictor.predict_files(paths)
    for outcome in track(outcomes, total=len(paths), description="predicting", transient=True, disable=not progress):
        if outcome.prediction is None:
            log.warning("left out of the evaluation: %s", outcome.error)
            continue
        record, prediction = records[outcome.index], outcome.prediction
        preds.append(prediction.metric_input())
        targets.append(eval_target(record, label_map))
        image_ids.append(record.id)
        predictions.append(prediction)
    return (preds, targets), coco_results(predictions, image_ids, label_map), label_map


def metrics_document(evaluation: Evaluation, meta: dict[str, Any], errors: ErrorBreakdown) -> dict[str, Any]:
    return {**meta, **evaluation.to_json(), ERRORS_KEY: errors.to_json()}


def per_class_csv(evaluation: Evaluation) -> str:
    """The per-class table as CSV; an undefined value (NaN, an infinite threshold) is an empty cell,
    as it is null in metrics.json and ``-`` on screen."""
    rows = [
        {key: "" if isinstance(value, float) and not math.isfinite(value) else value for key, value in row.items()}
        for row in evaluation.per_class()
    ]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_outputs(evaluation: Evaluation, out: Path, meta: dict[str, Any], errors: ErrorBreakdown) -> list[Path]:
    """metrics.json, per_class.csv and the pictures, written as one (an interrupted
    ``--overwrite`` never leaves the numbers of one evaluation beside the pictures of another);
    the paths written."""
    contents = {
        out / METRICS_FILE: json.dumps(metrics_document(evaluation, meta, errors), indent=1).encode("utf-8"),
        out / PER_CLASS_FILE: per_class_csv(evaluation).encode("utf-8"),
    }
    drawings = (plots.confusion_matrix, plots.fixed_confusion_matrix, plots.pr_curves, plots.f1_curves)
    for name, draw in zip(PICTURES, drawings, strict=True):
        contents[out / name] = draw(evaluation)
    contents[out / ERRORS_PICTURE] = plots.error_breakdown(errors)
    write_together(contents)
    return list(contents)


def print_tables(evaluation: Evaluation, errors: ErrorBreakdown, console: Console) -> None:
    coco = Table(title="COCO metrics (IoU .50:.95 unless noted, area all, max 100 detections)")
    coco.add_column("metric")
    coco.add_column("value", justify="right")
    for key in COCO_NAMES:
        value = evaluation.coco[key]
        coco.add_row(COCO_TITLES[key], "-" if value != value else f"{value:.4f}")
    overall = evaluation.scalars()
    for name in ("precision", "recall", "f1"):
        coco.add_row(f"{name} (per-class best threshold)", f"{overall[name]:.4f}")
    for name in ("precision", "recall", "f1"):
        coco.add_row(f"{name} @ score {evaluation.score_threshold:g}", f"{overall[name + '@thr']:.4f}")
    console.print(coco)
    console.print(evaluation.table(f"per class (IoU {evaluation.iou_threshold:g})"))
    console.print(errors.table())
    console.print(errors.class_table())


def evaluate(
    json_path: Path,
    images: Path | None = None,
    out: Path | None = None,
    model: Path | None = None,
    results: Path | None = None,
    device: str = "auto",
    batch_size: int = 4,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
    slicing: Slicing | None = None,
    overwrite: bool = False,
) -> int:
    """``python -m detlit.evaluate``: every metric of a model (``model``: a checkpoint or an exported
    model) or of a results file (``results``) on the images of ``json_path``; the outputs go to
    ``out`` (default ``eval/<json name>``)."""
    if (model is None) == (results is None):
        raise ConfigError("give either --ckpt or --model (a model to run) or --results (a results file), not both")
    option = "--model" if model is not None and is_exported(model) else "--ckpt"
    if slicing is not None and model is None:
        raise ConfigError("--slice runs a model on tiles: give --ckpt or --model (a results file holds detections)")
    if model is not None and images is None:
        raise ConfigError(f"{option} runs the model on the images: give --images, the folder of the json's images")
    if not 0.0 < iou_threshold <= 1.0:
        raise ConfigError(f"--iou-threshold {iou_threshold} must be above 0 and at most 1")
    out = out or Path("eval") / json_path.stem
    check_folder(out)
    outputs = [out / name for name in (METRICS_FILE, PER_CLASS_FILE, *PICTURES, ERRORS_PICTURE)]
    outputs += [out / RESULTS_FILE] if model is not None else []
    inputs = [p for p in (json_path, model, results) if p is not None]
    with write_lock(out):
        check_outputs(outputs, inputs=inputs, overwrite=overwrite)
        started = time.perf_counter()
        written: list[Path] = []
        ran: dict[str, Any] = {}  # how the model ran (Predictor.settings); nothing for a results file
        if model is not None:
            problem = not_a_file(model)  # a named pipe or a device would block, or never end
            if problem is not None:
                written_by = "python -m detlit.export" if option == "--model" else "python -m detlit.fit"
                raise ConfigError(f"{option} {model} {problem}; pass a file written by {written_by}")
            dataset = load_checked(json_path, images or Path("."), "--images", files=True)
            check_not_images(outputs, [(dataset.image_root, dataset.images.file_names())])
            from detlit.inference.predictor import Predictor  # the model's imports, only when a model is evaluated

            predictor = Predictor.load(
                model, device=device, batch_size=batch_size, all_detections=True, slicing=slicing
            )
            (preds, targets), coco, label_map = predict_dataset(dataset, predictor)
            ran = predictor.settings()
            written.append(write_results(coco, out / RESULTS_FILE))
            log.info("wrote %s (%d detections)", out / RESULTS_FILE, len(coco))
        else:
            assert results is not None
            dataset = load_checked(json_path, images or json_path.parent, "--images", files=False)
            label_map = dataset.label_map()
            preds, targets = read_results(results, dataset.images, label_map)
        metric = DetectionMetrics(label_map.names, score_threshold=score_threshold, iou_threshold=iou_threshold)
        metric.update(preds, targets)
        evaluation: Evaluation = metric.compute()
        errors = ErrorBreakdown.from_arrays(metric.arrays(), label_map.names)
        log.info(
            "error breakdown: AP50 %.4f; dAP50 %s",
            errors.ap50,
            ", ".join(f"{kind} {value:.4f}" for kind, value in errors.overall.items()),
        )
        meta = {
            "source": str(model or results),
            "json": str(json_path),
            "images": len(targets),
            "category_ids": list(label_map.category_ids),
            "seconds": round(time.perf_counter() - started, 2),
            **ran,
        }
        written += write_outputs(evaluation, out, meta, errors)
    print_tables(evaluation, errors, rich_console())
    log.info("wrote %s", ", ".join(str(p) for p in written))
    return 0
