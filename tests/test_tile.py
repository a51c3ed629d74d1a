"""``python -m detlit.tile``: which tile keeps which box, clipped exactly; empty tiles chosen by seed;
tile pixels equal the source's crop; tiles of one source stay on one side of a split."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageOps

from detlit.data.coco import parse_coco
from detlit.data.tiling import MARKER, Summary, Tiling, choose_empty, plan_image, tile, tile_name
from detlit.data.windows import Window
from detlit.errors import ConfigError, DataError
from detlit.split import main as split_cli

# A 1000 x 700 image cut into tiles of 500 px without overlap: columns 0 and 500, rows 0 and 200
# (the last row moved back to end at the edge), so rows overlap from y 200 to 500.
TILES = ["a_x0_y0.png", "a_x500_y0.png", "a_x0_y200.png", "a_x500_y200.png"]
BOXES = [  # x, y, w, h, iscrowd
    [100, 50, 40, 40, 0],  # A: inside the first tile only
    [480, 100, 40, 20, 0],  # B: half in the first tile, half in the second
    [700.3, 600, 50, 50, 0],  # C: inside the last tile only
    [300, 460, 60, 80, 0],  # D: half in the first tile, whole in the third
    [490.5, 650.25, 30, 40, 0],  # E: 10.5 of 30 px in the third tile, 19.5 in the fourth
    [850, 100, 200, 100, 1],  # F: a crowd region reaching beyond the image's right edge
]


def _pixels(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients with some noise: distinct everywhere, small as PNG."""
    rows, columns = np.mgrid[0:height, 0:width]
    noise = np.random.default_rng(seed).integers(0, 8, (height, width, 3))
    base = np.stack([columns * 255 // width, rows * 255 // height, (rows + columns) % 256], -1)
    return ((base + noise) % 256).astype(np.uint8)


def _coco(images: list[dict[str, Any]], boxes: dict[int, list[list[float]]]) -> dict[str, Any]:
    annotations = []
    for image_id, rows in boxes.items():
        for x, y, w, h, crowd in rows:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 3,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": int(crowd),
                    "segmentation": [[x, y, x + w, y, x + w, y + h]],
                }
            )
    return {
        "info": {"description": "tiles"},
        "licenses": [{"id": 1, "name": "mine"}],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 3, "name": "cell"}],
    }


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    """``scene.json`` with one 1000 x 700 PNG (id 7) holding BOXES, under ``images/``."""
    (tmp_path / "images").mkdir()
    Image.fromarray(_pixels(700, 1000)).save(tmp_path / "images" / "a.png")
    image = {"id": 7, "file_name": "a.png", "width": 1000, "height": 700, "license": 1}
    (tmp_path / "scene.json").write_text(json.dumps(_coco([image], {7: BOXES})))
    return tmp_path


def _tile(root: Path, out: str = "out", **settings: Any) -> tuple[dict[str, Any], Summary]:
    options = {"size": 500, "overlap": 0.0, "empty_ratio": 1.0, **settings}
    status, summary = tile(
        json_path=root / "scene.json", images=root / "images", out=root / out, tiling=Tiling(**options)
    )
    assert status == 0
    return json.loads((root / out / "annotations.json").read_text()), summary


def _boxes(coco: dict[str, Any]) -> dict[str, list[tuple[list[float], int]]]:
    names = {image["id"]: image["file_name"] for image in coco["images"]}
    found: dict[str, list[tuple[list[float], int]]] = {name: [] for name in names.values()}
    for a in coco["annotations"]:
        found[names[a["image_id"]]].append((a["bbox"], a["iscrowd"]))
        assert a["area"] == pytest.approx(a["bbox"][2] * a["bbox"][3], abs=1e-6)
        assert set(a) == {"id", "image_id", "category_id", "bbox", "area", "iscrowd"}  # no polygon
    return found


