"""What an evaluation found: :class:`Evaluation`, and :func:`evaluate`, which computes it from arrays.

Per-class arrays are indexed by contiguous label. Undefined values (0 / 0: precision without
detections, recall or AP without objects) are NaN, everywhere: COCOeval's ``-1`` for "no objects"
becomes NaN as well.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from detlit.evaluation.cocoeval import COCO_NAMES, nan_for_undefined, per_class_ap, run_cocoeval
from detlit.evaluation.counts import Counts, PRCurve, best_counts, confusion, counts_at, fixed_counts, pr_curves
from detlit.evaluation.matching import DetectionArrays, match_by_class


@dataclass
class Evaluation:
    """Everything :class:`DetectionMetrics` measures; per-class arrays are indexed by label.

    Attributes:
        class_names: name of each label.
        iou_threshold: IoU at which precision, recall, F1, curves and the confusion matrix match.
        score_threshold: the fixed score threshold of ``fixed`` and ``confusion``.
        coco: COCOeval's 12 stats under ``COCO_NAMES`` (map, map50, ..., mar_large), NaN where
            COCOeval gives -1.
        ap: AP at IoU 0.50:0.95 per class (area all, maxDets 100), NaN for a class without objects.
        ap50: AP at IoU 0.50 per class, NaN for a class without objects.
        ar100: AR at maxDets 100 per class, NaN for a class without objects.
        num_objects: objects per class (crowd regions excluded).
        num_detections: detections per class, whatever their score.
        best: counts with each class at the score threshold that maximises its F1.
        fixed: counts with every class at ``score_threshold``.
        confusion: (K+1, K+1) counts at ``iou_threshold`` and ``score_threshold``: rows are the
            true class with a last "background" row for detections that match no object (false
            positives), columns the predicted class with a last "background" column for objects
            that no detection found (misses).
        curves: precision-recall data per class.
    """

    class_names: tuple[str, ...]
    iou_threshold: float
    score_threshold: float
    coco: dict[str, float]
    ap: np.ndarray
    ap50: np.ndarray
    ar100: np.ndarray
    num_objects: np.ndarray
    num_detections: np.ndarray
    best: Counts
    fixed: Counts
    confusion: np.ndarray
    curves: list[PRCurve]

    def scalars(self) -> dict[str, float]:
        """Every number as ``{name: float}`` for logging.

        Names: the COCO numbers (``map``, ``map50``, ..., ``mar_large``); ``precision``, ``recall``,
        ``f1`` over all classes with each class at its F1-optimal threshold; ``precision@thr``,
        ``recall@thr``, ``f1@thr`` at the fixed threshold; per class ``ap/<name>``,
        ``ap50/<name>``, ``ar100/<name>``, ``precision/<name>``, ``recall/<name>``, ``f1/<name>``,
        ``threshold/<name>`` (its F1-optimal score threshold) and ``precision@thr/<name>``,
        ``recall@thr/<name>``, ``f1@thr/<name>``.
        """
        out = dict(self.coco)
        for suffix, counts in (("", self.best), ("@thr", self.fixed)):
            for name, value in zip(("precision", "recall", "f1"), counts.overall(), strict=True):
                out[f"{name}{suffix}"] = value
        per_class = {
            "ap": self.ap,
            "ap50": self.ap50,
            "ar100": self.ar100,
            "precision": self.best.precision,
            "recall": self.best.recall,
            "f1": self.best.f1,
            "threshold": self.best.thresholds,
            "precision@thr": self.fixed.precision,
            "recall@thr": self.fixed.recall,
            "f1@thr": self.fixed.f1,
        }
        for prefix, values in per_class.items():
            for name, value in zip(unique_names(self.class_names), values.tolist(), strict=True):
                out[f"{prefix}/{name}"] = float(value)
        return out

    def score_thresholds(self, fallback: float | None = None) -> list[float]:
        """Each class's F1-optimal score threshold; ``fallback`` (default: the fixed threshold)
        where none exists (a class never detected correctly: infinite, or without objects: NaN)."""
        default = self.score_threshold if fallback is None else fallback
        return [float(t) if math.isfinite(t) else default for t in self.best.thresholds.tolist()]

    def counts_at(self, thresholds: Sequence[float] | np.ndarray) -> Counts:
        """Per-class counts with each class's detections kept from its own score threshold."""
        return counts_at(self.curves, thresholds)

    def per_class(self) -> list[dict[str, Any]]:
        """One row per class: objects, detections, AP, AP50, AR100, and P / R / F1 at the class's
        F1-optimal threshold and at the fixed one."""
        rows = []
        for label, name in enumerate(self.class_names):
            rows.append(
                {
                    "class": name,
                    "objects": int(self.num_objects[label]),
                    "detections": int(self.num_detections[label]),
                    "ap": float(self.ap[label]),
                    "ap50": float(self.ap50[label]),
                    "ar100": float(self.ar100[label]),
                    "precision": float(self.best.precision[label]),
                    "recall": float(self.best.recall[label]),
                    "f1": float(self.best.f1[label]),
                    "threshold": float(self.best.thresholds[label]),
                    "precision@thr": float(self.fixed.precision[label]),
                    "recall@thr": float(self.fixed.recall[label]),
                    "f1@thr": float(self.fixed.f1[label]),
                }
            )
        return rows

    def as_json(self) -> dict[str, Any]:
        """Everything, JSON-ready (NaN and infinity written as null)."""

        def clean(value: Any) -> Any:
            if isinstance(value, float):
                return value if math.isfinite(value) else None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, list):
                return [clean(v) for v in value]
            return value

        return clean(
            {
                "iou_threshold": self.iou_threshold,
                "score_threshold": self.score_threshold,
                "coco": dict(self.coco),
                "overall": {k: v for k, v in self.scalars().items() if "/" not in k},
                "per_class": self.per_class(),
                "confusion_matrix": {
                    "rows": [*self.class_names, "background"],
                    "columns": [*self.class_names, "background"],
                    "counts": self.confusion.astype(int).tolist(),
                },
            }
        )

    def table(self, title: str = "per class") -> Any:
        """The per-class numbers as a rich Table (for the console and the run log)."""
        from rich.table import Table

        table = Table(title=title)
        columns = ("class", "objects", "AP", "AP50", "AR100", "P", "R", "F1", "thr", f"F1@{self.score_threshold:g}")
        for column in columns:
            table.add_column(column, justify="left" if column == "class" else "right")
        for row in self.per_class():
            values = [row[k] for k in ("ap", "ap50", "ar100", "precision", "recall", "f1", "threshold", "f1@thr")]
            table.add_row(row["class"], str(row["objects"]), *(_cell(v) for v in values))
        return table


