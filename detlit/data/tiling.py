"""Stage 1 (preparing the data, before the split), tiling: a COCO dataset of large images cut into a
dataset of tiles, for training on small objects at the size sliced inference shows them.

:func:`tile` (``python -m detlit.tile --json DATA.json --images DIR --out OUT``) cuts every image
into the windows of :mod:`detlit.data.windows` (the geometry sliced inference uses) and writes
``OUT/images/<folder>/<stem>_x<x0>_y<y0>.<ext>`` and ``OUT/annotations.json``:

* each tile is an image of its own (new id, ``file_name`` relative to ``OUT/images``, its width
  and height) that keeps the source image's other fields and records where it comes from:
  ``"tile": {"source_id": ..., "source_file": ..., "x": x0, "y": y0}``; ``split`` keeps the tiles
  of one source image on one side;
* an object is kept in a tile when at least ``min_visibility`` of its box (clipped to the image)
  lies inside the tile; its box is clipped to the tile and shifted to the tile's pixels, its
  ``area`` is the clipped box's; crowd regions (ignore regions) are kept, clipped, in every tile
  they reach into; polygons are dropped (Faster R-CNN trains on boxes);
* of the tiles without any object, ``empty_ratio`` are kept, chosen with ``seed`` among all of
  them, the same for the same json and settings;
* pixels are read as training reads them (:func:`detlit.data.images.load_image`: EXIF orientation
  applied, the pixel limit held) and written losslessly as PNG, or as JPEG of quality 95 without
  chroma subsampling for JPEG sources; an image that is missing, unreadable or of another size than
  the json says is skipped with one warning.

The output folder is new or one tile wrote before (its marker file, :data:`MARKER`, says so): a
folder holding anything else is refused, and with ``--overwrite`` only tile's own files are
replaced (tiles of the earlier run that this one does not write are removed). ``annotations.json``
is written last, so a run that stops half-way leaves no json that lists missing tiles; its
top-level ``detlit_tile`` records the settings (use its ``size`` as ``--slice`` when predicting).
"""

from __future__ import annotations

import json
import logging
import math
import os
import posixpath
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from detlit.common import ranges
from detlit.common.outputs import LOCK_NAME, check_outputs, write_bytes, write_image, write_lock, write_text
from detlit.data.coco import CocoDataset, parse_coco, raise_on_errors, require_images
from detlit.data.images import load_image
from detlit.data.split import MARKER as SPLIT_MARKER
from detlit.data.split import read_inside
from detlit.data.windows import Window, check_tiling, windows
from detlit.errors import ConfigError, DataError

log = logging.getLogger(__name__)

ANNOTATIONS = "annotations.json"
IMAGES = "images"
MARKER = ".detlit-tile"  # in --out: the folder was written by tile, whose --overwrite may replace its files
SETTINGS_KEY = "detlit_tile"  # the top-level key of annotations.json that records the settings
JPEG_SUFFIXES = {".jpg", ".jpeg"}
JPEG_OPTIONS: dict[str, Any] = {"quality": 95, "subsampling": 0}
# Lossless at any level; on a 640 px tile of a photo level 1 takes 83 ms where the default 6 takes 116, for files
# 10% larger.
PNG_OPTIONS: dict[str, Any] = {"compress_level": 1}
TILE_NAME = re.compile(r"_x\d+_y\d+\.(png|jpe?g)$", re.IGNORECASE)
DECIMALS = 6  # box coordinates are rounded to a millionth of a pixel: 712.3 - 512 is 200.3, not 200.29999999999995
BLOCK = 2_000_000  # window x object pairs compared at once (memory: a few arrays of this many floats)


@dataclass(frozen=True)
class Tiling:
    """How a dataset is cut into tiles.

    Attributes:
        size: tile side in pixels (at least :data:`~detlit.common.ranges.MIN_TILE_SIZE`).
        overlap: overlap of neighbouring tiles, a fraction of ``size`` (0 to
            :data:`~detlit.common.ranges.MAX_OVERLAP`).
        min_visibility: share of an object's box (clipped to its image) that must lie inside a tile
            for the tile to keep it, 0 (any part) to 1 (the whole box).
        empty_ratio: share of the tiles without any object that are kept, 0 to 1.
        seed: seed of the choice of empty tiles.
    """

    size: int = 640
    overlap: float = 0.2
    min_visibility: float = 0.5
    empty_ratio: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        check_tiling(self.size, self.overlap, option="--size")
        ranges.real("--min-visibility", self.min_visibility, 0.0, 1.0)
        ranges.real("--empty-ratio", self.empty_ratio, 0.0, 1.0)
        ranges.whole("--seed", self.seed, 0, ranges.MAX_SEED)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


