"""Training controls: each test would fail without the control it names."""

from __future__ import annotations

import math
import pickle
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping, EMAWeightAveraging, ModelCheckpoint

from detlit.errors import WeightsError
from detlit.model.module import DetectionModule, NonFiniteLossError
from detlit.model.schedule import lr_factor
from detlit.model.weights import load_pretrained
from detlit.training.callbacks import ValidateLastEpoch

from .conftest import TINY_OVERRIDES, quiet_trainer, tiny_datamodule, tiny_module

# --- schedule and parameter groups -------------------------------------------------------


def test_warmup_then_cosine() -> None:
    f = partial(lr_factor, total_steps=101, warmup_steps=10, warmup_factor=0.1, schedule="cosine")
    assert f(0) == pytest.approx(0.1)
    assert f(5) == pytest.approx((0.1 * 0.5 + 0.5) * 0.5 * (1 + math.cos(math.pi * 0.05)))
    assert f(10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.1)))
    assert f(50) == pytest.approx(0.5)
    assert f(100) == pytest.approx(0.0, abs=1e-12)


def test_multistep_and_constant() -> None:
    f = partial(lr_factor, total_steps=100, warmup_steps=0, schedule="multistep", milestones=[0.5, 0.8], gamma=0.1)
    assert [f(s) for s in (0, 49, 50, 79, 80, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    assert lr_factor(3, 10, warmup_steps=5, warmup_factor=0.0, schedule="constant") == pytest.approx(0.6)


def test_scheduler_steps_per_optimizer_step_over_the_real_length(sample_dir: Path) -> None:
    rates: list[float] = []

    class Record(Callback):
        def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, idx: int) -> None:
            rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    module = tiny_module(
        optimizer=partial(torch.optim.SGD, lr=0.1), warmup_steps=2, warmup_factor=0.5, lr_schedule="cosine"
    )
    dm = tiny_datamodule(sample_dir, batch_size=1)  # 12 images: 12 batches, 6 optimizer steps per epoch
    quiet_trainer(max_epochs=1, accumulate_grad_batches=2, limit_val_batches=0, callbacks=[Record()]).fit(
        module, datamodule=dm
    )
    total = 6  # estimated_stepping_batches: accumulation included
    expected = [0.1 * lr_factor(s, total, 2, 0.5, "cosine") for s in range(total)]
    assert rates[::2] == pytest.approx(expected)
    assert rates[1::2] == pytest.approx(expected)  # no step between accumulated batches


def test_no_weight_decay_on_norm_layers_and_biases() -> None:
    module = tiny_module()
    decay, no_decay = module.parameter_groups()
    names = {id(p): n for n, p in module.model.named_parameters()}
    no_decay_names = [names[id(p)] for p in no_decay["params"]]
    decay_names = [names[id(p)] for p in decay["params"]]
    assert no_decay["weight_decay"] == 0.0 and "weight_decay" not in decay
    assert all(n.endswith(".bias") or ".norm." in n for n in no_decay_names)
    assert any(".norm.weight" in n for n in no_decay_names) and any(n.endswith(".bias") for n in no_decay_names)
    assert all(n.endswith(".weight") and ".norm." not in n for n in decay_names)
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert set(decay_names) | set(no_decay_names) == trainable
    optimizer = torch.optim.AdamW(module.parameter_groups(), lr=1e-3, weight_decay=0.05)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]


