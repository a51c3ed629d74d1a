"""Every number and name checked at start: the ranges of the config fields and command options,
the optimizer built once, the trainer's and checkpoint callbacks' fields, ``tune --storage``, and
paths that are pipes, devices, too long or not UTF-8 (the corpus of bad inputs runs the commands;
these tests hold each check to its boundaries)."""

from __future__ import annotations

import argparse
import errno
import inspect
import io
import math
import os
import re
import sqlite3
import sys
import tracemalloc
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from detlit.common import command, ranges
from detlit.common.paths import name_message, not_a_file, printable, special_kind, too_long
from detlit.errors import ConfigError

from .conftest import REPO, TINY_OVERRIDES

NUMERIC = re.compile(r"\b(int|float)\b")


def _numeric_arguments(cls: type) -> list[str]:
    """Constructor arguments whose annotation holds a number (``int``, ``float``, ``list[int]``, ...)."""
    parameters = inspect.signature(cls.__init__).parameters.values()  # type: ignore[misc]
    return [p.name for p in parameters if p.name != "self" and NUMERIC.search(str(p.annotation))]


def test_the_range_table_lists_every_numeric_argument_of_the_model_and_the_data() -> None:
    from detlit.data.datamodule import CocoDataModule
    from detlit.model.module import DetectionModule

    text = (REPO / "docs" / "errors.md").read_text()
    model, data = _numeric_arguments(DetectionModule), _numeric_arguments(CocoDataModule)
    assert {"num_classes", "min_size_test", "warmup_steps", "lr_gamma", "log_images"} <= set(model)
    assert {"batch_size", "num_workers", "max_size_train", "seed", "repeat_factor_threshold"} <= set(data)
    missing = [f"model.{n}" for n in model if f"`model.{n}`" not in text]
    missing += [f"data.{n}" for n in data if f"`data.{n}`" not in text]
    assert not missing, f"docs/errors.md's table of ranges does not list {missing}"


# --- the range vocabulary ----------------------------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), "0.5", True, None])
def test_a_number_is_finite_and_a_number(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"^x\.y is .*; use a number from 0 to 1 \(finite: not NaN or infinity\)$"):
        ranges.real("x.y", value, 0.0, 1.0)


def test_ranges_hold_at_their_bounds() -> None:
    assert ranges.real("x", 0.0, 0.0, 1.0) == 0.0 and ranges.real("x", 1, 0.0, 1.0) == 1.0
    with pytest.raises(ConfigError, match=r"x is 0\.0; use a number above 0 and at most 1$"):
        ranges.real("x", 0.0, 0.0, 1.0, above=True)
    assert ranges.whole("n", -1, -1) == -1
    for bad in (-2, 1.0, True, "3"):
        with pytest.raises(ConfigError, match=r"^n is .*; use a whole number of -1 or more$"):
            ranges.whole("n", bad, -1)
    with pytest.raises(ConfigError, match=r"^s is 4294967296; use a whole number from 0 to 4294967295$"):
        ranges.whole("s", ranges.MAX_SEED + 1, 0, ranges.MAX_SEED)


def test_image_sizes_reach_their_caps_and_stay_below_the_limit() -> None:
    ranges.check_image_sizes("data.", [128, 192], 192, 128, 128)  # a cap equal to the largest size is fine
    cases = [
        (([128, 256], 192, 128, 192), r"data\.max_size_train is 192, below data\.min_size_train's 256"),
        (([128], 192, 256, 192), r"data\.max_size_test is 192, below data\.min_size_test's 256"),
        (([128], 192, 60000, 60000), r"data\.min_size_test is 60000, more than 4096 pixels"),
        (([128], 192, 128.0, 192), r"data\.min_size_test is 128\.0; image sizes are whole numbers"),
        (([], 192, 128, 192), r"data\.min_size_train is empty"),
        (("128", 192, 128, 192), r"data\.min_size_train is '128'; give one or more image sizes"),
    ]
    for sizes, sentence in cases:
        with pytest.raises(ConfigError, match=sentence):
            ranges.check_image_sizes("data.", *sizes)


# --- the model and the data module --------------------------------------------------------------


def _hparams(**changed: Any) -> dict[str, Any]:
    from detlit.model.module import DetectionModule

    defaults = {
        name: p.default for name, p in inspect.signature(DetectionModule.__init__).parameters.items() if name != "self"
    }
    defaults.pop("optimizer")
    return {**defaults, "overrides": TINY_OVERRIDES, **changed}


