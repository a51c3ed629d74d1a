"""Stage 1 (preparing the data, before the check), other label formats: YOLO (Ultralytics' detection format),
read into COCO and written from it.

Reading (:func:`read_yolo`): every image under the image folder (sub-folders included) is an image of
the dataset; its labels are the text file of the same relative path and stem under the labels folder
(``images/a/b.jpg`` -> ``labels/a/b.txt``), one object a line, ``class cx cy w h``, the centre and size
as fractions of the image's width and height. An empty or missing file is an image without objects
(Ultralytics' rule). The image's size is its header's after the EXIF orientation, which Ultralytics
applies too. A line of more values is a segment, ``class x1 y1 x2 y2 ...``: its polygon's bounding box
is the object's box, as Ultralytics makes it for detection training. Class index ``i`` is category id
``i + 1``, named by line ``i + 1`` of the names file or by ``names`` of a ``data.yaml``.

Writing (:func:`yolo_labels`): one text file per image (an empty one for an image without objects),
classes numbered in the order of category id (the label order detlit trains with), boxes clipped to
the image, with six decimals; crowd regions are left out (YOLO has no ignore regions), and counted.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any

from detlit.data.coco import CocoDataset
from detlit.data.formats.common import (
    Box,
    Classes,
    Labelled,
    Problems,
    image_files,
    image_problem,
    measure,
    number,
    pixels,
    read_bounded,
    whole,
)
from detlit.errors import ConfigError, DataError

log = logging.getLogger(__name__)

NAMES_FILES = ("classes.txt", "obj.names", "data.yaml", "dataset.yaml")
"""Names files looked for when none is given: in the labels folder, then in the folders above it (two)."""
LINE_FORMAT = "a YOLO line is `class cx cy w h` (5 values) or a segment `class x1 y1 x2 y2 x3 y3 ...` (7 or more)"


def default_labels(images: Path) -> Path:
    """The labels folder of an image folder by Ultralytics' rule: its last ``images`` part becomes ``labels``.

    Raises:
        ConfigError: the image folder's path has no ``images`` part.
    """
    parts = list(images.parts)
    for index in range(len(parts) - 1, -1, -1):
        if parts[index] == "images":
            parts[index] = "labels"
            return Path(*parts)
    raise ConfigError(
        f"--images {images} has no folder named 'images' whose 'labels' twin would hold the YOLO labels; "
        "pass --labels FOLDER"
    )


def find_names(labels: Path) -> Path:
    """The names file of a labels folder: one of :data:`NAMES_FILES` in it or in the two folders above.

    Raises:
        ConfigError: none is there.
    """
    for folder in (labels, labels.parent, labels.parent.parent):
        for name in NAMES_FILES:
            if (folder / name).is_file():
                log.info("class names from %s", folder / name)
                return folder / name
    raise ConfigError(
        f"no class names found for the YOLO labels in {labels} (looked for {', '.join(NAMES_FILES)} there and in "
        "the two folders above); pass --names FILE: one class name per line, or your data.yaml"
    )


def parse_line(
    values: list[str], where: str, count: int, names: str, problems: Problems
) -> tuple[int, list[float]] | None:
    """The class index and the coordinates of one line, or None (a problem is recorded).

    Args:
        values: the line's values.
        where: the file and line, for the problem.
        count: how many classes the names file holds.
        names: the names file, for the problem.
    """
    if not (len(values) == 5 or (len(values) >= 7 and len(values) % 2 == 1)):
        problems.add(where, f"has {len(values)} values; {LINE_FORMAT}")
        return None
    index = whole(values[0])
    if index is None or index < 0:
        problems.add(where, f"the class {values[0]!r} is not a class index (0, 1, 2, ...); {LINE_FORMAT}")
        return None
    if index >= count:
        problems.add(where, f"class {index} is beyond the {count} classes of {names} (0 to {count - 1}); name it there")
        return None
    coordinates = []
    for text in values[1:]:
        value = number(text)
        if value is None:
            problems.add(where, f"{text!r} is not a number; {LINE_FORMAT}")
            return None
        if not 0.0 <= value <= 1.0:
            problems.add(
                where,
                f"{text} is outside 0..1; YOLO coordinates are fractions of the image's width and height "
                "(pixels must be divided by the image's size)",
            )
            return None
        coordinates.append(value)
    return index, coordinates


def read_yolo(
    labels: Path, images: Path, names: list[str], names_source: str, problems: Problems
) -> tuple[list[Labelled], Classes, dict[str, tuple[int, int]]]:
    """Every image under ``images`` with the objects of its label file under ``labels``.

    Args:
        labels: the labels folder.
        images: the image folder.
        names: the class names, class index order.
        names_source: the file they come from, for problems.
        problems: where the problems of every file and line go.

    Returns:
        The images, the classes (category id = class index + 1) and the measured image sizes.
    """
    classes = Classes(names, fixed=True, source=names_source)
    files = image_files(images)
    label_of: dict[str, str] = {}  # label file (relative) -> the image it belongs to
    for name in files:
        relative = PurePosixPath(name).with_suffix(".txt").as_posix()
        if relative in label_of:
            problems.add(
                f"{images / name}",
                f"shares the label file {labels / relative} with {images / label_of[relative]}; YOLO finds labels by "
                "stem: rename one of the images",
            )
        label_of.setdefault(relative, name)
    headers = measure(images, files)
    found: list[Labelled] = []
    sizes: dict[str, tuple[int, int]] = {}
    counts: Counter[str] = Counter()
    for index, name in enumerate(files):
        label = labels / PurePosixPath(name).with_suffix(".txt")
        problem = image_problem(headers, index, images, name)
        if problem is not None:
            problems.add(str(label), problem)
            continue
        width, height = int(headers.width[index]), int(headers.height[index])
        sizes[name] = (width, height)
        image = Labelled(name, str(label))
        found.append(image)
        if not label.exists():
            counts["without a label file"] += 1
            continue
        try:
            text = read_bounded(label, "a YOLO label file").decode("utf-8-sig")
        except UnicodeDecodeError as err:
            problems.add(str(label), f"is not UTF-8 text (byte {err.start}); a YOLO label file is plain text")
            continue
        except DataError as err:
            problems.add(str(label), str(err))
            continue
        lines = 0
        for number_, line in enumerate(text.splitlines(), 1):
            values = line.split()
            if not values:
                continue
            parsed = parse_line(values, f"{label} line {number_}", len(names), names_source, problems)
            if parsed is None:
                continue
            lines += 1
            category, coordinates = parsed
            if len(coordinates) == 4:
                cx, cy, w, h = coordinates
                x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
            else:
                counts["segments"] += 1
                xs, ys = coordinates[0::2], coordinates[1::2]
                x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
            bbox = (pixels(x0 * width), pixels(y0 * height), pixels((x1 - x0) * width), pixels((y1 - y0) * height))
            image.boxes.append(Box(category + 1, bbox))
        if not lines:
            counts["with an empty label file"] += 1
    _note_unused(labels, set(label_of), counts)
    for what in ("without a label file", "with an empty label file"):
        if counts[what]:
            log.info("%d images %s: images without objects", counts[what], what)
    if counts["segments"]:
        log.info("%d segment lines (polygons): each object's box is its polygon's bounding box", counts["segments"])
    return found, classes, sizes


def _note_unused(labels: Path, used: set[str], counts: Counter[str]) -> None:
    """Warn about label files that belong to no image (Ultralytics ignores them too)."""
    unused = sorted(
        relative
        for folder, _, names in os.walk(labels)
        for name in names
        if name.endswith(".txt") and name not in NAMES_FILES
        for relative in [Path(os.path.relpath(os.path.join(folder, name), labels)).as_posix()]
        if relative not in used
    )
    if unused:
        log.warning(
            "%d label files under %s have no image of their stem under --images and are not used (e.g. %s)",
            len(unused),
            labels,
            ", ".join(unused[:3]),
        )


# --- COCO -> YOLO --------------------------------------------------------------------------------------


def yolo_labels(dataset: CocoDataset) -> tuple[dict[str, str], list[str], dict[str, int]]:
    """The YOLO label files of a COCO dataset.

    Returns:
        The text of each label file by its path relative to the labels folder, the class names in
        class-index order (category id order), and counts of what was left out or changed
        (``crowd``, ``clipped``, ``no_area``).

    Raises:
        DataError: two images would share one label file (``a.jpg`` and ``a.png`` in one folder).
    """
    label_map = dataset.label_map()
    images = dataset.images
    files: dict[str, str] = {}
    owners: dict[str, str] = {}
    counts = {"crowd": 0, "clipped": 0, "no_area": 0, "objects": 0}
    labels_of = label_map.labels(images.category_ids)  # placeholder categories have no objects
    for index in range(len(images)):
        name = images.file_name(index)
        label = PurePosixPath(name).with_suffix(".txt").as_posix()
        if label in owners:
            raise DataError(
                f"images {owners[label]} and {name} would share the YOLO label file {label} (YOLO finds labels by "
                "stem); rename one of them"
            )
        owners[label] = name
        width, height = float(images.widths[index]), float(images.heights[index])
        start, end = int(images.offsets[index]), int(images.offsets[index + 1])
        lines: list[str] = []
        for row in range(start, end):
            if images.crowd[row]:
                counts["crowd"] += 1
                continue
            x, y, w, h = (float(v) for v in images.bboxes[row])
            x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
            x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
            if (x0, y0, x1, y1) != (x, y, x + w, y + h):
                counts["clipped"] += 1
            if x1 <= x0 or y1 <= y0:
                counts["no_area"] += 1
                continue
            values = ((x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height)
            lines.append(f"{labels_of[row]} " + " ".join(f"{v:.6f}" for v in values))
            counts["objects"] += 1
        files[label] = "".join(line + "\n" for line in lines)
    return files, list(label_map.names), counts


def data_yaml(names: list[str], source: Path) -> str:
    """A YOLO ``data.yaml`` that names the classes (``names`` as ``{index: name}``) and says where
    Ultralytics looks for the labels."""
    import yaml

    body: dict[str, Any] = {"nc": len(names), "names": dict(enumerate(names))}
    header = (
        f"# YOLO class names of {source}, written by python -m detlit.convert.\n"
        "# Ultralytics finds an image's labels by replacing /images/ with /labels/ in its path: put (or link)\n"
        "# the images in images/ beside labels/, then add path, train and val to this file.\n"
    )
    return header + yaml.safe_dump(body, sort_keys=False, allow_unicode=True)