def test_tiles_are_named_by_offset_and_record_their_source(scene: Path) -> None:
    coco, _ = _tile(scene)
    assert [i["file_name"] for i in coco["images"]] == TILES
    assert [i["id"] for i in coco["images"]] == [1, 2, 3, 4]
    assert [(i["tile"]["x"], i["tile"]["y"]) for i in coco["images"]] == [(0, 0), (500, 0), (0, 200), (500, 200)]
    for image in coco["images"]:
        assert (image["width"], image["height"]) == (500, 500)
        assert image["tile"]["source_id"] == 7 and image["tile"]["source_file"] == "a.png"
        assert image["license"] == 1  # the source's other fields are kept
    assert coco["categories"] == [{"id": 3, "name": "cell"}] and coco["info"] == {"description": "tiles"}
    assert coco["licenses"] == [{"id": 1, "name": "mine"}]
    assert coco["detlit_tile"]["size"] == 500 and coco["detlit_tile"]["min_visibility"] == 0.5
    assert sorted(p.name for p in (scene / "out" / "images").iterdir()) == sorted(TILES)
    assert tile_name("sub/b.JPG", Window(40, 8, 100, 100)) == "sub/b_x40_y8.JPG"
    assert tile_name("./c.tif", Window(0, 0, 10, 10)) == "c_x0_y0.png"


def test_half_visible_objects_are_kept_at_visibility_one_half(scene: Path) -> None:
    coco, summary = _tile(scene, min_visibility=0.5)
    assert _boxes(coco) == {
        "a_x0_y0.png": [([100, 50, 40, 40], 0), ([480, 100, 20, 20], 0), ([300, 460, 60, 40], 0)],
        "a_x500_y0.png": [([0, 100, 20, 20], 0), ([350, 100, 150, 100], 1)],  # F clipped to image and tile
        "a_x0_y200.png": [([300, 260, 60, 80], 0)],
        "a_x500_y200.png": [([200.3, 400, 50, 50], 0), ([0, 450.25, 20.5, 40], 0)],
    }
    assert (summary.objects, summary.instances, summary.lost, summary.crowd) == (5, 7, 0, 1)
    assert (summary.tiles, summary.empty_kept, summary.empty_dropped) == (4, 0, 0)


def test_only_nearly_whole_objects_are_kept_at_visibility_nine_tenths(scene: Path) -> None:
    coco, summary = _tile(scene, min_visibility=0.9)
    assert _boxes(coco) == {
        "a_x0_y0.png": [([100, 50, 40, 40], 0)],
        "a_x500_y0.png": [([350, 100, 150, 100], 1)],  # a crowd region alone: an empty tile, kept by ratio 1
        "a_x0_y200.png": [([300, 260, 60, 80], 0)],
        "a_x500_y200.png": [([200.3, 400, 50, 50], 0)],
    }
    assert (summary.objects, summary.instances, summary.lost) == (5, 3, 2)  # B and E: no tile holds 90%
    assert (summary.empty_kept, summary.empty_dropped) == (1, 0)
    coco, summary = _tile(scene, out="none-empty", min_visibility=0.9, empty_ratio=0.0)
    assert [i["file_name"] for i in coco["images"]] == ["a_x0_y0.png", "a_x0_y200.png", "a_x500_y200.png"]
    assert (summary.tiles, summary.empty_kept, summary.empty_dropped) == (3, 0, 1)


def _sparse(tmp_path: Path) -> Path:
    """One 1000 x 700 image with one object: in tiles of 100 px, 1 of 70 tiles holds it."""
    (tmp_path / "images").mkdir()
    Image.fromarray(_pixels(700, 1000)).save(tmp_path / "images" / "a.png")
    image = {"id": 1, "file_name": "a.png", "width": 1000, "height": 700}
    (tmp_path / "scene.json").write_text(json.dumps(_coco([image], {1: [[420, 330, 30, 30, 0]]})))
    return tmp_path


@pytest.mark.parametrize(("ratio", "tiles"), [(0.0, 1), (1.0, 70)])
def test_empty_ratio_keeps_none_or_all_empty_tiles(tmp_path: Path, ratio: float, tiles: int) -> None:
    coco, summary = _tile(_sparse(tmp_path), size=100, empty_ratio=ratio)
    assert len(coco["images"]) == summary.tiles == tiles
    assert (summary.empty_kept, summary.empty_dropped) == (tiles - 1, 70 - tiles)
    assert len(list((tmp_path / "out" / "images").iterdir())) == tiles
    assert _boxes(coco)["a_x400_y300.png"] == [([20, 30, 30, 30], 0)]


