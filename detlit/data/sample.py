"""A deterministic synthetic COCO dataset to try detlit without bringing data.

``python -m detlit.sample --out OUT_DIR`` writes ``OUT_DIR/train.json``, ``OUT_DIR/val.json`` and the
JPEG images under ``OUT_DIR/train/`` and ``OUT_DIR/val/`` (``file_name`` is relative to those
folders). Objects are circles, squares and triangles of varied size, colour and overlap on
textured backgrounds; category ids are deliberately not contiguous (1, 3, 7) and some images
hold no object at all. The same seed gives the same files.

A :class:`Layout` sets the image sizes, the object sizes and how many objects an image holds. The
default is the demo's (images of 240 to 320 px, objects of 24 to 110 px, 1 to 8 per image; its
files are those of detlit 0.1); :meth:`Layout.small_objects` is a set for sliced inference and
tiled training (images of 1600 to 2400 px, objects of 8 to 32 px, 20 to 80 per image: fewer than
the 100 detections per image that COCO's AP counts). A json records a layout other than the
default in its ``info``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from detlit.common.outputs import check_outputs, write_image, write_lock, write_text
from detlit.errors import ConfigError

log = logging.getLogger(__name__)

CATEGORIES: list[dict[str, Any]] = [
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 3, "name": "square", "supercategory": "shape"},
    {"id": 7, "name": "triangle", "supercategory": "shape"},
]
IMAGE_SIZES = ((256, 256), (320, 240), (240, 320))  # (width, height)
EMPTY_FRACTION = 0.08
MAX_OBJECTS = 8
MIN_SIDE, MAX_SIDE = 24, 110
MAX_OVERLAP = 0.35  # of the smaller box covered by the other: objects overlap, none hides
MIN_CONTRAST = 120  # L1 distance (0..765) between an object's colour and the background under it
MIN_IMAGE_SIDE, MAX_IMAGE_SIDE = 32, 4096  # above 4096 px one image takes over 1 GB while it is drawn
MIN_OBJECT_SIDE = 4  # a smaller shape is a few pixels of JPEG noise, neither circle nor triangle
MAX_OBJECTS_PER_IMAGE = 1000


@dataclass(frozen=True)
class Layout:
    """What the images of a sample look like.

    Attributes:
        image_size: smallest and largest image side in pixels, width and height drawn apart; None:
            the demo's three sizes (256 x 256, 320 x 240, 240 x 320).
        object_size: smallest and largest object side in pixels (drawn on a log scale, so small and
            large objects are about as common per factor of size).
        objects: fewest and most objects in an image that holds any (some images hold none).
    """

    image_size: tuple[int, int] | None = None
    object_size: tuple[int, int] = (MIN_SIDE, MAX_SIDE)
    objects: tuple[int, int] = (1, MAX_OBJECTS)

    def __post_init__(self) -> None:
        if self.image_size is not None:
            _check_range("--image-size", self.image_size, MIN_IMAGE_SIDE, MAX_IMAGE_SIDE, "pixels")
        _check_range("--object-size", self.object_size, MIN_OBJECT_SIDE, MAX_IMAGE_SIDE, "pixels")
        _check_range("--objects", self.objects, 1, MAX_OBJECTS_PER_IMAGE, "objects")
        smallest_image = min(self.image_size) if self.image_size is not None else min(min(s) for s in IMAGE_SIZES)
        if self.object_size[1] > smallest_image:
            raise ConfigError(
                f"--object-size {self.object_size[1]} is larger than the smallest image side ({smallest_image} px); "
                "give smaller objects or a larger --image-size"
            )

    @classmethod
    def small_objects(cls) -> Layout:
        """Large images with many small objects: what sliced inference and tiled training are for."""
        return cls(image_size=(1600, 2400), object_size=(8, 32), objects=(20, 80))

    @classmethod
    def chosen(
        cls,
        small_objects: bool = False,
        image_size: Sequence[int] | None = None,
        object_size: Sequence[int] | None = None,
        objects: Sequence[int] | None = None,
    ) -> Layout:
        """The demo's layout, or with ``small_objects`` :meth:`small_objects`, with the ranges given
        (pairs of smallest and largest) in place of its own.

        Raises:
            ConfigError: a range out of bounds or in the wrong order, or objects larger than the images.
        """
        base = cls.small_objects() if small_objects else cls()
        given: dict[str, tuple[int, int]] = {}
        for name, pair in (("image_size", image_size), ("object_size", object_size), ("objects", objects)):
            if pair is not None:
                first, last = pair
                given[name] = (first, last)
        return replace(base, **given)

    @property
    def is_default(self) -> bool:
        return self == Layout()

    def as_json(self) -> dict[str, list[int] | None]:
        """The layout as the sample's json records it."""
        return {f.name: None if getattr(self, f.name) is None else list(getattr(self, f.name)) for f in fields(self)}

    def describe(self) -> str:
        sizes = "240 to 320" if self.image_size is None else f"{self.image_size[0]} to {self.image_size[1]}"
        return (
            f"images of {sizes} px, objects of {self.object_size[0]} to {self.object_size[1]} px, "
            f"{self.objects[0]} to {self.objects[1]} per image"
        )


