"""The run keeps its own records: the run folder's layout (common/run_folder), run.json and metrics.jsonl
as fit writes them whatever the logger, why a run stopped, and the records read bounded."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from detlit.common.files import sha256_file
from detlit.common.run_folder import (
    MAX_METRICS_BYTES,
    RunFolder,
    find_checkpoint,
    folder_of,
    plain,
    read_metrics,
    read_record,
    recorded_data,
    refuse_reused,
    runs_in,
)
from detlit.errors import ConfigError

from .conftest import quiet_trainer, tiny_datamodule, tiny_module

# --- the layout ------------------------------------------------------------------------------------


class FakeLogger:
    def __init__(self, save_dir: str | None, name: str, version: int | str) -> None:
        self.save_dir, self.name, self.version = save_dir, name, version


def test_the_run_folder_is_where_lightning_puts_the_checkpoints() -> None:
    # TensorBoard / CSV: save_dir/name/version_N; MLflow with a server: no local folder, the trainer's
    # default_root_dir/<experiment id>/<run id>; no logger: the default_root_dir itself.
    assert folder_of([FakeLogger("logs", "sample", 3)], "runs") == Path("logs/sample/version_3")
    assert folder_of([FakeLogger(None, "7", "0a1b2c")], "runs") == Path("runs/7/0a1b2c")
    assert folder_of([FakeLogger("trials", "t1", "")], "runs") == Path("trials/t1")  # tune's trials
    assert folder_of([], "runs") == Path("runs")


def make_runs(root: Path) -> dict[str, Path]:
    files = {}
    for version, names in ((0, ["last.ckpt", "best-a.ckpt"]), (2, ["last.ckpt"]), (10, ["best-b.ckpt"])):
        for name in names:
            path = root / f"version_{version}" / "checkpoints" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
            files[f"{version}/{name}"] = path
    (root / "version_x").mkdir()  # not a numbered run
    return files


def test_last_and_best_are_the_newest_run_s(tmp_path: Path) -> None:
    files = make_runs(tmp_path / "runs")
    assert [run.version for run in runs_in(tmp_path / "runs")] == [0, 2, 10]
    assert find_checkpoint("last", tmp_path / "runs") == (files["2/last.ckpt"], 2)
    assert find_checkpoint("best", tmp_path / "runs") == (files["10/best-b.ckpt"], 10)
    assert find_checkpoint(str(files["0/best-a.ckpt"]), tmp_path / "runs") == (files["0/best-a.ckpt"], 0)
    elsewhere = tmp_path / "kept.ckpt"
    elsewhere.write_bytes(b"x")
    assert find_checkpoint(str(elsewhere), tmp_path / "runs") == (elsewhere, None)
    with pytest.raises(ConfigError) as raised:
        find_checkpoint("last", tmp_path / "none")
    assert (
        str(raised.value)
        == f"--ckpt last: no {tmp_path / 'none'}/version_*/checkpoints/last.ckpt; pass a .ckpt file instead"
    )
    with pytest.raises(ConfigError, match=r"^--ckpt .* is a folder; pass a \.ckpt file, last or best$"):
        find_checkpoint(str(tmp_path), tmp_path / "runs")
    with pytest.raises(ConfigError) as raised:
        refuse_reused(tmp_path / "runs", 2)
    assert str(raised.value).startswith(f"{tmp_path / 'runs' / 'version_2'} already holds a run; ")
    refuse_reused(tmp_path / "runs", 5)  # an empty or new version is fine


def test_plain_json_of_hyper_parameters() -> None:
    value = {
        "lr": np.float32(0.5),
        "steps": np.int64(3),
        "nan": math.nan,
        "optimizer": torch.optim.SGD,
        "path": Path("a/b"),
        "sizes": (1, 2),
        "scalar": torch.tensor(2.0),
        3: {"on": np.bool_(True)},
    }
    assert plain(value) == {
        "lr": 0.5,
        "steps": 3,
        "nan": None,
        "optimizer": "torch.optim.sgd.SGD",
        "path": "a/b",
        "sizes": [1, 2],
        "scalar": 2.0,
        "3": {"on": True},
    }
    json.dumps(plain(value), allow_nan=False)


# --- reading the records bounded --------------------------------------------------------------------


def test_the_metrics_file_is_read_bounded_and_survives_a_cut_line(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    lines = [
        {"step": 0, "time": 10.0, "train/loss": 2.0, "epoch": 0},
        {"step": 1, "time": 11.0, "train/loss": 1.5},
        {"step": 1, "time": 20.0, "train/loss": 1.25},  # resumed: the later value of a step wins
        {"step": 2, "time": 21.0, "train/loss": "NaN", "note": "text"},  # a NaN loss; other text is no value
        {"step": 2, "val/threshold/a": "Infinity", "val/x": None},  # a class without a threshold; null
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines)
    text += '{"step": 3, "a": [1, 2]}\n["not", "a", "row"]\n{"step": 4, "train/loss": 0.'  # nested, a list, cut
    run.metrics.write_text(text)
    metrics = read_metrics(run)
    assert metrics.series["train/loss"][:3] == [(0, 2.0), (1, 1.25), (2, metrics.series["train/loss"][2][1])]
    assert math.isnan(metrics.series["train/loss"][2][1]) and len(metrics.series["train/loss"]) == 3
    assert metrics.series["val/threshold/a"] == [(2, math.inf)] and math.isnan(metrics.series["val/x"][0][1])
    assert set(metrics.series) == {"train/loss", "epoch", "val/threshold/a", "val/x"}
    assert metrics.times == (10.0, 21.0) and metrics.unreadable == 3

    with run.metrics.open("r+b") as handle:  # a sparse file: its size is refused before it is read
        handle.truncate(MAX_METRICS_BYTES + 1)
    with pytest.raises(ConfigError) as raised:
        read_metrics(run)
    assert str(raised.value) == (
        f"{run.metrics} is 67,108,865 bytes, more than the 67,108,864 bytes detlit reads of it; a run folder "
        "holds the metrics file detlit writes: remove this one or train the run again"
    )


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("[]", 'no "record": "detlit run record"'),
        ('{"record": "something else"}', 'no "record": "detlit run record"'),
        ("[" * 30000 + "]" * 30000, "nests or holds 30000 arrays and objects, more than the limit of 20000"),
        ("{not json", "Expecting property name enclosed in double quotes"),
    ],
)
def test_a_record_that_is_not_detlit_s_is_one_sentence(tmp_path: Path, content: str, reason: str) -> None:
    run = RunFolder(tmp_path)
    run.record.write_text(content)
    with pytest.raises(ConfigError) as raised:
        read_record(run)
    assert str(raised.value).startswith(f"{run.record} is not a detlit run record (")
    assert reason in str(raised.value)
    assert recorded_data(run.checkpoints / "last.ckpt", "train") == {}  # export goes on without it


# --- what fit records ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recorded(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny run logged with Lightning's CSVLogger: fit (2 epochs of 2 batches), test, then resumed for a
    third epoch in its folder; run.json after each, and the folder."""
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from detlit.training.callbacks import RunRecord

    root = tmp_path_factory.mktemp("records")
    data = dict(test_json=str(sample_dir / "val.json"), test_images=str(sample_dir / "val"))

    def trainer(epochs: int) -> Any:
        best = ModelCheckpoint(monitor="val/map", mode="max", filename="best-{epoch}", save_last=True)
        return quiet_trainer(
            max_epochs=epochs,
            limit_train_batches=2,
            log_every_n_steps=1,
            logger=CSVLogger(str(root), name="csv", version=0),
            enable_checkpointing=True,
            callbacks=[RunRecord({"trainer": {"max_time": None}}), best, LearningRateMonitor("step")],
        )

    first = trainer(2)
    first.fit(tiny_module(), datamodule=tiny_datamodule(sample_dir, **data))
    folder = RunFolder(root / "csv" / "version_0")
    after_fit = read_record(folder)
    first.test(ckpt_path="best", datamodule=tiny_datamodule(sample_dir, **data), verbose=False)
    after_test = read_record(folder)
    logged = {name: (folder.path / name).read_text() for name in ("metrics.csv", "metrics.jsonl")}
    callback = first.checkpoint_callback
    third = trainer(3)
    third.fit(tiny_module(), datamodule=tiny_datamodule(sample_dir, **data), ckpt_path=str(folder.last_checkpoint))
    return {
        "folder": folder,
        "fit": after_fit,
        "test": after_test,
        "resumed": read_record(folder),
        "logged": logged,
        "best": (callback.best_model_path, float(callback.best_model_score)),
    }


