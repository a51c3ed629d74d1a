"""Benchmarks of detlit against the detectron2 and pycocotools code it stands beside.

``make bench`` (``python tools/bench.py``) runs on the CPU:

* ``train_step``: seconds per step of detlit's Lightning loop (``lightning.Trainer`` fitting a
  ``DetectionModule`` with a ``CocoDataModule``) against detectron2's ``SimpleTrainer`` on a copy of
  the same model, optimizer, learning-rate schedule and batches; and the peak memory of each side,
  each in a fresh process of its own.
* ``data_loading``: images/s of ``CocoDataModule``'s training loader against detectron2's
  ``DatasetMapper`` with the same resize and flip, both in a torch ``DataLoader`` with the same
  workers and batch size.
* ``metrics``: seconds of ``DetectionMetrics`` (COCO numbers, precision/recall/F1, confusion
  matrix) against pycocotools' ``COCOeval`` on the same synthetic detections, with their AP
  numbers compared.
* ``predict``: images/s of ``detlit.inference.predictor.Predictor`` at batch 1 and 8 against detectron2's
  ``DefaultPredictor`` on the same weights and images.
* ``check``: seconds of the json-only ``check_dataset`` per 1,000 images as the dataset grows.
* ``startup``: seconds until ``python -m detlit.<command> --help`` answers, for every command,
  against ``python -c "import lightning, detectron2"``.
* ``scale`` (``tools/bench_scale.py``): a COCO train2017-sized json (118,287 images) it writes
  itself: load + check time and memory against pycocotools' ``COCO()``, loader worker memory against
  a plain list of records, the data module's start-up with and without cached image headers, and
  ``DetectionMetrics`` at 5,000 images x 100 detections on 2 processes.
* ``deploy`` (``tools/bench_deploy.py``): images/s of exported TorchScript and ONNX models against
  the checkpoint's eager ``Predictor``, export wall time, and ``python -m detlit.serve``'s
  throughput and latency at 1 and 8 concurrent clients.
* ``runtimes`` (``tools/bench_runtimes.py``): a briefly trained model exported to ONNX and OpenVINO in
  float32 and int8: images/s at batch 1 and 8 against the eager checkpoint, AP differences, and the
  fastest float32 runtime's model FLOP/s against the machine's float32 matrix-product peak.
* ``small_objects`` (``tools/bench_small.py``): a model trained on tiles (``detlit.data.tiling``) of
  large synthetic images with small objects: AP_small of the whole image against sliced inference,
  and sliced images/s against SAHI's ``get_sliced_prediction`` at equal detections.

``make bench-gpu`` (``--gpu``) runs ``train_step`` (16-mixed against detectron2's ``AMPTrainer``)
and ``predict`` on a CUDA GPU with the R50-FPN architecture at 800 pixels; ``--gpu --dry-run`` runs
the same code on the CPU at toy sizes and full precision, to try it without a GPU.

Every ratio is detlit over its baseline, both measured in this invocation: after a warm-up, the
two sides take turns (ABBA order) several times on the same number of torch threads, and the
median of the turns is reported. The run plans for ``--budget`` seconds (23 minutes; 4.5 with
``--gpu``): where other jobs slow the machine down, benchmarks run fewer rounds and say so.

Sizes, rows, targets, the time budget and the machine description are in ``tools/benchkit.py``.

A full run rewrites the part of BENCHMARKS.md between ``<!-- bench:start -->`` and
``<!-- bench:end -->`` (``<!-- bench-gpu:... -->`` with ``--gpu``); text outside the markers is
left as it is. ``--quick`` (toy sizes, a smoke test), ``--only`` and
``--dry-run`` runs write only where ``--out`` says.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime
import functools
import importlib
import io
import itertools
import json
import pstats
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from lightning.pytorch import Callback, Trainer
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, Dataset

from detlit.__main__ import COMMANDS
from detlit.common.env import collect_env
from detlit.compat import D2ResizeShortestEdge, build_model  # prepares detectron2 before the imports below
from detlit.data.checks import check_dataset
from detlit.data.coco import LabelMap, parse_coco
from detlit.data.datamodule import CocoDataModule
from detlit.data.dataset import collate
from detlit.data.detectron2 import to_detectron2_dicts
from detlit.data.images import load_image
from detlit.evaluation.cocoeval import COCO_NAMES
from detlit.evaluation.metric import DetectionMetrics
from detlit.inference.predictor import Predictor
from detlit.model.module import DetectionModule
from detlit.model.schedule import build_scheduler

# detectron2's own training loop and data path, the baselines: the benchmark imports them itself.
from detectron2.data import DatasetMapper  # isort: skip
from detectron2.data.transforms import RandomFlip as D2RandomFlip  # isort: skip
from detectron2.engine import AMPTrainer, HookBase, SimpleTrainer  # isort: skip
from detectron2.engine.hooks import LRScheduler as D2LRScheduler  # isort: skip

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from bench_deploy import bench_deploy  # noqa: E402
from bench_runtimes import bench_runtimes  # noqa: E402
from bench_scale import bench_scale  # noqa: E402
from bench_small import bench_small_objects  # noqa: E402
from benchkit import (  # noqa: E402
    COLUMNS,
    CPU_CONFIG,
    DEFAULT_OUT,
    FULL,
    GPU_CONFIG,
    GPU_DRY,
    GPU_FULL,
    INTRO,
    MARKERS,
    NO_CUDA,
    QUICK,
    RBC_DIR,
    REPO,
    RESULT_PREFIX,
    Budget,
    Context,
    Result,
    Row,
    Scale,
    Target,
    abba,
    collected,
    cpu_seconds,
    listed,
    load_text,
    machine,
    median,
    others_share,
    quiet,
    set_threads,
    usable_cores,
)

from tests.reference import (  # noqa: E402
    coco_ground_truth_and_results,
    default_predictor,
    pycocotools_stats,
    synthetic_data,
)

Batch = list[dict[str, Any]]


# --- models and data -----------------------------------------------------------------------------


# Smaller than configs/sample_cpu.yaml's model, for --quick (the unit tests' toy model).
TINY_OVERRIDES: dict[str, Any] = {
    "MODEL.FPN.OUT_CHANNELS": 64,
    "MODEL.ROI_BOX_HEAD.FC_DIM": 64,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 32,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN": 200,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN": 50,
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 200,
    "MODEL.RPN.POST_NMS_TOPK_TEST": 50,
}


@dataclass
class Spec:
    """A detlit model, its optimizer and its data sizes, as one of the configs/ files gives them."""

    config_name: str
    overrides: dict[str, Any]
    freeze_at: int | None
    optimizer: type[torch.optim.Optimizer]
    optimizer_args: dict[str, Any]
    lr_schedule: str
    warmup_steps: int
    min_size_train: list[int]
    max_size_train: int
    min_size_test: int
    max_size_test: int
    batch_size: int
    augment: str

    @classmethod
    def read(cls, path: Path) -> Spec:
        config = yaml.safe_load(path.read_text())
        model, data = config["model"], config["data"]
        module_name, _, class_name = model["optimizer"]["class_path"].rpartition(".")
        return cls(
            config_name=model["config_name"],
            overrides=dict(model.get("overrides") or {}),
            freeze_at=model.get("freeze_at"),
            optimizer=getattr(importlib.import_module(module_name), class_name),
            optimizer_args=dict(model["optimizer"].get("init_args") or {}),
            lr_schedule=model.get("lr_schedule", "cosine"),
            warmup_steps=int(model.get("warmup_steps", 100)),
            min_size_train=list(data["min_size_train"]),
            max_size_train=int(data["max_size_train"]),
            min_size_test=int(data["min_size_test"]),
            max_size_test=int(data["max_size_test"]),
            batch_size=int(data["batch_size"]),
            augment=data.get("augment", "flip"),
        )

    def tiny(self) -> Spec:
        """This spec with the unit tests' toy model and sizes (--quick, --dry-run)."""
        return replace(
            self,
            overrides={**self.overrides, **TINY_OVERRIDES},
            min_size_train=[128],
            max_size_train=192,
            min_size_test=128,
            max_size_test=192,
            batch_size=2,
        )

    def describe(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.optimizer_args.items())
        return (
            f"`{self.config_name}` with {len(self.overrides)} overrides, {self.optimizer.__name__}({args}), "
            f"{self.lr_schedule} schedule after {self.warmup_steps} warm-up steps, batch {self.batch_size}, "
            f"shortest edge {self.min_size_train} (max {self.max_size_train}) in training and "
            f"{self.min_size_test} (max {self.max_size_test}) at inference"
        )


