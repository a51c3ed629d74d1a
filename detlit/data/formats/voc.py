"""Stage 1 (preparing the data, before the check), other label formats: Pascal VOC xml, one file per image, read
into COCO.

Each ``<annotation>`` names its image (``<filename>``, relative to the image folder; else the image of
the xml's stem), states its size (``<size>``) and lists ``<object>`` elements: ``<name>``, ``<bndbox>``
with ``xmin ymin xmax ymax``, and the flags ``<difficult>``, ``<truncated>``, ``<occluded>``, kept as the
annotation's ``attributes`` (``{"difficult": true, ...}``; detlit trains on difficult objects like on
the others, as detectron2's VOC loader does).

VOC coordinates are 1-based pixel indices, both corners inclusive: ``xmin=1, xmax=W`` covers the whole
width. As detectron2's VOC loader does, ``xmin`` and ``ymin`` lose 1 and ``xmax``, ``ymax`` stay, so that
box is COCO's ``[0, ., W, .]``. The ``<size>`` is checked against the image's header after its EXIF
orientation (:func:`~detlit.data.formats.common.check_size`); an image without ``<size>`` (or with 0)
takes its header's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from detlit.common.safe_xml import Element, parse_xml
from detlit.data.formats.common import (
    Box,
    Classes,
    Labelled,
    Problems,
    corners_box,
    find_image,
    number,
    read_bounded,
    sized,
    whole,
)
from detlit.errors import DataError

log = logging.getLogger(__name__)

FLAGS = ("difficult", "truncated", "occluded")


def xml_files(labels: Path) -> list[Path]:
    """The xml files of a labels folder (sub-folders included), in name order; a file is itself."""
    if labels.is_file():
        return [labels]
    return sorted(p for p in labels.rglob("*") if p.suffix.lower() == ".xml" and p.is_file())


def read_xml(path: Path, problems: Problems) -> Element | None:
    """The root element of one label xml, or None (a problem is recorded)."""
    try:
        return parse_xml(read_bounded(path, "a label xml"), str(path))
    except DataError as err:
        problems.add(str(path), str(err).removeprefix(f"{path} "))
        return None


def flags(element: Element, where: str, problems: Problems) -> dict[str, Any]:
    """The flags of an ``<object>`` as booleans (only those it has)."""
    found: dict[str, Any] = {}
    for flag in FLAGS:
        text = element.findtext(flag)
        if text is None or text == "":
            continue
        value = whole(text)
        if value not in (0, 1):
            problems.add(where, f"<{flag}> is {text!r}; write 0 or 1")
            continue
        found[flag] = bool(value)
    return found


def read_object(item: Element, path: Path, classes: Classes, problems: Problems) -> Box | None:
    """One ``<object>`` as a box, or None (a problem is recorded)."""
    where = f"{path} line {item.line} (<object>)"
    name = item.findtext("name")
    if not name:
        problems.add(where, "has no <name>; name the object's class")
        return None
    box = item.find("bndbox")
    if box is None:
        problems.add(where, f"{name!r} has no <bndbox>; detlit reads boxes (xmin, ymin, xmax, ymax)")
        return None
    corners = []
    for key in ("xmin", "ymin", "xmax", "ymax"):
        value = number(box.findtext(key))
        if value is None:
            problems.add(f"{path} line {box.line} (<bndbox>)", f"<{key}> is {box.findtext(key)!r}; write a number")
            return None
        corners.append(value)
    xmin, ymin, xmax, ymax = corners
    if xmax < xmin or ymax < ymin:
        problems.add(
            f"{path} line {box.line} (<bndbox>)",
            f"xmax < xmin or ymax < ymin ({xmin}, {ymin}, {xmax}, {ymax}); swap them",
        )
        return None
    category = classes.category_id(name, where, problems)
    attributes = flags(item, where, problems)
    if category is None:
        return None
    # 1-based inclusive pixel indices: the left and top edges are at xmin - 1 and ymin - 1 (detectron2's VOC loader)
    return Box(category, corners_box(xmin - 1, ymin - 1, xmax, ymax), attributes)


def read_voc(
    labels: Path, images: Path, classes: Classes, problems: Problems, files: Callable[[Path], list[Path]] = xml_files
) -> tuple[list[Labelled], Classes, dict[str, tuple[int, int]]]:
    """Every VOC xml under ``labels`` (a folder, or one file) as an image with its objects.

    Returns:
        The images, the classes (names file order, else first appearance) and the measured sizes.
    """
    found: list[Labelled] = []
    for path in files(labels):
        root = read_xml(path, problems)
        if root is None:
            continue
        if root.tag != "annotation":
            problems.add(
                f"{path} line {root.line}",
                f"the root element is <{root.tag}>, not VOC's <annotation>; pass VOC xml files",
            )
            continue
        name = root.findtext("filename") or ""
        file_name = find_image(images, name, path)
        if file_name is None:
            problems.add(
                f"{path} line {root.line}",
                f"names the image {name!r}, which is not under {images} (nor an image of the stem {path.stem!r}); "
                "put it there or fix <filename>",
            )
            continue
        size = root.find("size")
        width = whole(size.findtext("width")) if size is not None else None
        height = whole(size.findtext("height")) if size is not None else None
        where = f"{path} line {size.line} (<size>)" if size is not None else str(path)
        stated = width is not None and height is not None and width > 0 and height > 0
        image = Labelled(file_name, where, width if stated else None, height if stated else None)
        for item in root.findall("object"):
            box = read_object(item, path, classes, problems)
            if box is not None:
                image.boxes.append(box)
        found.append(image)
    if not found and not problems:
        raise DataError(f"{labels} holds no VOC xml file; pass the folder of your .xml labels (Annotations/)")
    return found, classes, sized(found, images, problems)
