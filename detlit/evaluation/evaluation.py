"""What an evaluation found: the :class:`Evaluation` value, and everything that names or stores its numbers.

:meth:`Evaluation.from_arrays` computes it from flat arrays (the metric's ``compute`` calls it). It
owns the names of its numbers and what training logs of them (:meth:`Evaluation.logged`: every
``val/...`` and ``test/...`` metric tag, :data:`OVERALL`, :data:`LOGGED_PER_CLASS`, :func:`tag`),
and its json (:meth:`Evaluation.to_json`, written as ``metrics.json`` by ``python -m
detlit.evaluate``; :meth:`Evaluation.from_json` reads it back, files of detlit 0.2 included).

Where "evaluate" lives: this value and the metric (:mod:`detlit.evaluation.metric`) hold the
numbers; :mod:`detlit.inference.evaluate` is the job that runs a model (or reads a results file)
over a COCO set and writes the outputs; ``python -m detlit.evaluate`` (:mod:`detlit.evaluate`) is
its command.

Per-class arrays are indexed by contiguous label. Undefined values (0 / 0: precision without
detections, recall or AP without objects) are NaN, everywhere: COCOeval's ``-1`` for "no objects"
becomes NaN as well.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from detlit.evaluation.cocoeval import COCO_NAMES, nan_for_undefined, per_class_ap, run_cocoeval
from detlit.evaluation.counts import Counts, PRCurve, best_counts, confusion, counts_at, fixed_counts, pr_curves
from detlit.evaluation.matching import DetectionArrays, match_by_class

RATES = ("precision", "recall", "f1")
OVERALL = (*COCO_NAMES, *RATES, *(f"{name}@thr" for name in RATES))
"""The numbers over all classes, each logged as ``<stage>/<name>``: COCO's 12, then precision,
recall and F1 with each class at its F1-optimal threshold and at the fixed threshold (``@thr``)."""
PER_CLASS = ("ap", "ap50", "ar100", *RATES, "threshold", *(f"{name}@thr" for name in RATES))
"""The numbers of each class, in :meth:`Evaluation.scalars` as ``<name>/<class>``."""
LOGGED_PER_CLASS = ("ap", "ap50", *RATES, "threshold")
"""The per-class numbers training logs, as ``<stage>/<name>/<class>``: what the report's per-class
table shows, so a report built from the training logs alone fills every column."""
PROGRESS_BAR = ("map", "map50")
"""The numbers shown on the progress bar."""


def tag(stage: str, name: str, class_key: str | None = None) -> str:
    """The logged name of a number: ``<stage>/<name>``, or ``<stage>/<name>/<class>`` for a class
    (``class_key``: the class name as :func:`unique_names` makes it a key)."""
    return f"{stage}/{name}" if class_key is None else f"{stage}/{name}/{class_key}"


def logged_tags(stage: str, class_names: Sequence[str]) -> list[str]:
    """Every tag :meth:`Evaluation.logged` gives for these classes, in its order."""
    keys = unique_names(class_names)
    return [tag(stage, name) for name in OVERALL] + [tag(stage, name, key) for name in LOGGED_PER_CLASS for key in keys]


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
        curves: precision-recall data per class; empty in an evaluation read from json
            (:meth:`from_json`: metrics.json holds no curves, which have a point per distinct score).
        best_confusion: the confusion matrix with each class at its F1-optimal threshold (``best``):
            what the model confuses at the thresholds it is used with; a young model's scores are
            below a fixed 0.5, so there every object is missed and no confusion shows. None in a
            metrics.json written before it.
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
    best_confusion: np.ndarray | None = None

    def scalars(self) -> dict[str, float]:
        """Every number as ``{name: float}``: those of :data:`OVERALL`, and per class those of
        :data:`PER_CLASS` as ``<name>/<class>`` (``threshold``: the class's F1-optimal score
        threshold; ``@thr``: at the fixed threshold).
        """
        out = dict(self.coco)
        for suffix, counts in (("", self.best), ("@thr", self.fixed)):
            for name, value in zip(RATES, counts.overall(), strict=True):
                out[f"{name}{suffix}"] = value
        per_class = (
            self.ap,
            self.ap50,
            self.ar100,
            self.best.precision,
            self.best.recall,
            self.best.f1,
            self.best.thresholds,
            self.fixed.precision,
            self.fixed.recall,
            self.fixed.f1,
        )
        for prefix, values in zip(PER_CLASS, per_class, strict=True):
            for name, value in zip(unique_names(self.class_names), values.tolist(), strict=True):
                out[f"{prefix}/{name}"] = float(value)
        return out

    def logged(self, stage: str) -> dict[str, float]:
        """What training logs of this evaluation: ``{tag: value}`` for :func:`logged_tags`.

        Every number of :data:`OVERALL`, and per class those of :data:`LOGGED_PER_CLASS`; the
        other per-class numbers (AR100, the ``@thr`` rates) are in ``metrics.json`` only.
        """
        scalars = self.scalars()
        out = {tag(stage, name): scalars[name] for name in OVERALL}
        for name in LOGGED_PER_CLASS:
            for key in unique_names(self.class_names):
                out[tag(stage, name, key)] = scalars[f"{name}/{key}"]
        return out

    @classmethod
    def from_arrays(
        cls, data: DetectionArrays, class_names: Sequence[str], score_threshold: float, iou_threshold: float
    ) -> Evaluation:
        """The evaluation of flat arrays (labels ``0..len(class_names)-1``): COCOeval's numbers and
        per-class AP, then precision, recall, F1, curves and confusion from the one matching."""
        num_classes = len(class_names)
        data.check_labels(num_classes)
        stats, precision, recall, iou_thresholds = run_cocoeval(data, num_classes)
        ap, ap50, ar100 = per_class_ap(precision, recall, iou_thresholds)
        match = match_by_class(data, num_classes, iou_threshold)
        num_objects = np.bincount(data.gt_label[~match.gt_ignored], minlength=num_classes)
        curves = pr_curves(data, match, num_objects)
        best = best_counts(curves)
        return cls(
            class_names=tuple(class_names),
            iou_threshold=iou_threshold,
            score_threshold=score_threshold,
            coco=dict(zip(COCO_NAMES, nan_for_undefined(stats).tolist(), strict=True)),
            ap=ap,
            ap50=ap50,
            ar100=ar100,
            num_objects=num_objects,
            num_detections=np.bincount(data.det_label, minlength=num_classes),
            best=best,
            fixed=fixed_counts(data, match, num_objects, score_threshold),
            confusion=confusion(data, match, num_classes, score_threshold, iou_threshold),
            curves=curves,
            best_confusion=confusion(data, match, num_classes, best.thresholds, iou_threshold),
        )

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

    def to_json(self) -> dict[str, Any]:
        """Everything but the curves, JSON-ready (NaN and infinity written as null): the body of
        ``metrics.json``, which :meth:`from_json` reads back."""

        def clean(value: Any) -> Any:
            if isinstance(value, float):
                return value if math.isfinite(value) else None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, list):
                return [clean(v) for v in value]
            return value

        scalars = self.scalars()
        return clean(
            {
                "iou_threshold": self.iou_threshold,
                "score_threshold": self.score_threshold,
                "coco": dict(self.coco),
                "overall": {name: scalars[name] for name in OVERALL},
                "per_class": self.per_class(),
                "confusion_matrix": {
                    "rows": [*self.class_names, "background"],
                    "columns": [*self.class_names, "background"],
                    "counts": self.confusion.astype(int).tolist(),
                },
                **(
                    {}
                    if self.best_confusion is None
                    else {
                        "confusion_matrix_f1": {
                            "score_thresholds": "each class's F1-optimal threshold (per_class threshold)",
                            "counts": self.best_confusion.astype(int).tolist(),
                        }
                    }
                ),
            }
        )

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Evaluation:
        """The evaluation :meth:`to_json` wrote (other keys, such as the ones ``python -m
        detlit.evaluate`` adds to ``metrics.json``, are left alone); without curves.

        The json holds rates, not counts; the counts come back exactly: at the fixed threshold
        from the confusion matrix (its diagonal is ``fixed.tp``, column ``c`` sums to
        ``fixed.tp[c] + fixed.fp[c]``), at the F1-optimal thresholds from recall and precision
        (a class there has true positives, or no detection at all).

        Raises:
            ValueError: a value has the wrong type or the numbers do not fit together.
            KeyError: a key the json always has is missing.
        """
        rows = document["per_class"]
        if not isinstance(rows, list) or not rows or not all(isinstance(row, Mapping) for row in rows):
            raise ValueError("per_class is not a list of classes")
        names = tuple(str(row["class"]) for row in rows)

        def column(key: str, null: float = math.nan) -> np.ndarray:
            return np.asarray([json_number(row[key], f"{key} of class {row['class']}", null) for row in rows])

        objects = np.asarray([json_count(row["objects"], f"objects of class {row['class']}") for row in rows])
        confusion = _confusion(document["confusion_matrix"], len(names))
        fixed_tp = np.diagonal(confusion)[:-1].copy()
        fixed = Counts(
            np.full(len(names), json_number(document["score_threshold"], "score_threshold")),
            fixed_tp,
            confusion[:, :-1].sum(axis=0) - fixed_tp,
            objects - fixed_tp,
        )
        coco = document["coco"]
        if not isinstance(coco, Mapping):
            raise ValueError("coco is not an object of the 12 COCO numbers")
        return cls(
            class_names=names,
            iou_threshold=json_number(document["iou_threshold"], "iou_threshold"),
            score_threshold=float(fixed.thresholds[0]),
            coco={name: json_number(coco[name], f"coco {name}") for name in COCO_NAMES},
            ap=column("ap"),
            ap50=column("ap50"),
            ar100=column("ar100"),
            num_objects=objects,
            num_detections=np.asarray([json_count(row["detections"], f"detections of {row['class']}") for row in rows]),
            best=_counts_of_rates(column("threshold", null=math.inf), column("precision"), column("recall"), objects),
            fixed=fixed,
            confusion=confusion,
            curves=[],
            best_confusion=(
                _confusion(document["confusion_matrix_f1"], len(names)) if "confusion_matrix_f1" in document else None
            ),
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


def json_number(value: Any, what: str, null: float = math.nan) -> float:
    """A number of the json: null stands for ``null`` (NaN, or infinity for a threshold)."""
    if value is None:
        return null
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} is {value!r}, not a number")
    return float(value)


def json_count(value: Any, what: str) -> int:
    """A whole number of the json, 0 or more."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} is {value!r}, not a count")
    return value


