"""The error breakdown (``detlit.evaluation.error_breakdown``): equal to tidecv and to hand-computed
numbers, written into metrics.json by evaluate, shown and turned into a finding by the report.

tidecv 1.0.1 (the dev extra; installed with ``--no-deps`` by the Makefile) is the oracle: its
``TIDE.evaluate`` on the same ground truth and detections, its main and special errors over all
classes, and per class its ``TIDERun.fix_errors`` of each type. It runs as released on numpy 2:
nothing of it is patched. AP is in 0-1 units here and 0-100 in tidecv.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from detlit.data.coco import load_coco
from detlit.evaluation.coco_results import read_results
from detlit.evaluation.error_breakdown import MAIN_TYPES, SPECIAL_TYPES, TYPES, ErrorBreakdown
from detlit.evaluation.evaluation import Evaluation
from detlit.evaluation.matching import DetectionArrays
from detlit.evaluation.metric import DetectionMetrics
from detlit.reporting.advice import ERROR_MIN_DAP, rule_error_breakdown
from detlit.reporting.run_reader import read_eval

from .conftest import REPO, tiny_cli_args

tidecv = pytest.importorskip("tidecv", reason="tidecv is the oracle: pip install -e '.[dev]' (make installs it)")
from tidecv import TIDE, Data, datasets  # noqa: E402

# tidecv's error classes by the short name detlit uses for the type
TIDE_TYPES = {cls.short_name: cls for cls in TIDE._error_types}
EXACT = 1e-12  # both sum the same numbers; only the order of a sum differs


# --- the oracle -------------------------------------------------------------------------------------


def tide_numbers(gt: Any, preds: Any) -> dict[str, Any]:
    """tidecv's AP50, dAP per type over all classes, dAP per type and class (0-1 units), error counts."""
    tide = TIDE()
    run = tide.evaluate(gt, preds, mode=TIDE.BOX, name="run")
    overall = {**tide.get_main_errors()["run"], **tide.get_special_errors()["run"]}
    present = {k: obj for k, obj in run.ap_data.objs.items() if not obj.is_empty()}
    per_class: dict[str, dict[int, float]] = {}
    for kind in MAIN_TYPES:
        fixed = run.fix_errors(lambda error, cls=TIDE_TYPES[kind]: isinstance(error, cls))
        per_class[kind] = {k: max(fixed.objs[k].get_ap() - obj.get_ap(), 0) / 100 for k, obj in present.items()}
    return {
        "ap50": run.ap / 100,
        "overall": {kind: value / 100 for kind, value in overall.items()},
        "class_ap50": {k: obj.get_ap() / 100 for k, obj in present.items()},
        "per_class": per_class,
        "counts": {kind: len(run.error_dict[TIDE_TYPES[kind]]) for kind in MAIN_TYPES},
    }


def assert_equal_to_tide(ours: ErrorBreakdown, tide: dict[str, Any], category_ids: list[int]) -> None:
    assert ours.ap50 == pytest.approx(tide["ap50"], abs=EXACT)
    for kind in TYPES:
        assert ours.overall[kind] == pytest.approx(tide["overall"][kind], abs=EXACT), kind
    assert {k: ours.counts[k] for k in MAIN_TYPES} == tide["counts"]
    present = [label for label, cid in enumerate(category_ids) if cid in tide["class_ap50"]]
    assert present == [label for label in range(len(category_ids)) if math.isfinite(ours.class_ap50[label])]
    for label in present:
        cid = category_ids[label]
        assert ours.class_ap50[label] == pytest.approx(tide["class_ap50"][cid], abs=EXACT)
        for kind in MAIN_TYPES:
            assert ours.per_class[kind][label] == pytest.approx(tide["per_class"][kind][cid], abs=EXACT), (kind, cid)


def tide_data(gt_json: Path, results: list[dict[str, Any]]) -> tuple[Any, Any]:
    """tidecv's data of a COCO json and results, boxes only (crowd regions as ignore regions)."""
    document = json.loads(gt_json.read_text())
    gt, preds = Data("gt"), Data("run")
    for image in document["images"]:
        gt.add_image(image["id"], image["file_name"])
    for category in document["categories"]:
        gt.add_class(category["id"], category["name"])
    for a in document["annotations"]:
        add = gt.add_ignore_region if a.get("iscrowd") else gt.add_ground_truth
        add(a["image_id"], a["category_id"], box=a["bbox"])
    for r in results:
        preds.add_detection(r["image_id"], r["category_id"], r["score"], box=r["bbox"])
    return gt, preds


