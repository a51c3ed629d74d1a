"""``python -m detlit.tune``: a real 3-trial study, and search spaces that are wrong."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml

from detlit.errors import ConfigError
from detlit.training.tune import ReportToStudy, load_search, make_pruner, short_names, short_value, with_params

from .conftest import REPO, TINY_OVERRIDES, TINY_SIZES


def _tiny_config(sample_dir: Path, path: Path) -> Path:
    config = yaml.safe_load((REPO / "configs" / "sample_cpu.yaml").read_text())
    config["trainer"].update(max_epochs=1, limit_train_batches=2, limit_val_batches=2, enable_progress_bar=False)
    config["model"]["overrides"] = dict(TINY_OVERRIDES)
    config["data"].update(
        train_json=str(sample_dir / "train.json"),
        train_images=str(sample_dir / "train"),
        val_json=str(sample_dir / "val.json"),
        val_images=str(sample_dir / "val"),
        batch_size=2,
        **TINY_SIZES,
    )
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_three_trials(sample_dir: Path, tmp_path: Path) -> None:
    config = _tiny_config(sample_dir, tmp_path / "tiny.yaml")
    search = tmp_path / "search.yaml"
    search.write_text(
        yaml.safe_dump(
            {
                "params": {
                    "model.optimizer.init_args.lr": {"type": "float", "low": 0.001, "high": 0.02, "log": True},
                    "data.augment": {"type": "categorical", "choices": ["none", "flip"]},
                    "model.overrides.MODEL.ANCHOR_GENERATOR.SIZES": {
                        "type": "categorical",
                        "choices": [[[32], [64], [128], [256], [512]], [[16], [32], [64], [128], [256]]],
                    },
                }
            }
        )
    )
    storage = f"sqlite:///{tmp_path / 'tune.db'}"
    command = [sys.executable, "-m", "detlit.tune", "--config", str(config), "--search", str(search)]
    command += ["--trials", "3", "--storage", storage, "--out", str(tmp_path / "out")]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="detlit", storage=storage)
    states = [t.state for t in study.trials]
    assert len(states) == 3
    assert all(s in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for s in states)
    for number in range(3):
        assert list((tmp_path / "out" / f"trial_{number:03d}").glob("events.out.tfevents.*"))
        trial = yaml.safe_load((tmp_path / "out" / f"trial_{number:03d}" / "trial.yaml").read_text())
        assert trial["trainer"]["check_val_every_n_epoch"] == 1  # pruned on a validation per epoch
    best = tmp_path / "out" / "best.yaml"
    assert best.is_file() and (tmp_path / "out" / "trials.csv").is_file()
    # the base config's logger, not a trial's: a run of the best config logs where the user's config says
    assert yaml.safe_load(best.read_text())["trainer"]["logger"]["init_args"]["name"] == "sample"
    printed = subprocess.run(
        [sys.executable, "-m", "detlit.fit", "--config", str(best), "--print_config"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert printed.returncode == 0, printed.stderr[-3000:]
    assert str(study.best_params["model.optimizer.init_args.lr"])[:6] in printed.stdout


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("params: {}", "needs a non-empty 'params'"),
        ("params: {model.lr: {low: 1, high: 2}}", "needs a mapping with a 'type'"),
        ("params: {model.lr: {type: float, low: 2, high: 1}}", "low=2 not below high=1"),
        ("params: {model.lr: {type: float, low: 0, high: 1, log: true}}", "low must be above 0"),
        ("params: {model.lr: {type: gaussian}}", "has type 'gaussian'"),
        ("params: {model.lr: {type: int, low: 1}}", "needs 'high'"),
        ("params: {lr: {type: float, low: 0.1, high: 1}}", "must start with model., data. or trainer."),
        ("params: {data.augment: {type: categorical, choices: []}}", "non-empty list of 'choices'"),
        ("params: [1, 2", "is not valid YAML"),
        ("params: {model.lr: {type: float, low: 0.1, high: 1}}\nsampler: grid", "unknown key(s) ['sampler']"),
    ],
)
def test_search_space_errors_are_one_sentence(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "search.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        load_search(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_sample_search_space_loads_and_applies() -> None:
    space = load_search(REPO / "configs" / "search_sample.yaml")
    assert space.monitor == "val/map" and len(space.params) == 6
    base = yaml.safe_load((REPO / "configs" / "sample_cpu.yaml").read_text())
    config = with_params(
        base,
        {
            "model.optimizer.init_args.lr": 0.01,
            "data.min_size_train": "[224, 256, 288]",
            "model.overrides.MODEL.ANCHOR_GENERATOR.SIZES": "[[16], [32], [64], [128], [256]]",
        },
    )
    assert config["model"]["optimizer"]["init_args"]["lr"] == 0.01
    assert config["data"]["min_size_train"] == [224, 256, 288]
    assert config["model"]["overrides"]["MODEL.ANCHOR_GENERATOR.SIZES"][0] == [16]
    assert base["model"]["optimizer"]["init_args"]["lr"] == 0.02  # the base config is not modified


def test_every_anchor_choice_of_the_sample_search_fits_the_demo_model() -> None:
    from detlit.model.config import flatten_overrides
    from detlit.model.module import DetectionModule

    base = yaml.safe_load((REPO / "configs" / "sample_cpu.yaml").read_text())
    key = "model.overrides.MODEL.ANCHOR_GENERATOR.SIZES"
    for choice in load_search(REPO / "configs" / "search_sample.yaml").params[key].choices:  # type: ignore[attr-defined]
        model = with_params(base, {key: choice})["model"]
        module = DetectionModule(
            num_classes=3,
            class_names=["a", "b", "c"],
            category_ids=[1, 2, 3],
            config_name=model["config_name"],
            overrides=flatten_overrides(model["overrides"]),
            freeze_at=0,
        )
        assert [list(sizes) for sizes in module.cfg.MODEL.ANCHOR_GENERATOR.SIZES] == yaml.safe_load(choice)


def test_trial_table_cells_are_short() -> None:
    names = ["model.optimizer.init_args.lr", "model.warmup_steps", "data.augment", "a.size", "b.size"]
    assert short_names(names) == ["lr", "warmup_steps", "augment", "a.size", "b.size"]
    assert short_value(0.018342298322747464) == "0.01834"
    assert short_value([[16], [32]]) == "[[16],[32]]" and short_value("flip") == "flip" and short_value(184) == "184"


def _validations(callback: ReportToStudy, values: list[float]) -> SimpleNamespace:
    """Run the callback after one validation per value, as a trial's Lightning run would; the stand-in
    trainer holds what the callback reads and sets."""
    import torch

    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, should_stop=False, callback_metrics={})
    for epoch, value in enumerate(values):
        trainer.current_epoch, trainer.callback_metrics = epoch, {"val/map": torch.tensor(value)}
        callback.on_validation_end(trainer, None)  # type: ignore[arg-type]
        if trainer.should_stop:
            break
    callback.on_fit_end(trainer, None)  # type: ignore[arg-type]
    return trainer


def test_a_trials_run_reports_to_its_trial_by_number_and_prunes_with_the_searchs_pruner(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    other = optuna.create_study(study_name="other", storage=storage)
    for _ in range(2):  # trials of another study first: the storage's trial ids are not the trial numbers
        other.tell(other.ask(), 1.0)
    study = optuna.create_study(study_name="detlit", storage=storage, direction="maximize")

    def run(values: list[float]) -> tuple[optuna.trial.Trial, SimpleNamespace, ReportToStudy]:
        trial = study.ask()
        folder = tmp_path / f"trial_{trial.number}"
        callback = ReportToStudy(storage, "detlit", trial.number, "val/map", str(folder), pruner="median")
        return trial, _validations(callback, values), callback

    for _ in range(2):
        trial, trainer, _ = run([0.75, 0.75])
        assert not trainer.should_stop
        study.tell(trial, 0.75)
    trial, trainer, callback = run([0.25, 0.25, 0.25])
    assert trial.number == 2 and study.trials[2].intermediate_values == {0: 0.25, 1: 0.25}
    assert other.trials[0].intermediate_values == {} and study.trials[0].intermediate_values == {0: 0.75, 1: 0.75}
    # the search's median pruner (2 trials to start from, no pruning at the first validation), not
    # Optuna's default one (5 trials to start from), which a loaded study would have
    assert trainer.should_stop and callback.pruned and trainer.current_epoch == 1
    outcome = json.loads((tmp_path / "trial_2" / "tune_result.json").read_text())
    assert outcome == {"values": [0.25, 0.25], "pruned": True}


def test_the_pruners_by_name() -> None:
    median = make_pruner("median")
    assert isinstance(median, optuna.pruners.MedianPruner)
    assert isinstance(make_pruner("halving"), optuna.pruners.SuccessiveHalvingPruner)
    with pytest.raises(ConfigError, match=re.escape("unknown pruner 'hyperband'; use median or halving")):
        make_pruner("hyperband")
