"""Stage 1, reading the json: a COCO json into records, and the category <-> label map.

COCO category ids are arbitrary (Roboflow exports start at 0, COCO itself has gaps); inside the
model, labels are contiguous ``0..K-1``. :class:`LabelMap` is the one place that translates
between the two, and it is built once, here, from the training json.

Reading (:func:`read_coco`) decodes only the fields detection uses, straight into typed values
(msgspec with a schema: polygons are skipped, never built as Python objects), and turns them
into the columns of :class:`~detlit.data.records.Records`. A file that does not fit the schema,
or whose records have problems (ids used twice, objects of unknown images, ...), is read again
as a plain json document and parsed record by record (:func:`parse_coco`), which names every
problem as a finding.
"""

from __future__ import annotations

import codecs
import gc
import json
import logging
import mmap
from collections import Counter
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from detlit.common.paths import not_a_file
from detlit.data.findings import Finding, Repair, Severity, errors
from detlit.data.formats.detect import convert_hint
from detlit.data.records import Annotation, ImageRecord, Records
from detlit.errors import DataError

__all__ = [
    "Annotation",
    "Category",
    "CocoDataset",
    "ImageRecord",
    "LabelMap",
    "Records",
    "load_coco",
    "parse_coco",
    "read_coco",
    "read_json",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Category:
    id: int
    name: str
    supercategory: str = ""


@dataclass(frozen=True)
class LabelMap:
    """Contiguous model labels ``0..K-1`` <-> original COCO category ids (and names)."""

    category_ids: tuple[int, ...]
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.category_ids) != len(self.names):
            raise ValueError("category_ids and names must have the same length")
        if len(set(self.category_ids)) != len(self.category_ids):
            raise ValueError(f"category ids are not unique: {list(self.category_ids)}")

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def label(self, category_id: int) -> int:
        """Contiguous label of a COCO category id."""
        return self.category_ids.index(category_id)

    def labels(self, category_ids: np.ndarray) -> np.ndarray:
        """Contiguous labels of an array of COCO category ids.

        Raises:
            KeyError: an id is not in the map.
        """
        ids = np.asarray(self.category_ids, np.int64)
        order = np.argsort(ids)
        values = np.asarray(category_ids, np.int64)
        found = np.searchsorted(ids[order], values).clip(0, max(len(ids) - 1, 0))
        unknown = ids[order][found] != values if len(ids) else np.ones(len(values), bool)
        if unknown.any():
            raise KeyError(int(values[np.argmax(unknown)]))
        return order[found]

    def category_id(self, label: int) -> int:
        """COCO category id of a contiguous label."""
        return self.category_ids[label]

    def describe(self) -> str:
        return ", ".join(
            f"{cid}->{label} ({name})"
            for label, (cid, name) in enumerate(zip(self.category_ids, self.names, strict=False))
        )


@dataclass
class CocoDataset:
    """A loaded COCO detection json: its images (with annotations, as columns) and categories.

    ``images`` is a :class:`~detlit.data.records.Records`, a sequence of :class:`ImageRecord`
    built on access; a list of records given here is turned into one.
    """

    json_path: Path
    image_root: Path
    images: Records
    categories: list[Category]

    def __post_init__(self) -> None:
        if not isinstance(self.images, Records):
            self.images = Records.from_records(self.images)

    def log_size(self) -> None:
        log.info(
            "read %s: %d images, %d annotations, %d categories",
            self.json_path,
            len(self.images),
            self.num_annotations,
            len(self.categories),
        )

    @property
    def num_annotations(self) -> int:
        return self.images.num_annotations

    def annotation_counts(self) -> Counter[int]:
        """Number of annotations per category id (crowd regions excluded)."""
        ids, counts = np.unique(self.images.category_ids[~self.images.crowd], return_counts=True)
        return Counter(dict(zip(ids.tolist(), counts.tolist(), strict=True)))

    def placeholder_categories(self) -> list[Category]:
        """Unused categories that only name the supercategory of others (Roboflow exports)."""
        used = self.annotation_counts()
        # COCO itself names some categories like their own supercategory ("person"): only a
        # category that is the supercategory of *other* categories is a placeholder.
        return [
            c
            for c in self.categories
            if used[c.id] == 0 and any(o.supercategory == c.name and o.id != c.id for o in self.categories)
        ]

    def label_map(self) -> LabelMap:
        """Contiguous labels for every category but placeholders, in ascending id order."""
        dropped = {c.id for c in self.placeholder_categories()}
        kept = sorted((c for c in self.categories if c.id not in dropped), key=lambda c: c.id)
        if not kept:
            raise DataError(f"{self.json_path} defines no usable category; add 'categories'")
        return LabelMap(tuple(c.id for c in kept), tuple(c.name for c in kept))


