"""The 12 COCO numbers and per-class AP: COCOeval (``faster_coco_eval``, float64) on flat arrays.

``faster_coco_eval``'s ``COCOeval`` gives the numbers of pycocotools' ``COCOeval.stats`` to the
last digit, several times faster. It runs once with every label as a category; per-class numbers
are slices of its ``eval["precision"]`` / ``eval["recall"]``, averaged as ``summarize`` averages.
Undefined values (COCOeval's ``-1``: no object of a class, or of a size range) become NaN.
"""

from __future__ import annotations

import contextlib
import io
import logging

import numpy as np

from detlit.evaluation.matching import DetectionArrays

# faster_coco_eval prints its whole summary at INFO level on every computation.
logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)

# The names of COCOeval.stats, in its order (logged as ``val/map``, ...: see detlit.evaluation.evaluation.OVERALL).
COCO_NAMES = (
    "map",
    "map50",
    "map75",
    "map_small",
    "map_medium",
    "map_large",
    "mar1",
    "mar10",
    "mar100",
    "mar_small",
    "mar_medium",
    "mar_large",
)
COCO_TITLES = {
    "map": "AP @[.50:.95]",
    "map50": "AP @.50",
    "map75": "AP @.75",
    "map_small": "AP small",
    "map_medium": "AP medium",
    "map_large": "AP large",
    "mar1": "AR max 1",
    "mar10": "AR max 10",
    "mar100": "AR max 100",
    "mar_small": "AR small",
    "mar_medium": "AR medium",
    "mar_large": "AR large",
}
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)


def nan_for_undefined(values: np.ndarray) -> np.ndarray:
    """COCOeval's ``-1`` ("nothing to measure") as NaN."""
    return np.where(values == -1, np.nan, values)


def run_cocoeval(data: DetectionArrays, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """COCOeval (default parameters, every label a category) on the arrays.

    Returns:
        ``stats`` (12,), ``eval["precision"]`` [T, R, K, A, M], ``eval["recall"]`` [T, K, A, M]
        and the IoU thresholds T.
    """
    from faster_coco_eval import COCO, COCOeval_faster

    if data.num_images == 0:
        precision = -np.ones((10, 101, num_classes, 4, 3))
        return -np.ones(12), precision, -np.ones((10, num_classes, 4, 3)), IOU_THRESHOLDS
    images = [{"id": i} for i in range(data.num_images)]
    categories = [{"id": k, "name": str(k)} for k in range(num_classes)]
    gt_boxes, dt_boxes = data.gt_box.tolist(), data.det_box.tolist()
    # Annotation ids start at 1: COCOeval marks "unmatched" with id 0.
    gt_annotations = [
        {"id": i, "image_id": image, "category_id": label, "bbox": box, "area": area, "iscrowd": crowd}
        for i, image, label, box, area, crowd in zip(
            range(1, len(gt_boxes) + 1),
            data.gt_image.tolist(),
            data.gt_label.tolist(),
            gt_boxes,
            data.gt_area.tolist(),
            data.gt_crowd.astype(int).tolist(),
            strict=True,
        )
    ]
    # As COCO.loadRes makes them: area = w * h, never crowd.
    dt_annotations = [
        {"id": i, "image_id": image, "category_id": label, "bbox": box, "score": score, "area": area, "iscrowd": 0}
        for i, image, label, box, score, area in zip(
            range(1, len(dt_boxes) + 1),
            data.det_image.tolist(),
            data.det_label.tolist(),
            dt_boxes,
            data.det_score.tolist(),
            (data.det_box[:, 2] * data.det_box[:, 3]).tolist(),
            strict=True,
        )
    ]
    ground_truth, detections = COCO(), COCO()
    ground_truth.dataset = {"images": images, "annotations": gt_annotations, "categories": categories}
    detections.dataset = {"images": images, "annotations": dt_annotations, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth.createIndex()
        detections.createIndex()
        evaluator = COCOeval_faster(ground_truth, detections, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return (
        np.asarray(evaluator.stats[:12], np.float64),
        np.asarray(evaluator.eval["precision"], np.float64),
        np.asarray(evaluator.eval["recall"], np.float64),
        np.asarray(evaluator.params.iouThrs, np.float64),
    )


def per_class_ap(
    precision: np.ndarray, recall: np.ndarray, iou_thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AP, AP50 and AR100 per class, averaged exactly as COCOeval.summarize averages them.

    Area "all", maxDets 100; the mean is over the entries that are not -1 (COCOeval's "no
    object of this class"), NaN when every entry is -1.
    """

    def mean_defined(values: np.ndarray) -> np.ndarray:
        # values: [..., K]; per class, np.mean of the entries > -1, as summarize computes it
        out = np.full(values.shape[-1], np.nan)
        for k in range(values.shape[-1]):
            defined = values[..., k][values[..., k] > -1]
            if defined.size:
                out[k] = np.mean(defined)
        return out

    iou50 = int(np.flatnonzero(iou_thresholds == 0.5)[0])
    ap = mean_defined(precision[:, :, :, 0, -1])
    ap50 = mean_defined(precision[iou50, :, :, 0, -1])
    ar100 = mean_defined(recall[:, :, 0, -1])
    return ap, ap50, ar100
