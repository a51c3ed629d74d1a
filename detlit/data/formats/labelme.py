"""Stage 1 (preparing the data, before the check), other label formats: LabelMe json, one file per image, read
into COCO.

Each file names its image (``imagePath``, relative to the json's folder; found under the image folder
by that path, by its base name, or by the json's stem), states its size (``imageHeight``,
``imageWidth``: checked against the image's header after its EXIF orientation, which LabelMe applies)
and lists ``shapes``: ``label``, ``points`` (pixels, 0-based, continuous) and ``shape_type``. A
``rectangle`` (two corners, in any order) is the box; a ``polygon`` (the default when ``shape_type`` is
missing or null, as in old files) and a ``mask`` give their points' bounding box; a ``circle`` (centre,
then a point on it) the box around the circle. ``point``, ``line``, ``linestrip`` and ``points`` have
no area and are left out, counted. A shape's ``group_id``, ``description`` and its true ``flags`` are
kept as ``attributes``. ``imageData`` (the image, embedded as base64) is never decoded: the file's size
is bounded before it is read.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any

from detlit.data.formats.common import (
    Box,
    Classes,
    Labelled,
    Problems,
    corners_box,
    find_image,
    number,
    points_box,
    read_bounded,
    sized,
    whole,
)
from detlit.errors import DataError

log = logging.getLogger(__name__)

BOXES = ("rectangle", "polygon", "mask", "circle")
NO_AREA = ("point", "line", "linestrip", "points")


def json_files(labels: Path) -> list[Path]:
    """The json files of a labels folder (sub-folders included), in name order; a file is itself."""
    if labels.is_file():
        return [labels]
    return sorted(p for p in labels.rglob("*") if p.suffix.lower() == ".json" and p.is_file())


def read_document(path: Path, problems: Problems) -> dict[str, Any] | None:
    """The top-level object of one LabelMe json, or None (a problem is recorded)."""
    try:
        data = read_bounded(path, "a LabelMe json")
        document = json.loads(data.decode("utf-8-sig"))
    except DataError as err:
        problems.add(str(path), str(err).removeprefix(f"{path} "))
        return None
    except UnicodeDecodeError as err:
        problems.add(str(path), f"is not UTF-8 text (byte {err.start}); pass a LabelMe json")
        return None
    except json.JSONDecodeError as err:
        problems.add(
            f"{path} line {err.lineno}", f"is not valid JSON (column {err.colno}: {err.msg}); fix it or save it again"
        )
        return None
    except RecursionError:
        problems.add(str(path), "nests lists and objects too deep to be a LabelMe json; pass a LabelMe json")
        return None
    if not isinstance(document, dict) or not isinstance(document.get("shapes"), list):
        problems.add(str(path), "has no 'shapes' list; a LabelMe json is an object with 'shapes' and 'imagePath'")
        return None
    return document


def shape_points(shape: dict[str, Any], where: str, problems: Problems) -> list[tuple[float, float]] | None:
    """A shape's points as pairs of finite numbers, or None (a problem is recorded)."""
    raw = shape.get("points")
    points: list[tuple[float, float]] = []
    if isinstance(raw, list):
        for point in raw:
            pair = [number(v) for v in point] if isinstance(point, list) and len(point) == 2 else [None]
            if any(v is None for v in pair):
                break
            points.append((float(pair[0] or 0.0), float(pair[1] or 0.0)))
        else:
            if points:
                return points
    problems.add(where, f"has points {str(raw)[:80]}; a shape's points are a list of [x, y] pairs of numbers")
    return None