def test_the_choice_of_empty_tiles_is_seeded(tmp_path: Path) -> None:
    root = _sparse(tmp_path)
    dataset, _ = parse_coco(json.loads((root / "scene.json").read_text()), root / "scene.json", root / "images")

    def kept(seed: int) -> list[bool]:
        plans = [plan_image(dataset, 0, Tiling(size=100, overlap=0.0))]
        choose_empty(plans, empty_ratio=0.3, seed=seed)
        return plans[0].keep

    assert sum(kept(0)) == 1 + 21  # the tile with the object, and round(0.3 x 69) empty ones
    assert kept(0) == kept(0) and kept(0) != kept(1)
    first, _ = _tile(root, out="a", size=100, empty_ratio=0.3, seed=5)
    second, _ = _tile(root, out="b", size=100, empty_ratio=0.3, seed=5)
    assert (root / "a" / "annotations.json").read_text().replace('"a"', "") == (
        (root / "b" / "annotations.json").read_text().replace('"b"', "")
    )
    assert [i["file_name"] for i in first["images"]] == [i["file_name"] for i in second["images"]]


def test_tile_pixels_are_the_crop_of_the_source_after_exif(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    source = _pixels(700, 1000, seed=1)
    Image.fromarray(source).save(tmp_path / "images" / "a.png")
    Image.fromarray(source).save(tmp_path / "images" / "b.jpg", quality=95)
    stored = Image.fromarray(_pixels(1000, 700, seed=2))  # stored upright, shown turned: 1000 wide, 700 high
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "images" / "c.png", exif=exif.tobytes())
    turned = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "images" / "c.png")).convert("RGB"))
    assert turned.shape == (700, 1000, 3)
    images = [
        {"id": i, "file_name": n, "width": 1000, "height": 700} for i, n in enumerate(["a.png", "b.jpg", "c.png"])
    ]
    (tmp_path / "scene.json").write_text(json.dumps(_coco(images, {})))
    coco, _ = _tile(tmp_path, size=300, overlap=0.25)
    assert len(coco["images"]) == 3 * 5 * 3  # columns at 0 225 450 675 700, rows at 0 225 400
    jpeg = np.asarray(Image.open(tmp_path / "images" / "b.jpg").convert("RGB")).astype(int)
    for image in coco["images"]:
        x, y = image["tile"]["x"], image["tile"]["y"]
        with Image.open(tmp_path / "out" / "images" / image["file_name"]) as written:
            kind, pixels = written.format, np.asarray(written.convert("RGB")).astype(int)
        if image["file_name"].startswith("b_"):
            assert kind == "JPEG"
            assert np.abs(pixels - jpeg[y : y + 300, x : x + 300]).mean() < 1.5
        else:
            assert kind == "PNG"
            expected = source if image["file_name"].startswith("a_") else turned
            assert np.array_equal(pixels, expected[y : y + 300, x : x + 300])


def test_unreadable_images_are_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "images").mkdir()
    Image.fromarray(_pixels(200, 300)).save(tmp_path / "images" / "good.png")
    (tmp_path / "images" / "broken.png").write_bytes(b"not an image")
    Image.fromarray(_pixels(100, 300)).save(tmp_path / "images" / "other-size.png")
    names = ["good.png", "broken.png", "missing.png", "other-size.png"]
    images = [{"id": i + 1, "file_name": n, "width": 300, "height": 200} for i, n in enumerate(names)]
    (tmp_path / "scene.json").write_text(json.dumps(_coco(images, {1: [[10, 10, 20, 20, 0]], 2: [[5, 5, 9, 9, 0]]})))
    coco, summary = _tile(tmp_path, size=200)
    assert len(summary.skipped) == 3 and summary.images == 4
    assert {i["tile"]["source_file"] for i in coco["images"]} == {"good.png"}
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    for name in names[1:]:
        assert sum(name in message for message in warned) == 1, warned
    assert "is 300x100 (EXIF orientation applied), but the json says 300x200" in " ".join(warned)


def test_nothing_readable_writes_nothing_and_exits_1(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "broken.png").write_bytes(b"not an image")
    image = {"id": 1, "file_name": "broken.png", "width": 300, "height": 200}
    (tmp_path / "scene.json").write_text(json.dumps(_coco([image], {})))
    status, summary = tile(
        json_path=tmp_path / "scene.json", images=tmp_path / "images", out=tmp_path / "out", tiling=Tiling()
    )
    assert status == 1 and summary.tiles == 0 and not (tmp_path / "out").exists()