# --- objects in tiles ------------------------------------------------------------------------------


@dataclass
class TileObjects:
    """What one tile keeps of its image's objects: their rows in the image's arrays and their boxes
    in the tile's pixels (XYWH)."""

    window: Window
    rows: np.ndarray  # int64 (k,)
    boxes: np.ndarray  # float64 (k, 4)
    objects: int  # how many of the rows are objects (not crowd regions)


@dataclass
class ImagePlan:
    """The tiles of one source image, and its objects that no tile keeps."""

    index: int  # position in the dataset's records
    tiles: list[TileObjects]
    objects: int  # objects (not crowd regions) of the image
    lost: int  # objects kept by no tile (no area inside the image included)
    no_area: int  # objects whose box has no area inside the image
    keep: list[bool] = field(default_factory=list)  # per tile: written (objects, or a chosen empty tile)


def clip_to_image(bboxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """XYWH boxes as XYXY clipped to a ``width`` x ``height`` image (non-finite values give empty boxes)."""
    boxes = np.nan_to_num(np.asarray(bboxes, np.float64).reshape(-1, 4), nan=0.0, posinf=0.0, neginf=0.0)
    x0, y0 = boxes[:, 0], boxes[:, 1]
    x1, y1 = x0 + np.maximum(boxes[:, 2], 0.0), y0 + np.maximum(boxes[:, 3], 0.0)
    return np.stack([np.clip(x0, 0, width), np.clip(y0, 0, height), np.clip(x1, 0, width), np.clip(y1, 0, height)], 1)


def tile_objects(
    boxes: np.ndarray, crowd: np.ndarray, tiles: list[Window], min_visibility: float
) -> tuple[list[TileObjects], np.ndarray]:
    """Which objects each tile keeps, with their boxes clipped to it in its pixels.

    Args:
        boxes: (n, 4) XYXY boxes, already clipped to the image (:func:`clip_to_image`).
        crowd: (n,) whether each box is a crowd region: kept in every tile it reaches into.
        tiles: the windows of the image.
        min_visibility: share of an object's box area that must lie inside a tile.

    Returns:
        One :class:`TileObjects` per window, and per object whether some tile keeps it.
    """
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    usable = area > 0
    seen = np.zeros(len(boxes), bool)
    found: list[TileObjects] = []
    step = max(1, BLOCK // max(len(boxes), 1))
    for start in range(0, len(tiles), step):
        block = tiles[start : start + step]
        frame = np.array([w.box for w in block], np.float64).reshape(-1, 4)[:, None, :]  # (m, 1, 4)
        x0 = np.maximum(boxes[None, :, 0], frame[..., 0])
        y0 = np.maximum(boxes[None, :, 1], frame[..., 1])
        x1 = np.minimum(boxes[None, :, 2], frame[..., 2])
        y1 = np.minimum(boxes[None, :, 3], frame[..., 3])
        inside = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)  # (m, n)
        touched = (inside > 0) & usable[None, :]
        kept = touched & (crowd[None, :] | (inside >= min_visibility * area[None, :]))
        seen |= (kept & ~crowd[None, :]).any(axis=0)
        for j, window in enumerate(block):
            rows = np.flatnonzero(kept[j])
            shift = np.array([window.x0, window.y0, window.x0, window.y0], np.float64)
            corners = np.stack([x0[j, rows], y0[j, rows], x1[j, rows], y1[j, rows]], 1) - shift
            xywh = np.round(np.concatenate([corners[:, :2], corners[:, 2:] - corners[:, :2]], 1), DECIMALS)
            found.append(TileObjects(window, rows.astype(np.int64), xywh, int((~crowd[rows]).sum())))
    return found, seen


def plan_image(dataset: CocoDataset, index: int, tiling: Tiling) -> ImagePlan:
    """The tiles of image ``index`` of ``dataset`` and the objects each keeps (from the json alone)."""
    images = dataset.images
    width, height = int(images.widths[index]), int(images.heights[index])
    start, end = int(images.offsets[index]), int(images.offsets[index + 1])
    crowd = images.crowd[start:end]
    boxes = clip_to_image(images.bboxes[start:end], width, height)
    try:
        cut = windows(height, width, tiling.size, tiling.overlap)
    except ConfigError as err:
        raise ConfigError(f"image {images.ids[index]} ({images.file_name(index)}): {err}") from None
    tiles, seen = tile_objects(boxes, crowd, cut, tiling.min_visibility)
    objects = ~crowd
    no_area = objects & ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))
    return ImagePlan(
        index=index,
        tiles=tiles,
        objects=int(objects.sum()),
        lost=int((objects & ~seen).sum()),
        no_area=int(no_area.sum()),
    )


