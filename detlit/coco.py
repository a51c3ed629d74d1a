"""Stage [1]: read a COCO json into typed records and build the category <-> label map.

COCO category ids are arbitrary (Roboflow exports start at 0, COCO itself has gaps); inside the
model, labels are contiguous ``0..K-1``. :class:`LabelMap` is the one place that translates
between the two, and it is built once, here, from the training json.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detlit.errors import DataError

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
    area: float
    iscrowd: bool = False

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        x, y, w, h = self.bbox
        return x, y, x + w, y + h


@dataclass
class ImageRecord:
    """One image and its objects; ``file_name`` is relative to the image root."""

    id: int
    file_name: str
    width: int
    height: int
    annotations: list[Annotation] = field(default_factory=list)


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
        parents = {c.supercategory for c in self.categories}
        return [c for c in self.categories if used[c.id] == 0 and c.name in parents]

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
    """Read a COCO json file, turning every way it can fail into a one-sentence DataError."""
    if not path.is_file():
        raise DataError(f"{path} does not exist; pass the path of your COCO annotation json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not a text file ({err.reason}); pass a COCO json") from err
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
            "pass a COCO annotation json"
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
    return data


def _parse_category(path: Path, raw: Any) -> Category:
    _require(
        isinstance(raw, dict) and isinstance(raw.get("id"), int) and "name" in raw,
        path,
        f"category {raw!r} needs an integer 'id' and a 'name'",
    )
    return Category(int(raw["id"]), str(raw["name"]), str(raw.get("supercategory", "")))


def _parse_image(path: Path, raw: Any) -> ImageRecord:
    ok = (
        isinstance(raw, dict)
        and isinstance(raw.get("id"), int)
        and isinstance(raw.get("file_name"), str)
        and isinstance(raw.get("width"), int)
        and isinstance(raw.get("height"), int)
    )
    _require(ok, path, f"image {raw!r} needs an integer 'id', 'width', 'height' and a 'file_name'")
    return ImageRecord(int(raw["id"]), raw["file_name"], int(raw["width"]), int(raw["height"]))


def _parse_annotation(path: Path, raw: Any) -> Annotation:
    ok = (
        isinstance(raw, dict)
        and isinstance(raw.get("id"), int)
        and isinstance(raw.get("image_id"), int)
        and isinstance(raw.get("category_id"), int)
        and isinstance(raw.get("bbox"), list)
        and len(raw["bbox"]) == 4
        and all(isinstance(v, (int, float)) for v in raw["bbox"])
    )
    _require(
        ok,
        path,
        f"annotation {raw!r} needs integer 'id', 'image_id', 'category_id' and a 'bbox' of 4 numbers",
    )
    x, y, w, h = (float(v) for v in raw["bbox"])
    area = float(raw.get("area", w * h))
    return Annotation(
        int(raw["id"]),
        int(raw["image_id"]),
        int(raw["category_id"]),
        (x, y, w, h),
        area,
        bool(raw.get("iscrowd", 0)),
    )


def parse_coco(data: dict[str, Any], json_path: Path, image_root: Path) -> CocoDataset:
    """Turn a COCO dict into records; raise DataError on anything the model cannot use."""
    for key in ("images", "annotations", "categories"):
        _require(isinstance(data[key], list), json_path, f"'{key}' must be a list")
    categories = [_parse_category(json_path, c) for c in data["categories"]]
    images = [_parse_image(json_path, i) for i in data["images"]]
    by_id = {image.id: image for image in images}
    _require(len(by_id) == len(images), json_path, "image ids are not unique; give each image its own id")
    known_categories = {c.id for c in categories}
    for raw in data["annotations"]:
        annotation = _parse_annotation(json_path, raw)
        _require(
            annotation.image_id in by_id,
            json_path,
            f"annotation {annotation.id} refers to image {annotation.image_id}, which is not in 'images'",
        )
        _require(
            annotation.category_id in known_categories,
            json_path,
            f"annotation {annotation.id} has category_id {annotation.category_id}, "
            "which is not in 'categories'",
        )
        by_id[annotation.image_id].annotations.append(annotation)
    return CocoDataset(json_path, image_root, images, categories)


def load_coco(json_path: str | Path, image_root: str | Path) -> CocoDataset:
    """Load a COCO detection json whose ``file_name`` entries are relative to ``image_root``."""
    json_path, image_root = Path(json_path), Path(image_root)
    dataset = parse_coco(read_json(json_path), json_path, image_root)
    log.info(
        "read %s: %d images, %d annotations, %d categories",
        json_path,
        len(dataset.images),
        dataset.num_annotations,
        len(dataset.categories),
    )
    return dataset


def require_images(dataset: CocoDataset, option: str = "the image folder") -> None:
    """Fail with one sentence when image files listed in the json are not under the root."""
    root = dataset.image_root
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; set {option} to the folder holding the images")
    missing = [image.file_name for image in dataset.images if not (root / image.file_name).is_file()]
    if missing and len(missing) == len(dataset.images):
        raise DataError(
            f"none of the {len(missing)} images listed in {dataset.json_path} is under {root} "
            f"(first: {missing[0]}); set {option} to the folder that holds them"
        )
    if missing:
        raise DataError(
            f"{len(missing)} of {len(dataset.images)} images listed in {dataset.json_path} are "
            f"missing under {root} (first: {missing[0]}); restore them or remove them from the json"
        )