def _check_range(option: str, pair: tuple[int, int], low: int, high: int, unit: str) -> None:
    """Refuse a (smallest, largest) pair outside ``low``..``high`` or in the wrong order, in one sentence."""
    first, last = pair
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in pair) or not low <= first <= last <= high:
        raise ConfigError(
            f"{option} {first} {last} is not two whole numbers from {low} to {high} {unit}; give two, the smaller first"
        )


@dataclass(frozen=True)
class Shape:
    """One object: its category, polygon outline (x, y pairs) and fill colour."""

    category_id: int
    polygon: list[tuple[float, float]]
    color: tuple[int, int, int]

    def bbox(self, width: int, height: int) -> tuple[float, float, float, float]:
        """XYWH box of the polygon clipped to the image."""
        xs = [min(max(x, 0.0), width) for x, _ in self.polygon]
        ys = [min(max(y, 0.0), height) for _, y in self.polygon]
        return min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)

    def area(self) -> float:
        """Polygon area (shoelace formula), as COCO stores the segment area."""
        pts = self.polygon
        twice = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1], strict=False))
        return abs(twice) / 2.0


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A smooth colour gradient with noise and a few stray lines: texture, not objects."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 200, size=3)
    slope = rng.uniform(-0.25, 0.25, size=(3, 2))
    channels = [base[c] + slope[c, 0] * xx + slope[c, 1] * yy for c in range(3)]
    pixels = np.stack(channels, axis=-1) + rng.normal(0, 12, size=(height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 5))):
        x0, x1 = rng.uniform(0, width, size=2)
        y0, y1 = rng.uniform(0, height, size=2)
        shade = tuple(int(v) for v in rng.integers(0, 256, size=3))
        draw.line([(x0, y0), (x1, y1)], fill=shade, width=int(rng.integers(1, 3)))
    return image.filter(ImageFilter.GaussianBlur(radius=0.6))


def _contrasting_color(rng: np.random.Generator, under: np.ndarray) -> tuple[int, int, int]:
    """A random colour that stands out from ``under`` (the mean background colour)."""
    color = rng.integers(0, 256, size=3)
    for _ in range(20):
        if np.abs(color - under).sum() >= MIN_CONTRAST:
            break
        color = rng.integers(0, 256, size=3)
    return int(color[0]), int(color[1]), int(color[2])


