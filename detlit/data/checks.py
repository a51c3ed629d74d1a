"""Stage 1 (reading the json), checks: everything that can be wrong with a COCO dataset, as findings.

:func:`check_dataset` runs every check and returns a :class:`Report`; :func:`apply_repairs`
writes the repairs of its findings into a copy of the raw json. The json-only checks are linear
in the number of records; the file checks read image headers (and, with ``decode=True``, decode
and hash every image) in a thread pool.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from detlit.common.paths import not_a_file
from detlit.common.ranges import MIN_TILE_SIZE
from detlit.data.coco import Annotation, CocoDataset, ImageRecord, raise_on_errors, read_coco, require_images
from detlit.data.findings import Finding, Repair, Severity, errors, log_summary
from detlit.data.headers import FileInfo, Headers, inspect_file, read_headers
from detlit.data.images import IMAGE_SUFFIXES

__all__ = ["FileInfo", "Report", "Resize", "check_dataset", "check_file", "inspect_file", "load_checked"]

log = logging.getLogger(__name__)

TINY_BOX_SIDE = 2.0  # pixels: a box this thin carries almost no signal
AREA_TOLERANCE = 1.01  # a segment area may be smaller than its box, never larger
FEW_OBJECTS = 10  # objects of a class below which a detector can hardly learn it ...
FEW_OBJECTS_SHARE = 0.5  # ... when the class also has less than half the objects of the median class
COCO_SMALL, COCO_LARGE = 32**2, 96**2  # COCO's object size ranges (area in pixels)
SIZE_BOUNDS = (8, 16, 32)  # pixels after the resize: the statistics count the objects below each
TINY_OBJECT_SIDE = 8  # pixels after the resize: a detector almost never finds an object this small ...
TINY_OBJECTS_SHARE = 0.2  # ... and when this share of the objects is, the check says so
SLICE_TARGET_SIDE = 24.0  # pixels: the tile size suggested brings the tiny objects' median to this ...
SLICE_ZOOM = 1.25  # ... and is at most min_size_test / SLICE_ZOOM, so tiles always enlarge
SLICE_STEP = 32  # suggested tile sizes are multiples of this

Sizes = tuple[np.ndarray, np.ndarray]
"""(widths, heights) of the images, one entry each."""


@dataclass
class Report:
    """Findings and statistics of one dataset check."""

    json_path: Path
    image_root: Path
    findings: list[Finding] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> list[Finding]:
        return errors(self.findings)

    @property
    def unrepaired_errors(self) -> list[Finding]:
        return [f for f in self.errors if not f.repairable]

    def repairs(self) -> list[Repair]:
        return [r for f in self.findings for r in f.repairs]

    def as_dict(self) -> dict[str, Any]:
        counts = Counter(f.severity.value for f in self.findings)
        return {
            "json": str(self.json_path),
            "images": str(self.image_root),
            "summary": {s.value: counts.get(s.value, 0) for s in Severity},
            "stats": self.stats,
            "findings": [f.as_dict() for f in self.findings],
        }


def _finding(severity: Severity, kind: str, message: str, **kwargs: Any) -> Finding:
    return Finding(severity, kind, message, **kwargs)


# --- files ---------------------------------------------------------------------------------


def escapes_root(file_name: str) -> bool:
    """True for absolute paths and paths that climb out of the image root with ``..``."""
    if ".." not in file_name and not file_name.startswith(("/", "\\")) and file_name[1:2] != ":":
        return False  # the common case, without building a path
    path = PurePosixPath(file_name.replace("\\", "/"))
    return path.is_absolute() or ".." in path.parts or (len(file_name) > 1 and file_name[1] == ":")


def path_escapes_root(image_id: Any, file_name: str, image_root: Path) -> Finding:
    """The error of a file name that :func:`escapes_root` (split refuses it as fit does)."""
    return _finding(
        Severity.ERROR,
        "path_escapes_root",
        f"image {image_id} has file_name {file_name!r}, which points outside the image "
        f"folder {image_root}; file names must be relative paths inside it",
        image_id=image_id,
    )


def inspect_files(dataset: CocoDataset, decode: bool, workers: int | None = None) -> Headers:
    """The header of every image whose path stays inside the root (:func:`detlit.data.headers.read_headers`)."""
    names = dataset.images.file_names()
    escaping = [escapes_root(name) for name in names]
    return read_headers(dataset.image_root, names, decode, skip=escaping, workers=workers)


def check_files(dataset: CocoDataset, headers: Headers) -> list[Finding]:
    """Paths, readability, sizes after EXIF orientation, colour modes."""
    images = dataset.images
    names = images.file_names()
    # Only images with something to say are looked at one by one.
    special = np.array(
        [
            mode not in ("RGB", "") or name.lower().endswith(".png")
            for mode, name in zip(headers.mode, names, strict=True)
        ],
        bool,
    )
    flagged = (
        ~headers.read
        | ~headers.usable
        | (headers.width != images.widths)
        | (headers.height != images.heights)
        | (headers.orientation != 1)
        | special
    )
    findings = []
    for index in np.flatnonzero(flagged).tolist():
        image = ImageRecord(
            int(images.ids[index]),
            names[index],
            int(images.widths[index]),
            int(images.heights[index]),
            index=int(images.positions[index]),
        )
        drop = Repair("images", image.index, "drop")
        where = {"image_id": image.id}
        if escapes_root(image.file_name):
            findings.append(path_escapes_root(image.id, image.file_name, dataset.image_root))
            continue
        info = headers.info(index)
        if not info.exists:
            path = dataset.image_root / image.file_name  # missing, or a pipe or device that is never read
            findings.append(
                _finding(
                    Severity.ERROR,
                    "missing_file",
                    f"image {image.id}: {path} {not_a_file(path) or 'does not exist'}",
                    fix="drop the image and its annotations",
                    repairs=(drop,),
                    **where,
                )
            )
        elif info.too_large:
            findings.append(
                _finding(
                    Severity.ERROR,
                    "image_too_large",
                    f"image {image.id}: {info.error}",
                    fix="drop the image and its annotations",
                    repairs=(drop,),
                    **where,
                )
            )
        elif info.error:
            findings.append(
                _finding(
                    Severity.ERROR,
                    "unreadable_image",
                    f"image {image.id}: {dataset.image_root / image.file_name} cannot be decoded ({info.error})",
                    fix="drop the image and its annotations",
                    repairs=(drop,),
                    **where,
                )
            )
        else:
            findings.extend(_size_findings(image, info))
    return findings


def _size_findings(image: ImageRecord, info: FileInfo) -> list[Finding]:
    findings = []
    where = {"image_id": image.id}
    if (image.width, image.height) != (info.width, info.height):
        rotated = " after its EXIF orientation is applied" if info.orientation != 1 else ""
        findings.append(
            _finding(
                Severity.ERROR,
                "size_mismatch",
                f"image {image.id} ({image.file_name}) is {info.width}x{info.height}{rotated}, "
                f"but the json says {image.width}x{image.height}",
                fix="take the real size",
                repairs=(Repair("images", image.index, "set", {"width": info.width, "height": info.height}),),
                **where,
            )
        )
    elif info.orientation != 1:
        findings.append(
            _finding(
                Severity.INFO,
                "exif_orientation",
                f"image {image.id} ({image.file_name}) has EXIF orientation {info.orientation}; detlit "
                "applies it, so its boxes must be in the rotated image (they are, going by the size)",
                **where,
            )
        )
    if info.mode in ("RGBA", "LA", "PA") or (info.mode == "P" and image.file_name.lower().endswith(".png")):
        findings.append(
            _finding(
                Severity.INFO,
                "converted_to_rgb",
                f"image {image.id} ({image.file_name}) has mode {info.mode}; it is converted to RGB "
                "(transparency dropped)",
                **where,
            )
        )
    elif info.mode in ("L", "I", "I;16", "F", "1"):
        findings.append(
            _finding(
                Severity.INFO,
                "grayscale",
                f"image {image.id} ({image.file_name}) is grayscale (mode {info.mode}); it is converted to RGB",
                **where,
            )
        )
    return findings


def check_unlisted_files(dataset: CocoDataset, limit: int = 3) -> list[Finding]:
    """Images on disk under the root that the json does not list (one finding in all)."""
    root = dataset.image_root
    if not root.is_dir():
        return []
    listed = {os.path.normpath(name) for name in dataset.images.file_names()}
    unlisted = sorted(
        os.path.relpath(os.path.join(folder, name), root)
        for folder, _, names in os.walk(root)
        for name in names
        if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES
        and os.path.normpath(os.path.relpath(os.path.join(folder, name), root)) not in listed
    )
    if not unlisted:
        return []
    return [
        _finding(
            Severity.INFO,
            "unlisted_files",
            f"{len(unlisted)} image file(s) under {root} are not in {dataset.json_path.name} "
            f"(e.g. {', '.join(unlisted[:limit])}); they are not used",
        )
    ]


# --- boxes ---------------------------------------------------------------------------------


def _box_findings(annotation: Annotation, width: int, height: int) -> list[Finding]:
    """Findings of one box against the size of its image."""
    x, y, w, h = annotation.bbox
    where = {"image_id": annotation.image_id, "annotation_id": annotation.id}
    drop = (Repair("annotations", annotation.index, "drop"),)
    if not all(math.isfinite(v) for v in annotation.bbox):
        return [
            _finding(
                Severity.ERROR,
                "non_finite_box",
                f"annotation {annotation.id} has bbox {list(annotation.bbox)}",
                fix="drop it",
                repairs=drop,
                **where,
            )
        ]
    if w <= 0 or h <= 0:
        return [
            _finding(
                Severity.ERROR,
                "non_positive_box",
                f"annotation {annotation.id} has width {w:g} and height {h:g}; both must be positive",
                fix="drop it",
                repairs=drop,
                **where,
            )
        ]
    if width <= 0 or height <= 0:
        return []  # the image size is unknown: nothing to compare against
    if (x + w > width or y + h > height) and x < w <= width and y < h <= height:
        converted = [x, y, w - x, h - y]
        return [
            _finding(
                Severity.ERROR,
                "xyxy_as_xywh",
                f"annotation {annotation.id} has bbox {[round(v, 2) for v in annotation.bbox]} that reaches "
                f"beyond the {width}x{height} image as [x, y, w, h] but fits as [x1, y1, x2, y2]",
                fix=f"convert it to [x, y, w, h] = {[round(v, 2) for v in converted]}",
                repairs=(
                    Repair(
                        "annotations", annotation.index, "set", {"bbox": converted, "area": converted[2] * converted[3]}
                    ),
                ),
                **where,
            )
        ]
    findings = []
    x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))
    if x2 <= x1 or y2 <= y1:
        return [
            _finding(
                Severity.ERROR,
                "box_outside_image",
                f"annotation {annotation.id} has bbox {list(annotation.bbox)} entirely outside the "
                f"{width}x{height} image",
                fix="drop it",
                repairs=drop,
                **where,
            )
        ]
    box_w, box_h = w, h
    if (x1, y1, x2, y2) != (x, y, x + w, y + h):
        clipped = [x1, y1, x2 - x1, y2 - y1]
        box_w, box_h = clipped[2], clipped[3]
        findings.append(
            _finding(
                Severity.WARNING,
                "box_outside_image",
                f"annotation {annotation.id} has bbox {[round(v, 2) for v in annotation.bbox]} partly outside "
                f"the {width}x{height} image",
                fix=f"clip it to {[round(v, 2) for v in clipped]}",
                repairs=(Repair("annotations", annotation.index, "set", {"bbox": clipped, "area": box_w * box_h}),),
                **where,
            )
        )
    if box_w < TINY_BOX_SIDE or box_h < TINY_BOX_SIDE:
        findings.append(
            _finding(
                Severity.WARNING,
                "tiny_box",
                f"annotation {annotation.id} is {box_w:.2g}x{box_h:.2g} pixels; boxes under "
                f"{TINY_BOX_SIDE:g} pixels are too thin to learn from",
                **where,
            )
        )
    area = annotation.area
    if not math.isfinite(area) or area <= 0 or area > w * h * AREA_TOLERANCE:
        said = "missing" if not math.isfinite(area) else f"{area:g}"
        findings.append(
            _finding(
                Severity.INFO if not math.isfinite(area) else Severity.WARNING,
                "area_mismatch",
                f"annotation {annotation.id} has area {said}, but its box covers {w * h:g} pixels "
                "(COCO metrics use this area to sort objects into small / medium / large)",
                fix=f"set area to {w * h:g}",
                repairs=(Repair("annotations", annotation.index, "set", {"area": w * h}),),
                **where,
            )
        )
    return findings


def check_boxes(dataset: CocoDataset, sizes: tuple[np.ndarray, np.ndarray] | None = None) -> list[Finding]:
    """Every box against its image, using the real size where the file check measured one.

    Args:
        dataset: the records.
        sizes: (widths, heights) per image to check against; the json's sizes by default.
    """
    images = dataset.images
    widths, heights = sizes if sizes is not None else (images.widths, images.heights)
    owners = images.owners
    width, height = widths[owners].astype(np.float64), heights[owners].astype(np.float64)
    x, y, w, h = images.bboxes.T
    area = images.areas
    # Which boxes have a finding: a superset of what _box_findings reports, computed on the columns,
    # so that only those boxes are looked at one by one.
    with np.errstate(invalid="ignore"):
        flagged = ~np.isfinite(images.bboxes).all(axis=1) | (w <= 0) | (h <= 0)
        known = (width > 0) & (height > 0)
        outside = (x < 0) | (y < 0) | (x + w > width) | (y + h > height)
        tiny = (w < TINY_BOX_SIDE) | (h < TINY_BOX_SIDE)
        bad_area = ~np.isfinite(area) | (area <= 0) | (area > w * h * AREA_TOLERANCE)
        flagged |= known & (outside | tiny | bad_area)
    findings: list[Finding] = []
    rows = np.flatnonzero(flagged)
    for row, owner in zip(rows.tolist(), owners[rows].tolist(), strict=True):
        annotation = _annotation(images, row, owner)
        findings.extend(_box_findings(annotation, int(widths[owner]), int(heights[owner])))
    return findings


def _annotation(images: Any, row: int, owner: int) -> Annotation:
    """The :class:`Annotation` of one object row."""
    x, y, w, h = images.bboxes[row].tolist()
    return Annotation(
        int(images.annotation_ids[row]),
        int(images.ids[owner]),
        int(images.category_ids[row]),
        (x, y, w, h),
        float(images.areas[row]),
        bool(images.crowd[row]),
        int(images.annotation_positions[row]),
    )


# --- labels, crowd, duplicates -------------------------------------------------------------


def check_labels(dataset: CocoDataset) -> list[Finding]:
    findings = []
    ids = sorted(c.id for c in dataset.categories)
    placeholders = {c.id for c in dataset.placeholder_categories()}
    for category in dataset.categories:
        if category.id in placeholders:
            findings.append(
                _finding(
                    Severity.INFO,
                    "placeholder_category",
                    f"category {category.id} '{category.name}' has no annotations and is the supercategory "
                    "of the others (an export placeholder); it is not a class",
                )
            )
    counts = dataset.annotation_counts()
    classes = [counts[c.id] for c in dataset.categories if c.id not in placeholders and counts[c.id]]
    median = float(np.median(classes)) if classes else 0.0
    for category in dataset.categories:
        if category.id not in placeholders and counts[category.id] == 0:
            findings.append(
                _finding(
                    Severity.WARNING,
                    "unused_category",
                    f"category {category.id} '{category.name}' has no annotations; the model keeps a class "
                    "for it that it cannot learn",
                )
            )
        elif 0 < counts[category.id] < min(FEW_OBJECTS, FEW_OBJECTS_SHARE * median):
            findings.append(
                _finding(
                    Severity.WARNING,
                    "few_objects",
                    f"category {category.id} '{category.name}' has {counts[category.id]} object(s) (the median class "
                    f"{median:g}); a detector needs tens to learn a class: label more, or merge it into another class",
                )
            )
    names = Counter(c.name for c in dataset.categories)
    for name, count in names.items():
        if count > 1:
            same = [c.id for c in dataset.categories if c.name == name]
            findings.append(
                _finding(
                    Severity.WARNING,
                    "duplicate_category_name",
                    f"category name '{name}' is used by {count} ids {same}; results will not tell them apart",
                )
            )
    if ids and ids != list(range(1, len(ids) + 1)) and dataset.categories:
        try:
            described = dataset.label_map().describe()
        except ValueError:
            described = "none"
        findings.append(
            _finding(
                Severity.INFO,
                "category_ids",
                f"category ids {ids} are not 1..{len(ids)}; detlit trains on contiguous labels "
                f"({described}) and writes the original ids back in results",
            )
        )
    return findings


def compare_splits(train: CocoDataset, other: CocoDataset, name: str = "val") -> list[Finding]:
    """Classes that one split has objects of and the other has none (by category id).

    A class absent from validation is never measured; one absent from training cannot be learned.
    """
    findings = []
    ours, theirs = train.annotation_counts(), other.annotation_counts()
    names = {c.id: c.name for c in (*other.categories, *train.categories)}
    for cid in sorted(set(ours) | set(theirs)):
        if ours[cid] and not theirs[cid]:
            findings.append(
                _finding(
                    Severity.WARNING,
                    "class_missing_from_split",
                    f"category {cid} '{names.get(cid, cid)}' has {ours[cid]} training object(s) but none in {name} "
                    f"({other.json_path}): its AP cannot be measured; move some of its images to {name}",
                )
            )
        elif theirs[cid] and not ours[cid]:
            findings.append(
                _finding(
                    Severity.WARNING,
                    "class_missing_from_split",
                    f"category {cid} '{names.get(cid, cid)}' has {theirs[cid]} object(s) in {name} ({other.json_path}) "
                    "but none in training: the model cannot learn it; move some of its images to training",
                )
            )
    return findings


def check_crowd(dataset: CocoDataset) -> list[Finding]:
    images = dataset.images
    crowd = int(images.crowd.sum())
    if not crowd:
        return []
    owners = len(np.unique(images.owners[images.crowd]))
    return [
        _finding(
            Severity.INFO,
            "crowd",
            f"{crowd} annotation(s) in {owners} image(s) have iscrowd=1: they are ignore regions "
            "(neither trained as objects nor counted as missed in metrics)",
        )
    ]


# Odd 64-bit multipliers of the row hash of check_duplicate_annotations (one per key column).
_HASH_FACTORS = (
    0x9E3779B97F4A7C15,
    0xBF58476D1CE4E5B9,
    0x94D049BB133111EB,
    0xD6E8FEB86659FD93,
    0xC2B2AE3D27D4EB4F,
    0x165667B19E3779F9,
    0x27D4EB2F165667C5,
)


def check_duplicate_annotations(dataset: CocoDataset) -> list[Finding]:
    """Objects that repeat an earlier object of their image: same category, crowd flag and box
    (to a thousandth of a pixel)."""
    images = dataset.images
    count = images.num_annotations
    if not count:
        return []
    owners = images.owners
    rounded = np.round(images.bboxes, 3) + 0.0  # + 0.0: -0.0 and 0.0 are one value
    # Only rows whose key hashes like another row's can repeat one: sort those few exactly.
    mixed = np.zeros(count, np.uint64)
    columns = [owners, images.category_ids, images.crowd, *rounded.view(np.uint64).T]
    for column, factor in zip(columns, _HASH_FACTORS, strict=True):
        mixed = (mixed ^ column.astype(np.uint64)) * np.uint64(factor)
    by_hash = np.argsort(mixed, kind="stable")
    same = mixed[by_hash][1:] == mixed[by_hash][:-1]
    rows = np.unique(np.concatenate([by_hash[1:][same], by_hash[:-1][same]]))
    if not len(rows):
        return []
    keys = (rows, *rounded[rows].T[::-1], images.crowd[rows], images.category_ids[rows], owners[rows])
    sort = np.lexsort(keys)  # by image, category, crowd, box; rows in json order within a key
    order = rows[sort]
    ordered = [key[sort] for key in keys[1:]]
    repeat = np.zeros(len(rows), bool)
    repeat[1:] = np.logical_and.reduce([key[1:] == key[:-1] for key in ordered])
    # The first row of each run of equal keys is the one the repeats repeat.
    first = order[np.maximum.accumulate(np.where(repeat, 0, np.arange(len(rows))))]
    findings = []
    for position in sorted(np.flatnonzero(repeat).tolist(), key=lambda p: int(order[p])):
        row, original = int(order[position]), int(first[position])
        owner = int(owners[row])
        annotation_id, image_id = int(images.annotation_ids[row]), int(images.ids[owner])
        findings.append(
            _finding(
                Severity.WARNING,
                "duplicate_annotation",
                f"annotation {annotation_id} repeats annotation {int(images.annotation_ids[original])} (same image "
                f"{image_id}, category and box)",
                fix="drop the repeat",
                repairs=(Repair("annotations", int(images.annotation_positions[row]), "drop"),),
                image_id=image_id,
                annotation_id=annotation_id,
            )
        )
    return findings


def duplicate_groups(dataset: CocoDataset, headers: Headers) -> list[list[int]]:
    """Ids of images whose files have identical content, one list per content."""
    by_hash: dict[str, list[int]] = defaultdict(list)
    for image_id, digest in zip(dataset.images.ids.tolist(), headers.sha1, strict=True):
        if digest:
            by_hash[digest].append(image_id)
    return [ids for ids in by_hash.values() if len(ids) > 1]


def check_duplicate_images(dataset: CocoDataset, headers: Headers | None) -> list[Finding]:
    findings = []
    by_name: dict[str, list[int]] = defaultdict(list)
    for image_id, name in zip(dataset.images.ids.tolist(), dataset.images.file_names(), strict=True):
        # normpath changes only names with "//", "/.", a leading "." or a trailing "/"
        plain = "//" not in name and "/." not in name and name[:1] != "." and name[-1:] != "/"
        by_name[name if plain else os.path.normpath(name)].append(image_id)
    for name, ids in by_name.items():
        if len(ids) > 1:
            findings.append(
                _finding(
                    Severity.ERROR,
                    "duplicate_file_name",
                    f"file {name} is listed by {len(ids)} images {ids}; list each file once, with all its annotations",
                )
            )
    for ids in duplicate_groups(dataset, headers) if headers is not None else []:
        findings.append(
            _finding(
                Severity.WARNING,
                "duplicate_image",
                f"images {ids} have identical content; in different splits they leak training data into "
                "validation (python -m detlit.split keeps them together)",
                image_id=ids[0],
            )
        )
    return findings


# --- object sizes after the resize -------------------------------------------------------


@dataclass(frozen=True)
class Resize:
    """The shortest-edge resizes of training and inference, named as the data module's settings
    (``data.min_size_train`` ...), with its defaults: detectron2's ``ResizeShortestEdge``, the
    shortest edge to a size, the longest at most the cap."""

    min_size_train: tuple[int, ...] = (640, 672, 704, 736, 768, 800)
    max_size_train: int = 1333
    min_size_test: int = 800
    max_size_test: int = 1333


def resize_factors(dataset: CocoDataset, min_size: int, max_size: int, sizes: Sizes | None = None) -> np.ndarray:
    """(N, 2) factors (x, y) by which the resize scales each image: its size after detectron2's
    ``ResizeShortestEdge`` (rounded as detectron2 rounds) over its size; NaN where the size is unknown.

    Args:
        dataset: the records.
        min_size: the shortest edge after the resize.
        max_size: the cap on the longest edge.
        sizes: (widths, heights) per image; the json's sizes by default.
    """
    # albumentations and OpenCV take seconds to import: only the size statistics need the rule
    from detlit.data.transforms import resized_shape

    images = dataset.images
    widths, heights = sizes if sizes is not None else (images.widths, images.heights)
    factors = np.full((len(images), 2), np.nan)
    usable = (widths > 0) & (heights > 0)
    if not usable.any():
        return factors
    # images of one size share one factor: the rule runs once per distinct size
    shapes, inverse = np.unique(np.stack([heights[usable], widths[usable]], axis=1), axis=0, return_inverse=True)
    resized = np.array([resized_shape(int(h), int(w), min_size, max_size) for h, w in shapes.tolist()], np.float64)
    factors[usable] = (resized / shapes)[:, ::-1][inverse.reshape(-1)]
    return factors


def object_sides(dataset: CocoDataset, factors: np.ndarray | None = None) -> np.ndarray:
    """The size of every object: the side of a square of its box's area, in pixels of the image
    scaled by ``factors`` (:func:`resize_factors`; None: the image's own pixels). NaN for crowd
    regions and for boxes or images whose size is not usable."""
    images = dataset.images
    width, height = images.bboxes[:, 2], images.bboxes[:, 3]
    with np.errstate(invalid="ignore"):
        area = width * height
        if factors is not None:
            owners = images.owners
            area = area * factors[owners, 0] * factors[owners, 1]
        usable = ~images.crowd & (width > 0) & (height > 0) & np.isfinite(area)
    return np.where(usable, np.sqrt(np.where(usable, area, 0.0)), np.nan)


def size_summary(sides: np.ndarray) -> dict[str, Any]:
    """The number of objects with a size, the share below each of :data:`SIZE_BOUNDS` and the median."""
    known = sides[np.isfinite(sides)]
    summary: dict[str, Any] = {"objects": len(known)}
    for bound in SIZE_BOUNDS:
        summary[f"under_{bound}"] = round(float((known < bound).mean()), 4) if len(known) else None
    summary["median"] = round(float(np.median(known)), 2) if len(known) else None
    return summary


def object_sizes(dataset: CocoDataset, resize: Resize, sizes: Sizes | None = None) -> dict[str, Any]:
    """Object sizes after the resize of inference (``test``) and of training at its smallest size
    (``train``, where objects are smallest): :func:`size_summary` of :func:`object_sides`."""
    out: dict[str, Any] = {"measure": "the side of a square of the box's area, in pixels"}
    for name, min_size, max_size in (
        ("test", resize.min_size_test, resize.max_size_test),
        ("train", min(resize.min_size_train), resize.max_size_train),
    ):
        sides = object_sides(dataset, resize_factors(dataset, min_size, max_size, sizes))
        out[name] = {"min_size": min_size, "max_size": max_size, **size_summary(sides)}
    return out


@dataclass(frozen=True)
class SlicedSizes:
    """Some objects as the model sees them with and without sliced inference.

    Attributes:
        size: the tile size suggested (``--slice SIZE``).
        resized: their median size after the resize of the whole image, in pixels.
        sliced: their median size in tiles of ``size`` pixels, each resized to ``min_size_test``.
    """

    size: int
    resized: float
    sliced: float

    @property
    def gain(self) -> float:
        """How many times larger the model sees them in the tiles."""
        return self.sliced / self.resized if self.resized > 0 else math.nan


def sliced_sizes(
    dataset: CocoDataset, which: np.ndarray, min_size_test: int, max_size_test: int, sizes: Sizes | None = None
) -> SlicedSizes | None:
    """The tile size that makes the objects ``which`` (a mask over all objects) large enough, and
    their median size with and without it; None when none of them has a size.

    The tile is the largest multiple of :data:`SLICE_STEP` that brings their median to
    :data:`SLICE_TARGET_SIDE` pixels, and at most ``min_size_test / SLICE_ZOOM`` (every tile is
    then enlarged), at least :data:`~detlit.common.ranges.MIN_TILE_SIZE`. A tile of SIZE pixels is
    resized to ``min_size_test``: its objects grow by ``min_size_test / SIZE``. An image whose
    shortest edge is not longer than the tile is one tile, resized as the whole image is.
    """
    images = dataset.images
    resized = object_sides(dataset, resize_factors(dataset, min_size_test, max_size_test, sizes))[which]
    original = object_sides(dataset)[which]
    known = np.isfinite(resized)
    if not known.any():
        return None
    resized, original = resized[known], original[known]
    zoom = min(1 / SLICE_ZOOM, float(np.median(original)) / SLICE_TARGET_SIDE)
    size = max(MIN_TILE_SIZE, int(min_size_test * zoom) // SLICE_STEP * SLICE_STEP)
    widths, heights = sizes if sizes is not None else (images.widths, images.heights)
    shortest = np.minimum(widths, heights)[images.owners][which][known]
    sliced = np.where(shortest > size, original * min_size_test / size, resized)
    return SlicedSizes(size, float(np.median(resized)), float(np.median(sliced)))


def check_object_sizes(dataset: CocoDataset, resize: Resize, sizes: Sizes | None = None) -> list[Finding]:
    """At least :data:`TINY_OBJECTS_SHARE` of the objects under :data:`TINY_OBJECT_SIDE` pixels after
    the resize of inference: the finding names the tile size to slice at, and the tiling command."""
    min_size, max_size = resize.min_size_test, resize.max_size_test
    sides = object_sides(dataset, resize_factors(dataset, min_size, max_size, sizes))
    known = np.isfinite(sides)
    if not known.any():
        return []
    with np.errstate(invalid="ignore"):
        tiny = known & (sides < TINY_OBJECT_SIDE)
    share = tiny.sum() / known.sum()
    if share < TINY_OBJECTS_SHARE:
        return []
    sliced = sliced_sizes(dataset, tiny, min_size, max_size, sizes)
    assert sliced is not None  # tiny objects have a size
    tile = sliced.size
    return [
        _finding(
            Severity.WARNING,
            "tiny_objects",
            f"{share:.0%} of the objects are smaller than {TINY_OBJECT_SIDE} px after the resize (min_size_test "
            f"{min_size}, max_size_test {max_size}; median {np.median(sides[known]):.1f} px, measured as the side of "
            "a square of the box's area), where a detector almost never finds them: slice at inference (--slice "
            f"{tile} on python -m detlit.predict / evaluate: in {tile} px tiles they reach a median of "
            f"{sliced.sliced:.1f} px instead of {sliced.resized:.1f}), train on tiles of that size (python -m "
            f"detlit.tile --json {dataset.json_path} --images {dataset.image_root} --out tiles --size {tile}), or "
            "raise data.min_size_test and data.min_size_train",
        )
    ]


# --- statistics ----------------------------------------------------------------------------


def statistics(dataset: CocoDataset) -> dict[str, Any]:
    """Counts per category, boxes per image, COCO size ranges, empty images."""
    images = dataset.images
    names = {c.id: c.name for c in dataset.categories}
    per_category = dataset.annotation_counts()
    objects = ~images.crowd
    per_image = np.bincount(images.owners[objects], minlength=len(images))
    area = images.effective_areas()[objects]
    small, medium = int((area < COCO_SMALL).sum()), int(((area >= COCO_SMALL) & (area < COCO_LARGE)).sum())
    return {
        "images": len(images),
        "annotations": dataset.num_annotations,
        "categories": len(dataset.categories),
        "per_category": {f"{cid} {names[cid]}": per_category.get(cid, 0) for cid in sorted(names)},
        "empty_images": int((per_image == 0).sum()),
        "boxes_per_image": {
            "min": int(per_image.min()) if len(per_image) else 0,
            "mean": round(float(per_image.sum()) / len(per_image), 2) if len(per_image) else 0,
            "max": int(per_image.max()) if len(per_image) else 0,
        },
        # NaN areas (of NaN boxes) compare false with both bounds, as in a chain of ifs: large
        "box_sizes": {"small": small, "medium": medium, "large": len(area) - small - medium},
        "crowd": int(images.crowd.sum()),
    }


# --- the whole check ---------------------------------------------------------------------


def check_dataset(
    dataset: CocoDataset,
    structure: Iterable[Finding] = (),
    files: bool = True,
    decode: bool = True,
    unlisted: bool = True,
    resize: Resize | None = None,
) -> Report:
    """Run every check on a parsed dataset.

    Args:
        dataset: the records, as :func:`detlit.data.coco.read_coco` returned them.
        structure: the structure findings returned with them.
        files: look at the image files (existence, size, EXIF orientation, mode).
        decode: also decode and hash every image (unreadable files, duplicate content).
        unlisted: report images on disk that the json omits.
        resize: the resizes of training and inference: with them, the object sizes after the
            resize (statistics ``object_sizes``) and the ``tiny_objects`` finding.
    """
    report = Report(dataset.json_path, dataset.image_root, list(structure))
    headers = inspect_files(dataset, decode) if files else None
    sizes = None
    if headers is not None:
        measured = headers.read & headers.usable
        images = dataset.images
        sizes = (np.where(measured, headers.width, images.widths), np.where(measured, headers.height, images.heights))
        report.findings += check_files(dataset, headers)
        if unlisted:
            report.findings += check_unlisted_files(dataset)
    report.findings += check_boxes(dataset, sizes)
    report.findings += check_labels(dataset)
    report.findings += check_crowd(dataset)
    report.findings += check_duplicate_annotations(dataset)
    report.findings += check_duplicate_images(dataset, headers)
    if resize is not None:
        report.findings += check_object_sizes(dataset, resize, sizes)
    report.stats = statistics(dataset)
    if resize is not None:
        report.stats["object_sizes"] = object_sizes(dataset, resize, sizes)
    return report


def check_file(json_path: str | Path, image_root: str | Path, **kwargs: Any) -> tuple[Report, CocoDataset]:
    """Read and check a COCO json; return the report and the records it checked.

    Raises:
        DataError: the file is not usable as a whole (missing, not JSON, not COCO).
    """
    dataset, structure = read_coco(json_path, image_root)
    return check_dataset(dataset, structure, **kwargs), dataset


def load_checked(
    json_path: str | Path, image_root: str | Path, option: str = "the image folder", files: bool = True
) -> CocoDataset:
    """What training runs first: every check but decoding. Errors raise, the rest is logged.

    Args:
        json_path: COCO json.
        image_root: folder its file names are relative to.
        option: the setting that names the image folder, for the error message.
        files: read the image headers (existence, size after EXIF orientation, mode).

    Raises:
        DataError: one sentence with the first error, their number, and the check command.
    """
    json_path, image_root = Path(json_path), Path(image_root)
    dataset, structure = read_coco(json_path, image_root)
    if files:
        require_images(dataset, option)
    report = check_dataset(dataset, structure, files=files, decode=False, unlisted=False)
    log_summary(report.findings, log, str(json_path), examples=2)
    raise_on_errors(report.findings, json_path, image_root)
    dataset.log_size()
    return dataset


def apply_repairs(raw: dict[str, Any], repairs: Iterable[Repair]) -> tuple[dict[str, Any], list[str]]:
    """A repaired copy of a raw COCO dict and a log line per change; ``raw`` is not modified.

    Dropping an image drops its annotations too (a category's are dropped by their own repairs).
    """
    fixed = copy.deepcopy(raw)
    drops: dict[str, set[int]] = {"images": set(), "annotations": set(), "categories": set()}
    changes: list[str] = []
    for repair in repairs:
        if repair.action == "drop":
            drops[repair.section].add(repair.index)
        else:
            fixed[repair.section][repair.index].update(repair.values)
        changes.append(repair.describe())
    dropped_images = {
        item.get("id")
        for index, item in enumerate(fixed["images"])
        if index in drops["images"] and isinstance(item, dict)
    }
    for index, item in enumerate(fixed["annotations"]):
        if index not in drops["annotations"] and isinstance(item, dict) and item.get("image_id") in dropped_images:
            drops["annotations"].add(index)
            changes.append(f"drop annotations[{index}] (its image was dropped)")
    for section, indices in drops.items():
        fixed[section] = [item for index, item in enumerate(fixed[section]) if index not in indices]
    return fixed, changes