def breakdown_of(gt_json: Path, results: Path) -> tuple[ErrorBreakdown, list[int]]:
    """Ours, through the arrays ``python -m detlit.evaluate --results`` builds."""
    dataset = load_coco(gt_json, gt_json.parent)
    label_map = dataset.label_map()
    preds, targets = read_results(results, dataset.images, label_map)
    metric = DetectionMetrics(label_map.names)
    metric.update(preds, targets)
    return ErrorBreakdown.from_arrays(metric.arrays(), label_map.names), list(label_map.category_ids)


# --- against tidecv -----------------------------------------------------------------------------


def test_equals_tidecv_on_the_coco_fake_results(coco_eval_dir: Path) -> None:
    gt_json = coco_eval_dir / "instances_val2014_100.json"
    results = coco_eval_dir / "instances_val2014_fakebbox100_results.json"
    ours, category_ids = breakdown_of(gt_json, results)
    # tidecv's own COCO loaders (masks made from the polygons, boxes as in the files)
    tide = tide_numbers(datasets.COCO(str(gt_json)), datasets.COCOResult(str(results), name="run"))
    assert_equal_to_tide(ours, tide, category_ids)
    # the reference numbers of docs/inference.md
    assert round(ours.ap50, 4) == 0.6420
    assert [round(ours.overall[k], 4) for k in TYPES] == [0.2225, 0.0023, 0.0, 0.0002, 0.0, 0.0852, 0.0682, 0.1768]
    assert ours.dominant() == ("Cls", pytest.approx(0.2224604, abs=1e-7))


def random_case(seed: int) -> tuple[DetectionArrays, Any, Any, int]:
    """Images with objects of a few classes, crowd regions, detections near them or anywhere, with
    scores of 7 values (equal scores everywhere), and sometimes more than 100 in an image."""
    rng = np.random.default_rng(seed)
    num_images, num_classes = int(rng.integers(1, 6)), int(rng.integers(1, 5))
    gt, preds = Data("gt"), Data("run")
    for k in range(num_classes):
        gt.add_class(k, str(k))
    det: list[tuple[int, list[float], float, int]] = []
    obj: list[tuple[int, list[float], int, bool]] = []
    for image in range(num_images):
        gt.add_image(image, str(image))
        boxes = []
        for _ in range(int(rng.integers(0, 6))):
            box = [float(v) for v in (*rng.integers(0, 50, 2), *rng.integers(5, 40, 2))]
            label, crowd = int(rng.integers(num_classes)), bool(rng.random() < 0.15)
            (gt.add_ignore_region if crowd else gt.add_ground_truth)(image, label, box=box)
            boxes.append(box)
            obj.append((image, box, label, crowd))
        for _ in range(int(rng.integers(0, 130 if rng.random() < 0.2 else 12))):
            if boxes and rng.random() < 0.7:
                near = boxes[int(rng.integers(len(boxes)))]
                shift = rng.integers(-8, 9, 4).astype(float)
                box = [
                    near[0] + shift[0],
                    near[1] + shift[1],
                    max(1.0, near[2] + shift[2]),
                    max(1.0, near[3] + shift[3]),
                ]
            else:
                box = [float(v) for v in (*rng.integers(0, 60, 2), *rng.integers(3, 40, 2))]
            label, score = int(rng.integers(num_classes)), float(rng.integers(1, 8)) / 8
            preds.add_detection(image, label, score, box=box)
            det.append((image, box, score, label))
    gt_box = np.asarray([o[1] for o in obj], np.float64).reshape(-1, 4)
    arrays = DetectionArrays(
        num_images=num_images,
        det_image=np.asarray([d[0] for d in det], np.int64),
        det_box=np.asarray([d[1] for d in det], np.float64).reshape(-1, 4),
        det_score=np.asarray([d[2] for d in det], np.float64),
        det_label=np.asarray([d[3] for d in det], np.int64),
        gt_image=np.asarray([o[0] for o in obj], np.int64),
        gt_box=gt_box,
        gt_label=np.asarray([o[2] for o in obj], np.int64),
        gt_crowd=np.asarray([o[3] for o in obj], bool),
        gt_area=gt_box[:, 2] * gt_box[:, 3],
    )
    return arrays, gt, preds, num_classes