def cpu_spec(scale: Scale) -> Spec:
    spec = Spec.read(CPU_CONFIG)
    return spec.tiny() if scale.tiny_model else spec


def gpu_spec(dry_run: bool) -> Spec:
    spec = Spec.read(GPU_CONFIG)
    # Random initialisation: no download of pretrained weights, and the speed does not depend on them.
    spec = replace(spec, min_size_train=[800], max_size_train=1333, min_size_test=800, max_size_test=1333)
    return replace(spec.tiny(), overrides=spec.overrides) if dry_run else spec


def datamodule(spec: Spec, folder: Path, cls: type[CocoDataModule] = CocoDataModule, **kwargs: Any) -> Any:
    """A CocoDataModule over a sample folder with the spec's sizes, loading in this process."""
    args: dict[str, Any] = {
        "train_json": str(folder / "train.json"),
        "train_images": str(folder / "train"),
        "batch_size": spec.batch_size,
        "num_workers": 0,
        "augment": spec.augment,
        "min_size_train": spec.min_size_train,
        "max_size_train": spec.max_size_train,
        "min_size_test": spec.min_size_test,
        "max_size_test": spec.max_size_test,
        **kwargs,
    }
    return cls(**args)


def detection_module(spec: Spec, dm: CocoDataModule) -> DetectionModule:
    """The spec's model for the data module's classes, seeded: every process builds the same weights."""
    torch.manual_seed(0)
    return spec_module(spec, dm.class_names, dm.category_ids)


def spec_module(spec: Spec, class_names: Sequence[str], category_ids: Sequence[int]) -> DetectionModule:
    """The spec's model for these classes, with the weights of the current random state."""
    return DetectionModule(
        num_classes=len(class_names),
        class_names=list(class_names),
        category_ids=list(category_ids),
        config_name=spec.config_name,
        weights=None,
        freeze_at=spec.freeze_at,
        overrides=spec.overrides,
        min_size_train=spec.min_size_train,
        max_size_train=spec.max_size_train,
        min_size_test=spec.min_size_test,
        max_size_test=spec.max_size_test,
        optimizer=functools.partial(spec.optimizer, **spec.optimizer_args),
        lr_schedule=spec.lr_schedule,  # type: ignore[arg-type]
        warmup_steps=spec.warmup_steps,
    )


def detectron2_copy(module: DetectionModule, device: str = "cpu") -> torch.nn.Module:
    """detectron2's own model built from the module's config, with the module's weights."""
    model = build_model(module.cfg)
    model.load_state_dict(module.model.state_dict())
    return model.to(device)


# --- train_step ----------------------------------------------------------------------------------


class ServedBatches(CocoDataModule):
    """A CocoDataModule whose training loader serves batches its own loader made beforehand.

    Both trainers then get the very same input dicts at the cost of a list lookup, so the timing
    compares the training loops, not image decoding.
    """

    served: list[Batch]

    def train_dataloader(self) -> DataLoader:
        # A list is a map-style dataset; batch_size=None hands each of its batches over as it is.
        return DataLoader(self.served, batch_size=None, shuffle=False, collate_fn=collate, num_workers=0)  # type: ignore[arg-type]


def prepared_batches(dm: CocoDataModule, count: int) -> list[Batch]:
    """The first ``count`` batches of the data module's own training loader."""
    dm.setup("fit")
    batches = list(itertools.islice(iter(CocoDataModule.train_dataloader(dm)), count))
    if len(batches) < count:
        raise RuntimeError(f"the training data gives {len(batches)} batches, {count} are needed; write more images")
    return batches


def synchronizer(device: str) -> Callable[[], None]:
    """What makes a timestamp mean "the step is done": a CUDA synchronisation on a GPU."""
    if device.startswith("cuda"):
        return torch.cuda.synchronize
    return lambda: None


class LightningClock(Callback):
    """The time at the end of every training batch (the whole loop runs between two of them)."""

    def __init__(self, sync: Callable[[], None]):
        self.sync = sync
        self.times: list[float] = []

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self.sync()
        self.times.append(time.perf_counter())


class Detectron2Clock(HookBase):
    """The time after every step of detectron2's loop (its hooks included)."""

    def __init__(self, sync: Callable[[], None]):
        self.sync = sync
        self.times: list[float] = []

    def after_step(self) -> None:
        self.sync()
        self.times.append(time.perf_counter())


def step_seconds(times: list[float], warmup: int) -> list[float]:
    """Durations of the steps after the first ``warmup`` ones, from their end times."""
    return list(np.diff(times[max(warmup, 1) - 1 :]))


