"""Labels of other formats into COCO (YOLO, Pascal VOC, LabelMe, CVAT) and COCO into YOLO: boxes, classes and
attributes to the number, every converted json passing ``check``, problems listed with file and line and nothing
written, and labels of another format given to ``check`` answered with the ``convert`` command."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from detlit.data.checks import check_file
from detlit.data.coco import read_coco
from detlit.data.formats.convert import convert
from detlit.data.formats.detect import label_format
from detlit.data.sample import write_sample
from detlit.errors import ConfigError, DataError


def _image(path: Path, width: int, height: int, orientation: int = 1) -> None:
    """A real image file of ``width`` x ``height`` stored pixels (an EXIF orientation tag when not 1)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(width * height).integers(0, 255, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    if orientation == 1:
        image.save(path)
        return
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, exif=exif.tobytes())


def _checked(json_path: Path, images: Path) -> dict[str, Any]:
    """The converted json, after ``check`` found no error in it."""
    report, _ = check_file(json_path, images)
    assert report.errors == [], [f.message for f in report.errors]
    document: dict[str, Any] = json.loads(json_path.read_text())
    return document


def _boxes(document: dict[str, Any]) -> dict[str, list[tuple[str, list[float]]]]:
    """Per file name, the (class name, box) of each annotation, in order."""
    names = {c["id"]: c["name"] for c in document["categories"]}
    files = {i["id"]: i["file_name"] for i in document["images"]}
    found: dict[str, list[tuple[str, list[float]]]] = {name: [] for name in files.values()}
    for a in document["annotations"]:
        found[files[a["image_id"]]].append((names[a["category_id"]], a["bbox"]))
    return found


def _categories(document: dict[str, Any]) -> list[tuple[int, str]]:
    return [(c["id"], c["name"]) for c in document["categories"]]


# --- YOLO ----------------------------------------------------------------------------------------------


@pytest.fixture
def yolo(tmp_path: Path) -> Path:
    """A YOLO dataset: images/ (one with EXIF orientation 6), labels/, data.yaml with names as a mapping."""
    root = tmp_path / "yolo"
    _image(root / "images" / "rotated.jpg", 80, 40, orientation=6)  # shown as 40 x 80
    _image(root / "images" / "plain.png", 100, 50)
    _image(root / "images" / "sub" / "empty.png", 30, 20)
    _image(root / "images" / "unlabelled.png", 20, 20)
    (root / "labels" / "sub").mkdir(parents=True)
    (root / "labels" / "rotated.txt").write_text("1 0.5 0.25 0.5 0.25\n")
    # a box and a segment (polygon): its box is the polygon's bounding box
    (root / "labels" / "plain.txt").write_text("0 0.5 0.5 0.2 0.4\n\n2 0.1 0.1 0.3 0.1 0.2 0.3\n")
    (root / "labels" / "sub" / "empty.txt").write_text("")
    (root / "data.yaml").write_text("path: .\ntrain: images\nval: images\nnames:\n  0: cat\n  1: dog\n  2: bird\n")
    return root


def test_yolo_boxes_are_pixels_of_the_image_as_shown(yolo: Path) -> None:
    summary = convert(source="yolo", images=yolo / "images", out=yolo / "coco")
    document = _checked(yolo / "coco" / "annotations.json", yolo / "images")
    assert summary.images == 4 and summary.objects == 3 and summary.classes == 3
    assert _categories(document) == [(1, "cat"), (2, "dog"), (3, "bird")]
    sizes = {i["file_name"]: (i["width"], i["height"]) for i in document["images"]}
    assert sizes == {
        "plain.png": (100, 50),
        "rotated.jpg": (40, 80),
        "sub/empty.png": (30, 20),
        "unlabelled.png": (20, 20),
    }
    assert _boxes(document) == {
        "plain.png": [("cat", [40.0, 15.0, 20.0, 20.0]), ("bird", [10.0, 5.0, 20.0, 10.0])],
        "rotated.jpg": [("dog", [10.0, 10.0, 20.0, 20.0])],  # 0.5 x 40 wide, 0.25 x 80 high, after the rotation
        "sub/empty.png": [],
        "unlabelled.png": [],
    }
    assert [i["id"] for i in document["images"]] == [1, 2, 3, 4]
    assert all(a["area"] == a["bbox"][2] * a["bbox"][3] and a["iscrowd"] == 0 for a in document["annotations"])


