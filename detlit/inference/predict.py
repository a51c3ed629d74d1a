"""Predicting image files as ``python -m detlit.predict`` does: drawings, COCO results, a CSV.

INPUT is any mix of image files, folders (their images; with ``--recursive`` those of their
subfolders too) and glob patterns (quote them; ``**`` matches subfolders). What lands in ``--out``
(default ``predictions/``):

* one drawn image per input, under the input's name relative to the folder or pattern it was
  found by (a file named directly: its bare name); JPEG inputs stay JPEG, all others become PNG;
  a name two inputs would share gets ``-2``, ``-3``, ... appended;
* ``predictions.json``: a COCO json whose ``annotations`` are the detections in COCO results
  format (``image_id``, original ``category_id``, ``bbox`` as XYWH in original pixels,
  ``score``), with ``images`` (``id``; ``file_name``, the input's name as above, which for a
  folder input is what a COCO json of that folder calls it; ``width`` and ``height`` after EXIF
  orientation; ``path`` of the source; ``drawn``, the drawing's name in ``--out``) and
  ``categories``. Its ``annotations`` list loads with ``pycocotools.COCO.loadRes``, and the whole
  file with ``COCO``;
* with ``--csv``, ``predictions.csv``: one row per detection (:data:`CSV_COLUMNS`, box XYXY).

Detections are kept by the model's per-class score thresholds (those validation found best,
saved in the checkpoint and carried into an exported model's metadata) or, without them, from a
score of :data:`~detlit.inference.predictor.DEFAULT_SCORE_THRESHOLD`;
``--score-threshold`` sets one threshold for every class instead (``0.05``, the model's own test
threshold, keeps every detection that ``python -m detlit.evaluate`` scores, and then
``predictions.json`` holds the detections of its ``coco_results.json``). Images are resized as in
validation; ``--resize detectron2`` resizes them as detectron2's ``DefaultPredictor`` does (see
:mod:`detlit.inference.predictor`). ``--device auto`` (the default) takes the GPU when there is one.

Nothing existing is replaced without ``--overwrite``: a drawing, ``predictions.json`` or
``predictions.csv`` already in ``--out`` stops the run before the model is loaded. With
``--overwrite``, files of the same names are replaced and every other file in the folder is left
alone. An output that would replace one of the inputs always stops the run, and images that a
folder or pattern finds under ``--out`` are not taken as inputs. Every file is written whole (a
temporary renamed over its name), and ``--out`` is held against other commands during the run.

Unreadable images are logged with their name and skipped; the run goes on and its summary
counts them. Exit status: 0 when at least one image was predicted, 1 when none could be read,
2 on bad arguments (missing checkpoint, no images found, an output that exists).
"""

from __future__ import annotations

import csv
import glob
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from detlit.common.console import console as rich_console
from detlit.common.outputs import check_folder, check_outputs, write_image, write_lock, write_text
from detlit.common.paths import not_a_file
from detlit.data.coco import LabelMap
from detlit.data.images import IMAGE_SUFFIXES
from detlit.errors import ConfigError
from detlit.evaluation.coco_results import coco_results
from detlit.inference.exported import is_exported
from detlit.inference.predictor import Precision, Prediction, Predictor, Resize
from detlit.inference.slicing import Slicing

log = logging.getLogger(__name__)

JSON_NAME = "predictions.json"
CSV_NAME = "predictions.csv"
CSV_COLUMNS = ("image_id", "file_name", "category_id", "class_name", "score", "x1", "y1", "x2", "y2")
JPEG_SUFFIXES = {".jpg", ".jpeg"}
PROGRESS_FROM = 8  # files: fewer finish before a progress bar would tell anything


@dataclass(frozen=True)
class InputImage:
    """An image file to predict and the name its outputs get (relative, POSIX separators)."""

    path: Path
    name: str


def _has_magic(text: str) -> bool:
    return any(char in text for char in "*?[")