def _random_outline(
    rng: np.random.Generator, width: int, height: int, sides: tuple[int, int] = (MIN_SIDE, MAX_SIDE)
) -> tuple[int, list[tuple[float, float]]]:
    """A random category and the polygon of one object of it (its side within ``sides``), inside the image."""
    category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
    side = float(np.exp(rng.uniform(math.log(sides[0]), math.log(sides[1]))))
    cx = float(rng.uniform(side / 2, width - side / 2))
    cy = float(rng.uniform(side / 2, height - side / 2))
    r = side / 2
    if category["name"] == "circle":
        polygon = [
            (cx + r * math.cos(t), cy + r * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 48, endpoint=False)
        ]
    elif category["name"] == "square":
        polygon = [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    else:
        turn = float(rng.uniform(0, 2 * math.pi))
        polygon = [
            (cx + r * math.cos(turn + k * 2 * math.pi / 3), cy + r * math.sin(turn + k * 2 * math.pi / 3))
            for k in range(3)
        ]
    return int(category["id"]), polygon


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection of two XYWH boxes over the area of the smaller one."""
    ax1, ay1, ax2, ay2 = a[0], a[1], a[0] + a[2], a[1] + a[3]
    bx1, by1, bx2, by2 = b[0], b[1], b[0] + b[2], b[1] + b[3]
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    smaller = min(a[2] * a[3], b[2] * b[3])
    return inter / smaller if smaller > 0 else 0.0


def _image_size(rng: np.random.Generator, layout: Layout) -> tuple[int, int]:
    """(width, height) of the next image."""
    if layout.image_size is None:
        return IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
    low, high = layout.image_size
    width, height = rng.integers(low, high + 1, size=2)
    return int(width), int(height)


def make_image(rng: np.random.Generator, layout: Layout = Layout()) -> tuple[Image.Image, list[Shape]]:
    """Draw one image and return it with its objects (possibly none)."""
    width, height = _image_size(rng, layout)
    image = _background(rng, width, height)
    pixels = np.asarray(image)  # the background: objects are drawn once all are placed
    shapes: list[Shape] = []
    fewest, most = layout.objects
    wanted = 0 if rng.random() < EMPTY_FRACTION else int(rng.integers(fewest, most + 1))
    for _ in range(wanted * 10):
        if len(shapes) == wanted:
            break
        category_id, polygon = _random_outline(rng, width, height, layout.object_size)
        candidate = Shape(category_id, polygon, (0, 0, 0))
        box = candidate.bbox(width, height)
        if all(_overlap(box, s.bbox(width, height)) <= MAX_OVERLAP for s in shapes):
            x, y, w, h = (int(v) for v in box)
            under = pixels[y : y + max(h, 1), x : x + max(w, 1)].reshape(-1, 3).mean(axis=0)
            shapes.append(Shape(category_id, polygon, _contrasting_color(rng, under)))
    draw = ImageDraw.Draw(image)
    for shape in shapes:
        draw.polygon(shape.polygon, fill=shape.color, outline=tuple(max(0, c - 60) for c in shape.color))
    return image, shapes


def write_split(
    out_dir: Path, split: str, count: int, rng: np.random.Generator, first_ann_id: int, layout: Layout = Layout()
) -> dict[str, Any]:
    """Write ``count`` images under ``out_dir/split`` and return the COCO dict for them."""
    image_dir = out_dir / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    ann_id = first_ann_id
    for index in range(count):
        image, shapes = make_image(rng, layout)
        file_name = f"{split}_{index:04d}.jpg"
        write_image(image_dir / file_name, image, "JPEG", quality=92)  # whole, or not there at all
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "width": image.width, "height": image.height})
        for shape in shapes:
            x, y, w, h = (round(v, 2) for v in shape.bbox(image.width, image.height))
            segmentation = [round(v, 2) for point in shape.polygon for v in point]
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": shape.category_id,
                    "bbox": [x, y, w, h],
                    "area": round(shape.area(), 2),
                    "segmentation": [segmentation],
                    "iscrowd": 0,
                }
            )
            ann_id += 1
    info: dict[str, Any] = {"description": f"detlit synthetic shapes ({split})", "version": "1"}
    if not layout.is_default:
        info["layout"] = layout.as_json()
    return {
        "info": info,
        "licenses": [],
        "categories": CATEGORIES,
        "images": images,
        "annotations": annotations,
    }


def sample_outputs(out_dir: Path) -> list[Path]:
    """What :func:`write_sample` writes into ``out_dir``."""
    return [out_dir / name for name in ("train.json", "val.json", "train", "val")]


def write_sample(
    out_dir: Path, train: int = 200, val: int = 40, seed: int = 0, layout: Layout = Layout()
) -> tuple[Path, Path]:
    """Write the synthetic dataset; return the paths of the train and val json files."""
    rng = np.random.default_rng(seed)
    paths = []
    first_ann_id = 1
    log.info("drawing %s (seed %d)", layout.describe(), seed)
    for split, count in (("train", train), ("val", val)):
        coco = write_split(out_dir, split, count, rng, first_ann_id, layout)
        first_ann_id += len(coco["annotations"])
        path = out_dir / f"{split}.json"
        write_text(path, json.dumps(coco, indent=1))
        log.info(
            "wrote %s: %d images (%d without objects), %d objects",
            path,
            len(coco["images"]),
            len(coco["images"]) - len({a["image_id"] for a in coco["annotations"]}),
            len(coco["annotations"]),
        )
        paths.append(path)
    return paths[0], paths[1]


def sample(
    out_dir: Path, train: int = 200, val: int = 40, seed: int = 0, layout: Layout = Layout(), overwrite: bool = False
) -> int:
    """``python -m detlit.sample``: write the dataset unless that would replace files (``overwrite``),
    holding ``out_dir`` against other commands meanwhile."""
    with write_lock(out_dir):
        check_outputs(sample_outputs(out_dir), overwrite=overwrite)
        write_sample(out_dir, train, val, seed, layout)
    return 0
