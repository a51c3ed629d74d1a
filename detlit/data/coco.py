"""Stage [1]: read a COCO json into typed records and build the category <-> label map.

COCO category ids are arbitrary (Roboflow exports start at 0, COCO itself has gaps); inside the
model, labels are contiguous ``0..K-1``. :class:`LabelMap` is the one place that translates
between the two, and it is built once, here, from the training json.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detlit.errors import DataError
from detlit.data.findings import Finding, Repair, Severity, errors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Category:
    id: int
    name: str
    supercategory: str = ""


@dataclass(frozen=True)
class Annotation:
    """One COCO object; ``bbox`` is XYWH in absolute pixels, as in the json."""

    id: int
    image_id: int
    category_id: int
    bbox: tuple[float, float, float, float]
    area: float  # NaN when the json has none
    iscrowd: bool = False
    index: int = -1  # position in the json's annotations list

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        x, y, w, h = self.bbox
        return x, y, x + w, y + h

    @property
    def effective_area(self) -> float:
        """The json's ``area`` (a segment area for COCO itself), or the box area without one."""
        return self.area if math.isfinite(self.area) and self.area > 0 else self.bbox[2] * self.bbox[3]


@dataclass
class ImageRecord:
    """One image and its objects; ``file_name`` is relative to the image root."""

    id: int
    file_name: str
    width: int  # as the json says (0 when missing or invalid)
    height: int
    annotations: list[Annotation] = field(default_factory=list)
    index: int = -1  # position in the json's images list


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
    """A loaded COCO detection json: its images (with annotations) and categories."""

    json_path: Path
    image_root: Path
    images: list[ImageRecord]
    categories: list[Category]

    @property
    def num_annotations(self) -> int:
        return sum(len(image.annotations) for image in self.images)

    def annotation_counts(self) -> Counter[int]:
        """Number of annotations per category id (crowd regions excluded)."""
        return Counter(a.category_id for image in self.images for a in image.annotations if not a.iscrowd)

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
    findings of :func:`parse_coco`.
    """
    if not path.is_file():
        raise DataError(f"{path} does not exist; pass the path of your COCO annotation json")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not a text file ({err.reason}); pass a COCO json") from err
    _require(bool(text.strip()), path, "the file is empty; pass a COCO annotation json")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); pass a COCO annotation json"
        ) from err
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
            elif cid in seen:
                self.error("duplicate_category_id", f"category id {cid} is used twice; give each category its own id")
            else:
                seen.add(cid)
                categories.append(Category(cid, item["name"], str(item.get("supercategory", ""))))
        return categories

    def images(self, raw: list[Any]) -> list[ImageRecord]:
        images: list[ImageRecord] = []
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
            if iid in seen:
                self.error(
                    "duplicate_image_id",
                    f"image id {iid} is used twice ({name}); give each image its own id",
                    image_id=iid,
                )
                continue
            seen.add(iid)
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
            images.append(ImageRecord(iid, name, width, height, index=index))
        return images

    def annotations(self, raw: list[Any], images: dict[int, ImageRecord], category_ids: set[int]) -> None:
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
            x, y, w, h = (float(v) for v in bbox)
            area = item.get("area")
            area_value = float(area) if isinstance(area, (int, float)) and not isinstance(area, bool) else math.nan
            images[iid].annotations.append(
                Annotation(
                    aid,
                    iid,
                    cid,
                    (x, y, w, h),
                    area_value,
                    bool(item.get("iscrowd", 0)),
                    index=index,
                )
            )


def parse_coco(data: dict[str, Any], json_path: Path, image_root: Path) -> tuple[CocoDataset, list[Finding]]:
    """Turn a COCO dict (as :func:`read_json` returns it) into records and structure findings.

    Records that cannot be used are left out and reported, never silently dropped.
    """
    parser = _Parser(json_path)
    categories = parser.categories(data["categories"])
    images = parser.images(data["images"])
    parser.annotations(data["annotations"], {i.id: i for i in images}, {c.id for c in categories})
    return CocoDataset(json_path, image_root, images, categories), parser.findings


def load_coco(json_path: str | Path, image_root: str | Path) -> CocoDataset:
    """Load a COCO detection json whose ``file_name`` entries are relative to ``image_root``.

    Raises:
        DataError: the file is unusable, or records in it are (one sentence, with the command
            that prints the full report).
    """
    json_path, image_root = Path(json_path), Path(image_root)
    dataset, findings = parse_coco(read_json(json_path), json_path, image_root)
    raise_on_errors(findings, json_path, image_root)
    log.info(
        "read %s: %d images, %d annotations, %d categories",
        json_path,
        len(dataset.images),
        dataset.num_annotations,
        len(dataset.categories),
    )
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
    if dataset.images and not any((root / image.file_name).is_file() for image in dataset.images):
        raise DataError(
            f"none of the {len(dataset.images)} images listed in {dataset.json_path} is under {root} "
            f"(first: {dataset.images[0].file_name}); set {option} to the folder that holds them"
        )