def test_fit_records_the_run(recorded: dict[str, Any], sample_dir: Path) -> None:
    record, folder = recorded["fit"], recorded["folder"]
    assert (record["record"], record["version"], record["status"]) == ("detlit run record", 1, "finished")
    assert record["stopped_by"] == "max_epochs" and record["error"] is None
    assert record["schedule"]["planned"] == {
        "max_epochs": 2,
        "max_steps": -1,
        "max_time": None,
        "accumulate_grad_batches": 1,
        "warmup_steps": 100,
        "lr_schedule": "cosine",
        "batches_per_epoch": 2,
        "total_steps": 4,
    }
    assert record["schedule"]["done"] == {"epochs": 2, "steps": 4}
    assert record["classes"] == {"names": ["circle", "square", "triangle"], "category_ids": [1, 3, 7]}
    assert record["data"]["train"] == {
        "json": str(sample_dir / "train.json"),
        "path": str((sample_dir / "train.json").resolve()),
        "sha256": sha256_file(sample_dir / "train.json"),
        "images": str(sample_dir / "train"),
    }
    assert set(record["data"]) == {"train", "val", "test"}
    assert record["hparams"]["model"]["overrides"]["MODEL.RESNETS.DEPTH"] == 18
    assert record["hparams"]["data"]["batch_size"] == 2
    assert record["versions"]["torch"] == torch.__version__ and "lightning" in record["versions"]
    assert record["logger"] == "lightning.pytorch.loggers.csv_logs.CSVLogger"
    best_path, best_score = recorded["best"]
    assert record["checkpoints"] == {
        "best": {"path": f"checkpoints/{Path(best_path).name}", "monitor": "val/map", "score": best_score},
        "last": "checkpoints/last.ckpt",
    }
    assert folder.resolve(record["checkpoints"]["best"]["path"]) == folder.path / "checkpoints" / Path(best_path).name
    assert [s["stage"] for s in record["sessions"]] == ["fit"] and record["sessions"][0]["status"] == "finished"
    assert recorded_data(folder.last_checkpoint, "train")["sha256"] == sha256_file(sample_dir / "train.json")