def test_equals_tidecv_on_random_images_with_ties_crowds_and_full_images() -> None:
    compared = 0
    for seed in range(80):
        arrays, gt, preds, num_classes = random_case(seed)
        ours = ErrorBreakdown.from_arrays(arrays, [str(k) for k in range(num_classes)])
        if not all(math.isfinite(v) for v in (ours.ap50, *ours.overall.values())):
            # no class to average over (no object and no counted detection), before or after a fix
            with pytest.raises(ZeroDivisionError):
                tide_numbers(gt, preds)
            continue
        assert_equal_to_tide(ours, tide_numbers(gt, preds), list(range(num_classes)))
        compared += 1
    assert compared >= 70


# --- by hand --------------------------------------------------------------------------------------

A = [0.0, 0.0, 10.0, 10.0]  # XYWH
B = [100.0, 100.0, 10.0, 10.0]
A_LOOSE = [5.0, 0.0, 10.0, 10.0]  # IoU 50 / 150 = 1/3 with A
FAR = [300.0, 300.0, 10.0, 10.0]
CAT, DOG = 0, 1


def one_image(
    detections: list[tuple[list[float], float, int]], objects: list[tuple[list[float], int]]
) -> ErrorBreakdown:
    gt = np.asarray([o[0] for o in objects], np.float64).reshape(-1, 4)
    arrays = DetectionArrays(
        num_images=1,
        det_image=np.zeros(len(detections), np.int64),
        det_box=np.asarray([d[0] for d in detections], np.float64).reshape(-1, 4),
        det_score=np.asarray([d[1] for d in detections], np.float64),
        det_label=np.asarray([d[2] for d in detections], np.int64),
        gt_image=np.zeros(len(objects), np.int64),
        gt_box=gt,
        gt_label=np.asarray([o[1] for o in objects], np.int64),
        gt_crowd=np.zeros(len(objects), bool),
        gt_area=gt[:, 2] * gt[:, 3],
    )
    return ErrorBreakdown.from_arrays(arrays, ["cat", "dog"])


def only(breakdown: ErrorBreakdown, kind: str, value: float) -> None:
    """The one type that costs AP50, and how much (every other main type 0)."""
    for other in MAIN_TYPES:
        assert breakdown.overall[other] == pytest.approx(value if other == kind else 0.0, abs=1e-12), other


def test_one_loc_error_costs_the_ap_difference_computed_by_hand() -> None:
    # two cats: one found exactly (0.9), one by a loose box (0.8, IoU 1/3): a localisation error
    breakdown = one_image([(B, 0.9, CAT), (A_LOOSE, 0.8, CAT)], [(A, CAT), (B, CAT)])
    assert breakdown.counts["Loc"] == 1 and breakdown.counts["Miss"] == 0  # the object the loose box points at
    # precision 1 up to recall 0.5 (51 of the 101 recall points), then nothing: AP50 51/101; fixed: 1
    assert breakdown.ap50 == pytest.approx(51 / 101, abs=1e-12)
    only(breakdown, "Loc", 50 / 101)
    assert breakdown.per_class["Loc"][CAT] == pytest.approx(50 / 101, abs=1e-12)
    assert math.isnan(breakdown.per_class["Loc"][DOG])  # no dog anywhere
    assert breakdown.overall["FalseNeg"] == pytest.approx(50 / 101, abs=1e-12)  # the loose box's cat left out
    assert breakdown.overall["FalsePos"] == 0.0  # the false detection already ranks last


def test_a_box_on_another_class_is_a_classification_error() -> None:
    # a dog detection on the cat (0.9), a dog detection on the dog (0.8)
    breakdown = one_image([(A, 0.9, DOG), (B, 0.8, DOG)], [(A, CAT), (B, DOG)])
    assert breakdown.counts["Cls"] == 1
    # cat: AP50 0; dog: false then true, precision 0.5 everywhere: 0.5; the mean 0.25; fixed: both 1
    assert breakdown.ap50 == pytest.approx(0.25, abs=1e-12)
    only(breakdown, "Cls", 0.75)
    assert breakdown.per_class["Cls"].tolist() == pytest.approx([1.0, 0.5], abs=1e-12)


