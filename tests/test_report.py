"""python -m detlit.report: the report of a tiny real run, the findings rules, robustness, and the page in a browser."""

from __future__ import annotations

import base64
import functools
import http.server
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from detlit import report
from detlit.evaluation.cocoeval import COCO_TITLES
from detlit.evaluation.evaluation import LOGGED_PER_CLASS
from detlit.evaluation.matching import Match
from detlit.reporting.advice import (
    CONFUSION_SHARE,
    DROPPED_BOXES_SHARE,
    FEW_INSTANCES,
    LOW_CLASS_AP,
    OVERFIT_VAL_RISE,
    SLICING_AP_GAP,
    SLICING_AP_RATIO,
    SLICING_MIN_GAIN,
    SLICING_MIN_OBJECTS,
    SMALL_AP_RATIO,
    SMALL_OBJECT_SHARE,
    STILL_RISING_GAIN,
    rule_boxes_dropped,
    rule_confusion,
    rule_dataset_errors,
    rule_nonfinite_batches,
    rule_overfitting,
    rule_skipped_images,
    rule_slicing,
    rule_small_objects,
    rule_still_improving,
    rule_unfinished_schedule,
    rule_weak_rare_classes,
)
from detlit.reporting.document import Document, Figure, Table, Text, render_html, render_markdown
from detlit.reporting.examples import ImageOutcome, pick_examples
from detlit.reporting.report import OutputPaths
from detlit.reporting.run_0_2 import parse_run_log
from detlit.reporting.run_reader import locate

from .conftest import REPO, tiny_cli_args


def report_main(args: list[str]) -> int:
    """``python -m detlit.report`` in this process; its exit status."""
    with pytest.raises(SystemExit) as stopped:
        report.main(args)
    return int(stopped.value.code or 0)