@dataclass
class TrainSetup:
    """Everything both sides of ``train_step`` share: data module, batches, module, detectron2 copy."""

    spec: Spec
    dm: ServedBatches
    module: DetectionModule
    model: torch.nn.Module
    batches: list[Batch]
    device: str
    precision: str  # Lightning's, e.g. "32-true" or "16-mixed"

    @classmethod
    def build(cls, spec: Spec, folder: Path, scale: Scale, device: str, precision: str) -> TrainSetup:
        dm = datamodule(spec, folder, cls=ServedBatches)
        batches = prepared_batches(dm, scale.train_warmup + scale.train_steps)
        dm.served = batches
        module = detection_module(spec, dm)
        return cls(spec, dm, module, detectron2_copy(module, device), batches, device, precision)

    @property
    def amp(self) -> bool:
        return self.precision != "32-true"

    def run_detlit(self, steps: int) -> list[float]:
        """One ``Trainer.fit`` of ``steps`` steps; the end time of each."""
        clock = LightningClock(synchronizer(self.device))
        trainer = Trainer(
            accelerator="gpu" if self.device.startswith("cuda") else "cpu",
            devices=1,
            precision=self.precision,  # type: ignore[arg-type]
            max_steps=steps,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[clock],
        )
        trainer.fit(self.module, datamodule=self.dm)
        return clock.times

    def run_detectron2(self, steps: int) -> list[float]:
        """detectron2's loop for ``steps`` steps on the same batches, optimizer and schedule."""
        hp = self.module.hparams
        # DetectionModule's own parameter groups (no decay on norms and biases), of the copy: the
        # method reads nothing but `.model`.
        groups = DetectionModule.parameter_groups(argparse.Namespace(model=self.model))  # type: ignore[arg-type]
        optimizer = self.spec.optimizer(groups, **self.spec.optimizer_args)
        scheduler = build_scheduler(
            optimizer,
            steps,
            hp["warmup_steps"],
            hp["warmup_factor"],
            hp["lr_schedule"],
            hp["lr_milestones"],
            hp["lr_gamma"],
        )
        data = itertools.cycle(self.batches)
        trainer = AMPTrainer(self.model, data, optimizer) if self.amp else SimpleTrainer(self.model, data, optimizer)
        clock = Detectron2Clock(synchronizer(self.device))
        trainer.register_hooks([D2LRScheduler(optimizer, scheduler), clock])
        trainer.train(0, steps)
        return clock.times

    def run(self, side: str, steps: int) -> list[float]:
        return self.run_detlit(steps) if side == "detlit" else self.run_detectron2(steps)