def test_lr_scales_with_effective_batch(sample_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    module = tiny_module(optimizer=partial(torch.optim.SGD, lr=0.08), scale_lr_to_batch=16)
    trainer = quiet_trainer(max_steps=1, accumulate_grad_batches=2, limit_val_batches=0)
    with caplog.at_level("INFO"):
        trainer.fit(module, datamodule=tiny_datamodule(sample_dir, batch_size=2))
    assert "effective batch = 2 per device x 1 devices x 2 accumulation = 4" in caplog.text
    assert trainer.optimizers[0].param_groups[0]["initial_lr"] == pytest.approx(0.08 * 4 / 16)


# --- gradients: accumulation and clipping ------------------------------------------------

# Deterministic sampling: every anchor and proposal is used, so a batch's loss is the mean of
# its images' losses and accumulation can be compared with one larger batch.
EXHAUSTIVE = {
    **TINY_OVERRIDES,
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE": 1_000_000,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 1_000_000,
    "MODEL.ROI_HEADS.PROPOSAL_APPEND_GT": False,
}


class GradientProbe(Callback):
    def __init__(self) -> None:
        self.grads: list[dict[str, torch.Tensor]] = []
        self.after_clip: list[float] = []

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        self.grads.append({n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None})

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if grads:
            self.after_clip.append(float(torch.stack([g.norm() for g in grads]).norm()))


def _first_gradients(sample_dir: Path, batch_size: int, accumulate: int) -> dict[str, torch.Tensor]:
    probe = GradientProbe()
    module = tiny_module(overrides=EXHAUSTIVE, optimizer=partial(torch.optim.SGD, lr=0.0))
    dm = tiny_datamodule(sample_dir, batch_size=batch_size, augment="none", group_by_aspect_ratio=False)
    dm.setup("fit")
    # two images of the same size (no padding difference), so one batch of 2 = 2 batches of 1
    records = dm.datasets["train"].records
    first = next(r for r in records if r.annotations)
    second = next(
        r for r in records if r is not first and r.annotations and (r.width, r.height) == (first.width, first.height)
    )
    dm.datasets["train"].records = [first, second]
    dm.setup = lambda stage: None  # type: ignore[method-assign]
    quiet_trainer(max_steps=1, accumulate_grad_batches=accumulate, limit_val_batches=0, callbacks=[probe]).fit(
        module, datamodule=dm
    )
    return probe.grads[0]


def test_accumulation_equals_one_larger_batch(sample_dir: Path) -> None:
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        large = _first_gradients(sample_dir, batch_size=2, accumulate=1)
        accumulated = _first_gradients(sample_dir, batch_size=1, accumulate=2)
    finally:
        torch.use_deterministic_algorithms(False)
    assert large.keys() == accumulated.keys() and len(large) > 50
    worst = max(float((large[k] - accumulated[k]).abs().max()) for k in large)
    scale = max(float(g.abs().max()) for g in large.values())
    assert worst <= 1e-5 * max(1.0, scale), worst


def test_clipping_bounds_the_gradient_norm_and_the_norm_is_logged(sample_dir: Path) -> None:
    probe = GradientProbe()
    trainer = quiet_trainer(
        max_steps=2, limit_val_batches=0, gradient_clip_val=0.01, log_every_n_steps=1, callbacks=[probe]
    )
    trainer.fit(tiny_module(), datamodule=tiny_datamodule(sample_dir))
    assert all(norm <= 0.01 * (1 + 1e-4) for norm in probe.after_clip)
    before_clip = float(torch.stack([g.norm() for g in probe.grads[-1].values()]).norm())
    assert float(trainer.callback_metrics["train/grad_norm"]) == pytest.approx(before_clip, rel=1e-5)
    assert before_clip > 0.01


def test_gradient_norm_is_computed_on_the_steps_the_logger_writes(
    sample_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    computed = []
    total_norm = torch.nn.utils.get_total_norm

    def counted(*args: Any, **kwargs: Any) -> torch.Tensor:
        computed.append(1)
        return total_norm(*args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "get_total_norm", counted)
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = quiet_trainer(max_steps=5, limit_val_batches=0, logger=logger, log_every_n_steps=2)
    trainer.fit(tiny_module(), datamodule=tiny_datamodule(sample_dir))
    assert len(computed) == 2  # of 5 steps: the pass over the gradients is skipped where nothing is written
    events = EventAccumulator(str(tmp_path / "tb" / "version_0"), size_guidance={"scalars": 0})
    events.Reload()
    loss_steps = [e.step for e in events.Scalars("train/loss")]
    norms = events.Scalars("train/grad_norm")
    assert loss_steps == [1, 3] and [e.step for e in norms] == loss_steps
    assert all(math.isfinite(e.value) and e.value > 0 for e in norms)


# --- precision, EMA, non-finite losses ---------------------------------------------------


def test_bf16_mixed_on_cpu_keeps_losses_finite(sample_dir: Path) -> None:
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, precision="bf16-mixed")
    trainer.fit(tiny_module(), datamodule=tiny_datamodule(sample_dir))
    metrics = trainer.callback_metrics
    assert all(math.isfinite(float(metrics[k])) for k in ("train/loss", "train/loss_cls", "val/loss"))


def test_ema_weights_are_validated_saved_and_restored(sample_dir: Path, tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = quiet_trainer(
        max_steps=3,
        limit_val_batches=0,
        enable_checkpointing=True,
        callbacks=[EMAWeightAveraging(decay=0.5), checkpoint],
    )
    trainer.fit(tiny_module(optimizer=partial(torch.optim.SGD, lr=0.05)), datamodule=tiny_datamodule(sample_dir))
    saved = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)
    ema, raw = saved["state_dict"], saved["current_model_state"]
    key = "model.roi_heads.box_predictor.cls_score.weight"
    assert not torch.equal(ema[key], raw[key])  # EMA weights differ from the raw ones

    seen: dict[str, torch.Tensor] = {}

    class Probe(Callback):
        def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
            ema_callback = next(c for c in trainer.callbacks if isinstance(c, EMAWeightAveraging))
            seen["raw"] = pl_module.state_dict()[key].clone()
            seen["ema"] = ema_callback._average_model.module.state_dict()[key].clone()

    resumed = quiet_trainer(max_steps=4, limit_val_batches=0, callbacks=[EMAWeightAveraging(decay=0.5), Probe()])
    sgd = partial(torch.optim.SGD, lr=0.05)
    resumed.fit(tiny_module(optimizer=sgd), datamodule=tiny_datamodule(sample_dir), ckpt_path=tmp_path / "last.ckpt")
    assert torch.equal(seen["raw"], raw[key]) and torch.equal(seen["ema"], ema[key])


def _nan_losses(module: DetectionModule) -> None:
    forward = module.model.forward

    def poisoned(batch: Any) -> Any:
        out = forward(batch)
        if module.model.training:
            out["loss_cls"] = out["loss_cls"] * float("nan")
        return out

    module.model.forward = poisoned  # type: ignore[method-assign]


def test_nan_loss_stops_with_step_losses_and_images(sample_dir: Path) -> None:
    module = tiny_module()
    _nan_losses(module)
    with pytest.raises(
        NonFiniteLossError, match=r"non-finite loss at step 0 \(loss_cls=nan, .*\) on images \[\d+, \d+\]"
    ):
        quiet_trainer(max_steps=1, limit_val_batches=0).fit(module, datamodule=tiny_datamodule(sample_dir))


def test_nan_loss_can_skip_the_batch(sample_dir: Path) -> None:
    module = tiny_module(on_nonfinite_loss="skip")
    before = {k: v.clone() for k, v in module.state_dict().items()}
    _nan_losses(module)
    trainer = quiet_trainer(max_steps=2, max_epochs=1, limit_train_batches=2, limit_val_batches=0)
    trainer.fit(module, datamodule=tiny_datamodule(sample_dir))
    assert float(trainer.callback_metrics["train/skipped_nonfinite"]) == 2
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())  # nothing trained on NaN