def test_yolo_names_file_gives_the_class_order(yolo: Path) -> None:
    (yolo / "names.txt").write_text("zebra\nyak\nxerus\n\n")
    convert(labels=yolo / "labels", images=yolo / "images", names=yolo / "names.txt", out=yolo / "coco")
    document = json.loads((yolo / "coco" / "annotations.json").read_text())
    assert _categories(document) == [(1, "zebra"), (2, "yak"), (3, "xerus")]


def test_malformed_yolo_lines_are_all_listed_and_nothing_is_written(
    yolo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (yolo / "labels" / "plain.txt").write_text(
        "0 0.5 0.5 0.2\nx 0.5 0.5 0.2 0.2\n0 0.5 0.5 1.5 0.2\n7 0.5 0.5 0.2 0.2\n"
    )
    with pytest.raises(DataError) as err, caplog.at_level(logging.ERROR):
        convert(source="yolo", images=yolo / "images", out=yolo / "coco")
    plain = yolo / "labels" / "plain.txt"
    assert str(err.value).startswith(f"{plain} line 1: has 4 values; a YOLO line is `class cx cy w h`")
    assert "(and 3 more problems, each logged above); nothing was written" in str(err.value)
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert [m.split(":")[0] for m in logged] == [f"{plain} line {n}" for n in (1, 2, 3, 4)]
    assert "'x' is not a class index" in logged[1] and "1.5 is outside 0..1" in logged[2]
    assert "class 7 is beyond the 3 classes of" in logged[3]
    assert not (yolo / "coco").exists()


def test_yolo_names_with_gaps_are_refused(yolo: Path) -> None:
    (yolo / "data.yaml").write_text("names:\n  0: cat\n  2: bird\n")
    with pytest.raises(DataError, match=r"'names' is numbered \[0, 2\]; number the classes 0 to 1"):
        convert(source="yolo", images=yolo / "images", out=yolo / "coco")


# --- Pascal VOC ----------------------------------------------------------------------------------------


VOC_A = """<annotation>
  <folder>VOC2012</folder>
  <filename>a.jpg</filename>
  <size><width>60</width><height>40</height><depth>3</depth></size>
  <object>
    <name>dog</name><pose>Left</pose><truncated>1</truncated><difficult>0</difficult>
    <bndbox><xmin>1</xmin><ymin>1</ymin><xmax>60</xmax><ymax>40</ymax></bndbox>
  </object>
  <object>
    <name>cat</name><difficult>1</difficult><occluded>0</occluded>
    <bndbox><xmin>11.5</xmin><ymin>6</ymin><xmax>30</xmax><ymax>20</ymax></bndbox>
  </object>
</annotation>
"""
VOC_B = """<?xml version="1.0" encoding="utf-8"?>
<annotation><filename>b.png</filename><size><width>0</width><height>0</height></size></annotation>
"""


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    root = tmp_path / "voc"
    _image(root / "JPEGImages" / "a.jpg", 60, 40)
    _image(root / "JPEGImages" / "b.png", 30, 20)
    (root / "Annotations").mkdir()
    (root / "Annotations" / "a.xml").write_text(VOC_A)
    (root / "Annotations" / "b.xml").write_text(VOC_B)
    return root


def test_voc_boxes_lose_one_at_the_top_left_and_keep_their_flags(voc: Path) -> None:
    summary = convert(source="voc", labels=voc / "Annotations", images=voc / "JPEGImages", out=voc / "coco")
    document = _checked(voc / "coco" / "annotations.json", voc / "JPEGImages")
    assert (summary.images, summary.objects) == (2, 2)
    assert _categories(document) == [(1, "dog"), (2, "cat")]  # order of first appearance
    assert _boxes(document) == {
        "a.jpg": [("dog", [0.0, 0.0, 60.0, 40.0]), ("cat", [10.5, 5.0, 19.5, 15.0])],  # xmin=1..xmax=60: all 60 px
        "b.png": [],  # an image without objects; <size> 0 x 0: the header's size
    }
    assert [a["attributes"] for a in document["annotations"]] == [
        {"difficult": False, "truncated": True},
        {"difficult": True, "occluded": False},
    ]
    assert [(i["width"], i["height"]) for i in document["images"]] == [(60, 40), (30, 20)]


def test_voc_labels_outside_a_names_file_are_problems(voc: Path) -> None:
    (voc / "names.txt").write_text("cat\n")
    with pytest.raises(DataError, match=r"a\.xml line 5 \(<object>\): label 'dog' is not one of the 1 classes of"):
        convert(labels=voc / "Annotations", images=voc / "JPEGImages", names=voc / "names.txt", out=voc / "coco")
    assert not (voc / "coco").exists()


def test_voc_problems_name_the_element_and_its_line(voc: Path) -> None:
    (voc / "Annotations" / "a.xml").write_text(VOC_A.replace("<xmin>11.5</xmin>", "<xmin>left</xmin>"))
    with pytest.raises(DataError, match=r"a\.xml line 11 \(<bndbox>\): <xmin> is 'left'; write a number"):
        convert(source="voc", labels=voc / "Annotations", images=voc / "JPEGImages", out=voc / "coco")


def test_voc_size_must_be_the_image_s_after_its_exif_orientation(voc: Path) -> None:
    _image(voc / "JPEGImages" / "a.jpg", 60, 40, orientation=6)  # shown as 40 x 60; the xml says 60 x 40
    with pytest.raises(DataError) as err:
        convert(source="voc", labels=voc / "Annotations", images=voc / "JPEGImages", out=voc / "coco")
    assert "a.xml line 4 (<size>): says the image is 60x40, but" in str(err.value)
    assert "is 40x60 after its EXIF orientation 6 is applied (the labelling tool showed it unrotated" in str(err.value)


def test_xml_with_entities_is_refused_before_anything_expands(voc: Path) -> None:
    laughs = '<?xml version="1.0"?>\n<!DOCTYPE a [\n <!ENTITY x "xxxxxxxxxx">\n]>\n<annotation>&x;</annotation>\n'
    (voc / "Annotations" / "b.xml").write_text(laughs)
    with pytest.raises(DataError, match=r"b\.xml: line 2 declares a DTD \(<!DOCTYPE \.\.\.>\); detlit reads label XML"):
        convert(source="voc", labels=voc / "Annotations", images=voc / "JPEGImages", out=voc / "coco")


# --- LabelMe -------------------------------------------------------------------------------------------


def _labelme(shapes: list[dict[str, Any]], image_path: str, width: int, height: int) -> str:
    # imageData is not base64 at all: it is never decoded
    document = {"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": image_path, "imageData": "!!not base64"}
    return json.dumps({**document, "imageHeight": height, "imageWidth": width})


def test_labelme_rectangles_polygons_and_circles_become_boxes(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "x.png", 50, 40)
    _image(tmp_path / "images" / "y.png", 20, 10)
    labels = tmp_path / "labelme"
    labels.mkdir()
    shapes = [
        {
            "label": "car",
            "points": [[30, 25], [10, 5]],
            "shape_type": "rectangle",
            "group_id": 2,
            "flags": {"parked": True},
        },
        {"label": "person", "points": [[1, 2], [9, 4], [5, 12]], "shape_type": "polygon", "flags": {"child": False}},
        {"label": "person", "points": [[3, 3]], "shape_type": "point"},
        {"label": "sign", "points": [[40, 20], [43, 24]], "shape_type": "circle"},
        {"label": "person", "points": [[2, 2], [6, 3], [4, 8]], "shape_type": None},
    ]
    (labels / "x.json").write_text(_labelme(shapes, "..\\images\\x.png", 50, 40))
    (labels / "y.json").write_text(_labelme([], "y.png", 20, 10))
    convert(source="labelme", labels=labels, images=tmp_path / "images", out=tmp_path / "coco")
    document = _checked(tmp_path / "coco" / "annotations.json", tmp_path / "images")
    assert _categories(document) == [(1, "car"), (2, "person"), (3, "sign")]
    assert _boxes(document) == {
        "x.png": [
            ("car", [10.0, 5.0, 20.0, 20.0]),
            ("person", [1.0, 2.0, 8.0, 10.0]),
            ("sign", [35.0, 15.0, 10.0, 10.0]),  # radius 5 around (40, 20)
            ("person", [2.0, 2.0, 4.0, 6.0]),  # shape_type null: a polygon
        ],
        "y.png": [],
    }
    assert document["annotations"][0]["attributes"] == {"group_id": 2, "parked": True}
    assert "attributes" not in document["annotations"][1]


def test_labelme_json_that_is_not_json_names_its_line(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "x.png", 50, 40)
    (tmp_path / "x.json").write_text('{\n  "shapes": [\n    {"label": "car",}\n  ]\n}\n')
    with pytest.raises(DataError, match=r"x\.json line 3: is not valid JSON \(column \d+: "):
        convert(source="labelme", labels=tmp_path / "x.json", images=tmp_path / "images", out=tmp_path / "coco")


# --- CVAT ----------------------------------------------------------------------------------------------


CVAT = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta>
    <task>
      <name>streets</name>
      <labels>
        <label><name>person</name><attributes/></label>
        <label><name>car</name><attributes><attribute><name>color</name></attribute></attributes></label>
        <label><name>bike</name></label>
      </labels>
    </task>
  </meta>
  <image id="0" name="frames/f0.png" width="64" height="48">
    <box label="car" source="manual" occluded="1" xtl="10.5" ytl="4" xbr="30" ybr="20.25" z_order="0">
      <attribute name="color">red</attribute>
      <attribute name="parked">true</attribute>
    </box>
    <polygon label="person" occluded="0" points="1.5,2;9,4;5,12.5" z_order="0"></polygon>
    <polyline label="person" occluded="0" points="1,1;2,2"></polyline>
    <box label="car" occluded="0" xtl="20" ytl="10" xbr="40" ybr="20" rotation="90"></box>
  </image>
  <image id="1" name="frames/f1.png" width="32" height="16"></image>
</annotations>
"""


def test_cvat_boxes_polygons_and_attributes(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "frames" / "f0.png", 64, 48)
    _image(tmp_path / "images" / "frames" / "f1.png", 32, 16)
    (tmp_path / "annotations.xml").write_text(CVAT)
    summary = convert(labels=tmp_path / "annotations.xml", images=tmp_path / "images", out=tmp_path / "coco")
    document = _checked(tmp_path / "coco" / "annotations.json", tmp_path / "images")
    assert summary.source == "cvat" and summary.objects == 3
    assert _categories(document) == [(1, "person"), (2, "car"), (3, "bike")]  # <labels>' order, unused ones too
    assert _boxes(document) == {
        "frames/f0.png": [
            ("car", [10.5, 4.0, 19.5, 16.25]),
            ("person", [1.5, 2.0, 7.5, 10.5]),
            ("car", [25.0, 5.0, 10.0, 20.0]),  # 20 x 10 turned a quarter about its centre (30, 15)
        ],
        "frames/f1.png": [],
    }
    assert [a.get("attributes") for a in document["annotations"]] == [
        {"occluded": True, "color": "red", "parked": True},
        {"occluded": False},
        {"occluded": False},
    ]


def test_cvat_problems_name_the_element_and_its_line(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "frames" / "f0.png", 64, 48)
    _image(tmp_path / "images" / "frames" / "f1.png", 32, 16)
    (tmp_path / "annotations.xml").write_text(
        CVAT.replace('xtl="10.5"', 'xtl="ten"').replace('width="32"', 'width="33"')
    )
    with pytest.raises(DataError) as err:
        convert(source="cvat", labels=tmp_path, images=tmp_path / "images", out=tmp_path / "coco")
    assert str(err.value).startswith(f"{tmp_path / 'annotations.xml'} line 15 (<box>): needs numbers xtl, ytl")
    assert "(and 1 more problems" in str(err.value)
    assert not (tmp_path / "coco").exists()


# --- COCO -> YOLO -> COCO -------------------------------------------------------------------------------


def test_coco_to_yolo_and_back_keeps_boxes_and_class_names(tmp_path: Path) -> None:
    write_sample(tmp_path / "sample", train=8, val=2, seed=1)
    source, images = tmp_path / "sample" / "train.json", tmp_path / "sample" / "train"
    summary = convert(json_path=source, images=images, out=tmp_path / "yolo")
    original = json.loads(source.read_text())
    assert summary.images == 8 and summary.objects == len(original["annotations"])
    names = [c["name"] for c in sorted(original["categories"], key=lambda c: c["id"])]
    assert (tmp_path / "yolo" / "classes.txt").read_text().splitlines() == names
    first = (tmp_path / "yolo" / "labels" / "train_0000.txt").read_text().splitlines()
    assert all(len(line.split()) == 5 for line in first)
    convert(
        source="yolo",
        labels=tmp_path / "yolo" / "labels",
        images=images,
        names=tmp_path / "yolo" / "data.yaml",
        out=tmp_path / "back",
    )
    back = _checked(tmp_path / "back" / "annotations.json", images)
    assert [c["name"] for c in back["categories"]] == names
    before, after = _boxes(original), _boxes(back)
    assert before.keys() == after.keys()
    for name, objects in before.items():
        assert [n for n, _ in after[name]] == [n for n, _ in objects]
        for (_, a), (_, b) in zip(objects, after[name], strict=True):
            assert np.abs(np.subtract(a, b)).max() < 0.5, (name, a, b)


def test_yolo_export_leaves_out_crowd_regions_and_clips_boxes(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.png", 100, 50)
    coco = {
        "images": [{"id": 4, "file_name": "a.png", "width": 100, "height": 50}],
        "categories": [{"id": 9, "name": "late"}, {"id": 3, "name": "early"}],
        "annotations": [
            {"id": 1, "image_id": 4, "category_id": 9, "bbox": [90, 40, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 2, "image_id": 4, "category_id": 3, "bbox": [0, 0, 50, 25], "area": 1250, "iscrowd": 0},
            {"id": 3, "image_id": 4, "category_id": 3, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 1},
        ],
    }
    (tmp_path / "a.json").write_text(json.dumps(coco))
    convert(json_path=tmp_path / "a.json", images=tmp_path / "images", out=tmp_path / "yolo")
    assert (tmp_path / "yolo" / "labels" / "a.txt").read_text() == (
        "1 0.950000 0.900000 0.100000 0.200000\n0 0.250000 0.250000 0.500000 0.500000\n"
    )
    assert (tmp_path / "yolo" / "classes.txt").read_text() == "early\nlate\n"  # category id order
    assert "names:\n  0: early\n  1: late\n" in (tmp_path / "yolo" / "data.yaml").read_text()


# --- outputs, detection, check --------------------------------------------------------------------------


def test_an_earlier_output_needs_overwrite_and_an_input_is_never_replaced(voc: Path) -> None:
    kwargs: dict[str, Any] = {"source": "voc", "labels": voc / "Annotations", "images": voc / "JPEGImages"}
    convert(**kwargs, out=voc / "coco")
    with pytest.raises(ConfigError, match="already exists; choose another --out, or pass --overwrite"):
        convert(**kwargs, out=voc / "coco")
    convert(**kwargs, out=voc / "coco", overwrite=True)
    # a LabelMe file named annotations.json in its own folder: an --out there would replace it
    (voc / "lm").mkdir()
    (voc / "lm" / "annotations.json").write_text(_labelme([], "b.png", 30, 20))
    before = (voc / "lm" / "annotations.json").read_bytes()
    with pytest.raises(ConfigError, match="which is an input of this command"):
        convert(source="labelme", labels=voc / "lm", images=voc / "JPEGImages", out=voc / "lm", overwrite=True)
    assert (voc / "lm" / "annotations.json").read_bytes() == before


@pytest.mark.parametrize(
    ("name", "expected"),
    [("yolo/labels", "yolo"), ("yolo", "yolo"), ("yolo/data.yaml", "yolo"), ("yolo/labels/plain.txt", "yolo")],
)
def test_formats_are_told_from_the_path(yolo: Path, name: str, expected: str) -> None:
    assert label_format(yolo.parent / name) == expected


def test_voc_labelme_cvat_and_coco_are_told_apart(voc: Path, tmp_path: Path) -> None:
    (tmp_path / "cvat.xml").write_text(CVAT)
    (tmp_path / "lm.json").write_text(_labelme([], "a.png", 1, 1))
    (tmp_path / "coco.json").write_text('{"images": [], "annotations": [], "categories": []}')
    found = [label_format(p) for p in (voc, voc / "Annotations", voc / "Annotations" / "a.xml")]
    assert found == ["voc", "voc", "voc"]
    assert [label_format(tmp_path / n) for n in ("cvat.xml", "lm.json", "coco.json")] == ["cvat", "labelme", "coco"]
    assert label_format(voc / "JPEGImages") is None


def test_check_given_other_labels_names_convert(yolo: Path, voc: Path) -> None:
    with pytest.raises(DataError) as err:
        read_coco(yolo, yolo / "images")
    assert str(err.value) == (
        f"{yolo} holds YOLO labels, not a COCO json; convert them first with `python -m detlit.convert --from yolo "
        f"--labels {yolo / 'labels'} --images {yolo / 'images'} --out FOLDER` and pass FOLDER/annotations.json"
    )
    with pytest.raises(DataError, match=r"holds Pascal VOC labels, not a COCO json; .* --from voc --labels"):
        read_coco(voc / "Annotations" / "a.xml", voc / "JPEGImages")
    (voc / "broken.json").write_text('{"images": [')
    with pytest.raises(DataError, match="is not valid JSON"):  # a COCO json that is broken keeps its own sentence
        read_coco(voc / "broken.json", voc / "JPEGImages")


@pytest.mark.cli
def test_the_command_converts_and_check_accepts_the_result(voc: Path) -> None:
    out = voc / "coco"
    command = [sys.executable, "-m", "detlit.convert", "--labels", str(voc / "Annotations"), "--images"]
    command += [str(voc / "JPEGImages"), "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == (
        f"converted 2 images, 2 objects of 2 classes from voc into {out / 'annotations.json'}; "
        f"check it: python -m detlit.check {out / 'annotations.json'} --images {voc / 'JPEGImages'}"
    )
    assert "labels in" in result.stderr and "are voc" in result.stderr
    checked = subprocess.run(
        [sys.executable, "-m", "detlit.check", str(out / "annotations.json"), "--images", str(voc / "JPEGImages")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-3000:]
    (voc / "Annotations" / "a.xml").write_text(VOC_A.replace("<name>cat</name>", ""))
    again = subprocess.run([*command, "--overwrite"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines()[-1].startswith(f"error: {voc / 'Annotations' / 'a.xml'} line 9 (<object>)")
    assert json.loads((out / "annotations.json").read_text())["annotations"], "the earlier output is left as it was"


@pytest.mark.parametrize(
    ("options", "sentence"),
    [
        ({"json_path": Path("a.json"), "names": Path("n.txt")}, "--names is for --labels"),
        ({"json_path": Path("a.json"), "source": "voc"}, "--json is a COCO json to write as YOLO labels"),
        ({"json_path": Path("a.json"), "target": "coco"}, "a COCO json converts to YOLO labels"),
        ({"source": "coco", "labels": Path("x")}, "COCO to YOLO reads the COCO json from --json JSON"),
    ],
)
def test_options_that_do_not_fit_together_are_one_sentence(
    tmp_path: Path, options: dict[str, Any], sentence: str
) -> None:
    with pytest.raises(ConfigError, match=sentence):
        convert(images=tmp_path, out=tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()
