"""Sliced inference: the tile geometry, the merge, the Predictor on tiles, and SAHI's sliced prediction as oracle."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from detlit.data.images import load_image
from detlit.data.windows import count, windows
from detlit.errors import ConfigError
from detlit.inference.predictor import Predictor
from detlit.inference.slicing import Slicing, merge_detections
from detlit.model.detections import Detections
from detlit.model.module import DetectionModule

from .conftest import REPO, quiet_trainer, tiny_datamodule, tiny_module
from .reference import sahi_model

NAMES = ["circle", "square", "triangle"]


# --- the geometry --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("height", "width", "size", "overlap"),
    [
        (300, 500, 256, 0.25),
        (480, 640, 160, 0.2),
        (1000, 1000, 250, 0.0),  # tiles that meet the edge exactly
        (100, 90, 256, 0.2),  # smaller than one tile: the whole image
        (4000, 3000, 640, 0.2),
        (777, 1301, 333, 0.9),
        (257, 256, 256, 0.5),  # one pixel more than a tile
    ],
)
def test_windows_are_sahis(height: int, width: int, size: int, overlap: float) -> None:
    from sahi.slicing import get_slice_bboxes

    theirs = get_slice_bboxes(height, width, size, size, False, overlap, overlap)
    ours = windows(height, width, size, overlap)
    assert [list(w.box) for w in ours] == theirs
    assert count(height, width, size, overlap) == len(theirs)
    # Every pixel is covered, and every window lies inside the image.
    covered = np.zeros((height, width), dtype=bool)
    for w in ours:
        assert 0 <= w.x0 < w.x1 <= width and 0 <= w.y0 < w.y1 <= height
        assert (w.width, w.height) == (min(size, width), min(size, height))
        covered[w.y0 : w.y1, w.x0 : w.x1] = True
    assert covered.all()


def test_bad_tilings_are_one_sentence() -> None:
    with pytest.raises(ConfigError, match="slice size 16 is below 32 pixels"):
        Slicing(size=16)
    with pytest.raises(ConfigError, match="overlap 0.95 is not between 0 and 0.9"):
        Slicing(size=64, overlap=0.95)
    with pytest.raises(ConfigError, match="slice merge 'wbf' is unknown"):
        Slicing(size=64, merge="wbf")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="match threshold 0 is not above 0"):
        Slicing(size=64, match_threshold=0)
    # 20,000 x 20,000 px in tiles of 32 px at 0.5 overlap: 1,560,001 tiles, refused before any is cut.
    with pytest.raises(ConfigError, match=r"1,560,001 tiles of 32 px .* choose a larger tile size"):
        Slicing(size=32, overlap=0.5).windows(20_000, 20_000)


# --- the merge, against SAHI's postprocess classes --------------------------------------------------


def _random_detections(seed: int, n: int = 60) -> Detections:
    generator = np.random.default_rng(seed)
    centres = generator.uniform(0, 200, (n // 3, 2)).repeat(3, axis=0)  # groups of three around one object
    sizes = generator.uniform(4, 40, (n, 2))
    jitter = generator.normal(0, 3, (n, 2))
    boxes = np.concatenate([centres + jitter - sizes / 2, centres + jitter + sizes / 2], axis=1).clip(
        0, 200
    )  # inside the image, as detections are
    scores = generator.uniform(0.05, 1.0, n).round(2)  # ties included
    labels = generator.integers(0, 3, n)
    boxes[5] = boxes[4]  # an exact duplicate
    scores[5] = scores[4]
    labels[5] = labels[4]
    return Detections(torch.tensor(boxes, dtype=torch.float32), torch.tensor(scores), torch.tensor(labels))


def _sahi_merge(detections: Detections, slicing: Slicing) -> list[tuple[int, float, tuple[float, ...]]]:
    from sahi.postprocess.combine import GreedyNMMPostprocess, NMSPostprocess
    from sahi.prediction import ObjectPrediction

    merge = {"greedynmm": GreedyNMMPostprocess, "nms": NMSPostprocess}[slicing.merge]
    # class_agnostic=False: what get_sliced_prediction passes (the classes' own default is True)
    postprocess = merge(
        match_threshold=slicing.match_threshold, match_metric=slicing.match.upper(), class_agnostic=False
    )
    predictions = [
        ObjectPrediction(bbox=box, category_id=int(label), score=float(score), category_name=NAMES[int(label)])
        for box, score, label in zip(
            detections.boxes.tolist(), detections.scores.tolist(), detections.labels.tolist(), strict=True
        )
    ]
    kept = postprocess(predictions)
    return sorted((p.category.id, p.score.value, tuple(p.bbox.to_xyxy())) for p in kept)


def _listed(prediction: Any) -> list[tuple[int, float, tuple[float, ...]]]:
    return _ours(Detections(*(torch.from_numpy(a) for a in (prediction.boxes, prediction.scores, prediction.labels))))


def _ours(detections: Detections) -> list[tuple[int, float, tuple[float, ...]]]:
    return sorted(
        (int(label), float(score), tuple(box))
        for box, score, label in zip(
            detections.boxes.tolist(), detections.scores.tolist(), detections.labels.tolist(), strict=True
        )
    )


def _assert_close(ours: list[Any], theirs: list[Any], box_tol: float = 1e-3, score_tol: float = 1e-6) -> None:
    """Every detection of ours pairs with one of theirs: the same class, the score within
    ``score_tol``, every coordinate within ``box_tol`` (paired one to one, not by sorted position:
    two scores within the tolerance may sort either way)."""
    assert len(ours) == len(theirs)
    unpaired = list(theirs)
    for label, score, box in ours:
        pair = next(
            (
                other
                for other in unpaired
                if other[0] == label
                and abs(other[1] - score) <= score_tol
                and np.max(np.abs(np.subtract(other[2], box))) <= box_tol
            ),
            None,
        )
        assert pair is not None, f"no detection of theirs pairs with {(label, score, box)}"
        unpaired.remove(pair)


@pytest.mark.parametrize("merge", ["greedynmm", "nms"])
@pytest.mark.parametrize("match", ["ios", "iou"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merge_equals_sahis(merge: str, match: str, seed: int) -> None:
    detections = _random_detections(seed)
    slicing = Slicing(size=64, merge=merge, match=match, match_threshold=0.5)  # type: ignore[arg-type]
    merged = merge_detections(detections, slicing)
    assert len(merged.scores) < len(detections.scores)  # the groups did overlap
    assert torch.all(merged.scores[:-1] >= merged.scores[1:])  # highest first
    _assert_close(_ours(merged), _sahi_merge(detections, slicing))


def test_merge_by_hand() -> None:
    # Two parts of one object cut by a tile border (the left part scores best; 60% of it lies in
    # the right part), and an object of another class on top of them.
    boxes = torch.tensor([[0, 0, 10, 10], [4, 0, 20, 10], [0, 0, 20, 10]], dtype=torch.float32)
    detections = Detections(boxes, torch.tensor([0.9, 0.6, 0.7]), torch.tensor([0, 0, 1]))
    greedy = merge_detections(detections, Slicing(size=64))
    assert greedy.labels.tolist() == [0, 1]
    assert greedy.boxes.tolist() == [[0, 0, 20, 10], [0, 0, 20, 10]]  # the best part grew to the whole
    assert greedy.scores.tolist() == pytest.approx([0.9, 0.7])
    nms = merge_detections(detections, Slicing(size=64, merge="nms"))
    assert nms.boxes.tolist() == [[0, 0, 10, 10], [0, 0, 20, 10]]  # the best part stays, the other goes
    iou = merge_detections(detections, Slicing(size=64, merge="nms", match="iou"))
    assert len(iou.scores) == 3  # by IoU the parts overlap 0.3: two objects
    wide = merge_detections(detections, Slicing(size=64, match_threshold=0.7))
    assert len(wide.scores) == 3  # at 0.7 the parts do not match either


# --- the Predictor on tiles -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model after a few training steps (enough to give many detections)."""
    module = tiny_module()
    trainer = quiet_trainer(max_steps=3, limit_val_batches=0)
    trainer.fit(module, datamodule=tiny_datamodule(sample_dir))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def mosaic(sample_dir: Path) -> np.ndarray:
    """A 480 x 480 image: four validation images of the sample (cut to 240 x 240 each) side by side."""
    images = [load_image(path)[:240, :240] for path in sorted((sample_dir / "val").glob("*.jpg"))[:4]]
    return np.ascontiguousarray(np.concatenate([np.concatenate(images[:2], 1), np.concatenate(images[2:], 1)], 0))


