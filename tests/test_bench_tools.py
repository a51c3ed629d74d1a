"""The hand-run measurements: learning parity with detectron2's own loop, and the architecture table."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from detlit.model.schedule import lr_factor

from .conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.cli]

MARKERS = ("<!-- bench-learning:start -->", "<!-- bench-learning:end -->")


def test_learning_parity_trains_both_sides_from_the_same_weights_and_resumes(tmp_path: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\nmine\n")
    command = [sys.executable, "tools/bench_learning.py", "--quick", "--data", "sample", "--seeds", "0"]
    command += ["--sides", "detlit,detectron2,detectron2-detlit-lr"]
    command += ["--work", str(work), "--out", str(out), "--threads", "1"]
    first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]

    units = sorted(work.glob("quick/sample/seed0/*/result.json"))
    assert [p.parent.name for p in units] == ["detectron2", "detectron2-detlit-lr", "detlit"]
    for path in units:
        result = json.loads(path.read_text())
        assert result["steps"] == 4 and set(result["stats"]) == {"val", "test"}
        for stats in result["stats"].values():
            assert len(stats) == 12 and all(-1.0 <= v <= 1.0 for v in stats)
    detlit = json.loads(units[2].read_text())
    assert "--model.weights=" in detlit["command"] and "quick/sample/seed0/init.pth" in detlit["command"]

    text = out.read_text()
    assert text.startswith("# Benchmarks\n\nmine\n")
    section = text.split(MARKERS[0], 1)[1].split(MARKERS[1], 1)[0]
    for split in ("val", "test"):
        for side in ("detlit", "detectron2"):
            assert f"| sample | {split} | {side} | 0 |" in section
        assert f"- sample {split}: detlit AP - detectron2 AP = " in section
        assert f"| sample | {split} | detectron2-detlit-lr | 0 |" in section
    assert section.count("detectron2 with detlit's learning-rate schedule - detectron2 = ") == 2

    # The third side is detectron2's loop stepping detlit's schedule (every logged rate is
    # lr_factor's), not detectron2's own: its cosine ends at the step after the last.
    lrs = {}
    for side in ("detectron2", "detectron2-detlit-lr"):
        rows = [json.loads(line) for line in (units[0].parent.parent / side / "metrics.json").read_text().splitlines()]
        lrs[side] = {row["iteration"]: row["lr"] for row in rows}
    assert lrs["detectron2-detlit-lr"] and lrs["detectron2-detlit-lr"].keys() == lrs["detectron2"].keys()
    for step, lr in lrs["detectron2-detlit-lr"].items():
        assert lr == pytest.approx(0.02 * lr_factor(step, 4, warmup_steps=2), abs=1e-9)
    assert lrs["detectron2"][3] == pytest.approx(0.02 * 0.5 * (1 + math.cos(math.pi * 3 / 4)), rel=1e-6)

    # A second run finds every unit finished and trains nothing.
    stamps = {p: p.stat().st_mtime_ns for p in units}
    second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in units} == stamps
    assert "detlit.fit" not in second.stderr


def test_architecture_table_measures_parameters_steps_and_inference(tmp_path: Path) -> None:
    out = tmp_path / "table.md"
    command = [sys.executable, "tools/bench_architectures.py", "--quick", "--threads", "1", "--out", str(out)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| R50-FPN ")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[1] == "`COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml`"
    assert 30 < float(cells[2].removesuffix(" M")) < 50  # R50-FPN for 3 classes: 41 M parameters
    assert all(float(cell.split()[0]) > 0 for cell in cells[3:5]), cells