def _glob_root(pattern: str) -> Path:
    """The folder part of a pattern before its first wildcard: names are made relative to it."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if _has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def find_images(inputs: Sequence[str], recursive: bool = False, exclude: Path | None = None) -> list[InputImage]:
    """Image files named by ``inputs`` (files, folders, glob patterns), each once, in input order.

    Folders give their files with an image suffix (:data:`detlit.data.images.IMAGE_SUFFIXES`),
    sorted, and with ``recursive`` those of subfolders too; a file named directly is taken
    whatever its suffix. Files that folders and patterns find under ``exclude`` (the output
    folder) are left out.

    Raises:
        ConfigError: an input is neither a file, a folder nor a pattern, or nothing was found.
    """
    found: list[InputImage] = []
    seen: set[Path] = set()

    def add(path: Path, root: Path | None) -> None:
        key = path.resolve()
        # Earlier outputs are not inputs, unless the user names one directly.
        searched = root is not None
        if key in seen or (searched and exclude is not None and _inside(path, exclude)):
            return
        seen.add(key)
        name = path.relative_to(root).as_posix() if root is not None else path.name
        found.append(InputImage(path, name))

    def add_folder(folder: Path, root: Path) -> None:
        files = folder.rglob("*") if recursive else folder.iterdir()
        for path in sorted(p for p in files if _is_image(p)):
            add(path, root)

    for text in inputs:
        path = Path(text)
        if path.is_file():
            add(path, None)
        elif path.is_dir():
            add_folder(path, path)
        elif _has_magic(text):
            root = _glob_root(text)
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True))
            if not matches:
                log.warning("pattern %s matches nothing", text)
            for match in matches:
                if match.is_dir():
                    add_folder(match, root)
                elif _is_image(match):
                    add(match, root)
        else:
            raise ConfigError(f"input {text} {not_a_file(path)}; pass image files, folders or quoted glob patterns")
    if not found:
        hint = "" if recursive else " (add --recursive to search subfolders)"
        raise ConfigError(f"no images found in {', '.join(inputs)}{hint}; pass image files, folders or glob patterns")
    return found


def output_names(images: Sequence[InputImage]) -> list[str]:
    """The drawn image's name of each input: JPEG stays JPEG, others become PNG; clashes get -2, -3, ..."""
    used: set[str] = set()
    names = []
    for image in images:
        relative = Path(image.name)
        suffix = relative.suffix if relative.suffix.lower() in JPEG_SUFFIXES else ".png"
        candidate, count = relative.with_suffix(suffix), 1
        while candidate.as_posix().lower() in used:
            count += 1
            candidate = relative.with_name(f"{relative.stem}-{count}{suffix}")
        used.add(candidate.as_posix().lower())
        names.append(candidate.as_posix())
    return names


def output_paths(out: Path, names: Sequence[str], write_csv: bool) -> list[Path]:
    """Every file a run writes into ``out``: the drawings, the json and (with ``write_csv``) the csv."""
    return [*(out / name for name in names), out / JSON_NAME, *([out / CSV_NAME] if write_csv else [])]


def write_predictions_json(
    path: Path,
    images: list[dict[str, Any]],
    results: list[dict[str, Any]],
    label_map: LabelMap,
    info: dict[str, Any] | None = None,
) -> None:
    """``predictions.json``: ``info`` (how the model ran), ``images``, ``categories``, the results as ``annotations``.

    Each result also gets the ``id``, ``area`` and ``iscrowd`` that a COCO dataset needs, so the
    file loads with ``pycocotools.COCO`` (and in tools that show COCO files) as it is.
    """
    annotations = [
        {"id": index, **result, "area": round(result["bbox"][2] * result["bbox"][3], 3), "iscrowd": 0}
        for index, result in enumerate(results, start=1)
    ]
    categories = [
        {"id": int(category_id), "name": name}
        for category_id, name in zip(label_map.category_ids, label_map.names, strict=True)
    ]
    document = {"info": info or {}, "images": images, "categories": categories, "annotations": annotations}
    write_text(path, json.dumps(document, indent=1))


def write_predictions_csv(path: Path, images: list[dict[str, Any]], predictions: Sequence[Prediction]) -> None:
    """``predictions.csv``: one row per detection, box XYXY in original pixels."""
    stream = io.StringIO()
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for image, prediction in zip(images, predictions, strict=True):
        rows = zip(
            prediction.boxes.tolist(),
            prediction.scores.tolist(),
            prediction.class_names,
            prediction.category_ids,
            strict=True,
        )
        for box, score, label, category_id in rows:
            writer.writerow(
                [image["id"], image["file_name"], category_id, label, f"{score:.6f}", *(f"{v:.3f}" for v in box)]
            )
    write_text(path, stream.getvalue())


def save_drawing(path: Path, image: np.ndarray) -> None:
    """Write a drawing whole (JPEG for a ``.jpg`` name, else PNG); a failed write leaves none."""
    if path.suffix.lower() in JPEG_SUFFIXES:
        write_image(path, Image.fromarray(image), "JPEG", quality=95)
    else:
        write_image(path, Image.fromarray(image), "PNG")