def shape_box(
    kind: str, points: list[tuple[float, float]], where: str, problems: Problems
) -> tuple[float, float, float, float] | None:
    """The COCO box of a shape with an area, or None (a problem is recorded)."""
    if kind in ("rectangle", "circle") and len(points) != 2:
        needs = "two corners" if kind == "rectangle" else "the centre and a point on it"
        problems.add(where, f"a {kind} has {len(points)} points; it needs 2 ({needs})")
        return None
    if kind == "rectangle":
        (x0, y0), (x1, y1) = points
        return corners_box(x0, y0, x1, y1)
    if kind == "circle":
        (cx, cy), (px, py) = points
        radius = math.hypot(px - cx, py - cy)
        return corners_box(cx - radius, cy - radius, cx + radius, cy + radius)
    if kind == "polygon" and len(points) < 3:
        problems.add(where, f"a polygon has {len(points)} points; it needs 3 or more")
        return None
    return points_box(points)


def attributes(shape: dict[str, Any]) -> dict[str, Any]:
    """What a shape says besides its class and points: ``group_id``, ``description``, its true ``flags``."""
    kept: dict[str, Any] = {}
    if shape.get("group_id") is not None:
        kept["group_id"] = shape["group_id"]
    if isinstance(shape.get("description"), str) and shape["description"]:
        kept["description"] = shape["description"]
    flags = shape.get("flags")
    if isinstance(flags, dict):
        kept.update({str(k): True for k, v in flags.items() if v is True})
    return kept


def read_labelme(
    labels: Path, images: Path, classes: Classes, problems: Problems
) -> tuple[list[Labelled], Classes, dict[str, tuple[int, int]]]:
    """Every LabelMe json under ``labels`` (a folder, or one file) as an image with its objects.

    Returns:
        The images, the classes (names file order, else first appearance) and the measured sizes.
    """
    found: list[Labelled] = []
    skipped: Counter[str] = Counter()
    for path in json_files(labels):
        document = read_document(path, problems)
        if document is None:
            continue
        name = str(document.get("imagePath") or "")
        file_name = _image(path, name, images)
        if file_name is None:
            problems.add(
                str(path),
                f"names the image {name!r}, which is not under {images} (nor an image of the stem {path.stem!r}); "
                "put it there or fix imagePath",
            )
            continue
        width, height = whole(document.get("imageWidth")), whole(document.get("imageHeight"))
        stated = width is not None and height is not None and width > 0 and height > 0
        image = Labelled(
            file_name, f"{path} (imageWidth, imageHeight)", width if stated else None, height if stated else None
        )
        for index, shape in enumerate(document["shapes"]):
            where = f"{path} shapes[{index}]"
            if not isinstance(shape, dict):
                problems.add(where, "is not an object with 'label', 'points' and 'shape_type'")
                continue
            kind = shape.get("shape_type") or "polygon"
            if kind in NO_AREA:
                skipped[str(kind)] += 1
                continue
            if kind not in BOXES:
                problems.add(
                    where,
                    f"has shape_type {kind!r}, which LabelMe does not write; use one of {', '.join(BOXES + NO_AREA)}",
                )
                continue
            label = shape.get("label")
            if not isinstance(label, str) or not label.strip():
                problems.add(where, "has no 'label'; name the shape's class")
                continue
            points = shape_points(shape, where, problems)
            box = shape_box(kind, points, where, problems) if points is not None else None
            category = classes.category_id(label.strip(), where, problems)
            if box is not None and category is not None:
                image.boxes.append(Box(category, box, attributes(shape)))
        found.append(image)
    if skipped:
        log.info("shapes without an area left out: %s", ", ".join(f"{n} {kind}" for kind, n in sorted(skipped.items())))
    if not found and not problems:
        raise DataError(f"{labels} holds no LabelMe json file; pass the folder of your LabelMe .json files")
    return found, classes, sized(found, images, problems)


def _image(path: Path, name: str, images: Path) -> str | None:
    """The image a LabelMe json names, relative to the image folder: ``imagePath`` resolved from the
    json's folder when it lands under the image folder, else by :func:`find_image`."""
    if name:
        target = (path.parent / name.replace("\\", "/")).resolve()
        root = images.resolve()
        if target.is_file() and target.is_relative_to(root):
            return target.relative_to(root).as_posix()
    return find_image(images, name, path)