def test_later_commands_add_their_sessions(recorded: dict[str, Any]) -> None:
    test, resumed = recorded["test"], recorded["resumed"]
    assert [(s["stage"], s["status"]) for s in test["sessions"]] == [("fit", "finished"), ("test", "finished")]
    assert test["sessions"][1]["checkpoint"] == recorded["best"][0]
    assert test["schedule"] == recorded["fit"]["schedule"]  # a test changes nothing of the fit
    assert [s["stage"] for s in resumed["sessions"]] == ["fit", "test", "fit"]
    assert resumed["started"] == recorded["fit"]["started"]
    assert resumed["sessions"][2]["checkpoint"] == str(recorded["folder"].last_checkpoint)
    assert resumed["schedule"]["done"] == {"epochs": 3, "steps": 6} and resumed["status"] == "finished"
    assert "earlier_metrics" not in resumed  # the run kept its records from its start


def test_the_metrics_file_holds_what_every_logger_gets(recorded: dict[str, Any]) -> None:
    """metrics.jsonl against Lightning's own CSVLogger of the same run (fit and test): the same names,
    steps and values; resumed, the run's file goes on."""
    folder, logged = recorded["folder"], recorded["logged"]
    expected: dict[str, dict[int, float]] = {}
    for row in csv.DictReader(logged["metrics.csv"].splitlines()):
        for name, value in row.items():
            if name != "step" and value != "":
                expected.setdefault(name, {})[int(row["step"])] = float(value)
    snapshot = folder.path / "snapshot"
    snapshot.mkdir(exist_ok=True)
    (snapshot / "metrics.jsonl").write_text(logged["metrics.jsonl"])
    series = read_metrics(RunFolder(snapshot)).series
    assert set(series) == set(expected)
    for name, points in expected.items():
        assert dict(series[name]) == pytest.approx(points, rel=1e-6, nan_ok=True), name
    assert {"train/loss", "val/map", "test/map", "lr-AdamW/pg1", "lr-AdamW/pg2", "epoch"} <= set(series)
    assert len(series["test/map"]) == 1

    resumed = read_metrics(folder).series
    assert [step for step, _ in resumed["train/loss"]] == [0, 1, 2, 3, 4, 5]  # 3 epochs, every step


# --- why a run stopped ----------------------------------------------------------------------------