def _require(condition: bool, path: Path, message: str) -> None:
    if not condition:
        raise DataError(f"{path}: {message}")


def read_json(path: Path) -> dict[str, Any]:
    """Read a COCO json file, turning every way it can fail into a one-sentence DataError.

    Only what makes the file unusable as a whole raises; problems of single records are
    findings of :func:`parse_coco`. Labels of another format (a YOLO folder, a VOC, LabelMe or CVAT
    file) get the sentence that names ``python -m detlit.convert`` with its ``--from``.
    """
    try:
        require_file(path)
        try:
            # Windows tools often start a json with a UTF-8 byte-order mark: it is not part of the data.
            data = msgspec.json.decode(path.read_bytes().removeprefix(codecs.BOM_UTF8))
        except msgspec.DecodeError:
            data = _read_json_text(path)  # not strict JSON (NaN, a BOM, ...), or not JSON: say where
        return _require_coco(data, path)
    except DataError as err:
        other_format = convert_hint(path)
        if other_format is None:
            raise
        raise DataError(other_format) from err


def require_file(path: Path) -> None:
    """Raise one sentence unless ``path`` is a regular file: not missing, not a folder, and not a
    named pipe or a device (reading one blocks, or never ends)."""
    problem = not_a_file(path)
    if problem is not None:
        raise DataError(f"{path} {problem}; pass the path of your COCO annotation json")


