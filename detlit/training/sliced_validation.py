"""Validation by sliced inference, on the original (untiled) validation images.

A model trained on tiles (``python -m detlit.tile``) is validated by Lightning on tiles: the
validation split of the tiled json. What the user will run is sliced inference on whole images,
so :class:`SlicedValidation` measures that too, after every validation: the model as it is, through
the one inference path (:class:`~detlit.inference.predictor.Predictor` with a
:class:`~detlit.inference.slicing.Slicing`, every detection kept, as ``python -m detlit.evaluate
--slice`` runs it), on a COCO json of whole images (by default the data module's validation set),
measured by the same :class:`~detlit.evaluation.metric.DetectionMetrics`. Its numbers are logged as
``val_sliced/<name>`` (``val_sliced/map``, ``val_sliced/map_small``, ...), so a checkpoint callback
can monitor them. In a fit config::

    trainer:
      callbacks:
        - class_path: detlit.training.sliced_validation.SlicedValidation
          init_args: {size: 640, json: data/originals/val.json, images: data/originals/images}

Every process measures the whole set (the same numbers on each); it costs one sliced prediction of
the set per validation.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from detlit.data.checks import load_checked
from detlit.data.coco import CocoDataset
from detlit.evaluation.evaluation import PROGRESS_BAR
from detlit.evaluation.metric import DetectionMetrics
from detlit.inference.evaluate import predict_dataset
from detlit.inference.predictor import Predictor
from detlit.inference.slicing import Match, Merge, Slicing
from detlit.model.module import DetectionModule

log = logging.getLogger(__name__)

STAGE = "val_sliced"


class SlicedValidation(Callback):
    """After each validation, the validation images again, whole, by sliced inference (see the module docstring).

    Args:
        size, overlap, full_image, merge, match, match_threshold: the :class:`~detlit.inference.slicing.Slicing`.
        json: COCO json of whole images; by default the data module's validation json.
        images: folder of its images (default: the json's folder).
        batch_size: tiles per forward pass.
    """

    def __init__(
        self,
        size: int,
        overlap: float = 0.2,
        full_image: bool = True,
        merge: Merge = "nms",  # every detection is kept: greedy merging would grow boxes
        match: Match = "ios",
        match_threshold: float = 0.5,
        json: str | None = None,
        images: str | None = None,
        batch_size: int = 4,
    ) -> None:
        self.slicing = Slicing(
            size=size,
            overlap=overlap,
            full_image=full_image,
            merge=merge,
            match=match,
            match_threshold=match_threshold,
        )
        self.json, self.images, self.batch_size = json, images, batch_size
        self._dataset: CocoDataset | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.json is not None:
            self._dataset = load_checked(
                Path(self.json), Path(self.images or Path(self.json).parent), "SlicedValidation images", files=True
            )
            return
        # Trainer.datamodule: documented, set by Lightning when fit/validate attach a data module
        # (undeclared on the class, hence the type note; a rename fails loudly here).
        datamodule = trainer.datamodule  # type: ignore[attr-defined]
        data = getattr(datamodule, "val_data", None)
        if data is None:
            log.warning("SlicedValidation has no validation set: give it a json, or give the data a val_json")
        self._dataset = data

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or self._dataset is None or not isinstance(pl_module, DetectionModule):
            return
        predictor = Predictor(
            pl_module,
            device=str(pl_module.device),
            all_detections=True,
            batch_size=self.batch_size,
            slicing=self.slicing,
        )
        (preds, targets), _, label_map = predict_dataset(self._dataset, predictor, progress=False)
        metric = DetectionMetrics(label_map.names)
        metric.update(preds, targets)
        evaluation = metric.compute()
        logged: dict[str, Any] = evaluation.logged(STAGE)
        for name, value in logged.items():
            bar = name.split("/", 1)[1] in PROGRESS_BAR
            pl_module.log(name, value, prog_bar=bar, logger=True, on_epoch=True, sync_dist=False)
        log.info(
            "sliced validation (%d px tiles) on %d images: map %.4f, map_small %.4f",
            self.slicing.size,
            len(targets),
            logged[f"{STAGE}/map"],
            logged[f"{STAGE}/map_small"],
        )