SECTIONS = (
    "Run summary",
    "Dataset fingerprint",
    "Findings and recommendations",
    "Final metrics",
    "Per class",
    "Training curves",
    "Precision-recall, F1 and confusion",
    "Best and worst validation images",
    "Dataset statistics",
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_module(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


# --- a tiny real run, made by the commands themselves ------------------------------------------


@pytest.fixture(scope="module")
def trained(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run folder, evaluation folder) of 2 epochs x 3 batches of the tiny model on the sample."""
    cwd = tmp_path_factory.mktemp("report-run")
    config = REPO / "configs" / "sample_cpu.yaml"
    fit = [
        f"--config={config}",
        *tiny_cli_args(sample_dir),
        "--trainer.max_epochs=2",
        "--trainer.limit_train_batches=3",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
    ]
    run_module(["detlit.fit", *fit], cwd)
    folder = cwd / "runs" / "sample" / "version_0"
    evaluate = ["--ckpt", str(folder / "checkpoints" / "last.ckpt"), "--json", str(sample_dir / "val.json")]
    run_module(["detlit.evaluate", *evaluate, "--images", str(sample_dir / "val"), "--out", str(cwd / "eval")], cwd)
    return folder, cwd / "eval"


@pytest.fixture(scope="module")
def written(trained: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> OutputPaths:
    """The report of the tiny run with its evaluation."""
    folder, eval_dir = trained
    out = tmp_path_factory.mktemp("report")
    assert report_main(["--run", str(folder), "--eval", str(eval_dir), "--out", str(out)]) == 0
    return OutputPaths.for_folder(out)


def attributes(html_text: str) -> list[str]:
    """Every src/href/srcset/action/data attribute value of the page."""
    return re.findall(r"""\b(?:src|href|srcset|action|data|poster)\s*=\s*["']([^"']*)["']""", html_text)


@pytest.mark.cli
def test_report_of_a_real_run_is_self_contained(written: OutputPaths) -> None:
    page = written.html.read_text(encoding="utf-8")
    for section in SECTIONS:
        assert f">{section}</h" in page, section
    images = re.findall(r"<img\b[^>]*>", page)
    sources = re.findall(r'<img src="([^"]+)"', page)
    # 4 curve figures, 3 evaluation pictures, 3 best + 3 worst of the 6 validation images
    assert len(images) == len(sources) == 13
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1]).startswith(PNG_MAGIC)
    links = attributes(page)
    assert all(value.startswith(("data:", "#")) for value in links), [v[:40] for v in links if v[:5] != "data:"]
    assert not re.search(r"https?://", page.replace(written.html.parent.as_posix(), ""))
    assert "<script" not in page and "<link" not in page and "url(" not in page and "@import" not in page


@pytest.mark.cli
def test_markdown_copy_links_its_pictures(written: OutputPaths) -> None:
    text = written.markdown.read_text(encoding="utf-8")
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(linked) == 13
    assert all(link.startswith("report_files/") for link in linked)
    files = sorted(p.name for p in written.files.iterdir())
    assert sorted(Path(link).name for link in linked) == files
    for link in linked:
        assert (written.markdown.parent / link).read_bytes().startswith(PNG_MAGIC)
    for section in SECTIONS:
        assert re.search(rf"^#+ {re.escape(section)}$", text, re.MULTILINE), section


@pytest.mark.cli
def test_metrics_come_from_the_evaluation(written: OutputPaths, trained: tuple[Path, Path], sample_dir: Path) -> None:
    _, eval_dir = trained
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    text = written.markdown.read_text(encoding="utf-8")
    assert f"Source: {eval_dir / 'metrics.json'}" in text
    train = json.loads((sample_dir / "train.json").read_text())
    train_objects = {c["name"]: 0 for c in train["categories"]}
    names = {c["id"]: c["name"] for c in train["categories"]}
    for annotation in train["annotations"]:
        train_objects[names[annotation["category_id"]]] += 1

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    for row in metrics["per_class"]:
        values = [row[k] for k in ("ap", "ap50", "precision", "recall", "f1", "threshold")]
        expected = f"| {row['class']} | {train_objects[row['class']]} | {row['objects']} | " + " | ".join(
            cell(v) for v in values
        )
        assert expected in text
    assert f"| AP @[.50:.95] | {metrics['coco']['map']:.3f} |" in text


@pytest.mark.cli
def test_without_eval_the_run_s_metrics_file_gives_the_metrics(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """The report reads the run's own metrics file, not the logger's files; both hold the same values
    at the same steps (the file gets what Lightning hands every logger)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder, _ = trained
    out = tmp_path / "no-eval.html"
    assert report_main(["--run", str(folder), "--out", str(out), "--max-images", "2"]) == 0
    text = out.with_suffix(".md").read_text()
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    accumulator.Reload()
    last = accumulator.Scalars("val/map")[-1]
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    recorded = [(row["step"], row["val/map"]) for row in rows if "val/map" in row]
    assert recorded[-1] == (last.step, pytest.approx(last.value, rel=1e-6))
    assert f"Source: the last validation in metrics.jsonl (step {last.step})" in text
    assert f"| AP @[.50:.95] | {last.value:.3f} |" in text
    # the model ran on 2 images: one best, one worst
    assert "ran on 2 of the 6 validation images" in text
    assert re.search(r"\d+ objects found, \d+ false detections, \d+ objects missed", text)
    assert len(re.findall(r"!\[[^\]]*\]\(no-eval_files/(?:best|worst)_\d\.png\)", text)) == 2


# --- the same report whatever the logger ----------------------------------------------------------

TINY_FIT = ["--trainer.max_epochs=2", "--trainer.limit_train_batches=3", "--trainer.log_every_n_steps=1"]
TINY_FIT += ["--trainer.enable_progress_bar=false"]


def fit_with_logger(sample_dir: Path, cwd: Path, logger: list[str]) -> Path:
    """The run folder of the tiny run of ``trained``, logged by another logger (its command-line options)."""
    config = REPO / "configs" / "sample_cpu.yaml"
    result = run_module(["detlit.fit", f"--config={config}", *tiny_cli_args(sample_dir), *TINY_FIT, *logger], cwd)
    found = re.findall(r"run folder:\s+(\S+)", result.stderr)
    assert found, result.stderr[-3000:]
    return cwd / found[-1]


def outline(text: str) -> tuple[list[str], list[str]]:
    """A report's headings and the names of its pictures."""
    return re.findall(r"^#+ (.+)$", text, re.MULTILINE)[1:], re.findall(r"_files/([\w-]+)\.png\)", text)


def report_without_images(folder: Path, out: Path) -> str:
    assert report_main(["--run", str(folder), "--out", str(out), "--max-images", "0"]) == 0
    return (out / "report.md").read_text()


def assert_metrics_shown(text: str, logged: dict[str, float], names: list[str]) -> None:
    """The report's final and per-class metrics are the last validation's ``logged`` values."""

    def cell(value: float | None) -> str:
        return "-" if value is None or not np.isfinite(value) else f"{value:.3f}"

    for name, title in COCO_TITLES.items():
        assert f"| {title} | {cell(logged[f'val/{name}'])} |" in text, name
    for name in names:
        cells = " | ".join(cell(logged.get(f"val/{key}/{name}")) for key in LOGGED_PER_CLASS)
        assert re.search(rf"^\| {name} \| \d+ \| \d+ \| {re.escape(cells)} \|$", text, re.MULTILINE), name


@pytest.fixture(scope="module")
def tensorboard_report(trained: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> str:
    return report_without_images(trained[0], tmp_path_factory.mktemp("tb-report"))


@pytest.mark.cli
def test_a_run_logged_with_csv_reports_as_with_tensorboard(
    sample_dir: Path, tmp_path: Path, tensorboard_report: str
) -> None:
    import csv

    folder = fit_with_logger(sample_dir, tmp_path, ["--trainer.logger=CSVLogger", "--trainer.logger.save_dir=logs"])
    assert folder == tmp_path / "logs" / "sample" / "version_0"  # the config names the logger "sample"
    assert not list(folder.glob("events.out.tfevents.*"))
    text = report_without_images(folder, tmp_path / "report")
    assert outline(text) == outline(tensorboard_report)
    with (folder / "metrics.csv").open() as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("val/map")]
    logged = {name: float(value) for name, value in rows[-1].items() if name.startswith("val/") and value}
    assert f"Source: the last validation in metrics.jsonl (step {rows[-1]['step']})." in text
    assert_metrics_shown(text, logged, ["circle", "square", "triangle"])


@pytest.fixture()
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """An MLflow tracking server on 127.0.0.1 with a SQLite backend store, as users run one."""
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install -e '.[mlflow]')")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--workers", "1"]
    log_file = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(command, cwd=tmp_path, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the MLflow server did not answer in 120 s"
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        log_file.close()


@pytest.mark.slow
@pytest.mark.cli
def test_a_run_logged_to_an_mlflow_server_reports_as_with_tensorboard(
    sample_dir: Path, tmp_path: Path, mlflow_server: str, tensorboard_report: str
) -> None:
    """MLflow with a tracking server has no local folder: the run folder is
    trainer.default_root_dir/<experiment id>/<run id>, where Lightning puts the checkpoints."""
    from mlflow.tracking import MlflowClient

    logger = ["--trainer.logger=MLFlowLogger", f"--trainer.logger.tracking_uri={mlflow_server}"]
    logger += ["--trainer.logger.experiment_name=detlit-test", "--trainer.default_root_dir=local"]
    folder = fit_with_logger(sample_dir, tmp_path, logger)
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("detlit-test")
    assert experiment is not None
    (found,) = client.search_runs([experiment.experiment_id])
    assert folder == tmp_path / "local" / experiment.experiment_id / found.info.run_id
    assert (folder / "checkpoints" / "last.ckpt").is_file() and (folder / "config.yaml").is_file()
    text = report_without_images(folder, tmp_path / "report")
    assert outline(text) == outline(tensorboard_report)

    # Every value of the run's metrics file reached the server (MLflow drops '@' from names).
    recorded = json.loads((folder / "run.json").read_text())
    assert recorded["logger"] == "lightning.pytorch.loggers.mlflow.MLFlowLogger"
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    names = {name for row in rows for name in row} - {"step", "time"}
    on_server = {name.replace("@", ""): name for name in names}
    assert set(found.data.metrics) == set(on_server)
    last: dict[str, float] = {}
    for key, name in on_server.items():
        history = sorted(client.get_metric_history(found.info.run_id, key), key=lambda m: (m.step, m.timestamp))
        mine = [(row["step"], row[name]) for row in rows if name in row]
        assert [m.step for m in history] == [step for step, _ in mine], name
        served = [m.value if abs(m.value) < sys.float_info.max else m.value * math.inf for m in history]
        # (MLflow keeps an infinity, a class's threshold when it has none, as the largest float)
        assert served == pytest.approx([float(value) for _, value in mine], rel=1e-6, nan_ok=True), name
        last[name] = served[-1]
    step = max(m.step for m in client.get_metric_history(found.info.run_id, "val/map"))
    assert f"Source: the last validation in metrics.jsonl (step {step})." in text
    assert_metrics_shown(text, last, ["circle", "square", "triangle"])


# --- synthetic run folders: robustness without training ----------------------------------------

RUN_LOG = """\
2026-01-02 10:00:00,000 INFO detlit: command: python -m detlit.fit --config my.yaml
2026-01-02 10:00:00,001 INFO detlit: environment:
detlit                   0.1.0
cpu cores                8
cuda available           True
gpus                     2 x NVIDIA H100
torch                    2.14.1
2026-01-02 10:00:00,002 INFO detlit: model hyper-parameters: {'num_classes': 2, 'class_names': ['cat', 'dog'], \
'category_ids': [1, 2]}
2026-01-02 11:02:03,500 INFO detlit: training finished
"""


def write_run(
    folder: Path, scalars: dict[str, list[tuple[int, float]]], data: dict[str, Any] | None = None, log: bool = True
) -> Path:
    """A run folder with config.yaml, run.log and an event file holding ``scalars``; no checkpoint."""
    from torch.utils.tensorboard import SummaryWriter

    folder.mkdir(parents=True)
    config = {"trainer": {"accelerator": "cpu", "max_epochs": 3}, "data": data or {}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    if log:
        (folder / "run.log").write_text(RUN_LOG)
    writer = SummaryWriter(str(folder))
    for tag, series in scalars.items():
        for step, value in series:
            writer.add_scalar(tag, value, step)
    writer.close()
    return folder


def sample_data(sample_dir: Path) -> dict[str, str]:
    return {
        "train_json": str(sample_dir / "train.json"),
        "train_images": str(sample_dir / "train"),
        "val_json": str(sample_dir / "val.json"),
        "val_images": str(sample_dir / "val"),
    }


TRAIN_ONLY = {
    "train/loss": [(step, 2.0 - 0.1 * step) for step in range(10)],
    "train/loss_cls": [(step, 1.0 - 0.05 * step) for step in range(10)],
    "epoch": [(step, step // 5) for step in range(10)],
}


def test_run_without_validation_or_checkpoint(sample_dir: Path, tmp_path: Path) -> None:
    folder = write_run(tmp_path / "runs" / "x" / "version_0", TRAIN_ONLY, sample_data(sample_dir))
    assert report_main(["--run", str(folder)]) == 0
    text = (folder / "report.md").read_text()
    assert "No validation metrics" in text
    assert "No validation scalars in the event files" in text
    assert f"No example images: no checkpoint in {folder / 'checkpoints'}" in text
    assert "| duration (first to last line of run.log) | 1 h 02 min 03 s |" in text
    assert "| gpus | 2 x NVIDIA H100 |" in text
    assert "| optimizer steps | 10 |" in text
    page = (folder / "report.html").read_text()
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == 1  # the loss curves only


def test_data_that_moved_is_named_not_fatal(tmp_path: Path) -> None:
    data = {"train_json": str(tmp_path / "gone" / "train.json"), "train_images": str(tmp_path / "gone")}
    folder = write_run(tmp_path / "run", TRAIN_ONLY, data, log=False)
    assert report_main(["--run", str(folder)]) == 0
    text = (folder / "report.md").read_text()
    assert f"data.train_json {tmp_path / 'gone' / 'train.json'} was not found" in text
    assert "the run's config names no data.val_json" in text
    # without run.log the versions are this machine's
    assert "versions (of this machine: run.log records none)" in text


def test_a_json_that_is_not_coco_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    folder = write_run(tmp_path / "run", TRAIN_ONLY, {"train_json": str(bad), "train_images": str(tmp_path)})
    assert report_main(["--run", str(folder)]) == 0
    assert "the train json could not be checked: " in (folder / "report.md").read_text()


def test_findings_in_a_report_name_their_numbers(sample_dir: Path, tmp_path: Path) -> None:
    scalars = {
        "train/loss": [(s, 1.0 - 0.008 * s) for s in range(0, 100, 5)],
        "val/loss": [(24, 0.9), (49, 0.6), (74, 0.7), (99, 0.8)],
        "val/map": [(24, 0.10), (49, 0.20), (74, 0.19), (99, 0.18)],
        "train/skipped_images": [(24, 0.0), (49, 3.0)],
    }
    folder = write_run(tmp_path / "run", scalars, sample_data(sample_dir), log=False)
    assert report_main(["--run", str(folder), "--max-images", "0"]) == 0
    text = (folder / "report.md").read_text()
    assert "**Over-fitting: the train/val loss gap grows.** val/loss rose 33% from its lowest 0.600 (step 49)" in text
    assert "**Images skipped as unreadable.** up to 3 training images per epoch" in text
    assert "Validation metrics still rising" not in text
    assert "Nothing alarming" not in text


def large_images_with_small_objects(root: Path, images: int = 3) -> Path:
    """A COCO json (no image files) of 4000 x 3000 photos, each with 10 cars of 20 x 20 px (COCO
    small) and 10 buildings of 200 x 200 px (COCO large)."""
    records, annotations = [], []
    for i in range(1, images + 1):
        records.append({"id": i, "file_name": f"{i}.jpg", "width": 4000, "height": 3000})
        for k in range(20):
            side, category = (20, 1) if k < 10 else (200, 2)
            box = [100 + 190 * k, 100 + 100 * i, side, side]
            annotations.append(
                {"id": len(annotations) + 1, "image_id": i, "category_id": category, "bbox": box, "area": side * side}
            )
    path = root / "drone.json"
    root.mkdir(parents=True, exist_ok=True)
    categories = [{"id": 1, "name": "car"}, {"id": 2, "name": "building"}]
    path.write_text(json.dumps({"images": records, "annotations": annotations, "categories": categories}))
    return path


def test_a_report_names_slicing_when_small_objects_are_shrunk_and_missed(tmp_path: Path) -> None:
    val = large_images_with_small_objects(tmp_path / "data")
    data = {"train_json": str(val), "train_images": "photos", "val_json": str(val), "val_images": "photos"}
    data |= {"min_size_test": 800, "max_size_test": 1333}
    scalars = {"val/map": [(10, 0.35)], "val/map_small": [(10, 0.05)], "val/map_large": [(10, 0.6)]}
    folder = write_run(tmp_path / "runs" / "drone" / "version_0", scalars, data, log=False)
    assert report_main(["--run", str(folder), "--max-images", "0"]) == 0
    text = (folder / "report.md").read_text()
    assert "**Small objects found far worse than large ones: slice.**" in text
    assert "AP_small is 0.050 against AP_large 0.600 (30 small and 30 large validation objects)" in text
    assert "leaves the small objects a median of 5.3 px, and in tiles of 640 px they would be 25.0 px" in text
    assert f"`python -m detlit.evaluate --ckpt CHECKPOINT --json {val} --images photos --slice 640" in text
    assert f"`python -m detlit.tile --json {val} --images photos --out tiles --size 640`" in text
    # the same numbers on photos the resize does not shrink: tiles would change nothing, no finding
    shutil.rmtree(folder)
    write_run(folder, scalars, {**data, "min_size_test": 3000, "max_size_test": 4000}, log=False)
    assert report_main(["--run", str(folder), "--max-images", "0", "--overwrite"]) == 0
    assert "found far worse than large ones" not in (folder / "report.md").read_text()


def test_an_existing_report_is_kept_unless_overwrite(
    sample_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_run(tmp_path / "run", TRAIN_ONLY, sample_data(sample_dir))
    assert report_main(["--run", str(folder)]) == 0
    first = (folder / "report.html").read_text()
    stale = folder / "report_files" / "stale.png"
    stale.write_bytes(PNG_MAGIC)
    with pytest.raises(SystemExit) as stopped:
        report.main(["--run", str(folder)])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        error
        == f"error: {folder / 'report.html'} already exists; choose another --out, or pass --overwrite to replace it"
    )
    assert (folder / "report.html").read_text() == first
    assert report_main(["--run", str(folder), "--overwrite"]) == 0
    assert not stale.exists() and (folder / "report_files" / "curves_losses.png").is_file()


@pytest.mark.parametrize("kind", ["empty", "missing", "parent"])
def test_not_a_run_folder_is_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    target = tmp_path / "folder"
    if kind == "empty":
        target.mkdir()
        expected = (
            f"error: --run {target} is not a detlit run folder: it has no run.json, config.yaml, run.log or "
            "TensorBoard event file"
        )
    elif kind == "missing":
        expected = f"error: --run {target} is not a folder; pass a run folder such as runs/<name>/version_<n>"
    else:
        for version in (0, 2, 10):
            write_run(target / f"version_{version}", TRAIN_ONLY, log=False)
        expected = (
            f"error: --run {target} is not a detlit run folder: it has no run.json, config.yaml, run.log or "
            f"TensorBoard event file (it holds 3 runs: pass one of them, e.g. --run {target / 'version_10'})"
        )
    with pytest.raises(SystemExit) as stopped:
        report.main(["--run", str(target)])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == expected
    assert not (target / "report.html").exists()


def test_eval_folder_without_metrics_is_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_run(tmp_path / "run", TRAIN_ONLY, log=False)
    (tmp_path / "eval").mkdir()
    with pytest.raises(SystemExit) as stopped:
        report.main(["--run", str(folder), "--eval", str(tmp_path / "eval")])
    assert stopped.value.code == 2
    assert "has no metrics.json; pass the --out folder of python -m detlit.evaluate" in capsys.readouterr().err


def test_out_is_a_folder_and_an_html_name_still_works(tmp_path: Path) -> None:
    folder = write_run(tmp_path / "run", TRAIN_ONLY, log=False)
    assert report_main(["--run", str(folder), "--out", str(tmp_path / "reports"), "--max-images", "0"]) == 0
    assert {p.name for p in (tmp_path / "reports").iterdir()} == {"report.html", "report.md", "report_files"}
    # detlit 0.1 named the HTML file itself
    assert report_main(["--run", str(folder), "--out", str(tmp_path / "old" / "mine.html"), "--max-images", "0"]) == 0
    assert {p.name for p in (tmp_path / "old").iterdir()} == {"mine.html", "mine.md", "mine_files"}
    (tmp_path / "file").write_text("not a folder")
    assert report_main(["--run", str(folder), "--out", str(tmp_path / "file"), "--max-images", "0"]) == 2


def test_relative_data_paths_are_found_from_the_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a run trained in project/ with data/train.json, reported from elsewhere
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "train.json").write_text("{}")
    run = project / "runs" / "x" / "version_0"
    run.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert locate("data/train.json", list(run.resolve().parents)) == project / "data" / "train.json"
    assert locate("data/other.json", list(run.resolve().parents)) is None
    assert locate(None, []) is None


def test_parse_run_log() -> None:
    info = parse_run_log(RUN_LOG)
    assert info.command == "python -m detlit.fit --config my.yaml"
    assert info.environment == {
        "detlit": "0.1.0",
        "cpu cores": "8",
        "cuda available": "True",
        "gpus": "2 x NVIDIA H100",
        "torch": "2.14.1",
    }
    assert info.model_hparams["class_names"] == ["cat", "dog"]
    assert info.started is not None and info.ended is not None
    assert (info.ended - info.started).total_seconds() == 3723


# --- findings rules: one case that triggers, one that does not ----------------------------------


def test_rule_weak_rare_classes() -> None:
    found = rule_weak_rare_classes({"cat": 0.6, "dog": 0.1}, {"cat": 500, "dog": 20})
    assert found is not None and "'dog': AP 0.100 with 20 training objects" in found.evidence
    assert "'cat'" not in found.evidence
    # a low AP with many objects, and few objects with a high AP, are not this finding
    assert rule_weak_rare_classes({"cat": 0.6, "dog": 0.1}, {"cat": 500, "dog": 400}) is None
    assert rule_weak_rare_classes({"cat": 0.6, "dog": 0.55}, {"cat": 500, "dog": 20}) is None
    assert LOW_CLASS_AP > 0.1 and FEW_INSTANCES > 20


def test_rule_small_objects() -> None:
    sizes = {"small": 50, "medium": 40, "large": 10}
    found = rule_small_objects(sizes, map_all=0.5, map_small=0.2, min_size_test=800)
    assert found is not None
    assert "50% of the training objects are small" in found.evidence and "AP_small is 0.200" in found.evidence
    assert "now 800" in found.advice
    assert rule_small_objects({"small": 10, "medium": 80, "large": 10}, 0.5, 0.2) is None
    assert rule_small_objects(sizes, 0.5, 0.5 * SMALL_AP_RATIO + 0.01) is None
    assert rule_small_objects(sizes, 0.5, float("nan")) is None
    assert SMALL_OBJECT_SHARE <= 0.5


def slicing(**changes: Any) -> Any:
    """:func:`rule_slicing` on a drone-like case (small objects shrunk to 5 px, 25 px in tiles), with ``changes``."""
    numbers: dict[str, Any] = {
        "map_small": 0.10,
        "map_large": 0.60,
        "small_objects": 150,
        "large_objects": 40,
        "tile": 640,
        "resized_side": 5.3,
        "sliced_side": 25.0,
        "min_size_test": 800,
        "command": "python -m detlit.evaluate --ckpt best.ckpt --json val.json --images val --slice 640",
        "tile_command": "python -m detlit.tile --json train.json --images train --out tiles --size 640",
    }
    return rule_slicing(**{**numbers, **changes})


def test_rule_slicing() -> None:
    found = slicing()
    assert found is not None and found.rule == "slicing"
    assert "AP_small is 0.100 against AP_large 0.600 (150 small and 40 large validation objects)" in found.evidence
    assert "min_size_test 800 leaves the small objects a median of 5.3 px, and in tiles of 640 px" in found.evidence
    assert "`python -m detlit.evaluate --ckpt best.ckpt --json val.json --images val --slice 640`" in found.advice
    assert "`python -m detlit.tile --json train.json --images train --out tiles --size 640`" in found.advice
    # AP_small against half of AP_large: 0.29 fires, 0.31 does not (the gap, 0.31 and 0.29, is no limit here)
    assert slicing(map_small=0.29) is not None
    assert slicing(map_small=SLICING_AP_RATIO * 0.6 + 0.01) is None
    # the gap: AP_large 0.3 and AP_small 0.09 (gap 0.21) fire; 0.11 (gap 0.19) does not, though under half
    assert slicing(map_large=0.3, map_small=0.09) is not None
    assert slicing(map_large=0.3, map_small=0.3 - SLICING_AP_GAP + 0.01) is None
    # enough objects of each size for the two APs to mean something
    assert slicing(small_objects=SLICING_MIN_OBJECTS) is not None
    assert slicing(small_objects=SLICING_MIN_OBJECTS - 1) is None
    assert slicing(large_objects=SLICING_MIN_OBJECTS) is not None
    assert slicing(large_objects=SLICING_MIN_OBJECTS - 1) is None
    # no small (or no large) object: COCOeval's -1, read as NaN
    assert slicing(map_small=float("nan")) is None and slicing(map_large=float("nan")) is None
    # tiles must show the small objects larger: 1.5x fires, less does not (COCO's enlarged photos: 1x)
    assert slicing(sliced_side=SLICING_MIN_GAIN * 5.3) is not None
    assert slicing(sliced_side=SLICING_MIN_GAIN * 5.3 - 0.01) is None
    assert slicing(sliced_side=5.3) is None
    assert SLICING_AP_RATIO == 0.5 and SLICING_AP_GAP == 0.2


def test_rule_overfitting() -> None:
    train = [(s, 1.0 - 0.008 * s) for s in range(0, 100, 5)]
    found = rule_overfitting(train, [(24, 0.8), (49, 0.6), (74, 0.7), (99, 0.75)])
    assert found is not None
    assert "val/loss rose 25% from its lowest 0.600 (step 49) to 0.750 (step 99)" in found.evidence
    assert rule_overfitting(train, [(24, 0.8), (49, 0.6), (74, 0.55), (99, 0.5)]) is None
    # a rise below the threshold, and a train loss rising too (not over-fitting), do not count
    assert rule_overfitting(train, [(24, 0.8), (49, 0.6), (74, 0.6), (99, 0.6 * (1 + OVERFIT_VAL_RISE / 2))]) is None
    rising = [(s, 0.2 + 0.008 * s) for s in range(0, 100, 5)]
    assert rule_overfitting(rising, [(24, 0.8), (49, 0.6), (74, 0.7), (99, 0.75)]) is None


def test_rule_still_improving() -> None:
    found = rule_still_improving([(10, 0.10), (20, 0.20), (30, 0.25), (40, 0.30)])
    assert found is not None and "val/map rose from 0.200 (step 20) to 0.300 (step 40)" in found.evidence
    assert rule_still_improving([(10, 0.10), (20, 0.30), (30, 0.30), (40, 0.301)]) is None  # flattened out
    assert rule_still_improving([(10, 0.10), (20, 0.30), (30, 0.25), (40, 0.28)]) is None  # not at its best
    assert rule_still_improving([(10, 0.1), (20, 0.1 + STILL_RISING_GAIN / 2)]) is None


@pytest.mark.cli
def test_objects_are_counted_in_the_split_evaluated_and_the_test_split_is_reported(
    sample_dir: Path, tmp_path: Path
) -> None:
    """Evaluated on the test json, the per-class table counts the test split's objects (and says so);
    the test split has its fingerprint and its column of statistics."""
    test_json = tmp_path / "test.json"
    coco = json.loads((sample_dir / "val.json").read_text())
    coco["annotations"] = coco["annotations"][: len(coco["annotations"]) // 2]  # other counts than val
    test_json.write_text(json.dumps(coco))
    fit = [
        f"--config={REPO / 'configs' / 'sample_cpu.yaml'}",
        *tiny_cli_args(sample_dir),
        f"--data.test_json={test_json}",
        f"--data.test_images={sample_dir / 'val'}",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
    ]
    run_module(["detlit.fit", *fit], tmp_path)
    folder = tmp_path / "runs" / "sample" / "version_0"
    evaluate = ["--ckpt", str(folder / "checkpoints" / "last.ckpt"), "--json", str(test_json)]
    run_module(
        ["detlit.evaluate", *evaluate, "--images", str(sample_dir / "val"), "--out", str(tmp_path / "eval")], tmp_path
    )
    assert report_main(["--run", str(folder), "--eval", str(tmp_path / "eval"), "--out", str(tmp_path / "r")]) == 0
    text = (tmp_path / "r" / "report.md").read_text()
    assert "| class | training objects | test objects | AP |" in text
    counts = Counter(a["category_id"] for a in coco["annotations"])
    trained_on = Counter(a["category_id"] for a in json.loads((sample_dir / "train.json").read_text())["annotations"])
    assert f"| circle | {trained_on[1]} | {counts[1]} |" in text
    assert f"| test | {test_json} | " in text  # the fingerprint row
    assert "|  | train | val | test |" in text  # the statistics' columns


def test_rule_unfinished_schedule() -> None:
    command = "python -m detlit.fit --config run/config.yaml --ckpt run/checkpoints/last.ckpt"
    lr = [(0, 0.0), (100, 0.02), (400, 0.019)]
    found = rule_unfinished_schedule("max_time", 400, 1200, 1, 3, lr, command)
    assert found is not None and found.rule == "unfinished_schedule"
    assert "stopped by trainer.max_time (400 of 1,200 planned optimizer steps, 1 of 3 epochs)" in found.evidence
    assert "The learning rate at the end was 0.019, 95% of the schedule's peak (0.02)." in found.evidence
    assert f"with a longer --trainer.max_time: `{command}`" in found.advice
    early = rule_unfinished_schedule("early_stopping", 900, 1200, 6, 8, [], command)
    assert early is not None and "set trainer.max_epochs to about 6" in early.advice
    killed = rule_unfinished_schedule(None, 300, 1200, 2, 8, [], command)
    assert killed is not None and "left no record" in killed.evidence
    diverged = rule_unfinished_schedule("diverged", 40, 1200, 0, 8, lr, command)
    assert diverged is not None and "lower the learning rate" in diverged.advice and command not in diverged.advice
    assert rule_unfinished_schedule("max_epochs", 1200, 1200, 8, 8, lr, command) is None
    assert rule_unfinished_schedule("max_steps", 500, 500, 3, 8, lr, command) is None  # max_steps is the plan


@pytest.mark.cli
def test_a_run_stopped_by_max_time_is_reported_as_unfinished(sample_dir: Path, tmp_path: Path) -> None:
    """A real run cut by trainer.max_time: run.log and the report say the schedule did not finish,
    and that finding comes first, with the command that continues."""
    fit = [
        f"--config={REPO / 'configs' / 'sample_cpu.yaml'}",
        *tiny_cli_args(sample_dir),
        "--trainer.max_epochs=500",
        "--trainer.max_time=00:00:00:05",
        "--trainer.check_val_every_n_epoch=1",
        "--trainer.limit_val_batches=1",
    ]
    result = run_module(["detlit.fit", *fit], tmp_path)
    assert "training stopped by max time after " in result.stderr
    assert "the learning-rate schedule did not finish; continue with --ckpt last" in result.stderr
    folder = tmp_path / "runs" / "sample" / "version_0"
    assert report_main(["--run", str(folder)]) == 0
    text = (folder / "report.md").read_text()
    findings = text[text.index("## Findings and recommendations") :].split("\n- ")
    assert findings[1].startswith("**The learning-rate schedule did not finish.**"), findings[:3]
    assert (
        "Training stopped by trainer.max_time (" in findings[1] and " of 2,500 planned optimizer steps" in findings[1]
    )
    # (the learning-rate sentence needs logged rates: on a busy machine 5 s may hold a step or two)
    assert f"--ckpt {folder / 'checkpoints' / 'last.ckpt'}" in text
    assert "| stopped by | trainer.max_time reached |" in text


def test_rule_boxes_dropped() -> None:
    found = rule_boxes_dropped([(10, 5.0), (20, 7.0)], train_objects=100)
    assert found is not None and "12 boxes in 2 epochs, 6.0 per epoch: 6.0% of the 100" in found.evidence
    assert rule_boxes_dropped([(10, 0.0), (20, 0.0)], 100) is None
    assert rule_boxes_dropped([(10, 1000 * DROPPED_BOXES_SHARE / 2)], 1000) is None
    assert rule_boxes_dropped([(10, 2.0)], None) is not None


def test_rule_confusion() -> None:
    counts = [[6, 4, 0], [0, 10, 0], [0, 0, 0]]
    found = rule_confusion(["cat", "dog"], counts)
    assert found is not None and found.title == "'cat' mistaken for 'dog'"
    assert "4 of the 10 'cat' objects (40%)" in found.evidence
    assert rule_confusion(["cat", "dog"], [[9, 1, 0], [0, 10, 0], [0, 0, 0]]) is None  # 1 object only
    share = int(100 * CONFUSION_SHARE) - 1  # just under the share, with enough objects
    assert rule_confusion(["cat", "dog"], [[100 - share, share, 0], [0, 10, 0], [0, 0, 0]]) is None
    # the background column (missed objects) is not a confusion between classes
    assert rule_confusion(["cat", "dog"], np.array([[2, 0, 8], [0, 10, 0], [5, 5, 0]])) is None


def test_rule_skipped_images() -> None:
    found = rule_skipped_images([(1, 0.0), (2, 2.0)], [(1, 1.0)])
    assert found is not None and "up to 2 training images per epoch" in found.evidence
    assert "and 1 validation images per validation" in found.evidence
    assert rule_skipped_images([(1, 0.0)], [(1, 0.0)]) is None
    assert rule_skipped_images([], []) is None


def test_rule_nonfinite_batches() -> None:
    found = rule_nonfinite_batches([(1, 1.0), (2, 2.0)])
    assert found is not None and found.evidence.startswith("3 batches")
    assert rule_nonfinite_batches([(1, 0.0)]) is None


def test_rule_dataset_errors() -> None:
    found = rule_dataset_errors({"train missing_file": 2, "val bad_bbox": 1})
    assert found is not None and "3 errors: train missing_file x2, val bad_bbox x1" in found.evidence
    assert rule_dataset_errors({}) is None


# --- pieces -------------------------------------------------------------------------------------


def outcome(image_id: int, tp: int, fp: int, fn: int) -> ImageOutcome:
    from detlit.data.coco import ImageRecord

    empty = np.zeros((0, 4))
    none = np.zeros(0)
    found = np.r_[np.ones(tp, bool), np.zeros(fp, bool)]
    match = Match(
        kept=np.ones(tp + fp, bool),
        tp=found,
        ignored=np.zeros(tp + fp, bool),
        gt_of=np.r_[np.arange(tp), -np.ones(fp, np.int64)],
        gt_ignored=np.zeros(tp + fn, bool),
    )
    assert (match.tp.sum(), match.fp.sum(), match.missed().sum()) == (tp, fp, fn)
    return ImageOutcome(ImageRecord(image_id, f"{image_id}.jpg", 10, 10), empty, none, none, empty, none, none, match)


def test_pick_examples_ranks_by_errors_then_f1() -> None:
    outcomes = [outcome(1, 5, 0, 0), outcome(2, 0, 4, 3), outcome(3, 2, 1, 1), outcome(4, 0, 0, 0), outcome(5, 1, 0, 6)]
    best, worst = pick_examples(outcomes, 2)
    assert [o.record.id for o in worst] == [2, 5]  # 7 errors each; F1 0 before F1 0.25
    # a perfect image without objects comes after images with objects
    assert [o.record.id for o in best] == [1, 3]
    best, worst = pick_examples(outcomes[:3], 2)  # too few images: split them
    assert len(best) == len(worst) == 1


def test_renderers_escape_their_text() -> None:
    document = Document(
        "a <report>",
        "sub",
        [Text("x < y and `a|b`"), Table(["k", "v"], [["a|b", "<i>"]]), Figure("f", PNG_MAGIC, "cap")],
    )
    page = render_html(document)
    assert "<title>a &lt;report&gt;</title>" in page
    assert "x &lt; y and <code>a|b</code>" in page and "<td>&lt;i&gt;</td>" in page
    assert f'src="data:image/png;base64,{base64.b64encode(PNG_MAGIC).decode()}"' in page
    text = render_markdown(document, "files")
    assert "| a\\|b | <i> |" in text and "![cap](files/f.png)" in text


# --- the page in a real browser ------------------------------------------------------------------


class Browser:
    """Headless Chromium driven by chromedriver's W3C HTTP API (no Python client needed)."""

    def __init__(self, profile: Path):
        chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
        assert chromium and driver
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [driver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.call("GET", "/status")["ready"]:
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        arguments = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--window-size=1200,3000",
        ]
        capabilities = {
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {"binary": chromium, "args": arguments},
        }
        self.session = self.call("POST", "/session", {"capabilities": {"alwaysMatch": capabilities}})["sessionId"]

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())["value"]

    def open(self, path: Path) -> None:
        self.call("POST", f"/session/{self.session}/url", {"url": path.resolve().as_uri()})

    def run(self, script: str) -> Any:
        return self.call("POST", f"/session/{self.session}/execute/sync", {"script": script, "args": []})

    def log(self) -> list[dict[str, Any]]:
        """Console messages and failed loads since the last call."""
        entries: list[dict[str, Any]] = self.call("POST", f"/session/{self.session}/se/log", {"type": "browser"})
        return entries

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("GET", f"/session/{self.session}/screenshot")))

    def close(self) -> None:
        try:
            self.call("DELETE", f"/session/{self.session}")
        finally:
            self.process.terminate()
            self.process.wait(timeout=30)


@pytest.fixture()
def browser(tmp_path: Path) -> Iterator[Browser]:
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    instance = Browser(tmp_path / "profile")
    yield instance
    instance.close()


PAGE_STATE = """
return {
  images: document.images.length,
  loaded: [...document.images].filter(i => i.complete && i.naturalWidth > 0).length,
  requests: performance.getEntriesByType('resource').map(e => e.name),
  sections: [...document.querySelectorAll('h2')].map(h => h.textContent),
  title: document.title,
};
"""


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture()
def web_server(tmp_path: Path) -> Iterator[str]:
    """A local HTTP server of tmp_path, for a page that does make a request."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=tmp_path))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


@pytest.mark.slow
@pytest.mark.cli
def test_report_opens_offline_in_a_browser(
    written: OutputPaths, browser: Browser, web_server: str, tmp_path: Path
) -> None:
    # The checks catch what they look for: on a control page, a picture fetched from a server, a
    # missing one, and a console error.
    (tmp_path / "served.png").write_bytes(written.files.joinpath("curves_losses.png").read_bytes())
    control = tmp_path / "control.html"
    control.write_text(
        f'<html><body><img src="{web_server}/served.png"><img src="missing.png">'
        '<script>console.error("boom")</script></body></html>'
    )
    browser.open(control)
    state = browser.run(PAGE_STATE)
    assert (state["images"], state["loaded"], state["requests"]) == (2, 1, [f"{web_server}/served.png"])
    assert sorted(entry["source"] for entry in browser.log()) == ["console-api", "network"]

    browser.open(written.html)
    state = browser.run(PAGE_STATE)
    assert state["images"] == 13 and state["loaded"] == 13
    assert state["requests"] == []  # data: pictures only: the page asked nothing of any server
    assert [s for s in SECTIONS if s not in ("Dataset fingerprint", "Per class")] == state["sections"]
    assert state["title"] == "Training report: sample/version_0"
    assert browser.log() == []  # no console message, no failed load
    shot = tmp_path / "report.png"
    browser.screenshot(shot)
    assert shot.read_bytes().startswith(PNG_MAGIC)


@pytest.mark.cli
def test_per_image_counts_add_up_to_the_metrics_counts(trained: tuple[Path, Path], sample_dir: Path) -> None:
    """The report judges images with the metric's own matcher: summed over images, its true and false
    positives and missed objects are the metric's counts at the same IoU and thresholds."""
    from detlit.data.coco import load_coco
    from detlit.reporting.examples import run_examples

    folder, _ = trained
    dataset = load_coco(sample_dir / "val.json", sample_dir / "val")
    first = run_examples(folder / "checkpoints" / "last.ckpt", dataset, 100, "cpu", thresholds=[0.05, 0.1, 0.2])
    evaluation = first.evaluation
    assert evaluation is not None and len(first.outcomes) == len(dataset.images)
    at_best = evaluation.best.thresholds.tolist()  # inf: a class that keeps no detection
    best = run_examples(folder / "checkpoints" / "last.ckpt", dataset, 100, "cpu", at_best)
    for examples, expected in ((first, evaluation.counts_at(first.thresholds)), (best, evaluation.best)):
        classes = len(examples.class_names)
        tp = sum(np.bincount(o.labels[o.match.tp], minlength=classes) for o in examples.outcomes)
        fp = sum(np.bincount(o.labels[o.match.fp], minlength=classes) for o in examples.outcomes)
        fn = sum(np.bincount(o.gt_labels[o.match.missed()], minlength=classes) for o in examples.outcomes)
        np.testing.assert_array_equal(tp, expected.tp)
        np.testing.assert_array_equal(fp, expected.fp)
        np.testing.assert_array_equal(fn, expected.fn)
        assert sum(o.tp + o.fp for o in examples.outcomes) > 0, "the check needs detections"
