"""Stage [9]: COCO results json: predictions out, and results files back in for evaluation.

Out: detectron2 predictions (``Instances`` with ``pred_boxes`` XYXY in original pixels,
``scores``, contiguous ``pred_classes``) become COCO result dicts ``{"image_id", "category_id",
"bbox", "score"}`` with the ORIGINAL category id and an XYWH box, the format that
``pycocotools.coco.COCO.loadRes`` reads. Under DDP each process exports its own images;
:func:`gather_results` collects them, keeps every image once and sorts them.

In: :func:`read_results` turns a results json and the ground truth it belongs to into the
``preds`` / ``targets`` lists of :class:`detlit.evaluation.metric.DetectionMetrics`, so a results file can be
evaluated without a model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from detlit.data.coco import ImageRecord, LabelMap
from detlit.data.dataset import eval_target
from detlit.errors import ConfigError, DataError

if TYPE_CHECKING:
    from detlit.compat import Instances

# 1/100 pixel: far below what a detector resolves, changes no IoU by more than about
# 0.02 / (box side in pixels), and keeps the json small. Scores are written unrounded, since
# rounding them would turn distinct scores into ties and change the ranking that AP measures.
BOX_DECIMALS = 2

Result = dict[str, Any]


def _xywh(boxes: np.ndarray) -> np.ndarray:
    """XYXY -> XYWH, with the same float operations as torchvision's ``box_convert``."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)


def _category_ids(labels: np.ndarray, label_map: LabelMap) -> np.ndarray:
    bad = labels[(labels < 0) | (labels >= label_map.num_classes)]
    if bad.size:
        raise ValueError(f"label {int(bad[0])} is not one of the label map's {label_map.num_classes} classes")
    return np.asarray(label_map.category_ids, np.int64)[labels]


def coco_results(
    predictions: Sequence[Instances | dict[str, Any]],
    image_ids: Sequence[int],
    label_map: LabelMap,
    decimals: int | None = BOX_DECIMALS,
) -> list[Result]:
    """COCO result dicts of detectron2 predictions, one list for all images.

    Args:
        predictions: per image, ``Instances``, the model's ``{"instances": Instances}``, or a
            metric-style ``{"boxes", "scores", "labels"}`` dict; boxes XYXY in original image pixels.
        image_ids: the COCO image id of each prediction.
        label_map: contiguous label -> original category id.
        decimals: decimals kept of box coordinates (None: unrounded).

    Returns:
        ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` per detection, in the order
        of the images and, within an image, of the model's output.
    """
    if len(predictions) != len(image_ids):
        raise ValueError(f"{len(predictions)} predictions but {len(image_ids)} image ids")
    results: list[Result] = []
    for prediction, image_id in zip(predictions, image_ids, strict=True):
        if isinstance(prediction, dict) and "boxes" in prediction:
            xyxy, scores_t, labels_t = prediction["boxes"], prediction["scores"], prediction["labels"]
        else:
            instances = prediction["instances"] if isinstance(prediction, dict) else prediction
            xyxy, scores_t, labels_t = instances.pred_boxes.tensor, instances.scores, instances.pred_classes
        boxes = _xywh(torch.as_tensor(xyxy).detach().cpu().to(torch.float64).numpy().reshape(-1, 4))
        if decimals is not None:
            boxes = boxes.round(decimals)
        scores = torch.as_tensor(scores_t).detach().cpu().to(torch.float64).numpy()
        categories = _category_ids(torch.as_tensor(labels_t).detach().cpu().numpy().astype(np.int64), label_map)
        results += [
            {"image_id": int(image_id), "category_id": category, "bbox": box, "score": score}
            for category, box, score in zip(categories.tolist(), boxes.tolist(), scores.tolist(), strict=True)
        ]
    return results


def _sort_key(result: Result) -> tuple[Any, ...]:
    return result["image_id"], -result["score"], result["category_id"], result["bbox"]


def merge_ranks(per_rank: Sequence[Sequence[Result]]) -> list[Result]:
    """One list of the results of all processes, each image once, sorted.

    An image evaluated on several processes (a sampler that pads the last batches repeats
    images) keeps the results of the first process that has any for it. Sorted by image id, then
    descending score, category id and box, so the list does not depend on how images were dealt.
    """
    owner: dict[int, int] = {}
    for rank, results in enumerate(per_rank):
        for result in results:
            owner.setdefault(result["image_id"], rank)
    merged = [r for rank, results in enumerate(per_rank) for r in results if owner[r["image_id"]] == rank]
    return sorted(merged, key=_sort_key)


def gather_results(results: Sequence[Result]) -> list[Result]:
    """:func:`merge_ranks` of every process's results, on every process.

    Collective under ``torch.distributed``: every process must call it. Without an initialised
    process group (or with one process) it merges this process's results alone.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        per_rank: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(per_rank, list(results))
        return merge_ranks(per_rank)
    return merge_ranks([list(results)])


def write_results(results: Sequence[Result], path: str | Path, overwrite: bool = False) -> Path:
    """Write results as a COCO results json (a list of result dicts) that ``COCO.loadRes`` reads.

    Under DDP call it on one process (rank 0) with :func:`gather_results`' list.

    Raises:
        ConfigError: the file exists and ``overwrite`` is False.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} already exists; choose another output path or remove the file")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(list(results), allow_nan=False), encoding="utf-8")
    os.replace(partial, path)
    return path


