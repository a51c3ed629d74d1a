"""Hyper-parameter search with Optuna over ``python -m detlit.fit`` runs (``python -m detlit.tune``).

Every trial is a normal detlit run (its own folder with TensorBoard logs, run.log, checkpoints)
started as a subprocess with the trial's config, so a trial may use several devices (DDP) and a
crash costs one trial, not the study. A callback in the run reports the monitored validation
metric to the study after every validation; the pruner (median or successive halving) stops
unpromising trials early. The study lives in the storage (SQLite), so an interrupted search
continues where it stopped when run again with the same ``--storage`` and ``--study``. At the end:
a table of the trials, the parameter importances, and the best trial's config as a YAML ready
for ``python -m detlit.fit --config``.

The search space is a YAML file::

    monitor: val/map          # optional, default val/map
    direction: maximize       # optional
    params:                   # dotted keys of the fit config
      model.optimizer.init_args.lr: {type: float, low: 0.001, high: 0.05, log: true}
      model.warmup_steps: {type: int, low: 10, high: 200}
      data.augment: {type: categorical, choices: [flip, default, strong]}
      model.overrides.MODEL.ANCHOR_GENERATOR.SIZES:
        type: categorical
        choices: [[[32], [64], [128], [256], [512]], [[16], [32], [64], [128], [256]]]
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import yaml
from lightning.pytorch import Callback, LightningModule, Trainer
from rich.table import Table
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from detlit.common.console import console as rich_console
from detlit.common.paths import not_a_file
from detlit.common.safe_yaml import read_yaml
from detlit.errors import ConfigError

log = logging.getLogger(__name__)

RESULT_FILE = "tune_result.json"
OVERRIDES_PREFIX = "model.overrides."


# --- the search space ----------------------------------------------------------------------


@dataclass(frozen=True)
class SearchSpace:
    params: dict[str, optuna.distributions.BaseDistribution]
    monitor: str = "val/map"
    direction: str = "maximize"


def _distribution(path: Path, key: str, spec: Any) -> optuna.distributions.BaseDistribution:
    where = f"{path}: parameter '{key}'"
    if not isinstance(spec, dict) or "type" not in spec:
        raise ConfigError(f"{where} needs a mapping with a 'type' (float, int or categorical)")
    kind = spec["type"]
    try:
        if kind in ("float", "int"):
            low, high = spec["low"], spec["high"]
            if not low < high:
                raise ConfigError(f"{where} has low={low} not below high={high}; swap or fix them")
            if spec.get("log") and low <= 0:
                raise ConfigError(f"{where} is log-scaled, so low must be above 0, not {low}")
            if kind == "float":
                return optuna.distributions.FloatDistribution(float(low), float(high), log=bool(spec.get("log")))
            return optuna.distributions.IntDistribution(int(low), int(high), log=bool(spec.get("log")))
        if kind == "categorical":
            choices = spec["choices"]
            if not isinstance(choices, list) or not choices:
                raise ConfigError(f"{where} needs a non-empty list of 'choices'")
            # Optuna stores choices as str/int/float/bool/None: lists are kept as JSON strings.
            return optuna.distributions.CategoricalDistribution(
                [json.dumps(c) if isinstance(c, (list, dict)) else c for c in choices]
            )
    except KeyError as err:
        raise ConfigError(f"{where} of type {kind} needs '{err.args[0]}'") from err
    raise ConfigError(f"{where} has type '{kind}'; use float, int or categorical")


def load_search(path: Path) -> SearchSpace:
    """Read and validate a search-space YAML; every mistake is one sentence naming the file."""
    if not path.is_file():
        raise ConfigError(f"search space {path} does not exist; pass a YAML file with a 'params' mapping")
    raw = read_yaml(path, f"search space {path}")
    if not isinstance(raw, dict) or not isinstance(raw.get("params"), dict) or not raw["params"]:
        raise ConfigError(f"search space {path} needs a non-empty 'params' mapping of dotted config keys")
    unknown = set(raw) - {"params", "monitor", "direction"}
    if unknown:
        raise ConfigError(f"search space {path} has unknown key(s) {sorted(unknown)}; use params, monitor, direction")
    direction = raw.get("direction", "maximize")
    if direction not in ("maximize", "minimize"):
        raise ConfigError(f"search space {path}: direction must be maximize or minimize, not {direction!r}")
    for key in raw["params"]:
        if not isinstance(key, str) or key.split(".")[0] not in ("model", "data", "trainer"):
            raise ConfigError(f"search space {path}: parameter '{key}' must start with model., data. or trainer.")
    params = {key: _distribution(path, key, spec) for key, spec in raw["params"].items()}
    return SearchSpace(params, str(raw.get("monitor", "val/map")), direction)


def decode(value: Any) -> Any:
    """A sampled value as the config needs it (lists were stored as JSON strings)."""
    if isinstance(value, str) and value[:1] in ("[", "{"):
        return json.loads(value)
    return value


def with_params(config: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A copy of a fit config (as loaded from YAML) with dotted keys set to the trial's values."""
    out = copy.deepcopy(config)
    for key, value in params.items():
        value = decode(value)
        if key.startswith(OVERRIDES_PREFIX):
            out.setdefault("model", {}).setdefault("overrides", {})[key[len(OVERRIDES_PREFIX) :]] = value
            continue
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.get(part)
            if part == "init_args" and not isinstance(child, dict):
                child = node.setdefault("init_args", {})
            if not isinstance(child, dict):
                child = node[part] = {} if child is None else child
                if not isinstance(child, dict):
                    raise ConfigError(f"cannot set '{key}': '{part}' is {child!r} in the config, not a mapping")
            node = child
        node[leaf] = value
    return out


