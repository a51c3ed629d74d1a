"""Stage 7, training: DetectionModule trains, predicts and round-trips through a checkpoint."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Trainer

from detlit.compat import Instances
from detlit.data.datamodule import CocoDataModule
from detlit.evaluation.evaluation import logged_tags
from detlit.model.module import DetectionModule

from .conftest import TINY_OVERRIDES, TINY_SIZES, quiet_trainer, tiny_datamodule, tiny_module


def _module(**kwargs: Any) -> DetectionModule:
    torch.manual_seed(0)
    args: dict[str, Any] = {
        "num_classes": 3,
        "class_names": ["circle", "square", "triangle"],
        "category_ids": [1, 3, 7],
        "overrides": TINY_OVERRIDES,
        **TINY_SIZES,
    }
    args.update(kwargs)
    return DetectionModule(**args)


def _batch(sample_dir: Path, split: str = "train", n: int = 2) -> list[dict[str, Any]]:
    dm = CocoDataModule(
        train_json=str(sample_dir / "train.json"),
        train_images=str(sample_dir / "train"),
        val_json=str(sample_dir / "val.json"),
        val_images=str(sample_dir / "val"),
        num_workers=0,
        **TINY_SIZES,
    )
    dm.setup("fit")
    dataset = dm.datasets[split]
    with_objects = [i for i, r in enumerate(dataset.records) if r.annotations]
    return [dataset[i] for i in with_objects[:n]]


def test_training_step_gives_finite_losses_and_gradients_everywhere(sample_dir: Path) -> None:
    module = _module()
    module.model.train()
    batch = _batch(sample_dir)
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    missing = [
        name
        for name, p in module.model.named_parameters()
        if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())
    ]
    assert missing == []
    assert any(p.grad.abs().sum() > 0 for p in module.model.roi_heads.parameters() if p.grad is not None)


def test_image_without_objects_gives_zero_box_regression_loss(sample_dir: Path) -> None:
    module = _module()
    module.model.train()
    item = _batch(sample_dir, n=1)[0]
    empty = Instances(item["instances"].image_size)
    empty.gt_boxes = item["instances"].gt_boxes[:0]
    empty.gt_classes = item["instances"].gt_classes[:0]
    from detlit.compat import EventStorage

    with EventStorage(0):
        losses = module.model([{**item, "instances": empty}])
    assert losses["loss_box_reg"].item() == 0.0
    assert losses["loss_rpn_loc"].item() == 0.0
    assert losses["loss_cls"].item() > 0.0 and torch.isfinite(losses["loss_rpn_cls"])


def test_eval_mode_returns_instances_in_original_pixels(sample_dir: Path) -> None:
    module = _module().eval()
    batch = _batch(sample_dir, "val")
    with torch.no_grad():
        outputs = module(batch)
    for item, output in zip(batch, outputs, strict=False):
        instances = output["instances"]
        assert isinstance(instances, Instances)
        assert instances.image_size == (item["height"], item["width"])
        assert {"pred_boxes", "scores", "pred_classes"} <= set(instances.get_fields())


def test_checkpoint_round_trip(sample_dir: Path, tmp_path: Path) -> None:
    module = _module(warmup_steps=7)
    trainer = Trainer(
        accelerator="cpu",
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    dm = CocoDataModule(
        train_json=str(sample_dir / "train.json"),
        train_images=str(sample_dir / "train"),
        num_workers=0,
        batch_size=2,
        **TINY_SIZES,
    )
    trainer.fit(module, datamodule=dm)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    loaded = DetectionModule.load_from_checkpoint(path, map_location="cpu")
    assert loaded.hparams.category_ids == [1, 3, 7]
    assert loaded.hparams.class_names == ["circle", "square", "triangle"]
    assert loaded.hparams.warmup_steps == 7
    for (name, a), b in zip(module.model.state_dict().items(), loaded.model.state_dict().values(), strict=False):
        assert torch.equal(a, b), name
    batch = _batch(sample_dir, "val")
    module.eval()
    loaded.eval()
    with torch.no_grad():
        a, b = module(batch)[0]["instances"], loaded(batch)[0]["instances"]
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
    assert torch.equal(a.scores, b.scores)


def test_num_classes_must_match_the_names() -> None:
    with pytest.raises(ValueError, match="num_classes=2 but 3 class names"):
        _module(num_classes=2)


NAMES = ("circle", "square", "triangle")


def test_validation_logs_the_evaluations_tags_and_the_table_is_shown(
    sample_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every tag of the Evaluation is logged, per-class precision and recall included, so a report
    built from the training logs alone fills those columns; the per-class table reaches the log."""
    from detlit.reporting.run_reader import metrics_from_scalars

    module = tiny_module()
    with caplog.at_level(logging.INFO, logger="detlit.pictures.views"):
        metrics = quiet_trainer().validate(module, datamodule=tiny_datamodule(sample_dir), verbose=False)[0]
    assert set(logged_tags("val", NAMES)) <= set(metrics)
    assert {"val/precision/circle", "val/recall/triangle"} <= set(metrics)
    assert not any(tag.startswith("val/ar100/") for tag in metrics)
    assert module.last_evaluation is not None
    objects = module.last_evaluation.num_objects
    report = metrics_from_scalars({tag: [(0, float(value))] for tag, value in metrics.items()}, list(NAMES))
    assert report is not None
    recalls = [row["recall"] for row in report.per_class]
    assert all(math.isfinite(r) for r, n in zip(recalls, objects, strict=True) if n > 0)  # not "-"
    shown = [r.getMessage() for r in caplog.records if r.getMessage().startswith("validation after epoch 0:")]
    assert len(shown) == 1 and all(name in shown[0] for name in NAMES) and "AP50" in shown[0]


def test_the_gradient_norm_is_computed_on_the_steps_lightning_logs_with_accumulation(
    sample_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lightning's rule, from the trainer's public attributes: with 2 batches per optimizer step and
    a logger that writes every 2 steps, the norm is computed on the 2nd and 4th of 4 steps only."""
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    computed = []
    total_norm = torch.nn.utils.get_total_norm

    def counted(*args: Any, **kwargs: Any) -> torch.Tensor:
        computed.append(1)
        return total_norm(*args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "get_total_norm", counted)
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = quiet_trainer(
        max_steps=4, accumulate_grad_batches=2, limit_val_batches=0, logger=logger, log_every_n_steps=2
    )
    trainer.fit(tiny_module(), datamodule=tiny_datamodule(sample_dir, batch_size=1))
    assert trainer.global_step == 4 and len(computed) == 2
    events = EventAccumulator(str(tmp_path / "tb" / "version_0"), size_guidance={"scalars": 0})
    events.Reload()
    written = sorted({e.step for e in events.Scalars("train/loss")})
    assert written == [1, 3] and [e.step for e in events.Scalars("train/grad_norm")] == written