class Raise:
    """A callback that raises at the first training batch."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def callback(self) -> Any:
        from lightning.pytorch import Callback

        error = self.error

        class Raising(Callback):
            def on_train_batch_end(self, *args: Any) -> None:
                raise error

        return Raising()


@pytest.fixture()
def keep_sigint() -> Iterator[None]:
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)  # Lightning ignores Ctrl-C while it shuts down after one


@pytest.mark.parametrize(
    ("how", "stopped_by", "status"),
    [
        ("max_steps", "max_steps", "finished"),
        ("early_stopping", "early_stopping", "finished"),
        ("max_time", "max_time", "finished"),
        ("Ctrl-C", "Ctrl-C", "stopped"),
        ("SIGTERM", "SIGTERM", "stopped"),
        ("error", "error", "failed"),
        ("diverged", "diverged", "failed"),
    ],
)
def test_why_a_run_stopped_is_recorded(
    how: str, stopped_by: str, status: str, sample_dir: Path, tmp_path: Path, keep_sigint: None
) -> None:
    """Without a logger too (--trainer.logger=false): the records go to the default_root_dir, where the
    checkpoints go."""
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from detlit.model.module import NonFiniteLossError
    from detlit.training.callbacks import RunRecord

    settings: dict[str, Any] = {
        "max_epochs": 3,
        "limit_train_batches": 1,
        "limit_val_batches": 0,
        "log_every_n_steps": 1,
    }
    callbacks: list[Any] = [RunRecord(), ModelCheckpoint(save_top_k=0, save_last=True)]
    if how == "max_steps":
        settings["max_steps"] = 2
        settings["limit_train_batches"] = 2
    elif how == "early_stopping":
        callbacks.append(EarlyStopping("train/loss", stopping_threshold=1e9, check_on_train_epoch_end=True))
    elif how == "max_time":
        settings["max_time"] = {"seconds": 0}
    else:
        error = {
            "Ctrl-C": KeyboardInterrupt(),
            "SIGTERM": SIGTERMException(),
            "error": RuntimeError("boom"),
            "diverged": NonFiniteLossError("loss_cls is nan at step 1"),
        }[how]
        callbacks.append(Raise(error).callback())
    trainer = quiet_trainer(default_root_dir=str(tmp_path), enable_checkpointing=True, callbacks=callbacks, **settings)
    fit = lambda: trainer.fit(tiny_module(), datamodule=tiny_datamodule(sample_dir))  # noqa: E731
    if how == "Ctrl-C":
        with pytest.raises(SystemExit):  # Lightning's answer to Ctrl-C, after on_exception
            fit()
    elif how in ("SIGTERM", "error", "diverged"):
        with pytest.raises((SIGTERMException, RuntimeError, NonFiniteLossError)):
            fit()
    else:
        fit()
    record = read_record(RunFolder(tmp_path))
    assert (record["stopped_by"], record["status"]) == (stopped_by, status)
    expected_error = {"error": "RuntimeError: boom", "diverged": "NonFiniteLossError: loss_cls is nan at step 1"}
    assert record["error"] == expected_error.get(how)
    assert record["logger"] is None and record["sessions"][0]["ended"] is not None
    steps = {"max_steps": 2, "max_time": 0}.get(how, 1)  # no time at all: the fit trains nothing
    assert record["schedule"]["done"]["steps"] == steps
    if steps and status == "finished":
        assert sorted(os.listdir(tmp_path / "checkpoints")) == ["last.ckpt"]  # where they always went
        assert record["checkpoints"]["last"] == "checkpoints/last.ckpt"
        assert read_metrics(RunFolder(tmp_path)).series["train/loss"]  # recorded without a logger


def test_the_report_of_a_folder_with_crafted_records_names_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run folder from someone else: a record nested 30,000 deep and a metrics file of 64 MiB and
    one byte (sparse) are each one note in the report, which is still written."""
    from detlit import report

    run = RunFolder(tmp_path / "runs" / "x" / "version_0")
    run.path.mkdir(parents=True)
    run.record.write_text("[" * 30000 + "]" * 30000)
    with run.metrics.open("wb") as handle:
        handle.truncate(MAX_METRICS_BYTES + 1)
    with pytest.raises(SystemExit) as stopped:
        report.main(["--run", str(run.path), "--max-images", "0"])
    assert stopped.value.code == 0, capsys.readouterr().err
    text = (run.path / "report.md").read_text()
    assert f"{run.record} is not a detlit run record (nests or holds 30000 arrays and objects, more than" in text
    assert (
        f"{run.metrics} is 67,108,865 bytes, more than the 67,108,864 bytes detlit reads of it; a run folder holds "
        "the metrics file detlit writes: remove this one or train the run again." in text
    )
    assert "metrics.jsonl holds no values: no curves." in text