def test_sliced_prediction_by_hand(checkpoint: Path, mosaic: np.ndarray) -> None:
    """Tiles through the model in batches equal tiles predicted one by one, shifted and merged."""
    slicing = Slicing(size=160, overlap=0.2)
    sliced = Predictor.from_checkpoint(checkpoint, score_threshold=0.05, slicing=slicing, batch_size=8)
    plain = Predictor.from_checkpoint(checkpoint, score_threshold=0.05, batch_size=1)
    ours = sliced(mosaic)
    parts = []
    for w in slicing.windows(*mosaic.shape[:2]):
        tile = plain(np.ascontiguousarray(mosaic[w.y0 : w.y1, w.x0 : w.x1]))
        parts.append((tile.boxes + np.array([w.x0, w.y0, w.x0, w.y0]), tile.scores, tile.labels))
    whole = plain(mosaic)
    parts.append((whole.boxes, whole.scores, whole.labels))
    expected = merge_detections(
        Detections(*(torch.from_numpy(np.concatenate(column)) for column in zip(*parts, strict=True))), slicing
    )
    assert len(ours) > 0
    # Batched tiles round like tiles one by one to about 1e-5 px (CPU convolutions of a batch).
    _assert_close(_listed(ours), _ours(expected), box_tol=1e-3, score_tol=1e-5)
    assert ours.boxes[:, 2].max() <= 480 and ours.boxes[:, 3].max() <= 480 and ours.boxes.min() >= 0
    assert (ours.height, ours.width) == (480, 480)
    assert sliced.settings()["slicing"] == {
        "size": 160,
        "overlap": 0.2,
        "full_image": True,
        "merge": "greedynmm",
        "match": "ios",
        "match_threshold": 0.5,
    }


