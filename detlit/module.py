"""Stage [7]: DetectionModule, detectron2's GeneralizedRCNN as a LightningModule."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from detlit.coco import LabelMap
from detlit.compat import EventStorage, build_model
from detlit.d2_config import DEFAULT_CONFIG, build_d2_config, ignores_crowd
from detlit.heads import split_crowd
from detlit.metrics import as_prediction, coco_map, coco_scalars
from detlit.weights import load_pretrained

log = logging.getLogger(__name__)

Batch = list[dict[str, Any]]


class DetectionModule(LightningModule):
    """A detectron2 Faster R-CNN trained by Lightning.

    Batches are lists of detectron2 input dicts (see ``detlit.dataset``). Training returns the
    sum of detectron2's losses and logs each of them; validation runs inference and logs COCO
    metrics. Every argument is saved as a hyper-parameter, so ``load_from_checkpoint(path)``
    rebuilds the model without further arguments.

    Args:
        num_classes: number of object classes (linked from the data by the CLI).
        class_names: class name of each contiguous label (linked from the data).
        category_ids: original COCO category id of each contiguous label (linked from the data).
        config_name: detectron2 model-zoo config the architecture comes from.
        weights: pretrained weights: a model-zoo URL, a ``.pkl``/``.pth`` file, or None.
        overrides: extra detectron2 config keys, e.g. ``{"MODEL.RESNETS.DEPTH": 18}``.
        min_size_train: shortest-edge sizes in training (linked from the data).
        max_size_train: cap on the longest edge in training (linked from the data).
        min_size_test: shortest-edge size at inference (linked from the data).
        max_size_test: cap on the longest edge at inference (linked from the data).
        optimizer: optimizer class and its arguments (``lr``, ``weight_decay``, ...); norm
            layers and biases are put in a parameter group without weight decay.
        warmup_steps: optimizer steps of linear warm-up before the cosine decay.
    """

    def __init__(
        self,
        num_classes: int = 80,
        class_names: list[str] | None = None,
        category_ids: list[int] | None = None,
        config_name: str = DEFAULT_CONFIG,
        weights: str | None = None,
        overrides: dict[str, Any] | None = None,
        min_size_train: list[int] = [640, 672, 704, 736, 768, 800],  # noqa: B006 (read only)
        max_size_train: int = 1333,
        min_size_test: int = 800,
        max_size_test: int = 1333,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        warmup_steps: int = 100,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer_factory = optimizer
        self.label_map = LabelMap(
            tuple(category_ids if category_ids is not None else range(num_classes)),
            tuple(class_names if class_names is not None else (str(i) for i in range(num_classes))),
        )
        if self.label_map.num_classes != num_classes:
            raise ValueError(f"num_classes={num_classes} but {self.label_map.num_classes} class names/ids were given")
        self.cfg = build_d2_config(
            config_name, num_classes, min_size_train, max_size_train, min_size_test, max_size_test, overrides
        )
        self.model: nn.Module = build_model(self.cfg)
        self.ignores_crowd = ignores_crowd(self.cfg)
        self.val_map = coco_map()
        self._pretrained_loaded = False

    def setup(self, stage: str) -> None:
        # Pretrained weights are loaded here, not in __init__: load_from_checkpoint never calls
        # setup, and Lightning restores a resumed checkpoint after it, so neither re-reads them.
        if self.hparams["weights"] and not self._pretrained_loaded:
            load_pretrained(self.model, self.hparams["weights"])
            self._pretrained_loaded = True

    def forward(self, batch: Batch) -> list[dict[str, Any]]:
        """Inference: a list of ``{"instances": Instances}`` in original image pixels."""
        outputs: list[dict[str, Any]] = self.model(batch)
        return outputs

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        if not self.ignores_crowd:
            # Heads chosen through overrides know no ignore regions: crowd boxes are left out.
            batch = [{**x, "instances": split_crowd([x["instances"]])[0][0]} for x in batch]
        with EventStorage(self.global_step):
            losses: dict[str, torch.Tensor] = self.model(batch)
        total = torch.stack(list(losses.values())).sum()
        self.log_dict({f"train/{name}": value for name, value in losses.items()}, batch_size=len(batch))
        self.log("train/loss", total, prog_bar=True, batch_size=len(batch))
        return total

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        outputs = self.model(batch)
        self.val_map.update([as_prediction(o["instances"]) for o in outputs], [x["target"] for x in batch])

    def on_validation_epoch_end(self) -> None:
        scalars = coco_scalars(self.val_map.compute())
        self.val_map.reset()
        shown = {"map", "map50"}
        self.log_dict({f"val/{k}": v for k, v in scalars.items() if k not in shown})
        self.log_dict({f"val/{k}": v for k, v in scalars.items() if k in shown}, prog_bar=True)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters split into decayed weights and undecayed norm/bias parameters."""
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        norm_types = (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm2d, nn.SyncBatchNorm)
        for module in self.model.modules():
            is_norm = isinstance(module, norm_types) or "FrozenBatchNorm" in type(module).__name__
            for name, param in module.named_parameters(recurse=False):
                if not param.requires_grad:
                    continue
                (no_decay if is_norm or name == "bias" else decay).append(param)
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameter_groups())
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(self.hparams["warmup_steps"], total)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