# --- the callback inside each trial's run --------------------------------------------------


class ReportToStudy(Callback):
    """Reports the monitored metric to an Optuna trial after each validation and stops the run
    when the pruner says so; writes the trial's outcome to ``tune_result.json`` in the run folder.

    Args:
        storage: the study's storage URL.
        study_name: the study's name.
        trial_number: the trial's number in the study (Optuna's ``trial.number``).
        monitor: the logged metric to report.
        result_dir: where to write ``tune_result.json``.
        pruner: the study's pruner, ``median`` or ``halving``: Optuna keeps no pruner in the storage,
            so the run's process builds the one the search chose.
    """

    def __init__(
        self, storage: str, study_name: str, trial_number: int, monitor: str, result_dir: str, pruner: str = "median"
    ):
        self.storage, self.study_name, self.trial_number = storage, study_name, trial_number
        self.monitor, self.result_dir, self.pruner = monitor, Path(result_dir), pruner
        self.values: list[float] = []
        self.pruned = False

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        if self.monitor not in trainer.callback_metrics:
            raise ConfigError(f"the monitored metric '{self.monitor}' is not logged; set 'monitor' in the search space")
        value = float(trainer.callback_metrics[self.monitor])
        self.values.append(value)
        trial = self.trial()
        trial.report(value, step=trainer.current_epoch)
        if trial.should_prune():
            self.pruned = True
            trainer.should_stop = True
            log.info("trial pruned after epoch %d (%s=%.4f)", trainer.current_epoch, self.monitor, value)

    def trial(self) -> optuna.trial.Trial:
        """The running trial, found by its number through the storage's public API."""
        storage = optuna.storages.RDBStorage(self.storage)
        study = optuna.load_study(study_name=self.study_name, storage=storage, pruner=make_pruner(self.pruner))
        study_id = storage.get_study_id_from_name(self.study_name)
        return optuna.trial.Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, self.trial_number))

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            self.result_dir.mkdir(parents=True, exist_ok=True)
            outcome = {"values": self.values, "pruned": self.pruned}
            (self.result_dir / RESULT_FILE).write_text(json.dumps(outcome))


# --- the search ----------------------------------------------------------------------------


def objective_value(values: list[float], direction: str) -> float:
    """The trial's result: its best validation value."""
    return max(values) if direction == "maximize" else min(values)


def run_trial(
    trial: optuna.trial.Trial, base: dict[str, Any], space: SearchSpace, options: StudyOptions, folder: Path
) -> tuple[optuna.trial.TrialState, float | None]:
    """One detlit run in a subprocess; its outcome as a trial state and value."""
    config = with_params(base, trial.params)
    logger: dict[str, Any] = {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": str(folder.parent), "name": folder.name, "version": ""},
    }
    config.setdefault("trainer", {})["logger"] = logger
    # Trials are pruned on their validations: one after every epoch, whatever the base config says.
    config["trainer"]["check_val_every_n_epoch"] = 1
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "trial.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    callback = {
        "class_path": "detlit.training.tune.ReportToStudy",
        "init_args": {
            "storage": options.storage,
            "study_name": options.study,
            "trial_number": trial.number,
            "monitor": space.monitor,
            "result_dir": str(folder),
            "pruner": options.pruner,
        },
    }
    command = [sys.executable, "-m", "detlit.fit", "--config", str(folder / "trial.yaml")]
    command += ["--trainer.callbacks+=" + json.dumps(callback), *options.fit_args]
    log.info("trial %d: %s", trial.number, ", ".join(f"{k}={decode(v)}" for k, v in trial.params.items()))
    with (folder / "trial.log").open("w") as output:
        code = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, env=os.environ.copy()).returncode
    result_file = folder / RESULT_FILE
    if code != 0 or not result_file.is_file():
        tail = (folder / "trial.log").read_text().strip().splitlines()[-1:] or ["no output"]
        log.warning("trial %d failed (exit %d): %s (log: %s)", trial.number, code, tail[0], folder / "trial.log")
        return optuna.trial.TrialState.FAIL, None
    outcome = json.loads(result_file.read_text())
    if not outcome["values"]:
        return optuna.trial.TrialState.FAIL, None
    if outcome["pruned"]:
        return optuna.trial.TrialState.PRUNED, None
    return optuna.trial.TrialState.COMPLETE, objective_value(outcome["values"], space.direction)


SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


def check_storage(storage: str) -> Path | None:
    """Refuse, before anything is written, a ``--storage`` Optuna could not open: not a database
    URL, a database SQLAlchemy does not know, a driver that is not installed, an SQLite database
    in memory (the trials run in their own processes and would not see it), or an SQLite file
    that is something else.

    Returns:
        The SQLite database file (it may not exist yet: Optuna creates it); None for a server.

    Raises:
        ConfigError: one sentence naming ``--storage`` and the fix.
    """
    named = f"--storage {storage}"
    try:
        url = make_url(storage)
    except ArgumentError as err:
        raise ConfigError(
            f"{named} is not a database URL; give one such as sqlite:///runs/tune.db, or leave --storage out "
            "(the study then lives in OUT/study.db)"
        ) from err
    try:
        dialect = url.get_dialect()
    except NoSuchModuleError as err:
        backend, _, driver = url.drivername.partition("+")
        what = f"driver '{driver}' for {backend}" if driver else f"database '{backend}'"
        raise ConfigError(
            f"{named}: SQLAlchemy knows no {what}; use sqlite:///PATH, postgresql://... or mysql://..."
        ) from err
    try:
        dialect.import_dbapi()
    except ImportError as err:
        raise ConfigError(
            f"{named} needs the Python driver {err.name or url.drivername}, which is not installed; install it "
            "(pip install ...) or use sqlite:///PATH"
        ) from err
    if url.get_backend_name() != "sqlite":
        return None
    if not url.database or url.database == ":memory:":
        raise ConfigError(
            f"{named} is a database in memory, which the trials (each in its own process) cannot share; "
            "give a file: sqlite:///PATH"
        )
    return _check_sqlite_file(named, Path(url.database))


def _check_sqlite_file(named: str, database: Path) -> Path:
    """An SQLite database file, or a path where one can be created."""
    for folder in database.parents:
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"{named}: {folder} is a file, not a folder; choose another path for the database")
    if not database.exists():
        return database
    problem = not_a_file(database)
    if problem is not None:
        raise ConfigError(f"{named}: {database} {problem}; give the path of an SQLite database, or of a new file")
    with database.open("rb") as handle:
        header = handle.read(len(SQLITE_HEADER))
    if header and header != SQLITE_HEADER:
        raise ConfigError(
            f"{named}: {database} is not an SQLite database (it holds other data); give the study.db of an "
            "earlier search, or a new file name"
        )
    return database


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    """The pruner ``--pruner`` names: ``median`` (after 2 trials, from the second validation) or ``halving``."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    raise ConfigError(f"unknown pruner '{name}'; use median or halving")


def make_study(options: StudyOptions, space: SearchSpace) -> optuna.Study:
    try:
        study = optuna.create_study(
            study_name=options.study,
            storage=options.storage,
            direction="maximize" if space.direction == "maximize" else "minimize",
            sampler=optuna.samplers.TPESampler(seed=options.seed),
            pruner=make_pruner(options.pruner),
            load_if_exists=True,
        )
    except SQLAlchemyError as err:  # a database server that cannot be reached, a refused login, ...
        reason = " ".join(str(getattr(err, "orig", None) or err).split()).rstrip(".")
        raise ConfigError(
            f"--storage {options.storage} cannot be opened ({reason}); check the URL and that the database runs"
        ) from err
    refuse_another_space(study, space, options)
    return study


def refuse_another_space(study: optuna.Study, space: SearchSpace, options: StudyOptions) -> None:
    """A study goes on only with the search space it began with: raise one sentence otherwise."""
    where = f"study '{options.study}' in {options.storage}"
    if study.trials and study.direction.name.lower() != space.direction:
        raise ConfigError(
            f"{where} {study.direction.name.lower()}s its metric; use another --study, or the same direction"
        )
    for trial in study.trials:
        for name, distribution in trial.distributions.items():
            if name not in space.params or space.params[name] != distribution:
                raise ConfigError(
                    f"{where} was searched with another space (parameter '{name}' differs or is gone); use another "
                    "--study (or --storage) for this search space, or the space it began with"
                )


def short_names(names: list[str]) -> list[str]:
    """Table headers: each parameter's last dotted part, the whole key where two would clash."""
    last = [name.rsplit(".", 1)[-1] for name in names]
    return [short if last.count(short) == 1 else name for short, name in zip(last, names, strict=True)]


