"""tools/bench.py at toy sizes: every benchmark writes a row with numbers and a verdict between the
markers, and nothing outside them changes. Timings are never asserted."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from .conftest import REPO

BENCH = REPO / "tools" / "bench.py"
CPU_BENCHMARKS = {
    "train_step",
    "data_loading",
    "metrics",
    "predict",
    "check",
    "startup",
    "scale",
    "deploy",
    "runtimes",
    "small_objects",
}
BEFORE = "# Our numbers\n\nHand-run results, kept as they are.\n\n"
AFTER = "\n## Later\n\nMore hand-run text | with | pipes |\n"


def _bench_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("detlit_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return _bench_module()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``--quick`` into a file with hand-written text around the markers, and ``--gpu --dry-run``
    into a file that does not exist yet; both at once (one thread each)."""
    folder = tmp_path_factory.mktemp("bench")
    quick_out, gpu_out = folder / "BENCHMARKS.md", folder / "gpu" / "BENCHMARKS.md"
    gpu_out.parent.mkdir()
    quick_out.write_text(BEFORE + "<!-- bench:start -->\nold numbers\n<!-- bench:end -->\n" + AFTER)
    commands = {
        "quick": [sys.executable, str(BENCH), "--quick", "--out", str(quick_out)],
        "gpu": [
            sys.executable,
            str(BENCH),
            "--gpu",
            "--dry-run",
            "--only",
            "train_step,predict",
            "--out",
            str(gpu_out),
        ],
    }
    processes = {
        name: subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, command in commands.items()
    }
    outputs = {name: process.communicate(timeout=600) for name, process in processes.items()}
    for name, process in processes.items():
        assert process.returncode == 0, f"{name}: {outputs[name][1][-3000:]}"
    return {"quick": (quick_out, outputs["quick"][0]), "gpu": (gpu_out, outputs["gpu"][0])}


def _section(text: str, start: str, end: str) -> str:
    assert text.count(start) == 1 and text.count(end) == 1
    return text.split(start, 1)[1].split(end, 1)[0]


def _rows(section: str) -> list[list[str]]:
    """The cells of the results table's rows (header and separator left out)."""
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| benchmark | measure | detlit | baseline | ratio | target | result |")
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines[1:]]


def _check_rows(rows: list[list[str]]) -> None:
    for benchmark, measure, detlit, baseline, ratio, target, result in rows:
        assert re.search(r"\d", detlit) and re.search(r"\d", baseline), (benchmark, measure)
        value = float(ratio.removesuffix("x").removesuffix("s"))
        # A ratio is never negative; a difference (a target without a unit: AP sliced - full) may be.
        assert value >= 0 or not target.endswith(("x", "s")), (benchmark, measure, ratio)
        assert re.fullmatch(r"(<=|>=) \S+", target), (benchmark, target)
        assert result in ("PASS", "MISS"), (benchmark, result)


@pytest.mark.cli
def test_quick_run_writes_every_benchmark_between_the_markers(runs: dict[str, Any]) -> None:
    path, stdout = runs["quick"]
    text = path.read_text()
    assert text.startswith(BEFORE + "<!-- bench:start -->\n")
    assert text.endswith("<!-- bench:end -->\n" + AFTER)
    section = _section(text, "<!-- bench:start -->", "<!-- bench:end -->")
    assert "old numbers" not in section
    assert f"--quick --out {path}" in section  # the exact command
    for key in ("- date:", "- machine: cpu ", "- torch threads: 1", "- versions: detlit ", "torch 2."):
        assert key in section, key
    rows = _rows(section)
    assert {row[0] for row in rows} == CPU_BENCHMARKS
    _check_rows(rows)
    # The AP numbers of detlit and pycocotools are compared, and agree.
    ap = next(row for row in rows if row[0] == "metrics" and "AP" in row[1])
    assert ap[6] == "PASS"
    # Small objects: the model trained on tiles is evaluated whole and sliced, and its sliced
    # detections equal SAHI's on the same checkpoint (the speed and AP rows are not asserted).
    small = {row[1]: row for row in rows if row[0] == "small_objects"}
    assert set(small) == {
        "AP_small, sliced - full image",
        "sliced images/s, equal detections",
        "sliced detections against SAHI's, difference / tolerance",
        "slicing overhead, share of sliced time",
    }
    agreement = small["sliced detections against SAHI's, difference / tolerance"]
    assert agreement[6] == "PASS" and re.match(r"\d+ detections, boxes within ", agreement[2])
    assert int(agreement[2].split()[0]) > 0
    assert 0 < float(small["slicing overhead, share of sliced time"][4].removesuffix("x")) < 1
    assert "cut into tiles of 96 px" in section and "`detlit.data.tiling.tile`: 3 images in" in section
    # Runtimes: the float32 exports measured against the checkpoint (int8 needs more val images than
    # --quick has: each refusal is named), and the utilisation of the fastest against the matmul peak.
    runtimes = {row[1]: row for row in rows if row[0] == "runtimes"}
    assert {"onnx images/s, batch 1 (and 8)", "openvino images/s, batch 1 (and 8)"} <= set(runtimes)
    assert "AP +0.0000, AP50 +0.0000" in runtimes["openvino images/s, batch 1 (and 8)"][2]
    utilisation = next(row for measure, row in runtimes.items() if measure.startswith("utilisation"))
    assert 0 < float(utilisation[4]) < 2 and "GFLOP per image" in utilisation[2]
    assert "onnx int8: not written: --int8 checks AP on the validation images" in section
    for name in CPU_BENCHMARKS:
        assert f"### {name}" in section
    # The console table shows the same verdicts.
    assert stdout.count("PASS") + stdout.count("MISS") == len(rows)


