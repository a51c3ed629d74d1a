"""Stage 4, records to model inputs: one COCO image record -> one detectron2 input dict.

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
from torch.utils.data import Dataset, get_worker_info

from detlit.compat import Boxes, Instances
from detlit.data.coco import ImageRecord, LabelMap
from detlit.data.images import CHANNEL_ORDERS, READ_ERRORS, ImageTooLarge, read_image, to_model_image
from detlit.data.records import as_records
from detlit.data.targets import eval_target
from detlit.errors import ConfigError, DataError

log = logging.getLogger(__name__)


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

    The records are kept as columns (:class:`~detlit.data.records.Records`): loader workers share
    them with the main process, page for page, however many items they build.

    Args:
        records: the images to serve, with their annotations.
        image_root: folder that ``file_name`` entries are relative to.
        label_map: COCO category id <-> contiguous label.
        transform: Albumentations pipeline with ``pascal_voc`` boxes and ``labels`` and ``crowd`` fields.
        image_format: channel order the model expects (``BGR`` or ``RGB``).
        on_unreadable: what an image file that cannot be read (missing, corrupt, or of more pixels
            than :func:`~detlit.data.images.max_image_pixels`) becomes:
            ``replace`` - the next readable image takes its place (training: batches keep their
            size, and every process its number of steps), ``mark`` - a ``{"skipped": path}`` dict
            that evaluation leaves out, or ``raise`` - a DataError naming the file.
        targets: add ``target`` (the ground truth in original pixels, for metrics) to each item.
            Training leaves it out: every tensor an item holds costs a shared-memory transfer
            from a loader worker.
        augment_seed: the seed of the augmentations' random draws (with the process's rank, say):
            the main process and each loader worker draw from their own stream, seeded from it
            and the worker's number, so a run's augmentations are the same run after run.
            Albumentations' own default is a fresh random stream every time (None here too).
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
        augment_seed: Sequence[int] | None = None,
    ):
        if image_format not in CHANNEL_ORDERS:
            raise ValueError(f"image_format must be 'BGR' or 'RGB', not '{image_format}'")
        self.on_unreadable = on_unreadable
        self.records = as_records(records)
        self.image_root = Path(image_root)
        self.label_map = label_map
        self.transform = transform
        self.image_format = image_format
        self.targets = targets
        self.augment_seed = None if augment_seed is None else tuple(augment_seed)
        self._stream: int | None = None  # the loader worker (-1: the main process) the stream is seeded for

    def _seed_stream(self) -> None:
        """Seed the augmentations for this process once: the main process and each loader worker
        (whose copy of the dataset starts unseeded) draw from their own reproducible stream."""
        info = get_worker_info()
        worker = -1 if info is None else int(info.id)
        if self.augment_seed is None or worker == self._stream:
            return
        self._stream = worker
        entropy = [*self.augment_seed, worker + 1]
        self.transform.set_random_seed(int(np.random.SeedSequence(entropy).generate_state(1)[0]))

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
            except ConfigError:
                raise
            except READ_ERRORS as err:
                # An image of too many pixels is refused before it is decoded, and treated as an unreadable one.
                large = isinstance(err, ImageTooLarge)
                if self.on_unreadable == "raise":
                    fix = "" if large else "; repair or remove it (python -m detlit.check --fix)"
                    why = str(err) if large else f"image {path} cannot be read ({type(err).__name__}: {err})"
                    raise DataError(f"{why}{fix}, or set data.strict_images=false to skip such files") from err
                if large:
                    log.warning("skipping %s", err)
                else:
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
        self._seed_stream()
        height, width = image.shape[:2]
        boxes, labels, crowd = _training_boxes(record, self.label_map, height, width)
        out = self.transform(image=image, bboxes=boxes, labels=labels, crowd=crowd)
        kept_crowd = np.asarray(out["crowd"], dtype=bool).reshape(-1)
        pixels = out["image"]
        instances = Instances(pixels.shape[:2])
        instances.gt_boxes = Boxes(torch.as_tensor(np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)))
        instances.gt_classes = torch.as_tensor(np.asarray(out["labels"], dtype=np.int64).reshape(-1))
        if kept_crowd.any():  # most images have no crowd region; each tensor costs a worker a shared-memory transfer
            instances.gt_crowd = torch.as_tensor(kept_crowd)
        item = {
            "image": to_model_image(pixels, self.image_format),
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
