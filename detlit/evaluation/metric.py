"""Stage [8]: detection metrics: the COCO AP/AR family, precision/recall/F1, per-class numbers, confusion.

:class:`DetectionMetrics` is torchmetrics' ``MeanAveragePrecision`` (its ``update`` and its list
states) with a ``compute`` that returns an :class:`Evaluation`:

* the 12 COCO numbers, computed by ``faster_coco_eval``'s ``COCOeval`` in float64, equal to
  pycocotools' ``COCOeval.stats`` (torchmetrics' own ``compute`` rounds them to float32 and
  evaluates every class a second time for per-class numbers; this one evaluates once and slices
  ``eval["precision"]`` / ``eval["recall"]`` per class);
* per class: AP, AP50, AR100, objects and detections;
* precision, recall and F1 per class and over all classes, at the F1-optimal score threshold of
  each class and at a fixed score threshold, from raw counts (not COCO's interpolated precision);
* a detection confusion matrix and precision-recall curves per class.

Matching at ``iou_threshold`` (precision/recall/F1, curves, the diagonal of the confusion matrix)
is COCOeval's for area "all" and ``maxDets=100``: per image and class, detections are taken in
descending score order (stable), at most 100 of them; each takes the unmatched object with the
highest IoU >= the threshold (IoU ties go to the object listed last, as in COCOeval), objects
before crowd regions. A crowd region is an ignore region: IoU with it is intersection over the
detection's area, it can absorb any number of detections, and a detection on it counts neither as
a true nor as a false positive; crowd regions are never missed. Detections beyond the 100 per
image and class are left out of every number, as COCOeval leaves them out.

Undefined values (0 / 0: precision without detections, recall or AP without objects) are NaN,
everywhere: COCOeval's ``-1`` for "no objects" becomes NaN as well.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torchmetrics.detection import MeanAveragePrecision
from torchmetrics.utilities.distributed import gather_all_tensors

if TYPE_CHECKING:
    from detlit.compat import Instances

# faster_coco_eval prints its whole summary at INFO level on every computation.
logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)

# torchmetrics key -> logged name (without the stage prefix), in the order of COCOeval.stats
COCO_KEYS = {
    "map": "map",
    "map_50": "map50",
    "map_75": "map75",
    "map_small": "map_small",
    "map_medium": "map_medium",
    "map_large": "map_large",
    "mar_1": "mar1",
    "mar_10": "mar10",
    "mar_100": "mar100",
    "mar_small": "mar_small",
    "mar_medium": "mar_medium",
    "mar_large": "mar_large",
}
COCO_NAMES = tuple(COCO_KEYS.values())

MAX_DETECTIONS = 100  # COCOeval's largest maxDets: detections per image and class that count
# COCOeval's area range "all"; objects outside it are ignored, unmatched detections outside it too.
AREA_ALL = (0.0, 1e5**2)

# MeanAveragePrecision arguments that DetectionMetrics fixes: its numbers are COCOeval's defaults.
_FIXED_ARGUMENTS = frozenset(
    {
        "box_format",
        "iou_type",
        "iou_thresholds",
        "rec_thresholds",
        "max_detection_thresholds",
        "class_metrics",
        "extended_summary",
        "average",
        "backend",
    }
)


def coco_map() -> MeanAveragePrecision:
    """COCO bbox AP/AR with pycocotools-equal numbers (backend ``faster_coco_eval``)."""
    return MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="faster_coco_eval")


def as_prediction(instances: Instances) -> dict[str, torch.Tensor]:
    """detectron2 ``Instances`` (original pixels) -> torchmetrics prediction dict."""
    return {
        "boxes": instances.pred_boxes.tensor.detach().float(),
        "scores": instances.scores.detach().float(),
        "labels": instances.pred_classes.detach(),
    }


def coco_scalars(result: dict[str, Any]) -> dict[str, float]:
    """The scalar COCO numbers of a ``MeanAveragePrecision.compute()`` result, renamed."""
    return {name: float(result[key]) for key, name in COCO_KEYS.items()}


# --- results -------------------------------------------------------------------------------


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


# --- the metric ----------------------------------------------------------------------------


class DetectionMetrics(MeanAveragePrecision):
    """COCO AP/AR, precision/recall/F1, per-class numbers and confusion of a detector.

    ``update(preds, targets)`` is torchmetrics': per image, predictions ``{"boxes"`` (XYXY,
    original pixels), ``"scores"``, ``"labels"}`` and targets ``{"boxes", "labels", "iscrowd",
    "area"}`` (``area`` <= 0 or missing: the box area is used), labels contiguous ``0..K-1``.
    Targets may also carry the COCO ``"image_id"``: when every image has one, images are evaluated
    in ascending id order, which is COCOeval's order and decides between equal scores of different
    images, so the numbers equal pycocotools' whatever order (or process) the images came in.
    ``compute()`` gathers the states of all processes (torchmetrics' synchronisation, see
    ``_sync_dist``) and returns an :class:`Evaluation`. Boxes are evaluated as given: pass float64
    for numbers that equal pycocotools on the json's float64 boxes to the last digit.

    Args:
        class_names: name of each label ``0..K-1``.
        score_threshold: the fixed score threshold of the ``@thr`` numbers and the confusion matrix.
        iou_threshold: IoU at which precision, recall, F1, curves and the confusion matrix match.
        kwargs: torchmetrics ``Metric`` options (``sync_on_compute``, ``process_group``, ...).
    """

    def __init__(
        self,
        class_names: Sequence[str],
        score_threshold: float = 0.5,
        iou_threshold: float = 0.5,
        **kwargs: Any,
    ):
        fixed = _FIXED_ARGUMENTS & kwargs.keys()
        if fixed:
            raise TypeError(f"DetectionMetrics fixes {sorted(fixed)} to COCOeval's defaults; leave them out")
        if not class_names:
            raise ValueError("class_names is empty; give the name of each class")
        if not math.isfinite(score_threshold):
            raise ValueError(f"score_threshold must be a finite number, not {score_threshold}")
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], not {iou_threshold}")
        super().__init__(box_format="xyxy", iou_type="bbox", backend="faster_coco_eval", **kwargs)
        self.add_state("image_ids", default=[], dist_reduce_fx=None)
        self.class_names = tuple(class_names)
        self.score_threshold = float(score_threshold)
        self.iou_threshold = float(iou_threshold)

    def update(self, preds: list[dict[str, torch.Tensor]], target: list[dict[str, torch.Tensor]]) -> None:
        """torchmetrics' update, which also records each target's ``image_id`` (-1 without one)."""
        super().update(preds, target)
        for item in target:
            image_id = item.get("image_id", -1)
            self.image_ids.append(torch.as_tensor(image_id, dtype=torch.float64, device=self.device).reshape(1))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def compute(self) -> Evaluation:  # type: ignore[override]
        """The evaluation of everything given to ``update`` (on all processes)."""
        data = _Arrays.from_states(self)
        data.check_labels(self.num_classes)
        return evaluate_arrays(
            data,
            self.class_names,
            self.score_threshold,
            self.iou_threshold,
            coco=self._coco_backend.coco,
            cocoeval=self._coco_backend.cocoeval,
        )

    def packed_states(self) -> list[torch.Tensor]:
        """This process's states as three float64 tensors: images, detections, ground truth.

        ``images`` is (images, 3): detections, objects and image id (-1: none) of each image;
        detections (N, 6) are ``x, y, w, h, score, label``; ground truth (M, 7) ``x, y, w, h,
        label, crowd, area``.
        """
        device = self.device
        counts = torch.tensor(
            [[len(s) for s in self.detection_scores], [len(s) for s in self.groundtruth_labels]],
            dtype=torch.float64,
            device=device,
        ).T.reshape(-1, 2)
        sizes = torch.cat([counts, _cat(self.image_ids, 1, device)], dim=1)
        detections = torch.cat(
            [
                _cat(self.detection_box, 4, device),
                _cat(self.detection_scores, 1, device),
                _cat(self.detection_labels, 1, device),
            ],
            dim=1,
        )
        ground_truth = torch.cat(
            [
                _cat(self.groundtruth_box, 4, device),
                _cat(self.groundtruth_labels, 1, device),
                _cat(self.groundtruth_crowds, 1, device),
                _cat(self.groundtruth_area, 1, device),
            ],
            dim=1,
        )
        return [sizes, detections, ground_truth]

    def _sync_dist(self, dist_sync_fn: Callable | None = None, process_group: Any | None = None) -> None:
        """Gather the states of all processes: three all-gathers of packed tensors.

        torchmetrics gathers list states one element at a time, which needs every process to hold
        the same number of images (validation shards differ by one when they do not divide evenly;
        see ``detlit.data.samplers``) and costs two collectives per image and state. Packed, each
        process sends its images whole, in one tensor per kind, and any process may hold any
        number of images, none included. Images end up ordered by process, then as updated.
        """
        gather = dist_sync_fn or gather_all_tensors
        group = process_group or self.process_group
        sizes, detections, ground_truth = (torch.cat(gather(t, group=group)) for t in self.packed_states())
        det_sizes, gt_sizes = sizes[:, :2].long().T.tolist()
        det_parts = torch.split(detections, det_sizes) if det_sizes else ()
        gt_parts = torch.split(ground_truth, gt_sizes) if gt_sizes else ()
        self.detection_box = [d[:, :4] for d in det_parts]
        self.detection_scores = [d[:, 4] for d in det_parts]
        self.detection_labels = [d[:, 5].long() for d in det_parts]
        self.groundtruth_box = [g[:, :4] for g in gt_parts]
        self.groundtruth_labels = [g[:, 4].long() for g in gt_parts]
        self.groundtruth_crowds = [g[:, 5].long() for g in gt_parts]
        self.groundtruth_area = [g[:, 6] for g in gt_parts]
        self.image_ids = list(sizes[:, 2:])


def _cat(items: list[torch.Tensor], width: int, device: torch.device) -> torch.Tensor:
    """The per-image tensors of one state stacked as a float64 (rows, width) tensor."""
    if not items:
        return torch.zeros((0, width), dtype=torch.float64, device=device)
    # An image without boxes can be stored as shape (1, 0) (torchmetrics' empty-tensor fix).
    # torch.cat promotes mixed dtypes (float32 and float64 boxes) to the wider one, exactly.
    return torch.cat([x.detach().reshape(-1, width) for x in items]).to(torch.float64)


# --- evaluation on arrays ----------------------------------------------------------------------


@dataclass
class _Arrays:
    """All images' detections and ground truth as flat float64/int64 arrays; boxes XYWH."""

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
    def from_states(cls, metric: DetectionMetrics) -> _Arrays:
        sizes, detections, ground_truth = (t.cpu().numpy() for t in metric.packed_states())
        images = np.arange(len(sizes))
        image_ids = sizes[:, 2]
        if len(sizes) and (image_ids >= 0).all():
            # COCOeval takes images in ascending id order: number them so
            images[np.argsort(image_ids, kind="stable")] = np.arange(len(sizes))
        det_image = np.repeat(images, sizes[:, 0].astype(np.int64))
        gt_image = np.repeat(images, sizes[:, 1].astype(np.int64))
        box, area = ground_truth[:, :4], ground_truth[:, 6]
        return cls(
            num_images=len(sizes),
            det_image=det_image,
            det_box=detections[:, :4],
            det_score=detections[:, 4],
            det_label=detections[:, 5].astype(np.int64),
            gt_image=gt_image,
            gt_box=box,
            gt_label=ground_truth[:, 4].astype(np.int64),
            gt_crowd=ground_truth[:, 5] != 0,
            # As torchmetrics hands objects to COCOeval: the given area, or the box area without one.
            gt_area=np.where(area > 0, area, box[:, 2] * box[:, 3]),
        )

    def check_labels(self, num_classes: int) -> None:
        for what, labels in (("prediction", self.det_label), ("target", self.gt_label)):
            bad = labels[(labels < 0) | (labels >= num_classes)]
            if bad.size:
                raise ValueError(
                    f"{what} label {int(bad[0])} is outside 0..{num_classes - 1}; labels must be contiguous "
                    f"class indices of the {num_classes} class_names"
                )