def _cell(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.3f}"


def unique_names(names: Sequence[str]) -> list[str]:
    """Class names as metric keys: a name used twice gets its label appended (``name_<label>``)."""
    seen = {name for name in names if list(names).count(name) > 1}
    return [f"{name}_{label}" if name in seen else name for label, name in enumerate(names)]


def evaluate(
    data: DetectionArrays, class_names: Sequence[str], score_threshold: float, iou_threshold: float
) -> Evaluation:
    """The :class:`Evaluation` of flat arrays (labels ``0..len(class_names)-1``)."""
    num_classes = len(class_names)
    data.check_labels(num_classes)
    stats, precision, recall, iou_thresholds = run_cocoeval(data, num_classes)
    ap, ap50, ar100 = per_class_ap(precision, recall, iou_thresholds)
    match = match_by_class(data, num_classes, iou_threshold)
    num_objects = np.bincount(data.gt_label[~match.gt_ignored], minlength=num_classes)
    curves = pr_curves(data, match, num_objects)
    return Evaluation(
        class_names=tuple(class_names),
        iou_threshold=iou_threshold,
        score_threshold=score_threshold,
        coco=dict(zip(COCO_NAMES, nan_for_undefined(stats).tolist(), strict=True)),
        ap=ap,
        ap50=ap50,
        ar100=ar100,
        num_objects=num_objects,
        num_detections=np.bincount(data.det_label, minlength=num_classes),
        best=best_counts(curves),
        fixed=fixed_counts(data, match, num_objects, score_threshold),
        confusion=confusion(data, match, num_classes, score_threshold, iou_threshold),
        curves=curves,
    )
