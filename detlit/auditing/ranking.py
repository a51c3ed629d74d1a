"""After stage 8, auditing the labels: likely label mistakes from a model's detections, in one ranked list.

The detections must come from a model that did not train on the image (out-of-fold, or a held-out
split): a model agrees with the labels it learned, mistakes included. Overlaps are the one
matcher's IoU (:func:`detlit.evaluation.matching.box_iou`, COCO's ``bbIou``); against a crowd
region it is the share of the detection inside the region. A detection's confidence ``c`` is its
score calibrated on the audited images (:mod:`detlit.auditing.calibration`: the share of the
model's detections of its class scoring about as much that the labels confirm), and ``r`` is the
share of a class's objects the model finds. Five kinds, each with a score from 0 to 1 read as
"how likely this is a mistake", so one ranked list holds them all:

``missing`` (a label nobody drew)
    A detection overlapping every object, of any class, less than :data:`MISSING_IOU` and lying
    less than :data:`CROWD_INSIDE` inside every crowd region, unless a ``box`` row moves a label
    onto it. Score: ``c``. Of several such detections on one spot (IoU >= :data:`SUPPRESS_IOU`)
    only the most confident is kept. Suggestion: add the detection's box and class.
``spurious`` (a label on nothing)
    An object that no detection of any class with ``c >=`` :data:`NEAR_FLOOR` overlaps
    :data:`SPURIOUS_IOU` or more. Score: ``r x (1 - c)``, ``c`` of the most confident detection
    touching it at all (0 when none does): a model that finds 95% of the circles says more by
    missing one than a model that finds 40%. Suggestion: delete it. Crowd regions are never spurious.
``box`` (a box drawn badly)
    The most confident detection of the object's class whose best object of that class is this
    one overlaps it :data:`BOX_IOU` (from ``low`` to below ``high``); below :data:`MISSING_IOU`
    only when no detection of the class with ``c >=`` :data:`NEAR_FLOOR` overlaps the label
    :data:`MISSING_IOU` or more (else the detection is another object). Score: ``c x ramp(IoU) -
    g``, ``ramp`` 1 up to IoU :data:`BOX_FULL`, falling linearly to 0 at ``high``, and ``g`` the
    best ``c`` of same-class detections that agree with the box (IoU >= ``high``). Suggestion:
    the detection's box.
``class`` (a wrong class)
    The model's box head, asked about the labelled box itself (given as its region proposal:
    :class:`HeadView`), finds another class ``b`` more likely than the label's ``a``. Score:
    ``(p_b - p_a) / (p_b + p_a) x min(1, p_b /`` :data:`HEAD_FULL` ``)``, the share of ``b``
    between the two, weighted down where the head sees little of ``b`` (on background both are
    near 0). Detections of two classes on one object score alike after box regression and
    non-maximum suppression; the head on the exact labelled box tells them apart. A model without a
    box head (RetinaNet): a detection of another class on the object (IoU >= :data:`CLASS_IOU`)
    that no object of its own class explains, scored its ``c`` minus the best ``c`` of the object's
    own class there (IoU >= :data:`CLASS_IOU`), when positive. Suggestion: class ``b``.
``duplicate`` (one object labelled twice)
    Two objects of one class overlapping :data:`DUPLICATE_IOU` or more; no model needed, so every
    image is checked, audited by a model or not. Score: their IoU. Suggestion: delete the one
    with the larger annotation id.

An object gets at most one row, its highest-scoring kind. Rows are ranked by score, highest first
(ties: image id, then annotation id, then kind)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from detlit.auditing.calibration import Calibration, calibrate
from detlit.evaluation.matching import box_iou

KINDS = ("missing", "spurious", "box", "class", "duplicate")
"""Every kind of mistake, in the order the log lists them."""
ACTIONS = {
    "missing": "add",
    "spurious": "delete",
    "box": "replace box",
    "class": "change class",
    "duplicate": "delete",
}
"""What accepting a row of each kind does to the json."""

MISSING_IOU = 0.3
SPURIOUS_IOU = 0.1
BOX_IOU = (0.1, 0.7)
BOX_FULL = 0.4
CLASS_IOU = 0.5
DUPLICATE_IOU = 0.7
CROWD_INSIDE = 0.5
SUPPRESS_IOU = 0.5
HEAD_FULL = 0.2  # the box head's probability of another class from which a class row gets its full score
NEAR_FLOOR = 0.1  # calibrated: a detection less sure than this does not keep a label from being spurious

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Labels:
    """One image's objects as the json has them; boxes XYWH in pixels."""

    ids: np.ndarray  # (M,) annotation ids
    boxes: np.ndarray  # (M, 4)
    category_ids: np.ndarray  # (M,)
    crowd: np.ndarray  # (M,) bool

    @classmethod
    def of(
        cls, ids: Iterable[int], boxes: Iterable[Sequence[float]], category_ids: Iterable[int], crowd: Iterable[bool]
    ) -> Labels:
        return cls(
            np.asarray(list(ids), np.int64),
            np.asarray(list(boxes), np.float64).reshape(-1, 4),
            np.asarray(list(category_ids), np.int64),
            np.asarray(list(crowd), bool),
        )


