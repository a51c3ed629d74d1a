"""``python -m detlit.predict``: run a trained checkpoint on images; draw, and write COCO results.

Examples::

    python -m detlit.predict --ckpt runs/sample/version_0/checkpoints/last.ckpt data/sample/val
    python -m detlit.predict --ckpt model.ckpt photos/ --recursive --out photos-predicted --csv
    python -m detlit.predict --ckpt model.ckpt "shots/*.jpg" --device cuda --precision bf16 --batch-size 8

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

Detections are kept by the checkpoint's per-class score thresholds (those validation found
best) or, without them, from a score of :data:`~detlit.inference.predictor.DEFAULT_SCORE_THRESHOLD`;
``--score-threshold`` sets one threshold for every class instead. Images are resized as in
validation; ``--resize detectron2`` resizes them as detectron2's ``DefaultPredictor`` does (see
:mod:`detlit.inference.predictor`). ``--device auto`` (the default) takes the GPU when there is one.

Nothing existing is replaced without ``--overwrite``: an ``--out`` folder that holds any file
stops the run before the model is loaded. With ``--overwrite``, files of the same names are
replaced and every other file in the folder is left alone. An output that would replace one of
the inputs always stops the run, and images that a folder or pattern finds under ``--out`` are not
taken as inputs.

Unreadable images are logged with their name and skipped; the run goes on and its summary
counts them. Exit status: 0 when at least one image was predicted, 1 when none could be read,
2 on bad arguments (missing checkpoint, no images found, ``--out`` not empty).
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import logging
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from detlit.common.command import run_cli
from detlit.data.checks import IMAGE_SUFFIXES
from detlit.data.coco import LabelMap
from detlit.errors import ConfigError, DataError
from detlit.inference.predictor import Prediction, Predictor, load_image

log = logging.getLogger("detlit.inference.predict")

JSON_NAME = "predictions.json"
CSV_NAME = "predictions.csv"
CSV_COLUMNS = ("image_id", "file_name", "category_id", "class_name", "score", "x1", "y1", "x2", "y2")
JPEG_SUFFIXES = {".jpg", ".jpeg"}
PROGRESS_FROM = 8  # files: fewer finish before a progress bar would tell anything
CHUNK_BATCHES = 4  # batches read ahead, so the predictor can group images of the same size


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

    Folders give their files with an image suffix (:data:`detlit.data.checks.IMAGE_SUFFIXES`),
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
            raise ConfigError(f"input {text} does not exist; pass image files, folders or quoted glob patterns")
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


def check_output(out: Path, overwrite: bool, inputs: Iterable[Path], names: Sequence[str]) -> None:
    """Check, before anything is loaded or written, that the outputs replace nothing they must not.

    Raises:
        ConfigError: ``out`` is not a folder, holds files and ``overwrite`` is off, or an output
            would replace an input.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; name a folder for the outputs")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"--out {out} already holds files; choose another folder or pass --overwrite")
    sources = {path.resolve() for path in inputs}
    for name in [*names, JSON_NAME, CSV_NAME]:
        if (out / name).resolve() in sources:
            raise ConfigError(f"writing {out / name} would replace an input image; choose another --out folder")


def coco_results(predictions: Sequence[Prediction], image_ids: Sequence[int]) -> list[dict[str, Any]]:
    """Detections in COCO results format: original category ids, XYWH boxes in original pixels."""
    results = []
    for prediction, image_id in zip(predictions, image_ids, strict=True):
        for box, score, category_id in zip(
            prediction.boxes.tolist(), prediction.scores.tolist(), prediction.category_ids, strict=True
        ):
            x1, y1, x2, y2 = box
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(category_id),
                    "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                    "score": round(float(score), 6),
                }
            )
    return results


