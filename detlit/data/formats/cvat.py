"""Stage 1 (preparing the data, before the check), other label formats: CVAT for images 1.1 xml, one
``annotations.xml`` for a task, a job or a project, read into COCO.

``<meta>`` lists the labels (under ``<task>``, ``<job>`` or ``<project>``): their order is the class
order (labels used but not listed follow, in order of first appearance). Each ``<image id name width
height>`` is an image (``name`` relative to the image folder; the size is checked against the image's
header after its EXIF orientation); an image without shapes is an image without objects. A ``<box
label xtl ytl xbr ybr>`` is a box in CVAT's continuous pixel coordinates (COCO's, so taken as they are;
a box with a ``rotation`` gives the bounding box of its rotated corners); a ``<polygon points="x,y;...">``
gives its bounding box. Each shape's ``occluded`` and its ``<attribute name="...">`` children are kept
as the annotation's ``attributes`` (``"true"`` / ``"false"`` as booleans, other values as text).
Polylines, points, ellipses, masks, skeletons, cuboids and tags are left out, counted. A file of
``<track>`` elements is CVAT for video: refused, with the export to choose.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any

from detlit.common.safe_xml import Element, parse_xml
from detlit.data.formats.common import (
    Box,
    Classes,
    Labelled,
    Problems,
    corners_box,
    number,
    points_box,
    read_bounded,
    sized,
    whole,
)
from detlit.errors import DataError

log = logging.getLogger(__name__)

SHAPES = ("box", "polygon")
OTHER_SHAPES = ("polyline", "points", "ellipse", "mask", "skeleton", "cuboid", "tag")


def annotations_file(labels: Path) -> Path:
    """The CVAT xml: ``labels`` itself, or the ``annotations.xml`` (or the one xml) in the folder ``labels``.

    Raises:
        DataError: the folder holds no single CVAT xml.
    """
    if not labels.is_dir():
        return labels
    if (labels / "annotations.xml").is_file():
        return labels / "annotations.xml"
    found = sorted(labels.glob("*.xml"))
    if len(found) != 1:
        raise DataError(
            f"{labels} holds {len(found)} xml files, not CVAT's one annotations.xml; pass --labels PATH/annotations.xml"
        )
    return found[0]


def meta_labels(root: Element) -> list[str]:
    """The label names of ``<meta>``, in order (task, job or project)."""
    for owner in ("task", "job", "project"):
        listed = root.path("meta", owner, "labels")
        if listed is not None:
            return [name for label in listed.findall("label") if (name := label.findtext("name"))]
    return []


def attributes(shape: Element, where: str, problems: Problems) -> dict[str, Any]:
    """``occluded`` and the ``<attribute>`` children of a shape."""
    kept: dict[str, Any] = {}
    occluded = shape.attrib.get("occluded")
    if occluded is not None:
        if occluded not in ("0", "1"):
            problems.add(where, f"occluded is {occluded!r}; write 0 or 1")
        else:
            kept["occluded"] = occluded == "1"
    for attribute in shape.findall("attribute"):
        name = attribute.attrib.get("name")
        if not name:
            problems.add(f"{where.rsplit(' line ', 1)[0]} line {attribute.line} (<attribute>)", "has no name; name it")
            continue
        text = attribute.text
        kept[name] = {"true": True, "false": False}.get(text, text)
    return kept


def shape_box(shape: Element, where: str, problems: Problems) -> tuple[float, float, float, float] | None:
    """The COCO box of a ``<box>`` or ``<polygon>``, or None (a problem is recorded)."""
    if shape.tag == "polygon":
        points = []
        for pair in shape.attrib.get("points", "").split(";"):
            values = [number(v) for v in pair.split(",")]
            if len(values) != 2 or values[0] is None or values[1] is None:
                problems.add(where, f"points has {pair!r}; write x,y;x,y;... with numbers")
                return None
            points.append((values[0], values[1]))
        if len(points) < 3:
            problems.add(where, f"a polygon of {len(points)} points; it needs 3 or more")
            return None
        return points_box(points)
    corners = [number(shape.attrib.get(key)) for key in ("xtl", "ytl", "xbr", "ybr")]
    if any(value is None for value in corners):
        problems.add(where, "needs numbers xtl, ytl, xbr and ybr")
        return None
    x0, y0, x1, y1 = (float(value or 0.0) for value in corners)
    rotation = number(shape.attrib.get("rotation", "0")) or 0.0
    if rotation % 360:
        # CVAT rotates the box about its centre, clockwise in image coordinates (y down)
        cx, cy, angle = (x0 + x1) / 2, (y0 + y1) / 2, math.radians(rotation)
        cos, sin = math.cos(angle), math.sin(angle)
        turned = [
            (cx + (x - cx) * cos - (y - cy) * sin, cy + (x - cx) * sin + (y - cy) * cos)
            for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))
        ]
        return points_box(turned)
    return corners_box(x0, y0, x1, y1)


def read_cvat(
    labels: Path, images: Path, classes: Classes, problems: Problems
) -> tuple[list[Labelled], Classes, dict[str, tuple[int, int]]]:
    """The images of a CVAT for images 1.1 xml with their objects.

    Args:
        labels: the xml, or a folder holding it.
        images: the image folder.
        classes: the classes of a names file (fixed), or none: then ``<meta>``'s labels are the order.
        problems: where the problems go.

    Raises:
        DataError: the file cannot be read as a whole (too large, not XML, a DTD, not CVAT).
    """
    path = annotations_file(labels)
    root = parse_xml(read_bounded(path, "CVAT's annotations.xml"), str(path))
    if root.tag != "annotations":
        raise DataError(
            f"{path} has the root element <{root.tag}>, not CVAT's <annotations>; export CVAT for images 1.1"
        )
    if root.find("track") is not None:
        raise DataError(
            f"{path} holds <track> elements (CVAT for video); export the task as CVAT for images 1.1 instead"
        )
    if not classes.fixed:
        classes = Classes(meta_labels(root))
    found: list[Labelled] = []
    skipped: Counter[str] = Counter()
    for element in root.findall("image"):
        where = f"{path} line {element.line} (<image>)"
        name = element.attrib.get("name", "").replace("\\", "/")
        if not name:
            problems.add(where, "has no name; CVAT names each image")
            continue
        width, height = whole(element.attrib.get("width")), whole(element.attrib.get("height"))
        stated = width is not None and height is not None and width > 0 and height > 0
        image = Labelled(name, where, width if stated else None, height if stated else None)
        for shape in element.children:
            if shape.tag not in SHAPES:
                skipped[shape.tag] += 1
                continue
            at = f"{path} line {shape.line} (<{shape.tag}>)"
            label = shape.attrib.get("label", "")
            if not label:
                problems.add(at, "has no label; name its class")
                continue
            box = shape_box(shape, at, problems)
            kept = attributes(shape, at, problems)
            category = classes.category_id(label, at, problems)
            if box is not None and category is not None:
                image.boxes.append(Box(category, box, kept))
        found.append(image)
    if classes.added:
        log.warning("labels used but not in <meta>'s list, added after it: %s", ", ".join(classes.added))
    if skipped:
        log.info(
            "shapes that are not boxes or polygons left out: %s",
            ", ".join(f"{n} {t}" for t, n in sorted(skipped.items())),
        )
    if not found and not problems:
        raise DataError(f"{path} lists no <image>; export the task as CVAT for images 1.1")
    return found, classes, sized(found, images, problems)
