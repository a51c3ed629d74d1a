"""References that the tests and the benchmark hold detlit against: pycocotools itself, and seeded
synthetic detections. Not part of detlit: nothing in the package imports this module.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from detlit.data.coco import LabelMap
from detlit.evaluation.cocoeval import nan_for_undefined
from detlit.evaluation.matching import xyxy_to_xywh

Result = dict[str, Any]


def synthetic_data(
    num_images: int = 5000,
    detections_per_image: int = 100,
    num_classes: int = 80,
    objects_per_image: int = 7,
    seed: int = 0,
) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]]]:
    """Seeded predictions and targets (float64 XYXY boxes) that look like a detector's output.

    Each image has 1 to ``2 * objects_per_image - 1`` objects (about 1 in 50 a crowd region) in
    1000 x 800 pixels; detections are jittered copies of objects (some with a wrong class) and
    random boxes, with random scores.
    """
    rng = np.random.default_rng(seed)
    preds, targets = [], []
    for _ in range(num_images):
        n = int(rng.integers(1, 2 * objects_per_image))
        xy = rng.uniform(0, 900, (n, 2))
        wh = rng.uniform(4, 300, (n, 2)) * rng.choice([0.1, 0.4, 1.0], (n, 1))
        gt = np.hstack([xy, xy + wh])
        labels = rng.integers(0, num_classes, n)
        crowd = rng.random(n) < 0.02
        copies = rng.integers(0, n, detections_per_image)
        jitter = rng.normal(0, 0.08, (detections_per_image, 4)) * np.tile(wh[copies], 2)
        boxes = gt[copies] + jitter
        random = rng.random(detections_per_image) < 0.4
        rxy = rng.uniform(0, 900, (int(random.sum()), 2))
        boxes[random] = np.hstack([rxy, rxy + rng.uniform(4, 200, (int(random.sum()), 2))])
        det_labels = np.where(
            rng.random(detections_per_image) < 0.8,
            labels[copies],
            rng.integers(0, num_classes, detections_per_image),
        )
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        preds.append(
            {
                "boxes": torch.from_numpy(boxes),
                "scores": torch.from_numpy(rng.random(detections_per_image)),
                "labels": torch.from_numpy(det_labels),
            }
        )
        targets.append(
            {
                "boxes": torch.from_numpy(gt),
                "labels": torch.from_numpy(labels),
                "iscrowd": torch.from_numpy(crowd.astype(np.int64)),
                "area": torch.from_numpy(wh[:, 0] * wh[:, 1]),
            }
        )
    return preds, targets


def pycocotools_stats(ground_truth: dict[str, Any], results: Sequence[dict[str, Any]]) -> np.ndarray:
    """pycocotools' own ``COCOeval`` (bbox, default parameters) on COCO json dicts: its 12 stats,
    NaN where it gives -1. The reference that DetectionMetrics is checked and timed against.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # summarize() prints
        coco = COCO()
        coco.dataset = ground_truth
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes([dict(r) for r in results]), "bbox")  # loadRes edits its input
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return nan_for_undefined(np.asarray(evaluator.stats[:12], np.float64))


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
        boxes = xyxy_to_xywh(tgt["boxes"].detach().cpu().to(torch.float64).numpy())
        labels = tgt["labels"].detach().cpu().numpy().astype(np.int64)
        crowd = tgt.get("iscrowd", torch.zeros(len(labels))).detach().cpu().numpy().astype(np.int64)
        area = tgt.get("area", torch.zeros(len(labels))).detach().cpu().to(torch.float64).numpy()
        area = np.where(area > 0, area, boxes[:, 2] * boxes[:, 3])
        for category, box, a, c in zip(
            np.asarray(label_map.category_ids, np.int64)[labels].tolist(),
            boxes.tolist(),
            area.tolist(),
            crowd.tolist(),
            strict=True,
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
        det_boxes = xyxy_to_xywh(pred["boxes"].detach().cpu().to(torch.float64).numpy())
        categories = np.asarray(label_map.category_ids, np.int64)[
            pred["labels"].detach().cpu().numpy().astype(np.int64)
        ]
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


def default_predictor(module: Any, folder: Any, device: str = "cpu") -> Any:
    """detectron2's own ``DefaultPredictor`` on a :class:`~detlit.model.module.DetectionModule`'s
    weights and config (saved into ``folder`` as detectron2 loads them)."""
    from pathlib import Path

    from detectron2.engine import DefaultPredictor

    import detlit.compat  # noqa: F401  (prepares detectron2 for today's Pillow)

    weights = Path(folder) / "model.pth"
    torch.save({"model": module.model.state_dict()}, weights)
    cfg = module.cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = str(weights)
    cfg.MODEL.DEVICE = device
    cfg.freeze()
    return DefaultPredictor(cfg)


def sahi_model(module: Any, folder: Any, confidence: float) -> Any:
    """SAHI's detectron2 model class around :func:`default_predictor` (what SAHI's users run),
    keeping detections scoring at least ``confidence``."""
    from sahi.models.detectron2 import Detectron2DetectionModel

    model = Detectron2DetectionModel(confidence_threshold=confidence, device="cpu", load_at_init=False)
    model.model = default_predictor(module, folder)
    model.category_mapping = {str(label): name for label, name in enumerate(module.hparams.class_names)}
    return model
