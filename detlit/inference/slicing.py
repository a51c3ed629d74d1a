"""Sliced inference: a large image as overlapping tiles at full resolution, and the merge of their detections.

A detector resizes every image to its test size (``min_size_test``), so a 20 px object in a 4000 px
photo reaches the model as 4 px and is lost. Sliced inference cuts the image into tiles of
``size`` pixels (the geometry of :mod:`detlit.data.windows`, the one tiled training data uses),
runs the model on each tile as on an image of its own (so a tile is resized to the test size:
objects grow by ``min_size_test / size``), maps every tile's boxes back to the image's pixels,
optionally adds the detections of the whole image (for objects larger than a tile), and merges
the overlapping detections of one object into one:

* ``nms``: class-aware non-maximum suppression: the highest-scoring box of a group stays, the
  others go;
* ``greedynmm``: greedy non-maximum merging, class-aware: the highest-scoring box absorbs the
  boxes that overlap it (their union becomes its box; its score stays the highest), so an object
  cut by a tile border comes out whole.

Two boxes overlap when their intersection over the smaller box (``ios``: a part of an object cut
by a tile border lies inside the whole) or over their union (``iou``) is at least
``match_threshold``. Names, defaults and operations are SAHI's (``get_sliced_prediction``:
``postprocess_type`` GREEDYNMM or NMS, ``postprocess_match_metric`` IOS, threshold 0.5,
``perform_standard_pred``), and so is the order in which boxes are visited (score, then x1, y1,
x2, y2), so detlit's sliced detections and SAHI's agree on the same model (``tests/test_slicing.py``
checks it against SAHI itself). The :class:`~detlit.inference.predictor.Predictor` runs the tiles
in batches and applies the per-class score thresholds after merging.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass
from typing import Any, Literal, TypeAlias, get_args

import numpy as np
import torch

from detlit.data.windows import Window, check_tiling, windows
from detlit.errors import ConfigError
from detlit.model.detections import Detections

Merge: TypeAlias = Literal["greedynmm", "nms"]
Match: TypeAlias = Literal["ios", "iou"]


@dataclass(frozen=True)
class Slicing:
    """How sliced inference cuts images and merges detections (see the module docstring).

    Attributes:
        size: tile side, in pixels of the original image.
        overlap: overlap of neighbouring tiles, a fraction of ``size``.
        full_image: also run the model on the whole image (resized as without slicing), when it is
            cut into more than one tile.
        merge: ``greedynmm`` or ``nms``.
        match: ``ios`` or ``iou``, the overlap measure of two detections.
        match_threshold: two detections of one class overlapping at least this much are one object.
    """

    size: int
    overlap: float = 0.2
    full_image: bool = True
    merge: Merge = "greedynmm"
    match: Match = "ios"
    match_threshold: float = 0.5

    def __post_init__(self) -> None:
        check_tiling(self.size, self.overlap, option="slice size")
        if self.merge not in get_args(Merge):
            raise ConfigError(f"slice merge '{self.merge}' is unknown; use one of {', '.join(get_args(Merge))}")
        if self.match not in get_args(Match):
            raise ConfigError(f"slice match '{self.match}' is unknown; use one of {', '.join(get_args(Match))}")
        threshold = self.match_threshold
        if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and 0.0 < threshold <= 1.0):
            raise ConfigError(f"slice match threshold {threshold!r} is not above 0 and at most 1; 0.5 is usual")

    def windows(self, height: int, width: int) -> list[Window]:
        """The tiles of a ``height`` x ``width`` image."""
        return windows(height, width, self.size, self.overlap)

    def as_json(self) -> dict[str, Any]:
        """The settings, as recorded in predictions.json, metrics.json and the service's ``/info``."""
        return asdict(self)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Slicing | None:
        """The slicing of a command's ``--slice*`` options (:func:`~detlit.common.command.add_slicing`);
        None without ``--slice``."""
        if args.slice is None:
            return None
        return cls(
            size=args.slice,
            overlap=args.slice_overlap,
            full_image=args.slice_full_image,
            merge=args.slice_merge,
            match=args.slice_match,
            match_threshold=args.slice_match_threshold,
        )