@pytest.mark.parametrize(
    ("changed", "sentence"),
    [
        ({"num_classes": 0}, r"model\.num_classes is 0; use 1 to 20000 classes"),
        ({"num_classes": 3, "class_names": ["a", "b"]}, r"num_classes=3 but 2 class names/ids"),
        ({"num_classes": 2, "category_ids": [5, 5]}, r"holds an id twice"),
        ({"freeze_at": 6}, r"model\.freeze_at is 6"),
        ({"min_size_test": 60000, "max_size_test": 60000}, r"model\.min_size_test is 60000, more than 4096"),
        ({"max_size_train": 600}, r"model\.max_size_train is 600, below model\.min_size_train's 800"),
        ({"lr_schedule": "linear"}, r"model\.lr_schedule is 'linear'; use one of cosine, multistep, constant"),
        ({"warmup_steps": -1}, r"model\.warmup_steps is -1"),
        ({"warmup_factor": float("nan")}, r"model\.warmup_factor is nan"),
        ({"warmup_factor": 2.0}, r"model\.warmup_factor is 2\.0"),
        ({"lr_milestones": [0.5, 1.5]}, r"model\.lr_milestones holds 1\.5"),
        ({"lr_gamma": 0.0}, r"model\.lr_gamma is 0\.0"),
        ({"scale_lr_to_batch": 0}, r"model\.scale_lr_to_batch is 0"),
        ({"log_images": 65}, r"model\.log_images is 65; use 0 \(no drawings\) to 64"),
        ({"on_nonfinite_loss": "ignore"}, r"model\.on_nonfinite_loss is 'ignore'"),
    ],
)
def test_every_model_argument_is_checked(changed: dict[str, Any], sentence: str) -> None:
    from detlit.model.module import check_hparams

    with pytest.raises(ConfigError, match=sentence):
        check_hparams(_hparams(**changed))


def test_good_model_arguments_pass() -> None:
    from detlit.model.module import check_hparams

    check_hparams(_hparams())
    check_hparams(_hparams(warmup_factor=0.0, lr_milestones=[], lr_gamma=1.0, freeze_at=None, log_images=0))


def test_a_crafted_class_count_is_refused_before_anything_is_made_for_it() -> None:
    from detlit.model.module import DetectionModule

    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match=r"model\.num_classes is 1000000000"):
            DetectionModule(num_classes=10**9, overrides=TINY_OVERRIDES)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, f"{peak / 2**20:.0f} MB allocated"  # a billion class names would take 60 GB


def test_a_checkpoint_hyper_parameter_out_of_range_is_one_sentence(tmp_path: Path) -> None:
    from detlit.errors import WeightsError
    from detlit.inference.predictor import Predictor

    path = tmp_path / "crafted.ckpt"
    hparams = _hparams(num_classes=2, class_names=["a", "b"], category_ids=[1, 2], min_size_test=60000)
    torch.save({"hyper_parameters": hparams, "state_dict": {}, "pytorch-lightning_version": "2.6.0"}, path)
    with pytest.raises(WeightsError, match=r"crafted\.ckpt holds a setting that cannot work \(model\.min_size_test"):
        Predictor.from_checkpoint(path)


@pytest.mark.parametrize(
    ("changed", "sentence"),
    [
        ({"batch_size": 2000}, r"data\.batch_size is 2000; use 1 or more images per batch \(at most 1024\)"),
        ({"num_workers": 10_000}, r"data\.num_workers is 10000"),
        ({"seed": -1}, r"data\.seed is -1; use a whole number from 0 to 4294967295"),
        ({"repeat_factor_threshold": float("nan")}, r"data\.repeat_factor_threshold is nan"),
        ({"repeat_factor_threshold": 0.0}, r"data\.repeat_factor_threshold is 0\.0"),
        ({"image_format": "RGBA"}, r"data\.image_format is 'RGBA'; use BGR"),
        ({"max_size_test": 100}, r"data\.max_size_test is 100, below data\.min_size_test's 128"),
    ],
)
def test_every_data_argument_is_checked_before_the_json_is_read(
    changed: dict[str, Any], sentence: str, tmp_path: Path
) -> None:
    from detlit.data.datamodule import CocoDataModule

    missing = str(tmp_path / "never-read.json")  # the check comes first: the missing json is not reached
    sizes = {"min_size_train": [128], "max_size_train": 192, "min_size_test": 128, "max_size_test": 192}
    with pytest.raises(ConfigError, match=sentence):
        CocoDataModule(missing, str(tmp_path), **{**sizes, **changed})


