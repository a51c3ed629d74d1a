"""python -m detlit.browse: the images as the loaders deliver them, drawn in a grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from detlit.browse import main
from detlit.data.images import read_image
from detlit.data.transforms import eval_transform
from detlit.pictures.drawing import class_color, grid_shape, title_height
from detlit.training.browse import browse, build_datamodule, take_images, to_rgb

from .conftest import TINY_SIZES


@pytest.fixture()
def config(sample_dir: Path, tmp_path: Path) -> Path:
    """A fit config like configs/sample_cpu.yaml, on the test sample."""
    document = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "max_epochs": 1},
        "model": {"weights": None, "overrides": {"MODEL.RESNETS.DEPTH": 18}},
        "data": {
            "train_json": str(sample_dir / "train.json"),
            "train_images": str(sample_dir / "train"),
            "val_json": str(sample_dir / "val.json"),
            "val_images": str(sample_dir / "val"),
            "batch_size": 3,
            "num_workers": 0,
            **TINY_SIZES,
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_grid_of_augmented_training_images(config: Path, tmp_path: Path) -> None:
    out = tmp_path / "browse"
    cell, n = 160, 5
    assert browse(["--config", str(config), "--data.augment", "strong"], n=n, out=out, cell=cell) == 0
    path = out / "train-seed0.png"
    assert path.is_file()
    rows, cols = grid_shape(n)
    with Image.open(path) as grid_file:
        grid = np.asarray(grid_file.convert("RGB"))
    assert grid.shape == (rows * (cell + title_height(cell)) + (rows + 1) * 4, cols * cell + (cols + 1) * 4, 3)

    datamodule = build_datamodule(["--config", str(config), "--data.augment", "strong"])
    assert datamodule.hparams["augment"] == "strong", "command-line overrides reach the data module"
    items = take_images(datamodule, "train", n, seed=0)
    assert len(items) == n
    labels = set()
    for item in items:
        height, width = item["image"].shape[1:]
        boxes = item["instances"].gt_boxes.tensor.numpy()
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        labels |= set(item["instances"].gt_classes.tolist())
    assert labels, "the grid should show some boxes"
    # Every class shown is drawn in its colour somewhere in the grid.
    for label in labels:
        assert (grid == class_color(label)).all(axis=2).sum() > 20, label


def test_the_same_seed_draws_the_same_images(config: Path) -> None:
    datamodule = build_datamodule(["--config", str(config), "--data.augment", "strong"])
    first = take_images(datamodule, "train", 3, seed=7)
    again = take_images(datamodule, "train", 3, seed=7)
    for a, b in zip(first, again, strict=True):
        assert a["file_name"] == b["file_name"]
        assert np.array_equal(a["image"].numpy(), b["image"].numpy())


def test_validation_images_are_shown_in_rgb(config: Path) -> None:
    datamodule = build_datamodule(["--config", str(config)])
    items = take_images(datamodule, "val", 2, seed=0)
    transform = eval_transform(TINY_SIZES["min_size_test"], TINY_SIZES["max_size_test"])
    for item in items:
        expected = transform(image=read_image(Path(item["file_name"])), bboxes=np.zeros((0, 4)), labels=[], crowd=[])
        assert np.array_equal(to_rgb(item, "BGR"), expected["image"])


def test_missing_config_is_one_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--n", "3"])
    assert exit_info.value.code == 2
    assert "--config is missing" in capsys.readouterr().err


def test_an_existing_grid_is_replaced_only_with_overwrite(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "browse"
    out.mkdir()
    (out / "train-seed0.png").write_bytes(b"mine")
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(config), "--n", "2", "--out", str(out)])
    assert exit_info.value.code == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "train-seed0.png").read_bytes() == b"mine"
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(config), "--n", "2", "--out", str(out), "--overwrite"])
    assert exit_info.value.code == 0
    assert (out / "train-seed0.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "notes.txt").read_text() == "keep me"
