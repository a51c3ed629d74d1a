"""Stage [7]: DetectionModule trains, predicts and round-trips through a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Trainer

from detlit.compat import Instances
from detlit.data.datamodule import CocoDataModule
from detlit.model.module import DetectionModule

from .conftest import TINY_OVERRIDES, TINY_SIZES


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