def _read_json_text(path: Path) -> Any:
    """Python's own json reader: it takes NaN and Infinity, and says where a file stops being JSON."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not a text file ({err.reason}); pass a COCO json") from err
    _require(bool(text.strip()), path, "the file is empty; pass a COCO annotation json")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); pass a COCO annotation json"
        ) from err


def _require_coco(data: Any, path: Path) -> dict[str, Any]:
    """``data`` when it is a COCO detection document at the top level; else one-sentence DataErrors."""
    _require(
        isinstance(data, dict),
        path,
        f"the top level is a JSON {type(data).__name__}, not an object with "
        "'images', 'annotations' and 'categories'; pass a COCO detection json",
    )
    missing = [key for key in ("images", "annotations", "categories") if key not in data]
    _require(
        not missing,
        path,
        f"not a COCO detection json: key(s) {', '.join(repr(k) for k in missing)} missing; "
        "export your labels in COCO format",
    )
    for key in ("images", "annotations", "categories"):
        _require(isinstance(data[key], list), path, f"'{key}' must be a list, not a {type(data[key]).__name__}")
    return data


INT64 = (-(2**63), 2**63 - 1)  # numpy's int64, what detlit (and pycocotools' arrays) hold ids in


def _fits_int64(value: int) -> bool:
    return INT64[0] <= value <= INT64[1]


def _as_int(value: Any) -> int | None:
    """An id or size as int: ints, integral floats and digit strings; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _Parser:
    """Turns raw COCO lists into records, collecting a finding for every unusable record."""

    def __init__(self, path: Path):
        self.path = path
        self.findings: list[Finding] = []

    def error(self, kind: str, message: str, fix: str | None = None, *repairs: Repair, **ids: Any) -> None:
        self.findings.append(Finding(Severity.ERROR, kind, message, fix=fix, repairs=repairs, **ids))

    def categories(self, raw: list[Any]) -> list[Category]:
        categories: list[Category] = []
        seen: set[int] = set()
        for index, item in enumerate(raw):
            cid = _as_int(item.get("id")) if isinstance(item, dict) else None
            if cid is None or not isinstance(item.get("name"), str):
                self.error("bad_category", f"categories[{index}] needs an integer 'id' and a 'name': {item!r}")
            elif not _fits_int64(cid):
                self.error("id_out_of_range", f"category {item['name']!r} has id {cid}, beyond 64 bits; renumber it")
            elif cid in seen:
                self.error("duplicate_category_id", f"category id {cid} is used twice; give each category its own id")
            else:
                seen.add(cid)
                categories.append(Category(cid, item["name"], str(item.get("supercategory", ""))))
        return categories

    def images(self, raw: list[Any]) -> _ImageColumns:
        images = _ImageColumns()
        seen: set[int] = set()
        for index, item in enumerate(raw):
            if not isinstance(item, dict):
                self.error(
                    "bad_image",
                    f"images[{index}] is not an object: {item!r}",
                    "drop it",
                    Repair("images", index, "drop"),
                )
                continue
            iid = _as_int(item.get("id"))
            name = item.get("file_name")
            if iid is None or not isinstance(name, str) or not name:
                self.error(
                    "bad_image",
                    f"images[{index}] needs an integer 'id' and a 'file_name': {item!r}",
                    "drop it",
                    Repair("images", index, "drop"),
                )
                continue
            if not _fits_int64(iid):
                self.error(
                    "id_out_of_range",
                    f"image {name} has id {iid}, beyond the 64-bit integers ids are kept in; renumber the images "
                    "(and their annotations' image_id) below 2**63",
                    image_id=iid,
                )
                continue
            if iid in seen:
                self.error(
                    "duplicate_image_id",
                    f"image id {iid} is used twice ({name}); give each image its own id",
                    image_id=iid,
                )
                continue
            seen.add(iid)
            if "\\" in name:
                # A Windows separator: the file is there under the same name with "/".
                posix = name.replace("\\", "/")
                self.findings.append(
                    Finding(
                        Severity.WARNING,
                        "windows_path",
                        f"image {iid} has file_name {name!r} with Windows separators; detlit reads {posix!r}",
                        fix=f"write it as {posix!r}",
                        repairs=(Repair("images", index, "set", {"file_name": posix}),),
                        image_id=iid,
                    )
                )
                name = posix
            width, height = _as_int(item.get("width")), _as_int(item.get("height"))
            if not isinstance(item["id"], int):
                self.error(
                    "bad_image",
                    f"image {name} has id {item['id']!r}, not an integer",
                    f"write it as {iid}",
                    Repair("images", index, "set", {"id": iid}),
                    image_id=iid,
                )
            if width is None or height is None or width <= 0 or height <= 0:
                # Kept: the file check measures the real size and repairs it.
                self.findings.append(
                    Finding(
                        Severity.ERROR,
                        "bad_image_size",
                        f"image {iid} ({name}) has width={item.get('width')!r}, "
                        f"height={item.get('height')!r}; sizes are positive integers",
                        image_id=iid,
                    )
                )
                width, height = 0, 0
            images.add(iid, name, width, height, index)
        return images

    def annotations(self, raw: list[Any], images: dict[int, int], category_ids: set[int]) -> _ObjectColumns:
        """The usable objects; ``images`` maps an image id to its position among the usable images."""
        objects = _ObjectColumns()
        seen: set[int] = set()
        next_id = 1 + max((_as_int(a.get("id")) or 0 for a in raw if isinstance(a, dict)), default=0)
        for index, item in enumerate(raw):
            drop = Repair("annotations", index, "drop")
            if not isinstance(item, dict):
                self.error("bad_annotation", f"annotations[{index}] is not an object: {item!r}", "drop it", drop)
                continue
            aid, iid, cid = (_as_int(item.get(key)) for key in ("id", "image_id", "category_id"))
            bbox = item.get("bbox")
            if aid is None or iid is None or cid is None:
                self.error(
                    "bad_annotation",
                    f"annotations[{index}] needs integer 'id', 'image_id' and 'category_id': {item!r}",
                    "drop it",
                    drop,
                )
                continue
            if not all(_fits_int64(v) for v in (aid, iid, cid)):
                self.error(
                    "id_out_of_range",
                    f"annotations[{index}] has an id beyond the 64-bit integers ids are kept in "
                    f"(id {aid}, image_id {iid}, category_id {cid}); renumber them below 2**63",
                    "drop it",
                    drop,
                )
                continue
            if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
                self.error(
                    "bad_bbox",
                    f"annotation {aid} has bbox {bbox!r}; a COCO bbox is [x, y, width, height]",
                    "drop it",
                    drop,
                    annotation_id=aid,
                    image_id=iid,
                )
                continue
            changes: dict[str, Any] = {
                k: v for k, v in (("id", aid), ("image_id", iid), ("category_id", cid)) if not isinstance(item[k], int)
            }
            if changes:
                self.error(
                    "string_id",
                    f"annotation {aid} has non-integer ids { ({k: item[k] for k in changes})!r}",
                    "write them as integers",
                    Repair("annotations", index, "set", changes),
                    annotation_id=aid,
                )
            if aid in seen:
                self.error(
                    "duplicate_annotation_id",
                    f"annotation id {aid} is used twice",
                    f"give the second one id {next_id}",
                    Repair("annotations", index, "set", {"id": next_id}),
                    annotation_id=aid,
                )
                aid, next_id = next_id, next_id + 1
            seen.add(aid)
            if iid not in images:
                self.error(
                    "unknown_image",
                    f"annotation {aid} refers to image {iid}, which is not in 'images'",
                    "drop it",
                    drop,
                    annotation_id=aid,
                )
                continue
            if cid not in category_ids:
                self.error(
                    "unknown_category",
                    f"annotation {aid} has category_id {cid}, which is not in 'categories'",
                    "drop it",
                    drop,
                    annotation_id=aid,
                    image_id=iid,
                )
                continue
            area = item.get("area")
            objects.owners.append(images[iid])
            objects.ids.append(aid)
            objects.category_ids.append(cid)
            objects.bboxes.append([float(v) for v in bbox])
            objects.areas.append(float(area) if area is not None and _is_number(area) else np.nan)
            objects.crowd.append(bool(item.get("iscrowd", 0)))
            objects.positions.append(index)
        return objects