# --- the trainer, the checkpoint callbacks, the optimizer ---------------------------------------


def _trainer(**fields: Any) -> dict[str, Any]:
    return {"trainer": fields, "checkpoint": {}, "last_checkpoint": {}}


@pytest.mark.parametrize(
    "fields",
    [
        {"max_epochs": -1, "max_steps": -1, "num_sanity_val_steps": -1},
        {"min_epochs": 2, "max_epochs": 2, "min_steps": 5, "max_steps": -1},
        {"limit_train_batches": 0, "limit_val_batches": 0.0, "limit_test_batches": 1.0, "overfit_batches": 3},
        {"val_check_interval": 0.25, "check_val_every_n_epoch": None, "gradient_clip_val": 0},
        {"val_check_interval": "00:00:10:00", "max_time": {"hours": 1}},
        {"val_check_interval": 200, "max_time": timedelta(minutes=5)},
    ],
)
def test_trainer_settings_in_range_pass(fields: dict[str, Any]) -> None:
    from detlit.training.settings import check_fit_settings

    check_fit_settings(_trainer(**fields))


@pytest.mark.parametrize(
    ("fields", "sentence"),
    [
        ({"max_epochs": -2}, r"trainer\.max_epochs is -2; use 1 or more epochs, or -1 for no limit"),
        ({"max_steps": -5}, r"trainer\.max_steps is -5"),
        ({"accumulate_grad_batches": 0}, r"trainer\.accumulate_grad_batches is 0"),
        ({"gradient_clip_val": float("nan")}, r"trainer\.gradient_clip_val is nan"),
        ({"check_val_every_n_epoch": 0}, r"trainer\.check_val_every_n_epoch is 0"),
        ({"val_check_interval": 0.0}, r"trainer\.val_check_interval is 0\.0"),
        ({"val_check_interval": 1.5}, r"trainer\.val_check_interval is 1\.5"),
        ({"limit_train_batches": -1}, r"trainer\.limit_train_batches is -1"),
        ({"log_every_n_steps": 0}, r"trainer\.log_every_n_steps is 0"),
        ({"num_sanity_val_steps": -2}, r"trainer\.num_sanity_val_steps is -2"),
        ({"max_time": "12:00"}, r"trainer\.max_time is '12:00', not a duration"),
        ({"max_time": {"hours": -1}}, r"trainer\.max_time is \{'hours': -1\}, not a duration"),
        ({"max_time": "00:00:00:00"}, r"not a duration above zero"),
        ({"min_steps": 10, "max_steps": 5}, r"trainer\.min_steps is 10, above trainer\.max_steps 5"),
    ],
)
def test_trainer_settings_out_of_range_are_one_sentence(fields: dict[str, Any], sentence: str) -> None:
    from detlit.training.settings import check_fit_settings

    with pytest.raises(ConfigError, match=sentence):
        check_fit_settings(_trainer(**fields))


def test_the_seed_and_the_range_test_steps_are_checked() -> None:
    from detlit.training.settings import check_fit_settings

    for seed in (True, False, 0, 2**32 - 1):
        check_fit_settings({**_trainer(), "seed_everything": seed})
    with pytest.raises(ConfigError, match=r"^seed_everything is -1; use true, false or a seed from 0 to 4294967295$"):
        check_fit_settings({**_trainer(), "seed_everything": -1})
    with pytest.raises(ConfigError, match=r"^tune_lr_steps is 0; use 1 or more steps"):
        check_fit_settings({**_trainer(), "tune_lr_steps": 0})


def test_checkpoint_callback_settings_are_checked_in_both_callbacks() -> None:
    from detlit.training.settings import check_fit_settings

    for section, field, value in (("checkpoint", "save_top_k", -2), ("last_checkpoint", "every_n_train_steps", -1)):
        config = {**_trainer(), section: {field: value}}
        with pytest.raises(ConfigError, match=rf"^{section}\.{field} is {value}; "):
            check_fit_settings(config)


def _params() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.zeros(3))]