def choose_empty(plans: list[ImagePlan], empty_ratio: float, seed: int) -> None:
    """Mark the tiles to write: every tile with an object, and ``round(empty_ratio x empty tiles)``
    of the others, chosen with ``seed`` among the empty tiles of all images."""
    empty = [(p, t) for p, plan in enumerate(plans) for t, tile in enumerate(plan.tiles) if tile.objects == 0]
    count = math.floor(empty_ratio * len(empty) + 0.5)  # half up: 0.5 x 1 tile keeps it
    chosen = set(np.random.default_rng(seed).choice(len(empty), size=count, replace=False).tolist()) if count else set()
    for plan in plans:
        plan.keep = [tile.objects > 0 for tile in plan.tiles]
    for k in chosen:
        p, t = empty[k]
        plans[p].keep[t] = True


# --- names and files -------------------------------------------------------------------------------


def tile_name(source: str, window: Window) -> str:
    """A tile's ``file_name`` under ``OUT/images``: the source's folder and stem, the tile's offset, and
    the source's suffix for a JPEG source, ``.png`` for any other."""
    path = PurePosixPath(source)
    suffix = path.suffix if path.suffix.lower() in JPEG_SUFFIXES else ".png"
    name = f"{path.stem}_x{window.x0}_y{window.y0}{suffix}"
    parent = str(path.parent)
    return name if parent in ("", ".") else posixpath.join(parent, name)


def tile_names(plans: list[ImagePlan], sources: list[str]) -> list[str]:
    """The file names of the tiles to write, in order.

    Raises:
        DataError: two source images give tiles of one name (``a.png`` and ``a.bmp``: both give PNG tiles).
    """
    names: dict[str, str] = {}
    for plan in plans:
        source = sources[plan.index]
        for tile, keep in zip(plan.tiles, plan.keep, strict=True):
            name = tile_name(source, tile.window)
            if keep and names.setdefault(name, source) != source:
                raise DataError(
                    f"images {names[name]} and {source} both give the tile {name}; rename one of them (tiles are "
                    "named after the image's folder and stem, and written as PNG unless the image is a JPEG)"
                )
    return list(names)


def encode(pixels: np.ndarray, name: str, path: Path) -> None:
    """Write one tile (RGB uint8) as the format its name says."""
    image = Image.fromarray(np.ascontiguousarray(pixels))
    if PurePosixPath(name).suffix.lower() in JPEG_SUFFIXES:
        write_image(path, image, "JPEG", **JPEG_OPTIONS)
    else:
        write_image(path, image, "PNG", **PNG_OPTIONS)


def check_folders(images: Path, out: Path) -> None:
    """Refuse an output folder inside the image folder, or one that holds it: tiles must not go among
    the images they are cut from.

    Raises:
        ConfigError: one sentence naming both folders.
    """
    source, target = images.resolve(), out.resolve()
    if target.is_relative_to(source):
        raise ConfigError(
            f"--out {out} lies inside the image folder {images}: the tiles would go among the images they are "
            "cut from; choose an --out outside it"
        )
    if source.is_relative_to(target):
        raise ConfigError(
            f"--out {out} holds the image folder {images}: the tiles would go among the images they are cut "
            "from; choose an --out that does not contain it"
        )


def check_owner(out: Path, overwrite: bool) -> bool:
    """Whether ``out`` holds an earlier run of tile (its marker), which only ``overwrite`` may replace;
    a folder holding anything else is refused.

    Raises:
        ConfigError: ``out`` holds files and no marker, or an earlier run and ``overwrite`` is off.
    """
    if (out / MARKER).is_file():
        if not overwrite:
            raise ConfigError(
                f"--out {out} holds an earlier run of python -m detlit.tile; choose another --out, or pass "
                "--overwrite to replace it"
            )
        return True
    temporary = re.compile(r"^\..+\.tmp$")  # what killed commands leave; the lock is write_lock's own
    others = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME and not temporary.match(p.name))
    if others:
        raise ConfigError(
            f"--out {out} holds files that python -m detlit.tile did not write (first: {others[0]}); choose a new "
            "folder (tile writes into a new folder, or with --overwrite into one it wrote before)"
        )
    return False


