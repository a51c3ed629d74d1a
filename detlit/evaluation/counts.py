"""Counting at one IoU threshold: precision, recall and F1 per class, PR curves, the confusion matrix.

Everything here reads the one matching of :mod:`detlit.evaluation.matching`. Precision, recall and
F1 come from raw counts (not COCO's interpolated precision). Undefined values (0 / 0: precision
without detections, recall without objects) are NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from detlit.evaluation.matching import (
    DetectionArrays,
    Match,
    box_iou,
    effective_threshold,
    greedy_match,
    pairs,
    ranks,
)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise numerator / denominator, NaN where the denominator is 0."""
    numerator, denominator = np.asarray(numerator, np.float64), np.asarray(denominator, np.float64)
    out = np.full(np.broadcast(numerator, denominator).shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def rates(tp: Any, fp: Any, fn: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 of true positive, false positive and false negative counts.

    F1 is ``2 TP / (2 TP + FP + FN)``: 0 when there are errors but no true positive, NaN only when
    there is nothing at all (no object and no detection).
    """
    tp, fp, fn = (np.asarray(x, np.float64) for x in (tp, fp, fn))
    return _ratio(tp, tp + fp), _ratio(tp, tp + fn), _ratio(2 * tp, 2 * tp + fp + fn)


class _Rates:
    """Precision, recall and F1 from a class's ``tp``, ``fp`` and ``fn`` arrays."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray

    @property
    def precision(self) -> np.ndarray:
        return rates(self.tp, self.fp, self.fn)[0]

    @property
    def recall(self) -> np.ndarray:
        return rates(self.tp, self.fp, self.fn)[1]

    @property
    def f1(self) -> np.ndarray:
        """F1 (against ``thresholds``: F1-vs-confidence)."""
        return rates(self.tp, self.fp, self.fn)[2]


@dataclass
class Counts(_Rates):
    """True positives, false positives and misses per class at one score threshold per class.

    Attributes:
        thresholds: score threshold of each class (detections with ``score >= threshold`` count);
            ``inf`` where no detection is kept.
        tp: detections that match an object of their class.
        fp: detections that match nothing (crowd regions excepted).
        fn: objects that no kept detection matches.
    """

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray

    def overall(self) -> tuple[float, float, float]:
        """Micro-averaged precision, recall and F1: the rates of the counts summed over classes."""
        precision, recall, f1 = rates(self.tp.sum(), self.fp.sum(), self.fn.sum())
        return float(precision), float(recall), float(f1)


@dataclass
class PRCurve(_Rates):
    """Precision-recall data of one class: counts at every distinct detection score.

    Attributes:
        thresholds: the class's distinct detection scores, descending (crowd-ignored detections
            left out).
        tp: true positives among the detections with ``score >= threshold``.
        fp: false positives among them.
        num_objects: objects of the class (crowd regions excluded).
    """

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    num_objects: int

    @property
    def fn(self) -> np.ndarray:  # type: ignore[override]  # derived: the objects not found
        return self.num_objects - self.tp

    def at(self, thresholds: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """True and false positives with ``score >= t`` for each given threshold ``t``."""
        kept = np.searchsorted(-self.thresholds, -np.asarray(thresholds, np.float64), side="right")
        tp = np.concatenate([[0], self.tp])[kept]
        fp = np.concatenate([[0], self.fp])[kept]
        return tp, fp

    def tensorboard(self, num_thresholds: int = 201) -> dict[str, Any]:
        """Keyword arguments of ``SummaryWriter.add_pr_curve_raw`` (tag and step left to the caller).

        TensorBoard reads the arrays as counts at ``num_thresholds`` thresholds evenly spaced from
        0 to 1, ascending; true negatives do not exist in detection and are 0. Rates without a
        denominator are 0 here, as in TensorBoard's own PR curves.
        """
        tp, fp = self.at(np.linspace(0.0, 1.0, num_thresholds))
        fn = self.num_objects - tp
        return {
            "true_positive_counts": tp,
            "false_positive_counts": fp,
            "true_negative_counts": np.zeros_like(tp),
            "false_negative_counts": fn,
            "precision": np.nan_to_num(_ratio(tp, tp + fp)),
            "recall": np.nan_to_num(_ratio(tp, tp + fn)),
            "num_thresholds": num_thresholds,
        }


def pr_curves(data: DetectionArrays, match: Match, num_objects: np.ndarray) -> list[PRCurve]:
    """Cumulative TP/FP counts per class at each distinct score, from the per-class matching."""
    counted = match.kept & ~match.ignored
    labels, scores, tp = data.det_label[counted], data.det_score[counted], match.tp[counted]
    order = np.argsort(-scores, kind="stable")
    order = order[np.argsort(labels[order], kind="stable")]
    labels, scores, tp = labels[order], scores[order], tp[order]
    cum_tp, cum_fp = np.cumsum(tp), np.cumsum(~tp)
    # the last detection of each run of equal (class, score) carries the counts at that score
    last = np.r_[(labels[1:] != labels[:-1]) | (scores[1:] != scores[:-1]), True]
    bounds = np.searchsorted(labels, np.arange(len(num_objects) + 1))
    curves = []
    for k in range(len(num_objects)):
        lo, hi = bounds[k], bounds[k + 1]
        before_tp = cum_tp[lo - 1] if lo else 0
        before_fp = cum_fp[lo - 1] if lo else 0
        at = last[lo:hi]
        curves.append(
            PRCurve(
                thresholds=scores[lo:hi][at],
                tp=cum_tp[lo:hi][at] - before_tp,
                fp=cum_fp[lo:hi][at] - before_fp,
                num_objects=int(num_objects[k]),
            )
        )
    return curves


def best_counts(curves: Sequence[PRCurve]) -> Counts:
    """Each class at the threshold with the highest F1 (the highest such threshold on ties).

    A class where no threshold gives a true positive keeps no detection: threshold ``inf``.
    """
    thresholds, tp, fp, fn = [], [], [], []
    for curve in curves:
        f1 = curve.f1
        if len(f1) and np.nanmax(f1) > 0:
            i = int(np.nanargmax(f1))
            thresholds.append(float(curve.thresholds[i]))
            tp.append(int(curve.tp[i]))
            fp.append(int(curve.fp[i]))
        else:
            thresholds.append(math.inf)
            tp.append(0)
            fp.append(0)
        fn.append(curve.num_objects - tp[-1])
    return Counts(np.asarray(thresholds, np.float64), np.asarray(tp), np.asarray(fp), np.asarray(fn))


def counts_at(curves: Sequence[PRCurve], thresholds: Sequence[float] | np.ndarray) -> Counts:
    """Each class's counts when its detections with ``score >= thresholds[class]`` are kept."""
    chosen = np.asarray(thresholds, np.float64).reshape(-1)
    if len(chosen) != len(curves):
        raise ValueError(f"{len(chosen)} thresholds for {len(curves)} classes")
    tp = np.zeros(len(curves), np.int64)
    fp = np.zeros(len(curves), np.int64)
    for k, (curve, threshold) in enumerate(zip(curves, chosen.tolist(), strict=True)):
        at_tp, at_fp = curve.at([threshold])
        tp[k], fp[k] = int(at_tp[0]), int(at_fp[0])
    fn = np.asarray([c.num_objects for c in curves], np.int64) - tp
    return Counts(chosen, tp, fp, fn)


def fixed_counts(data: DetectionArrays, match: Match, num_objects: np.ndarray, score_threshold: float) -> Counts:
    """Every class at one score threshold."""
    above = data.det_score >= score_threshold
    k = len(num_objects)
    tp = np.bincount(data.det_label[match.tp & above], minlength=k)
    fp = np.bincount(data.det_label[match.fp & above], minlength=k)
    return Counts(np.full(k, score_threshold), tp, fp, num_objects - tp)


def confusion(
    data: DetectionArrays,
    match: Match,
    num_classes: int,
    score_threshold: float | np.ndarray,
    iou_threshold: float,
) -> np.ndarray:
    """Detection confusion matrix at a score threshold, one for all classes or one per class (a
    detection counts when its score reaches its own class's; see :class:`~detlit.evaluation.evaluation.Evaluation`).

    1. The per-class matching decides the diagonal: a true positive counts in its class's cell, so
       the diagonal is ``fixed.tp``; detections on crowd regions are left out.
    2. The false positives then take their turn per image in descending score order; each takes
       the still unmatched object of any class with the highest IoU >= the threshold (the object
       listed first on equal IoU) and counts in that object's row and its own column; a false
       positive that finds none counts in the background row.
    3. Objects that nothing matched count in the background column.

    So row ``c`` sums to ``num_objects[c]`` and column ``c`` to ``fixed.tp[c] + fixed.fp[c]``.
    Detections beyond 100 per image and class are left out, as everywhere.
    """
    background = num_classes
    limits = np.asarray(score_threshold, dtype=np.float64)
    above = data.det_score >= (limits[data.det_label] if limits.ndim else limits)
    tp, fp = match.tp & above, match.fp & above
    found = np.zeros(len(data.gt_label), bool)
    found[match.gt_of[tp]] = True
    free = np.flatnonzero(~match.gt_ignored & ~found)
    wrong = np.flatnonzero(fp)

    _, rank = ranks(data.det_image[wrong], data.det_score[wrong])
    det, gt = pairs(data.det_image[wrong], data.gt_image[free])
    iou = box_iou(data.det_box[wrong[det]], data.gt_box[free[gt]], np.zeros(len(det), bool))
    candidate = iou >= effective_threshold(iou_threshold)
    det, gt, iou = det[candidate], gt[candidate], iou[candidate]
    gt_of = greedy_match(det, gt, (-gt, iou), rank, np.zeros(len(free), bool), len(wrong))
    confused = gt_of >= 0
    unfound = np.ones(len(free), bool)
    unfound[gt_of[confused]] = False

    size = num_classes + 1
    rows = np.concatenate(
        [
            data.det_label[tp],
            data.gt_label[free[gt_of[confused]]],
            np.full(int((~confused).sum()), background),
            data.gt_label[free[unfound]],
        ]
    )
    cols = np.concatenate(
        [
            data.det_label[tp],
            data.det_label[wrong[confused]],
            data.det_label[wrong[~confused]],
            np.full(int(unfound.sum()), background),
        ]
    )
    return np.bincount(rows * size + cols, minlength=size * size).reshape(size, size)


COCO_RECALL_POINTS = np.linspace(0.0, 1.0, 101)
"""COCOeval's recall thresholds (``recThrs``): 0, 0.01, ..., 1."""


def interpolated_ap(is_true: np.ndarray, num_objects: int, recall_points: np.ndarray = COCO_RECALL_POINTS) -> float:
    """COCO's interpolated AP of one class's detections in rank order (best first).

    Precision is made non-increasing from the right (each point takes the best precision at any
    higher recall) and read at each of ``recall_points`` at the first detection whose recall
    reaches it, 0 beyond the highest recall reached; AP is the mean of those readings. NaN
    without objects.

    Args:
        is_true: per detection in rank order, whether it found an object.
        num_objects: the objects of the class.
        recall_points: where precision is read (COCOeval's 101 by default).
    """
    if num_objects <= 0:
        return math.nan
    is_true = np.asarray(is_true, bool)
    tp, fp = np.cumsum(is_true), np.cumsum(~is_true)
    precision = np.maximum.accumulate((tp / np.maximum(tp + fp, 1))[::-1])[::-1]
    index = np.searchsorted(tp / num_objects, recall_points, side="left")
    readings = np.zeros(len(recall_points))
    inside = index < len(precision)
    readings[inside] = precision[index[inside]]
    return sum(readings.tolist()) / len(readings)  # summed in order, to tidecv's last digit
