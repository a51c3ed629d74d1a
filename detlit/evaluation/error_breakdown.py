"""Where the AP50 is lost: TIDE's error breakdown (Bolya et al., ECCV 2020), on detlit's matcher.

Stage 8, evaluation: from the flat arrays :meth:`Evaluation.from_arrays
<detlit.evaluation.evaluation.Evaluation.from_arrays>` takes, :meth:`ErrorBreakdown.from_arrays`
gives every error one type and measures, for each type, the AP50 that fixing all errors of that
type would add (dAP), over all classes and per class. ``python -m detlit.evaluate`` writes it into
``metrics.json`` (key ``errors``), and the report turns its largest part into a finding.

Matching is TIDE's, built from :mod:`detlit.evaluation.matching`'s parts (``box_iou``, ``pairs``,
``ranks``, ``greedy_match``): per image the 100 best-scoring detections (all classes together),
in descending score order, each take the free object of their class with the highest IoU >= 0.5
(the object listed first on equal IoU). A detection that found none and overlaps a crowd region of
its class by more than 0.5 (intersection over the detection's area) is ignored: not counted in
AP, but still given an error type below. Every other detection that found no object is an error,
the first of these that holds (IoU with the image's objects; "used": found by another detection):

1. ``Bkg`` (background) when the image has no object;
2. ``Loc`` (localisation): IoU 0.1-0.5 with an object of its class (the first with the highest IoU);
3. ``Cls`` (classification): IoU >= 0.5 with an object of another class (the first with the highest IoU);
4. ``Dupe`` (duplicate): IoU >= 0.5 with a used object of its class;
5. ``Bkg`` (background): IoU <= 0.1 with every object;
6. ``Both`` (classification and localisation): anything else.

An object no detection found is ``Miss`` unless a ``Loc`` or ``Cls`` error points at it.

Fixing a type rebuilds the AP data: a ``Loc`` or ``Cls`` error becomes a true positive (of its
object's class) when its object was not used and it is the highest-scoring such error pointing
at that object (the first in score order on equal scores); otherwise it is left out, as are fixed
``Dupe``, ``Bkg`` and ``Both`` errors; a fixed ``Miss`` takes its object out of the class's
count. dAP is the AP50 after the fix minus the AP50, 0 when negative (NaN when nothing is left
to average over: no object, and no detection that the fix keeps). Two special errors measure
precision and recall alone: ``FalsePos``, every true positive ranked above every false one;
``FalseNeg``, every object that no detection found left out of the count (neither is clipped at 0).

AP is per class, COCO's 101-point interpolation (:func:`~detlit.evaluation.counts.interpolated_ap`,
read at recall ``k / 100``), 0 for a class with detections but no object, and the AP50 is the
mean over the classes that have objects or detections (after each fix: the classes that still
have some). So this AP50, the base of every dAP, can differ from COCO's ``map50``: 100
detections per image, not per image and class; classes without objects count (as 0); a crowd
region ignores a detection only after it found no object. Detections of equal score rank as the
fix leaves them: within a class, first by image (ascending image id) and score order, and after a
fix, the errors before the true positives. With the json's images in ascending id order, every
number equals tidecv 1.0.1's (to the last digit, in 0-1 units here, 0-100 there).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from detlit.evaluation.counts import interpolated_ap
from detlit.evaluation.evaluation import json_count, json_number, unique_names
from detlit.evaluation.matching import DetectionArrays, box_iou, greedy_match, pairs, ranks

FOREGROUND_IOU = 0.5  # a detection finds an object at IoU >= this (TIDE's default)
BACKGROUND_IOU = 0.1  # ... and lies on background at IoU <= this with every object (TIDE's default)
MAX_PER_IMAGE = 100  # detections per image that count, all classes together
RECALL_POINTS = np.arange(101) / 100  # recall 0, 0.01, ..., 1, computed as k / 100

MAIN_TYPES = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")
"""The main error types, in TIDE's order; each detection or object that is wrong has one."""
SPECIAL_TYPES = ("FalsePos", "FalseNeg")
"""The special errors: all false detections, all missed objects."""
TYPES = (*MAIN_TYPES, *SPECIAL_TYPES)
DESCRIPTIONS = {
    "Cls": "the box fits an object of another class",
    "Loc": "the right class, the box off (IoU 0.1-0.5)",
    "Both": "another class's object, the box off",
    "Dupe": "the object was already found",
    "Bkg": "no object there (IoU <= 0.1)",
    "Miss": "an object nothing found",
    "FalsePos": "all false detections ranked last",
    "FalseNeg": "all objects not found left out",
}
"""What each type is, in a few words (the module docstring has the rules)."""
_CLS, _LOC, _BOTH, _DUPE, _BKG = range(5)