@dataclass
class _ImageColumns:
    ids: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    widths: list[int] = field(default_factory=list)
    heights: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)

    def add(self, iid: int, name: str, width: int, height: int, position: int) -> None:
        self.ids.append(iid)
        self.names.append(name)
        self.widths.append(width)
        self.heights.append(height)
        self.positions.append(position)


@dataclass
class _ObjectColumns:
    owners: list[int] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    category_ids: list[int] = field(default_factory=list)
    bboxes: list[list[float]] = field(default_factory=list)
    areas: list[float] = field(default_factory=list)
    crowd: list[bool] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)


def parse_coco(data: dict[str, Any], json_path: Path, image_root: Path) -> tuple[CocoDataset, list[Finding]]:
    """Turn a COCO dict (as :func:`read_json` returns it) into records and structure findings.

    Records that cannot be used are left out and reported, never silently dropped.
    """
    parser = _Parser(json_path)
    categories = parser.categories(data["categories"])
    images = parser.images(data["images"])
    objects = parser.annotations(
        data["annotations"], {iid: i for i, iid in enumerate(images.ids)}, {c.id for c in categories}
    )
    records = Records.from_columns(
        images.ids,
        images.names,
        images.widths,
        images.heights,
        images.positions,
        objects.owners,
        objects.ids,
        objects.category_ids,
        objects.bboxes,
        objects.areas,
        objects.crowd,
        objects.positions,
    )
    return CocoDataset(json_path, image_root, records, categories), parser.findings


# --- the fast path: a schema of the fields detection uses ----------------------------------


class _Image(msgspec.Struct, gc=False):
    id: int
    file_name: str
    width: int
    height: int


class _Object(msgspec.Struct, gc=False):
    id: int
    image_id: int
    category_id: int
    bbox: tuple[float, float, float, float]
    area: float | None = None
    iscrowd: Any = 0


class _Category(msgspec.Struct, gc=False):
    id: int
    name: str
    supercategory: Any = ""


class _Document(msgspec.Struct, gc=False):
    images: list[_Image]
    annotations: list[_Object]
    categories: list[_Category]