def test_thresholds_apply_after_merging(checkpoint: Path, mosaic: np.ndarray) -> None:
    slicing = Slicing(size=160)
    low = Predictor.from_checkpoint(checkpoint, score_threshold=0.05, slicing=slicing)(mosaic)
    middle = float(np.median(low.scores))
    high = Predictor.from_checkpoint(checkpoint, score_threshold=middle, slicing=slicing)(mosaic)
    keep = low.scores >= middle
    assert 0 < keep.sum() < len(low)
    np.testing.assert_allclose(high.boxes, low.boxes[keep], atol=1e-5)


def test_an_image_smaller_than_a_tile_is_predicted_whole(checkpoint: Path, mosaic: np.ndarray) -> None:
    image = np.ascontiguousarray(mosaic[:100, :150])
    sliced = Predictor.from_checkpoint(checkpoint, score_threshold=0.05, slicing=Slicing(size=256))(image)
    plain = Predictor.from_checkpoint(checkpoint, score_threshold=0.05)(image)
    merged = merge_detections(
        Detections(torch.from_numpy(plain.boxes), torch.from_numpy(plain.scores), torch.from_numpy(plain.labels)),
        Slicing(size=256),
    )
    np.testing.assert_allclose(sliced.boxes, merged.boxes.numpy(), atol=1e-5)


def test_an_image_of_too_many_tiles_is_skipped_naming_it(checkpoint: Path, mosaic: np.ndarray, tmp_path: Path) -> None:
    from PIL import Image

    Image.fromarray(mosaic[:64, :64]).save(tmp_path / "ok.png")  # 3 x 3 tiles
    Image.fromarray(np.zeros((1700, 1700, 3), dtype=np.uint8)).save(tmp_path / "huge.png")
    predictor = Predictor.from_checkpoint(checkpoint, slicing=Slicing(size=32, overlap=0.5))
    huge, ok = predictor.predict_files([tmp_path / "huge.png", tmp_path / "ok.png"])
    assert huge.prediction is None and str(huge.error) == (
        f"{tmp_path / 'huge.png'} is 1700x1700: in tiles of 32 px (overlap 0.5) that is 11,236 tiles, more than "
        "10,000; choose a larger --slice for it"
    )
    assert ok.prediction is not None and (ok.prediction.height, ok.prediction.width) == (64, 64)


# --- SAHI's own sliced prediction on the same model -------------------------------------------------


