"""What every benchmark of ``tools/bench.py`` shares: sizes, rows and targets, the time budget, the machine.

A benchmark is a function ``bench_<name>(ctx: Context) -> Result``: it measures detlit against a
baseline in the same invocation (sides in turns, ABBA order, within its share of :class:`Budget`),
and returns :class:`Row` s (a ratio and its :class:`Target`) with markdown lines that say how.
``tools/bench.py`` registers the benchmarks, runs them and writes BENCHMARKS.md; the larger ones live
in their own ``tools/bench_<name>.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import platform
import statistics
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from detlit.data.sample import write_sample

REPO = Path(__file__).resolve().parents[1]


CPU_CONFIG = REPO / "configs" / "sample_cpu.yaml"


GPU_CONFIG = REPO / "configs" / "faster_rcnn_R50_FPN.yaml"


DEFAULT_OUT = REPO / "BENCHMARKS.md"


RBC_DIR = Path(os.environ.get("DETLIT_RBC_DIR", REPO.parent / "shared" / "data" / "rbc"))


MARKERS = {
    "cpu": ("<!-- bench:start -->", "<!-- bench:end -->"),
    "gpu": ("<!-- bench-gpu:start -->", "<!-- bench-gpu:end -->"),
}


RESULT_PREFIX = "BENCH-RESULT "


NO_CUDA = (
    "torch sees no CUDA GPU on this machine, so the GPU benchmarks cannot run; run `make bench-gpu` on a "
    "machine with one, or `python tools/bench.py --gpu --dry-run` to try their code on the CPU"
)


INTRO = """# Benchmarks

detlit measured against the detectron2 and pycocotools code it stands beside. The section between
the `bench` markers is rewritten by `make bench` (and the `bench-gpu` one by `make bench-gpu`):
`tools/bench.py` says what each benchmark measures and how. Other sections hold hand-run results.

"""


@dataclass(frozen=True)
class Scale:
    """How much each benchmark measures; ``FULL`` fits 15 minutes on 2 CPU cores, ``QUICK`` is a smoke test."""

    train_warmup: int  # steps per turn left out of the timing
    train_steps: int  # timed steps per turn
    train_turns: int  # turns per side
    sample_train: int  # synthetic sample images (train_step, and data_loading without the rbc data)
    sample_val: int  # synthetic sample images for predict
    loader_batch: int
    loader_workers: int
    loader_turns: int  # epochs per side
    loader_profile_images: int
    metric_images: int
    metric_turns: int
    predict_images: int
    predict_turns: int
    check_sizes: tuple[int, ...]
    check_turns: int
    startup_turns: int
    tiny_model: bool  # the toy model of the unit tests instead of configs/sample_cpu.yaml's


FULL = Scale(
    train_warmup=2,
    train_steps=12,
    train_turns=6,
    sample_train=64,
    sample_val=24,
    loader_batch=4,
    loader_workers=2,
    loader_turns=4,
    loader_profile_images=40,
    metric_images=5000,
    metric_turns=3,
    predict_images=16,
    predict_turns=6,
    check_sizes=(2500, 5000, 10000, 20000),
    check_turns=3,
    startup_turns=3,
    tiny_model=False,
)


QUICK = Scale(
    train_warmup=1,
    train_steps=2,
    train_turns=1,
    sample_train=12,
    sample_val=4,
    loader_batch=2,
    loader_workers=2,
    loader_turns=1,
    loader_profile_images=4,
    metric_images=60,
    metric_turns=1,
    predict_images=4,
    predict_turns=1,
    check_sizes=(100, 200, 400, 800),
    check_turns=1,
    startup_turns=1,
    tiny_model=True,
)


# The GPU run: R50-FPN at 800 pixels, about two minutes on an H100.
GPU_FULL = replace(
    FULL, train_warmup=5, train_steps=20, train_turns=3, sample_train=240, sample_val=32, predict_images=32
)


GPU_DRY = replace(QUICK, train_steps=1, sample_val=2, predict_images=2)


@dataclass(frozen=True)
class Target:
    """A bound on a ratio: ``<= 1.03`` or ``>= 1.5``."""

    op: Literal["<=", ">="]
    value: float
    unit: str = "x"

    def met(self, ratio: float) -> bool:
        if not np.isfinite(ratio):
            return False
        return ratio <= self.value if self.op == "<=" else ratio >= self.value

    def format(self, value: float) -> str:
        if self.unit == "x":
            return f"{value:.3f}x"
        return f"{value:.2g}{self.unit}"

    def __str__(self) -> str:
        return f"{self.op} {self.format(self.value)}"


@dataclass
class Row:
    """One line of the table: detlit's number, the baseline's, their ratio and its target."""

    benchmark: str
    measure: str
    detlit: str
    baseline: str
    ratio: float
    target: Target

    @property
    def passed(self) -> bool:
        return self.target.met(self.ratio)

    @property
    def result(self) -> str:
        return "PASS" if self.passed else "MISS"

    def cells(self) -> list[str]:
        return [
            self.benchmark,
            self.measure,
            self.detlit,
            self.baseline,
            self.target.format(self.ratio),
            str(self.target),
            self.result,
        ]


@dataclass
class Result:
    """A benchmark's rows and the markdown lines that say how they were measured."""

    name: str
    rows: list[Row]
    details: list[str] = field(default_factory=list)


