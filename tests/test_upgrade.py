"""What detlit 0.1 wrote keeps working: its run configs (``--ckpt_path`` included) and its checkpoints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from detlit.inference.predictor import Predictor

from .conftest import REPO, quiet_trainer, tiny_datamodule, tiny_module

CONFIG_0_1 = REPO / "tests" / "data" / "config_0.1.yaml"  # the config.yaml of a 0.1 run, paths made relative
# The keys of a checkpoint written by detlit 0.1 (python -m detlit.fit, lightning 2.6).
CHECKPOINT_KEYS_0_1 = {
    "CocoDataModule",
    "callbacks",
    "datamodule_hparams_name",
    "datamodule_hyper_parameters",
    "detlit_rng_state",
    "detlit_score_thresholds",
    "epoch",
    "global_step",
    "hparams_name",
    "hyper_parameters",
    "loops",
    "lr_schedulers",
    "optimizer_states",
    "pytorch-lightning_version",
    "state_dict",
}
MODEL_HPARAMS_0_1 = {
    "category_ids", "class_names", "config_name", "freeze_at", "log_images", "lr_gamma", "lr_milestones",
    "lr_schedule", "max_size_test", "max_size_train", "min_size_test", "min_size_train", "num_classes",
    "on_nonfinite_loss", "overrides", "scale_lr_to_batch", "warmup_factor", "warmup_steps", "weights",
}  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint_0_1(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of the 0.1 config's model holding exactly what a 0.1 checkpoint holds."""
    model = yaml.safe_load(CONFIG_0_1.read_text())["model"]
    overrides, freeze_at = model["overrides"], model["freeze_at"]
    trainer = quiet_trainer(max_steps=2, limit_val_batches=1, num_sanity_val_steps=0)
    sgd = {k: v for k, v in model["optimizer"]["init_args"].items() if k in ("lr", "momentum", "weight_decay")}
    module = tiny_module(overrides=overrides, freeze_at=freeze_at, optimizer=lambda p: torch.optim.SGD(p, **sgd))
    trainer.fit(module, datamodule=tiny_datamodule(sample_dir))
    path = tmp_path_factory.mktemp("old") / "last.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    checkpoint = {key: value for key, value in checkpoint.items() if key in CHECKPOINT_KEYS_0_1}
    hparams = checkpoint["hyper_parameters"]
    checkpoint["hyper_parameters"] = {k: v for k, v in hparams.items() if k in MODEL_HPARAMS_0_1 or k.startswith("_")}
    torch.save(checkpoint, path)
    return path


def test_a_0_1_checkpoint_predicts(checkpoint_0_1: Path, sample_dir: Path) -> None:
    predictor = Predictor.from_checkpoint(checkpoint_0_1, device="cpu", score_threshold=0.0)
    prediction = predictor(sorted((sample_dir / "val").glob("*.jpg"))[0])
    assert predictor.class_names == ["circle", "square", "triangle"]
    assert len(prediction) > 0


@pytest.mark.cli
def test_a_0_1_config_and_ckpt_path_still_work(checkpoint_0_1: Path, sample_dir: Path, tmp_path: Path) -> None:
    # 0.1's config.yaml (with its `ckpt_path: null`) parses; `--ckpt_path` still resumes, like `--ckpt`.
    data = {"train_json": "train.json", "train_images": "train", "val_json": "val.json", "val_images": "val"}
    args = [f"--config={CONFIG_0_1}", *(f"--data.{k}={sample_dir / v}" for k, v in data.items())]
    args += [f"--ckpt_path={checkpoint_0_1}"]
    # The checkpoint ended its one epoch (max_steps stopped it), so the resumed run is given a second one.
    args += [
        "--trainer.max_epochs=2",
        "--trainer.max_steps=3",
        "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false",
    ]
    args += [f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}"]
    result = subprocess.run(
        [sys.executable, "-m", "detlit.fit", *args], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from {checkpoint_0_1}" in result.stderr
    assert "training finished" in result.stderr