@pytest.mark.parametrize(
    ("factory", "sentence"),
    [
        (partial(torch.optim.SGD, lr=-0.1), r"init_args\.lr: SGD refuses it \(Invalid learning rate: -0\.1\); give a"),
        (partial(torch.optim.SGD, lr=0.1, momentum=-1), r"init_args\.momentum: SGD refuses it"),
        (partial(torch.optim.AdamW, weight_decay=-1), r"init_args\.weight_decay: AdamW refuses it"),
        (partial(torch.optim.AdamW, betas=(1.5, 0.9)), r"init_args\.betas: AdamW refuses it"),
        (partial(torch.optim.Adam, eps=-1.0), r"init_args\.eps: Adam refuses it"),
        (partial(torch.optim.SGD, lr=0.1, momentum=math.nan), r"init_args\.momentum is nan; .* \(not NaN"),
        (partial(torch.optim.AdamW, lr=math.inf), r"init_args\.lr is inf"),
        (partial(torch.optim.SGD, lr=0.0), r"init_args\.lr is 0\.0: nothing would be learned"),
        (lambda params: torch.optim.SGD(params, lr=-1), r"init_args\.lr: <lambda> refuses it"),
    ],
)
def test_the_optimizer_is_built_once_and_its_refusal_names_the_argument(factory: Any, sentence: str) -> None:
    from detlit.training.settings import build_optimizer

    with pytest.raises(ConfigError, match=sentence):
        build_optimizer(factory, _params())


def test_a_good_optimizer_is_returned() -> None:
    from detlit.training.settings import build_optimizer

    optimizer = build_optimizer(partial(torch.optim.SGD, lr=0.02, momentum=0.9), _params())
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["lr"] == 0.02


def test_lightning_refusals_become_one_line() -> None:
    from detlit.training.cli import lightning_refusal

    said = lightning_refusal(MisconfigurationException("`max_epochs` must be -1.\n   You passed in -2."))
    assert said == (
        "Lightning refuses the config (`max_epochs` must be -1. You passed in -2); fix that setting "
        "(--print_config shows every one)"
    )