def evaluate_arrays(
    data: _Arrays,
    class_names: Sequence[str],
    score_threshold: float,
    iou_threshold: float,
    coco: Any,
    cocoeval: Any,
) -> Evaluation:
    """The :class:`Evaluation` of flat arrays; ``coco``/``cocoeval`` are the COCO API classes to use."""
    num_classes = len(class_names)
    stats, precision, recall, iou_thresholds = _run_cocoeval(data, num_classes, coco, cocoeval)
    ap, ap50, ar100 = _per_class_ap(precision, recall, iou_thresholds)
    match = _match_by_class(data, num_classes, iou_threshold)
    num_objects = np.bincount(data.gt_label[~match.gt_ignored], minlength=num_classes)
    curves = _curves(data, match, num_objects)
    return Evaluation(
        class_names=tuple(class_names),
        iou_threshold=iou_threshold,
        score_threshold=score_threshold,
        coco=dict(zip(COCO_NAMES, _nan_for_undefined(stats).tolist(), strict=True)),
        ap=ap,
        ap50=ap50,
        ar100=ar100,
        num_objects=num_objects,
        num_detections=np.bincount(data.det_label, minlength=num_classes),
        best=_best_counts(curves),
        fixed=_fixed_counts(data, match, num_objects, score_threshold),
        confusion=_confusion(data, match, num_classes, score_threshold, iou_threshold),
        curves=curves,
    )


