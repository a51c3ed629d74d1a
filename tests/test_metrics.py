"""Stage 8, evaluation: DetectionMetrics equals COCOeval (stats, per-class AP, matching); P/R/F1, confusion by hand."""

from __future__ import annotations

import contextlib
import io
import json
import math
import socket
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detlit.data.coco import LabelMap, load_coco
from detlit.evaluation.coco_results import read_results
from detlit.evaluation.cocoeval import COCO_NAMES
from detlit.evaluation.evaluation import OVERALL, Evaluation, logged_tags
from detlit.evaluation.metric import STATES, DetectionMetrics

from .conftest import source_stats
from .reference import coco_ground_truth_and_results, pycocotools_stats

GT_JSON = "instances_val2014_100.json"
RESULTS_JSON = "instances_val2014_fakebbox100_results.json"

Pred = dict[str, torch.Tensor]


@pytest.fixture(scope="module")
def pycocotools_eval(coco_eval_dir: Path) -> COCOeval:
    """pycocotools' own COCOeval of the fake results, default parameters."""
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(coco_eval_dir / GT_JSON))
        evaluator = COCOeval(ground_truth, ground_truth.loadRes(str(coco_eval_dir / RESULTS_JSON)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


@pytest.fixture(scope="module")
def fake100(coco_eval_dir: Path) -> tuple[LabelMap, list[Pred], list[Pred]]:
    """The label map (every ground-truth category, ids up to 90 with gaps) and the metric inputs."""
    dataset = load_coco(coco_eval_dir / GT_JSON, coco_eval_dir)
    categories = sorted(dataset.categories, key=lambda c: c.id)
    label_map = LabelMap(tuple(c.id for c in categories), tuple(c.name for c in categories))
    preds, targets = read_results(coco_eval_dir / RESULTS_JSON, dataset.images, label_map)
    return label_map, preds, targets


def _evaluate(label_map: LabelMap, preds: list[Pred], targets: list[Pred], **kwargs: Any) -> Evaluation:
    metric = DetectionMetrics(label_map.names, **kwargs)
    metric.update(preds, targets)
    return metric.compute()


# --- parity with COCOeval ----------------------------------------------------------------------


def test_coco_stats_equal_reference_numbers_and_pycocotools(
    coco_eval_dir: Path, pycocotools_eval: COCOeval, fake100: tuple[LabelMap, list[Pred], list[Pred]]
) -> None:
    label_map, preds, targets = fake100
    assert label_map.num_classes == 80 and max(label_map.category_ids) == 90
    evaluation = _evaluate(label_map, preds, targets)
    ours = [evaluation.coco[name] for name in COCO_NAMES]
    expected = source_stats(coco_eval_dir / "SOURCE.txt")
    assert len(expected) == 12
    assert ours == pytest.approx(expected, abs=1e-12, rel=0)
    assert ours == pytest.approx(list(pycocotools_eval.stats), abs=1e-12, rel=0)


def test_stats_do_not_depend_on_image_order(fake100: tuple[LabelMap, list[Pred], list[Pred]]) -> None:
    # The fake results repeat scores across images; COCOeval breaks those ties by image id.
    label_map, preds, targets = fake100
    order = np.random.default_rng(0).permutation(len(preds))
    shuffled = _evaluate(label_map, [preds[i] for i in order], [targets[i] for i in order])
    assert shuffled.coco == _evaluate(label_map, preds, targets).coco


def test_per_class_ap_equals_pycocotools_precision(
    pycocotools_eval: COCOeval, fake100: tuple[LabelMap, list[Pred], list[Pred]]
) -> None:
    evaluation = _evaluate(*fake100)
    precision, recall = pycocotools_eval.eval["precision"], pycocotools_eval.eval["recall"]
    label_map = fake100[0]
    # person, car, dog, toothbrush (a class without objects in these images)
    for category_id in (1, 3, 18, 90):
        k = label_map.label(category_id)
        at50 = precision[0, :, k, 0, -1]  # IoU 0.5, every recall threshold, area all, maxDets 100
        if (at50 > -1).any():
            assert evaluation.ap50[k] == pytest.approx(np.mean(at50[at50 > -1]), abs=1e-12)
            every = precision[:, :, k, 0, -1]
            assert evaluation.ap[k] == pytest.approx(np.mean(every[every > -1]), abs=1e-12)
            assert evaluation.ar100[k] == pytest.approx(np.mean(recall[:, k, 0, -1]), abs=1e-12)
        else:
            assert math.isnan(evaluation.ap50[k]) and math.isnan(evaluation.ap[k])
    assert (evaluation.ap50 > 0).sum() > 40
    assert np.isnan(evaluation.ap).sum() == int((precision[0, 0, :, 0, -1] == -1).sum()) > 0


@pytest.mark.parametrize("iou_index", [0, 5, 9])
def test_matching_equals_cocoeval(
    iou_index: int, pycocotools_eval: COCOeval, fake100: tuple[LabelMap, list[Pred], list[Pred]]
) -> None:
    """TP/FP counts at every score equal those of COCOeval's dtMatches / dtIgnore at that IoU."""
    params = pycocotools_eval.params
    iou = float(params.iouThrs[iou_index])
    evaluation = _evaluate(*fake100, iou_threshold=iou)
    images, areas = len(params.imgIds), len(params.areaRng)
    checked = 0
    for k in range(len(params.catIds)):
        per_image = pycocotools_eval.evalImgs[k * areas * images : (k * areas + 1) * images]  # area "all"
        per_image = [e for e in per_image if e is not None]
        curve = evaluation.curves[k]
        if not per_image:
            assert len(curve.thresholds) == 0
            continue
        scores = np.concatenate([e["dtScores"] for e in per_image])
        matched = np.concatenate([e["dtMatches"][iou_index] for e in per_image]) > 0
        ignored = np.concatenate([e["dtIgnore"][iou_index] for e in per_image]).astype(bool)
        scores, matched = scores[~ignored], matched[~ignored]
        thresholds = np.unique(scores)[::-1]
        np.testing.assert_array_equal(curve.thresholds, thresholds)
        np.testing.assert_array_equal(curve.tp, [(matched & (scores >= t)).sum() for t in thresholds])
        np.testing.assert_array_equal(curve.fp, [(~matched & (scores >= t)).sum() for t in thresholds])
        assert curve.num_objects == sum(int((e["gtIgnore"] == 0).sum()) for e in per_image)
        checked += 1
    assert checked > 50


def test_confusion_matrix_adds_up(fake100: tuple[LabelMap, list[Pred], list[Pred]]) -> None:
    evaluation = _evaluate(*fake100, score_threshold=0.3)
    confusion, fixed = evaluation.confusion, evaluation.fixed
    k = len(fixed.tp)
    assert confusion.shape == (k + 1, k + 1)
    np.testing.assert_array_equal(np.diag(confusion)[:k], fixed.tp)
    np.testing.assert_array_equal(confusion[:k].sum(axis=1), evaluation.num_objects)
    np.testing.assert_array_equal(confusion[:, :k].sum(axis=0), fixed.tp + fixed.fp)
    assert confusion[k, k] == 0
    assert confusion[:k, :k].sum() > np.trace(confusion)  # some detections confused a class


# --- a tiny case by hand -------------------------------------------------------------------------

CAT, DOG, BIRD, FISH = range(4)
NAMES = ("cat", "dog", "bird", "fish")


def _boxes(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64).reshape(-1, 4)


def _ints(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


def _floats(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def tiny_case() -> tuple[list[Pred], list[Pred]]:
    """Three images; bird has an object and no detection; fish has neither.

    0: cat object found by a cat at 0.9 (TP); a dog at 0.8 on nothing (FP).
    1: a dog object nothing finds (missed); a cat at 0.7 inside a cat crowd region (ignored).
    2: cat object found by a cat at 0.3 (TP below 0.5); a dog at 0.6 on a cat object (FP, and a
       cat taken for a dog in the confusion matrix); a bird object nothing finds.
    """
    preds = [
        {"boxes": _boxes([0, 0, 10, 10], [50, 50, 60, 60]), "scores": _floats(0.9, 0.8), "labels": _ints(CAT, DOG)},
        {"boxes": _boxes([25, 25, 35, 35]), "scores": _floats(0.7), "labels": _ints(CAT)},
        {
            "boxes": _boxes([0, 0, 10, 10], [100, 100, 110, 110]),
            "scores": _floats(0.3, 0.6),
            "labels": _ints(CAT, DOG),
        },
    ]
    targets = [
        {"boxes": _boxes([0, 0, 10, 10]), "labels": _ints(CAT), "iscrowd": _ints(0)},
        {"boxes": _boxes([0, 0, 10, 10], [20, 20, 60, 60]), "labels": _ints(DOG, CAT), "iscrowd": _ints(0, 1)},
        {
            "boxes": _boxes([0, 0, 10, 10], [100, 100, 110, 110], [200, 200, 210, 210]),
            "labels": _ints(CAT, CAT, BIRD),
            "iscrowd": _ints(0, 0, 0),
        },
    ]
    return preds, targets


def _tiny_evaluation(**kwargs: Any) -> Evaluation:
    metric = DetectionMetrics(NAMES, **kwargs)
    metric.update(*tiny_case())
    return metric.compute()


def test_precision_recall_f1_by_hand() -> None:
    ev = _tiny_evaluation(score_threshold=0.5)
    np.testing.assert_array_equal(ev.num_objects, [3, 1, 1, 0])  # the crowd region is no object
    np.testing.assert_array_equal(ev.num_detections, [3, 2, 0, 0])

    # cat: 0.9 TP, (0.7 on the crowd region: neither), 0.3 TP; F1 is 0.5 at 0.9 and 0.8 at 0.3
    np.testing.assert_array_equal(ev.curves[CAT].thresholds, [0.9, 0.3])
    np.testing.assert_array_equal(ev.curves[CAT].tp, [1, 2])
    np.testing.assert_array_equal(ev.curves[CAT].fp, [0, 0])
    np.testing.assert_allclose(ev.curves[CAT].f1, [0.5, 0.8])
    # dog: two false positives and no true positive at any score: no threshold helps
    np.testing.assert_array_equal(ev.curves[DOG].fp, [1, 2])

    best, fixed = ev.best, ev.fixed
    np.testing.assert_array_equal(best.thresholds, [0.3, math.inf, math.inf, math.inf])
    np.testing.assert_array_equal(best.tp, [2, 0, 0, 0])
    np.testing.assert_array_equal(best.fp, [0, 0, 0, 0])
    np.testing.assert_array_equal(best.fn, [1, 1, 1, 0])
    np.testing.assert_allclose(best.precision, [1.0, np.nan, np.nan, np.nan])
    np.testing.assert_allclose(best.recall, [2 / 3, 0.0, 0.0, np.nan])
    np.testing.assert_allclose(best.f1, [0.8, 0.0, 0.0, np.nan])
    assert best.overall() == pytest.approx((1.0, 2 / 5, 4 / 7))

    np.testing.assert_array_equal(fixed.tp, [1, 0, 0, 0])
    np.testing.assert_array_equal(fixed.fp, [0, 2, 0, 0])
    np.testing.assert_array_equal(fixed.fn, [2, 1, 1, 0])
    np.testing.assert_allclose(fixed.precision, [1.0, 0.0, np.nan, np.nan])
    np.testing.assert_allclose(fixed.recall, [1 / 3, 0.0, 0.0, np.nan])
    np.testing.assert_allclose(fixed.f1, [0.5, 0.0, 0.0, np.nan])
    assert fixed.overall() == pytest.approx((1 / 3, 1 / 5, 1 / 4))

    # AP: cat's two true positives give precision 1 up to recall 2/3 (67 of 101 recall points)
    np.testing.assert_allclose(ev.ap, [67 / 101, 0.0, 0.0, np.nan], rtol=0, atol=1e-15)
    np.testing.assert_allclose(ev.ap50, [67 / 101, 0.0, 0.0, np.nan], rtol=0, atol=1e-15)
    np.testing.assert_allclose(ev.ar100, [2 / 3, 0.0, 0.0, np.nan], rtol=0, atol=1e-15)


def test_confusion_matrix_by_hand() -> None:
    confusion = _tiny_evaluation(score_threshold=0.5).confusion
    background = 4
    expected = np.zeros((5, 5), np.int64)
    expected[CAT, CAT] = 1  # the 0.9 cat
    expected[CAT, DOG] = 1  # the 0.6 dog on a cat
    expected[CAT, background] = 1  # the cat found only at 0.3, below the threshold
    expected[DOG, background] = 1  # the missed dog
    expected[BIRD, background] = 1  # the missed bird
    expected[background, DOG] = 1  # the 0.8 dog on nothing
    np.testing.assert_array_equal(confusion, expected)
    # at threshold 0.2 the 0.3 cat is found
    low = _tiny_evaluation(score_threshold=0.2).confusion
    assert low[CAT, CAT] == 2 and low[CAT, background] == 0


def test_scalars_names_and_values() -> None:
    scalars = _tiny_evaluation(score_threshold=0.5).scalars()
    assert list(scalars)[:12] == list(COCO_NAMES)
    assert scalars["f1/cat"] == pytest.approx(0.8)
    assert scalars["threshold/cat"] == pytest.approx(0.3)
    assert scalars["threshold/dog"] == math.inf
    assert scalars["f1@thr/cat"] == pytest.approx(0.5)
    assert scalars["precision@thr"] == pytest.approx(1 / 3)
    assert scalars["f1"] == pytest.approx(4 / 7)
    assert scalars["ap/cat"] == pytest.approx(67 / 101)
    assert math.isnan(scalars["ap/fish"]) and math.isnan(scalars["f1/fish"])
    assert math.isnan(scalars["map_medium"])  # no medium objects: COCOeval's -1
    per_class = {"ap", "ap50", "ar100", "precision", "recall", "f1", "threshold"}
    per_class |= {"precision@thr", "recall@thr", "f1@thr"}
    assert {f"{p}/{n}" for p in per_class for n in NAMES} <= set(scalars)
    assert len(scalars) == 12 + 6 + len(per_class) * len(NAMES)
    assert all(isinstance(v, float) for v in scalars.values())


def test_tiny_case_equals_pycocotools() -> None:
    preds, targets = tiny_case()
    label_map = LabelMap((1, 2, 3, 4), NAMES)
    ground_truth, results = coco_ground_truth_and_results(preds, targets, label_map)
    expected = pycocotools_stats(ground_truth, results)
    ours = [_tiny_evaluation().coco[name] for name in COCO_NAMES]
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-12)


def test_pr_curve_for_tensorboard_and_plots(tmp_path: Path) -> None:
    curve = _tiny_evaluation().curves[CAT]
    tp, fp = curve.at([0.0, 0.3, 0.31, 0.9, 0.95])
    np.testing.assert_array_equal(tp, [2, 2, 1, 1, 0])
    np.testing.assert_array_equal(fp, [0, 0, 0, 0, 0])
    board = curve.tensorboard(num_thresholds=5)  # thresholds 0, 0.25, 0.5, 0.75, 1
    assert board["num_thresholds"] == 5
    np.testing.assert_array_equal(board["true_positive_counts"], [2, 2, 1, 1, 0])
    np.testing.assert_array_equal(board["false_positive_counts"], [0, 0, 0, 0, 0])
    np.testing.assert_array_equal(board["false_negative_counts"], [1, 1, 2, 2, 3])
    np.testing.assert_allclose(board["recall"], [2 / 3, 2 / 3, 1 / 3, 1 / 3, 0.0])
    np.testing.assert_allclose(board["precision"], [1.0, 1.0, 1.0, 1.0, 0.0])  # none kept at 1: 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.utils.tensorboard import SummaryWriter
    # TensorBoard itself accepts the arrays
    writer = SummaryWriter(log_dir=str(tmp_path))
    writer.add_pr_curve_raw("pr/cat", global_step=0, **board)
    writer.close()


def test_arguments_are_checked() -> None:
    with pytest.raises(TypeError, match="iou_thresholds"):
        DetectionMetrics(NAMES, iou_thresholds=[0.5])
    with pytest.raises(ValueError, match="iou_threshold"):
        DetectionMetrics(NAMES, iou_threshold=0.0)
    metric = DetectionMetrics(("a",))
    preds, targets = tiny_case()
    metric.update(preds, targets)
    with pytest.raises(ValueError, match="label 1 is outside 0..0"):
        metric.compute()


# --- the Evaluation value: what is logged, its json ------------------------------------------------

EVAL_0_2 = Path(__file__).parent / "data" / "eval_0.2"
"""A ground truth, a results file and the metrics.json detlit 0.2's ``evaluate --results`` wrote of them."""


def test_what_is_logged_is_the_evaluations_own_tag_list() -> None:
    evaluation = _tiny_evaluation(score_threshold=0.5)
    logged = evaluation.logged("val")
    assert list(logged) == logged_tags("val", NAMES)
    assert len(logged) == 12 + 6 + 6 * len(NAMES)  # COCO's 12, P/R/F1 twice, six numbers per class
    scalars = evaluation.scalars()
    overall = [logged[f"val/{name}"] for name in OVERALL]
    assert overall == pytest.approx([scalars[name] for name in OVERALL], nan_ok=True, rel=0, abs=0)
    assert logged["val/precision/cat"] == 1.0 and logged["val/recall/cat"] == pytest.approx(2 / 3)
    assert logged["val/recall/dog"] == 0.0 and logged["val/threshold/cat"] == pytest.approx(0.3)
    assert not any(tag.startswith(("val/ar100/", "val/f1@thr/")) for tag in logged)  # in metrics.json only
    assert set(evaluation.logged("test")) == set(logged_tags("test", NAMES))


def _same_evaluation(read: Evaluation, written: Evaluation) -> None:
    for ours, theirs in ((read.best, written.best), (read.fixed, written.fixed)):
        for field in ("thresholds", "tp", "fp", "fn"):
            np.testing.assert_array_equal(getattr(ours, field), getattr(theirs, field))
    for field in ("ap", "ap50", "ar100", "num_objects", "num_detections", "confusion"):
        np.testing.assert_array_equal(getattr(read, field), getattr(written, field))
    assert read.class_names == written.class_names and read.coco == pytest.approx(written.coco, nan_ok=True)
    assert read.to_json() == written.to_json() and read.curves == []


def test_json_round_trip_gives_back_every_count() -> None:
    """The json holds rates; the counts come back exactly, NaN and infinite thresholds included."""
    evaluation = _tiny_evaluation(score_threshold=0.5)
    _same_evaluation(Evaluation.from_json(json.loads(json.dumps(evaluation.to_json()))), evaluation)


def test_json_round_trip_on_eighty_classes(fake100: tuple[LabelMap, list[Pred], list[Pred]]) -> None:
    evaluation = _evaluate(*fake100)
    read = Evaluation.from_json(json.loads(json.dumps(evaluation.to_json())))
    assert read.best.tp.sum() > 500 and read.fixed.fp.sum() > 30
    _same_evaluation(read, evaluation)


def test_a_0_2_metrics_json_reads_and_is_what_evaluate_writes_today(tmp_path: Path) -> None:
    from detlit.inference.evaluate import evaluate

    document = json.loads((EVAL_0_2 / "metrics.json").read_text())
    evaluation = Evaluation.from_json(document)
    assert evaluation.class_names == ("circle", "square", "triangle", "star")
    # circle: 0.91 and 0.66 found, 0.77 on nothing, 0.35 finds the third; square: 0.58 found, 0.97 on a
    # crowd region, 0.81 on the triangle, 0.42 finds the second; triangle never found; star has no object
    np.testing.assert_array_equal(evaluation.best.tp, [3, 2, 0, 0])
    np.testing.assert_array_equal(evaluation.best.fp, [1, 1, 0, 0])
    np.testing.assert_array_equal(evaluation.best.thresholds, [0.35, 0.42, math.inf, math.inf])
    np.testing.assert_array_equal(evaluation.fixed.tp, [2, 1, 0, 0])
    np.testing.assert_array_equal(evaluation.fixed.fp, [1, 1, 0, 0])
    np.testing.assert_array_equal(evaluation.fixed.fn, [1, 1, 1, 0])
    written = evaluation.to_json()
    assert written == {key: document[key] for key in written}
    out = tmp_path / "eval"
    assert evaluate(json_path=EVAL_0_2 / "gt.json", results=EVAL_0_2 / "results.json", out=out) == 0
    today = json.loads((out / "metrics.json").read_text())
    assert {
        k: v for k, v in today.items() if k not in ("source", "json", "seconds", "errors", "confusion_matrix_f1")
    } == {k: v for k, v in document.items() if k not in ("source", "json", "seconds")}


def test_a_damaged_metrics_json_is_one_sentence(tmp_path: Path) -> None:
    from detlit.errors import ConfigError
    from detlit.reporting.run_reader import read_eval

    document = json.loads((EVAL_0_2 / "metrics.json").read_text())
    short = json.loads(json.dumps(document))
    short["confusion_matrix"]["counts"][2] = [0, 1]
    with pytest.raises(ValueError, match=r"^a row of the confusion matrix does not hold 5 counts$"):
        Evaluation.from_json(short)
    negative = json.loads(json.dumps(document))
    negative["per_class"][0]["objects"] = -3
    with pytest.raises(ValueError, match=r"^objects of class circle is -3, not a count$"):
        Evaluation.from_json(negative)
    (tmp_path / "metrics.json").write_text(json.dumps(short))
    with pytest.raises(ConfigError, match=r"metrics.json is not a metrics.json of python -m detlit.evaluate \(a row"):
        read_eval(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps(document))
    metrics, _ = read_eval(tmp_path)
    assert metrics.category_ids == [1, 3, 7, 9] and metrics.confusion is not None
    assert [row["recall"] for row in metrics.per_class][:3] == [1.0, 1.0, 0.0]
    assert metrics.overall["f1@thr"] == document["overall"]["f1@thr"]


# --- synchronisation across processes --------------------------------------------------------------


def _ranked_gather(others: list[DetectionMetrics]) -> Any:
    """A stand-in for the all-gather: this process's tensor, then the other processes' same state.

    torchmetrics gathers the states in the order they were added, each pre-concatenated into one
    tensor (an empty one for a process without images).
    """
    states = iter(STATES)

    def own(metric: DetectionMetrics, name: str) -> torch.Tensor:
        state = getattr(metric, name)
        return torch.cat(state) if state else torch.zeros(0, dtype=torch.float64)

    def gather(tensor: torch.Tensor, group: Any = None) -> list[torch.Tensor]:
        name = next(states)
        return [tensor, *(own(m, name) for m in others)]

    return gather


@pytest.mark.parametrize("split", [(2, 1), (3, 0), (0, 3)])
@pytest.mark.filterwarnings("ignore:The ``compute`` method:UserWarning")  # a process without images
def test_sync_gathers_uneven_processes(split: tuple[int, int]) -> None:
    preds, targets = tiny_case()
    for i, t in enumerate(targets):
        t["image_id"] = torch.tensor(i)
    first, second = (DetectionMetrics(NAMES, sync_on_compute=False) for _ in range(2))
    cut = split[0]
    if cut:
        first.update(preds[:cut], targets[:cut])
    if cut < 3:
        second.update(preds[cut:], targets[cut:])
    first.sync(dist_sync_fn=_ranked_gather([second]), distributed_available=lambda: True)
    synced = first.compute()
    expected = _tiny_evaluation()
    assert synced.scalars() == pytest.approx(expected.scalars(), nan_ok=True)
    np.testing.assert_array_equal(synced.confusion, expected.confusion)
    assert first.arrays().num_images == cut, "compute restored this process's own images"


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    preds, targets = tiny_case()
    for i, t in enumerate(targets):
        t["image_id"] = torch.tensor(i)
    mine = {0: [0, 1], 1: [2], 2: []}[rank]  # uneven shards, one process without images
    metric = DetectionMetrics(NAMES)
    metric.update([preds[i] for i in mine], [targets[i] for i in mine])
    scalars = metric.compute().scalars()
    Path(out, f"rank{rank}.json").write_text(json.dumps({"scalars": scalars, "images": metric.arrays().num_images}))
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_processes_equal_one(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(3, port, str(tmp_path)), nprocs=3, join=True)
    expected = _tiny_evaluation().scalars()
    for rank, own in ((0, 2), (1, 1), (2, 0)):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["scalars"] == pytest.approx(expected, nan_ok=True)
        assert got["images"] == own, "after compute each process holds its own images again"


def test_the_confusion_at_f1_optimal_thresholds_shows_what_a_fixed_one_hides() -> None:
    """A young model scores below 0.5: at the fixed threshold every object is missed and no
    confusion shows; at each class's F1-optimal threshold the 'A taken for B' cell does."""
    from detlit.evaluation.evaluation import Evaluation
    from detlit.evaluation.matching import DetectionArrays

    one = DetectionArrays.one_image  # two objects side by side; the A object taken for B at 0.40
    arrays = one([[0, 0, 10, 10], [20, 0, 30, 10]], [0.40, 0.35], [1, 1], [[0, 0, 10, 10], [20, 0, 30, 10]], [0, 1])
    evaluation = Evaluation.from_arrays(arrays, ["A", "B"], score_threshold=0.5, iou_threshold=0.5)
    assert evaluation.confusion.tolist() == [[0, 0, 1], [0, 0, 1], [0, 0, 0]]  # everything missed
    assert evaluation.best.thresholds[1] == pytest.approx(0.35)
    assert evaluation.best_confusion is not None
    assert evaluation.best_confusion.tolist() == [[0, 1, 0], [0, 1, 0], [0, 0, 0]]  # A taken for B
    again = Evaluation.from_json(json.loads(json.dumps(evaluation.to_json())))
    assert again.best_confusion is not None and again.best_confusion.tolist() == evaluation.best_confusion.tolist()
