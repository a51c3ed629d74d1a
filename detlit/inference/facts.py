"""What running a trained model needs to know besides its weights, read once from where it is kept.

A checkpoint keeps these facts in its hyper-parameters and detectron2 config; an exported model
keeps them in the metadata json beside its file (:mod:`detlit.deploy.export`). Either way the
:class:`~detlit.inference.predictor.Predictor` reads, resizes, filters and names detections from
the same :class:`ModelFacts`, so a checkpoint and its exported copy are used identically.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from detlit.data.coco import LabelMap
from detlit.data.images import CHANNEL_ORDERS
from detlit.errors import WeightsError

if TYPE_CHECKING:
    from detlit.model.module import DetectionModule


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
    def from_json(cls, document: Mapping[str, Any], source: str) -> ModelFacts:
        """The facts written by :meth:`as_json`.

        Raises:
            WeightsError: a fact is missing or malformed (the message names ``source``).
        """
        try:
            names = tuple(str(n) for n in document["class_names"])
            ids = tuple(int(i) for i in document["category_ids"])
            saved = document["score_thresholds"]
            facts = cls(
                class_names=names,
                category_ids=ids,
                score_thresholds=None if saved is None else tuple(float(t) for t in saved),
                image_format=str(document["image_format"]),
                min_size=int(document["min_size"]),
                max_size=int(document["max_size"]),
                score_floor=float(document["score_floor"]),
                detections_per_image=int(document["detections_per_image"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise WeightsError(
                f"{source} lacks a model fact or holds a malformed one ({type(err).__name__}: {err}); export the "
                "model again with python -m detlit.export"
            ) from err
        consistent = len(names) == len(ids) and (
            facts.score_thresholds is None or len(facts.score_thresholds) == len(ids)
        )
        if not consistent or facts.image_format not in CHANNEL_ORDERS:
            raise WeightsError(
                f"{source} holds inconsistent model facts (class names, category ids, thresholds or channel order); "
                "export the model again with python -m detlit.export"
            )
        return facts