def test_a_second_detection_of_one_object_is_a_duplicate() -> None:
    far_cat = [200.0, 0.0, 10.0, 10.0]
    breakdown = one_image([(A, 0.9, CAT), (A_LOOSE, 0.85, CAT), (far_cat, 0.7, CAT)], [(A, CAT), (far_cat, CAT)])
    # A_LOOSE has IoU 1/3 with the cat already found: a localisation error pointing at a used object,
    # which its fix leaves out; a second exact box is a duplicate
    assert breakdown.counts["Loc"] == 1
    duplicate = one_image([(A, 0.9, CAT), (A, 0.85, CAT), (far_cat, 0.7, CAT)], [(A, CAT), (far_cat, CAT)])
    assert duplicate.counts["Dupe"] == 1
    # true, false, true: precision 1 to recall 0.5 (51 points), then 2/3 (50 points)
    assert duplicate.ap50 == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-12)
    only(duplicate, "Dupe", 1 - (51 + 50 * 2 / 3) / 101)
    only(breakdown, "Loc", 1 - (51 + 50 * 2 / 3) / 101)


def test_background_both_and_missed() -> None:
    background = one_image([(FAR, 0.9, CAT), (A, 0.8, CAT)], [(A, CAT)])
    assert background.counts["Bkg"] == 1
    only(background, "Bkg", 0.5)  # false then true: 0.5; without the false one: 1
    # a cat detection on the dog, loosely (IoU 1/3 with another class's object, none with a cat)
    loose_on_dog = [105.0, 100.0, 10.0, 10.0]
    both = one_image([(loose_on_dog, 0.9, CAT), (A, 0.8, CAT), (B, 0.7, DOG)], [(A, CAT), (B, DOG)])
    assert both.counts["Both"] == 1
    only(both, "Both", 0.25)  # cat 0.5, dog 1: mean 0.75; fixed: 1
    missed = one_image([(A, 0.9, CAT)], [(A, CAT), (B, CAT)])
    assert missed.counts["Miss"] == 1
    only(missed, "Miss", 50 / 101)  # recall 0.5: 51/101; without the missed cat: 1


def test_nothing_to_measure_is_nan_and_no_finding() -> None:
    empty = one_image([], [])
    assert math.isnan(empty.ap50) and empty.dominant() is None
    assert rule_error_breakdown(empty.overall, empty.ap50, empty.counts) is None


# --- metrics.json and the report -----------------------------------------------------------------


def test_json_round_trip_and_files_without_the_key(coco_eval_dir: Path, tmp_path: Path) -> None:
    ours, _ = breakdown_of(
        coco_eval_dir / "instances_val2014_100.json", coco_eval_dir / "instances_val2014_fakebbox100_results.json"
    )
    document = json.loads(json.dumps(ours.to_json()))
    back = ErrorBreakdown.from_json(document)
    assert back.overall == pytest.approx(ours.overall) and back.counts == ours.counts
    assert np.allclose(back.class_ap50, ours.class_ap50, equal_nan=True)
    for kind in TYPES:
        assert np.allclose(back.per_class[kind], ours.per_class[kind], equal_nan=True)
    assert document["per_class"]["horse"]["ap50"] is None  # no horse, no horse detection
    with pytest.raises(ValueError, match="Loc"):
        ErrorBreakdown.from_json({**document, "overall": {"Cls": 0.1}})


def test_the_finding_names_the_costliest_type_with_its_advice() -> None:
    overall = {"Cls": 0.01, "Loc": 0.12, "Both": 0.0, "Dupe": 0.0, "Bkg": 0.03, "Miss": 0.05, "FalseNeg": 0.3}
    found = rule_error_breakdown(overall, 0.41, {"Loc": 37})
    assert found is not None
    assert found.title == "Most lost AP50 is localisation (Loc)"
    assert found.evidence.startswith("37 Loc errors (boxes of the right class placed loosely")
    assert "fixing them would add 0.120 to the AP50 of 0.410" in found.evidence
    assert "tighter" in found.advice and "data.min_size_train" in found.advice
    below = {kind: ERROR_MIN_DAP * 0.99 for kind in MAIN_TYPES}
    assert rule_error_breakdown(below, 0.9, {}) is None


