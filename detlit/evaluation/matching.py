"""The one matcher: detections against ground truth with COCOeval's rules.

Every number and picture that says whether a detection found an object comes from here: the
metric's precision / recall / F1, curves and confusion matrix (:mod:`detlit.evaluation.metric`),
the outcome colours of a drawing (:mod:`detlit.pictures.drawing`), and the report's best and
worst images. So a drawing or a per-image count never disagrees with the metric it sits beside.

The rules are COCOeval's (``evaluateImg``) for area "all" and ``maxDets=100``: per image and
class, detections are taken in descending score order (stable), at most 100 of them; each takes
the unmatched object with the highest IoU >= the threshold (IoU ties go to the object listed
last, as in COCOeval), objects before crowd regions. A crowd region is an ignore region: IoU with
it is intersection over the detection's area, it can absorb any number of detections, and a
detection on it counts neither as a true nor as a false positive; crowd regions are never missed.
Detections beyond the 100 per image and class are left out, as COCOeval leaves them out.

Because a detection's turn depends only on the detections scoring above it, matching every
detection and then keeping those at or above a score threshold gives the same outcome as
matching only the kept ones: the counts of one threshold can be read off one matching.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_DETECTIONS = 100  # COCOeval's largest maxDets: detections per image and class that count
# COCOeval's area range "all"; objects outside it are ignored, unmatched detections outside it too.
AREA_ALL = (0.0, 1e5**2)


@dataclass
class DetectionArrays:
    """Detections and ground truth of many images as flat float64 / int64 arrays; boxes XYWH.

    Images are numbered ``0..num_images-1`` in the order COCOeval takes them (ascending image id).
    """

    num_images: int
    det_image: np.ndarray
    det_box: np.ndarray
    det_score: np.ndarray
    det_label: np.ndarray
    gt_image: np.ndarray
    gt_box: np.ndarray
    gt_label: np.ndarray
    gt_crowd: np.ndarray
    gt_area: np.ndarray

    @classmethod
    def one_image(
        cls, boxes: Any, scores: Any, labels: Any, gt_boxes: Any, gt_labels: Any, gt_crowd: Any = None
    ) -> DetectionArrays:
        """The arrays of a single image, from XYXY detections and objects (crowd flags optional)."""
        det, gt = _xyxy(boxes), _xyxy(gt_boxes)
        crowd = np.zeros(len(gt), bool) if gt_crowd is None else np.asarray(gt_crowd, bool).reshape(-1)
        gt_xywh = xyxy_to_xywh(gt)
        return cls(
            num_images=1,
            det_image=np.zeros(len(det), np.int64),
            det_box=xyxy_to_xywh(det),
            det_score=np.asarray(scores, np.float64).reshape(-1),
            det_label=np.asarray(labels, np.int64).reshape(-1),
            gt_image=np.zeros(len(gt), np.int64),
            gt_box=gt_xywh,
            gt_label=np.asarray(gt_labels, np.int64).reshape(-1),
            gt_crowd=crowd,
            gt_area=gt_xywh[:, 2] * gt_xywh[:, 3],
        )

    def check_labels(self, num_classes: int) -> None:
        """Raise ValueError when a label is outside ``0..num_classes-1``."""
        for what, labels in (("prediction", self.det_label), ("target", self.gt_label)):
            bad = labels[(labels < 0) | (labels >= num_classes)]
            if bad.size:
                raise ValueError(
                    f"{what} label {int(bad[0])} is outside 0..{num_classes - 1}; labels must be contiguous "
                    f"class indices of the {num_classes} class_names"
                )


def _xyxy(boxes: Any) -> np.ndarray:
    return np.asarray(boxes, np.float64).reshape(-1, 4)


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """XYXY -> XYWH, with the same float operations as torchvision's ``box_convert``."""
    boxes = np.asarray(boxes).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def box_iou(det: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU of paired XYWH boxes (row i with row i), computed as COCO's ``bbIou`` computes it.

    With a crowd region the union is the detection's area alone.
    """
    width = np.minimum(det[:, 0] + det[:, 2], gt[:, 0] + gt[:, 2]) - np.maximum(det[:, 0], gt[:, 0])
    height = np.minimum(det[:, 1] + det[:, 3], gt[:, 1] + gt[:, 3]) - np.maximum(det[:, 1], gt[:, 1])
    overlap = (width > 0) & (height > 0)
    intersection = np.where(overlap, width * height, 0.0)
    det_area, gt_area = det[:, 2] * det[:, 3], gt[:, 2] * gt[:, 3]
    union = np.where(crowd, det_area, det_area + gt_area - intersection)
    iou = np.zeros(len(det))
    np.divide(intersection, union, out=iou, where=overlap)
    return iou


def ranks(keys: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order by key, then by descending score (stable), and each item's rank within its key."""
    order = np.argsort(-scores, kind="stable")
    order = order[np.argsort(keys[order], kind="stable")]
    rank = np.empty(len(keys), np.int64)
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    counts = np.diff(np.r_[starts, len(keys)])
    rank[order] = np.arange(len(keys)) - np.repeat(starts, counts)
    return order, rank


def pairs(det_keys: np.ndarray, gt_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (detection, object) index pair with equal keys."""
    gt_order = np.argsort(gt_keys, kind="stable")
    sorted_keys = gt_keys[gt_order]
    lo = np.searchsorted(sorted_keys, det_keys, side="left")
    counts = np.searchsorted(sorted_keys, det_keys, side="right") - lo
    det = np.repeat(np.arange(len(det_keys)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return det, gt_order[np.repeat(lo, counts) + offsets]


def greedy_match(
    det: np.ndarray,
    gt: np.ndarray,
    keys: Sequence[np.ndarray],
    rank: np.ndarray,
    reusable: np.ndarray,
    num_det: int,
) -> np.ndarray:
    """Greedy matching of candidate (detection, object) pairs, all groups at once.

    Detections of one group (image, or image and class) take their turn by ``rank``; in its turn a
    detection takes the free candidate with the largest ``keys`` (compared last key first, like
    ``np.lexsort``). A taken object is no longer free unless it is ``reusable`` (a crowd region).
    One round per rank handles the detections of that rank in every group together: they cannot
    compete, since an object belongs to one group.

    Args:
        det: detection index of each candidate pair.
        gt: object index of each candidate pair.
        keys: per pair, the preference keys, least significant first.
        rank: per detection, its turn within its group.
        reusable: per object, whether it can be matched more than once.
        num_det: number of detections.

    Returns:
        Per detection, the index of its object, -1 when it matched none.
    """
    match = np.full(num_det, -1, np.int64)
    taken = np.zeros(len(reusable), bool)
    order = np.argsort(rank[det], kind="stable")
    det, gt, keys = det[order], gt[order], [k[order] for k in keys]
    pair_rank = rank[det]
    cuts = np.flatnonzero(pair_rank[1:] != pair_rank[:-1]) + 1
    for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(det)], strict=True):
        free = ~taken[gt[lo:hi]]
        d, g = det[lo:hi][free], gt[lo:hi][free]
        if not len(d):
            continue
        pick = np.lexsort((*(k[lo:hi][free] for k in keys), d))
        last_of_detection = np.r_[d[pick][1:] != d[pick][:-1], True]
        chosen = pick[last_of_detection]
        match[d[chosen]] = g[chosen]
        objects = g[chosen]
        taken[objects[~reusable[objects]]] = True
    return match


def effective_threshold(iou_threshold: float) -> float:
    """COCOeval starts the best IoU at min(t, 1 - 1e-10) and accepts IoU >= it."""
    return min(iou_threshold, 1 - 1e-10)


@dataclass
class Match:
    """COCOeval's per-class matching at one IoU threshold.

    Attributes:
        kept: per detection, among the first :data:`MAX_DETECTIONS` of its image and class.
        tp: per detection, matched an object (not an ignored one).
        ignored: per detection, matched a crowd region (or lies outside area "all").
        gt_of: per detection, the matched object's index, -1 for none.
        gt_ignored: per object, a crowd region (or outside area "all").
    """

    kept: np.ndarray
    tp: np.ndarray
    ignored: np.ndarray
    gt_of: np.ndarray
    gt_ignored: np.ndarray

    @property
    def fp(self) -> np.ndarray:
        """Per detection: kept, and neither a true positive nor ignored."""
        return self.kept & ~self.tp & ~self.ignored

    def missed(self, shown: np.ndarray | None = None) -> np.ndarray:
        """Per object: not ignored and found by none of the detections ``shown`` (default: all)."""
        found = np.zeros(len(self.gt_ignored), bool)
        hits = self.tp if shown is None else self.tp & shown
        found[self.gt_of[hits]] = True
        return ~self.gt_ignored & ~found


def match_by_class(data: DetectionArrays, num_classes: int, iou_threshold: float) -> Match:
    """COCOeval's matching (``evaluateImg``) at ``iou_threshold``, area all, maxDets 100."""
    threshold = effective_threshold(iou_threshold)
    lo, hi = AREA_ALL
    gt_ignored = data.gt_crowd | (data.gt_area < lo) | (data.gt_area > hi)
    det_keys = data.det_image * num_classes + data.det_label
    _, rank = ranks(det_keys, data.det_score)
    kept = rank < MAX_DETECTIONS
    kept_index = np.flatnonzero(kept)
    det, gt = pairs(det_keys[kept_index], data.gt_image * num_classes + data.gt_label)
    det = kept_index[det]
    iou = box_iou(data.det_box[det], data.gt_box[gt], data.gt_crowd[gt])
    candidate = iou >= threshold
    det, gt, iou = det[candidate], gt[candidate], iou[candidate]
    # Objects before ignore regions; then the highest IoU; on equal IoU the object listed last
    # (COCOeval replaces its best match on an equal IoU).
    gt_of = greedy_match(det, gt, (gt, iou, ~gt_ignored[gt]), rank, data.gt_crowd, len(det_keys))
    matched = gt_of >= 0
    det_area = data.det_box[:, 2] * data.det_box[:, 3]
    ignored = (det_area < lo) | (det_area > hi)
    ignored[matched] = gt_ignored[gt_of[matched]]
    ignored &= kept
    return Match(kept, matched & ~ignored, ignored, gt_of, gt_ignored)


def match_image(
    boxes: Any,
    scores: Any,
    labels: Any,
    gt_boxes: Any,
    gt_labels: Any,
    gt_crowd: Any = None,
    iou_threshold: float = 0.5,
) -> Match:
    """:func:`match_by_class` of one image's XYXY detections and objects (for drawings and per-image counts)."""
    data = DetectionArrays.one_image(boxes, scores, labels, gt_boxes, gt_labels, gt_crowd)
    num_classes = 1 + int(max(data.det_label.max(initial=-1), data.gt_label.max(initial=-1), 0))
    return match_by_class(data, num_classes, iou_threshold)
