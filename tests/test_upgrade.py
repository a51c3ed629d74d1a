"""What older detlit wrote keeps working: 0.1's run configs (``--ckpt_path`` included) and checkpoints,
and 0.2's run folders, which kept no record of their own (no ``run.json`` or ``metrics.jsonl``)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from detlit.inference.predictor import Predictor

from .conftest import REPO, quiet_trainer, tiny_datamodule, tiny_module

CONFIG_0_1 = REPO / "tests" / "data" / "config_0.1.yaml"  # the config.yaml of a 0.1 run, paths made relative
# A run folder written by detlit 0.2 (python -m detlit.fit of the tiny model, 2 epochs of 3 batches, data in
# data/sample of write_sample(train=12, val=6, seed=1)), without its checkpoints and detectron2 files; in run.log the
# interpreter's path is shortened to `python`.
RUN_0_2 = REPO / "tests" / "data" / "run_0.2"
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


def test_a_0_2_run_folder_still_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """0.2 kept no record: the report reads its run.log, hparams.yaml and event files, as 0.2 did."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from detlit import report
    from detlit.data.sample import write_sample

    project = tmp_path / "project"  # where the run was trained: its config names data/sample/...
    write_sample(project / "data" / "sample", train=12, val=6, seed=1)
    folder = project / "runs" / "sample" / "version_0"
    shutil.copytree(RUN_0_2, folder)
    monkeypatch.chdir(tmp_path)  # reported from elsewhere: the data is found from the run folder
    with pytest.raises(SystemExit) as stopped:
        report.main(["--run", str(folder), "--max-images", "0"])
    assert stopped.value.code == 0
    text = (folder / "report.md").read_text()
    events = EventAccumulator(str(RUN_0_2), size_guidance={"scalars": 0})
    events.Reload()
    last = events.Scalars("val/map")[-1]
    assert f"Source: the last validation in the TensorBoard event files (step {last.step})." in text
    assert f"| AP @[.50:.95] | {last.value:.3f} |" in text
    assert "| duration (first to last line of run.log) | 0 min 02 s |" in text
    assert "| optimizer steps | 6 |" in text and "| epochs | 2 |" in text
    assert "| command | `python -m detlit.fit --config=configs/sample_cpu.yaml " in text
    assert "versions (recorded in run.log)" in text and "stopped by" not in text
    for name in ("circle", "square", "triangle"):  # the class names, from hparams.yaml
        assert re.search(rf"^\| {name} \| \d+ \| \d+ \| ", text, re.MULTILINE), name
    assert "| images | 12 | 6 |" in text  # the data, found relative to the run folder
    assert "curves_losses.png" in text and "curves_validation.png" in text
    assert not (folder / "run.json").exists() and not (folder / "metrics.jsonl").exists()