def stale_tiles(folder: Path, keep: set[Path]) -> Iterator[Path]:
    """Tiles of an earlier run under ``folder`` that this run does not write."""
    if not folder.is_dir():
        return
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink() and TILE_NAME.search(path.name) and path not in keep:
            yield path


# --- the dataset -----------------------------------------------------------------------------------


@dataclass
class Summary:
    """What one run did, for its one line."""

    images: int = 0
    skipped: list[str] = field(default_factory=list)  # one reason per skipped image
    tiles: int = 0
    empty_kept: int = 0
    empty_dropped: int = 0
    objects: int = 0
    instances: int = 0
    crowd: int = 0
    lost: int = 0
    no_area: int = 0

    def line(self) -> str:
        return (
            f"{self.images} images in ({len(self.skipped)} skipped), {self.tiles} tiles written "
            f"(empty tiles: {self.empty_kept} kept, {self.empty_dropped} dropped), {self.objects} objects in, "
            f"{self.instances} object instances out, {self.lost} objects seen in no tile"
        )


def image_entry(
    raw_image: dict[str, Any], source: tuple[int, str], image_id: int, name: str, window: Window
) -> dict[str, Any]:
    """A tile's COCO image: its id, file name and size, the source image's other fields, and where it
    comes from (``source``: the source image's id and file name)."""
    entry = {k: v for k, v in raw_image.items() if k not in ("id", "file_name", "width", "height", "tile")}
    origin = {"source_id": source[0], "source_file": source[1], "x": window.x0, "y": window.y0}
    return {"id": image_id, "file_name": name, "width": window.width, "height": window.height, **entry, "tile": origin}


def read_source(dataset: CocoDataset, index: int) -> np.ndarray | str:
    """Image ``index``'s pixels as training reads them, or why it is skipped (missing, unreadable, too
    large, or of another size than the json says: its boxes would not fit)."""
    images = dataset.images
    path = dataset.image_root / images.file_name(index)
    width, height = int(images.widths[index]), int(images.heights[index])
    try:
        pixels = load_image(path)
    except DataError as err:
        return str(err)
    if pixels.shape[:2] != (height, width):
        return (
            f"image {path} is {pixels.shape[1]}x{pixels.shape[0]} (EXIF orientation applied), but the json says "
            f"{width}x{height}; repair the json with python -m detlit.check --fix"
        )
    return pixels


def tile_annotations(
    dataset: CocoDataset, plan: ImagePlan, tile: TileObjects, image_id: int, first_id: int
) -> list[dict[str, Any]]:
    """The COCO annotations of one tile: its boxes, each object's category and crowd flag, ids from ``first_id``."""
    images = dataset.images
    start = int(images.offsets[plan.index])
    found: list[dict[str, Any]] = []
    for row, box in zip(tile.rows.tolist(), tile.boxes.tolist(), strict=True):
        found.append(
            {
                "id": first_id + len(found),
                "image_id": image_id,
                "category_id": int(images.category_ids[start + row]),
                "bbox": box,
                "area": round(box[2] * box[3], DECIMALS),
                "iscrowd": int(images.crowd[start + row]),
            }
        )
    return found


def tile_dataset(
    dataset: CocoDataset,
    raw: dict[str, Any],
    plans: list[ImagePlan],
    out: Path,
    workers: int,
) -> tuple[dict[str, Any], Summary]:
    """Read each image, write its chosen tiles under ``out/images``, and build the tiles' COCO dict."""
    images = dataset.images
    summary = Summary(images=len(images), objects=sum(p.objects for p in plans))
    tile_images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:  # encoding and writing release the GIL
        for plan in plans:
            name, image_id = images.file_name(plan.index), int(images.ids[plan.index])
            pixels = read_source(dataset, plan.index)
            if isinstance(pixels, str):
                log.warning("skipped image %d: %s", image_id, pixels)
                summary.skipped.append(pixels)
                continue
            chosen = [tile for tile, keep in zip(plan.tiles, plan.keep, strict=True) if keep]
            files = [tile_name(name, tile.window) for tile in chosen]
            jobs = [
                pool.submit(encode, pixels[t.window.y0 : t.window.y1, t.window.x0 : t.window.x1], f, out / IMAGES / f)
                for t, f in zip(chosen, files, strict=True)
            ]
            try:
                for job in jobs:
                    job.result()
            except BaseException:  # a failed write, Ctrl-C: the tiles not begun are not written
                for job in jobs:
                    job.cancel()
                raise
            for tile, tile_file in zip(chosen, files, strict=True):
                tile_id = len(tile_images) + 1
                raw_image = raw["images"][int(images.positions[plan.index])]
                tile_images.append(image_entry(raw_image, (image_id, name), tile_id, tile_file, tile.window))
                annotations += tile_annotations(dataset, plan, tile, tile_id, len(annotations) + 1)
                summary.instances += tile.objects
                summary.crowd += len(tile.rows) - tile.objects
            empty = [tile.objects == 0 for tile in plan.tiles]
            summary.tiles += len(chosen)
            summary.empty_kept += sum(e and k for e, k in zip(empty, plan.keep, strict=True))
            summary.empty_dropped += sum(e and not k for e, k in zip(empty, plan.keep, strict=True))
            summary.lost += plan.lost
            summary.no_area += plan.no_area
            log.debug("%s: %d of %d tiles written", name, len(chosen), len(plan.tiles))
    coco: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "images":
            coco[key] = tile_images
        elif key == "annotations":
            coco[key] = annotations
        elif key != SPLIT_MARKER:  # the tiles are no part of a train/val pair
            coco[key] = value
    return coco, summary


