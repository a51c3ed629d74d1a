"""After stage 8, auditing the labels: what a model's score means, measured on the audited images.

A briefly trained model may score its best detections 0.4, a long-trained one 0.99: raw scores
of two models, or of two classes, do not compare. The audit turns a score into the share of the
model's detections of that class, scoring about as much, that the labels confirm (a same-class
object at IoU >= 0.5, matched by the one matcher, :func:`~detlit.evaluation.matching.match_by_class`,
COCOeval's rules): an isotonic (monotone, pool-adjacent-violators) fit of "confirmed" on the score,
per class, or over all classes for a class with fewer than :data:`MIN_DETECTIONS` detections. The
labels hold the mistakes the audit looks for, so this is an estimate, slightly low where labels
are missing; it only needs to be monotone and comparable. Alongside, per class, the share of its
objects that some detection of the class finds (recall at the model's own score floor).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from detlit.evaluation.matching import DetectionArrays, match_by_class

if TYPE_CHECKING:
    from detlit.auditing.ranking import AuditedImage

MIN_DETECTIONS = 30  # of a class, for a fit of its own
MATCH_IOU = 0.5


def isotonic(values: np.ndarray) -> np.ndarray:
    """The non-decreasing sequence closest (least squares) to ``values``: pool adjacent violators."""
    means: list[float] = []
    counts: list[int] = []
    for value in values.tolist():
        means.append(float(value))
        counts.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            total = counts[-2] + counts[-1]
            means[-2] = (means[-2] * counts[-2] + means[-1] * counts[-1]) / total
            counts[-2] = total
            means.pop()
            counts.pop()
    return np.repeat(np.asarray(means), counts)


@dataclass(frozen=True)
class Fit:
    """A score -> confirmed-share step function: ``scores`` ascending, ``shares`` non-decreasing."""

    scores: np.ndarray
    shares: np.ndarray

    @classmethod
    def of(cls, scores: np.ndarray, confirmed: np.ndarray) -> Fit:
        order = np.argsort(scores, kind="stable")
        return cls(scores[order], isotonic(confirmed[order].astype(np.float64)))

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        """The share at each score: that of the highest fitted score at or below it (0 below all)."""
        if not len(self.scores):
            return np.asarray(scores, np.float64)  # nothing measured: the score as it is
        at = np.searchsorted(self.scores, scores, side="right") - 1
        return np.where(at >= 0, self.shares[np.clip(at, 0, None)], 0.0)


@dataclass(frozen=True)
class Calibration:
    """Per category id, the fit of its scores and the share of its objects found."""

    fits: dict[int, Fit]
    overall: Fit
    recall: dict[int, float]

    def confidence(self, category_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """The calibrated score of each detection (see the module docstring)."""
        out = np.empty(len(scores), np.float64)
        for cid in np.unique(category_ids).tolist():
            chosen = category_ids == cid
            out[chosen] = self.fits.get(cid, self.overall)(scores[chosen])
        return out

    @classmethod
    def identity(cls) -> Calibration:
        """Scores as they are; every class found in full."""
        return cls({}, Fit(np.zeros(0), np.zeros(0)), {})


def calibrate(images: Iterable[AuditedImage]) -> Calibration:
    """The calibration of the detections of the images a model predicted."""
    predicted = [image for image in images if image.found is not None]
    ids: Sequence[int] = sorted(
        {int(c) for image in predicted for c in (*image.labels.category_ids, *image.found.category_ids)}  # type: ignore[union-attr]
    )
    if not ids:
        return Calibration.identity()
    contiguous = {cid: label for label, cid in enumerate(ids)}

    def labels(values: np.ndarray) -> np.ndarray:
        return np.asarray([contiguous[int(v)] for v in values], np.int64)

    det_image, det_box, det_score, det_label = [], [], [], []
    gt_image, gt_box, gt_label, gt_crowd = [], [], [], []
    for number, image in enumerate(predicted):
        found = image.found
        assert found is not None
        det_image.append(np.full(len(found.scores), number))
        det_box.append(found.boxes)
        det_score.append(found.scores)
        det_label.append(labels(found.category_ids))
        gt_image.append(np.full(len(image.labels.ids), number))
        gt_box.append(image.labels.boxes)
        gt_label.append(labels(image.labels.category_ids))
        gt_crowd.append(image.labels.crowd)
    boxes = np.concatenate(gt_box).reshape(-1, 4)
    data = DetectionArrays(
        num_images=len(predicted),
        det_image=np.concatenate(det_image).astype(np.int64),
        det_box=np.concatenate(det_box).reshape(-1, 4),
        det_score=np.concatenate(det_score),
        det_label=np.concatenate(det_label),
        gt_image=np.concatenate(gt_image).astype(np.int64),
        gt_box=boxes,
        gt_label=np.concatenate(gt_label),
        gt_crowd=np.concatenate(gt_crowd).astype(bool),
        gt_area=boxes[:, 2] * boxes[:, 3],
    )
    match = match_by_class(data, len(ids), MATCH_IOU)
    counted = match.kept & ~match.ignored
    overall = Fit.of(data.det_score[counted], match.tp[counted])
    fits, recall = {}, {}
    missed = match.missed()
    for cid, label in contiguous.items():
        mine = counted & (data.det_label == label)
        if mine.sum() >= MIN_DETECTIONS:
            fits[cid] = Fit.of(data.det_score[mine], match.tp[mine])
        objects = (data.gt_label == label) & ~match.gt_ignored
        if objects.any():
            recall[cid] = 1.0 - float(missed[objects].mean())
    return Calibration(fits, overall, recall)