def write_predictions_json(
    path: Path, images: list[dict[str, Any]], results: list[dict[str, Any]], label_map: LabelMap
) -> None:
    """``predictions.json``: ``images``, ``categories`` and the results as ``annotations``.

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
    document = {"images": images, "categories": categories, "annotations": annotations}
    path.write_text(json.dumps(document, indent=1))


def write_predictions_csv(path: Path, images: list[dict[str, Any]], predictions: Sequence[Prediction]) -> None:
    """``predictions.csv``: one row per detection, box XYXY in original pixels."""
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(CSV_COLUMNS)
        for image, prediction in zip(images, predictions, strict=True):
            for box, score, label, category_id in zip(
                prediction.boxes.tolist(),
                prediction.scores.tolist(),
                prediction.class_names,
                prediction.category_ids,
                strict=True,
            ):
                writer.writerow(
                    [image["id"], image["file_name"], category_id, label, f"{score:.6f}", *(f"{v:.3f}" for v in box)]
                )


def save_drawing(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in JPEG_SUFFIXES:
        Image.fromarray(image).save(path, quality=95)
    else:
        Image.fromarray(image).save(path)


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

    Unreadable images are logged and skipped. ``out`` must have been checked with
    :func:`check_output`.
    """
    names = output_names(images)
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    predictions: list[Prediction] = []
    skipped: list[tuple[Path, str]] = []
    chunk = predictor.batch_size * CHUNK_BATCHES
    progress = Progress(
        TextColumn("predicting"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=len(images) < PROGRESS_FROM,
    )
    with progress:
        task = progress.add_task("predict", total=len(images))
        for start in range(0, len(images), chunk):
            loaded: list[tuple[InputImage, str, np.ndarray]] = []
            for image, name in zip(images[start : start + chunk], names[start : start + chunk], strict=True):
                try:
                    loaded.append((image, name, load_image(image.path)))
                except DataError as err:
                    log.warning("skipped %s", err)
                    skipped.append((image.path, str(err)))
                    progress.advance(task)
            for (image, name, pixels), prediction in zip(
                loaded, predictor.predict([p for _, _, p in loaded]), strict=True
            ):
                image_id = len(records) + 1
                save_drawing(out / name, prediction.draw(pixels))
                records.append(
                    {
                        "id": image_id,
                        "file_name": image.name,
                        "width": prediction.width,
                        "height": prediction.height,
                        "path": str(image.path.resolve()),
                        "drawn": name,
                    }
                )
                predictions.append(prediction)
                progress.advance(task)
    results = coco_results(predictions, [r["id"] for r in records])
    write_predictions_json(out / JSON_NAME, records, results, predictor.label_map)
    if write_csv:
        write_predictions_csv(out / CSV_NAME, records, predictions)
    return PredictSummary(records, predictions, skipped, out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m detlit.predict", description="Detect objects in images with a trained detlit checkpoint."
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or quoted glob patterns")
    parser.add_argument("--ckpt", type=Path, required=True, help="detlit checkpoint (.ckpt) of a training run")
    parser.add_argument("--out", type=Path, default=Path("predictions"), help="output folder (default: predictions)")
    parser.add_argument("--recursive", action="store_true", help="take images in subfolders of folder inputs too")
    parser.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default: 4)")
    parser.add_argument(
        "--device", default="auto", help="cpu, cuda or cuda:N (default: auto, the GPU when there is one)"
    )
    parser.add_argument(
        "--precision", choices=["32", "bf16", "16"], default="32", help="32-bit or mixed precision (default: 32)"
    )
    parser.add_argument(
        "--score-threshold",
        type=float,
        metavar="T",
        help="keep detections scoring at least T in every class (default: the checkpoint's per-class thresholds, "
        "else 0.5)",
    )
    parser.add_argument(
        "--resize",
        choices=["detlit", "detectron2"],
        default="detlit",
        help="detlit's resize as in validation (default), or detectron2's DefaultPredictor resize",
    )
    parser.add_argument("--csv", action="store_true", help=f"also write {CSV_NAME}, one row per detection")
    parser.add_argument("--overwrite", action="store_true", help="write into an --out folder that holds files")
    return parser.parse_args(argv)


def _auto_device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def predict_main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.ckpt.is_file():
        raise ConfigError(f"--ckpt {args.ckpt} does not exist; pass a .ckpt file of a training run")
    images = find_images(args.inputs, args.recursive, exclude=args.out)
    check_output(args.out, args.overwrite, (i.path for i in images), output_names(images))
    predictor = Predictor.from_checkpoint(
        args.ckpt,
        device=_auto_device(args.device),
        score_threshold=args.score_threshold,
        precision=args.precision,
        batch_size=args.batch_size,
        resize=args.resize,
    )
    log.info("predicting %d images with %s on %s", len(images), args.ckpt, predictor.device)
    summary = predict_images(predictor, images, args.out, args.csv)
    outputs = f"drawn images and {JSON_NAME}" + (f" and {CSV_NAME}" if args.csv else "")
    print(
        f"{len(summary.images)} images predicted ({summary.detections} detections), "
        f"{len(summary.skipped)} skipped; {outputs} in {args.out}"
    )
    for _, reason in summary.skipped:
        print(f"  skipped: {reason}")
    return 0 if summary.images else 1


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_cli(predict_main, argv))


if __name__ == "__main__":
    main()
