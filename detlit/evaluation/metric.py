"""The metric: :class:`DetectionMetrics`, a torchmetrics ``Metric`` whose ``compute`` is an :class:`Evaluation`.

It collects detections and ground truth image by image (``update``), gathers them from every
process when computed (torchmetrics' synchronisation of its ``cat`` states: one all-gather per
state, any number of images per process), and evaluates them once:

* the 12 COCO numbers, equal to pycocotools' ``COCOeval.stats`` (:mod:`detlit.evaluation.cocoeval`);
* per class: AP, AP50, AR100, objects and detections;
* precision, recall and F1 per class and over all classes, at the F1-optimal score threshold of
  each class and at a fixed score threshold, PR curves and a detection confusion matrix, all from
  the one matching of :mod:`detlit.evaluation.matching` (:mod:`detlit.evaluation.counts`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from detlit.evaluation.evaluation import Evaluation
from detlit.evaluation.matching import DetectionArrays

# COCOeval's parameters, which DetectionMetrics fixes (torchmetrics' MeanAveragePrecision takes them).
FIXED_ARGUMENTS = frozenset(
    {
        "box_format",
        "iou_type",
        "iou_thresholds",
        "rec_thresholds",
        "max_detection_thresholds",
        "class_metrics",
        "extended_summary",
        "average",
        "backend",
    }
)
IMAGE_FIELDS = 3  # per image: detections, objects, COCO image id (-1: none)
DETECTION_FIELDS = 6  # x, y, w, h, score, label
OBJECT_FIELDS = 7  # x, y, w, h, label, crowd, area
STATES = ("images", "detections", "objects")

Item = dict[str, torch.Tensor]


def _xywh(boxes: torch.Tensor) -> torch.Tensor:
    """XYXY -> XYWH in the boxes' own dtype (torchvision's ``box_convert``), then float64."""
    boxes = boxes.detach().reshape(-1, 4)
    return torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).to(torch.float64)


def _column(values: torch.Tensor) -> torch.Tensor:
    return values.detach().reshape(-1, 1).to(torch.float64)


def _check_inputs(preds: Sequence[Item], target: Sequence[Item]) -> None:
    if len(preds) != len(target):
        raise ValueError(f"{len(preds)} predictions but {len(target)} targets; give one of each per image")
    for kind, items, keys in (
        ("prediction", preds, ("boxes", "scores", "labels")),
        ("target", target, ("boxes", "labels")),
    ):
        for index, item in enumerate(items):
            missing = [key for key in keys if not isinstance(item.get(key), torch.Tensor)]
            if missing:
                raise ValueError(f"{kind} {index} has no tensor {missing[0]!r}; each needs {', '.join(keys)}")
            count = item["boxes"].reshape(-1, 4).shape[0] if item["boxes"].numel() else 0
            for key in keys[1:]:
                if item[key].numel() != count:
                    raise ValueError(f"{kind} {index} has {count} boxes but {item[key].numel()} {key}")


class DetectionMetrics(Metric):
    """COCO AP/AR, precision/recall/F1, per-class numbers and confusion of a detector.

    ``update(preds, targets)`` takes, per image, predictions ``{"boxes"`` (XYXY, original pixels),
    ``"scores"``, ``"labels"}`` and targets ``{"boxes", "labels"}`` with optional ``"iscrowd"`` and
    ``"area"`` (``area`` <= 0 or missing: the box area is used), labels contiguous ``0..K-1``.
    Targets may also carry the COCO ``"image_id"``: when every image has one, images are evaluated
    in ascending id order, which is COCOeval's order and decides between equal scores of different
    images, so the numbers equal pycocotools' whatever order (or process) the images came in.
    ``compute()`` gathers the states of all processes and returns an :class:`Evaluation`. Boxes
    are evaluated as given: pass float64 for numbers that equal pycocotools on the json's float64
    boxes to the last digit.

    Args:
        class_names: name of each label ``0..K-1``.
        score_threshold: the fixed score threshold of the ``@thr`` numbers and the confusion matrix.
        iou_threshold: IoU at which precision, recall, F1, curves and the confusion matrix match.
        kwargs: torchmetrics ``Metric`` options (``sync_on_compute``, ``process_group``, ...).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        class_names: Sequence[str],
        score_threshold: float = 0.5,
        iou_threshold: float = 0.5,
        **kwargs: Any,
    ):
        fixed = FIXED_ARGUMENTS & kwargs.keys()
        if fixed:
            raise TypeError(f"DetectionMetrics fixes {sorted(fixed)} to COCOeval's defaults; leave them out")
        if not class_names:
            raise ValueError("class_names is empty; give the name of each class")
        if not math.isfinite(score_threshold):
            raise ValueError(f"score_threshold must be a finite number, not {score_threshold}")
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], not {iou_threshold}")
        super().__init__(**kwargs)
        # Flat float64 rows (see the *_FIELDS constants): a process sends each state whole, in one
        # all-gather, whatever number of images it holds.
        for name in STATES:
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self.class_names = tuple(class_names)
        self.score_threshold = float(score_threshold)
        self.iou_threshold = float(iou_threshold)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def update(self, preds: Sequence[Item], target: Sequence[Item]) -> None:
        """Add images: one prediction dict and one target dict each (see the class docstring)."""
        _check_inputs(preds, target)
        device = self.device
        for pred, truth in zip(preds, target, strict=True):
            labels = truth["labels"].reshape(-1)
            zeros = torch.zeros(len(labels), dtype=torch.float64, device=labels.device)
            image_id = truth.get("image_id", torch.tensor(-1))
            detections = torch.cat([_xywh(pred["boxes"]), _column(pred["scores"]), _column(pred["labels"])], dim=1)
            objects = torch.cat(
                [
                    _xywh(truth["boxes"]),
                    _column(labels),
                    _column(truth.get("iscrowd", zeros)),
                    _column(truth.get("area", zeros)),
                ],
                dim=1,
            )
            image = torch.tensor([len(detections), len(objects), float(image_id)], dtype=torch.float64)
            for name, rows in zip(STATES, (image, detections, objects), strict=True):
                state: list[torch.Tensor] = getattr(self, name)
                state.append(rows.reshape(-1).to(device))

    def sync(self, *args: Any, **kwargs: Any) -> None:
        """torchmetrics' ``sync``; a process without images sends empty float64 states."""
        for name in STATES:
            if isinstance(getattr(self, name), list) and not getattr(self, name):
                setattr(self, name, [torch.zeros(0, dtype=torch.float64, device=self.device)])
        super().sync(*args, **kwargs)

    def arrays(self) -> DetectionArrays:
        """The states (this process's, or all processes' inside ``compute``) as flat arrays."""
        images, detections, objects = (
            _rows(getattr(self, name), width) for name, width in zip(STATES, _WIDTHS, strict=True)
        )
        order = np.arange(len(images))
        image_ids = images[:, 2]
        if len(images) and (image_ids >= 0).all():
            # COCOeval takes images in ascending id order: number them so
            order[np.argsort(image_ids, kind="stable")] = np.arange(len(images))
        box, area = objects[:, :4], objects[:, 6]
        return DetectionArrays(
            num_images=len(images),
            det_image=np.repeat(order, images[:, 0].astype(np.int64)),
            det_box=detections[:, :4],
            det_score=detections[:, 4],
            det_label=detections[:, 5].astype(np.int64),
            gt_image=np.repeat(order, images[:, 1].astype(np.int64)),
            gt_box=box,
            gt_label=objects[:, 4].astype(np.int64),
            gt_crowd=objects[:, 5] != 0,
            # As torchmetrics hands objects to COCOeval: the given area, or the box area without one.
            gt_area=np.where(area > 0, area, box[:, 2] * box[:, 3]),
        )

    def compute(self) -> Evaluation:
        """The evaluation of everything given to ``update`` (on all processes)."""
        return Evaluation.from_arrays(self.arrays(), self.class_names, self.score_threshold, self.iou_threshold)


_WIDTHS = (IMAGE_FIELDS, DETECTION_FIELDS, OBJECT_FIELDS)


def _rows(state: list[torch.Tensor] | torch.Tensor, width: int) -> np.ndarray:
    flat = dim_zero_cat(state) if isinstance(state, list) and state else state
    if isinstance(flat, list):  # no image at all
        return np.zeros((0, width))
    return flat.detach().cpu().to(torch.float64).numpy().reshape(-1, width)
