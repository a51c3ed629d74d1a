"""Stage 3, augmentation and resizing: presets, custom pipelines from YAML, and the boxes they drop."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.cli import LightningArgumentParser
from PIL import Image

from detlit.data.coco import load_coco
from detlit.data.datamodule import CocoDataModule
from detlit.data.dataset import DetectionDataset
from detlit.data.transforms import (
    MIN_AREA,
    PRESETS,
    RandomCropKeepingABox,
    ResizeShortestEdge,
    describe_augment,
    train_transform,
)
from detlit.errors import ConfigError


def _write(tmp_path: Path, boxes: list[list[float]], crowd: list[int] | None = None) -> DetectionDataset:
    """A 200x100 black image with a white rectangle per box (x, y, w, h), as a one-image dataset."""
    image = np.zeros((100, 200, 3), dtype=np.uint8)
    for x, y, w, h in boxes:
        image[int(y) : int(y + h), int(x) : int(x + w)] = 255
    Image.fromarray(image).save(tmp_path / "a.png")
    crowd = crowd or [0] * len(boxes)
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 200, "height": 100}],
        "annotations": [
            {"id": i + 1, "image_id": 1, "category_id": 1, "bbox": box, "iscrowd": flag}
            for i, (box, flag) in enumerate(zip(boxes, crowd, strict=True))
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (tmp_path / "a.json").write_text(json.dumps(coco))
    dataset = load_coco(tmp_path / "a.json", tmp_path)
    return DetectionDataset(dataset.images, tmp_path, dataset.label_map(), train_transform("none", [100], 1000))


def _item(dataset: DetectionDataset, transform: A.Compose, seed: int) -> dict[str, Any]:
    transform.set_random_seed(seed)
    dataset.transform = transform
    return dataset[0]


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_keeps_the_box_on_its_pixels(tmp_path: Path, preset: str) -> None:
    dataset = _write(tmp_path, [[10, 20, 40, 20]])
    transform = train_transform(preset, [50, 100], 1000)
    kept = 0
    for seed in range(24):
        item = _item(dataset, transform, seed)
        boxes = item["instances"].gt_boxes.tensor
        h, w = item["image"].shape[1:]
        assert item["boxes_dropped"] == 1 - len(boxes)
        if preset != "strong":
            assert (h, w) in ((50, 100), (100, 200))  # only the resize changes the size
        if len(boxes) == 0:
            continue
        kept += 1
        box = boxes[0].tolist()
        assert 0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h
        ys, xs = np.nonzero(item["image"][0].numpy() > 127)
        assert box == pytest.approx([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], abs=1.5)
    # Only the strong preset's affine move can push the one box out of the image.
    assert kept == 24 if preset != "strong" else kept >= 20


def test_presets_differ_in_what_they_change(tmp_path: Path) -> None:
    """flip mirrors some images, default also changes colours, strong also changes sizes."""
    dataset = _write(tmp_path, [[10, 20, 40, 20]])
    seen: dict[str, set[tuple[Any, ...]]] = {}
    for preset in PRESETS:
        transform = train_transform(preset, [100], 1000)
        items = [_item(dataset, transform, seed) for seed in range(16)]
        seen[preset] = {
            (
                round(item["instances"].gt_boxes.tensor[0, 0].item()) if len(item["instances"]) else None,
                int(item["image"].max()),
                tuple(item["image"].shape),
            )
            for item in items
        }
    assert seen["none"] == {(10, 255, (3, 100, 200))}
    assert seen["flip"] == {(10, 255, (3, 100, 200)), (150, 255, (3, 100, 200))}
    assert {x for x, _, _ in seen["default"]} == {10, 150}
    assert len({m for _, m, _ in seen["default"]}) > 1  # brightness jitter
    assert {s for _, _, s in seen["default"]} == {(3, 100, 200)}
    assert len({s for _, _, s in seen["strong"]}) > 1  # crops


def test_strong_counts_the_boxes_its_crops_cut(tmp_path: Path) -> None:
    # Two objects far apart: a crop of under 3/4 of the width keeps one whole and cuts the other
    # below the visibility threshold, so it must be dropped, and counted.
    dataset = _write(tmp_path, [[10, 20, 40, 20], [150, 60, 40, 20]])
    transform = train_transform("strong", [100], 1000)
    dropped = []
    for seed in range(60):
        item = _item(dataset, transform, seed)
        boxes = item["instances"].gt_boxes.tensor
        assert item["boxes_dropped"] == 2 - len(boxes)
        h, w = item["image"].shape[1:]
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        assert (areas >= MIN_AREA).all()
        dropped.append(item["boxes_dropped"])
    assert 5 <= dropped.count(1) <= 40
    assert dropped.count(0) >= 20


def test_min_visibility_decides_which_cut_boxes_stay(tmp_path: Path) -> None:
    # A crop to x < 100 leaves 50% of the second box (kept), 25% of the third (dropped), and
    # nothing of a crowd region (dropped, but not an object, so not counted).
    dataset = _write(tmp_path, [[10, 20, 40, 20], [80, 50, 40, 20], [90, 75, 40, 20], [150, 5, 40, 10]], [0, 0, 0, 1])
    transform = train_transform([A.Crop(x_min=0, y_min=0, x_max=100, y_max=100)], [100], 1000)
    item = _item(dataset, transform, 0)
    assert torch.allclose(item["instances"].gt_boxes.tensor, torch.tensor([[10.0, 20, 50, 40], [80, 50, 100, 70]]))
    assert not item["instances"].has("gt_crowd"), "no crowd region is left: the field (one more tensor) is left out"
    assert item["boxes_dropped"] == 1


def test_min_area_drops_boxes_the_resize_shrinks_to_specks(tmp_path: Path) -> None:
    # Halving the image: a 3x3 box becomes 2.25 px^2 (dropped), a 6x6 box 9 px^2 (kept).
    dataset = _write(tmp_path, [[10, 10, 3, 3], [100, 50, 6, 6]])
    item = _item(dataset, train_transform("none", [50], 1000), 0)
    assert torch.allclose(item["instances"].gt_boxes.tensor, torch.tensor([[50.0, 25, 53, 28]]))
    assert item["boxes_dropped"] == 1


def test_random_crop_keeps_one_box_whole(tmp_path: Path) -> None:
    dataset = _write(tmp_path, [[10, 20, 40, 20], [150, 60, 30, 10]])
    transform = train_transform([RandomCropKeepingABox(scale=(0.5, 0.5))], [100], 1000)
    kept_sizes = set()
    for seed in range(16):
        item = _item(dataset, transform, seed)
        assert tuple(item["image"].shape) == (3, 50, 100)
        (box,) = item["instances"].gt_boxes.tensor.tolist()  # the windows cannot hold both
        kept_sizes.add((round(box[2] - box[0], 3), round(box[3] - box[1], 3)))
        assert item["boxes_dropped"] == 1
    assert kept_sizes == {(40, 20), (30, 10)}  # either box, and always whole


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(
        ConfigError, match="unknown augmentation preset 'heavy'; known presets: none, flip, default, strong"
    ):
        train_transform("heavy", [100], 200)
    with pytest.raises(ValueError, match="augmentation step 2 is a dict, not an Albumentations transform"):
        train_transform([A.HorizontalFlip(), {"class_path": "albumentations.Blur"}], [100], 200)  # type: ignore[list-item]


CUSTOM_YAML = """
data:
  train_json: {root}/train.json
  train_images: {root}/train
  num_workers: 0
  min_size_train: [128]
  max_size_train: 192
  augment:
    - class_path: albumentations.HorizontalFlip
      init_args: {{p: 1.0}}
    - class_path: albumentations.OneOf
      init_args:
        p: 0.0
        transforms:
          - class_path: albumentations.GaussianBlur
          - class_path: albumentations.GaussNoise