# --- validation loss, early stopping, resume ---------------------------------------------


def test_validation_loss_is_logged_and_leaves_the_mode_alone(sample_dir: Path) -> None:
    module = tiny_module()
    dm = tiny_datamodule(sample_dir)
    dm.setup("fit")
    batch = [dm.datasets["val"][i] for i in range(2)]
    module.eval()
    with torch.no_grad():
        losses, predictions = module.losses_and_predictions(batch)
        plain = module(batch)
    assert {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"} == set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    assert not any(m.training for m in module.modules())
    for a, b in zip(predictions, plain, strict=True):
        assert torch.allclose(a["instances"].pred_boxes.tensor, b["instances"].pred_boxes.tensor)
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=2)
    trainer.fit(module.train(), datamodule=dm)
    assert math.isfinite(float(trainer.callback_metrics["val/loss"]))
    assert {"val/loss_cls", "val/map", "val/map50"} <= set(trainer.callback_metrics)


def test_early_stopping_stops(sample_dir: Path) -> None:
    stopper = EarlyStopping(monitor="val/map", mode="max", patience=0, min_delta=10.0)  # no epoch can improve enough
    trainer = quiet_trainer(max_epochs=5, limit_train_batches=1, limit_val_batches=1, callbacks=[stopper])
    trainer.fit(tiny_module(), datamodule=tiny_datamodule(sample_dir))
    assert trainer.current_epoch == 2 and stopper.stopped_epoch == 1


class _ValidatedEpochs(Callback):
    def __init__(self) -> None:
        self.epochs: list[int] = []

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.epochs.append(trainer.current_epoch)


@pytest.mark.parametrize(("max_epochs", "validated"), [(3, [1, 2]), (4, [1, 3])])
def test_the_last_epoch_is_validated_whatever_check_val_every_n_epoch(
    sample_dir: Path, max_epochs: int, validated: list[int]
) -> None:
    seen = _ValidatedEpochs()
    trainer = quiet_trainer(
        max_epochs=max_epochs,
        check_val_every_n_epoch=2,
        limit_train_batches=1,
        limit_val_batches=1,
        callbacks=[ValidateLastEpoch(), seen],
    )
    trainer.fit(tiny_module(), datamodule=tiny_datamodule(sample_dir))
    assert seen.epochs == validated and "val/map" in trainer.callback_metrics
    assert trainer.check_val_every_n_epoch == 2  # restored


