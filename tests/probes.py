"""Callbacks that tests pass to `python -m detlit.fit` (``--trainer.callbacks+=tests.probes.X``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer


class RecordImageIds(Callback):
    """Writes, per process, the image ids of every training and validation batch and the final metrics."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)
        self.seen: dict[str, list[int]] = {"train": [], "val": []}

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self.seen["train"] += [int(x["image_id"]) for x in batch]

    def on_validation_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if not trainer.sanity_checking:
            self.seen["val"] += [int(x["image_id"]) for x in batch]

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        self.out_dir.mkdir(parents=True, exist_ok=True)
        record = {"rank": trainer.global_rank, "world_size": trainer.world_size, **self.seen, "metrics": metrics}
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


class LogBatches(Callback):
    """Appends one json line per training batch (epoch, global step, image ids) as it happens,
    so a test can read what a killed process trained on."""

    def __init__(self, path: str):
        self.path = Path(path)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        if trainer.is_global_zero:
            line = {
                "epoch": trainer.current_epoch,
                "step": trainer.global_step,
                "ids": [int(x["image_id"]) for x in batch],
            }
            with self.path.open("a") as handle:
                handle.write(json.dumps(line) + "\n")
                handle.flush()
