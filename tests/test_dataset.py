"""Stages [3]-[5]: the detectron2 input dict contract, after augmentation."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from detlit.compat import Instances
from detlit.data.coco import load_coco
from detlit.data.datamodule import CocoDataModule
from detlit.data.dataset import DetectionDataset
from detlit.data.images import read_image
from detlit.data.transforms import eval_transform, resized_shape, train_transform
from detlit.errors import DataError


def _datamodule(sample_dir: Path, **kwargs: object) -> CocoDataModule:
    return CocoDataModule(
        train_json=str(sample_dir / "train.json"),
        train_images=str(sample_dir / "train"),
        val_json=str(sample_dir / "val.json"),
        val_images=str(sample_dir / "val"),
        min_size_train=[160, 200],
        max_size_train=260,
        min_size_test=180,
        max_size_test=260,
        num_workers=0,
        **kwargs,  # type: ignore[arg-type]
    )


def test_train_dict_contract(sample_dir: Path) -> None:
    dm = _datamodule(sample_dir)
    dm.setup("fit")
    records = {r.id: r for r in dm.train_data.images}
    for item in dm.datasets["train"]:
        image, instances = item["image"], item["instances"]
        assert image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3
        assert isinstance(instances, Instances)
        assert instances.image_size == tuple(image.shape[1:])
        assert min(image.shape[1:]) in (160, 200) or max(image.shape[1:]) == 260
        record = records[item["image_id"]]
        assert (item["height"], item["width"]) == (record.height, record.width)
        boxes = instances.gt_boxes.tensor
        assert boxes.dtype == torch.float32 and instances.gt_classes.dtype == torch.int64
        assert len(boxes) == len(record.annotations)
        h, w = image.shape[1:]
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert set(instances.gt_classes.tolist()) <= {0, 1, 2}
        assert item["boxes_dropped"] == 0  # a flip and a resize cut nothing
        assert "target" not in item  # metric targets only in evaluation
    assert all("target" in item for item in dm.datasets["val"])


def test_channel_order_is_bgr_for_model_zoo_configs(sample_dir: Path) -> None:
    dataset = load_coco(sample_dir / "val.json", sample_dir / "val")
    record = dataset.images[0]
    rgb = read_image(sample_dir / "val" / record.file_name)
    transform = (
        eval_transform(record.height, 10_000) if record.height <= record.width else eval_transform(record.width, 10_000)
    )
    label_map = dataset.label_map()
    bgr_item = DetectionDataset([record], dataset.image_root, label_map, transform, "BGR")[0]
    rgb_item = DetectionDataset([record], dataset.image_root, label_map, transform, "RGB")[0]
    assert torch.equal(rgb_item["image"], torch.from_numpy(rgb.copy()).permute(2, 0, 1))
    assert torch.equal(bgr_item["image"], rgb_item["image"].flip(0))


def test_boxes_follow_a_flip_and_resize(tmp_path: Path) -> None:
    image = np.zeros((100, 200, 3), dtype=np.uint8)
    image[20:40, 10:50] = 255  # the object: x 10..50, y 20..40
    Image.fromarray(image).save(tmp_path / "a.png")
    coco = {
        "images": [{"id": 3, "file_name": "a.png", "width": 200, "height": 100}],
        "annotations": [{"id": 1, "image_id": 3, "category_id": 5, "bbox": [10, 20, 40, 20]}],
        "categories": [{"id": 5, "name": "thing"}],
    }
    (tmp_path / "a.json").write_text(json.dumps(coco))
    dataset = load_coco(tmp_path / "a.json", tmp_path)
    seen = set()
    for seed in range(12):
        transform = train_transform("flip", [50], 1000)
        transform.set_random_seed(seed)
        item = DetectionDataset(dataset.images, tmp_path, dataset.label_map(), transform)[0]
        box = item["instances"].gt_boxes.tensor[0].tolist()
        pixels = item["image"][0].numpy()
        ys, xs = np.nonzero(pixels > 127)
        assert box == pytest.approx([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], abs=1.0)
        seen.add(round(box[0]))
    assert seen == {5, 75}  # both unflipped and flipped at half size were drawn


def test_empty_image_has_no_instances(tmp_path: Path) -> None:
    Image.new("RGB", (64, 48)).save(tmp_path / "e.jpg")
    coco = {
        "images": [{"id": 1, "file_name": "e.jpg", "width": 64, "height": 48}],
        "annotations": [],
        "categories": [{"id": 1, "name": "x"}],
    }
    (tmp_path / "e.json").write_text(json.dumps(coco))
    dataset = load_coco(tmp_path / "e.json", tmp_path)
    item = DetectionDataset(dataset.images, tmp_path, dataset.label_map(), train_transform("flip", [32], 64))[0]
    assert len(item["instances"]) == 0 and item["instances"].gt_boxes.tensor.shape == (0, 4)
    assert item["target"]["boxes"].shape == (0, 4)
    lean = DetectionDataset(
        dataset.images, tmp_path, dataset.label_map(), train_transform("flip", [32], 64), targets=False
    )
    assert "target" not in lean[0] and len(lean[0]["instances"]) == 0  # training items carry no metric targets


def test_images_without_objects_can_be_left_out_of_training(tmp_path: Path) -> None:
    for name in "abcd":
        Image.new("RGB", (64, 48)).save(tmp_path / f"{name}.jpg")
    coco = {
        "images": [{"id": i, "file_name": f"{n}.jpg", "width": 64, "height": 48} for i, n in enumerate("abcd", 1)],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10]},
            {"id": 2, "image_id": 3, "category_id": 1, "bbox": [20, 20, 30, 20], "iscrowd": 1},
            {"id": 3, "image_id": 4, "category_id": 1, "bbox": [2, 2, 10, 10]},
        ],
        "categories": [{"id": 1, "name": "x"}],
    }
    (tmp_path / "t.json").write_text(json.dumps(coco))
    args = {"train_json": str(tmp_path / "t.json"), "train_images": str(tmp_path), "num_workers": 0}
    assert [r.id for r in CocoDataModule(**args).train_data.images] == [1, 2, 3, 4]  # kept by default
    dm = CocoDataModule(**args, val_json=str(tmp_path / "t.json"), train_empty_images=False)
    assert [r.id for r in dm.train_data.images] == [1, 4]  # image 3 holds only a crowd region
    assert [r.id for r in dm.val_data.images] == [1, 2, 3, 4]  # evaluation keeps every image
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 2 and len(dm.datasets["train"][1]["instances"]) == 1


def test_crowd_regions_are_flagged_ignore_regions(tmp_path: Path) -> None:
    Image.new("RGB", (64, 48)).save(tmp_path / "c.jpg")
    coco = {
        "images": [{"id": 1, "file_name": "c.jpg", "width": 64, "height": 48}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [20, 20, 30, 20], "iscrowd": 1},
        ],
        "categories": [{"id": 1, "name": "x"}],
    }
    (tmp_path / "c.json").write_text(json.dumps(coco))
    dataset = load_coco(tmp_path / "c.json", tmp_path)
    item = DetectionDataset(dataset.images, tmp_path, dataset.label_map(), eval_transform(48, 64))[0]
    assert item["instances"].gt_crowd.tolist() == [False, True]
    assert item["target"]["iscrowd"].tolist() == [0, 1]
    coco["annotations"] = coco["annotations"][:1]
    (tmp_path / "c.json").write_text(json.dumps(coco))
    dataset = load_coco(tmp_path / "c.json", tmp_path)
    plain = DetectionDataset(dataset.images, tmp_path, dataset.label_map(), eval_transform(48, 64))[0]
    # Without a crowd region the field is left out (a loader worker sends one tensor fewer); the heads read it as none.
    assert not plain["instances"].has("gt_crowd") and plain["instances"].gt_classes.tolist() == [0]


def test_resize_matches_detectron2() -> None:
    from detectron2.data.transforms import ResizeShortestEdge

    for h, w in [(416, 416), (480, 640), (1000, 300), (333, 501)]:
        for short, cap in [(800, 1333), (256, 384), (600, 600)]:
            expected = ResizeShortestEdge.get_output_shape(h, w, short, cap)
            assert resized_shape(h, w, short, cap) == expected


def test_datamodule_exposes_label_map(sample_dir: Path) -> None:
    dm = _datamodule(sample_dir)
    assert dm.num_classes == 3
    assert dm.category_ids == [1, 3, 7]
    assert dm.class_names == ["circle", "square", "triangle"]


def test_detectron2_registration(sample_dir: Path) -> None:
    from detlit.compat import DatasetCatalog, MetadataCatalog
    from detlit.data.detectron2 import register_detectron2

    dataset = load_coco(sample_dir / "val.json", sample_dir / "val")
    register_detectron2("detlit_test_val", dataset)
    dicts = DatasetCatalog.get("detlit_test_val")
    metadata = MetadataCatalog.get("detlit_test_val")
    assert len(dicts) == len(dataset.images)
    assert metadata.thing_classes == ["circle", "square", "triangle"]
    assert metadata.thing_dataset_id_to_contiguous_id == {1: 0, 3: 1, 7: 2}
    first = next(d for d in dicts if d["annotations"])
    assert Path(first["file_name"]).is_file()
    record = next(r for r in dataset.images if r.id == first["image_id"])
    assert [a["category_id"] for a in first["annotations"]] == [
        dataset.label_map().label(a.category_id) for a in record.annotations
    ]
    from detectron2.utils.visualizer import Visualizer

    drawn = Visualizer(read_image(Path(first["file_name"])), metadata).draw_dataset_dict(first).get_image()
    assert drawn.shape == (record.height, record.width, 3)


def test_datamodule_stops_on_data_errors_and_logs_warnings(
    sample_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    coco = json.loads((sample_dir / "train.json").read_text())
    coco["images"][0]["width"] += 7  # disagrees with the file: an error
    (tmp_path / "bad.json").write_text(json.dumps(coco))
    with pytest.raises(DataError, match=r"bad.json: image 1 .* but the json says .*python -m detlit.check"):
        CocoDataModule(str(tmp_path / "bad.json"), str(sample_dir / "train"), num_workers=0)
    coco["images"][0]["width"] -= 7
    coco["annotations"].append({**coco["annotations"][0], "id": 10_000})  # a repeat: a warning
    (tmp_path / "warn.json").write_text(json.dumps(coco))
    with caplog.at_level(logging.WARNING):
        dm = CocoDataModule(str(tmp_path / "warn.json"), str(sample_dir / "train"), num_workers=0)
    assert dm.num_classes == 3
    assert "duplicate_annotation" in caplog.text


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        # 16-bit grayscale (PNG I;16): the top 8 bits, not a white image
        (lambda: Image.fromarray(np.full((4, 4), 32896, np.uint16)), (128, 128, 128)),
        # 32-bit integer holding 16-bit data
        (lambda: Image.fromarray(np.full((4, 4), 65535, np.int32)), (255, 255, 255)),
        # float in [0, 1]
        (lambda: Image.fromarray(np.full((4, 4), 0.5, np.float32)), (128, 128, 128)),
        (lambda: Image.new("CMYK", (4, 4), (0, 255, 255, 0)), (255, 0, 0)),
        (lambda: Image.new("LA", (4, 4), (77, 10)), (77, 77, 77)),
        (lambda: Image.new("RGBA", (4, 4), (10, 20, 30, 0)), (10, 20, 30)),
        (lambda: Image.new("1", (4, 4), 1), (255, 255, 255)),
    ],
    ids=["I;16", "I", "F", "CMYK", "LA", "RGBA", "1"],
)
def test_every_image_mode_becomes_8_bit_rgb(make: Any, expected: tuple[int, int, int], tmp_path: Path) -> None:
    image = make()
    path = tmp_path / ("image.tif" if image.mode in ("I", "F", "CMYK") else "image.png")
    image.save(path)
    pixels = read_image(path)
    assert pixels.dtype == np.uint8 and pixels.shape == (4, 4, 3)
    assert tuple(int(v) for v in pixels[1, 1]) == expected


def test_a_palette_with_a_transparent_colour_keeps_its_colours(tmp_path: Path) -> None:
    image = Image.new("P", (4, 4), 1)
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    image.save(tmp_path / "p.png", transparency=0)
    with Image.open(tmp_path / "p.png") as opened:
        assert opened.mode == "P" and "transparency" in opened.info
    assert tuple(int(v) for v in read_image(tmp_path / "p.png")[0, 0]) == (0, 255, 0)


def _augmented(dataset: DetectionDataset, workers: int) -> list[tuple[int, tuple[int, ...], bytes]]:
    """Every training item's id, image shape and flipped-or-not pixels, through a real loader."""
    from torch.utils.data import DataLoader

    from detlit.data.dataset import collate

    loader = DataLoader(dataset, batch_size=2, num_workers=workers, collate_fn=collate, shuffle=False)
    return [
        (item["image_id"], tuple(item["image"].shape), item["image"][:, :, :8].numpy().tobytes())
        for batch in loader
        for item in batch
    ]


@pytest.mark.parametrize("workers", [0, 2])
def test_augmentations_are_the_same_run_after_run(sample_dir: Path, workers: int) -> None:
    """The random draws of the augmentations (flip, size) come from data.seed: two runs of one
    config see the same images, different seeds other ones; each worker draws its own stream."""
    data = load_coco(sample_dir / "train.json", sample_dir / "train")

    def dataset(seed: int) -> DetectionDataset:
        transform = train_transform("flip", [96, 128, 160], 256)
        return DetectionDataset(
            data.images, data.image_root, data.label_map(), transform, targets=False, augment_seed=(seed, 0)
        )

    first, again, other = (_augmented(dataset(seed), workers) for seed in (0, 0, 1))
    assert first == again
    assert first != other
    assert len({shape for _, shape, _ in first}) > 1  # the sizes were drawn, not fixed
    # Albumentations alone (no seed) draws a fresh stream each time
    unseeded = [
        _augmented(
            DetectionDataset(
                data.images,
                data.image_root,
                data.label_map(),
                train_transform("flip", [96, 128, 160], 256),
                targets=False,
            ),
            0,
        )
        for _ in range(3)
    ]
    assert unseeded[0] != unseeded[1] or unseeded[1] != unseeded[2]