@dataclass(frozen=True)
class HeadView:
    """What the model's box head says of an image's labelled boxes, given to it as proposals
    (:func:`detlit.model.box_classes.class_probabilities`): per label, a probability per class."""

    probabilities: np.ndarray  # (M, C), rows in the order of the image's labels, background left out
    category_ids: np.ndarray  # (C,) the original category id of each column


@dataclass(frozen=True)
class Found:
    """One image's detections; boxes XYWH in the image's pixels, original category ids; and, where
    the model has a box head, what it says of the labelled boxes."""

    boxes: np.ndarray  # (D, 4)
    scores: np.ndarray  # (D,)
    category_ids: np.ndarray  # (D,)
    labelled: HeadView | None = None

    @classmethod
    def of(
        cls,
        boxes: Iterable[Sequence[float]],
        scores: Iterable[float],
        category_ids: Iterable[int],
        labelled: HeadView | None = None,
    ) -> Found:
        return cls(
            np.asarray(list(boxes), np.float64).reshape(-1, 4),
            np.asarray(list(scores), np.float64),
            np.asarray(list(category_ids), np.int64),
            labelled,
        )

    @classmethod
    def none(cls) -> Found:
        return cls.of([], [], [])


@dataclass(frozen=True)
class AuditedImage:
    """An image of the json, its labels and, when a model predicted it, its detections."""

    image_id: int
    file_name: str
    labels: Labels
    found: Found | None  # None: no model predicted the image (only duplicates are looked for)


@dataclass(frozen=True)
class Mistake:
    """One row of the ranked list: a likely mistake and the correction suggested.

    ``box`` is the label's box, or for a ``missing`` label the detection's; ``suggested_box`` is
    set for ``missing`` and ``box``, ``suggested_category_id`` for ``missing`` and ``class``.
    """

    kind: str
    image_id: int
    file_name: str
    annotation_id: int | None
    category_id: int
    box: Box
    score: float
    suggested_category_id: int | None = None
    suggested_box: Box | None = None
    note: str = ""
    accept: str = field(default="", compare=False)

    @property
    def action(self) -> str:
        return ACTIONS[self.kind]


def overlaps(boxes: np.ndarray, others: np.ndarray, crowd: np.ndarray | None = None) -> np.ndarray:
    """(N, M) IoU of every box with every other box (XYWH); against a crowd region (``crowd``, per
    other box) the share of the box inside it."""
    n, m = len(boxes), len(others)
    flags = np.zeros(m, bool) if crowd is None else crowd
    rows = np.repeat(boxes.reshape(-1, 4), m, axis=0)
    columns = np.tile(others.reshape(-1, 4), (n, 1))
    return box_iou(rows, columns, np.tile(flags, n)).reshape(n, m)


def _box(values: np.ndarray) -> Box:
    x, y, w, h = (float(v) for v in values)
    return (x, y, w, h)