"""


def test_custom_pipeline_from_yaml_runs_after_the_resize(sample_dir: Path) -> None:
    parser = LightningArgumentParser()
    parser.add_lightning_class_args(CocoDataModule, "data")
    config = parser.parse_string(CUSTOM_YAML.format(root=sample_dir))
    dm = parser.instantiate_classes(config).data
    assert [type(step) for step in dm.augment] == [A.HorizontalFlip, A.OneOf]
    dm.setup("fit")
    dataset = dm.datasets["train"]
    steps = dataset.transform.transforms
    assert [type(step) for step in steps] == [ResizeShortestEdge, A.HorizontalFlip, A.OneOf]
    assert steps[0].min_sizes == [128] and steps[0].max_size == 192
    index = next(i for i, r in enumerate(dataset.records) if r.annotations)
    flipped = dataset[index]
    dataset.transform = train_transform("none", [128], 192)
    plain = dataset[index]
    w = plain["image"].shape[2]
    assert min(plain["image"].shape[1:]) == 128 or max(plain["image"].shape[1:]) == 192
    assert torch.equal(flipped["image"], plain["image"].flip(2))
    mirrored = plain["instances"].gt_boxes.tensor[:, [2, 1, 0, 3]] * torch.tensor([-1, 1, -1, 1]) + torch.tensor(
        [w, 0, w, 0]
    )
    assert torch.allclose(flipped["instances"].gt_boxes.tensor, mirrored, atol=1e-3)


def test_hyper_parameters_hold_a_plain_description_of_a_custom_pipeline(sample_dir: Path) -> None:
    dm = CocoDataModule(
        str(sample_dir / "train.json"),
        str(sample_dir / "train"),
        num_workers=0,
        augment=[A.HorizontalFlip(p=0.25), A.OneOf([A.Blur(blur_limit=(3, 3))], p=0.5)],
    )
    expected = [
        {"__class_fullname__": "HorizontalFlip", "p": 0.25},
        {
            "__class_fullname__": "OneOf",
            "p": 0.5,
            "transforms": [{"__class_fullname__": "Blur", "p": 0.5, "blur_limit": [3, 3]}],
        },
    ]
    assert dm.hparams["augment"] == expected
    assert dm.hparams_initial["augment"] == expected
    assert yaml.safe_load(yaml.safe_dump(dict(dm.hparams)))["augment"] == expected
    buffer = io.BytesIO()
    torch.save({"datamodule_hyper_parameters": dict(dm.hparams)}, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True)["datamodule_hyper_parameters"]["augment"] == expected
    assert isinstance(A.from_dict({"transform": expected[1]}), A.OneOf)
    assert describe_augment("strong") == "strong"
    preset = CocoDataModule(str(sample_dir / "train.json"), str(sample_dir / "train"), num_workers=0)
    assert preset.hparams["augment"] == "flip" and preset.augment == "flip"
