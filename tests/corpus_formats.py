"""The corpus of bad inputs, area: Labels of other formats: malformed lines and elements, XML from strangers,
labels given where a COCO json belongs.

``convert`` reads every label file before it writes anything: a malformed YOLO line, a VOC size that is
not the image's, a class outside the names file end in one sentence with the file and line, and nothing
is written. XML with a DTD ("billion laughs": nine levels of ten entities) is refused before anything is
expanded. ``check`` and ``fit`` given YOLO, VOC or LabelMe labels answer with the ``convert`` command.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from .corpus import Case, Workspace, args, fit


def folder(workspace: Workspace) -> Path:
    return workspace.root / "formats"


def laughs_xml(root: str) -> str:
    """A "billion laughs" XML document: each entity repeats the one before ten times."""
    entities = ['  <!ENTITY lol0 "lol">']
    entities += [f'  <!ENTITY lol{n} "{f"&lol{n - 1};" * 10}">' for n in range(1, 10)]
    body = "\n".join(entities)
    return f'<?xml version="1.0"?>\n<!DOCTYPE {root} [\n{body}\n]>\n<{root}><filename>&lol9;</filename></{root}>\n'


def prepare(workspace: Workspace) -> None:
    """Write the files this area's cases name into ``workspace.root``."""
    here = folder(workspace)
    (here / "images").mkdir(parents=True)
    Image.new("RGB", (40, 30), (90, 120, 150)).save(here / "images" / "a.png")
    yolo = here / "yolo"
    yolo.mkdir()
    (yolo / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n0 0.5 0.5\n")
    (yolo / "classes.txt").write_text("cat\ndog\n")
    beyond = here / "yolo-beyond"
    beyond.mkdir()
    (beyond / "a.txt").write_text("5 0.5 0.5 0.2 0.2\n")
    voc = here / "voc"
    voc.mkdir()
    (voc / "a.xml").write_text(laughs_xml("annotation"))
    sizes = here / "voc-size"
    sizes.mkdir()
    (sizes / "a.xml").write_text(
        "<annotation>\n  <filename>a.png</filename>\n"
        "  <size><width>10</width><height>10</height></size>\n</annotation>\n"
    )
    (here / "cvat.xml").write_text(
        '<annotations>\n  <image id="0" name="a.png" width="40" height="30">\n</annotations>\n'
    )
    (here / "cvat-video.xml").write_text('<annotations>\n  <track id="0" label="cat"></track>\n</annotations>\n')
    labelme = here / "labelme"
    labelme.mkdir()
    shape = {"label": "cat", "points": [[1, 2], [10, 12]], "shape_type": "rectangle"}
    (labelme / "a.json").write_text(json.dumps({"shapes": [shape], "imagePath": "a.png", "imageData": None}))
    mixed = here / "mixed"
    mixed.mkdir()
    (mixed / "a.xml").write_text("<annotation/>")
    (mixed / "b.json").write_text("{}")
    (here / "done").mkdir()
    (here / "done" / "annotations.json").write_text("{}")


F = "{root}/formats"
IMAGES = ("--images", f"{F}/images")

CASES: list[Case] = [
    Case(
        "convert a malformed YOLO line",
        "convert",
        args("--from", "yolo", "--labels", f"{F}/yolo", *IMAGES, "--out", f"{F}/out-1"),
        r"formats/yolo/a\.txt line 2: has 3 values; a YOLO line is `class cx cy w h`.*nothing was written",
    ),
    Case(
        "convert a YOLO class beyond the names file",
        "convert",
        args(
            "--from",
            "yolo",
            "--labels",
            f"{F}/yolo-beyond",
            "--names",
            f"{F}/yolo/classes.txt",
            *IMAGES,
            "--out",
            f"{F}/out-2",
        ),
        r"yolo-beyond/a\.txt line 1: class 5 is beyond the 2 classes of .*classes\.txt \(0 to 1\)",
    ),
    Case(
        "convert VOC xml with a billion-laughs DTD",
        "convert",
        args("--from", "voc", "--labels", f"{F}/voc", *IMAGES, "--out", f"{F}/out-3"),
        r"voc/a\.xml: line 2 declares a DTD \(<!DOCTYPE \.\.\.>\); detlit reads label XML without DTDs or entities",
    ),
    Case(
        "convert VOC xml whose size is not the image's",
        "convert",
        args("--labels", f"{F}/voc-size", *IMAGES, "--out", f"{F}/out-4"),
        r"voc-size/a\.xml line 3 \(<size>\): says the image is 10x10, but .*a\.png is 40x30",
    ),
    Case(
        "convert CVAT xml that is not well-formed",
        "convert",
        args("--from", "cvat", "--labels", f"{F}/cvat.xml", *IMAGES, "--out", f"{F}/out-5"),
        r"cvat\.xml is not well-formed XML \(line 3, column \d+: mismatched tag\)",
    ),
    Case(
        "convert CVAT for video",
        "convert",
        args("--labels", f"{F}/cvat-video.xml", *IMAGES, "--out", f"{F}/out-6"),
        r"holds <track> elements \(CVAT for video\); export the task as CVAT for images 1\.1",
    ),
    Case(
        "convert labels of no format it can tell",
        "convert",
        args("--labels", f"{F}/mixed", *IMAGES, "--out", f"{F}/out-7"),
        r"cannot tell the format of --labels .*mixed; pass --from with one of yolo, voc, labelme, cvat",
    ),
    Case(
        "convert over an earlier annotations.json",
        "convert",
        args("--from", "labelme", "--labels", f"{F}/labelme", *IMAGES, "--out", f"{F}/done"),
        r"done/annotations\.json already exists; choose another --out, or pass --overwrite",
    ),
    Case(
        "check a YOLO labels folder",
        "check",
        args(f"{F}/yolo", *IMAGES),
        r"holds YOLO labels, not a COCO json; convert them first with `python -m detlit\.convert --from yolo",
    ),
    Case(
        "check a Pascal VOC xml",
        "check",
        args(f"{F}/voc-size/a.xml", *IMAGES),
        r"a\.xml holds Pascal VOC labels, not a COCO json; convert them first with `python -m detlit\.convert "
        r"--from voc --labels .*a\.xml --images FOLDER",
    ),
    Case(
        "train on a LabelMe json",
        "fit",
        fit(f"--data.train_json={F}/labelme/a.json"),
        r"a\.json holds LabelMe labels, not a COCO json; convert them first with `python -m detlit\.convert "
        "--from labelme",
    ),
]
