"""``python -m detlit.check``: object sizes after the resize of training and inference, and the
``tiny_objects`` finding that names slicing and tiles as the fix."""

from __future__ import annotations

import inspect
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from detlit.data.check import resize_settings
from detlit.data.checks import (
    COCO_SMALL,
    TINY_OBJECT_SIDE,
    TINY_OBJECTS_SHARE,
    Resize,
    check_dataset,
    check_file,
    object_sides,
    resize_factors,
    sliced_sizes,
)
from detlit.data.coco import read_coco
from detlit.errors import ConfigError

from .conftest import REPO

DEMO = Resize(min_size_train=(192,), max_size_train=320, min_size_test=192, max_size_test=320)  # sample_cpu.yaml


def write_dataset(
    root: Path, boxes: list[list[float]], size: tuple[int, int] = (4000, 3000), images: int = 1, files: bool = True
) -> Path:
    """A COCO json of ``images`` images of ``size`` (width, height), each with ``boxes``, and the
    image files (plain JPEGs) when ``files``."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    records, annotations = [], []
    for i in range(1, images + 1):
        if files:
            Image.new("RGB", size, (30 + i, 60, 90)).save(root / "images" / f"{i}.jpg", quality=40)
        records.append({"id": i, "file_name": f"{i}.jpg", "width": size[0], "height": size[1]})
        for box in boxes:
            area = box[2] * box[3]
            annotations.append(
                {"id": len(annotations) + 1, "image_id": i, "category_id": 1, "bbox": box, "area": area, "iscrowd": 0}
            )
    coco = {"images": records, "annotations": annotations, "categories": [{"id": 1, "name": "car"}]}
    path = root / "data.json"
    path.write_text(json.dumps(coco))
    return path


def kinds(report: Any) -> set[str]:
    return {f.kind for f in report.findings}


# --- the resize rule and the measure ------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(4000, 3000), (3000, 4000), (640, 427), (4000, 500), (333, 333)])
@pytest.mark.parametrize(("short", "cap"), [(800, 1333), (192, 320), (640, 1333)])
def test_resize_factors_are_detectron2_s(width: int, height: int, short: int, cap: int, tmp_path: Path) -> None:
    from detlit.compat import D2ResizeShortestEdge

    path = write_dataset(tmp_path, [[0, 0, 10, 10]], size=(width, height), files=False)
    dataset, _ = read_coco(path, tmp_path / "images")
    sx, sy = resize_factors(dataset, short, cap)[0]
    new_h, new_w = D2ResizeShortestEdge.get_output_shape(height, width, short, cap)
    assert (sx * width, sy * height) == pytest.approx((new_w, new_h), abs=1e-9)


def test_object_size_is_the_side_of_a_square_of_the_box_area_after_the_resize(tmp_path: Path) -> None:
    # 4000 x 3000 at 800 / 1333: 800 x 1067 (the long edge 1066.67 is under the cap, rounded up)
    path = write_dataset(tmp_path, [[10, 10, 20, 20], [100, 100, 40, 10], [0, 0, 0, 5]], files=False)
    dataset, _ = read_coco(path, tmp_path / "images")
    factors = resize_factors(dataset, 800, 1333)
    assert factors[0] == pytest.approx([1067 / 4000, 800 / 3000])
    sides = object_sides(dataset, factors)
    assert sides[0] == pytest.approx(20 * math.sqrt(1067 / 4000 * 800 / 3000))  # 5.334
    assert sides[1] == pytest.approx(20 * math.sqrt(1067 / 4000 * 800 / 3000))  # 40 x 10: the same area
    assert math.isnan(sides[2])  # a box without width has no size
    assert object_sides(dataset)[:2] == pytest.approx([20.0, 20.0])


def test_statistics_count_the_objects_under_each_size(tmp_path: Path) -> None:
    # sides after the resize (factor 0.2667): 60 -> 16.0, 20 -> 5.3, 45 -> 12.0, 150 -> 40.0
    boxes = [[0, 0, 20, 20], [50, 0, 45, 45], [0, 50, 60, 60], [200, 200, 150, 150]]
    path = write_dataset(tmp_path, boxes, files=False)
    dataset, _ = read_coco(path, tmp_path / "images")
    sizes = check_dataset(dataset, files=False, resize=Resize()).stats["object_sizes"]
    test = sizes["test"]
    assert (test["min_size"], test["max_size"], test["objects"]) == (800, 1333, 4)
    assert (test["under_8"], test["under_16"], test["under_32"]) == (0.25, 0.5, 0.75)
    assert test["median"] == pytest.approx(0.2667 * (45 + 60) / 2, abs=0.01)
    train = sizes["train"]  # at the smallest training size, 640: factor 0.2133
    assert train["min_size"] == 640 and train["under_16"] == 0.75 and train["median"] < test["median"]
    # without the resizes (training's own check, the report's), no such statistics
    assert "object_sizes" not in check_dataset(dataset, files=False).stats


# --- the finding: both sides of its threshold ---------------------------------------------------


def test_tiny_objects_fire_from_their_share(tmp_path: Path) -> None:
    tiny, large = [0, 0, 20, 20], [100, 100, 400, 400]  # 5.3 px and 107 px after the resize
    boxes = [tiny] + [large] * (round(1 / TINY_OBJECTS_SHARE) - 1)  # exactly the share
    dataset, _ = read_coco(write_dataset(tmp_path / "at", boxes, files=False), tmp_path / "at" / "images")
    report = check_dataset(dataset, files=False, resize=Resize())
    finding = next(f for f in report.findings if f.kind == "tiny_objects")
    assert finding.severity.value == "warning"
    assert finding.message.startswith(f"20% of the objects are smaller than {TINY_OBJECT_SIDE} px after the resize")
    assert "(min_size_test 800, max_size_test 1333; median 106.7 px" in finding.message
    assert "--slice 640 on python -m detlit.predict / evaluate" in finding.message
    assert "they reach a median of 25.0 px instead of 5.3" in finding.message
    assert f"python -m detlit.tile --json {tmp_path / 'at' / 'data.json'} --images" in finding.message
    assert "--out tiles --size 640" in finding.message
    below = [tiny] + [large] * round(1 / TINY_OBJECTS_SHARE)  # one object more: under the share
    dataset, _ = read_coco(write_dataset(tmp_path / "below", below, files=False), tmp_path / "below" / "images")
    assert "tiny_objects" not in kinds(check_dataset(dataset, files=False, resize=Resize()))


def test_an_object_of_exactly_the_tiny_size_is_not_tiny(tmp_path: Path) -> None:
    # 4000 x 3000 at 750 / 1000: factor 0.25 exactly, a 32 px box becomes 8 px
    dataset, _ = read_coco(write_dataset(tmp_path, [[0, 0, 32, 32]], files=False), tmp_path / "images")
    resize = Resize(min_size_test=750, max_size_test=1000)
    assert object_sides(dataset, resize_factors(dataset, 750, 1000))[0] == TINY_OBJECT_SIDE
    assert "tiny_objects" not in kinds(check_dataset(dataset, files=False, resize=resize))
    dataset, _ = read_coco(write_dataset(tmp_path / "b", [[0, 0, 31.9, 31.9]], files=False), tmp_path / "b" / "images")
    assert "tiny_objects" in kinds(check_dataset(dataset, files=False, resize=resize))


def test_the_tile_suggested_follows_the_test_size_and_the_objects(tmp_path: Path) -> None:
    dataset, _ = read_coco(write_dataset(tmp_path, [[0, 0, 20, 20]] * 3, files=False), tmp_path / "images")
    everything = np.ones(3, bool)
    at_800 = sliced_sizes(dataset, everything, 800, 1333)
    assert at_800 is not None and at_800.size == 640  # 800 / 1.25: every tile enlarges
    assert (at_800.resized, at_800.sliced) == pytest.approx((5.334, 25.0), abs=1e-3)
    demo = sliced_sizes(dataset, everything, 192, 320)
    assert demo is not None and demo.size == 128 and demo.sliced == pytest.approx(30.0)  # 192 / 1.25 -> 128
    # 4 px objects need smaller tiles: the median reaches 24 px at 800 * 4 / 24 = 133 -> 128
    dataset, _ = read_coco(write_dataset(tmp_path / "s", [[0, 0, 4, 4]], files=False), tmp_path / "s" / "images")
    small = sliced_sizes(dataset, np.ones(1, bool), 800, 1333)
    assert small is not None and small.size == 128 and small.sliced == pytest.approx(25.0)
    # an image no larger than the tile is one tile, resized as a whole: slicing changes nothing
    dataset, _ = read_coco(write_dataset(tmp_path / "p", [[0, 0, 20, 20]], (600, 400), files=False), tmp_path / "p")
    photo = sliced_sizes(dataset, np.ones(1, bool), 800, 1333)
    assert photo is not None and photo.size == 640 and photo.gain == pytest.approx(1.0)


# --- ordinary datasets stay silent ---------------------------------------------------------------


def test_rbc_at_the_demo_size_has_no_tiny_objects(rbc_dir: Path) -> None:
    """Blood cells of 30-100 px in 416 px images, at the demo's 192 px: about 37 px, none under 8."""
    report, _ = check_file(rbc_dir / "valid" / "_annotations.coco.json", rbc_dir / "valid", resize=DEMO)
    assert "tiny_objects" not in kinds(report)
    test = report.stats["object_sizes"]["test"]
    assert test["objects"] == 470 and test["under_8"] == 0.0 and test["under_16"] < 0.05
    assert 30 < test["median"] < 45


