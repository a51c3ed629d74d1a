"""Stage [8]: detection metrics (COCO mAP family through torchmetrics)."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torchmetrics.detection import MeanAveragePrecision

from detlit.compat import Instances

# faster_coco_eval prints its whole summary at INFO level on every computation.
logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)

# torchmetrics key -> logged name (without the stage prefix)
COCO_KEYS = {
    "map": "map",
    "map_50": "map50",
    "map_75": "map75",
    "map_small": "map_small",
    "map_medium": "map_medium",
    "map_large": "map_large",
    "mar_1": "mar1",
    "mar_10": "mar10",
    "mar_100": "mar100",
    "mar_small": "mar_small",
    "mar_medium": "mar_medium",
    "mar_large": "mar_large",
}


def coco_map() -> MeanAveragePrecision:
    """COCO bbox AP/AR with pycocotools-equal numbers (backend ``faster_coco_eval``)."""
    return MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="faster_coco_eval")


def as_prediction(instances: Instances) -> dict[str, torch.Tensor]:
    """detectron2 ``Instances`` (original pixels) -> torchmetrics prediction dict."""
    return {
        "boxes": instances.pred_boxes.tensor.detach().float(),
        "scores": instances.scores.detach().float(),
        "labels": instances.pred_classes.detach(),
    }


def coco_scalars(result: dict[str, Any]) -> dict[str, float]:
    """The scalar COCO numbers of a ``MeanAveragePrecision.compute()`` result, renamed."""
    return {name: float(result[key]) for key, name in COCO_KEYS.items()}