def _nan_for_undefined(values: np.ndarray) -> np.ndarray:
    return np.where(values == -1, np.nan, values)


def _run_cocoeval(
    data: _Arrays, num_classes: int, coco: Any, cocoeval: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """COCOeval (default parameters, every label a category) on the arrays.

    Returns:
        ``stats`` (12,), ``eval["precision"]`` [T, R, K, A, M], ``eval["recall"]`` [T, K, A, M]
        and the IoU thresholds T.
    """
    iou_thresholds = np.linspace(0.5, 0.95, 10)
    if data.num_images == 0:
        precision = -np.ones((10, 101, num_classes, 4, 3))
        return -np.ones(12), precision, -np.ones((10, num_classes, 4, 3)), iou_thresholds
    images = [{"id": i} for i in range(data.num_images)]
    categories = [{"id": k, "name": str(k)} for k in range(num_classes)]
    gt_boxes, dt_boxes = data.gt_box.tolist(), data.det_box.tolist()
    # Annotation ids start at 1: COCOeval marks "unmatched" with id 0.
    gt_annotations = [
        {"id": i, "image_id": image, "category_id": label, "bbox": box, "area": area, "iscrowd": crowd}
        for i, image, label, box, area, crowd in zip(
            range(1, len(gt_boxes) + 1),
            data.gt_image.tolist(),
            data.gt_label.tolist(),
            gt_boxes,
            data.gt_area.tolist(),
            data.gt_crowd.astype(int).tolist(),
            strict=True,
        )
    ]
    # As COCO.loadRes makes them: area = w * h, never crowd.
    dt_annotations = [
        {"id": i, "image_id": image, "category_id": label, "bbox": box, "score": score, "area": area, "iscrowd": 0}
        for i, image, label, box, score, area in zip(
            range(1, len(dt_boxes) + 1),
            data.det_image.tolist(),
            data.det_label.tolist(),
            dt_boxes,
            data.det_score.tolist(),
            (data.det_box[:, 2] * data.det_box[:, 3]).tolist(),
            strict=True,
        )
    ]
    ground_truth, detections = coco(), coco()
    ground_truth.dataset = {"images": images, "annotations": gt_annotations, "categories": categories}
    detections.dataset = {"images": images, "annotations": dt_annotations, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth.createIndex()
        detections.createIndex()
        evaluator = cocoeval(ground_truth, detections, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return (
        np.asarray(evaluator.stats[:12], np.float64),
        np.asarray(evaluator.eval["precision"], np.float64),
        np.asarray(evaluator.eval["recall"], np.float64),
        np.asarray(evaluator.params.iouThrs, np.float64),
    )


def _per_class_ap(
    precision: np.ndarray, recall: np.ndarray, iou_thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AP, AP50 and AR100 per class, averaged exactly as COCOeval.summarize averages them.

    Area "all", maxDets 100; the mean is over the entries that are not -1 (COCOeval's "no
    object of this class"), NaN when every entry is -1.
    """

    def mean_defined(values: np.ndarray) -> np.ndarray:
        # values: [..., K]; per class, np.mean of the entries > -1, as summarize computes it
        out = np.full(values.shape[-1], np.nan)
        for k in range(values.shape[-1]):
            defined = values[..., k][values[..., k] > -1]
            if defined.size:
                out[k] = np.mean(defined)
        return out

    iou50 = int(np.flatnonzero(iou_thresholds == 0.5)[0])
    ap = mean_defined(precision[:, :, :, 0, -1])
    ap50 = mean_defined(precision[iou50, :, :, 0, -1])
    ar100 = mean_defined(recall[:, :, 0, -1])
    return ap, ap50, ar100


# --- matching ------------------------------------------------------------------------------


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


def _ranks(keys: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order by key, then by descending score (stable), and each item's rank within its key."""
    order = np.argsort(-scores, kind="stable")
    order = order[np.argsort(keys[order], kind="stable")]
    rank = np.empty(len(keys), np.int64)
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    counts = np.diff(np.r_[starts, len(keys)])
    rank[order] = np.arange(len(keys)) - np.repeat(starts, counts)
    return order, rank


def _pairs(det_keys: np.ndarray, gt_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


@dataclass
class _Match:
    """Per-class COCOeval matching at one IoU threshold."""

    kept: np.ndarray  # per detection: among the first MAX_DETECTIONS of its image and class
    tp: np.ndarray  # per detection: matched an object (not an ignored one)
    ignored: np.ndarray  # per detection: matched a crowd region (or outside area "all")
    gt_of: np.ndarray  # per detection: the matched object's index, -1 for none
    gt_ignored: np.ndarray  # per object: crowd region (or area outside "all")

    @property
    def fp(self) -> np.ndarray:
        return self.kept & ~self.tp & ~self.ignored


def _effective_threshold(iou_threshold: float) -> float:
    # COCOeval starts the best IoU at min(t, 1 - 1e-10) and accepts IoU >= it.
    return min(iou_threshold, 1 - 1e-10)


def _match_by_class(data: _Arrays, num_classes: int, iou_threshold: float) -> _Match:
    """COCOeval's matching (``evaluateImg``) at ``iou_threshold``, area all, maxDets 100."""
    threshold = _effective_threshold(iou_threshold)
    lo, hi = AREA_ALL
    gt_ignored = data.gt_crowd | (data.gt_area < lo) | (data.gt_area > hi)
    det_keys = data.det_image * num_classes + data.det_label
    _, rank = _ranks(det_keys, data.det_score)
    kept = rank < MAX_DETECTIONS
    kept_index = np.flatnonzero(kept)
    det, gt = _pairs(det_keys[kept_index], data.gt_image * num_classes + data.gt_label)
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
    return _Match(kept, matched & ~ignored, ignored, gt_of, gt_ignored)


def _curves(data: _Arrays, match: _Match, num_objects: np.ndarray) -> list[PRCurve]:
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


def _best_counts(curves: list[PRCurve]) -> Counts:
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


def _fixed_counts(data: _Arrays, match: _Match, num_objects: np.ndarray, score_threshold: float) -> Counts:
    above = data.det_score >= score_threshold
    k = len(num_objects)
    tp = np.bincount(data.det_label[match.tp & above], minlength=k)
    fp = np.bincount(data.det_label[match.fp & above], minlength=k)
    return Counts(np.full(k, score_threshold), tp, fp, num_objects - tp)


def _confusion(
    data: _Arrays, match: _Match, num_classes: int, score_threshold: float, iou_threshold: float
) -> np.ndarray:
    """Detection confusion matrix at the fixed score threshold (see :class:`Evaluation`).

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
    above = data.det_score >= score_threshold
    tp, fp = match.tp & above, match.fp & above
    found = np.zeros(len(data.gt_label), bool)
    found[match.gt_of[tp]] = True
    free = np.flatnonzero(~match.gt_ignored & ~found)
    wrong = np.flatnonzero(fp)

    _, rank = _ranks(data.det_image[wrong], data.det_score[wrong])
    det, gt = _pairs(data.det_image[wrong], data.gt_image[free])
    iou = box_iou(data.det_box[wrong[det]], data.gt_box[free[gt]], np.zeros(len(det), bool))
    candidate = iou >= _effective_threshold(iou_threshold)
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


# --- timing against pycocotools ---------------------------------------------------------------


def synthetic_data(
    num_images: int = 5000,
    detections_per_image: int = 100,
    num_classes: int = 80,
    objects_per_image: int = 7,
    seed: int = 0,
) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]]]:
    """Seeded predictions and targets (float64 XYXY boxes) that look like a detector's output.

    Each image has 1 to ``2 * objects_per_image - 1`` objects (about 1 in 50 a crowd region) in
    1000 x 800 pixels; detections are jittered copies of objects (some with a wrong class) and
    random boxes, with random scores.
    """
    rng = np.random.default_rng(seed)
    preds, targets = [], []
    for _ in range(num_images):
        n = int(rng.integers(1, 2 * objects_per_image))
        xy = rng.uniform(0, 900, (n, 2))
        wh = rng.uniform(4, 300, (n, 2)) * rng.choice([0.1, 0.4, 1.0], (n, 1))
        gt = np.hstack([xy, xy + wh])
        labels = rng.integers(0, num_classes, n)
        crowd = rng.random(n) < 0.02
        copies = rng.integers(0, n, detections_per_image)
        jitter = rng.normal(0, 0.08, (detections_per_image, 4)) * np.tile(wh[copies], 2)
        boxes = gt[copies] + jitter
        random = rng.random(detections_per_image) < 0.4
        rxy = rng.uniform(0, 900, (int(random.sum()), 2))
        boxes[random] = np.hstack([rxy, rxy + rng.uniform(4, 200, (int(random.sum()), 2))])
        det_labels = np.where(
            rng.random(detections_per_image) < 0.8,
            labels[copies],
            rng.integers(0, num_classes, detections_per_image),
        )
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        preds.append(
            {
                "boxes": torch.from_numpy(boxes),
                "scores": torch.from_numpy(rng.random(detections_per_image)),
                "labels": torch.from_numpy(det_labels),
            }
        )
        targets.append(
            {
                "boxes": torch.from_numpy(gt),
                "labels": torch.from_numpy(labels),
                "iscrowd": torch.from_numpy(crowd.astype(np.int64)),
                "area": torch.from_numpy(wh[:, 0] * wh[:, 1]),
            }
        )
    return preds, targets


def pycocotools_stats(ground_truth: dict[str, Any], results: Sequence[dict[str, Any]]) -> np.ndarray:
    """pycocotools' own ``COCOeval`` (bbox, default parameters) on COCO json dicts: its 12 stats,
    NaN where it gives -1. The reference that DetectionMetrics is checked and timed against.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # summarize() prints
        coco = COCO()
        coco.dataset = ground_truth
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes([dict(r) for r in results]), "bbox")  # loadRes edits its input
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return _nan_for_undefined(np.asarray(evaluator.stats[:12], np.float64))