def test_coco_photos_at_800_have_no_tiny_objects(coco_eval_dir: Path) -> None:
    dataset, structure = read_coco(coco_eval_dir / "instances_val2014_100.json", coco_eval_dir)
    report = check_dataset(dataset, structure, files=False, resize=Resize())
    assert "tiny_objects" not in kinds(report)
    test = report.stats["object_sizes"]["test"]
    assert test["under_8"] < 0.01 and test["median"] > 60
    # nor would slicing show COCO's small objects larger: its photos are enlarged already
    small = ~dataset.images.crowd & (dataset.images.effective_areas() < COCO_SMALL)
    sliced = sliced_sizes(dataset, small, 800, 1333)
    assert sliced is not None and sliced.gain < 1.1


# --- where the sizes come from ------------------------------------------------------------------


def test_the_defaults_are_the_data_module_s() -> None:
    from detlit.data.datamodule import CocoDataModule

    parameters = inspect.signature(CocoDataModule.__init__).parameters
    default = Resize()
    for key in ("min_size_train", "max_size_train", "min_size_test", "max_size_test"):
        expected = parameters[key].default
        assert getattr(default, key) == (tuple(expected) if isinstance(expected, list) else expected), key


def test_options_win_over_the_config_and_the_config_over_the_defaults(tmp_path: Path) -> None:
    assert resize_settings() == Resize()
    assert resize_settings(config=REPO / "configs" / "sample_cpu.yaml") == DEMO
    config = tmp_path / "fit.yaml"
    config.write_text(yaml.safe_dump({"data": {"min_size_test": 600, "max_size_train": 1000}}))
    resize = resize_settings(config=config, min_size_test=500)
    assert resize == Resize(min_size_test=500, max_size_train=1000)
    assert resize_settings(min_size_train=[300, 400], max_size_train=500).min_size_train == (300, 400)