def tile(
    json_path: Path,
    images: Path,
    out: Path,
    tiling: Tiling,
    overwrite: bool = False,
    workers: int | None = None,
) -> tuple[int, Summary]:
    """``python -m detlit.tile``: cut a COCO dataset into tiles (see the module docstring), holding
    ``out`` against other commands meanwhile.

    Returns:
        The exit status (1 when no tile was written) and what the run did.

    Raises:
        DataError: the json is unusable (one sentence, as ``split`` says it).
        ConfigError: ``out`` is inside the image folder, holds it, or holds files tile did not write; an
            output exists and ``overwrite`` is off.
    """
    check_folders(images, out)
    workers = workers or min(8, os.cpu_count() or 1)
    with write_lock(out):
        earlier = check_owner(out, overwrite)
        raw = read_inside(json_path, images)
        dataset, findings = parse_coco(raw, json_path, images)
        raise_on_errors(findings, json_path, images)
        require_images(dataset, "--images")
        log.info("read %d images, %d annotations from %s", len(dataset.images), dataset.num_annotations, json_path)
        plans = [plan_image(dataset, i, tiling) for i in range(len(dataset.images))]
        choose_empty(plans, tiling.empty_ratio, tiling.seed)
        names = dataset.images.file_names()
        tile_paths = [out / IMAGES / name for name in tile_names(plans, names)]
        annotations_path = out / ANNOTATIONS
        check_outputs(
            [annotations_path, *tile_paths], inputs=[json_path], overwrite=overwrite, images=[(images, names)]
        )
        write_text(out / MARKER, "written by python -m detlit.tile: its --overwrite may replace the files here\n")
        if earlier:
            annotations_path.unlink(missing_ok=True)  # no json may list tiles that change below
            removed = list(stale_tiles(out / IMAGES, set(tile_paths)))
            for path in removed:
                path.unlink()
            if removed:
                log.info("removed %d tiles of the earlier run that this one does not write", len(removed))
        segmented = sum(1 for a in raw["annotations"] if isinstance(a, dict) and a.get("segmentation"))
        if segmented:
            log.info(
                "%d segmentations dropped: Faster R-CNN trains on boxes, which are clipped to each tile", segmented
            )
        log.info(
            "tiles of %d px, overlap %g; JPEG sources give JPEG tiles (quality %d, no chroma subsampling), "
            "others lossless PNG",
            tiling.size,
            tiling.overlap,
            JPEG_OPTIONS["quality"],
        )
        coco, summary = tile_dataset(dataset, raw, plans, out, workers)
        if not summary.tiles and not earlier:
            (out / MARKER).unlink()  # nothing written: the folder goes again, as if the run had not started
        if summary.tiles:
            document = {SETTINGS_KEY: {**tiling.as_json(), "json": str(json_path)}, **coco}
            write_bytes(annotations_path, json.dumps(document, indent=1).encode("utf-8"))
            log.info("wrote %s: %d tiles, %d annotations", annotations_path, summary.tiles, len(coco["annotations"]))
    if summary.no_area:
        log.warning(
            "%d objects have no area inside their image and are in no tile; python -m detlit.check lists them",
            summary.no_area,
        )
    if summary.lost:
        log.info(
            "%d objects lie in no tile with at least %g of their box (a larger --overlap or --size, or a lower "
            "--min-visibility, keeps more)",
            summary.lost,
            tiling.min_visibility,
        )
    if summary.crowd:
        log.info(
            "%d crowd-region instances (ignore regions) written, clipped to the tiles they reach into", summary.crowd
        )
    return (0 if summary.tiles else 1), summary
