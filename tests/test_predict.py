"""Prediction: the Predictor API, parity with detectron2's DefaultPredictor, and python -m detlit.predict."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from detlit.data.images import load_image
from detlit.inference.predictor import DEFAULT_SCORE_THRESHOLD, Predictor
from detlit.pictures.drawing import class_color
from detlit.predict import main

from .conftest import REPO, quiet_trainer, tiny_datamodule, tiny_module
from .reference import default_predictor as reference_default_predictor

CATEGORY_IDS = {1, 3, 7}
EXIF_ORIENTATION = 0x0112


@pytest.fixture(scope="module")
def checkpoint(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model after one training step, saved by the trainer as a real run would."""
    module = tiny_module()
    trainer = quiet_trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(module, datamodule=tiny_datamodule(sample_dir))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    trainer.save_checkpoint(path)
    return path


def _sample_pixels(sample_dir: Path, index: int = 0) -> np.ndarray:
    return load_image(sorted((sample_dir / "val").glob("*.jpg"))[index])


@pytest.fixture(scope="module")
def image_folder(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A JPEG, a PNG with alpha, a grayscale PNG, an EXIF-rotated JPEG, a truncated JPEG, and a
    JPEG in a subfolder."""
    folder = tmp_path_factory.mktemp("inputs")
    pixels = _sample_pixels(sample_dir)  # 240 x 320
    Image.fromarray(pixels).save(folder / "photo.jpg", quality=95)
    rgba = np.dstack([pixels[:150, :200], np.full((150, 200), 255, np.uint8)])
    rgba[:20, :20, 3] = 0
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
    Image.fromarray(pixels[:, :, 1]).save(folder / "gray.png")
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # rotate 90 degrees clockwise for display
    Image.fromarray(pixels[:120, :200]).save(folder / "rotated.jpg", exif=exif)
    whole = (folder / "photo.jpg").read_bytes()
    (folder / "broken.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "sub").mkdir()
    Image.fromarray(pixels[:160, :160]).save(folder / "sub" / "nested.jpg")
    return folder


EXPECTED_SIZES = {  # drawn output name -> (width, height) after EXIF orientation
    "photo.jpg": (320, 240),
    "alpha.png": (200, 150),
    "gray.png": (320, 240),
    "rotated.jpg": (120, 200),
}


def _check_outputs(out: Path, expected: dict[str, tuple[int, int]], folder: Path) -> dict[str, Any]:
    for name, size in expected.items():
        assert (out / name).is_file(), name
        with Image.open(out / name) as drawn:
            assert drawn.size == size, name
    data = json.loads((out / "predictions.json").read_text())
    assert sorted(image["drawn"] for image in data["images"]) == sorted(expected)
    assert sorted(image["file_name"] for image in data["images"]) == sorted(expected)  # no suffix changed here
    assert {(i["width"], i["height"]) for i in data["images"]} == set(expected.values())
    assert "broken.jpg" not in {Path(i["path"]).name for i in data["images"]}
    # The results load against a ground-truth-like COCO made from the images list.
    gt = COCO()
    gt.dataset = {"images": data["images"], "categories": data["categories"], "annotations": []}
    gt.createIndex()
    results = gt.loadRes(data["annotations"])
    assert len(results.anns) == len(data["annotations"]) > 0
    assert {a["category_id"] for a in data["annotations"]} <= CATEGORY_IDS
    assert {c["id"] for c in data["categories"]} == CATEGORY_IDS
    assert len(COCO(str(out / "predictions.json")).anns) == len(data["annotations"]), "the file is a COCO json too"
    sizes = {i["id"]: (i["width"], i["height"]) for i in data["images"]}
    for annotation in data["annotations"]:
        x, y, w, h = annotation["bbox"]
        width, height = sizes[annotation["image_id"]]
        assert min(x, y, w, h) >= 0
        assert x + w <= width + 1e-3 and y + h <= height + 1e-3
    _check_drawn_border(out, data, folder)
    return data


def _check_drawn_border(out: Path, data: dict[str, Any], folder: Path) -> None:
    """The best detection of the lossless PNG output is drawn along its left edge, in its class colour."""
    image_id = next(i["id"] for i in data["images"] if i["drawn"] == "alpha.png")
    best = max((a for a in data["annotations"] if a["image_id"] == image_id), key=lambda a: a["score"])
    label = sorted(CATEGORY_IDS).index(best["category_id"])
    x, y, _, h = best["bbox"]
    with Image.open(out / "alpha.png") as drawn_file:
        drawn = np.asarray(drawn_file.convert("RGB"))
    source = load_image(folder / "alpha.png")
    left = min(max(round(x), 0), drawn.shape[1] - 1)
    rows = slice(round(y + h / 2), max(round(y + h) - 1, round(y + h / 2) + 1))
    edge = drawn[rows, left]
    assert len(edge) > 0
    assert (edge == class_color(label)).all(axis=1).mean() > 0.9
    assert (edge != source[rows, left]).any(axis=1).mean() > 0.5


def test_predict_folder_in_process(
    checkpoint: Path, image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: Any
) -> None:
    out = tmp_path / "out"
    args = ["--ckpt", str(checkpoint), str(image_folder), "--out", str(out), "--score-threshold", "0.0", "--csv"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 0
    data = _check_outputs(out, EXPECTED_SIZES, image_folder)
    assert not (out / "sub").exists(), "subfolders only with --recursive"
    printed = capsys.readouterr().out
    assert "4 images predicted" in printed and "1 skipped" in printed and "broken.jpg" in printed
    assert "broken.jpg" in caplog.text
    rows = (out / "predictions.csv").read_text().splitlines()
    assert rows[0].split(",")[:5] == ["image_id", "file_name", "category_id", "class_name", "score"]
    assert len(rows) - 1 == len(data["annotations"])

    # The outputs exist now: a second run stops unless told to overwrite, and then replaces only them.
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert "already exists; choose another --out, or pass --overwrite" in capsys.readouterr().err
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--overwrite"])
    assert exit_info.value.code == 0
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.cli
def test_predict_command_recursive(checkpoint: Path, image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = [sys.executable, "-m", "detlit.predict", "--ckpt", str(checkpoint), str(image_folder)]
    command += ["--recursive", "--out", str(out), "--score-threshold", "0.0", "--batch-size", "2"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "broken.jpg" in result.stderr
    assert "5 images predicted" in result.stdout
    _check_outputs(out, {**EXPECTED_SIZES, "sub/nested.jpg": (160, 160)}, image_folder)


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda d, c: ["--ckpt", str(d / "missing.ckpt"), str(d)], "missing.ckpt does not exist"),
        (lambda d, c: ["--ckpt", str(c), str(d / "nothing-here")], "nothing-here does not exist"),
        (lambda d, c: ["--ckpt", str(c), str(d / "*.tif")], "no images found"),
    ],
)
def test_bad_arguments_end_in_one_sentence(
    make_args: Any, message: str, image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = tmp_path / "fake.ckpt"
    checkpoint.write_bytes(b"never loaded")
    with pytest.raises(SystemExit) as exit_info:
        main([*make_args(image_folder, checkpoint), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: ") and message in error[0]
    assert not (tmp_path / "out").exists()


def test_not_a_checkpoint_is_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture[str], sample_dir: Path) -> None:
    image = sorted((sample_dir / "val").glob("*.jpg"))[0]
    text, other = tmp_path / "text.ckpt", tmp_path / "other.ckpt"
    text.write_bytes(b"not a checkpoint")
    torch.save({"model": {"w": torch.zeros(2)}}, other)  # a whole archive, but not a detlit checkpoint
    for checkpoint, sentence in ((text, "is not a whole checkpoint"), (other, "is not a detlit checkpoint")):
        with pytest.raises(SystemExit) as exit_info:
            main(["--ckpt", str(checkpoint), str(image), "--out", str(tmp_path / "out")])
        assert exit_info.value.code == 2
        assert sentence in capsys.readouterr().err


def test_outputs_never_replace_inputs(checkpoint: Path, image_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--ckpt", str(checkpoint), str(image_folder / "photo.jpg"), "--out", str(image_folder), "--overwrite"])
    assert exit_info.value.code == 2
    assert "which is an input of this command" in capsys.readouterr().err


# --- Python API ----------------------------------------------------------------------------


def test_predictor_takes_paths_pil_images_and_arrays(checkpoint: Path, image_folder: Path) -> None:
    predictor = Predictor.from_checkpoint(checkpoint, score_threshold=0.0)
    assert predictor.class_names == ["circle", "square", "triangle"]
    path = image_folder / "rotated.jpg"
    with Image.open(path) as pil_image:
        pil_image.load()
    pixels = load_image(path)
    assert pixels.shape == (200, 120, 3)
    gray = load_image(image_folder / "gray.png")
    assert gray.shape == (240, 320, 3) and (gray[..., 0] == gray[..., 2]).all()

    single = predictor(str(path))
    several = predictor([path, pil_image, pixels, image_folder / "photo.jpg"])
    assert len(several) == 4
    for prediction in [single, *several[:3]]:
        assert (prediction.height, prediction.width) == (200, 120)
        assert len(prediction) > 0
        np.testing.assert_allclose(prediction.boxes, single.boxes, atol=1e-4)
        np.testing.assert_allclose(prediction.scores, single.scores, atol=1e-6)
    other = several[3]
    assert (other.height, other.width) == (240, 320)
    for prediction in several:
        n = len(prediction)
        assert prediction.boxes.shape == (n, 4) and prediction.scores.shape == (n,) and prediction.labels.shape == (n,)
        assert (prediction.boxes[:, 2] >= prediction.boxes[:, 0]).all()
        assert (prediction.boxes[:, [0, 2]] <= prediction.width).all()
        assert (prediction.boxes[:, [1, 3]] <= prediction.height).all()
        assert prediction.class_names == [predictor.class_names[i] for i in prediction.labels]
        assert prediction.category_ids == [[1, 3, 7][i] for i in prediction.labels]
        assert (np.diff(prediction.scores) <= 0).all()
    # In a batch with an image of another size, each image gives what it gives alone.
    alone = predictor(image_folder / "photo.jpg")
    np.testing.assert_allclose(other.boxes, alone.boxes, atol=1e-4)


def test_score_thresholds_from_the_checkpoint_filter_per_class(checkpoint: Path, tmp_path: Path) -> None:
    image = _synthetic_image()
    everything = Predictor.from_checkpoint(checkpoint, score_threshold=0.0)(image)
    labels_seen = sorted(set(everything.labels.tolist()))
    assert len(labels_seen) >= 2, "the test needs detections of two classes"
    keep_label, cut_label = labels_seen[0], labels_seen[1]
    median = float(np.median(everything.scores[everything.labels == keep_label]))
    thresholds = [1.0, 1.0, 1.0]
    thresholds[keep_label] = median
    thresholds[cut_label] = 0.0
    raw = torch.load(checkpoint, map_location="cpu", weights_only=False)
    raw["detlit_score_thresholds"] = thresholds
    with_thresholds = tmp_path / "thresholds.ckpt"
    torch.save(raw, with_thresholds)

    predictor = Predictor.from_checkpoint(with_thresholds)
    np.testing.assert_array_equal(predictor.score_thresholds, thresholds)
    filtered = predictor(image)
    expected = everything.scores >= np.array(thresholds)[everything.labels]
    assert 0 < expected.sum() < len(everything)
    np.testing.assert_array_equal(filtered.labels, everything.labels[expected])
    np.testing.assert_allclose(filtered.scores, everything.scores[expected])
    np.testing.assert_allclose(filtered.boxes, everything.boxes[expected])
    assert set(filtered.labels.tolist()) <= {keep_label, cut_label}

    # A threshold given by the caller wins over the checkpoint's; without either, the default.
    assert (Predictor.from_checkpoint(with_thresholds, score_threshold=0.3).score_thresholds == 0.3).all()
    assert (Predictor.from_checkpoint(checkpoint).score_thresholds == DEFAULT_SCORE_THRESHOLD).all()


def _synthetic_image() -> np.ndarray:
    rng = np.random.default_rng(0)
    image = np.full((120, 160, 3), 90, np.uint8)
    for _ in range(6):
        x, y = rng.integers(0, 120), rng.integers(0, 80)
        image[y : y + 40, x : x + 40] = rng.integers(0, 256, 3)
    return image


def test_mixed_precision_runs_on_cpu(checkpoint: Path, sample_dir: Path) -> None:
    image = _sample_pixels(sample_dir)
    full = Predictor.from_checkpoint(checkpoint, score_threshold=0.05)(image)
    half = Predictor.from_checkpoint(checkpoint, score_threshold=0.05, precision="bf16")(image)
    assert half.boxes.dtype == np.float32 and len(half) > 0
    # bfloat16 keeps 8 bits of mantissa: the best detection moves by a few pixels at most.
    assert abs(float(half.scores[0]) - float(full.scores[0])) < 0.02


# --- parity with detectron2's DefaultPredictor ---------------------------------------------------


@pytest.fixture(scope="module")
def default_predictor(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from detlit.model.module import DetectionModule

    module = DetectionModule.load_from_checkpoint(checkpoint, map_location="cpu")
    return reference_default_predictor(module, tmp_path_factory.mktemp("d2"))


def _assert_same(ours: Any, theirs: Any) -> None:
    instances = theirs["instances"].to("cpu")
    assert len(ours) == len(instances) > 0
    np.testing.assert_array_equal(ours.labels, instances.pred_classes.numpy())
    np.testing.assert_allclose(ours.boxes, instances.pred_boxes.tensor.numpy(), atol=1e-3, rtol=0)
    np.testing.assert_allclose(ours.scores, instances.scores.numpy(), atol=1e-5, rtol=0)


def test_parity_with_default_predictor_at_the_test_size(
    checkpoint: Path, sample_dir: Path, default_predictor: Any
) -> None:
    # 128 x 192 is the tiny model's test size (short side 128, long side at most 192): neither
    # resizes, so detlit's own resize is compared as it is.
    image = np.ascontiguousarray(_sample_pixels(sample_dir)[:128, :192])
    predictor = Predictor.from_checkpoint(checkpoint, score_threshold=0.05)  # detectron2's SCORE_THRESH_TEST
    assert predictor.preprocess(image)["image"].shape[1:] == (128, 192)
    _assert_same(predictor(image), default_predictor(np.ascontiguousarray(image[:, :, ::-1])))


def test_parity_with_default_predictor_when_resizing(
    checkpoint: Path, sample_dir: Path, default_predictor: Any
) -> None:
    image = _sample_pixels(sample_dir)  # 240 x 320, scaled to 128 x 171
    predictor = Predictor.from_checkpoint(checkpoint, score_threshold=0.05, resize="detectron2")
    _assert_same(predictor(image), default_predictor(np.ascontiguousarray(image[:, :, ::-1])))


# --- finding inputs and naming outputs --------------------------------------------------------


def test_inputs_from_files_folders_and_patterns(image_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from detlit.inference.predict import find_images

    names = [i.name for i in find_images([str(image_folder)])]
    assert names == ["alpha.png", "broken.jpg", "gray.png", "photo.jpg", "rotated.jpg"]
    recursive = [i.name for i in find_images([str(image_folder)], recursive=True)]
    assert recursive == [*names, "sub/nested.jpg"]
    # A pattern names files relative to its folder part; a file named twice is taken once.
    pattern = find_images([str(image_folder / "**" / "*.jpg"), str(image_folder / "photo.jpg")])
    assert [i.name for i in pattern] == ["broken.jpg", "photo.jpg", "rotated.jpg", "sub/nested.jpg"]
    monkeypatch.chdir(image_folder)
    assert [i.name for i in find_images(["*.png"])] == ["alpha.png", "gray.png"]
    # Files under the output folder are not inputs when a folder search finds them.
    assert [i.name for i in find_images(["."], recursive=True, exclude=Path("sub"))] == names


def test_output_names_keep_jpeg_and_never_collide() -> None:
    from detlit.inference.predict import InputImage, output_names

    images = [InputImage(Path(p), n) for p, n in [("a/x.bmp", "x.bmp"), ("b/x.png", "x.png"), ("c/X.JPG", "y/X.JPG")]]
    assert output_names(images) == ["x.png", "x-2.png", "y/X.JPG"]