COLUMNS = ["benchmark", "measure", "detlit", "baseline", "ratio", "target", "result"]


def portable(text: str, work: Path | None = None) -> str:
    """A command or line as BENCHMARKS.md publishes it: no folder of this machine, the names a reader
    sets instead (``$DETLIT_RBC_DIR`` for the rbc data, ``$WORK`` for a tool's work folder), paths
    inside the repository relative to it."""
    folders = [(RBC_DIR, "$DETLIT_RBC_DIR")] + ([(work, "$WORK")] if work is not None else [])
    for folder, name in folders:
        for form in {str(folder.resolve()), str(folder)}:
            text = text.replace(form, name)
    return text.replace(str(REPO) + "/", "")


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def listed(values: Sequence[float], digits: int = 3) -> str:
    return ", ".join(f"{v:.{digits}g}" for v in values)


def abba(rounds: Iterable[int], sides: Sequence[str]) -> Iterator[str]:
    """The sides in turn, one turn each per round, the order reversed every other round (A B, B A, ...)."""
    for turn in rounds:
        yield from (sides if turn % 2 == 0 else list(reversed(sides)))


class Budget:
    """The wall time of one invocation, shared out among its benchmarks by weight.

    A benchmark's share is its weight's part of what is left when it starts, so time one leaves
    unused goes to the next. Within its share a benchmark starts another round of turns only while
    that round (as long as the last one) is expected to end in time; the first round always runs.
    On a machine that other jobs slow down, benchmarks run fewer rounds and say so.
    """

    def __init__(self, seconds: float, weights: dict[str, float]):
        self.end = time.perf_counter() + seconds
        self.weights = dict(weights)
        self.deadline = self.end
        self.cuts: dict[str, tuple[int, int]] = {}
        self.current = ""

    def start(self, name: str) -> None:
        now = time.perf_counter()
        weight = self.weights.pop(name, 0.0)
        total = weight + sum(self.weights.values())
        self.deadline = now + max(0.0, self.end - now) * (weight / total if total > 0 else 1.0)
        self.current = name

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def rounds(self, planned: int, part: float = 1.0) -> Iterator[int]:
        """Round numbers ``0..planned-1``, stopping early when ``part`` of the share would run out."""
        deadline = self.deadline - (1.0 - part) * max(0.0, self.left())
        last = 0.0
        for turn in range(planned):
            begun = time.perf_counter()
            if turn > 0 and begun + last > deadline:
                self.cuts[self.current] = (turn, planned)
                return
            yield turn
            last = time.perf_counter() - begun


def collected() -> None:
    """Start each timed turn from the same state: no garbage left to collect from the last one."""
    gc.collect()


def quiet() -> None:
    """Keep the output to the benchmark's own lines."""
    for name in ("lightning.pytorch", "lightning.fabric", "detlit", "detectron2", "fvcore"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def set_threads(threads: int) -> None:
    """The same number of torch threads for every side (workers and subprocesses are told too)."""
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


def machine() -> dict[str, str]:
    """CPU model, cores, memory and GPU of this machine."""
    info: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    info.setdefault("cpu", platform.processor() or platform.machine())
    info["cores"] = f"{usable_cores()} usable ({os.cpu_count()} in the machine)"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory"] = f"{int(line.split()[1]) / 1024**2:.1f} GiB"
                break
    if torch.cuda.is_available():
        info["gpu"] = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    else:
        info["gpu"] = "none"
    return info


def cpu_seconds() -> tuple[float, float] | None:
    """CPU seconds the whole machine has been busy, and those this process and its reaped children used."""
    try:
        fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0.0] * 8)[:8]
    busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    own = os.times()
    return busy, own.user + own.system + own.children_user + own.children_system


def others_share(before: tuple[float, float] | None, wall: float) -> float | None:
    """The part of the machine's CPU time that other jobs used since ``before`` (0 to 1)."""
    after = cpu_seconds()
    if before is None or after is None or wall <= 0:
        return None
    others = (after[0] - before[0]) - (after[1] - before[1])
    return min(1.0, max(0.0, others / (wall * usable_cores())))


def load_text() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def write_sample_data(folder: Path, scale: Scale) -> Path:
    """The synthetic sample dataset (``detlit.data.sample``) in ``folder``, written once."""
    if not (folder / "train.json").is_file():
        write_sample(folder, train=scale.sample_train, val=scale.sample_val, seed=0)
    return folder


@dataclass
class Context:
    """What the benchmarks of one invocation share: options, sizes, a temporary folder, the sample data."""

    args: argparse.Namespace
    scale: Scale
    tmp: Path
    budget: Budget

    def sample_folder(self) -> Path:
        return write_sample_data(self.tmp / "sample", self.scale)

    def sample_note(self) -> str:
        return f"the synthetic sample (`detlit.data.sample`, {self.scale.sample_train} train images, seed 0)"


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
