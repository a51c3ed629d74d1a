"""Faults cost minutes, not the run: resume, kills, corrupt images, full disks, signals."""

from __future__ import annotations

import errno
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import get_worker_info

from detlit.data.dataset import DetectionDataset
from detlit.errors import DataError, DetlitError
from detlit.model.module import DetectionModule
from detlit.training import checkpointing
from detlit.training.checkpointing import AtomicCheckpointIO, CheckpointWriteError
from detlit.training.cli import plain_failures

from .conftest import REPO, quiet_trainer, tiny_cli_args, tiny_datamodule, tiny_module
from .probes import LogBatches


def _batches(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("stop_at", [3, 9])
def test_mid_epoch_resume_continues_with_the_remaining_batches(sample_dir: Path, tmp_path: Path, stop_at: int) -> None:
    def fit(log: Path, ckpt: Path | None = None, **trainer_args: object) -> None:
        module = tiny_module(optimizer=partial(torch.optim.SGD, lr=0.01))
        checkpoint = ModelCheckpoint(dirpath=tmp_path / log.stem, every_n_train_steps=2, save_last=True)
        trainer = quiet_trainer(
            limit_val_batches=0, enable_checkpointing=True, callbacks=[checkpoint, LogBatches(str(log))], **trainer_args
        )
        trainer.fit(module, datamodule=tiny_datamodule(sample_dir, batch_size=2), ckpt_path=ckpt)

    fit(tmp_path / "straight.jsonl", max_epochs=2)
    straight = _batches(tmp_path / "straight.jsonl")
    fit(tmp_path / "first.jsonl", max_epochs=2, max_steps=stop_at)  # stops mid-epoch 0 or 1
    fit(tmp_path / "second.jsonl", ckpt=tmp_path / "first" / "last.ckpt", max_epochs=2)
    first, second = _batches(tmp_path / "first.jsonl"), _batches(tmp_path / "second.jsonl")
    resumed_from = stop_at - stop_at % 2  # the last checkpoint (every 2 steps) before the stop
    assert [b["ids"] for b in first[:resumed_from] + second] == [b["ids"] for b in straight]
    assert [b["step"] for b in second] == [b["step"] for b in straight[resumed_from:]]
    assert [b["epoch"] for b in second] == [b["epoch"] for b in straight[resumed_from:]]


# --- processes that are killed or told to stop ---------------------------------------------


def _fit_command(sample_dir: Path, log: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "detlit.fit",
        f"--config={REPO / 'configs' / 'sample_cpu.yaml'}",
        *tiny_cli_args(sample_dir),
        "--data.augment=none",
        "--trainer.max_epochs=2",
        "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false",
        "--last_checkpoint.every_n_train_steps=2",
        "--trainer.callbacks+=tests.probes.LogBatches",
        f"--trainer.callbacks.path={log}",
        *extra,
    ]


def _run_until(command: list[str], cwd: Path, log: Path, step: int, sig: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        if log.exists() and any(b["step"] >= step for b in _batches(log)):
            process.send_signal(sig)
            break
        time.sleep(0.05)
    process.wait(timeout=600)
    return process


def _finish(sample_dir: Path, cwd: Path, log: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = _fit_command(sample_dir, log, "--ckpt_path=last")
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def straight_run(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Batches of an uninterrupted run, for comparison."""
    cwd = tmp_path_factory.mktemp("straight")
    log = cwd / "batches.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        _fit_command(sample_dir, log), cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return _batches(log)


def _checkpoints_load(cwd: Path) -> list[dict]:
    files = sorted(cwd.glob("runs/*/version_*/checkpoints/*.ckpt"))
    assert files
    return [torch.load(f, map_location="cpu", weights_only=True) for f in files]


@pytest.mark.slow
def test_kill_9_then_resume_last(sample_dir: Path, tmp_path: Path, straight_run: list[dict]) -> None:
    log = tmp_path / "batches.jsonl"
    kill_at = random.Random(os.getpid()).randint(3, len(straight_run) - 2)
    killed = _run_until(_fit_command(sample_dir, log), tmp_path, log, kill_at, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    before = _batches(log)
    assert _checkpoints_load(tmp_path)  # every checkpoint file on disk is complete
    last = next(tmp_path.glob("runs/*/version_*/checkpoints/last.ckpt"))
    saved_step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert 0 < saved_step <= before[-1]["step"]
    log.unlink()
    result = _finish(sample_dir, tmp_path, log)
    assert result.returncode == 0, result.stderr[-3000:]
    after = _batches(log)
    assert after[0]["step"] == saved_step + 1  # the global step continues
    resumed = [b for b in before if b["step"] <= saved_step] + after
    assert [(b["epoch"], b["ids"]) for b in resumed] == [(b["epoch"], b["ids"]) for b in straight_run]
    assert len(list(tmp_path.glob("runs/*/version_*"))) == 1  # the run continued in its own folder


@pytest.mark.slow
def test_sigterm_saves_a_resumable_checkpoint(sample_dir: Path, tmp_path: Path, straight_run: list[dict]) -> None:
    log = tmp_path / "batches.jsonl"
    stopped = _run_until(_fit_command(sample_dir, log), tmp_path, log, 3, signal.SIGTERM)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stdout.read()[-3000:] if stopped.stdout else ""
    before = _batches(log)
    last = torch.load(next(tmp_path.glob("runs/*/version_*/checkpoints/last.ckpt")), weights_only=True)
    assert last["global_step"] == before[-1]["step"]  # saved where it stopped, not at an older step
    log.unlink()
    result = _finish(sample_dir, tmp_path, log)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = before + _batches(log)
    assert [(b["epoch"], b["ids"]) for b in resumed] == [(b["epoch"], b["ids"]) for b in straight_run]


# --- files that break ----------------------------------------------------------------------


def _sample_with_truncated_image(sample_dir: Path, tmp_path: Path) -> tuple[Path, str]:
    copy = tmp_path / "sample"
    shutil.copytree(sample_dir, copy)
    coco = json.loads((copy / "train.json").read_text())
    broken = coco["images"][2]["file_name"]
    data = (copy / "train" / broken).read_bytes()
    (copy / "train" / broken).write_bytes(data[: len(data) // 2])  # the header still reads
    return copy, broken


def test_corrupt_image_in_training_is_skipped_and_counted(
    sample_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    copy, broken = _sample_with_truncated_image(sample_dir, tmp_path)
    trainer = quiet_trainer(max_epochs=1, limit_val_batches=0)
    with caplog.at_level("WARNING"):
        trainer.fit(tiny_module(), datamodule=tiny_datamodule(copy))
    assert float(trainer.callback_metrics["train/skipped_images"]) == 1
    assert f"skipping unreadable image {copy / 'train' / broken}" in caplog.text
    assert trainer.global_step == trainer.num_training_batches  # nothing else was lost


def test_corrupt_image_stops_a_strict_run(sample_dir: Path, tmp_path: Path) -> None:
    copy, broken = _sample_with_truncated_image(sample_dir, tmp_path)
    with pytest.raises(DataError, match=rf"image .*{broken} cannot be read"):
        quiet_trainer(max_epochs=1, limit_val_batches=0).fit(
            tiny_module(), datamodule=tiny_datamodule(copy, strict_images=True)
        )


def test_corrupt_validation_image_is_left_out_of_the_metrics(sample_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "sample"
    shutil.copytree(sample_dir, copy)
    name = json.loads((copy / "val.json").read_text())["images"][0]["file_name"]
    data = (copy / "val" / name).read_bytes()
    (copy / "val" / name).write_bytes(data[: len(data) // 2])
    result = quiet_trainer().validate(tiny_module(), datamodule=tiny_datamodule(copy), verbose=False)[0]
    assert result["val/skipped_images"] == 1 and math.isfinite(result["val/map"])


def test_disk_full_keeps_the_previous_checkpoint(
    sample_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_last=True, save_top_k=0)
    plugins = [AtomicCheckpointIO()]
    trainer = quiet_trainer(
        max_steps=1, limit_val_batches=0, enable_checkpointing=True, callbacks=[checkpoint], plugins=plugins
    )
    trainer.fit(tiny_module(), datamodule=tiny_datamodule(sample_dir))
    good = (tmp_path / "last.ckpt").read_bytes()

    real_save = torch.save

    def full_disk(obj: object, handle: object, *args: object, **kwargs: object) -> None:
        real_save({"partial": torch.zeros(1000)}, handle)  # some bytes reach the file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpointing.torch, "save", full_disk)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_last=True, save_top_k=0)
    trainer = quiet_trainer(
        max_steps=3, limit_val_batches=0, enable_checkpointing=True, callbacks=[checkpoint], plugins=plugins
    )
    with pytest.raises(
        CheckpointWriteError, match=r"could not write checkpoint .*last.ckpt \(No space left on device\)"
    ):
        trainer.fit(tiny_module(), datamodule=tiny_datamodule(sample_dir), ckpt_path=tmp_path / "last.ckpt")
    monkeypatch.setattr(checkpointing.torch, "save", real_save)
    assert (tmp_path / "last.ckpt").read_bytes() == good
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 1
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_dying_worker_is_explained(sample_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = DetectionDataset.__getitem__

    def die_in_worker(self: DetectionDataset, index: int) -> dict:
        if get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, index)

    monkeypatch.setattr(DetectionDataset, "__getitem__", die_in_worker)
    trainer = quiet_trainer(max_steps=1, limit_val_batches=0)
    with (
        pytest.raises(DetlitError, match="a data-loading worker process died .*lower data.num_workers"),
        plain_failures(),
    ):
        trainer.fit(tiny_module(), datamodule=tiny_datamodule(sample_dir, num_workers=1))


def test_checkpoints_load_weights_only(sample_dir: Path, tmp_path: Path) -> None:
    trainer = quiet_trainer(max_steps=1, limit_val_batches=1, max_epochs=1, limit_train_batches=1)
    module = tiny_module()
    trainer.fit(module, datamodule=tiny_datamodule(sample_dir, augment="strong"))
    module.score_thresholds = [0.3, 0.4, 0.5]
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    loaded = torch.load(tmp_path / "a.ckpt", weights_only=True)  # no pickled code objects inside
    assert loaded["detlit_score_thresholds"] == [0.3, 0.4, 0.5]
    again = DetectionModule.load_from_checkpoint(tmp_path / "a.ckpt", map_location="cpu", weights_only=True)
    assert again.score_thresholds == [0.3, 0.4, 0.5]


# --- real full and read-only disks (tmpfs; needs the right to mount, as root in CI) ------------------


@contextmanager
def mounted(folder: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``folder`` (skip the test where mounting is not allowed)."""
    folder.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.decode().strip() or 'not permitted'})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _fit_into(sample_dir: Path, save_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    args = [f"--config={REPO / 'configs' / 'sample_cpu.yaml'}", *tiny_cli_args(sample_dir)]
    args += [f"--trainer.logger.init_args.save_dir={save_dir}", "--trainer.enable_progress_bar=false", *extra]
    return subprocess.run(
        [sys.executable, "-m", "detlit.fit", *args], cwd=REPO, capture_output=True, text=True, timeout=900
    )


@pytest.mark.slow
def test_a_full_disk_ends_in_one_sentence_and_keeps_the_last_checkpoint(sample_dir: Path, tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    result = _fit_into(sample_dir, probe, "--trainer.max_steps=1", "--trainer.limit_val_batches=0")
    assert result.returncode == 0, result.stderr[-2000:]
    size = (probe / "sample" / "version_0" / "checkpoints" / "last.ckpt").stat().st_size
    # room for one checkpoint and the logs, not for a second checkpoint beside it
    with mounted(tmp_path / "disk", f"size={size * 3 // 2}") as disk:
        result = _fit_into(
            sample_dir,
            disk,
            "--trainer.max_steps=2",
            "--trainer.limit_val_batches=0",
            "--last_checkpoint.every_n_train_steps=1",
        )
        assert result.returncode == 2, result.stderr[-3000:]
        assert "Traceback" not in result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "No space left on device" in errors[0], result.stderr[-2000:]
        checkpoints = sorted((disk / "sample" / "version_0" / "checkpoints").iterdir())
        assert [p.name for p in checkpoints] == ["last.ckpt"], "no partial or temporary file is left"
        assert torch.load(checkpoints[0], weights_only=True)["global_step"] == 1, "the previous checkpoint is whole"


@pytest.mark.slow
def test_a_read_only_folder_ends_in_one_sentence_before_anything_starts(sample_dir: Path, tmp_path: Path) -> None:
    with mounted(tmp_path / "ro", "ro,size=1m") as folder:
        result = _fit_into(sample_dir, folder / "runs", "--trainer.max_steps=1")
        assert result.returncode == 2, result.stderr[-3000:]
        assert "Traceback" not in result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "cannot write the run folder" in errors[0] and "Read-only" in errors[0]


def test_evaluate_onto_a_full_disk_is_one_sentence(
    tmp_path: Path, coco_eval_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from detlit.evaluate import main as evaluate

    with mounted(tmp_path / "disk", "size=64k") as disk:
        args = ["--results", str(coco_eval_dir / "instances_val2014_fakebbox100_results.json")]
        args += ["--json", str(coco_eval_dir / "instances_val2014_100.json"), "--out", str(disk / "eval")]
        with pytest.raises(SystemExit) as stopped:
            evaluate(args)
        err = capsys.readouterr().err
        assert stopped.value.code == 2 and "Traceback" not in err
        assert "could not write" in err and "No space left on device" in err
        assert not list((disk / "eval").glob(".*.tmp")), "no temporary file is left"


def test_ctrl_c_saves_last_checkpoint_and_exits_130(sample_dir: Path, tmp_path: Path) -> None:
    args = [f"--config={REPO / 'configs' / 'sample_cpu.yaml'}", *tiny_cli_args(sample_dir)]
    args += [f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.max_epochs=50"]
    args += ["--trainer.enable_progress_bar=false", "--trainer.limit_val_batches=0", "--trainer.log_every_n_steps=1"]
    # As from a terminal: a shell's background job (how CI may run) starts with SIGINT ignored.
    process = subprocess.Popen(
        [sys.executable, "-m", "detlit.fit", *args],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert process.stderr is not None
    for line in process.stderr:  # wait for the first optimizer steps
        if "epoch 0 (step" in line or "epoch 1 (step" in line:
            break
    process.send_signal(signal.SIGINT)
    rest = process.stderr.read()
    assert process.wait(timeout=300) == 130, rest[-3000:]
    assert "Traceback" not in rest and "stopped by Ctrl-C; resume with --ckpt last" in rest
    last = tmp_path / "sample" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] > 0


@pytest.fixture(scope="module")
def small_run(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run folder of the tiny model (2 steps, one validation)."""
    runs = tmp_path_factory.mktemp("small-run")
    result = _fit_into(sample_dir, runs, "--trainer.max_steps=2", "--trainer.limit_val_batches=1")
    assert result.returncode == 0, result.stderr[-2000:]
    return runs / "sample" / "version_0"


def _one_sentence(command: str, args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    import importlib

    with pytest.raises(SystemExit) as stopped:
        importlib.import_module(f"detlit.{command}").main(args)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert stopped.value.code == 2 and "Traceback" not in err and len(errors) == 1, err[-3000:]
    return errors[0]


@pytest.mark.slow
@pytest.mark.parametrize("command", ["predict", "export", "report"])
@pytest.mark.parametrize("disk", ["full", "read-only"])
def test_predict_export_and_report_onto_a_full_or_read_only_disk(
    command: str, disk: str, small_run: Path, sample_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    options = "size=24k" if disk == "full" else "ro,size=1m"
    with mounted(tmp_path / "disk", options) as folder:
        out = folder / "out"
        ckpt = str(small_run / "checkpoints" / "last.ckpt")
        args = {
            "predict": ["--ckpt", ckpt, str(sample_dir / "val"), "--out", str(out)],
            "export": ["--ckpt", ckpt, "--format", "torchscript", "--out", str(out)],
            "report": ["--run", str(small_run), "--out", str(out)],
        }[command]
        error = _one_sentence(command, args, capsys)
        assert ("No space left on device" if disk == "full" else "Read-only file system") in error, error
        left = [p for p in folder.rglob("*") if p.is_file()]
        assert not [p for p in left if p.name.endswith(".tmp")], "no temporary file is left"
        if command == "export":
            assert not left, "no model file, no metadata"