def _confusion(matrix: Any, num_classes: int) -> np.ndarray:
    """The confusion matrix's counts, (K+1, K+1) whole numbers."""
    counts = matrix["counts"] if isinstance(matrix, Mapping) else None
    size = num_classes + 1
    if not isinstance(counts, list) or len(counts) != size or not all(isinstance(r, list) for r in counts):
        raise ValueError(f"the confusion matrix is not {size} rows of counts ({num_classes} classes and background)")
    if any(len(row) != size for row in counts):
        raise ValueError(f"a row of the confusion matrix does not hold {size} counts")
    return np.asarray([[json_count(value, "a count of the confusion matrix") for value in row] for row in counts])


def _counts_of_rates(thresholds: np.ndarray, precision: np.ndarray, recall: np.ndarray, objects: np.ndarray) -> Counts:
    """The counts behind precision and recall at each class's F1-optimal threshold.

    There a class has true positives (recall > 0 and precision > 0 give TP = recall x objects and
    TP + FP = TP / precision, whole numbers that the rounding recovers), or keeps no detection
    (recall 0 or undefined: nothing counted but the objects missed).
    """
    found = np.isfinite(recall) & (recall > 0) & np.isfinite(precision) & (precision > 0)
    tp = np.where(found, np.rint(np.nan_to_num(recall) * objects), 0).astype(np.int64)
    kept = np.rint(np.divide(tp, precision, out=np.zeros(len(tp)), where=found)).astype(np.int64)
    return Counts(thresholds, tp, kept - tp, objects - tp)


def unique_names(names: Sequence[str]) -> list[str]:
    """Class names as metric keys: a name used twice gets its label appended (``name_<label>``)."""
    seen = {name for name in names if list(names).count(name) > 1}
    return [f"{name}_{label}" if name in seen else name for label, name in enumerate(names)]