def _missing(
    image: AuditedImage, det: Found, conf: np.ndarray, iou: np.ndarray, min_score: float, used: set[int]
) -> list[Mistake]:
    labels = image.labels
    real = ~labels.crowd
    near = iou[:, real].max(axis=1, initial=0.0)
    inside = iou[:, labels.crowd].max(axis=1, initial=0.0)
    free = np.ones(len(conf), bool)
    free[list(used)] = False
    candidates = np.flatnonzero((near < MISSING_IOU) & (inside < CROWD_INSIDE) & (conf >= min_score) & free)
    candidates = candidates[np.argsort(-conf[candidates], kind="stable")]
    between = overlaps(det.boxes[candidates], det.boxes[candidates])
    kept: list[int] = []
    for position in range(len(candidates)):
        if all(between[position, other] < SUPPRESS_IOU for other in kept):
            kept.append(position)
    rows = []
    for position in kept:
        d = int(candidates[position])
        cid = int(det.category_ids[d])
        rows.append(
            Mistake(
                "missing",
                image.image_id,
                image.file_name,
                None,
                cid,
                _box(det.boxes[d]),
                float(conf[d]),
                suggested_category_id=cid,
                suggested_box=_box(det.boxes[d]),
                note=f"detected with score {det.scores[d]:.2f}; no label overlaps it {MISSING_IOU:g} or more",
            )
        )
    return rows


def _object_rows(
    image: AuditedImage,
    det: Found,
    conf: np.ndarray,
    iou: np.ndarray,
    recall: Mapping[int, float],
    sources: dict[int, int],
) -> list[list[Mistake]]:
    """Per object, the rows of the model's kinds (spurious, box, class) it qualifies for; ``sources``
    gets the detection each ``box`` row suggests (by the row's ``id``)."""
    labels = image.labels
    real = ~labels.crowd
    det_cid, obj_cid = det.category_ids, labels.category_ids
    same = det_cid[:, None] == obj_cid[None, :]
    # Per detection, the best-overlapping object of its own class (crowd regions aside), and that overlap.
    own = np.where(same & real[None, :], iou, -1.0)
    home_iou = own.max(axis=1, initial=-1.0)
    home = np.where(home_iou >= 0, own.argmax(axis=1) if len(labels.ids) else -1, -1)
    rows: list[list[Mistake]] = []
    for j in range(len(labels.ids)):
        found: list[Mistake] = []
        rows.append(found)
        if not real[j]:
            continue
        common = (int(labels.ids[j]), int(obj_cid[j]), _box(labels.boxes[j]))
        column = iou[:, j]
        if column[conf >= NEAR_FLOOR].max(initial=0.0) < SPURIOUS_IOU:
            best = float(conf[column > 0].max(initial=0.0))
            score = recall.get(int(obj_cid[j]), 1.0) * (1.0 - best)
            note = f"no detection overlaps it {SPURIOUS_IOU:g} or more"
            found.append(Mistake("spurious", image.image_id, image.file_name, *common, score, note=note))
        mine = same[:, j]
        low, high = BOX_IOU
        # a detection overlapping the label less than MISSING_IOU moves it only when no detection of its
        # class supports the label where it is: else it is another object, nobody labelled
        supported = bool((mine & (column >= MISSING_IOU) & (conf >= NEAR_FLOOR)).any())
        floor = MISSING_IOU if supported else low
        candidates = np.flatnonzero(mine & (column >= floor) & (home == j))
        if len(candidates):
            d = int(candidates[np.argmax(conf[candidates])])
            agree = float(conf[mine & (column >= high)].max(initial=0.0))
            if column[d] < high:
                ramp = min(1.0, (high - float(column[d])) / (high - BOX_FULL))
                score = float(conf[d]) * ramp - agree
                if score > 0:
                    note = f"the best detection of its class overlaps it {column[d]:.2f} (score {det.scores[d]:.2f})"
                    row = Mistake(
                        "box",
                        image.image_id,
                        image.file_name,
                        *common,
                        score,
                        suggested_category_id=int(obj_cid[j]),
                        suggested_box=_box(det.boxes[d]),
                        note=note,
                    )
                    sources[id(row)] = d
                    found.append(row)
        options: list[tuple[float, int, str]] = []
        others = np.flatnonzero(~mine & (column >= CLASS_IOU) & (home_iou < CLASS_IOU))
        if det.labelled is not None:
            options += _head_class(det.labelled, j, int(obj_cid[j]))
        elif len(others):
            d = int(others[np.argmax(conf[others])])
            own = mine & (column >= CLASS_IOU)
            raw = float(det.scores[own].max(initial=0.0))
            note = f"detected as another class with score {det.scores[d]:.2f}, as its own with {raw:.2f}"
            options.append((float(conf[d]) - float(conf[own].max(initial=0.0)), int(det_cid[d]), note))
        if options:
            score, suggested, note = max(options, key=lambda option: option[0])
            if score > 0:
                found.append(
                    Mistake(
                        "class",
                        image.image_id,
                        image.file_name,
                        *common,
                        score,
                        suggested_category_id=suggested,
                        note=note,
                    )
                )
    return rows