def test_resume_equals_an_uninterrupted_run(sample_dir: Path, tmp_path: Path) -> None:
    def run(max_epochs: int, ckpt: Path | None = None) -> DetectionModule:
        torch.manual_seed(0)
        module = tiny_module(optimizer=partial(torch.optim.AdamW, lr=1e-3), warmup_steps=2)
        trainer = quiet_trainer(
            max_epochs=max_epochs,
            limit_train_batches=2,
            limit_val_batches=0,
            deterministic=True,
            enable_checkpointing=True,
            callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)],
        )
        trainer.fit(module, datamodule=tiny_datamodule(sample_dir, augment="none"), ckpt_path=ckpt)
        return module

    straight = run(3)
    run(1)
    resumed = run(3, tmp_path / "last.ckpt")
    worst = max(float((a - b).abs().max()) for a, b in zip(straight.parameters(), resumed.parameters(), strict=True))
    assert worst <= 1e-6


# --- pretrained weights ------------------------------------------------------------------


def test_pretrained_with_another_class_count_reinitialises_the_heads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    donor = tiny_module(num_classes=5, class_names=list("abcde"), category_ids=[1, 2, 3, 4, 5])
    path = tmp_path / "donor.pth"
    torch.save({"model": donor.model.state_dict()}, path)
    model = tiny_module().model
    fresh = model.roi_heads.box_predictor.cls_score.weight.clone()
    with caplog.at_level("INFO"):
        report = load_pretrained(model, str(path))
    assert sorted(report["reinitialised"]) == [
        "roi_heads.box_predictor.bbox_pred.bias",
        "roi_heads.box_predictor.bbox_pred.weight",
        "roi_heads.box_predictor.cls_score.bias",
        "roi_heads.box_predictor.cls_score.weight",
    ]
    assert "re-initialised" in caplog.text and "cls_score.weight (6, 64) -> (4, 64)" in caplog.text
    assert torch.equal(model.roi_heads.box_predictor.cls_score.weight, fresh)
    assert torch.equal(model.backbone.bottom_up.stem.conv1.weight, donor.model.backbone.bottom_up.stem.conv1.weight)


def test_pretrained_from_detectron2_pkl_and_detlit_ckpt(tmp_path: Path, sample_dir: Path) -> None:
    donor = tiny_module()
    pkl = tmp_path / "zoo.pkl"
    with pkl.open("wb") as handle:
        state = {k: v.numpy() for k, v in donor.model.state_dict().items()}
        pickle.dump({"model": state, "__author__": "detlit test"}, handle)
    model = tiny_module(overrides={**TINY_OVERRIDES, "MODEL.PIXEL_STD": [1.0, 1.0, 1.0]}).model
    torch.manual_seed(1)
    assert load_pretrained(model, str(pkl))["reinitialised"] == []
    assert torch.equal(
        model.roi_heads.box_predictor.cls_score.weight, donor.model.roi_heads.box_predictor.cls_score.weight
    )

    trainer = quiet_trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(donor, datamodule=tiny_datamodule(sample_dir))
    ckpt = tmp_path / "run.ckpt"
    trainer.save_checkpoint(ckpt)
    fresh = tiny_module(weights=str(ckpt))
    fresh.setup("fit")
    assert torch.equal(
        fresh.model.proposal_generator.rpn_head.conv.weight, donor.model.proposal_generator.rpn_head.conv.weight
    )


def test_weights_errors_are_one_sentence(tmp_path: Path) -> None:
    model = tiny_module().model
    with pytest.raises(WeightsError, match="does not exist; set model.weights"):
        load_pretrained(model, str(tmp_path / "nope.pkl"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=r"could not read weights from .*junk.pth"):
        load_pretrained(model, str(tmp_path / "junk.pth"))
    with pytest.raises(WeightsError, match=r"could not download weights http://127.0.0.1:9/R-50.pkl"):
        load_pretrained(model, "http://127.0.0.1:9/R-50.pkl")


def test_freeze_at(sample_dir: Path) -> None:
    frozen = tiny_module(freeze_at=2).model.backbone.bottom_up
    assert not any(p.requires_grad for p in frozen.stem.parameters())
    assert not any(p.requires_grad for p in frozen.res2.parameters())
    assert all(p.requires_grad for p in frozen.res3.parameters())
    assert all(p.requires_grad for p in tiny_module(freeze_at=0).model.backbone.parameters())


def test_validation_logs_losses_metrics_curves_and_pictures_to_tensorboard(sample_dir: Path, tmp_path: Path) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=2, logger=logger, log_every_n_steps=1)
    trainer.fit(tiny_module(log_images=2), datamodule=tiny_datamodule(sample_dir))
    events = EventAccumulator(str(tmp_path / "tb" / "version_0"), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/loss_cls", "val/loss", "val/map", "val/map50", "val/f1", "val/ap/circle"} <= scalars
    assert "val/predictions" in events.Tags()["images"]
    picture = events.Images("val/predictions")[-1]
    assert picture.width > 384 and picture.height >= 384  # two drawn images side by side
    assert any(tag.startswith("val_pr/") for tag in events.Tags()["tensors"])  # PR curves