# --- command options -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "text", "said"),
    [
        (command.seed, "-1", "-1 is below 0; give 0 or more"),
        (command.seed, "4294967296", "4294967296 is above 4294967295 (seeds are 32-bit); give 4294967295 or less"),
        (command.batch_size, "1025", "1025 is above 1024"),
        (command.seconds, "nan", "nan is not a time above 0 seconds"),
        (command.seconds, "inf", "inf is not a time above 0 seconds"),
        (command.seconds, "0", "0.0 is not a time above 0 seconds"),
        (command.fraction, "nan", "nan is not between 0 and 1"),
        (command.whole_number(32, 1024, small="too small to show anything"), "3", "3 is too small to show anything"),
        (command.whole_number(0), "1e3", "'1e3' is not a whole number"),
    ],
)
def test_command_option_types(kind: Any, text: str, said: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as refused:
        kind(text)
    assert str(refused.value).startswith(said)


def test_command_option_types_take_their_bounds() -> None:
    assert command.seed("0") == 0 and command.seed("4294967295") == 2**32 - 1
    assert command.batch_size("1024") == 1024 and command.seconds("0.5") == 0.5


def test_every_numeric_option_of_every_command_has_a_checked_type() -> None:
    import importlib

    from detlit.__main__ import COMMANDS

    plain = (int, float)
    for name in COMMANDS:
        if name in ("fit", "validate", "test", "config", "serve"):  # fit: LightningCLI; serve: checked by itself
            continue
        parser = importlib.import_module(f"detlit.{name}").build_parser()
        for action in parser._actions:
            assert action.type not in plain, f"{name} {action.option_strings}: a plain {action.type} takes nan or -1"


# --- paths and names -------------------------------------------------------------------------------


def test_what_is_there_is_named_as_it_is(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    (tmp_path / "file.json").write_text("{}")
    (tmp_path / "link.json").symlink_to(fifo)
    assert not_a_file(tmp_path / "file.json") is None
    assert not_a_file(fifo) == "is a named pipe (FIFO), not a regular file"
    assert not_a_file(tmp_path / "link.json") == "is a named pipe (FIFO), not a regular file"
    assert not_a_file(Path("/dev/zero")) == "is a character device, not a regular file"
    assert not_a_file(tmp_path) == "is a folder, not a file"
    assert not_a_file(tmp_path / "missing.json") == "does not exist"
    assert special_kind(tmp_path / "file.json") is None and special_kind(tmp_path / "missing") is None


def test_a_name_too_long_is_one_sentence_wherever_it_is_met(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    long = tmp_path / ("x" * 300) / "out.json"
    assert too_long(long) == (
        f"the name {'x' * 40}...{'x' * 40} (300 bytes) in {tmp_path} is longer than the filesystem allows "
        "(255 bytes per name)"
    )
    assert too_long(tmp_path / ("x" * 255)) is None
    with pytest.raises(SystemExit) as stopped, command.one_sentence():
        long.parent.mkdir()  # the real OSError of the filesystem
    assert stopped.value.code == 2
    assert capsys.readouterr().err == f"error: {name_message(OSError(errno.ENAMETOOLONG, 'x', str(long.parent)))}\n"
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path)
    with pytest.raises(ConfigError, match=r"^--out: the name x+\.\.\.x+ \(300 bytes\) in .*; choose a shorter name$"):
        command.refuse_long_names(parser, parser.parse_args(["--out", str(long)]))


def test_undecodable_bytes_print_as_escapes_on_any_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    name = os.fsdecode(b"/data/caf\xe9.json")  # a Latin-1 name: Python keeps the byte as a surrogate escape
    assert printable(name) == "/data/caf\\xe9.json"
    assert printable("lone \ud800") == "lone \\ud800"
    strict = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")  # no error handler: a surrogate would raise
    monkeypatch.setattr(sys, "stderr", strict)
    with pytest.raises(SystemExit), command.one_sentence():
        command.refuse_undecodable(["--json", name])
    strict.flush()
    said = strict.buffer.getvalue().decode()  # type: ignore[attr-defined]
    assert said == (
        "error: the argument /data/caf\\xe9.json holds bytes that are not UTF-8 text; rename that file or folder "
        "(detlit writes the names it is given into json, yaml and log files)\n"
    )


def test_a_config_that_is_a_pipe_is_refused_and_yaml_text_is_left_to_the_parser(tmp_path: Path) -> None:
    from detlit.training.cli import check_config_files

    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=r"--config .*config\.yaml is a named pipe \(FIFO\), not a regular file"):
        check_config_files(["--trainer.max_epochs=1", f"--config={fifo}"])
    with pytest.raises(ConfigError, match="character device"):
        check_config_files(["--config", "/dev/zero"])
    check_config_files(["--config", "{trainer: {max_epochs: 1}}", "--config", "x" * 300, "--config"])


# --- tune --storage --------------------------------------------------------------------------------


def test_tune_storage_is_opened_only_when_it_is_a_database(tmp_path: Path) -> None:
    from detlit.training.tune import check_storage

    database = tmp_path / "study.db"
    sqlite3.connect(database).execute("create table t (x int)").connection.close()
    (tmp_path / "empty.db").write_bytes(b"")
    assert check_storage(f"sqlite:///{database}") == database
    assert check_storage(f"sqlite:///{tmp_path / 'empty.db'}") == tmp_path / "empty.db"
    assert check_storage(f"sqlite:///{tmp_path / 'new' / 'study.db'}") == tmp_path / "new" / "study.db"
    (tmp_path / "notes.txt").write_text("SQLite format 2, not quite\n")
    refused = {
        "runs/tune.db": "is not a database URL",
        "nosuchdb://h/db": "knows no database 'nosuchdb'",
        "sqlite+nosuch:///x.db": "knows no driver 'nosuch' for sqlite",
        "mssql+pymssql://u@h/db": "needs the Python driver pymssql",
        "sqlite://": "database in memory",
        f"sqlite:///{tmp_path / 'notes.txt'}": "notes.txt is not an SQLite database",
        f"sqlite:///{tmp_path}": "is a folder, not a file",
        f"sqlite:///{tmp_path / 'notes.txt' / 'study.db'}": "notes.txt is a file, not a folder",
    }
    for storage, sentence in refused.items():
        with pytest.raises(ConfigError, match=re.escape(sentence)):
            check_storage(storage)


def test_the_model_is_counted_before_it_is_built() -> None:
    from detlit.model.config import build_d2_config
    from detlit.model.module import model_size

    from .conftest import TINY_OVERRIDES, tiny_module

    module = tiny_module()
    real = sum(t.numel() for t in (*module.model.parameters(), *module.model.buffers()))
    assert model_size(module.cfg) == real
    wide = build_d2_config(overrides={**TINY_OVERRIDES, "MODEL.ROI_BOX_HEAD.FC_DIM": 10**6}, num_classes=3)
    assert model_size(wide) > 10**11  # counted on the meta device: nothing of it is allocated
    with pytest.raises(ConfigError, match=r"makes a model of [\d,]+ parameters .* more than the 2,000,000,000"):
        tiny_module(overrides={**TINY_OVERRIDES, "MODEL.ROI_BOX_HEAD.FC_DIM": 10**6})