def vm_status(key: str) -> int | None:
    """A ``/proc/self/status`` memory figure (``VmRSS``, ``VmHWM``) in bytes, None off Linux."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    return None


def reset_peak_rss() -> bool:
    """Restart this process's peak-RSS count (``VmHWM``) from its current RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def memory_worker(side: str, folder: Path, scale: Scale) -> dict[str, Any]:
    """One side's training steps in this (fresh) process, and its peak RSS.

    Both sides build exactly the same objects first (data, batches, module, detectron2 copy), so
    what differs is the training loop alone. The peak is counted from the start of training: the
    kernel's high-water mark is reset there when it allows it.
    """
    setup = TrainSetup.build(cpu_spec(scale), folder, scale, "cpu", "32-true")
    collected()
    was_reset = reset_peak_rss()
    before = vm_status("VmRSS") or 0
    setup.run(side, scale.train_warmup + scale.train_steps)
    # VmHWM is this process's own peak. ru_maxrss is not, after a fork and exec: it also keeps the
    # RSS of the forked copy of the parent, which here is the larger of the two.
    peak = vm_status("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"side": side, "before": before, "peak": peak, "reset": was_reset, "threads": torch.get_num_threads()}


def run_memory_workers(folder: Path, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """:func:`memory_worker` of each side in a fresh process: one after the other, or both at once
    with ``--quick`` (peaks do not depend on sharing the cores, only times do)."""
    results: dict[str, dict[str, Any]] = {}
    sides = ("detlit", "detectron2")
    batches = [sides] if args.quick else [(side,) for side in sides]
    for batch in batches:
        processes = {}
        for side in batch:
            command = [sys.executable, str(Path(__file__).resolve()), "--worker", f"train_step_{side}"]
            command += ["--data", str(folder), "--threads", str(args.threads)] + (["--quick"] if args.quick else [])
            processes[side] = subprocess.Popen(
                command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        for side, process in processes.items():
            stdout, stderr = process.communicate(timeout=600)
            lines = [line for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
            if process.returncode != 0 or not lines:
                raise RuntimeError(f"the memory worker of {side} failed (exit {process.returncode}): {stderr[-2000:]}")
            results[side] = json.loads(lines[-1][len(RESULT_PREFIX) :])
    return results


def bench_train_step(ctx: Context) -> Result:
    scale = ctx.scale
    spec = cpu_spec(scale)
    folder = ctx.sample_folder()
    setup = TrainSetup.build(spec, folder, scale, "cpu", "32-true")
    times = time_training(setup, scale, ctx.budget)

    memory = run_memory_workers(folder, ctx.args)
    mib = {side: m["peak"] / 2**20 for side, m in memory.items()}
    growth = {side: (m["peak"] - m["before"]) / 2**20 for side, m in memory.items()}
    rows = [
        time_row("train_step", "s/step", times, "SimpleTrainer"),
        Row(
            "train_step",
            "peak RSS growth",
            f"+{growth['detlit']:.0f} MiB (peak {mib['detlit']:.0f} MiB)",
            f"+{growth['detectron2']:.0f} MiB (peak {mib['detectron2']:.0f} MiB)",
            growth["detlit"] / growth["detectron2"],
            Target("<=", 1.10),
        ),
    ]
    reset = all(m["reset"] for m in memory.values())
    details = [
        f"- model: {spec.describe()}; {ctx.sample_note()}",
        f"- {len(setup.batches)} batches made once by CocoDataModule's own training loader; detlit's "
        "`lightning.Trainer` (no logger, checkpoints, progress bar or validation) gets them through the data "
        "module, detectron2's `SimpleTrainer` (its `train()` loop with an `LRScheduler` hook) through an endless "
        "iterator; the same optimizer, parameter groups and learning-rate schedule, a copy of the same initial "
        "weights, the same config (`module.cfg`)",
        f"- {scale.train_turns} turns per side in ABBA order, each a fresh fit of {scale.train_warmup} warm-up "
        f"+ {scale.train_steps} timed steps; a step is the time between the ends of two batches; the ratio is the "
        "median over rounds of detlit's turn over detectron2's turn of the same round (the medians of each side "
        "are shown)",
        f"- mean s/step of each turn: detlit {listed(times['detlit'])}; detectron2 {listed(times['detectron2'])}",
        f"- peak RSS growth: each side in a fresh process (`tools/bench.py --worker train_step_<side>`) that "
        f"builds the same objects, then runs {scale.train_warmup + scale.train_steps} steps; the growth is the "
        "peak RSS (VmHWM) during training minus the RSS when training starts; the whole peak in brackets"
        + ("" if reset else " (the kernel refused to reset the peak count: the peaks include the set-up)"),
    ]
    if ctx.args.profile or (not rows[0].passed and ctx.budget.left() > 0):
        details += training_profile(setup, scale.train_warmup + scale.train_steps)
    elif not rows[0].passed:
        details.append("- no profile: the time budget was spent (run with --only train_step --profile)")
    return Result("train_step", rows, details)


def training_profile(setup: TrainSetup, steps: int, top: int = 10) -> list[str]:
    """The work detlit's loop does that detectron2's does not: functions it calls more often per step.

    Both sides run one fit of ``steps`` steps under cProfile. Functions both sides call equally
    (the model's own operators) are left out: their times differ only by noise, most of all on
    a busy machine; what remains is the loop's own work, by own time per step (cProfile slows
    Python code more than torch's kernels, so these times are upper bounds).
    """
    own = {side: own_times(functools.partial(setup.run, side, steps)) for side in ("detlit", "detectron2")}
    extra = []
    for name, (calls, seconds) in own["detlit"].items():
        their_calls, their_seconds = own["detectron2"].get(name, (0, 0.0))
        if calls > their_calls:
            extra.append((name, (seconds - their_seconds) / steps, (calls - their_calls) / steps))
    extra.sort(key=lambda item: item[1], reverse=True)
    lines = [
        f"- profile (cProfile, one fit of {steps} steps per side, set-up included): what detlit's loop calls more "
        "often than detectron2's, by own time per step:"
    ]
    for name, per_step, more_calls in extra[:top]:
        lines.append(f"    - {name}: {per_step * 1e3:+.2f} ms/step, {more_calls:+.0f} calls/step")
    return lines


def time_training(setup: TrainSetup, scale: Scale, budget: Budget) -> dict[str, list[float]]:
    """Mean seconds per step of each turn, per side, the sides in ABBA order."""
    times: dict[str, list[float]] = {"detlit": [], "detectron2": []}
    steps = scale.train_warmup + scale.train_steps
    # The memory workers and the profile come after the timing: leave them a third of the share.
    for side in abba(budget.rounds(scale.train_turns, part=0.65), list(times)):
        collected()
        seconds = step_seconds(setup.run(side, steps), scale.train_warmup)
        times[side].append(float(np.mean(seconds)))
    return times


def paired_ratio(times: dict[str, list[float]]) -> float:
    """The median over rounds of detlit's turn over detectron2's turn of the same round.

    The two turns of a round run back to back, so a slow phase of the machine (another job, a
    lower clock) weighs on both; the median of the rounds' ratios cancels it where the ratio of the
    two sides' medians would not.
    """
    return median([ours / theirs for ours, theirs in zip(times["detlit"], times["detectron2"], strict=False)])


def time_row(benchmark: str, unit: str, times: dict[str, list[float]], baseline: str) -> Row:
    ours, theirs = median(times["detlit"]), median(times["detectron2"])
    return Row(
        benchmark,
        unit,
        f"{ours:.3f} {unit}",
        f"{theirs:.3f} {unit} ({baseline})",
        paired_ratio(times),
        Target("<=", 1.03),
    )


# --- data_loading -------------------------------------------------------------------------------


class MappedDicts(Dataset[dict[str, Any]]):
    """detectron2 dataset dicts through a mapper: what its own train loader does per image."""

    def __init__(self, dicts: list[dict[str, Any]], mapper: Callable[[dict[str, Any]], dict[str, Any]]):
        self.dicts = dicts
        self.mapper = mapper

    def __len__(self) -> int:
        return len(self.dicts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.mapper(self.dicts[index])


def epoch_rate(loader: DataLoader) -> float:
    """Images per second over one epoch of a loader."""
    start = time.perf_counter()
    images = sum(len(batch) for batch in loader)
    return images / (time.perf_counter() - start)


def own_times(run: Callable[[], Any]) -> dict[str, tuple[int, float]]:
    """Calls of each function and the seconds spent in it itself (not in what it calls) while ``run()`` runs."""
    profiler = cProfile.Profile()
    profiler.enable()
    run()
    profiler.disable()
    stats = pstats.Stats(profiler, stream=io.StringIO())
    own: dict[str, tuple[int, float]] = {}
    for (filename, line, name), entry in stats.stats.items():  # type: ignore[attr-defined]
        # Built-ins come as ("~", 0, "<built-in method ...>"); Python functions with their file.
        key = f"`{name}` ({Path(filename).parent.name}/{Path(filename).name}:{line})" if line else f"`{name}`"
        calls, seconds = own.get(key, (0, 0.0))
        own[key] = (calls + entry[1], seconds + entry[2])
    return own


def profile_items(get: Callable[[int], Any], count: int, top: int = 8) -> list[str]:
    """The functions that take the most own time over ``count`` items, as markdown lines."""
    own = own_times(lambda: [get(index) for index in range(count)])
    ranked = sorted(own.items(), key=lambda item: item[1][1], reverse=True)[:top]
    return [f"    - {name}: {seconds / count * 1e3:.2f} ms/image" for name, (_, seconds) in ranked]


def tensor_count(item: Any) -> int:
    """Tensors in a detectron2 input dict (its Instances and their Boxes included)."""
    if isinstance(item, torch.Tensor):
        return 1
    if isinstance(item, dict):
        return sum(tensor_count(value) for value in item.values())
    if isinstance(item, (list, tuple)):
        return sum(tensor_count(value) for value in item)
    if hasattr(item, "get_fields"):  # Instances
        return tensor_count(item.get_fields())
    return int(isinstance(getattr(item, "tensor", None), torch.Tensor))  # Boxes


def transfer_seconds(items: Sequence[Any]) -> tuple[float, float]:
    """Seconds per item that a loader worker takes to send it (tensors moved to shared memory) and
    the main process to receive it: torch's ForkingPickler both ways."""
    start = time.perf_counter()
    blobs = [ForkingPickler.dumps(item) for item in items]
    sent = time.perf_counter()
    for blob in blobs:
        ForkingPickler.loads(blob)
    received = time.perf_counter()
    return (sent - start) / len(items), (received - sent) / len(items)


def bench_data_loading(ctx: Context) -> Result:
    scale, spec = ctx.scale, Spec.read(GPU_CONFIG)
    if not ctx.scale.tiny_model and (RBC_DIR / "train" / "_annotations.coco.json").is_file():
        train_json, images, source = (
            RBC_DIR / "train" / "_annotations.coco.json",
            RBC_DIR / "train",
            "rbc train ($DETLIT_RBC_DIR)",
        )
    else:
        folder = ctx.sample_folder()
        train_json, images = folder / "train.json", folder / "train"
        source = "the synthetic sample" + (
            "" if scale.tiny_model else f" (no rbc data at {RBC_DIR}; set DETLIT_RBC_DIR)"
        )
    sizes, max_size = spec.min_size_train, spec.max_size_train

    def detlit_loader(workers: int) -> tuple[CocoDataModule, DataLoader]:
        dm = CocoDataModule(
            str(train_json),
            str(images),
            batch_size=scale.loader_batch,
            num_workers=workers,
            augment="flip",
            min_size_train=sizes,
            max_size_train=max_size,
        )
        dm.setup("fit")
        return dm, dm.train_dataloader()

    def detectron2_loader(workers: int) -> DataLoader:
        return DataLoader(
            mapped,
            batch_size=scale.loader_batch,
            shuffle=True,
            num_workers=workers,
            collate_fn=collate,
            persistent_workers=workers > 0,
        )

    dm, loader = detlit_loader(scale.loader_workers)
    dicts = to_detectron2_dicts(dm.train_data, dm.label_map)
    mapper = DatasetMapper(
        is_train=True,
        augmentations=[D2ResizeShortestEdge(sizes, max_size, sample_style="choice"), D2RandomFlip()],
        image_format="BGR",
    )
    mapped = MappedDicts(dicts, mapper)
    loaders = {"detlit": loader, "detectron2": detectron2_loader(scale.loader_workers)}
    for loader in loaders.values():  # warm-up: start the workers, read every file once
        epoch_rate(loader)
    rates: dict[str, list[float]] = {side: [] for side in loaders}
    for side in abba(ctx.budget.rounds(scale.loader_turns), list(loaders)):
        collected()
        rates[side].append(epoch_rate(loaders[side]))
    ours, theirs = median(rates["detlit"]), median(rates["detectron2"])
    target = Target(">=", 1.5)
    row = Row(
        "data_loading", "images/s", f"{ours:.1f} img/s", f"{theirs:.1f} img/s (DatasetMapper)", ours / theirs, target
    )

    # What the same work costs in this process alone: no workers, nothing sent between processes.
    in_process = {"detlit": epoch_rate(detlit_loader(0)[1]), "detectron2": epoch_rate(detectron2_loader(0))}
    details = [
        f"- {len(dicts)} images of {source}; shortest edge one of {sizes} (max {max_size}) and a horizontal flip; "
        f"{scale.loader_workers} workers, batch {scale.loader_batch}, the same `collate` (a list of dicts)",
        "- detectron2: `DatasetMapper(is_train=True, augmentations=[ResizeShortestEdge(choice), RandomFlip()], "
        "image_format='BGR')` over `to_detectron2_dicts` of the same records in a plain `DataLoader` "
        "(its `build_detection_train_loader` does not run on numpy 2)",
        f"- {scale.loader_turns} epochs per side in ABBA order after a warm-up epoch each; img/s of each epoch: "
        f"detlit {listed(rates['detlit'])}; detectron2 {listed(rates['detectron2'])}",
        f"- the same loaders without workers (`num_workers=0`, one epoch each, no transfer between processes): "
        f"detlit {in_process['detlit']:.1f} img/s, detectron2 {in_process['detectron2']:.1f} img/s "
        f"({in_process['detlit'] / in_process['detectron2']:.2f}x)",
    ]
    if not row.passed or ctx.args.profile:
        count = min(scale.loader_profile_images, len(dicts))
        dataset = dm.datasets["train"]
        details.append(f"- profile of {count} images in this process, by own time; detlit's `DetectionDataset`:")
        details += profile_items(dataset.__getitem__, count)
        details.append("- profile, detectron2's `DatasetMapper.__call__`:")
        details += profile_items(mapped.__getitem__, count)
        items = {"detlit": [dataset[i] for i in range(count)], "detectron2": [mapped[i] for i in range(count)]}
        sent = {side: transfer_seconds(values) for side, values in items.items()}
        details.append(
            "- what each image costs to pass from a worker to the main process (torch's ForkingPickler, tensors "
            "moved to shared memory; send + receive): "
            + "; ".join(
                f"{side} {send * 1e3:.2f} + {receive * 1e3:.2f} ms ({tensor_count(values[0])} tensors)"
                for (side, (send, receive)), values in zip(sent.items(), items.values(), strict=True)
            )
        )
    return Result("data_loading", [row], details)


# --- metrics ------------------------------------------------------------------------------------


def bench_metrics(ctx: Context) -> Result:
    scale = ctx.scale
    num_classes, detections = 10, 100
    names = [f"class{k}" for k in range(num_classes)]
    label_map = LabelMap(tuple(range(num_classes)), tuple(names))
    preds, targets = synthetic_data(
        num_images=scale.metric_images,
        detections_per_image=detections,
        num_classes=num_classes,
        objects_per_image=10,
        seed=0,
    )
    objects = sum(len(t["labels"]) for t in targets)
    crowd = sum(int(t["iscrowd"].sum()) for t in targets)

    def detlit_side(count: int) -> np.ndarray:
        metric = DetectionMetrics(names)
        metric.warn_on_many_detections = False
        metric.update(preds[:count], targets[:count])
        evaluation = metric.compute()
        return np.array([evaluation.coco[name] for name in COCO_NAMES])

    def pycocotools_side(count: int) -> np.ndarray:
        return pycocotools_stats(*as_json[count])

    # The same data as COCO json dicts, made before any timing (pycocotools' input format).
    warmup = min(100, scale.metric_images)
    as_json = {
        count: coco_ground_truth_and_results(preds[:count], targets[:count], label_map)
        for count in (warmup, scale.metric_images)
    }
    sides: dict[str, Callable[[int], np.ndarray]] = {"detlit": detlit_side, "pycocotools": pycocotools_side}
    for evaluate in sides.values():
        evaluate(warmup)
    seconds: dict[str, list[float]] = {side: [] for side in sides}
    numbers: dict[str, np.ndarray] = {}
    for side in abba(ctx.budget.rounds(scale.metric_turns), list(sides)):
        collected()
        start = time.perf_counter()
        numbers[side] = sides[side](scale.metric_images)
        seconds[side].append(time.perf_counter() - start)
    ours, theirs = median(seconds["detlit"]), median(seconds["pycocotools"])
    difference = float(np.nanmax(np.abs(numbers["detlit"] - numbers["pycocotools"])))
    same_nan = bool((np.isnan(numbers["detlit"]) == np.isnan(numbers["pycocotools"])).all())
    rows = [
        Row("metrics", "seconds", f"{ours:.2f} s", f"{theirs:.2f} s (COCOeval)", ours / theirs, Target("<=", 0.25)),
        Row(
            "metrics",
            "max |AP difference|",
            f"map {numbers['detlit'][0]:.6f}",
            f"map {numbers['pycocotools'][0]:.6f}",
            difference if same_nan else float("inf"),
            Target("<=", 1e-9, unit=""),
        ),
    ]
    details = [
        f"- {scale.metric_images} synthetic images (`detlit.evaluation.metric.synthetic_data`, seed 0): {detections} "
        f"detections each, {objects / scale.metric_images:.1f} objects per image over {num_classes} classes, "
        f"{crowd} crowd regions",
        "- detlit: `DetectionMetrics.update` + `compute` from the tensors (the 12 COCO numbers, per-class AP, "
        "precision/recall/F1 at the best and a fixed threshold, PR curves, confusion matrix); pycocotools: `COCO` "
        "from the same data as json dicts (converted beforehand, untimed), `loadRes`, "
        "`COCOeval.evaluate/accumulate/summarize`",
        f"- {scale.metric_turns} turns per side in ABBA order after a {warmup}-image warm-up each; seconds: "
        f"detlit {listed(seconds['detlit'])}; pycocotools {listed(seconds['pycocotools'])}",
        f"- the 12 COCO numbers, largest absolute difference: {difference:.3g}"
        + ("" if same_nan else " (undefined numbers differ)"),
    ]
    return Result("metrics", rows, details)


# --- predict ------------------------------------------------------------------------------------


def predict_rates(
    spec: Spec, folder: Path, scale: Scale, device: str, weights_dir: Path, budget: Budget
) -> tuple[dict[str, list[float]], int]:
    """Images/s per turn of Predictor at batch 1 and 8 and of DefaultPredictor, the same weights and images."""
    dm = datamodule(spec, folder)
    module = detection_module(spec, dm)
    theirs = default_predictor(module, weights_dir, device)
    cfg = theirs.cfg
    # detectron2's default score threshold (SCORE_THRESH_TEST) for both: the same detections come out.
    threshold = float(cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST)
    ours = {size: Predictor(module, device=device, score_threshold=threshold, batch_size=size) for size in (1, 8)}
    paths = sorted((folder / "val").glob("*.jpg"))[: scale.predict_images]
    images = [load_image(path) for path in paths]  # decoded once: both sides start from RGB arrays
    bgr = [np.ascontiguousarray(image[:, :, ::-1]) for image in images]
    sync = synchronizer(device)

    def batch_1(count: int) -> None:
        ours[1].predict(images[:count])

    def batch_8(count: int) -> None:
        ours[8].predict(images[:count])

    def detectron2_predictor(count: int) -> None:
        for image in bgr[:count]:
            theirs(image)

    sides: dict[str, Callable[[int], None]] = {
        "batch 1": batch_1,
        "batch 8": batch_8,
        "DefaultPredictor": detectron2_predictor,
    }
    for run in sides.values():  # warm-up: one full batch of 8
        run(min(8, len(images)))
    sync()
    rates: dict[str, list[float]] = {side: [] for side in sides}
    for turn in budget.rounds(scale.predict_turns):
        order = list(sides)[turn % 3 :] + list(sides)[: turn % 3]
        for side in order:
            collected()
            start = time.perf_counter()
            sides[side](len(images))
            sync()
            rates[side].append(len(images) / (time.perf_counter() - start))
    return rates, len(images)


def predict_row(benchmark: str, rates: dict[str, list[float]]) -> Row:
    """Batch 1 against DefaultPredictor (the target); batch 8 reported beside it."""
    theirs, one, eight = (median(rates[side]) for side in ("DefaultPredictor", "batch 1", "batch 8"))
    # As in train_step: the median over rounds of the two sides' turns in the same round.
    ratio = median([a / b for a, b in zip(rates["batch 1"], rates["DefaultPredictor"], strict=False)])
    return Row(
        benchmark,
        "images/s, batch 1 (and 8)",
        f"{one:.2f} img/s (batch 8: {eight:.2f} img/s, {eight / theirs:.2f}x)",
        f"{theirs:.2f} img/s (DefaultPredictor)",
        ratio,
        Target(">=", 1.0),
    )


def bench_predict(ctx: Context) -> Result:
    spec = cpu_spec(ctx.scale)
    rates, count = predict_rates(spec, ctx.sample_folder(), ctx.scale, "cpu", ctx.tmp, ctx.budget)
    details = [
        f"- model: {spec.describe()} (its initial weights, saved to a .pth for DefaultPredictor)",
        f"- {count} images of the synthetic sample's val split (3 shapes), decoded once; detlit's `Predictor."
        "predict` (its own resize, batches of one shape) at batch 1 and 8; detectron2's `DefaultPredictor` "
        "on the BGR arrays, one at a time (it cannot batch); both keep detections scoring >= SCORE_THRESH_TEST",
        f"- {ctx.scale.predict_turns} turns per side in rotating order; img/s: "
        + "; ".join(f"{side} {listed(values)}" for side, values in rates.items()),
        "- the target is batch 1 against DefaultPredictor (the median over rounds of the two turns' ratio in "
        "the same round); batch 8's speed-up is reported beside it",
    ]
    return Result("predict", [predict_row("predict", rates)], details)


# --- check --------------------------------------------------------------------------------------


def synthetic_coco(num_images: int, seed: int = 0) -> dict[str, Any]:
    """A COCO json dict of ``num_images`` 640 x 480 images with about 7 objects each.

    Most boxes lie inside their image; 1 in 100 is moved by half its size (some of those then
    cross the border) and 1 in 100 is a crowd region, so the checks have findings to report.
    """
    rng = np.random.default_rng(seed)
    width, height = 640, 480
    categories = [{"id": k, "name": f"class{k}", "supercategory": "thing"} for k in range(1, 11)]
    images = [
        {"id": i, "file_name": f"images/{i:07d}.jpg", "width": width, "height": height}
        for i in range(1, num_images + 1)
    ]
    counts = rng.integers(0, 15, num_images)
    total = int(counts.sum())
    image_ids = np.repeat(np.arange(1, num_images + 1), counts)
    wh = rng.uniform(8, 200, (total, 2))
    xy = rng.uniform(0, 1, (total, 2)) * (np.array([width, height]) - wh)
    crossing = rng.random(total) < 0.01
    xy[crossing] += wh[crossing] / 2
    labels = rng.integers(1, 11, total)
    crowd = rng.random(total) < 0.01
    annotations = [
        {
            "id": index + 1,
            "image_id": int(image_id),
            "category_id": int(label),
            "bbox": [round(float(x), 2), round(float(y), 2), round(float(w), 2), round(float(h), 2)],
            "area": round(float(w * h), 2),
            "iscrowd": int(c),
        }
        for index, (image_id, label, (x, y), (w, h), c) in enumerate(zip(image_ids, labels, xy, wh, crowd, strict=True))
    ]
    return {"images": images, "annotations": annotations, "categories": categories}


def bench_check(ctx: Context) -> Result:
    scale = ctx.scale
    sizes = scale.check_sizes
    seconds: dict[int, list[float]] = {size: [] for size in sizes}
    parse_seconds: dict[int, list[float]] = {size: [] for size in sizes}
    annotations: dict[int, int] = {}
    findings: dict[int, int] = {}
    root = ctx.tmp / "check"
    warmup, structure = parse_coco(synthetic_coco(min(sizes)), root / "train.json", root)
    check_dataset(warmup, structure, files=False)
    for turn in ctx.budget.rounds(scale.check_turns):
        for size in sizes if turn % 2 == 0 else reversed(sizes):
            data = synthetic_coco(size)
            annotations[size] = len(data["annotations"])
            collected()
            start = time.perf_counter()
            dataset, structure = parse_coco(data, root / "train.json", root)
            parsed = time.perf_counter()
            report = check_dataset(dataset, structure, files=False)
            seconds[size].append(time.perf_counter() - parsed)
            parse_seconds[size].append(parsed - start)
            findings[size] = len(report.findings)
            del data, dataset, structure, report
    per_thousand = {size: median(seconds[size]) / size * 1000 for size in sizes}
    smallest, largest = sizes[0], sizes[-1]
    shown = 10000 if 10000 in sizes else sizes[len(sizes) // 2]
    row = Row(
        "check",
        f"s per 1k images, {largest:,} vs {smallest:,}",
        f"{median(seconds[shown]):.2f} s for {shown:,} images ({per_thousand[largest]:.3f} s/1k at {largest:,})",
        f"{per_thousand[smallest]:.3f} s/1k at {smallest:,} images",
        per_thousand[largest] / per_thousand[smallest],
        Target("<=", 1.5),
    )
    details = [
        "- `check_dataset(files=False)` on synthetic COCO dicts (seed 0, 640 x 480 images, 0-14 objects each "
        "over 10 categories, 1% crowd, a few boxes crossing the border), parsed with `parse_coco` beforehand; "
        "linear when the time per image at the largest size is within 1.5x of that at the smallest",
        f"- {scale.check_turns} turns after a warm-up, sizes in alternating order; median per size:",
    ]
    for size in sizes:
        details.append(
            f"    - {size:,} images, {annotations[size]:,} annotations, {findings[size]:,} findings: check "
            f"{median(seconds[size]):.3f} s ({per_thousand[size]:.3f} s/1k), parse "
            f"{median(parse_seconds[size]):.3f} s"
        )
    return Result("check", [row], details)


# --- start-up ---------------------------------------------------------------------------------

LIGHTNING_COMMANDS = ("fit",)  # parse a LightningCLI config: they need the model and data classes
ARGPARSE_COMMANDS = tuple(name for name in COMMANDS if name not in ("fit", "validate", "test", "config"))
STARTUP_BASELINE = "import lightning, detectron2"
STARTUP_LIMIT = 1.5  # seconds: `--help` of a command that does not need the model classes


def process_seconds(command: Sequence[str]) -> float:
    """Wall time of a fresh process, from its start to its end."""
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def bench_startup(ctx: Context) -> Result:
    """Seconds from typing a command to its `--help`, against importing Lightning and detectron2."""
    sides = {"baseline": [sys.executable, "-c", STARTUP_BASELINE]}
    sides |= {
        name: [sys.executable, "-m", f"detlit.{name}", "--help"] for name in (*LIGHTNING_COMMANDS, *ARGPARSE_COMMANDS)
    }
    times: dict[str, list[float]] = {name: [] for name in sides}
    for command in sides.values():  # warm-up: files in the page cache for every side
        process_seconds(command)
    names = list(sides)
    for turn in ctx.budget.rounds(ctx.scale.startup_turns):
        for name in names if turn % 2 == 0 else reversed(names):
            times[name].append(process_seconds(sides[name]))
    baseline = median(times["baseline"])
    rows = [
        Row(
            "startup",
            f"`{name} --help`, s",
            f"{median(times[name]):.2f} s",
            f'{baseline:.2f} s (`python -c "{STARTUP_BASELINE}"`)',
            median(times[name]) / baseline,
            Target("<=", 1.2),
        )
        for name in LIGHTNING_COMMANDS
    ]
    slowest = max(ARGPARSE_COMMANDS, key=lambda name: median(times[name]))
    rows.append(
        Row(
            "startup",
            "slowest other `--help`, s",
            f"{median(times[slowest]):.2f} s (`{slowest}`)",
            f"at most {STARTUP_LIMIT} s",
            median(times[slowest]),
            Target("<=", STARTUP_LIMIT, "s"),
        )
    )
    details = [
        "- each side a fresh process (`python -m detlit.<command> --help`), timed from start to end; the baseline "
        f'`python -c "{STARTUP_BASELINE}"`: what any LightningCLI over detectron2 imports before its first line',
        "- commands that need no model parse their arguments before importing anything heavy; `fit` builds its "
        "parser from the signatures of `DetectionModule` and `CocoDataModule`, so it imports them (and Lightning)",
        f"- a warm-up run of every side, then {len(times['baseline'])} rounds in alternating order; median seconds "
        "(and ratio to the baseline):",
        *(
            f"    - {name}: {median(values):.2f} s ({median(values) / baseline:.2f}x): {listed(values)}"
            for name, values in times.items()
        ),
    ]
    return Result("startup", rows, details)


# --- GPU ----------------------------------------------------------------------------------------


def bench_gpu_train_step(ctx: Context) -> Result:
    scale, dry = ctx.scale, ctx.args.dry_run
    spec = gpu_spec(dry)
    device = "cpu" if dry else "cuda"
    # AMPTrainer needs CUDA: the dry run compares full-precision loops instead.
    precision = "32-true" if dry else "16-mixed"
    setup = TrainSetup.build(spec, ctx.sample_folder(), scale, device, precision)
    times: dict[str, list[float]] = {"detlit": [], "detectron2": []}
    peaks: dict[str, list[float]] = {"detlit": [], "detectron2": []}
    steps = scale.train_warmup + scale.train_steps
    for side in abba(ctx.budget.rounds(scale.train_turns), list(times)):
        collected()
        if not dry:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        seconds = step_seconds(setup.run(side, steps), scale.train_warmup)
        times[side].append(float(np.mean(seconds)))
        peaks[side].append(torch.cuda.max_memory_allocated() / 2**20 if not dry else float("nan"))
    baseline = "SimpleTrainer" if dry else "AMPTrainer"
    rows = [time_row("train_step (GPU)", "s/step", times, baseline)]
    if not dry:
        ours, theirs = median(peaks["detlit"]), median(peaks["detectron2"])
        rows.append(
            Row(
                "train_step (GPU)",
                "peak CUDA memory",
                f"{ours:.0f} MiB",
                f"{theirs:.0f} MiB ({baseline})",
                ours / theirs,
                Target("<=", 1.10),
            )
        )
    details = [
        f"- model: {spec.describe()}, random initialisation; device {device}, detlit precision {precision}, "
        f"detectron2 {baseline}" + (" with torch.cuda.amp autocast and GradScaler" if not dry else ""),
        f"- {len(setup.batches)} batches of the synthetic sample made once by CocoDataModule's loader, served to "
        f"both loops; {scale.train_turns} turns per side in ABBA order of {scale.train_warmup} warm-up + "
        f"{scale.train_steps} timed steps" + ("" if dry else " (CUDA synchronised at each step's end)"),
        f"- mean s/step of each turn: detlit {listed(times['detlit'])}; detectron2 {listed(times['detectron2'])}",
    ]
    if not dry:
        details.append(
            f"- peak `torch.cuda.max_memory_allocated` per turn (MiB): detlit {listed(peaks['detlit'], 4)}; "
            f"detectron2 {listed(peaks['detectron2'], 4)}"
        )
    return Result("train_step", rows, details)


def bench_gpu_predict(ctx: Context) -> Result:
    spec = gpu_spec(ctx.args.dry_run)
    device = "cpu" if ctx.args.dry_run else "cuda"
    rates, count = predict_rates(spec, ctx.sample_folder(), ctx.scale, device, ctx.tmp, ctx.budget)
    details = [
        f"- model: {spec.describe()}, random initialisation, full precision on both sides, device {device}",
        f"- {count} sample val images at shortest edge {spec.min_size_test}; {ctx.scale.predict_turns} turns per "
        "side in rotating order; img/s: " + "; ".join(f"{side} {listed(values)}" for side, values in rates.items()),
    ]
    return Result("predict", [predict_row("predict (GPU)", rates)], details)


# --- running and writing --------------------------------------------------------------------------


# Shares of the time budget, about as each benchmark's planned turns take on 2 idle CPU cores.
WEIGHTS = {
    "train_step": 0.36,
    "data_loading": 0.08,
    "metrics": 0.27,
    "predict": 0.11,
    "check": 0.09,
    "startup": 0.09,
    "scale": 0.36,
    "deploy": 0.12,
    "runtimes": 0.2,
    "small_objects": 0.31,
}
BUDGET = {"cpu": 1380.0, "gpu": 270.0}  # seconds: 23 minutes for `make bench`, 4.5 for `make bench-gpu`

CPU_RUNNERS: dict[str, Callable[[Context], Result]] = {
    "train_step": bench_train_step,
    "data_loading": bench_data_loading,
    "metrics": bench_metrics,
    "predict": bench_predict,
    "check": bench_check,
    "startup": bench_startup,
    "scale": bench_scale,
    "deploy": bench_deploy,
    "runtimes": bench_runtimes,
    "small_objects": bench_small_objects,
}
GPU_RUNNERS: dict[str, Callable[[Context], Result]] = {
    "train_step": bench_gpu_train_step,
    "predict": bench_gpu_predict,
}


def table(results: Sequence[Result], title: str) -> Table:
    out = Table(title=title)
    for column in COLUMNS:
        out.add_column(column, justify="right" if column in ("ratio", "target") else "left")
    for result in results:
        for row in result.rows:
            cells = row.cells()
            cells[-1] = f"[green]{cells[-1]}[/green]" if row.passed else f"[red]{cells[-1]}[/red]"
            out.add_row(*cells)
    return out


def markdown(results: Sequence[Result], header: dict[str, Any], title: str) -> str:
    lines = [f"## {title}", ""]
    lines += [f"- {key}: {value}" for key, value in header.items() if key != "versions"]
    lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in header["versions"].items()))
    lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for result in results:
        for row in result.rows:
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row.cells()) + " |")
    for result in results:
        lines += ["", f"### {result.name}", "", *result.details]
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str, markers: tuple[str, str]) -> None:
    """Put ``section`` between the markers in ``path``; text outside them is kept as it is.

    A missing file is created with a short introduction; a file without the markers gets them
    appended at its end.
    """
    start, end = markers
    text = path.read_text() if path.is_file() else INTRO
    block = f"{start}\n{section}{end}"
    if start in text and end in text and text.index(start) < text.index(end):
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def run(args: argparse.Namespace) -> int:
    gpu = args.gpu
    if gpu and not args.dry_run and not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        return 2
    runners = GPU_RUNNERS if gpu else CPU_RUNNERS
    names = list(runners)
    if args.only:
        names = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = [name for name in names if name not in runners]
        if unknown:
            print(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(runners)}", file=sys.stderr)
            return 2
    scale = (GPU_DRY if args.dry_run else GPU_FULL) if gpu else QUICK if args.quick else FULL
    console = Console(stderr=True)
    started, load_before, cpu_before = time.perf_counter(), load_text(), cpu_seconds()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    results = []
    seconds = args.budget if args.budget is not None else BUDGET["gpu" if gpu else "cpu"]
    budget = Budget(seconds, {name: WEIGHTS[name] for name in names})
    with tempfile.TemporaryDirectory(prefix="detlit-bench-") as tmp:
        ctx = Context(args, scale, Path(tmp), budget)
        for name in names:
            console.print(f"[bold]{name}[/bold] ...")
            begun = time.perf_counter()
            budget.start(name)
            result = runners[name](ctx)
            if name in budget.cuts:
                done, planned = budget.cuts[name]
                result.details.append(
                    f"- time budget: {done} of {planned} planned rounds ran; the machine was slower than "
                    "planned (busy, or fewer cores)"
                )
            results.append(result)
            console.print(f"  {name} done in {time.perf_counter() - begun:.0f} s")
    wall = time.perf_counter() - started
    kind = "GPU" if gpu else "CPU"
    mode = " (dry run on the CPU: toy sizes)" if args.dry_run else " (quick: toy sizes)" if args.quick else ""
    title = f"Benchmarks, {kind}{mode}: detlit against detectron2 and pycocotools"
    header = {
        "date": when,
        "command": f"`{command_line(args)}`",
        "wall time": f"{wall:.0f} s",
        "machine": ", ".join(f"{k} {v}" for k, v in machine().items()),
        "load average (1, 5, 15 min)": f"{load_before} before, {load_text()} after",
        "torch threads": f"{args.threads} on every side",
        "versions": collect_env(),
    }
    share = others_share(cpu_before, wall)
    if share is not None:
        header["other jobs"] = f"{share:.0%} of the machine's CPU time during the run"
        if share > 0.15:
            header["note"] = (
                "other jobs shared the cores: times are slower and noisier than on an idle machine, above "
                "all with several torch threads (a thread that waits for a busy core holds up the others)"
            )
    # Wide enough for the table when the output goes to a file or a pipe.
    Console(width=None if sys.stdout.isatty() else 200).print(table(results, title))
    print(f"wall time {wall:.0f} s; load average {header['load average (1, 5, 15 min)']}")
    if "note" in header:
        print(f"note: {header['note']}")
    out = args.out
    if out is None and not (args.quick or args.only or args.dry_run):
        out = DEFAULT_OUT
    if out is None:
        print("BENCHMARKS.md not written (partial or toy-size run); pass --out PATH to write the section")
    else:
        write_section(Path(out), markdown(results, header, title), MARKERS["gpu" if gpu else "cpu"])
        print(f"wrote {out}")
    return 0


def command_line(args: argparse.Namespace) -> str:
    """The command as typed, relative to the repository root where it can be."""
    script = Path(sys.argv[0])
    with contextlib.suppress(ValueError):
        script = script.resolve().relative_to(REPO)
    return shlex.join(["python", str(script), *sys.argv[1:]])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="toy sizes: a smoke test of every benchmark")
    parser.add_argument(
        "--only",
        metavar="NAME[,NAME]",
        help=f"run these benchmarks only ({', '.join(CPU_RUNNERS)}; with --gpu: {', '.join(GPU_RUNNERS)})",
    )
    parser.add_argument(
        "--out", type=Path, help=f"markdown file to write the section to (full runs: {DEFAULT_OUT.name})"
    )
    parser.add_argument("--gpu", action="store_true", help="the CUDA benchmarks (train_step with AMP, predict)")
    parser.add_argument("--dry-run", action="store_true", help="with --gpu: run their code on the CPU at toy sizes")
    parser.add_argument(
        "--threads", type=int, help="torch threads on every side (default: the usable cores; 1 with --quick)"
    )
    parser.add_argument("--profile", action="store_true", help="add the profiles of train_step and data_loading")
    parser.add_argument(
        "--budget",
        type=float,
        metavar="SECONDS",
        help=f"wall time to plan for; benchmarks run fewer rounds on a slow machine (default {BUDGET['cpu']:.0f}, "
        f"with --gpu {BUDGET['gpu']:.0f})",
    )
    parser.add_argument("--worker", choices=["train_step_detlit", "train_step_detectron2"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.dry_run and not args.gpu:
        parser.error("--dry-run goes with --gpu")
    if args.quick and args.gpu:
        parser.error("--quick does not go with --gpu; use --gpu --dry-run for toy sizes")
    if args.threads is None:
        # Toy sizes are a smoke test: one thread keeps it quick when other jobs share the cores
        # (OpenMP threads that wait for a busy core slow small operators down many times over).
        args.threads = 1 if args.quick or args.dry_run else usable_cores()
    if args.threads < 1:
        parser.error("--threads must be 1 or more")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    quiet()
    set_threads(args.threads)
    if args.worker:
        side = args.worker.removeprefix("train_step_")
        print(RESULT_PREFIX + json.dumps(memory_worker(side, args.data, QUICK if args.quick else FULL)))
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