def test_bad_sizes_are_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--max-size-test 500 is below the default min_size_test 800: .*800 or more"):
        resize_settings(max_size_test=500)
    config = tmp_path / "fit.yaml"
    config.write_text(yaml.safe_dump({"data": {"min_size_test": 800, "max_size_test": 700}}))
    with pytest.raises(
        ConfigError,
        match=r"--config .*fit\.yaml: data\.max_size_test is 700, below data\.min_size_test's 800: .*; raise data\.max",
    ):
        resize_settings(config=config)
    config.write_text(yaml.safe_dump({"data": {"min_size_test": "big"}}))
    with pytest.raises(ConfigError, match=r"data\.min_size_test is 'big'; image sizes are whole numbers"):
        resize_settings(config=config)
    config.write_text("- a list\n")
    with pytest.raises(ConfigError, match=r"is not a python -m detlit.fit config"):
        resize_settings(config=config)
    with pytest.raises(ConfigError, match=r"does not exist"):
        resize_settings(config=tmp_path / "missing.yaml")


# --- the command ---------------------------------------------------------------------------------


def check_command(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "detlit.check", *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=600, cwd=REPO, env={**os.environ, "COLUMNS": "200"}
    )


def test_check_command_reports_sizes_and_the_finding(tmp_path: Path) -> None:
    path = write_dataset(tmp_path, [[10, 10, 20, 20], [500, 500, 25, 25], [900, 900, 400, 400]], images=2)
    report = tmp_path / "report.json"
    before = path.read_bytes()
    result = check_command(str(path), "--images", str(tmp_path / "images"), "--report", str(report))
    assert result.returncode == 0, result.stderr[-2000:]  # a warning: the dataset trains
    assert "object sizes after the resize" in result.stdout
    assert "│ inference 800/1333 │       6 │ 66.7% │  66.7% │  66.7% │ 6.7 px │" in result.stdout
    assert "tiny_objects" in result.stdout
    assert "6 objects after the resize to min_size_test 800: 66.7% under 8 px, median 6.67 px" in result.stderr
    written = json.loads(report.read_text())
    assert written["stats"]["object_sizes"]["test"]["under_8"] == 0.6667
    assert [f["kind"] for f in written["findings"]] == ["duplicate_image", "tiny_objects"]
    assert path.read_bytes() == before
    # at the config's size, and with an option over it
    config = tmp_path / "fit.yaml"
    config.write_text(yaml.safe_dump({"data": {"min_size_test": 3000, "max_size_test": 4000}}))
    result = check_command(str(path), "--images", str(tmp_path / "images"), "--config", str(config))
    assert result.returncode == 0 and "tiny_objects" not in result.stdout  # full resolution: 20 px and more
    assert "│ inference 3000/4000 │" in result.stdout
    result = check_command(
        str(path), "--images", str(tmp_path / "images"), "--config", str(config), "--min-size-test", "600"
    )
    assert result.returncode == 0 and "tiny_objects" in result.stdout


def test_check_command_refuses_bad_sizes_in_one_sentence(tmp_path: Path) -> None:
    path = write_dataset(tmp_path, [[10, 10, 20, 20]], size=(64, 48))
    result = check_command(str(path), "--images", str(tmp_path / "images"), "--max-size-test", "500")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        "error: --max-size-test 500 is below the default min_size_test 800: no image would be resized to that "
        "shortest edge; give --max-size-test 800 or more"
    ]
    result = check_command(str(path), "--images", str(tmp_path / "images"), "--min-size-test", "0")
    assert result.returncode == 2 and "argument --min-size-test: 0 is below 1; give 1 or more" in result.stderr
