"""detlit: train Detectron2's Faster R-CNN on your own COCO data with PyTorch Lightning.

The public API, importable from here (loaded when first used, so ``import detlit`` stays light)::

    from detlit import CocoDataModule, DetectionModule, Predictor

The commands are the modules of this package (``python -m detlit.fit``, ``detlit fit``, ...); the
library lives in its subpackages: ``data`` (stages 1-5), ``evaluation`` (the numbers), ``model``
(6-7), ``inference``, ``training``, ``deploy`` (export and serving), ``reporting`` (9) and ``common``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

# name -> module that defines it
PUBLIC = {
    "CocoDataModule": "detlit.data.datamodule",
    "DetectionModule": "detlit.model.module",
    "Predictor": "detlit.inference.predictor",
    "Prediction": "detlit.inference.predictor",
    "DetectionMetrics": "detlit.evaluation.metric",
    "Evaluation": "detlit.evaluation.evaluation",
    "load_coco": "detlit.data.coco",
    "LabelMap": "detlit.data.coco",
    "write_sample": "detlit.data.sample",
}
__all__ = ["__version__", *PUBLIC]

if TYPE_CHECKING:  # the names PUBLIC lists, for type checkers
    from detlit.data.coco import LabelMap as LabelMap
    from detlit.data.coco import load_coco as load_coco
    from detlit.data.datamodule import CocoDataModule as CocoDataModule
    from detlit.data.sample import write_sample as write_sample
    from detlit.evaluation.evaluation import Evaluation as Evaluation
    from detlit.evaluation.metric import DetectionMetrics as DetectionMetrics
    from detlit.inference.predictor import Prediction as Prediction
    from detlit.inference.predictor import Predictor as Predictor
    from detlit.model.module import DetectionModule as DetectionModule


def __getattr__(name: str) -> Any:
    if name in PUBLIC:
        value = getattr(importlib.import_module(PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'detlit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *PUBLIC])
