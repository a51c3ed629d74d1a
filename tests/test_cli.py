"""CLI smoke tests: the real commands in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, tiny_cli_args

pytestmark = pytest.mark.cli


def run(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_fit_fast_dev_run(sample_dir: Path, tmp_path: Path) -> None:
    config = REPO / "configs" / "sample_cpu.yaml"
    result = run(["detlit.fit", f"--config={config}", *tiny_cli_args(sample_dir), "--trainer.fast_dev_run=1"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training finished" in result.stderr


@pytest.mark.slow
def test_fit_tests_the_best_checkpoint_and_the_test_stage_runs_alone(sample_dir: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = REPO / "configs" / "sample_cpu.yaml"
    data = [f"--data.test_json={sample_dir / 'val.json'}", f"--data.test_images={sample_dir / 'val'}"]
    short = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.enable_progress_bar=false"]
    result = run(["detlit.fit", f"--config={config}", *tiny_cli_args(sample_dir), *data, *short], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / "runs" / "sample" / "version_0"
    log = (folder / "run.log").read_text()
    assert "test stage" in log and "testing " in log and "best-epoch" in log and "test: test/" in log
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    after_fit = events.Scalars("test/map")[-1].value
    assert {"test/map", "test/map50", "test/loss", "test/f1"} <= set(events.Tags()["scalars"])

    # `detlit test` (python -m detlit.fit test) on the best checkpoint, with the run's own config
    argv = [sys.executable, "-m", "detlit", "test", f"--config={folder / 'config.yaml'}", "--ckpt=best"]
    again = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert list(folder.glob("config.test-*.yaml")), "the test's config is saved beside the run's own"
    events.Reload()
    assert events.Scalars("test/map")[-1].value == pytest.approx(after_fit, abs=1e-6)
    # validate needs a checkpoint
    stopped = run(["detlit.fit", "validate", f"--config={folder / 'config.yaml'}"], tmp_path)
    assert _error_line(stopped) == "error: validate needs a checkpoint: pass --ckpt CKPT (a .ckpt file, last or best)"


@pytest.mark.parametrize("switched_off", [False, True])
def test_every_run_gets_detlits_callbacks_and_checkpoint_writer(
    sample_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, switched_off: bool
) -> None:
    """The trainer the command builds: the config's callbacks, then the two checkpoint callbacks and
    detlit's own, without those a switched-off feature would refuse; always the atomic checkpoint writer."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from detlit.data.datamodule import CocoDataModule
    from detlit.model.module import DetectionModule
    from detlit.training.checkpointing import AtomicCheckpointIO
    from detlit.training.cli import DetlitCLI

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["detlit fit"])  # the arguments are the ones given here
    stopping = {"class_path": "lightning.pytorch.callbacks.EarlyStopping", "init_args": {"monitor": "val/map"}}
    args = [f"--config={REPO / 'configs' / 'sample_cpu.yaml'}", *tiny_cli_args(sample_dir)]
    args.append(f"--trainer.callbacks+={json.dumps(stopping)}")
    if switched_off:
        args += [
            "--trainer.enable_checkpointing=false",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
        ]
    cli = DetlitCLI(DetectionModule, CocoDataModule, run=False, auto_configure_optimizers=False, args=args)
    names = [type(c).__name__ for c in cli.trainer.callbacks]  # type: ignore[attr-defined]
    ours = ["EarlyStopping", "RunLog", "Detectron2Export", "SaveOnSigterm", "ValidateLastEpoch", "RunRecord"]
    if switched_off:
        assert [n for n in names if n not in ("SaveRunConfig", "RichModelSummary")] == ours
    else:
        # pytest's captured output is no terminal: progress comes as log lines
        assert names[: len(ours) + 2] == [*ours, "LearningRateMonitor", "PlainProgress"]
        checkpoints = [c for c in cli.trainer.callbacks if isinstance(c, ModelCheckpoint)]  # type: ignore[attr-defined]
        assert [(c.monitor, c.save_top_k, c.save_last) for c in checkpoints] == [("val/map", 1, False), (None, 0, True)]
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_print_config(tmp_path: Path) -> None:
    result = run(["detlit.fit", f"--config={REPO / 'configs' / 'sample_cpu.yaml'}", "--print_config"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MODEL.RESNETS.DEPTH: 18" in result.stdout
    assert "train_json: data/sample/train.json" in result.stdout


def test_gpu_config_parses(tmp_path: Path) -> None:
    result = run(
        ["detlit.fit", f"--config={REPO / 'configs' / 'faster_rcnn_R50_FPN.yaml'}", "--print_config"],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "weights: coco" in result.stdout


def test_progress_lines_when_output_is_not_a_terminal(sample_dir: Path, tmp_path: Path) -> None:
    """Output to a pipe: a plain line per step (--progress_seconds 0) on the console and in run.log."""
    config = REPO / "configs" / "sample_cpu.yaml"
    args = ["--trainer.max_epochs=2", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1"]
    result = run(
        ["detlit.fit", f"--config={config}", *tiny_cli_args(sample_dir), *args, "--progress_seconds=0"], tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if "step " in line and "images/s" in line]
    assert [line.split("step ")[1].split(" ")[0] for line in lines] == ["1/6", "2/6", "3/6", "4/6", "5/6", "6/6"]
    assert "epoch 2/2 batch 3/3" in lines[-1] and "loss " in lines[-1] and "left 0:00:00" in lines[-1]
    assert "validating after epoch 2: 1 batch" in result.stderr  # the config validates every 5 epochs, and the last
    run_log = (tmp_path / "runs" / "sample" / "version_0" / "run.log").read_text()
    assert "step 6/6 (100.0%), epoch 2/2 batch 3/3" in run_log
    # run.log has every message from the start (the data check's, before the run folder existed),
    # each once; the console has Lightning's messages once, without its adverts and warnings about itself
    assert run_log.index("detlit.data.coco: read") < run_log.index("detlit: command:")
    assert run_log.count("`Trainer.fit` stopped") == 1 and result.stderr.count("`Trainer.fit` stopped") == 1
    for noise in ("args parameter is intended", "Tip:", "LeafSpec", "\nINFO: "):
        assert noise not in result.stderr and noise not in run_log


def test_gpu_config_trains_on_a_machine_without_a_gpu(sample_dir: Path, tmp_path: Path) -> None:
    """The README's main config (accelerator auto, 16-mixed) runs where there is no CUDA GPU, in 32-bit."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: the config trains in mixed precision on it")
    config = REPO / "configs" / "faster_rcnn_R50_FPN.yaml"
    result = run(["detlit.fit", f"--config={config}", *tiny_cli_args(sample_dir), "--trainer.fast_dev_run=1"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "precision 16-mixed is for CUDA GPUs and none will be used: training in 32-true on the CPU" in result.stderr
    assert "bf16" not in result.stderr and "training finished" in result.stderr


@pytest.mark.parametrize(
    ("accelerator", "precision", "cuda", "expected"),
    [
        ("auto", "16-mixed", False, "32-true"),
        ("auto", "16-mixed", True, "16-mixed"),
        ("cpu", "16-mixed", True, "32-true"),
        ("cpu", "16", False, "32-true"),
        ("auto", "bf16-mixed", False, "bf16-mixed"),  # asked for by name: kept
        ("gpu", "16-mixed", False, "16-mixed"),  # Lightning's own sentence: no GPU
        ("auto", "32-true", False, "32-true"),
    ],
)
def test_precision_fits_the_device(accelerator: str, precision: str, cuda: bool, expected: str) -> None:
    from detlit.training.settings import fit_precision_to_device

    config = {"trainer": {"accelerator": accelerator, "precision": precision}}
    fit_precision_to_device(config, cuda=cuda)
    assert config["trainer"]["precision"] == expected


def test_rbc_config_parses_with_the_tuned_values(tmp_path: Path) -> None:
    result = run(["detlit.fit", f"--config={REPO / 'configs' / 'rbc_cpu.yaml'}", "--print_config"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "lr: 0.018342298322747464" in result.stdout and "warmup_steps: 184" in result.stdout
    assert "test_json: data/rbc/test/_annotations.coco.json" in result.stdout


def _error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


@pytest.mark.parametrize(
    ("json_text", "expected"),
    [
        (None, "does not exist; pass the path of your COCO annotation json"),
        ('{"foo": 1}', "not a COCO detection json"),
        ("this is not json", "is not valid JSON"),
    ],
)
def test_bad_train_json_is_one_sentence(sample_dir: Path, tmp_path: Path, json_text: str | None, expected: str) -> None:
    bad = tmp_path / "bad.json"
    if json_text is not None:
        bad.write_text(json_text)
    args = [*tiny_cli_args(sample_dir), f"--data.train_json={bad}", "--trainer.fast_dev_run=1"]
    line = _error_line(run(["detlit.fit", f"--config={REPO / 'configs' / 'sample_cpu.yaml'}", *args], tmp_path))
    assert str(bad) in line and expected in line


def test_image_folder_without_images_is_one_sentence(sample_dir: Path, tmp_path: Path) -> None:
    args = [*tiny_cli_args(sample_dir), f"--data.train_images={tmp_path}", "--trainer.fast_dev_run=1"]
    line = _error_line(run(["detlit.fit", f"--config={REPO / 'configs' / 'sample_cpu.yaml'}", *args], tmp_path))
    assert str(tmp_path) in line and "set data.train_images" in line


def test_bad_override_is_one_sentence(sample_dir: Path, tmp_path: Path) -> None:
    args = [*tiny_cli_args(sample_dir), "--model.overrides.MODEL.NO_SUCH_KEY=1", "--trainer.fast_dev_run=1"]
    line = _error_line(run(["detlit.fit", f"--config={REPO / 'configs' / 'sample_cpu.yaml'}", *args], tmp_path))
    assert "unknown detectron2 config key 'MODEL.NO_SUCH_KEY'" in line


def test_env_reports_versions(tmp_path: Path) -> None:
    result = run(["detlit.env"], tmp_path)
    assert result.returncode == 0, result.stderr
    for name in (
        "torch",
        "detectron2",
        "detectron2 compiled ops",
        "lightning",
        "torchmetrics",
        "albumentations",
    ):
        assert f"\n{name} " in "\n" + result.stdout


def test_sample_is_deterministic(tmp_path: Path) -> None:
    for out in ("a", "b"):
        assert run(["detlit.sample", out, "--train=6", "--val=3"], tmp_path).returncode == 0
    a, b = (json.loads((tmp_path / d / "train.json").read_text()) for d in ("a", "b"))
    assert a == b
    assert [c["id"] for c in a["categories"]] == [1, 3, 7]
    for name in (p.name for p in (tmp_path / "a" / "train").iterdir()):
        assert (tmp_path / "a" / "train" / name).read_bytes() == (tmp_path / "b" / "train" / name).read_bytes()