def merge_detections(detections: Detections, slicing: Slicing) -> Detections:
    """One detection per object: the tiles' detections (in the image's pixels) merged class by class.

    Returns the kept (and, with ``greedynmm``, grown) detections, highest score first.
    """
    if len(detections.scores) == 0:
        return detections
    boxes = detections.boxes.detach().cpu().to(torch.float64).numpy()
    scores = detections.scores.detach().cpu().to(torch.float64).numpy()
    labels = detections.labels.detach().cpu().numpy()
    kept_boxes, kept_scores, kept_labels = [], [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        merged_boxes, merged_scores = _merge_class(boxes[members], scores[members], slicing)
        kept_boxes.append(merged_boxes)
        kept_scores.append(merged_scores)
        kept_labels.append(np.full(len(merged_scores), label, dtype=np.int64))
    all_scores = np.concatenate(kept_scores)
    order = np.argsort(-all_scores, kind="stable")
    return Detections(
        torch.from_numpy(np.concatenate(kept_boxes)[order]).to(detections.boxes.dtype),
        torch.from_numpy(all_scores[order]).to(detections.scores.dtype),
        torch.from_numpy(np.concatenate(kept_labels)[order]).to(detections.labels.dtype),
    )


def _merge_class(boxes: np.ndarray, scores: np.ndarray, slicing: Slicing) -> tuple[np.ndarray, np.ndarray]:
    """The detections of one class after NMS or greedy NMM; boxes (N, 4) and scores (N,), float64.

    As SAHI does it: boxes are visited by score, ties by x1, y1, x2, y2, and which boxes a kept box
    takes is decided in float32 (SAHI's overlap matrix); with ``greedynmm`` each of them is merged
    into the kept box, growing it, if the grown box still overlaps it enough, in float64 (SAHI's
    ``has_match``). Each kept box is compared with the boxes after it only: memory stays linear in
    the number of detections, where a full overlap matrix of 10,000 detections takes 400 MB.
    """
    boxes32, scores32 = boxes.astype(np.float32), scores.astype(np.float32)
    order = np.lexsort((boxes32[:, 3], boxes32[:, 2], boxes32[:, 1], boxes32[:, 0], -scores32))
    areas32 = (boxes32[:, 2] - boxes32[:, 0]) * (boxes32[:, 3] - boxes32[:, 1])
    threshold = slicing.match_threshold
    taken = np.zeros(len(scores), dtype=bool)
    out_boxes, out_scores = [], []
    for position, index in enumerate(order):
        if taken[index]:
            continue
        later = order[position + 1 :]
        later = later[~taken[later]]
        overlaps = _overlap(boxes32[index], areas32[index], boxes32[later], areas32[later], slicing.match)
        matched = later[overlaps >= threshold]
        taken[matched] = True
        box, score = boxes[index].copy(), scores[index]
        if slicing.merge == "greedynmm":
            for other in matched:
                area = (box[2] - box[0]) * (box[3] - box[1])
                other_box = boxes[other : other + 1]
                other_area = (other_box[:, 2] - other_box[:, 0]) * (other_box[:, 3] - other_box[:, 1])
                if _overlap(box, area, other_box, other_area, slicing.match)[0] >= threshold:
                    box = np.concatenate((np.minimum(box[:2], other_box[0, :2]), np.maximum(box[2:], other_box[0, 2:])))
                    score = max(score, scores[other])
        out_boxes.append(box)
        out_scores.append(score)
    return np.asarray(out_boxes, dtype=np.float64).reshape(-1, 4), np.asarray(out_scores, dtype=np.float64)


def _overlap(box: np.ndarray, area: Any, others: np.ndarray, other_areas: np.ndarray, match: Match) -> np.ndarray:
    """Overlap of one box with each of ``others``, in their dtype: intersection over the smaller area
    (``ios``) or over the union (``iou``); 0 where the denominator is 0 (degenerate boxes)."""
    zero = np.zeros((), dtype=others.dtype)
    width = np.maximum(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), zero)
    height = np.maximum(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), zero)
    inter = width * height
    denominator = np.minimum(area, other_areas) if match == "ios" else area + other_areas - inter
    return np.divide(inter, denominator, out=np.zeros_like(inter), where=denominator > 0)


def shifted(detections: Detections, window: Window) -> Detections:
    """A tile's detections (in its pixels) moved into the image's pixels."""
    offset = torch.tensor([window.x0, window.y0, window.x0, window.y0], dtype=detections.boxes.dtype)
    return Detections(detections.boxes + offset, detections.scores, detections.labels)


def concatenated(parts: list[Detections]) -> Detections:
    """The detections of several tiles as one set."""
    return Detections(
        torch.cat([p.boxes.reshape(-1, 4) for p in parts]),
        torch.cat([p.scores for p in parts]),
        torch.cat([p.labels for p in parts]),
    )
