"""The ground truth of one image as the metric takes it: original pixels, straight from the json."""

from __future__ import annotations

import torch

from detlit.data.coco import ImageRecord, LabelMap
from detlit.errors import DataError


def eval_target(record: ImageRecord, label_map: LabelMap) -> dict[str, torch.Tensor]:
    """Ground truth of one image in original pixels, as :class:`~detlit.evaluation.metric.DetectionMetrics` takes it.

    Crowd regions are included and flagged; float64 keeps the json's precision, so metrics equal
    pycocotools' on the json itself; ``image_id`` orders images as COCOeval does.

    Raises:
        DataError: an object's category is not in the label map.
    """
    annotations = record.annotations
    unknown = [a.category_id for a in annotations if a.category_id not in label_map.category_ids]
    if unknown:
        raise DataError(
            f"image {record.id} has an object of category {unknown[0]}, which the label map does not know; "
            "use the categories the model was trained on"
        )
    return {
        "boxes": torch.tensor([a.xyxy for a in annotations], dtype=torch.float64).reshape(-1, 4),
        "labels": torch.tensor([label_map.label(a.category_id) for a in annotations], dtype=torch.int64),
        "iscrowd": torch.tensor([int(a.iscrowd) for a in annotations], dtype=torch.int64),
        "area": torch.tensor([a.effective_area for a in annotations], dtype=torch.float64),
        "image_id": torch.tensor(record.id, dtype=torch.int64),
    }
