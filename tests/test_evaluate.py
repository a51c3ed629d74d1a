"""``python -m detlit.evaluate``: official numbers from a results file, everything from a model."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from pycocotools.coco import COCO

from detlit.evaluate import main as evaluate
from detlit.evaluation.evaluation import Evaluation
from detlit.inference.predictor import Predictor
from detlit.model.detections import Detections
from detlit.model.module import DetectionModule

from .conftest import quiet_trainer, source_stats, tiny_datamodule, tiny_module

COCO_ORDER = ["map", "map50", "map75", "map_small", "map_medium", "map_large"]
COCO_ORDER += ["mar1", "mar10", "mar100", "mar_small", "mar_medium", "mar_large"]


def _run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        evaluate(argv)
    return int(info.value.code or 0)


def test_results_file_reproduces_the_official_numbers(coco_eval_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    code = _run(
        [
            "--results",
            str(coco_eval_dir / "instances_val2014_fakebbox100_results.json"),
            "--json",
            str(coco_eval_dir / "instances_val2014_100.json"),
            "--images",
            str(coco_eval_dir),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    ours = [metrics["coco"][key] for key in COCO_ORDER]
    assert ours == pytest.approx(source_stats(coco_eval_dir / "SOURCE.txt"), abs=1e-12, rel=0)
    assert len(metrics["per_class"]) == 80
    assert {p.name for p in out.iterdir()} >= {"metrics.json", "per_class.csv", "confusion_matrix.png", "pr_curves.png"}


def test_results_of_unknown_categories_are_left_out_as_pycocotools_does(
    coco_eval_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Detections of a category the ground truth lacks change no number (pycocotools ignores
    them) and are counted in one warning."""
    results = json.loads((coco_eval_dir / "instances_val2014_fakebbox100_results.json").read_text())
    extra = [{**result, "category_id": 999} for result in results[:7]]
    path = tmp_path / "with_unknown.json"
    path.write_text(json.dumps(results + extra))
    out = tmp_path / "eval"
    with caplog.at_level("WARNING"):
        args = ["--results", str(path), "--json", str(coco_eval_dir / "instances_val2014_100.json")]
        assert _run([*args, "--images", str(coco_eval_dir), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    ours = [metrics["coco"][key] for key in COCO_ORDER]
    assert ours == pytest.approx(source_stats(coco_eval_dir / "SOURCE.txt"), abs=1e-12, rel=0)
    assert "7 result(s) of category ids the ground truth does not have were left out, as pycocotools" in caplog.text
    assert "999: 7" in caplog.text


@pytest.fixture(scope="module")
def checkpoint(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt")
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=2)
    trainer.fit(tiny_module(), datamodule=tiny_datamodule(sample_dir))
    path = folder / "tiny.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_model_evaluation_writes_everything_and_equals_validation(
    sample_dir: Path, checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    args = ["--ckpt", str(checkpoint), "--json", str(sample_dir / "val.json"), "--images", str(sample_dir / "val")]
    assert _run([*args, "--out", str(out), "--batch-size", "3"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # the same numbers as validation inside training: predictions do not depend on the batch
    module = DetectionModule.load_from_checkpoint(checkpoint, map_location="cpu")
    validated = quiet_trainer().validate(module, datamodule=tiny_datamodule(sample_dir, batch_size=2), verbose=False)[0]
    for key in ("map", "map50", "mar100"):
        assert metrics["coco"][key] == pytest.approx(validated[f"val/{key}"], abs=1e-6), key
    results = json.loads((out / "coco_results.json").read_text())
    assert results and {r["category_id"] for r in results} <= {1, 3, 7}
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(sample_dir / "val.json"))
        loaded = ground_truth.loadRes(str(out / "coco_results.json"))
    assert len(loaded.getAnnIds()) == len(results)
    rows = list(csv.DictReader((out / "per_class.csv").open()))
    assert [r["class"] for r in rows] == ["circle", "square", "triangle"]
    # undefined values (a class never detected has no precision or threshold) are empty cells, as null in json
    metrics_json = json.loads((out / "metrics.json").read_text())
    for row, entry in zip(rows, metrics_json["per_class"], strict=True):
        for key in ("precision", "threshold"):
            assert (row[key] == "") == (entry[key] is None)
        assert "nan" not in row.values() and "inf" not in row.values()
    assert sum(int(r["objects"]) for r in rows) == sum(
        1 for a in json.loads((sample_dir / "val.json").read_text())["annotations"] if not a.get("iscrowd")
    )
    assert _run([*args, "--out", str(out)]) == 2  # an existing result is never overwritten


class _ValidationOutputs(Callback):
    """The detections each validation step hands to callbacks, by image id."""

    def __init__(self) -> None:
        self.found: dict[int, Detections] = {}

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int, index: int = 0
    ) -> None:
        for item, detections in zip(outputs["images"], outputs["detections"], strict=True):
            self.found[int(item["image_id"])] = detections


def test_validation_and_evaluate_find_the_same_detections(sample_dir: Path, checkpoint: Path, tmp_path: Path) -> None:
    """One detection path: validation (Trainer.validate) and python -m detlit.evaluate's library
    function find the same detections of one checkpoint to the last digit, so the same numbers."""
    from detlit.data.checks import load_checked
    from detlit.evaluation.coco_results import coco_results
    from detlit.inference.evaluate import evaluate as evaluate_job
    from detlit.inference.evaluate import predict_dataset

    # Both group images of one shape into batches of 2, so every float operation is the same; other
    # batch sizes change a convolution's rounding (oneDNN: about 1e-5 pixels on a box).
    batch_size = 2
    module = DetectionModule.load_from_checkpoint(checkpoint, map_location="cpu")
    seen = _ValidationOutputs()
    data = tiny_datamodule(sample_dir, batch_size=batch_size)
    quiet_trainer(callbacks=[seen]).validate(module, datamodule=data, verbose=False)
    assert module.last_evaluation is not None
    val_json, val_images = sample_dir / "val.json", sample_dir / "val"
    dataset = load_checked(val_json, val_images, "--images", files=True)
    ids = [record.id for record in dataset.images]
    assert sorted(seen.found) == sorted(ids)
    validated = [seen.found[i] for i in ids]
    assert sum(len(d.scores) for d in validated) > 50  # enough detections to tell two paths apart

    # the detections themselves, unrounded, as the metric gets them
    predictor = Predictor.load(checkpoint, device="cpu", batch_size=batch_size, all_detections=True)
    (preds, _), _, _ = predict_dataset(dataset, predictor)
    for ours, theirs in zip(validated, preds, strict=True):
        for key, value in ours.metric_input().items():
            assert torch.equal(value.cpu(), theirs[key]), key

    # the files evaluate writes: coco_results.json holds validation's detections, metrics.json its numbers
    out = tmp_path / "eval"
    job = {"json_path": val_json, "images": val_images, "out": out, "model": checkpoint, "batch_size": batch_size}
    assert evaluate_job(**job, device="cpu") == 0
    written = json.loads((out / "coco_results.json").read_text())
    assert written == coco_results(validated, ids, module.label_map)
    evaluated = Evaluation.from_json(json.loads((out / "metrics.json").read_text()))
    assert evaluated.to_json() == module.last_evaluation.to_json()


def test_category_ids_round_trip(sample_dir: Path, tmp_path: Path) -> None:
    mapping = {1: 0, 3: 5, 7: 90}
    data = tmp_path / "data"
    shutil.copytree(sample_dir, data)
    for name in ("train.json", "val.json"):
        coco = json.loads((data / name).read_text())
        for category in coco["categories"]:
            category["id"] = mapping[category["id"]]
        for annotation in coco["annotations"]:
            annotation["category_id"] = mapping[annotation["category_id"]]
        (data / name).write_text(json.dumps(coco))
    dm = tiny_datamodule(data)
    assert dm.category_ids == [0, 5, 90]
    module = tiny_module(category_ids=dm.category_ids)
    trainer = quiet_trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "ids.ckpt")
    out = tmp_path / "eval"
    args = ["--ckpt", str(tmp_path / "ids.ckpt"), "--json", str(data / "val.json"), "--images", str(data / "val")]
    assert _run([*args, "--out", str(out)]) == 0
    exported = {r["category_id"] for r in json.loads((out / "coco_results.json").read_text())}
    assert exported and exported <= {0, 5, 90}


def test_thresholds_found_on_validation_are_in_the_checkpoint(checkpoint: Path) -> None:
    module = DetectionModule.load_from_checkpoint(checkpoint, map_location="cpu")
    assert module.score_thresholds is not None and len(module.score_thresholds) == 3
    assert all(0.0 <= t <= 1.0 for t in module.score_thresholds)


# --- one inference path, one results writer, one test stage ---------------------------------------


def _predict(argv: list[str]) -> int:
    from detlit.predict import main as predict

    with pytest.raises(SystemExit) as info:
        predict(argv)
    return int(info.value.code or 0)


def test_predict_and_evaluate_write_the_same_detections(sample_dir: Path, checkpoint: Path, tmp_path: Path) -> None:
    """predictions.json (at the model's own threshold) holds the detections of coco_results.json,
    and evaluating it gives the checkpoint's own numbers."""
    val_json, val_images = sample_dir / "val.json", sample_dir / "val"
    module = DetectionModule.load_from_checkpoint(checkpoint, map_location="cpu")
    own_threshold = str(module.cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST)
    model_eval = tmp_path / "model"
    args = ["--json", str(val_json), "--images", str(val_images), "--device", "cpu"]
    assert _run(["--ckpt", str(checkpoint), *args, "--out", str(model_eval)]) == 0
    predicted = tmp_path / "predicted"
    assert (
        _predict(
            [
                "--ckpt",
                str(checkpoint),
                str(val_images),
                "--out",
                str(predicted),
                "--device",
                "cpu",
                "--score-threshold",
                own_threshold,
            ]
        )
        == 0
    )
    document = json.loads((predicted / "predictions.json").read_text())
    ids = {image["id"]: image["file_name"] for image in document["images"]}
    truth = {image["file_name"]: image["id"] for image in json.loads(val_json.read_text())["images"]}

    def key(result: dict[str, Any]) -> tuple[Any, ...]:
        return result["image_id"], result["category_id"], tuple(result["bbox"]), result["score"]

    from_predict = sorted(key({**a, "image_id": truth[ids[a["image_id"]]]}) for a in document["annotations"])
    from_evaluate = sorted(key(r) for r in json.loads((model_eval / "coco_results.json").read_text()))
    assert from_predict and from_predict == from_evaluate  # identical detections, to the last digit

    # the predictions file evaluates to the checkpoint's numbers, without the images
    results_eval = tmp_path / "results"
    assert (
        _run(["--results", str(predicted / "predictions.json"), "--json", str(val_json), "--out", str(results_eval)])
        == 0
    )
    ours = json.loads((model_eval / "metrics.json").read_text())
    theirs = json.loads((results_eval / "metrics.json").read_text())
    assert theirs["coco"] == ours["coco"] and theirs["per_class"] == ours["per_class"]


def test_the_test_stage_equals_evaluate(sample_dir: Path, checkpoint: Path, tmp_path: Path) -> None:
    """DetectionModule.test_step, with its own metric and test/ keys, gives evaluate's numbers."""
    out = tmp_path / "eval"
    args = ["--ckpt", str(checkpoint), "--json", str(sample_dir / "val.json"), "--images", str(sample_dir / "val")]
    assert _run([*args, "--out", str(out), "--device", "cpu"]) == 0
    evaluated = json.loads((out / "metrics.json").read_text())
    module = DetectionModule.load_from_checkpoint(checkpoint, map_location="cpu")
    thresholds = list(module.score_thresholds or [])
    data = tiny_datamodule(sample_dir, test_json=str(sample_dir / "val.json"), test_images=str(sample_dir / "val"))
    tested = quiet_trainer().test(module, datamodule=data, verbose=False)[0]
    for key in COCO_ORDER:
        value = evaluated["coco"][key]
        assert tested[f"test/{key}"] == pytest.approx(
            value if value is not None else float("nan"), abs=1e-6, nan_ok=True
        )
    for row in evaluated["per_class"]:
        assert tested[f"test/ap/{row['class']}"] == pytest.approx(row["ap"], abs=1e-6)
    assert not any(key.startswith("val/") for key in tested)
    assert module.score_thresholds == thresholds, "testing never changes the thresholds validation chose"
