"""What a person looks at after each validation and test: drawn images, PR curves, the per-class table.

:class:`EvaluationViews` is a Lightning callback. :class:`~detlit.model.module.DetectionModule`
keeps training, validation and test (losses, the metric, the logged numbers) and declares this
callback itself (``configure_callbacks``), so every Trainer gets the views, the one of ``python -m
detlit.fit`` and a user's own alike. The callback takes what it shows from public hooks:

* each validation batch's outputs (``on_validation_batch_end``: the images and their detections in
  original pixels), of which it draws the first ``model.log_images`` images by id with
  :func:`~detlit.pictures.drawing.draw_comparison` (true positives green, false detections red
  dashed, missed objects orange), logged as one TensorBoard image ``val/predictions``;
* the stage's :class:`~detlit.evaluation.evaluation.Evaluation`, once the module has computed and
  logged it (``on_validation_end``, ``on_test_end``): per-class precision-recall curves in
  TensorBoard (``val_pr/<class>``, ``test_pr/<class>``) and the per-class table in the log.

Nothing is shown after Lightning's sanity check, and only the first process draws and logs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
from lightning.pytorch import Callback, LightningModule, Trainer

from detlit.common.console import plain_text
from detlit.data.coco import LabelMap
from detlit.data.images import read_image
from detlit.evaluation.evaluation import Evaluation
from detlit.pictures.drawing import draw_comparison, montage

log = logging.getLogger(__name__)

DRAWN_MIN_SCORE = 0.3
"""Detections drawn on validation images score at least this: a readable picture, not every low guess."""
CELL = (384, 384)
"""(height, width) of each drawn image in the TensorBoard grid."""


class Evaluated(Protocol):
    """What the callback reads of its module (a :class:`~detlit.model.module.DetectionModule`)."""

    hparams: Any
    label_map: LabelMap
    last_evaluation: Evaluation | None
    test_evaluation: Evaluation | None


def render_table(table: Any) -> str:
    """A rich table as plain text at full width (no class name cut), for the log."""
    return plain_text(table)


def experiment(trainer: Trainer) -> Any:
    """The TensorBoard ``SummaryWriter`` of the trainer's logger, or None with another logger (or none)."""
    writer = getattr(trainer.logger, "experiment", None) if trainer.logger is not None else None
    return writer if hasattr(writer, "add_pr_curve_raw") and hasattr(writer, "add_image") else None


class EvaluationViews(Callback):
    """Draws validation images and shows each evaluation (see the module docstring)."""

    def __init__(self) -> None:
        self._drawn: list[tuple[int, np.ndarray]] = []

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._drawn = []

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        wanted = int(cast(Evaluated, pl_module).hparams["log_images"])
        if not wanted or trainer.sanity_checking or not trainer.is_global_zero or not outputs:
            return
        names = cast(Evaluated, pl_module).label_map.names
        for item, detections in zip(outputs["images"], outputs["detections"], strict=True):
            if len(self._drawn) >= wanted and item["image_id"] >= self._drawn[-1][0]:
                continue
            drawing = draw(item, detections, names)
            self._drawn = sorted([*self._drawn, (int(item["image_id"]), drawing)], key=lambda d: d[0])[:wanted]

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        evaluation = cast(Evaluated, pl_module).last_evaluation
        drawn, self._drawn = self._drawn, []
        if trainer.sanity_checking or not trainer.is_global_zero or evaluation is None:
            return
        show(trainer, "val", evaluation, f"validation after epoch {trainer.current_epoch}")
        writer = experiment(trainer)
        if drawn and writer is not None:
            grid = montage([image for _, image in drawn], titles=[f"image {i}" for i, _ in drawn], cell_size=CELL)
            writer.add_image("val/predictions", grid, global_step=trainer.global_step, dataformats="HWC")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        evaluation = cast(Evaluated, pl_module).test_evaluation
        if trainer.is_global_zero and evaluation is not None:
            show(trainer, "test", evaluation, "test")


def draw(item: dict[str, Any], detections: Any, class_names: Sequence[str]) -> np.ndarray:
    """One validation image (read again from its file) with its detections and ground truth.

    Args:
        item: the dataset's input dict (``file_name`` and ``target``, in original pixels).
        detections: its :class:`~detlit.model.detections.Detections` in original pixels.
        class_names: name of each label.
    """
    boxes, scores, labels = (values.detach().to("cpu") for values in detections)
    keep = scores >= DRAWN_MIN_SCORE
    target = item["target"]
    return draw_comparison(
        read_image(Path(item["file_name"])),
        boxes[keep].float().numpy(),  # float: numpy has no bfloat16 (AMP)
        labels[keep].numpy(),
        scores[keep].float().numpy(),
        target["boxes"].numpy(),
        target["labels"].numpy(),
        class_names,
        gt_crowd=target["iscrowd"].numpy().astype(bool),
    )


def show(trainer: Trainer, stage: str, evaluation: Evaluation, what: str) -> None:
    """A stage's per-class precision-recall curves to TensorBoard and its per-class table to the log."""
    writer = experiment(trainer)
    if writer is not None:
        for name, curve in zip(evaluation.class_names, evaluation.curves, strict=True):
            writer.add_pr_curve_raw(f"{stage}_pr/{name}", global_step=trainer.global_step, **curve.tensorboard())
    log.info("%s:\n%s", what, render_table(evaluation.table()))
