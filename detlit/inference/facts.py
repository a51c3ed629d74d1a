"""What running a trained model needs to know besides its weights, read once from where it is kept.

A checkpoint keeps these facts in its hyper-parameters and detectron2 config; an exported model
keeps them in the metadata json beside its file (:mod:`detlit.inference.exported`), as
:meth:`ModelFacts.as_json` writes them and :meth:`ModelFacts.from_json` reads them back, each in its
range. Either way the :class:`~detlit.inference.predictor.Predictor` reads, resizes, filters and
names detections from the same :class:`ModelFacts`, so a checkpoint and its exported copy are used
identically.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from detlit.common.ranges import MAX_IMAGE_SIDE
from detlit.data.coco import INT64, LabelMap
from detlit.data.images import CHANNEL_ORDERS
from detlit.errors import WeightsError

if TYPE_CHECKING:
    from detlit.model.module import DetectionModule


MAX_DETECTIONS = 10_000
"""Most detections per image an exported model's facts may name (detectron2's default is 100)."""
FIX = "export the model again with python -m detlit.export"


@dataclass(frozen=True)
class ModelFacts:
    """The facts of one trained detector.

    Attributes:
        class_names: the class name of each contiguous label.
        category_ids: the original COCO category id of each contiguous label.
        score_thresholds: per-class score thresholds that maximised F1 on the last validation,
            or None when the model was never validated.
        image_format: channel order of the model's input, ``BGR`` or ``RGB``.
        min_size: shortest-edge size images are resized to.
        max_size: cap on the longest edge after resizing.
        score_floor: the model's own test threshold (``SCORE_THRESH_TEST`` of its ROI heads or RetinaNet):
            detections scoring at most this are dropped before NMS.
        detections_per_image: at most this many detections per image (``TEST.DETECTIONS_PER_IMAGE``).
    """

    class_names: tuple[str, ...]
    category_ids: tuple[int, ...]
    score_thresholds: tuple[float, ...] | None
    image_format: str
    min_size: int
    max_size: int
    score_floor: float
    detections_per_image: int

    @property
    def label_map(self) -> LabelMap:
        return LabelMap(self.category_ids, self.class_names)

    @classmethod
    def from_module(cls, module: DetectionModule) -> ModelFacts:
        """The facts of a :class:`~detlit.model.module.DetectionModule` (a loaded checkpoint)."""
        hp, cfg = module.hparams, module.cfg
        saved = getattr(module, "score_thresholds", None)
        return cls(
            class_names=tuple(module.label_map.names),
            category_ids=tuple(int(i) for i in module.label_map.category_ids),
            score_thresholds=None if saved is None else tuple(float(t) for t in saved),
            image_format=str(cfg.INPUT.FORMAT),
            min_size=int(hp["min_size_test"]),
            max_size=int(hp["max_size_test"]),
            score_floor=module.test_score_threshold,
            detections_per_image=int(cfg.TEST.DETECTIONS_PER_IMAGE),
        )

    def as_json(self) -> dict[str, Any]:
        """The facts as plain JSON values (:meth:`from_json` reads them back)."""
        document = asdict(self)
        document["class_names"] = list(self.class_names)
        document["category_ids"] = list(self.category_ids)
        document["score_thresholds"] = None if self.score_thresholds is None else list(self.score_thresholds)
        return document

    @classmethod
    def from_json(cls, document: Any, source: str) -> ModelFacts:
        """The facts written by :meth:`as_json`, each checked: the metadata of an exported model may
        come from someone else, and every later step (resizing, thresholds, naming) trusts them.

        Raises:
            WeightsError: a fact is missing, of the wrong type or out of its range, or the facts do
                not agree with each other (one sentence naming ``source`` and the fact).
        """
        if not isinstance(document, Mapping):
            raise _bad(source, f"'facts' is a {_kind(document)}, not an object")
        names = _names(document, source)
        ids = _ids(document, source)
        if len(ids) != len(names):
            raise _bad(source, f"facts.category_ids holds {len(ids)} ids for {len(names)} class names")
        thresholds = _thresholds(document, source, len(names))
        image_format = _get(document, "image_format", source)
        if image_format not in CHANNEL_ORDERS:
            raise _bad(source, f"facts.image_format is {image_format!r}, not one of {', '.join(CHANNEL_ORDERS)}")
        min_size = _whole(document, "min_size", 1, MAX_IMAGE_SIDE, source, "pixels")
        max_size = _whole(document, "max_size", 1, MAX_IMAGE_SIDE, source, "pixels")
        if max_size < min_size:
            raise _bad(source, f"facts.max_size {max_size} is below facts.min_size {min_size}")
        return cls(
            class_names=names,
            category_ids=ids,
            score_thresholds=thresholds,
            image_format=image_format,
            min_size=min_size,
            max_size=max_size,
            score_floor=_fraction(_get(document, "score_floor", source), "facts.score_floor", source),
            detections_per_image=_whole(document, "detections_per_image", 1, MAX_DETECTIONS, source, "detections"),
        )


# --- checking an exported model's facts -------------------------------------------------------------


def _bad(source: str, what: str) -> WeightsError:
    return WeightsError(f"{source}: {what}; {FIX}")


def _kind(value: Any) -> str:
    """A JSON value's type in JSON's words."""
    names = {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _get(document: Mapping[str, Any], key: str, source: str) -> Any:
    if key not in document:
        raise _bad(source, f"the model fact facts.{key} is missing")
    return document[key]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _whole(document: Mapping[str, Any], key: str, low: int, high: int, source: str, unit: str) -> int:
    """A whole number in ``low..high``."""
    value = _get(document, key, source)
    if not _is_number(value) or not math.isfinite(value) or value != int(value) or not low <= value <= high:
        raise _bad(source, f"facts.{key} is {value!r}, not a whole number of {unit} in {low}..{high}")
    return int(value)


def _fraction(value: Any, name: str, source: str) -> float:
    """A finite number in [0, 1] (a NaN threshold would drop every detection without a word)."""
    if not _is_number(value) or not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise _bad(source, f"{name} is {value!r}, not a number from 0 to 1")
    return float(value)


def _names(document: Mapping[str, Any], source: str) -> tuple[str, ...]:
    """Class names: strings, one or more. Training accepts two ids of one name (check warns) and an
    empty name, so an exported model may hold them too; the category ids tell classes apart."""
    names = _get(document, "class_names", source)
    if not isinstance(names, list) or not names:
        raise _bad(source, f"facts.class_names is {names!r:.80}, not a list of class names")
    for index, name in enumerate(names):
        if not isinstance(name, str):
            raise _bad(source, f"facts.class_names[{index}] is {name!r:.80}, not a string")
    return tuple(names)


def _ids(document: Mapping[str, Any], source: str) -> tuple[int, ...]:
    ids = _get(document, "category_ids", source)
    if not isinstance(ids, list):
        raise _bad(source, f"facts.category_ids is a {_kind(ids)}, not a list of category ids")
    for index, value in enumerate(ids):
        if not isinstance(value, int) or isinstance(value, bool) or not INT64[0] <= value <= INT64[1]:
            raise _bad(source, f"facts.category_ids[{index}] is {value!r:.80}, not a 64-bit whole number")
    repeated = sorted(value for value, count in Counter(ids).items() if count > 1)
    if repeated:
        raise _bad(source, f"facts.category_ids holds {', '.join(map(str, repeated))} more than once")
    return tuple(ids)


def _thresholds(document: Mapping[str, Any], source: str, classes: int) -> tuple[float, ...] | None:
    saved = _get(document, "score_thresholds", source)
    if saved is None:
        return None
    if not isinstance(saved, list) or len(saved) != classes:
        raise _bad(
            source, f"facts.score_thresholds is {saved!r:.80}, not a list of {classes} thresholds (one per class)"
        )
    return tuple(_fraction(value, f"facts.score_thresholds[{index}]", source) for index, value in enumerate(saved))