@pytest.mark.parametrize("merge", ["greedynmm", "nms"])
def test_sliced_detections_equal_sahis(checkpoint: Path, mosaic: np.ndarray, tmp_path: Path, merge: str) -> None:
    from sahi.predict import get_sliced_prediction

    slicing = Slicing(size=160, overlap=0.2, merge=merge)  # type: ignore[arg-type]
    # detectron2's resize (PIL), as SAHI's detectron2 model runs DefaultPredictor.
    predictor = Predictor.from_checkpoint(checkpoint, score_threshold=0.05, resize="detectron2", slicing=slicing)
    ours = predictor(mosaic)
    result = get_sliced_prediction(
        mosaic,
        sahi_model(DetectionModule.load_from_checkpoint(checkpoint, map_location="cpu"), tmp_path, 0.05),
        slice_height=160,
        slice_width=160,
        overlap_height_ratio=0.2,
        overlap_width_ratio=0.2,
        perform_standard_pred=True,
        postprocess_type=merge.upper(),
        postprocess_match_metric="IOS",
        postprocess_match_threshold=0.5,
        force_postprocess_type=True,  # SAHI would switch to NMS below a confidence of 0.1
        verbose=0,
    )
    theirs = sorted((p.category.id, p.score.value, tuple(p.bbox.to_xyxy())) for p in result.object_prediction_list)
    mine = _listed(ours)
    assert len(mine) > 20
    _assert_close(mine, theirs, box_tol=0.5, score_tol=1e-4)


# --- the commands -----------------------------------------------------------------------------------


def test_predict_and_evaluate_record_the_slicing(
    checkpoint: Path, sample_dir: Path, mosaic: np.ndarray, tmp_path: Path
) -> None:
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(mosaic).save(images / "mosaic.png")
    slicing = ["--slice", "160", "--slice-overlap", "0.25", "--slice-merge", "nms", "--no-slice-full-image"]
    run = [sys.executable, "-m", "detlit.predict", "--ckpt", str(checkpoint), str(images), "--out", str(tmp_path / "p")]
    done = subprocess.run([*run, *slicing, "--score-threshold", "0.05"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    info = json.loads((tmp_path / "p" / "predictions.json").read_text())["info"]
    assert info["slicing"] == {
        "size": 160,
        "overlap": 0.25,
        "full_image": False,
        "merge": "nms",
        "match": "ios",
        "match_threshold": 0.5,
    }
    assert info["runtime"] == "checkpoint" and info["min_size_test"] == 128
    # The same detections as the Predictor with those settings.
    expected = Predictor.from_checkpoint(
        checkpoint, score_threshold=0.05, slicing=Slicing(size=160, overlap=0.25, full_image=False, merge="nms")
    )(mosaic)
    annotations = json.loads((tmp_path / "p" / "predictions.json").read_text())["annotations"]
    assert len(annotations) == len(expected) > 0

    evaluate = [sys.executable, "-m", "detlit.evaluate", "--ckpt", str(checkpoint), "--out", str(tmp_path / "e")]
    evaluate += ["--json", str(sample_dir / "val.json"), "--images", str(sample_dir / "val"), "--slice", "128"]
    done = subprocess.run(evaluate, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["slicing"]["size"] == 128 and metrics["runtime"] == "checkpoint"

    refused = subprocess.run([*run, "--slice", "8"], cwd=REPO, capture_output=True, text=True)
    assert refused.returncode == 2, refused.stderr
    assert "argument --slice: 8 is below the smallest tile; give 32 or more" in refused.stderr


# --- validation during training ---------------------------------------------------------------------


def test_sliced_validation_logs_what_evaluate_slice_measures(sample_dir: Path) -> None:
    from detlit.data.checks import load_checked
    from detlit.evaluation.metric import DetectionMetrics
    from detlit.inference.evaluate import predict_dataset
    from detlit.training.sliced_validation import SlicedValidation

    module = tiny_module()
    callback = SlicedValidation(size=128, overlap=0.25, merge="nms")
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=2, callbacks=[callback])
    trainer.fit(module, datamodule=tiny_datamodule(sample_dir))
    logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_sliced/")}
    assert {"val_sliced/map", "val_sliced/map_small", "val_sliced/map50", "val_sliced/f1"} <= set(logged)

    # The same model through evaluate's path with the same slicing: the same numbers, to the last digit.
    dataset = load_checked(sample_dir / "val.json", sample_dir / "val", "--images", files=True)
    predictor = Predictor(module, device="cpu", all_detections=True, slicing=callback.slicing)
    (preds, targets), _, label_map = predict_dataset(dataset, predictor, progress=False)
    metric = DetectionMetrics(label_map.names)
    metric.update(preds, targets)
    expected = metric.compute().logged("val_sliced")
    for name in ("val_sliced/map", "val_sliced/map50", "val_sliced/map_small", "val_sliced/recall"):
        assert logged[name] == pytest.approx(expected[name], abs=1e-6), name
    assert len(targets) == len(dataset.images)  # every validation image, not the 2 batches Lightning ran