def _head_class(view: HeadView, j: int, category_id: int) -> list[tuple[float, int, str]]:
    """The ``class`` option of label ``j`` from the box head's probabilities on its box: another class
    ``b`` more likely than the label's ``a``, scored ``(p_b - p_a) / (p_b + p_a)``."""
    probabilities, columns = view.probabilities[j], view.category_ids
    own = np.flatnonzero(columns == category_id)
    if not len(own) or len(columns) < 2:
        return []
    p_own = float(probabilities[own[0]])
    rest = probabilities.copy()
    rest[own[0]] = -1.0
    other = int(np.argmax(rest))
    p_other = float(probabilities[other])
    if p_other <= p_own:
        return []
    note = f"its box classified as another class with probability {p_other:.2f}, as its own with {p_own:.2f}"
    return [((p_other - p_own) / (p_other + p_own) * min(1.0, p_other / HEAD_FULL), int(columns[other]), note)]


def _duplicates(image: AuditedImage) -> list[list[Mistake]]:
    labels = image.labels
    rows: list[list[Mistake]] = [[] for _ in range(len(labels.ids))]
    iou = overlaps(labels.boxes, labels.boxes)
    same = labels.category_ids[:, None] == labels.category_ids[None, :]
    real = ~labels.crowd
    pairs = np.argwhere(same & (iou >= DUPLICATE_IOU) & real[:, None] & real[None, :])
    for a, b in pairs.tolist():
        keep, drop = (a, b) if labels.ids[a] < labels.ids[b] else (b, a)
        if a == b or (a, b) != (keep, drop):
            continue
        note = f"overlaps annotation {int(labels.ids[keep])} of its class {iou[a, b]:.2f}"
        rows[drop].append(
            Mistake(
                "duplicate",
                image.image_id,
                image.file_name,
                int(labels.ids[drop]),
                int(labels.category_ids[drop]),
                _box(labels.boxes[drop]),
                float(iou[a, b]),
                note=note,
            )
        )
    return rows


def image_mistakes(image: AuditedImage, calibration: Calibration, min_score: float = 0.0) -> list[Mistake]:
    """Every likely mistake of one image scoring ``min_score`` or more (see the module docstring)."""
    per_object = _duplicates(image)
    rows: list[Mistake] = []
    sources: dict[int, int] = {}
    if image.found is not None:
        det = image.found
        conf = calibration.confidence(det.category_ids, det.scores)
        iou = overlaps(det.boxes, image.labels.boxes, image.labels.crowd)
        more = _object_rows(image, det, conf, iou, calibration.recall, sources)
        for mine, more_rows in zip(per_object, more, strict=True):
            mine += more_rows
    for candidates in per_object:
        if candidates:
            rows.append(max(candidates, key=lambda m: m.score))
    if image.found is not None:
        # a detection that a box row moves a label onto is that label, not an object nobody labelled
        used = {sources[id(row)] for row in rows if id(row) in sources and row.score >= min_score}
        rows += _missing(image, image.found, conf, iou, min_score, used)
    return [row for row in rows if row.score >= min_score]


def rank(mistakes: Iterable[Mistake]) -> list[Mistake]:
    """Highest score first; ties by image id, annotation id (new labels first), kind."""
    return sorted(
        mistakes,
        key=lambda m: (-m.score, m.image_id, -1 if m.annotation_id is None else m.annotation_id, KINDS.index(m.kind)),
    )


def find_mistakes(images: Sequence[AuditedImage], min_score: float = 0.0) -> list[Mistake]:
    """The ranked likely mistakes of the images, each scoring ``min_score`` or more."""
    calibration = calibrate(images)
    return rank(row for image in images for row in image_mistakes(image, calibration, min_score))