def _read_typed(json_path: Path, image_root: Path) -> CocoDataset | None:
    """The dataset when the file fits the schema and its records have no problem; else None.

    Every value is type-checked while it is decoded (ints are ints, boxes four numbers); what the
    schema cannot say (unique ids, objects of known images and categories, positive sizes) is
    checked on the columns. Anything else goes to :func:`parse_coco`, which reports it.
    """
    # The decoded values hold no reference cycles: the collector need not look at them (it would
    # walk every object already made at each of its passes while a million more are made).
    collecting = gc.isenabled()
    gc.disable()
    try:
        with json_path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            document = msgspec.json.decode(data, type=_Document)
    except (msgspec.DecodeError, ValueError, OSError):  # ValueError: an empty file cannot be mapped
        return None
    finally:
        if collecting:
            gc.enable()
    images, objects, raw_categories = document.images, document.annotations, document.categories
    del document

    def column(items: list[Any], name: str, dtype: type) -> np.ndarray:
        return np.fromiter(map(attrgetter(name), items), dtype, len(items))

    try:
        image_ids, widths, heights = (column(images, name, np.int64) for name in ("id", "width", "height"))
        names = list(map(attrgetter("file_name"), images))
        del images
        owner_ids, object_ids, category_ids = (
            column(objects, name, np.int64) for name in ("image_id", "id", "category_id")
        )
        areas = np.array([np.nan if area is None else area for area in map(attrgetter("area"), objects)], np.float64)
        crowd = np.fromiter(map(bool, map(attrgetter("iscrowd"), objects)), bool, len(objects))
        bboxes = np.array(list(map(attrgetter("bbox"), objects)), np.float64).reshape(-1, 4)
        del objects
    except OverflowError:  # an id beyond 64 bits
        return None
    known = np.array([c.id for c in raw_categories], np.int64)
    sorted_images = np.sort(image_ids)
    owners = np.searchsorted(sorted_images, owner_ids).clip(0, max(len(image_ids) - 1, 0))
    clean = (
        _unique(known)
        and _unique(sorted_images)
        and _unique(object_ids)
        and bool((widths > 0).all() and (heights > 0).all() and (widths < 2**31).all() and (heights < 2**31).all())
        and all(names)
        and not any("\\" in name for name in names)  # Windows separators: the parse reports them
        and (len(owner_ids) == 0 or bool((sorted_images[owners] == owner_ids).all()))
        and bool(np.isin(category_ids, known).all())
    )
    if not clean:
        return None
    # Positions among the images as listed: the rank of each id in sorted order, mapped back.
    position_of_sorted = np.argsort(image_ids, kind="stable")
    records = Records.from_columns(
        image_ids,
        names,
        widths,
        heights,
        np.arange(len(image_ids)),
        position_of_sorted[owners] if len(owner_ids) else owners,
        object_ids,
        category_ids,
        bboxes,
        areas,
        crowd,
        np.arange(len(object_ids)),
    )
    categories = [Category(c.id, c.name, str(c.supercategory)) for c in raw_categories]
    return CocoDataset(json_path, image_root, records, categories)


def _unique(values: np.ndarray) -> bool:
    ordered = np.sort(values)
    return not bool((ordered[1:] == ordered[:-1]).any())


def read_coco(json_path: str | Path, image_root: str | Path) -> tuple[CocoDataset, list[Finding]]:
    """Read a COCO json into records and structure findings: decoded against the schema of the
    fields detection uses, or, when the file does not fit it, by :func:`parse_coco`.

    Raises:
        DataError: the file is not usable as a whole (missing, not JSON, not COCO).
    """
    json_path, image_root = Path(json_path), Path(image_root)
    dataset = _read_typed(json_path, image_root) if not_a_file(json_path) is None else None
    if dataset is not None:
        return dataset, []
    return parse_coco(read_json(json_path), json_path, image_root)


def load_coco(json_path: str | Path, image_root: str | Path) -> CocoDataset:
    """Load a COCO detection json whose ``file_name`` entries are relative to ``image_root``.

    Raises:
        DataError: the file is unusable, or records in it are (one sentence, with the command
            that prints the full report).
    """
    json_path, image_root = Path(json_path), Path(image_root)
    dataset, findings = read_coco(json_path, image_root)
    raise_on_errors(findings, json_path, image_root)
    dataset.log_size()
    return dataset


def raise_on_errors(findings: list[Finding], json_path: Path, image_root: Path) -> None:
    """Raise one DataError that counts the errors, quotes the first and names the fix."""
    bad = errors(findings)
    if bad:
        more = f" (and {len(bad) - 1} more errors)" if len(bad) > 1 else ""
        raise DataError(
            f"{json_path}: {bad[0].message}{more}; see all with `python -m detlit.check {json_path} "
            f"--images {image_root}` and repair with its --fix OUT.json"
        )


def require_images(dataset: CocoDataset, option: str = "the image folder") -> None:
    """Fail with one sentence when the image folder is missing or holds none of the images."""
    root = dataset.image_root
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; set {option} to the folder holding the images")
    images = dataset.images
    if len(images) and not any((root / images.file_name(i)).is_file() for i in range(len(images))):
        raise DataError(
            f"none of the {len(images)} images listed in {dataset.json_path} is under {root} "
            f"(first: {images.file_name(0)}); set {option} to the folder that holds them"
        )