@dataclass
class ErrorBreakdown:
    """The AP50 lost to each error type, over all classes and per class (AP in 0-1 units).

    Attributes:
        class_names: name of each label.
        iou_threshold: IoU at which a detection finds an object (0.5).
        background_iou: IoU at or below which a detection lies on background (0.1).
        ap50: the AP50 every dAP starts from: the mean over classes with objects or detections.
        class_ap50: per class, its AP50 (0 with detections but no object), NaN for a class with
            neither objects nor detections.
        overall: per type of :data:`TYPES`, the AP50 that fixing all its errors adds.
        per_class: per type, per class, the class's AP50 that fixing its errors adds (NaN where
            ``class_ap50`` is).
        counts: per type, how many errors there are (``FalsePos``: false detections, ``FalseNeg``:
            objects not found).
    """

    class_names: tuple[str, ...]
    iou_threshold: float
    background_iou: float
    ap50: float
    class_ap50: np.ndarray
    overall: dict[str, float]
    per_class: dict[str, np.ndarray]
    counts: dict[str, int]

    @classmethod
    def from_arrays(
        cls,
        data: DetectionArrays,
        class_names: Sequence[str],
        iou_threshold: float = FOREGROUND_IOU,
        background_iou: float = BACKGROUND_IOU,
    ) -> ErrorBreakdown:
        """The breakdown of flat arrays (labels ``0..len(class_names)-1``; see the module docstring)."""
        num_classes = len(class_names)
        data.check_labels(num_classes)
        if not 0.0 <= background_iou <= iou_threshold <= 1.0:
            raise ValueError(
                f"background_iou {background_iou} and iou_threshold {iou_threshold}: need 0 <= b <= t <= 1"
            )
        errors = _Errors.find(data, iou_threshold, background_iou)
        base = errors.ap_data(num_classes)
        base_ap, base_mean = base.ap(), base.mean()
        overall, per_class = {}, {}
        for kind in TYPES:
            fixed = errors.fixed(kind, num_classes)
            delta, class_delta = fixed.mean() - base_mean, fixed.ap() - base_ap
            if kind in MAIN_TYPES:  # a negative change comes from re-ranked equal scores, not from the fix
                delta, class_delta = max(delta, 0.0), np.maximum(class_delta, 0.0)
            overall[kind] = delta
            per_class[kind] = np.where(base.present(), class_delta, np.nan)
        return cls(
            class_names=tuple(class_names),
            iou_threshold=iou_threshold,
            background_iou=background_iou,
            ap50=base_mean,
            class_ap50=np.where(base.present(), base_ap, np.nan),
            overall=overall,
            per_class=per_class,
            counts=errors.counts(),
        )

    def dominant(self) -> tuple[str, float] | None:
        """The main type that costs the most AP50 and its dAP; None when no type costs any."""
        kind = max(MAIN_TYPES, key=lambda k: _finite(self.overall.get(k)))
        value = _finite(self.overall.get(kind))
        return (kind, value) if value > 0 else None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready (NaN as null): the ``errors`` key of ``metrics.json``; :meth:`from_json` reads it."""
        per_class = {}
        for label, key in enumerate(unique_names(self.class_names)):
            row = {"ap50": _json(self.class_ap50[label])}
            row.update({kind: _json(self.per_class[kind][label]) for kind in TYPES})
            per_class[key] = row
        return {
            "iou": self.iou_threshold,
            "background_iou": self.background_iou,
            "ap50": _json(self.ap50),
            "overall": {kind: _json(self.overall[kind]) for kind in TYPES},
            "counts": {kind: int(self.counts[kind]) for kind in TYPES},
            "per_class": per_class,
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> ErrorBreakdown:
        """The breakdown :meth:`to_json` wrote (class names: the keys of ``per_class``).

        Raises:
            ValueError: a key is missing or a value is not what the json holds.
        """
        if not isinstance(document, Mapping):
            raise ValueError("errors is not an object")
        try:
            overall, counts, rows = document["overall"], document["counts"], document["per_class"]
            if not all(isinstance(x, Mapping) for x in (overall, counts, rows)) or not rows:
                raise ValueError("errors: overall, counts and per_class must be objects")
            if not all(isinstance(row, Mapping) for row in rows.values()):
                raise ValueError("errors: each class of per_class must be an object")
            return cls(
                class_names=tuple(str(name) for name in rows),
                iou_threshold=json_number(document["iou"], "errors iou"),
                background_iou=json_number(document["background_iou"], "errors background_iou"),
                ap50=json_number(document["ap50"], "errors ap50"),
                class_ap50=np.asarray(
                    [json_number(row["ap50"], f"errors ap50 of {name}") for name, row in rows.items()]
                ),
                overall={kind: json_number(overall[kind], f"errors {kind}") for kind in TYPES},
                per_class={
                    kind: np.asarray([json_number(row[kind], f"errors {kind} of {name}") for name, row in rows.items()])
                    for kind in TYPES
                },
                counts={kind: json_count(counts[kind], f"errors count of {kind}") for kind in TYPES},
            )
        except KeyError as err:
            raise ValueError(f"errors has no {err}") from err

    def table(self, title: str | None = None) -> Any:
        """Overall dAP and count per type as a rich Table (for the console)."""
        from rich.table import Table

        table = Table(title=title or f"AP50 lost per error type (AP50 {_text(self.ap50)}, IoU {self.iou_threshold:g})")
        for column in ("type", "dAP50", "errors", "what"):
            table.add_column(column, justify="right" if column in ("dAP50", "errors") else "left")
        for kind in TYPES:
            table.add_row(kind, _text(self.overall[kind]), str(self.counts[kind]), DESCRIPTIONS[kind])
        return table

    def class_table(self) -> Any:
        """Per class: AP50 and the dAP of each main type, as a rich Table."""
        from rich.table import Table

        table = Table(title="AP50 lost per class and error type")
        for column in ("class", "AP50", *MAIN_TYPES):
            table.add_column(column, justify="left" if column == "class" else "right")
        for label, name in enumerate(self.class_names):
            values = [self.class_ap50[label], *(self.per_class[kind][label] for kind in MAIN_TYPES)]
            table.add_row(name, *(_text(v) for v in values))
        return table


@dataclass
class _APData:
    """Points of the AP computation: per point its class, score, truth and rank among equal
    scores (``order``); objects per class."""

    label: np.ndarray
    score: np.ndarray
    true: np.ndarray
    order: np.ndarray
    objects: np.ndarray

    def present(self) -> np.ndarray:
        """Per class: has objects or points (a class without either has no AP)."""
        return (self.objects > 0) | (np.bincount(self.label, minlength=len(self.objects)) > 0)

    def ap(self) -> np.ndarray:
        """Per class: interpolated AP, 0 without objects."""
        sort = np.lexsort((self.order, -self.score, self.label))
        label, true = self.label[sort], self.true[sort]
        bounds = np.searchsorted(label, np.arange(len(self.objects) + 1))
        out = np.zeros(len(self.objects))
        for k in np.flatnonzero(self.objects > 0):
            out[k] = interpolated_ap(true[bounds[k] : bounds[k + 1]], int(self.objects[k]), RECALL_POINTS)
        return out

    def mean(self) -> float:
        """The mean AP over the classes present; NaN when none is."""
        present = self.present()
        return sum(self.ap()[present].tolist()) / int(present.sum()) if present.any() else math.nan


@dataclass
class _Errors:
    """TIDE's matching and error types of one set of arrays.

    Per counted detection (the best :data:`MAX_PER_IMAGE` of its image): ``label``, ``score``,
    ``tp``, ``ignored`` (on a crowd region), ``kind`` (error type code, -1 for a true positive),
    ``fixes`` (a fixed ``Loc`` / ``Cls`` error becomes a true positive), ``fixed_label`` (its class
    then), ``order`` (its place in the original AP data). Per object: ``gt_label``, ``real`` (not
    crowd), ``found``, ``missed``.
    """

    label: np.ndarray
    score: np.ndarray
    tp: np.ndarray
    ignored: np.ndarray
    kind: np.ndarray
    fixes: np.ndarray
    fixed_label: np.ndarray
    order: np.ndarray
    gt_label: np.ndarray
    real: np.ndarray
    found: np.ndarray
    missed: np.ndarray

    @classmethod
    def find(cls, data: DetectionArrays, fg: float, bg: float) -> _Errors:
        _, rank = ranks(data.det_image, data.det_score)
        kept = np.flatnonzero(rank < MAX_PER_IMAGE)
        image, label, score, rank = data.det_image[kept], data.det_label[kept], data.det_score[kept], rank[kept]
        box, count = data.det_box[kept], len(kept)
        real = ~data.gt_crowd
        objects, crowds = np.flatnonzero(real), np.flatnonzero(data.gt_crowd)

        # Matching: in score order, the free object of the class with the highest IoU >= fg, the first on ties.
        det, gt = pairs(image, data.gt_image[objects])
        iou = box_iou(box[det], data.gt_box[objects[gt]], np.zeros(len(det), bool))
        same = label[det] == data.gt_label[objects[gt]]
        pick = same & (iou >= fg)
        keys = (-gt[pick], iou[pick])
        match = greedy_match(det[pick], gt[pick], keys, rank, np.zeros(len(objects), bool), count)
        tp = match >= 0
        used = np.zeros(len(objects), bool)
        used[match[tp]] = True

        # Crowd regions of its class ignore a detection that found nothing and lies mostly inside one.
        crowd_det, crowd_gt = pairs(image, data.gt_image[crowds])
        on_crowd = box_iou(box[crowd_det], data.gt_box[crowds[crowd_gt]], np.ones(len(crowd_det), bool)) > fg
        on_crowd &= label[crowd_det] == data.gt_label[crowds[crowd_gt]]
        ignored = np.zeros(count, bool)
        ignored[crowd_det[on_crowd]] = True
        ignored &= ~tp

        # Error types, in TIDE's order of checks (the first that holds).
        same_iou, same_gt = _first_max(det, gt, np.where(same, iou, 0.0), count)
        other_iou, other_gt = _first_max(det, gt, np.where(same, 0.0, iou), count)
        used_iou, _ = _first_max(det, gt, np.where(same & used[gt], iou, 0.0), count)
        any_iou, _ = _first_max(det, gt, iou, count)
        has_objects = np.bincount(data.gt_image[objects], minlength=data.num_images)[image] > 0
        wrong = ~tp
        kind = np.select(
            [
                wrong & ~has_objects,
                wrong & (bg <= same_iou) & (same_iou <= fg),
                wrong & (other_iou >= fg),
                wrong & (used_iou >= fg),
                wrong & (any_iou <= bg),
                wrong,
            ],
            [_BKG, _LOC, _CLS, _DUPE, _BKG, _BOTH],
            -1,
        )
        target = np.select([kind == _LOC, kind == _CLS], [same_gt, other_gt], -1)

        # A fixed Loc or Cls error becomes a true positive if its object was not used and it is the
        # highest-scoring error pointing at it (the first in score order on ties); the rest are left out.
        open_ = target >= 0
        open_[open_] = ~used[target[open_]]
        usable = np.zeros(len(objects), bool)
        usable[target[open_]] = True
        candidates = np.flatnonzero(open_)
        best = candidates[np.lexsort((rank[candidates], -score[candidates], target[candidates]))]
        first = np.r_[True, target[best][1:] != target[best][:-1]] if len(best) else np.zeros(0, bool)
        fixes = np.zeros(count, bool)
        fixes[best[first]] = True
        fixed_label = label.copy()
        fixed_label[kind == _CLS] = data.gt_label[objects[target[kind == _CLS]]]

        order = np.empty(count, np.int64)
        order[np.lexsort((rank, image))] = np.arange(count)
        missed = np.zeros(len(real), bool)
        missed[objects[~used & ~usable]] = True
        found = np.zeros(len(real), bool)
        found[objects[used]] = True
        return cls(label, score, tp, ignored, kind, fixes, fixed_label, order, data.gt_label, real, found, missed)

    def ap_data(self, num_classes: int) -> _APData:
        """The AP data as measured: counted detections not on a crowd region, objects not crowd."""
        counted = ~self.ignored
        return _APData(
            self.label[counted],
            self.score[counted],
            self.tp[counted],
            self.order[counted],
            np.bincount(self.gt_label[self.real], minlength=num_classes),
        )

    def fixed(self, kind: str, num_classes: int) -> _APData:
        """The AP data with every error of one type fixed (or a special error's change)."""
        objects = np.bincount(self.gt_label[self.real], minlength=num_classes)
        error = self.kind >= 0
        # the errors as they were (ignored detections are not in the AP data), then the true positives
        keep = error & ~self.ignored
        label, true, score = self.label.copy(), np.zeros(len(self.label), bool), self.score.copy()
        code = {"Cls": _CLS, "Loc": _LOC, "Both": _BOTH, "Dupe": _DUPE, "Bkg": _BKG}.get(kind)
        if code is not None:
            this = self.kind == code
            keep = (keep & ~this) | (this & self.fixes)
            true |= this & self.fixes
            label = np.where(this, self.fixed_label, label)
        elif kind == "Miss":
            objects -= np.bincount(self.gt_label[self.missed], minlength=num_classes)
        elif kind == "FalseNeg":
            objects -= np.bincount(self.gt_label[self.real & ~self.found], minlength=num_classes)
        points = np.r_[np.flatnonzero(keep), np.flatnonzero(self.tp)]
        group = np.r_[np.zeros(int(keep.sum()), np.int64), np.ones(int(self.tp.sum()), np.int64)]
        true = np.r_[true[keep], np.ones(int(self.tp.sum()), bool)]
        score = score[points]
        if kind == "FalsePos":
            score = true.astype(np.float64)
        return _APData(label[points], score, true, group * len(self.label) + self.order[points], objects)

    def counts(self) -> dict[str, int]:
        counts = {name: int((self.kind == code).sum()) for name, code in zip(MAIN_TYPES[:5], range(5), strict=True)}
        counts["Miss"] = int(self.missed.sum())
        counts["FalsePos"] = int((~self.tp & ~self.ignored).sum())
        counts["FalseNeg"] = int((self.real & ~self.found).sum())
        return counts


def _first_max(det: np.ndarray, gt: np.ndarray, values: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Per detection, the largest value of its pairs (0 without pairs) and the first object that
    has it (-1 without pairs): ``argmax`` over the image's objects, as TIDE reads it."""
    best, which = np.zeros(count), np.full(count, -1, np.int64)
    if len(det):
        order = np.lexsort((gt, -values, det))
        first = order[np.r_[True, det[order][1:] != det[order][:-1]]]
        best[det[first]] = values[first]
        which[det[first]] = gt[first]
    return best, which


def _finite(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else -math.inf


def _json(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _text(value: Any) -> str:
    value = float(value)
    return f"{value:.3f}" if math.isfinite(value) else "-"
