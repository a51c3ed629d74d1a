"""The synthetic sample: the demo's files stay as they were, and the layout options draw what they say."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from detlit.data.sample import Layout, make_image, write_sample
from detlit.errors import ConfigError

from .conftest import REPO

# write_sample(train=12, val=6, seed=1) before layouts existed: the demo, the unit tests and the
# 0.2 run folder of tests/test_upgrade.py rely on these files.
DEMO_JSON_SHA256 = {
    "train.json": "2ba39b5a7c91cdd2fcc03bd778bbd77f424a0d8a815041cceb67f65b957e9aa0",
    "val.json": "31a083d47f540f49d07b7fa4c88fe5365c54842643808efe129fedd619c02db6",
}
# The pixels of make_image(np.random.default_rng(0)), as drawn before layouts existed.
DEMO_PIXELS_SHA256 = "5baf1de87e8a4c2c46c68facd29493e69012b6db58251b68caad6abb5505f3e7"


def _coco(folder: Path, split: str) -> dict[str, Any]:
    return json.loads((folder / f"{split}.json").read_text())


def _check_drawn(folder: Path, split: str, layout: Layout) -> dict[str, Any]:
    """Every image within the layout's sizes and as large as the json says; every box inside its
    image and of an object of the layout's sizes; the object counts of images with objects in range."""
    coco = _coco(folder, split)
    counts = {image["id"]: 0 for image in coco["images"]}
    sizes = {image["id"]: (image["width"], image["height"]) for image in coco["images"]}
    for image in coco["images"]:
        with Image.open(folder / split / image["file_name"]) as pixels:
            assert pixels.size == (image["width"], image["height"])
        if layout.image_size is not None:
            low, high = layout.image_size
            assert low <= image["width"] <= high and low <= image["height"] <= high
    smallest, largest = layout.object_size
    for annotation in coco["annotations"]:
        x, y, w, h = annotation["bbox"]
        width, height = sizes[annotation["image_id"]]
        assert min(x, y) >= 0 and x + w <= width and y + h <= height
        # A shape's side is its square's side or its circle's diameter; a triangle's box is smaller
        # (its circle's diameter times 0.75 at the least), and boxes are rounded to 0.01 px.
        assert 0.75 * smallest - 0.01 <= max(w, h) <= largest + 0.01
        counts[annotation["image_id"]] += 1
    fewest, most = layout.objects
    assert all(fewest <= n <= most for n in counts.values() if n > 0)
    return coco


def test_the_demo_sample_is_unchanged(tmp_path: Path) -> None:
    write_sample(tmp_path, train=12, val=6, seed=1)
    for name, digest in DEMO_JSON_SHA256.items():
        assert hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() == digest, name
        assert "layout" not in _coco(tmp_path, name.removesuffix(".json"))["info"]
    image, _ = make_image(np.random.default_rng(0))
    assert hashlib.sha256(np.asarray(image).tobytes()).hexdigest() == DEMO_PIXELS_SHA256
    _check_drawn(tmp_path, "train", Layout())
    # An explicit default layout is the default.
    again = tmp_path / "again"
    write_sample(again, train=12, val=6, seed=1, layout=Layout(object_size=(24, 110), objects=(1, 8)))
    assert (again / "train.json").read_bytes() == (tmp_path / "train.json").read_bytes()


def test_small_objects_layout(tmp_path: Path) -> None:
    layout = Layout.small_objects()
    assert (layout.image_size, layout.object_size, layout.objects) == ((1600, 2400), (8, 32), (20, 80))
    # What the command's options choose: the preset or the demo's, with the ranges given in place of its own.
    assert Layout.chosen(small_objects=True) == layout and Layout.chosen() == Layout()
    assert Layout.chosen(small_objects=True, objects=[5, 10]) == Layout((1600, 2400), (8, 32), (5, 10))
    assert Layout.chosen(image_size=[300, 400]) == Layout((300, 400), (24, 110), (1, 8))
    write_sample(tmp_path, train=2, val=1, seed=4, layout=layout)
    train = _check_drawn(tmp_path, "train", layout)
    _check_drawn(tmp_path, "val", layout)
    assert train["info"]["layout"] == {"image_size": [1600, 2400], "object_size": [8, 32], "objects": [20, 80]}
    assert len(train["annotations"]) >= 20  # at least one image holds objects (8% hold none)
    # Small objects: the median box side is well below 32 px, and no object covers 32 x 32 px.
    sides = np.array([max(a["bbox"][2:]) for a in train["annotations"]])
    assert 8 < np.median(sides) < 24
    assert max(a["area"] for a in train["annotations"]) <= 32 * 32


def test_layouts_are_seeded(tmp_path: Path) -> None:
    layout = Layout(image_size=(200, 300), object_size=(8, 16), objects=(5, 9))
    for folder, seed in (("a", 3), ("b", 3), ("c", 4)):
        write_sample(tmp_path / folder, train=3, val=2, seed=seed, layout=layout)
    assert _coco(tmp_path / "a", "train") == _coco(tmp_path / "b", "train")
    assert _coco(tmp_path / "a", "train") != _coco(tmp_path / "c", "train")
    coco = _check_drawn(tmp_path / "a", "train", layout)
    widths = {image["width"] for image in coco["images"]}
    assert len(widths) > 1  # sizes are drawn, not fixed


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"image_size": (16, 64)}, "--image-size 16 64 is not two whole numbers from 32 to 4096 pixels"),
        ({"image_size": (500, 400)}, "--image-size 500 400 is not two whole numbers from 32 to 4096 pixels"),
        ({"object_size": (2, 8)}, "--object-size 2 8 is not two whole numbers from 4 to 4096 pixels"),
        ({"objects": (5, 1001)}, "--objects 5 1001 is not two whole numbers from 1 to 1000 objects"),
        ({"image_size": (100, 200)}, r"--object-size 110 is larger than the smallest image side \(100 px\)"),
        ({"object_size": (8, 250)}, r"--object-size 250 is larger than the smallest image side \(240 px\)"),
    ],
)
def test_bad_layouts_are_one_sentence(layout: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Layout(**layout)


@pytest.mark.cli
def test_the_command_draws_the_layout_it_is_given(tmp_path: Path) -> None:
    def sample(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "detlit.sample", *args]
        return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)

    out = tmp_path / "small"
    # The preset's objects and counts, with smaller images than its own.
    done = sample("--out", str(out), "--small-objects", "--image-size", "300", "400", "--train", "2", "--val", "1")
    assert done.returncode == 0, done.stderr
    layout = Layout(image_size=(300, 400), object_size=(8, 32), objects=(20, 80))
    assert _check_drawn(out, "train", layout)["info"]["layout"]["image_size"] == [300, 400]
    assert "drawing images of 300 to 400 px, objects of 8 to 32 px, 20 to 80 per image (seed 0)" in done.stderr

    refused = sample("--out", str(tmp_path / "bad"), "--image-size", "100", "200", "--object-size", "10", "150")
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        "error: --object-size 150 is larger than the smallest image side (100 px); give smaller objects or a "
        "larger --image-size"
    )
    assert not (tmp_path / "bad").exists()