def short_value(value: Any) -> str:
    """A table cell: 4 significant digits for floats, lists without spaces."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def summarise(study: optuna.Study, space: SearchSpace, out: Path, base: dict[str, Any]) -> Path | None:
    """Print and write the trials table and importances; write the best config. Returns its path."""
    table = Table(title=f"study {study.study_name}: {space.direction} {space.monitor}")
    names = list(space.params)
    for column in ("trial", "state", "value", *short_names(names)):
        table.add_column(column, overflow="fold")
    rows = []
    for trial in study.trials:
        value = "" if trial.value is None else f"{trial.value:.4f}"
        params = [decode(trial.params.get(n, "")) for n in names]
        table.add_row(str(trial.number), trial.state.name.lower(), value, *(short_value(v) for v in params))
        rows.append([str(trial.number), trial.state.name.lower(), value, *(str(v) for v in params)])
    console = rich_console()
    console.print(table)
    if any(short != name for short, name in zip(short_names(names), names, strict=True)):
        console.print("columns: " + ", ".join(f"{s} = {n}" for s, n in zip(short_names(names), names, strict=True)))
    with (out / "trials.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([["trial", "state", "value", *names], *rows])
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        log.warning("no trial completed: no best config")
        return None
    if len(completed) >= 2 and len(names) > 1:
        try:
            importances = optuna.importance.get_param_importances(study)
            console.print("parameter importances: " + ", ".join(f"{k} {v:.2f}" for k, v in importances.items()))
            (out / "importances.json").write_text(json.dumps(importances, indent=1))
        except (RuntimeError, ValueError) as err:
            log.info("parameter importances not available (%s)", err)
    best = study.best_trial
    config = with_params(base, best.params)  # the base config's own logger: runs log where it says
    path = out / "best.yaml"
    header = f"# best of study {study.study_name}: trial {best.number}, {space.monitor}={best.value:.4f}\n"
    path.write_text(header + yaml.safe_dump(config, sort_keys=False))
    log.info("best trial %d (%s=%.4f); its config: %s", best.number, space.monitor, best.value, path)
    return path


@dataclass(frozen=True, kw_only=True)
class StudyOptions:
    """Where the study lives and how it searches.

    Attributes:
        storage: Optuna storage URL (an SQLite file: ``sqlite:///PATH``); None: ``study.db`` in the
            output folder, so unrelated searches never share a study.
        study: study name in the storage.
        pruner: ``median`` or ``halving`` (successive halving).
        seed: sampler seed.
        fit_args: extra arguments for every trial's ``python -m detlit.fit``.
    """

    storage: str | None = None
    study: str = "detlit"
    pruner: str = "median"
    seed: int = 0
    fit_args: tuple[str, ...] = ()


def tune(
    *,
    config: Path,
    search: Path,
    trials: int,
    options: StudyOptions,
    out: Path | None = None,
    timeout: float | None = None,
) -> int:
    """``python -m detlit.tune``: run trials until the study holds ``trials`` finished ones (or
    ``timeout`` seconds passed), then summarise it into ``out`` (default ``runs/tune/STUDY``).

    Returns:
        0 when a trial completed (the best config is written), 1 when none did.
    """
    space = load_search(search)
    problem = not_a_file(config)
    if problem is not None:
        raise ConfigError(f"--config {config} {problem}; pass the fit YAML the trials start from")
    base = read_yaml(config, f"--config {config}") or {}
    out = out or Path("runs") / "tune" / options.study
    storage = options.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    options = replace(options, storage=storage)
    database = check_storage(storage)
    out.mkdir(parents=True, exist_ok=True)
    log.info("study '%s' in %s", options.study, options.storage)
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = make_study(options, space)
    started = time.monotonic()
    while len([t for t in study.trials if t.state.is_finished()]) < trials:
        if timeout is not None and time.monotonic() - started > timeout:
            log.info("timeout reached: no new trial started")
            break
        trial = study.ask(space.params)
        state, value = run_trial(trial, base, space, options, out / f"trial_{trial.number:03d}")
        study.tell(trial, value if state == optuna.trial.TrialState.COMPLETE else None, state=state)
        shown = "" if value is None or math.isnan(value) else f" {space.monitor}={value:.4f}"
        log.info("trial %d %s%s", trial.number, state.name.lower(), shown)
    best = summarise(study, space, out, base)
    return 0 if best is not None else 1