def test_two_images_that_would_give_one_tile_name_are_refused(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    for name in ("a.png", "a.bmp"):
        Image.fromarray(_pixels(100, 100)).save(tmp_path / "images" / name)
    images = [{"id": i, "file_name": n, "width": 100, "height": 100} for i, n in enumerate(["a.png", "a.bmp"])]
    (tmp_path / "scene.json").write_text(json.dumps(_coco(images, {})))
    with pytest.raises(DataError, match=r"images a\.png and a\.bmp both give the tile a_x0_y0\.png; rename one"):
        _tile(tmp_path)
    assert not (tmp_path / "out").exists()


def test_outputs_go_to_a_new_folder_or_an_earlier_run_of_tile(scene: Path) -> None:
    _tile(scene, size=500)
    with pytest.raises(ConfigError, match="holds an earlier run of python -m detlit.tile; .* --overwrite"):
        _tile(scene, size=300)
    status, _ = tile(
        json_path=scene / "scene.json",
        images=scene / "images",
        out=scene / "out",
        tiling=Tiling(size=400, overlap=0.0, empty_ratio=1.0),
        overwrite=True,
    )
    assert status == 0 and (scene / "out" / MARKER).is_file()
    written = sorted(p.name for p in (scene / "out" / "images").iterdir())
    assert written == sorted(["a_x0_y0.png", "a_x400_y0.png", "a_x600_y0.png", "a_x0_y300.png", "a_x400_y300.png",
                              "a_x600_y300.png"])  # fmt: skip
    (scene / "mine").mkdir()
    (scene / "mine" / "notes.txt").write_text("mine")
    for folder, message in (
        ("mine", "holds files that python -m detlit.tile did not write"),
        ("images/tiles", "lies inside the image folder"),
        (".", "holds the image folder"),
    ):
        with pytest.raises(ConfigError, match=message):
            tile(
                json_path=scene / "scene.json",
                images=scene / "images",
                out=scene / folder,
                tiling=Tiling(),
                overwrite=True,
            )
    assert (scene / "mine" / "notes.txt").read_text() == "mine"
    assert not (scene / "images" / "tiles").exists()


def test_split_keeps_the_tiles_of_one_source_together(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    images, boxes = [], {}
    for k in range(8):
        Image.fromarray(_pixels(700, 1000, seed=k)).save(tmp_path / "images" / f"s{k}.png")
        images.append({"id": 100 + k, "file_name": f"s{k}.png", "width": 1000, "height": 700})
        boxes[100 + k] = [[50 + 100 * j, 80 * j, 40, 40, 0] for j in range(1 + k % 4)]
    (tmp_path / "scene.json").write_text(json.dumps(_coco(images, boxes)))
    coco, _ = _tile(tmp_path, size=400, empty_ratio=1.0)
    assert len(coco["images"]) == 8 * 6
    tiles = tmp_path / "out"
    for seed in (0, 1, 2):
        for copy in ("a", "b"):
            with pytest.raises(SystemExit) as info:
                split_cli(
                    [str(tiles / "annotations.json"), "--images", str(tiles / "images"), "--out",
                     str(tmp_path / f"split{seed}{copy}"), "--seed", str(seed), "--val-fraction", "0.25", "--quiet"]
                )  # fmt: skip
            assert info.value.code == 0
        sides = [json.loads((tmp_path / f"split{seed}a" / f"{part}.json").read_text()) for part in ("train", "val")]
        sources = [{i["tile"]["source_id"] for i in side["images"]} for side in sides]
        assert sources[0] and sources[1] and not sources[0] & sources[1]
        assert len(sides[1]["images"]) == 12  # 2 whole sources of 6 tiles: exactly a quarter
        for part in ("train.json", "val.json"):
            assert (tmp_path / f"split{seed}a" / part).read_bytes() == (tmp_path / f"split{seed}b" / part).read_bytes()


@pytest.mark.cli
def test_the_command_writes_tiles_that_check_accepts(scene: Path) -> None:
    out = scene / "tiles"
    command = [sys.executable, "-m", "detlit.tile", "--json", str(scene / "scene.json"), "--images"]
    command += [str(scene / "images"), "--out", str(out), "--size", "500", "--overlap", "0"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == (
        "1 images in (0 skipped), 4 tiles written (empty tiles: 0 kept, 0 dropped), 5 objects in, "
        "7 object instances out, 0 objects seen in no tile"
    )
    assert "6 segmentations dropped" in result.stderr and "lossless PNG" in result.stderr
    checked = subprocess.run(
        [sys.executable, "-m", "detlit.check", str(out / "annotations.json"), "--images", str(out / "images")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-3000:]
    assert "error" not in checked.stdout.lower()
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and again.stderr.strip().splitlines()[-1].startswith("error: --out ")