@pytest.fixture(scope="module")
def trained(
    sample_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, subprocess.CompletedProcess[str]]:
    """(run folder, evaluation folder, the evaluation's process) of the tiny model after 2 x 3 batches."""
    cwd = tmp_path_factory.mktemp("errors-run")
    fit = [
        f"--config={REPO / 'configs' / 'sample_cpu.yaml'}",
        *tiny_cli_args(sample_dir),
        "--trainer.max_epochs=2",
        "--trainer.limit_train_batches=3",
        "--trainer.enable_progress_bar=false",
    ]
    run_module(["detlit.fit", *fit], cwd)
    folder = cwd / "runs" / "sample" / "version_0"
    evaluate = ["--ckpt", str(folder / "checkpoints" / "last.ckpt"), "--json", str(sample_dir / "val.json")]
    done = run_module(["detlit.evaluate", *evaluate, "--images", str(sample_dir / "val"), "--out", "eval"], cwd)
    return folder, cwd / "eval", done


def run_module(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.cli
def test_evaluate_of_a_model_writes_the_breakdown_tidecv_gives(
    sample_dir: Path, trained: tuple[Path, Path, subprocess.CompletedProcess[str]]
) -> None:
    _, eval_dir, done = trained
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    written = ErrorBreakdown.from_json(metrics["errors"])
    assert metrics["errors"]["iou"] == 0.5 and metrics["errors"]["background_iou"] == 0.1
    results = json.loads((eval_dir / "coco_results.json").read_text())
    assert len(results) > 50  # every detection the model keeps: many errors of every kind
    tide = tide_numbers(*tide_data(sample_dir / "val.json", results))
    assert_equal_to_tide(written, tide, metrics["category_ids"])
    assert sum(written.counts[k] for k in MAIN_TYPES) > 20
    assert (eval_dir / "error_breakdown.png").read_bytes().startswith(b"\x89PNG")
    assert "AP50 lost per error type" in done.stdout and "AP50 lost per class and error type" in done.stdout
    # files without the key (detlit 0.2's, say) read as before
    del metrics["errors"]
    assert Evaluation.from_json(metrics).coco["map50"] == pytest.approx(metrics["coco"]["map50"])


@pytest.mark.cli
def test_the_report_shows_the_breakdown_and_its_finding(
    tmp_path: Path, trained: tuple[Path, Path, subprocess.CompletedProcess[str]]
) -> None:
    folder, eval_dir, _ = trained
    written, _ = read_eval(eval_dir)
    assert written.errors is not None
    dominant = written.errors.dominant()
    run_module(
        ["detlit.report", "--run", str(folder), "--eval", str(eval_dir), "--out", "report", "--max-images", "0"],
        tmp_path,
    )
    text = (tmp_path / "report" / "report.md").read_text()
    assert "Where the AP50 is lost" in text
    for kind in TYPES:
        assert f"| {kind} | {written.errors.overall[kind]:.3f} | {written.errors.counts[kind]} |" in text, kind
    assert dominant is not None and dominant[1] >= ERROR_MIN_DAP  # the tiny model loses much AP50
    assert f"{written.errors.counts[dominant[0]]} {dominant[0]} errors (" in text
    assert f"fixing them would add {dominant[1]:.3f} to the AP50 of {written.errors.ap50:.3f}" in text
    # an evaluation folder written before the key (detlit 0.2's, say): the report has no breakdown
    old = tmp_path / "old-eval"
    old.mkdir()
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    del metrics["errors"]
    (old / "metrics.json").write_text(json.dumps(metrics))
    assert read_eval(old)[0].errors is None
    broken = tmp_path / "broken-eval"
    broken.mkdir()
    (broken / "metrics.json").write_text(json.dumps({**metrics, "errors": {"overall": {}}}))
    from detlit.errors import ConfigError

    with pytest.raises(ConfigError, match="is not a metrics.json"):
        read_eval(broken)


def test_the_types_are_tidecvs_in_its_order() -> None:
    assert tuple(cls.short_name for cls in TIDE._error_types) == MAIN_TYPES
    assert tuple(cls.short_name for cls in TIDE._special_error_types) == SPECIAL_TYPES
