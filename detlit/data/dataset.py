"""Stage [4]: one COCO image record -> one detectron2 input dict.

The dict follows GeneralizedRCNN's contract (design.md section 2):

* ``image``: ``torch.uint8`` (C, H, W) of the resized image, channels in the model's
  ``INPUT.FORMAT`` order (BGR for model-zoo configs);
* ``instances``: ``Instances`` with ``gt_boxes`` (XYXY, resized-image pixels),
  ``gt_classes`` (int64 contiguous labels) and ``gt_crowd`` (bool): crowd regions are ignore
  regions for the heads of ``detlit.model.heads``, never objects;
* ``height``, ``width``: the original image size, so predictions come back in original pixels;
* ``image_id``: the COCO image id; ``file_name``: the image path;
* ``boxes_dropped``: how many objects (crowd regions not counted) the transform removed: those
  that entered it minus those that came out. Objects a crop or affine move pushed below the
  pipeline's ``min_visibility``, or shrank below its ``min_area``, end here; annotations that were
  empty or outside the image in the json never enter the transform and are not counted.

``boxes_dropped`` counts the boxes augmentation removed; ``skipped_images`` names files that
could not be read and were replaced by this one (see ``on_unreadable``).

For evaluation it also carries ``target``: the image's ground truth in original pixels as
torchmetrics expects it (``boxes`` XYXY, ``labels``, ``iscrowd``, ``area`` from the json), so
metrics are computed against the json itself, not against resized boxes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import albumentations as A
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from detlit.data.coco import ImageRecord, LabelMap
from detlit.compat import Boxes, Instances
from detlit.errors import DataError

log = logging.getLogger(__name__)


def read_image(path: Path) -> np.ndarray:
    """Decode an image as RGB uint8 (H, W, 3) with its EXIF orientation applied."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        return np.asarray(image.convert("RGB"))


def eval_target(record: ImageRecord, label_map: LabelMap) -> dict[str, torch.Tensor]:
    """Ground truth of one image in original pixels, as ``detlit.evaluation.metric.DetectionMetrics`` takes it.

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


def _training_boxes(
    record: ImageRecord, label_map: LabelMap, height: int, width: int
) -> tuple[np.ndarray, list[int], list[bool]]:
    """XYXY boxes, labels and crowd flags, clipped to the image, empty boxes dropped."""
    boxes, labels, crowd = [], [], []
    for annotation in record.annotations:
        x1, y1, x2, y2 = annotation.xyxy
        x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
        y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
        if np.isfinite([x1, y1, x2, y2]).all() and x2 > x1 and y2 > y1:
            boxes.append((x1, y1, x2, y2))
            labels.append(label_map.label(annotation.category_id))
            crowd.append(annotation.iscrowd)
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4), labels, crowd


class DetectionDataset(Dataset[dict[str, Any]]):
    """COCO image records as detectron2 input dicts.

    Args:
        records: the images to serve, with their annotations.
        image_root: folder that ``file_name`` entries are relative to.
        label_map: COCO category id <-> contiguous label.
        transform: Albumentations pipeline with ``pascal_voc`` boxes and ``labels`` and ``crowd`` fields.
        image_format: channel order the model expects (``BGR`` or ``RGB``).
        on_unreadable: what an image file that cannot be read (missing, corrupt) becomes:
            ``replace`` - the next readable image takes its place (training: batches keep their
            size, and every process its number of steps), ``mark`` - a ``{"skipped": path}`` dict
            that evaluation leaves out, or ``raise`` - a DataError naming the file.
        targets: add ``target`` (the ground truth in original pixels, for metrics) to each item.
            Training leaves it out: every tensor an item holds costs a shared-memory transfer
            from a loader worker.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        image_root: Path,
        label_map: LabelMap,
        transform: A.Compose,
        image_format: str = "BGR",
        on_unreadable: Literal["replace", "mark", "raise"] = "raise",
        targets: bool = True,
    ):
        if image_format not in ("BGR", "RGB"):
            raise ValueError(f"image_format must be 'BGR' or 'RGB', not '{image_format}'")
        self.on_unreadable = on_unreadable
        self.records = list(records)
        self.image_root = Path(image_root)
        self.label_map = label_map
        self.transform = transform
        self.image_format = image_format
        self.targets = targets

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self.records) <= index < len(self.records):
            raise IndexError(f"index {index} out of range for {len(self.records)} images")
        skipped: list[str] = []
        for attempt in range(len(self.records)):
            record = self.records[(index + attempt) % len(self.records)]
            path = self.image_root / record.file_name
            try:
                image = read_image(path)
            except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
                if self.on_unreadable == "raise":
                    raise DataError(
                        f"image {path} cannot be read ({type(err).__name__}: {err}); repair or remove it "
                        "(python -m detlit.check --fix), or set data.strict_images=false to skip such files"
                    ) from err
                log.warning("skipping unreadable image %s (%s: %s)", path, type(err).__name__, err)
                skipped.append(str(path))
                if self.on_unreadable == "mark":
                    return {"skipped": str(path), "image_id": record.id}
                continue
            item = self._item(record, path, image)
            item["skipped_images"] = skipped
            return item
        raise DataError(f"none of the {len(self.records)} images under {self.image_root} can be read")

    def _item(self, record: ImageRecord, path: Path, image: np.ndarray) -> dict[str, Any]:
        height, width = image.shape[:2]
        boxes, labels, crowd = _training_boxes(record, self.label_map, height, width)
        out = self.transform(image=image, bboxes=boxes, labels=labels, crowd=crowd)
        kept_crowd = np.asarray(out["crowd"], dtype=bool).reshape(-1)
        pixels = out["image"]
        if self.image_format == "BGR":
            pixels = pixels[:, :, ::-1]
        instances = Instances(pixels.shape[:2])
        instances.gt_boxes = Boxes(torch.as_tensor(np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)))
        instances.gt_classes = torch.as_tensor(np.asarray(out["labels"], dtype=np.int64).reshape(-1))
        instances.gt_crowd = torch.as_tensor(kept_crowd)
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))),
            "instances": instances,
            "height": height,
            "width": width,
            "image_id": record.id,
            "file_name": str(path),
            "boxes_dropped": crowd.count(False) - int((~kept_crowd).sum()),
        }
        if self.targets:
            item["target"] = eval_target(record, self.label_map)
        return item


def collate(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """detectron2 models take a list of dicts: batching (padding) happens inside the model."""
    return batch