@pytest.mark.cli
def test_gpu_dry_run_creates_the_file_with_its_own_markers(runs: dict[str, Any]) -> None:
    path, _ = runs["gpu"]
    text = path.read_text()
    assert text.startswith("# Benchmarks\n")
    assert "<!-- bench:start -->" not in text
    section = _section(text, "<!-- bench-gpu:start -->", "<!-- bench-gpu:end -->")
    assert "dry run" in section
    rows = _rows(section)
    assert [row[0] for row in rows] == ["train_step (GPU)", "predict (GPU)"]
    _check_rows(rows)


def test_write_section_keeps_the_text_around_the_markers(bench: ModuleType, tmp_path: Path) -> None:
    markers = bench.MARKERS["cpu"]
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Mine\n\nno markers yet\n")
    bench.write_section(path, "first\n", markers)
    assert path.read_text() == "# Mine\n\nno markers yet\n\n<!-- bench:start -->\nfirst\n<!-- bench:end -->\n"
    path.write_text(path.read_text() + "\ntail\n")
    bench.write_section(path, "second\n", markers)
    bench.write_section(path, "second\n", bench.MARKERS["gpu"])
    text = path.read_text()
    assert "first" not in text
    assert text.startswith("# Mine\n\nno markers yet\n\n<!-- bench:start -->\nsecond\n<!-- bench:end -->\n\ntail\n")
    assert text.endswith("\n<!-- bench-gpu:start -->\nsecond\n<!-- bench-gpu:end -->\n")


def test_targets_and_rows(bench: ModuleType) -> None:
    at_most, at_least = bench.Target("<=", 1.03), bench.Target(">=", 1.5)
    assert at_most.met(1.03) and not at_most.met(1.031) and not at_most.met(float("nan"))
    assert at_least.met(1.5) and not at_least.met(1.49)
    row = bench.Row("x", "s/step", "1 s", "2 s", 0.5, at_most)
    assert row.cells() == ["x", "s/step", "1 s", "2 s", "0.500x", "<= 1.030x", "PASS"]
    assert list(bench.abba(range(3), ["a", "b"])) == ["a", "b", "b", "a", "a", "b"]
    assert bench.step_seconds([0.0, 1.0, 3.0, 6.0], warmup=1) == [1.0, 2.0, 3.0]
    assert bench.step_seconds([0.0, 1.0, 3.0, 6.0], warmup=2) == [2.0, 3.0]


def test_synthetic_coco_is_seeded_and_sized(bench: ModuleType) -> None:
    data = bench.synthetic_coco(200)
    assert data == bench.synthetic_coco(200)
    assert len(data["images"]) == 200
    assert 5 < len(data["annotations"]) / 200 < 9
    assert all(a["bbox"][2] > 0 and a["bbox"][3] > 0 for a in data["annotations"])


def test_unknown_benchmark_and_missing_gpu_end_in_one_sentence(
    bench: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench.run(bench.parse_args(["--only", "train_step,nope"])) == 2
    assert capsys.readouterr().err.strip() == (
        "unknown benchmark nope; choose from train_step, data_loading, metrics, predict, check, startup, scale, "
        "deploy, runtimes, small_objects"
    )
    if not torch.cuda.is_available():
        assert bench.run(bench.parse_args(["--gpu"])) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no CUDA GPU" in err


def test_budget_shares_time_and_cuts_rounds(bench: ModuleType) -> None:
    budget = bench.Budget(100.0, {"a": 1.0, "b": 3.0})
    budget.start("a")
    assert 24.0 < budget.left() <= 25.0  # a quarter of the whole
    assert list(budget.rounds(3)) == [0, 1, 2]
    budget.start("b")
    assert 99.0 < budget.left() <= 100.0  # the last one gets all that is left, a's unused share too
    spent = bench.Budget(0.0, {"a": 1.0})
    spent.start("a")
    assert list(spent.rounds(3)) == [0]  # the first round always runs
    assert spent.cuts == {"a": (1, 3)}
