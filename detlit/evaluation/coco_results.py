"""The one COCO results writer, and its reader: detections out as COCO json, results files back in.

Out: :func:`coco_results` turns detections (XYXY boxes in original pixels, scores, contiguous
labels) into COCO result dicts ``{"image_id", "category_id", "bbox", "score"}`` with the ORIGINAL
category id and an XYWH box, the format that ``pycocotools.coco.COCO.loadRes`` reads. Boxes keep
:data:`BOX_DECIMALS` decimals and scores are unrounded, for every writer: ``python -m
detlit.evaluate`` (``coco_results.json``) and ``python -m detlit.predict`` (``predictions.json``)
write the same detections of the same model identically.

In: :func:`read_results` turns a results file and the ground truth it belongs to into the
``preds`` / ``targets`` lists of :class:`~detlit.evaluation.metric.DetectionMetrics`, so any
detector's results are evaluated without a model. It reads a COCO results list, and also the
``predictions.json`` of ``python -m detlit.predict`` (a COCO json whose images are matched to the
ground truth's by file name).
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from detlit.common.outputs import write_text
from detlit.common.paths import not_a_file
from detlit.data.coco import ImageRecord, LabelMap
from detlit.data.targets import eval_target
from detlit.errors import DataError
from detlit.evaluation.matching import xyxy_to_xywh

log = logging.getLogger(__name__)

# 1/100 pixel: far below what a detector resolves, changes no IoU by more than about
# 0.02 / (box side in pixels), and keeps the json small. Scores are written unrounded, since
# rounding them would turn distinct scores into ties and change the ranking that AP measures.
BOX_DECIMALS = 2

Result = dict[str, Any]


class HasDetections(Protocol):
    """What :func:`coco_results` reads of one image's detections (a ``Prediction`` and
    :class:`~detlit.model.detections.Detections` have these)."""

    @property
    def boxes(self) -> Any: ...  # (N, 4) XYXY, original pixels

    @property
    def scores(self) -> Any: ...  # (N,)

    @property
    def labels(self) -> Any: ...  # (N,) contiguous labels


def _numpy(values: Any, dtype: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        values = values.to(torch.float64) if dtype == np.float64 else values
        return values.numpy().astype(dtype)
    return np.asarray(values).astype(dtype)


def category_ids(labels: np.ndarray, label_map: LabelMap) -> np.ndarray:
    """The original COCO category id of each contiguous label."""
    bad = labels[(labels < 0) | (labels >= label_map.num_classes)]
    if bad.size:
        raise ValueError(f"label {int(bad[0])} is not one of the label map's {label_map.num_classes} classes")
    return np.asarray(label_map.category_ids, np.int64)[labels]


def coco_results(
    detections: Sequence[HasDetections | dict[str, Any]], image_ids: Sequence[int], label_map: LabelMap
) -> list[Result]:
    """COCO result dicts of detections, one list for all images.

    Args:
        detections: per image, an object with ``boxes`` (XYXY in original pixels), ``scores`` and
            ``labels`` (contiguous), or a dict with those keys; arrays or tensors.
        image_ids: the COCO image id of each image.
        label_map: contiguous label -> original category id.

    Returns:
        ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` per detection, in the order
        of the images and, within an image, of the detections.
    """
    if len(detections) != len(image_ids):
        raise ValueError(f"{len(detections)} detections but {len(image_ids)} image ids")
    results: list[Result] = []
    for item, image_id in zip(detections, image_ids, strict=True):
        get = item.__getitem__ if isinstance(item, dict) else lambda name, item=item: getattr(item, name)
        boxes = xyxy_to_xywh(_numpy(get("boxes"), np.float64).reshape(-1, 4)).round(BOX_DECIMALS)
        scores = _numpy(get("scores"), np.float64).reshape(-1)
        categories = category_ids(_numpy(get("labels"), np.int64).reshape(-1), label_map)
        results += [
            {"image_id": int(image_id), "category_id": category, "bbox": box, "score": score}
            for category, box, score in zip(categories.tolist(), boxes.tolist(), scores.tolist(), strict=True)
        ]
    return results


def write_results(results: Sequence[Result], path: str | Path) -> Path:
    """Write results as a COCO results json (a list of result dicts) that ``COCO.loadRes`` reads.

    The caller decides whether ``path`` may be replaced (:mod:`detlit.common.outputs`).
    """
    path = Path(path)
    write_text(path, json.dumps(list(results), allow_nan=False))
    return path


# --- reading results back --------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _load_results(path: Path, records: Sequence[ImageRecord]) -> list[Any]:
    """The results of a file: a COCO results list, or predict's predictions.json with its image ids
    replaced by those of the ground-truth images of the same file names."""
    problem = not_a_file(path)  # a named pipe or a device would block, or never end
    if problem is not None:
        raise DataError(f"{path} {problem}; pass the path of a COCO results json")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path} is not valid JSON ({err}); pass a COCO results json") from err
    if isinstance(data, dict) and isinstance(data.get("images"), list) and isinstance(data.get("annotations"), list):
        return _by_file_name(path, data, records)
    if not isinstance(data, list):
        raise DataError(
            f"{path} holds a JSON {type(data).__name__}, not a list of results; a COCO results json is a "
            "list of {image_id, category_id, bbox, score} objects (or the predictions.json of python -m detlit.predict)"
        )
    return data


def _by_file_name(path: Path, data: dict[str, Any], records: Sequence[ImageRecord]) -> list[Any]:
    ground_truth = {Path(r.file_name).as_posix(): r.id for r in records}
    ids: dict[Any, int] = {}
    for image in data["images"]:
        name = Path(str(image.get("file_name", ""))).as_posix() if isinstance(image, dict) else ""
        if name not in ground_truth:
            raise DataError(
                f"{path}: image {name!r} is not in the ground truth; evaluate the predictions against the "
                "annotation json of the images they were made on (file names are matched)"
            )
        ids[image.get("id")] = ground_truth[name]
    results = []
    for item in data["annotations"]:
        result = dict(item) if isinstance(item, dict) else item
        if isinstance(result, dict) and result.get("image_id") in ids:
            result["image_id"] = ids[result["image_id"]]
        results.append(result)
    return results


def _check_result(path: Path, index: int, item: Any) -> None:
    fields_ok = (
        isinstance(item, dict)
        and isinstance(item.get("image_id"), int)
        and isinstance(item.get("category_id"), int)
        and _is_number(item.get("score"))
        and isinstance(item.get("bbox"), list)
        and len(item["bbox"]) == 4
        and all(_is_number(v) for v in item["bbox"])
    )
    if not fields_ok:
        raise DataError(
            f"{path}: result {index} is {item!r}; each result needs an integer image_id and category_id, "
            "a bbox [x, y, width, height] and a score"
        )
    if not all(math.isfinite(v) for v in (item["score"], *item["bbox"])):
        raise DataError(
            f"{path}: result {index} has score {item['score']!r} and bbox {item['bbox']!r}; scores and boxes must be "
            "finite numbers (no NaN or infinity): fix or drop that result"
        )


def _warn_negative_boxes(path: Path, items: Sequence[dict[str, Any]]) -> None:
    """COCOeval takes a negative width or height as it is (a negative area): say so, once."""
    bad = [i for i, item in enumerate(items) if item["bbox"][2] < 0 or item["bbox"][3] < 0]
    if bad:
        log.warning(
            "%s: %d result(s) have a negative width or height (first: result %d, bbox %s); they match no object "
            "and count as false detections: write boxes as [x, y, width, height]",
            path,
            len(bad),
            bad[0],
            items[bad[0]]["bbox"],
        )


def read_results(
    path: str | Path, records: Sequence[ImageRecord], label_map: LabelMap
) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]]]:
    """The preds and targets of DetectionMetrics for a results file and its ground truth.

    Args:
        path: COCO results json (a list of ``{image_id, category_id, bbox, score}``), or a
            ``predictions.json`` of ``python -m detlit.predict`` (its images are found in the
            ground truth by file name).
        records: the ground-truth images (``detlit.data.coco.load_coco(...).images``); every one of
            them is evaluated, with or without results.
        label_map: original category id <-> contiguous label of the ground truth.

    Returns:
        ``(preds, targets)``, one entry per record in ascending image id order (COCOeval's);
        boxes XYXY float64 in original pixels; an image's detections in the order of the file.

    Raises:
        DataError: the file is not a results file, a result names an image that the ground truth
            does not have, or no result has a category of the ground truth. Results of other
            categories are left out with a warning that counts them (pycocotools ignores them).
    """
    path = Path(path)
    items = _load_results(path, records)
    records = sorted(records, key=lambda record: record.id)
    position = {record.id: i for i, record in enumerate(records)}
    known = set(label_map.category_ids)
    unknown: Counter[int] = Counter()
    per_image: list[list[int]] = [[] for _ in records]
    for index, item in enumerate(items):
        _check_result(path, index, item)
        if item["image_id"] not in position:
            raise DataError(
                f"{path}: result {index} is for image_id {item['image_id']}, which is not in the ground truth; "
                "evaluate the file against the annotation json of the images it was predicted on"
            )
        if item["category_id"] not in known:
            unknown[item["category_id"]] += 1
            continue
        per_image[position[item["image_id"]]].append(index)
    if unknown:
        log.warning(
            "%s: %d result(s) of category ids the ground truth does not have were left out, as pycocotools "
            "leaves them out (%s; the ground truth's categories: %s)",
            path,
            sum(unknown.values()),
            ", ".join(f"{cid}: {count}" for cid, count in sorted(unknown.items())),
            sorted(known),
        )
        if sum(unknown.values()) == len(items):
            raise DataError(
                f"{path}: none of its {len(items)} results has a category of the ground truth ({sorted(known)}); "
                "evaluate the file against the annotation json its model was trained on"
            )
    _warn_negative_boxes(path, items)

    label_of = {cid: label for label, cid in enumerate(label_map.category_ids)}
    preds = []
    for indices in per_image:
        chosen = [items[i] for i in indices]
        xywh = np.asarray([r["bbox"] for r in chosen], np.float64).reshape(-1, 4)
        preds.append(
            {
                "boxes": torch.from_numpy(np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)),
                "scores": torch.tensor([float(r["score"]) for r in chosen], dtype=torch.float64),
                "labels": torch.tensor([label_of[r["category_id"]] for r in chosen], dtype=torch.int64),
            }
        )
    return preds, [eval_target(record, label_map) for record in records]