@dataclass
class PredictSummary:
    """What a prediction run did."""

    images: list[dict[str, Any]]
    predictions: list[Prediction]
    skipped: list[tuple[Path, str]]
    out: Path

    @property
    def detections(self) -> int:
        return sum(len(p) for p in self.predictions)


def predict_images(
    predictor: Predictor, images: Sequence[InputImage], out: Path, write_csv: bool = False
) -> PredictSummary:
    """Predict every image, draw it into ``out``, and write the json (and csv) at the end.

    Unreadable images are logged and skipped. The outputs must have been checked with
    :func:`~detlit.common.outputs.check_outputs`.
    """
    names = output_names(images)
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    predictions: list[Prediction] = []
    skipped: list[tuple[Path, str]] = []
    progress = Progress(
        TextColumn("predicting"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=rich_console(stderr=True),
        disable=len(images) < PROGRESS_FROM,
    )
    with progress:
        task = progress.add_task("predict", total=len(images))
        for outcome in predictor.predict_files([image.path for image in images]):
            image, name = images[outcome.index], names[outcome.index]
            progress.advance(task)
            if outcome.pixels is None or outcome.prediction is None:
                log.warning("skipped %s", outcome.error)
                skipped.append((image.path, str(outcome.error)))
                continue
            pixels, prediction = outcome.pixels, outcome.prediction
            save_drawing(out / name, prediction.draw(pixels))
            records.append(
                {
                    "id": len(records) + 1,
                    "file_name": image.name,
                    "width": prediction.width,
                    "height": prediction.height,
                    "path": str(image.path.resolve()),
                    "drawn": name,
                }
            )
            predictions.append(prediction)
    results = coco_results(predictions, [r["id"] for r in records], predictor.label_map)
    info = {"description": "detections of python -m detlit.predict", **predictor.settings()}
    write_predictions_json(out / JSON_NAME, records, results, predictor.label_map, info)
    if write_csv:
        write_predictions_csv(out / CSV_NAME, records, predictions)
    return PredictSummary(records, predictions, skipped, out)


def predict(
    inputs: Sequence[str],
    model: Path,
    out: Path = Path("predictions"),
    recursive: bool = False,
    batch_size: int = 4,
    device: str = "auto",
    precision: Precision = "32",
    score_threshold: float | None = None,
    resize: Resize = "detlit",
    slicing: Slicing | None = None,
    write_csv: bool = False,
    overwrite: bool = False,
) -> int:
    """``python -m detlit.predict``: predict, draw and write results for every image ``inputs`` name,
    with ``model``, a checkpoint or an exported model.

    Returns:
        0 when at least one image was predicted, 1 when none could be read.
    """
    problem = not_a_file(model)  # a named pipe or a device would block, or never end
    if problem is not None:
        if is_exported(model):
            raise ConfigError(f"--model {model} {problem}; pass a model written by python -m detlit.export")
        raise ConfigError(f"--ckpt {model} {problem}; pass a .ckpt file of a training run")
    check_folder(out)
    for given in inputs:
        if Path(given).is_dir() and _inside(Path(given), out):
            raise ConfigError(
                f"--out {out} holds the input folder {given}: the drawings would go among the images; "
                "choose another --out (a folder inside the input folder is fine)"
            )
    with write_lock(out):
        images = find_images(inputs, recursive, exclude=out)
        check_outputs(
            output_paths(out, output_names(images), write_csv),
            inputs=[model, *(i.path for i in images)],
            overwrite=overwrite,
        )
        predictor = Predictor.load(
            model,
            device=device,
            score_threshold=score_threshold,
            precision=precision,
            batch_size=batch_size,
            resize=resize,
            slicing=slicing,
        )
        log.info("predicting %d images with %s on %s", len(images), model, predictor.device)
        if slicing is not None:
            log.info("sliced inference: %s", slicing.as_json())
        summary = predict_images(predictor, images, out, write_csv)
    outputs = f"drawn images and {JSON_NAME}" + (f" and {CSV_NAME}" if write_csv else "")
    print(
        f"{len(summary.images)} images predicted ({summary.detections} detections), "
        f"{len(summary.skipped)} skipped; {outputs} in {out}"
    )
    for _, reason in summary.skipped:
        print(f"  skipped: {reason}")
    return 0 if summary.images else 1
