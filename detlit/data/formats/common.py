"""Stage 1 (preparing the data, before the check), other label formats: what every reader shares.

* :class:`Problems`: every malformed line or element of every file, each one sentence with its file
  and line; the conversion lists them all, then stops before writing anything
  (:meth:`Problems.stop`), as ``check`` lists every finding at once.
* :class:`Classes`: the class order, category ids ``1..K``: the order of a names file when one is
  given (a label outside it is a problem), else the order in which labels first appear (files in
  name order, objects in file order) after the format's own list (CVAT's ``<labels>``).
* :func:`measure`: image sizes from the image headers with the EXIF orientation applied, exactly as
  ``check`` measures them (:func:`detlit.data.headers.read_headers`), so a converted json passes
  ``check``'s size test; :func:`check_size` compares them with the size a label file states.
* :func:`read_bounded`: a label file's bytes, its size checked before it is read
  (:data:`MAX_LABEL_BYTES`).
* :func:`coco_document`: the images and their objects as a COCO detection json, image ids ``1..N``
  in file-name order, annotation ids ``1..M``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detlit.common import files
from detlit.common.paths import not_a_file
from detlit.common.safe_yaml import read_yaml
from detlit.data.checks import escapes_root
from detlit.data.headers import TRANSPOSING_ORIENTATIONS, Headers, read_headers
from detlit.data.images import IMAGE_SUFFIXES
from detlit.errors import DataError

log = logging.getLogger(__name__)

MAX_LABEL_BYTES = 256 * 2**20
"""Largest label file read, in bytes. CVAT keeps a whole task in one ``annotations.xml`` (about 150
bytes a box: a million boxes take 150 MB); a LabelMe json may embed its image as base64 (a 24
megapixel JPEG: about 15 MB). A larger file is refused before it is read."""
MAX_LISTED = 100
"""Most problems logged one by one; the count of the rest follows."""
DECIMALS = (
    6  # pixel coordinates are rounded to a millionth of a pixel: (0.3 - 0.1) * 100 is 20.0, not 19.999999999999996
)


class Problems:
    """Every problem of a conversion, one sentence each: ``FILE line N: what; how to fix``."""

    def __init__(self) -> None:
        self.sentences: list[str] = []

    def add(self, where: str, what: str) -> None:
        """One problem: ``where`` is the file (and line or element), ``what`` what is wrong and the fix."""
        self.sentences.append(f"{where}: {what}")

    def __len__(self) -> int:
        return len(self.sentences)

    def stop(self) -> None:
        """Log every problem and raise one sentence, the first problem and their number; nothing
        has been written.

        Raises:
            DataError: when there is any problem.
        """
        if not self.sentences:
            return
        for sentence in self.sentences[:MAX_LISTED]:
            log.error("%s", sentence)
        if len(self.sentences) > MAX_LISTED:
            log.error("... and %d more problems", len(self.sentences) - MAX_LISTED)
        more = f" (and {len(self) - 1} more problems, each logged above)" if len(self) > 1 else ""
        raise DataError(f"{self.sentences[0]}{more}; nothing was written: fix the labels and run convert again")


def read_bounded(path: Path, what: str) -> bytes:
    """The bytes of a label file of at most :data:`MAX_LABEL_BYTES` bytes, checked before it is read.

    Raises:
        DataError: the file is missing, not a regular file, too large or unreadable.
    """
    return files.read_bounded(path, MAX_LABEL_BYTES, DataError, f"pass {what}")


def line_of(data: bytes | str, offset: int) -> int:
    """The 1-based line number of a character offset in a text."""
    text = data if isinstance(data, str) else data.decode("utf-8", "replace")
    return text.count("\n", 0, max(offset, 0)) + 1


# --- classes -----------------------------------------------------------------------------------------


class Classes:
    """The class order and category ids ``1..K``.

    Args:
        names: the classes in order (a names file, CVAT's ``<labels>``), or none.
        fixed: only ``names`` are allowed (a names file was given): any other label is a problem;
            otherwise a new label is added after the others when it first appears.
        source: what gave ``names``, for the problem sentence.
    """

    def __init__(self, names: Sequence[str] = (), fixed: bool = False, source: str = "") -> None:
        self.names: list[str] = list(names)
        self.ids = {name: index + 1 for index, name in enumerate(self.names)}
        self.fixed = fixed
        self.source = source
        self.added: list[str] = []  # labels not in ``names``, in order of first appearance

    def category_id(self, name: str, where: str, problems: Problems) -> int | None:
        """The category id of a label, or None (a problem is recorded) when the names are fixed and
        do not hold it."""
        found = self.ids.get(name)
        if found is not None:
            return found
        if self.fixed:
            problems.add(
                where, f"label {name!r} is not one of the {len(self.names)} classes of {self.source}; add it there"
            )
            return None
        self.names.append(name)
        self.added.append(name)
        self.ids[name] = len(self.names)
        return self.ids[name]

    def categories(self) -> list[dict[str, Any]]:
        return [{"id": self.ids[name], "name": name, "supercategory": ""} for name in self.names]


def read_names(path: Path, problems: Problems) -> list[str]:
    """Class names in order: a text file of one name per line (blank lines at the end ignored), or a
    YOLO ``data.yaml`` (``.yaml`` / ``.yml``) whose ``names`` is a list or a mapping ``{0: name, 1: ...}``
    (read by detlit's safe YAML reader; its other keys are not used).

    Raises:
        DataError, ConfigError: the file cannot be read (missing, too large, not UTF-8, not YAML).
    """
    if path.suffix.lower() in (".yaml", ".yml"):
        return _yaml_names(path, problems)
    data = read_bounded(path, "a names file: one class name per line, or a YOLO data.yaml")
    try:
        lines = data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text (byte {err.start}); pass a names file, one class per line") from None
    while lines and not lines[-1].strip():
        lines.pop()
    names: list[str] = []
    for number, line in enumerate(lines, 1):
        name = line.strip()
        where = f"{path} line {number}"
        if not name:
            problems.add(where, "the line is empty, so the class indices after it would shift; name the class")
        elif name in names:
            first = names.index(name) + 1
            problems.add(where, f"class {name!r} is named twice (line {first} too); give each class its own name")
        names.append(name)
    if not names:
        problems.add(str(path), "the file names no class; write one class name per line")
    return names


def _yaml_names(path: Path, problems: Problems) -> list[str]:
    """The ``names`` of a YOLO ``data.yaml``, in class-index order."""
    document = read_yaml(path, f"the data.yaml {path}")
    raw = document.get("names") if isinstance(document, dict) else None
    if isinstance(raw, dict):
        indices = [whole(key) for key in raw]
        if any(index is None for index in indices) or sorted(i for i in indices if i is not None) != list(
            range(len(raw))
        ):
            problems.add(
                str(path),
                f"'names' is numbered {sorted(raw, key=str)}; number the classes 0 to {len(raw) - 1}, one each",
            )
            return []
        raw = [raw[key] for key in sorted(raw, key=lambda key: whole(key) or 0)]
    if not isinstance(raw, list) or not raw:
        problems.add(str(path), "has no 'names' list or mapping of class names; add one (names: [cat, dog])")
        return []
    names = [str(name).strip() for name in raw]
    for index, name in enumerate(names):
        if not name:
            problems.add(str(path), f"class {index} has an empty name in 'names'; name it")
        elif name in names[:index]:
            problems.add(str(path), f"class {name!r} is named twice in 'names'; give each class its own name")
    count = document.get("nc")
    if count is not None and whole(count) != len(names):
        problems.add(str(path), f"'nc' is {count} but 'names' holds {len(names)} classes; make them agree")
    return names


# --- images and their sizes --------------------------------------------------------------------------


@dataclass
class Box:
    """One object: its category id, its COCO box ``[x, y, width, height]`` in pixels, its attributes."""

    category_id: int
    bbox: tuple[float, float, float, float]
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Labelled:
    """One image as a label file describes it.

    Attributes:
        file_name: the image, relative to the image folder (``/`` separators).
        where: the label file (and element) that names it, for problem sentences.
        width, height: the size the label file states (None: it states none).
        boxes: its objects.
    """

    file_name: str
    where: str
    width: int | None = None
    height: int | None = None
    boxes: list[Box] = field(default_factory=list)


def image_files(root: Path) -> list[str]:
    """Every image file under ``root`` (suffix in :data:`~detlit.data.images.IMAGE_SUFFIXES`, sub-folders
    included), relative to it with ``/`` separators, in name order."""
    found = [
        Path(os.path.relpath(os.path.join(folder, name), root)).as_posix()
        for folder, _, names in os.walk(root)
        for name in names
        if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES
    ]
    return sorted(found)


def require_folder(folder: Path, option: str) -> None:
    """Raise one sentence unless ``folder`` is a folder."""
    if not folder.is_dir():
        problem = "is a file, not a folder" if folder.exists() else "does not exist"
        raise DataError(f"{option} {folder} {problem}; pass the folder")


def find_image(root: Path, name: str, stem_of: Path) -> str | None:
    """The image a label file names, relative to ``root``: ``name`` itself, else its base name, else the
    image at the top of ``root`` whose stem is the label file's (``stem_of``); None when none exists."""
    name = name.replace("\\", "/").strip()
    candidates = [name, Path(name).name] if name else []
    for candidate in candidates:
        if candidate and not escapes_root(candidate) and (root / candidate).is_file():
            return Path(candidate).as_posix()
    for suffix in sorted(IMAGE_SUFFIXES):
        for spelled in (suffix, suffix.upper()):
            if (root / (stem_of.stem + spelled)).is_file():
                return stem_of.stem + spelled
    return None


def measure(root: Path, names: Sequence[str]) -> Headers:
    """The header of every image: size after the EXIF orientation, as ``check`` reads it."""
    return read_headers(root, names)


def image_problem(headers: Headers, index: int, root: Path, name: str) -> str | None:
    """Why image ``index`` has no usable size (missing, unreadable), or None."""
    if not headers.exists[index]:
        return f"the image {root / name} {not_a_file(root / name) or 'does not exist'}; put it there or fix the name"
    error = headers.errors.get(index)
    if error:
        return f"the image {root / name} cannot be read ({error}); replace it"
    return None


def check_size(image: Labelled, headers: Headers, index: int, root: Path, problems: Problems) -> None:
    """A problem when the size the label file states is not the image's (after its EXIF orientation).

    The boxes are pixels of the image as the labelling tool showed it: when the stated size differs,
    the tool showed another image (or the same one unrotated), and no choice of size makes both right.
    """
    width, height = int(headers.width[index]), int(headers.height[index])
    if image.width is None or image.height is None or (image.width, image.height) == (width, height):
        return
    orientation = int(headers.orientation[index])
    rotated = ""
    if orientation != 1:
        rotated = f" after its EXIF orientation {orientation} is applied"
        if orientation in TRANSPOSING_ORIENTATIONS and (image.width, image.height) == (height, width):
            rotated += " (the labelling tool showed it unrotated: rotate the image's pixels and its boxes)"
    problems.add(
        image.where,
        f"says the image is {image.width}x{image.height}, but {root / image.file_name} is {width}x{height}{rotated}; "
        "the boxes may be drawn on another image: fix the size or the image",
    )


def pixels(value: float) -> float:
    """A pixel coordinate rounded to :data:`DECIMALS` places."""
    return round(value, DECIMALS) + 0.0  # + 0.0: no -0.0 in the json


def corners_box(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
    """A COCO box from two corners (in either order)."""
    left, right = min(x0, x1), max(x0, x1)
    top, bottom = min(y0, y1), max(y0, y1)
    return pixels(left), pixels(top), pixels(right - left), pixels(bottom - top)


def points_box(points: Sequence[tuple[float, float]]) -> tuple[float, float, float, float]:
    """The COCO box around some points (a polygon's bounding box)."""
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    return corners_box(min(xs), min(ys), max(xs), max(ys))


def number(text: Any) -> float | None:
    """A finite number from a text or a number, or None."""
    if isinstance(text, bool):
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def whole(text: Any) -> int | None:
    """A whole number from a text (``"3"``, ``"3.0"``) or a number, or None."""
    value = number(text)
    return int(value) if value is not None and value.is_integer() else None


# --- the COCO json -----------------------------------------------------------------------------------


def coco_document(images: list[Labelled], classes: Classes, sizes: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """The COCO detection json of ``images`` (in file-name order), their sizes measured (``sizes``)."""
    document: dict[str, Any] = {"images": [], "annotations": [], "categories": classes.categories()}
    for image_id, image in enumerate(sorted(images, key=lambda i: i.file_name), 1):
        width, height = sizes[image.file_name]
        document["images"].append({"id": image_id, "file_name": image.file_name, "width": width, "height": height})
        for box in image.boxes:
            annotation: dict[str, Any] = {
                "id": len(document["annotations"]) + 1,
                "image_id": image_id,
                "category_id": box.category_id,
                "bbox": list(box.bbox),
                "area": pixels(box.bbox[2] * box.bbox[3]),
                "iscrowd": 0,
            }
            if box.attributes:
                annotation["attributes"] = box.attributes
            document["annotations"].append(annotation)
    return document


def sized(images: list[Labelled], root: Path, problems: Problems) -> dict[str, tuple[int, int]]:
    """The measured size of every image that a label file names, each checked against the size the
    file states; a missing, unreadable or mis-sized image is a problem. Two label files naming one
    image is a problem too."""
    seen: dict[str, str] = {}
    for image in images:
        if escapes_root(image.file_name):
            problems.add(
                image.where,
                f"names the image {image.file_name!r}, which leaves the image folder; name it relative to it",
            )
            continue
        if image.file_name in seen:
            problems.add(
                image.where,
                f"names the image {image.file_name}, which {seen[image.file_name]} names too; keep one of them",
            )
        seen.setdefault(image.file_name, image.where)
    names = list(seen)
    headers = measure(root, names)
    sizes: dict[str, tuple[int, int]] = {}
    index_of = {name: index for index, name in enumerate(names)}
    for image in images:
        if image.file_name not in index_of:
            continue
        index = index_of[image.file_name]
        problem = image_problem(headers, index, root, image.file_name)
        if problem is not None:
            problems.add(image.where, problem)
            continue
        check_size(image, headers, index, root, problems)
        sizes[image.file_name] = (int(headers.width[index]), int(headers.height[index]))
    return sizes