# --- reading results back --------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _load_list(path: Path) -> list[Any]:
    if not path.is_file():
        raise DataError(f"{path} does not exist; pass the path of a COCO results json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path} is not valid JSON ({err}); pass a COCO results json") from err
    if not isinstance(data, list):
        raise DataError(
            f"{path} holds a JSON {type(data).__name__}, not a list of results; a COCO results json is a "
            "list of {image_id, category_id, bbox, score} objects"
        )
    return data


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


def read_results(
    path: str | Path, records: Sequence[ImageRecord], label_map: LabelMap
) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]]]:
    """The preds and targets of DetectionMetrics for a results json and its ground truth.

    Args:
        path: COCO results json (a list of ``{image_id, category_id, bbox, score}``).
        records: the ground-truth images (``detlit.data.coco.load_coco(...).images``); every one of
            them is evaluated, with or without results.
        label_map: original category id <-> contiguous label of the ground truth.

    Returns:
        ``(preds, targets)``, one entry per record in ascending image id order (COCOeval's);
        boxes XYXY float64 in original pixels; an image's detections in the order of the file.

    Raises:
        DataError: the file is not a results json, or a result names an image or a category
            that the ground truth does not have.
    """
    path = Path(path)
    items = _load_list(path)
    records = sorted(records, key=lambda record: record.id)
    position = {record.id: i for i, record in enumerate(records)}
    known = set(label_map.category_ids)
    per_image: list[list[int]] = [[] for _ in records]
    for index, item in enumerate(items):
        _check_result(path, index, item)
        if item["image_id"] not in position:
            raise DataError(
                f"{path}: result {index} is for image_id {item['image_id']}, which is not in the ground truth; "
                "evaluate the file against the annotation json of the images it was predicted on"
            )
        if item["category_id"] not in known:
            raise DataError(
                f"{path}: result {index} has category_id {item['category_id']}, which is not a category of the "
                f"ground truth ({sorted(known)}); evaluate the file against the annotation json its model was "
                "trained on"
            )
        per_image[position[item["image_id"]]].append(index)

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


def coco_ground_truth_and_results(
    preds: Sequence[dict[str, torch.Tensor]],
    targets: Sequence[dict[str, torch.Tensor]],
    label_map: LabelMap,
    image_ids: Sequence[int] | None = None,
) -> tuple[dict[str, Any], list[Result]]:
    """The COCO ground-truth dict and results list of DetectionMetrics inputs (for pycocotools).

    Boxes are converted to XYWH as torchmetrics converts them and are not rounded, so pycocotools
    sees the numbers DetectionMetrics evaluates. Targets' ``area`` <= 0 (or missing) becomes the
    box area, as in DetectionMetrics.

    Args:
        preds: per image, ``{"boxes"`` XYXY, ``"scores"``, ``"labels"}``.
        targets: per image, ``{"boxes"`` XYXY, ``"labels"``, optional ``"iscrowd"``, ``"area"}``.
        label_map: contiguous label -> category id (and name).
        image_ids: the image id of each entry; 1, 2, ... without.
    """
    ids = list(image_ids) if image_ids is not None else list(range(1, len(targets) + 1))
    annotations: list[Result] = []
    results: list[Result] = []
    for image_id, pred, tgt in zip(ids, preds, targets, strict=True):
        boxes = _xywh(tgt["boxes"].detach().cpu().to(torch.float64).numpy())
        labels = tgt["labels"].detach().cpu().numpy().astype(np.int64)
        crowd = tgt.get("iscrowd", torch.zeros(len(labels))).detach().cpu().numpy().astype(np.int64)
        area = tgt.get("area", torch.zeros(len(labels))).detach().cpu().to(torch.float64).numpy()
        area = np.where(area > 0, area, boxes[:, 2] * boxes[:, 3])
        for category, box, a, c in zip(
            _category_ids(labels, label_map).tolist(), boxes.tolist(), area.tolist(), crowd.tolist(), strict=True
        ):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": int(image_id),
                    "category_id": category,
                    "bbox": box,
                    "area": a,
                    "iscrowd": c,
                }
            )
        det_boxes = _xywh(pred["boxes"].detach().cpu().to(torch.float64).numpy())
        categories = _category_ids(pred["labels"].detach().cpu().numpy().astype(np.int64), label_map)
        scores = pred["scores"].detach().cpu().to(torch.float64).numpy()
        results += [
            {"image_id": int(image_id), "category_id": category, "bbox": box, "score": score}
            for category, box, score in zip(categories.tolist(), det_boxes.tolist(), scores.tolist(), strict=True)
        ]
    ground_truth = {
        "images": [{"id": int(i)} for i in ids],
        "annotations": annotations,
        "categories": [
            {"id": cid, "name": name} for cid, name in zip(label_map.category_ids, label_map.names, strict=True)
        ],
    }
    return ground_truth, results
