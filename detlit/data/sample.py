"""A deterministic synthetic COCO dataset to try detlit without bringing data.

``python -m detlit.sample --out OUT_DIR`` writes ``OUT_DIR/train.json``, ``OUT_DIR/val.json`` and the
JPEG images under ``OUT_DIR/train/`` and ``OUT_DIR/val/`` (``file_name`` is relative to those
folders). Objects are circles, squares and triangles of varied size, colour and overlap on
textured backgrounds; category ids are deliberately not contiguous (1, 3, 7) and some images
hold no object at all. The same seed gives the same files.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from detlit.common.outputs import check_outputs, write_image, write_lock, write_text

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


def _random_outline(rng: np.random.Generator, width: int, height: int) -> tuple[int, list[tuple[float, float]]]:
    """A random category and the polygon of one object of it, inside the image."""
    category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
    side = float(np.exp(rng.uniform(math.log(MIN_SIDE), math.log(MAX_SIDE))))
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


def make_image(rng: np.random.Generator) -> tuple[Image.Image, list[Shape]]:
    """Draw one image and return it with its objects (possibly none)."""
    width, height = IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
    image = _background(rng, width, height)
    shapes: list[Shape] = []
    wanted = 0 if rng.random() < EMPTY_FRACTION else int(rng.integers(1, MAX_OBJECTS + 1))
    for _ in range(wanted * 10):
        if len(shapes) == wanted:
            break
        category_id, polygon = _random_outline(rng, width, height)
        candidate = Shape(category_id, polygon, (0, 0, 0))
        box = candidate.bbox(width, height)
        if all(_overlap(box, s.bbox(width, height)) <= MAX_OVERLAP for s in shapes):
            x, y, w, h = (int(v) for v in box)
            under = np.asarray(image)[y : y + max(h, 1), x : x + max(w, 1)].reshape(-1, 3).mean(axis=0)
            shapes.append(Shape(category_id, polygon, _contrasting_color(rng, under)))
    draw = ImageDraw.Draw(image)
    for shape in shapes:
        draw.polygon(shape.polygon, fill=shape.color, outline=tuple(max(0, c - 60) for c in shape.color))
    return image, shapes


def write_split(out_dir: Path, split: str, count: int, rng: np.random.Generator, first_ann_id: int) -> dict[str, Any]:
    """Write ``count`` images under ``out_dir/split`` and return the COCO dict for them."""
    image_dir = out_dir / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    ann_id = first_ann_id
    for index in range(count):
        image, shapes = make_image(rng)
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
    return {
        "info": {"description": f"detlit synthetic shapes ({split})", "version": "1"},
        "licenses": [],
        "categories": CATEGORIES,
        "images": images,
        "annotations": annotations,
    }


def sample_outputs(out_dir: Path) -> list[Path]:
    """What :func:`write_sample` writes into ``out_dir``."""
    return [out_dir / name for name in ("train.json", "val.json", "train", "val")]


def write_sample(out_dir: Path, train: int = 200, val: int = 40, seed: int = 0) -> tuple[Path, Path]:
    """Write the synthetic dataset; return the paths of the train and val json files."""
    rng = np.random.default_rng(seed)
    paths = []
    first_ann_id = 1
    for split, count in (("train", train), ("val", val)):
        coco = write_split(out_dir, split, count, rng, first_ann_id)
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


def sample(out_dir: Path, train: int = 200, val: int = 40, seed: int = 0, overwrite: bool = False) -> int:
    """``python -m detlit.sample``: write the dataset unless that would replace files (``overwrite``),
    holding ``out_dir`` against other commands meanwhile."""
    with write_lock(out_dir):
        check_outputs(sample_outputs(out_dir), overwrite=overwrite)
        write_sample(out_dir, train, val, seed)
    return 0
