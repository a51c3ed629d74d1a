"""The windows a large image is cut into: the tiles sliced inference runs the model on, and the tiles
of a tiled training set (``python -m detlit.tile``). One geometry for both, so that a model trained on
tiles sees at inference the tiles it was trained on.

The geometry is SAHI's (``sahi.slicing.get_slice_bboxes``), so that detlit's sliced predictions and
SAHI's agree window for window: square windows of ``size`` pixels, left to right and top to bottom,
each starting ``size - int(overlap * size)`` pixels after the previous one; a window that would
cross the right or bottom edge is moved back inside the image instead (so every window but those of
an image smaller than ``size`` is ``size`` x ``size``, and the last ones overlap their neighbours
more). An image no larger than ``size`` is one window, the whole image.

Example::

    >>> [w.box for w in windows(height=300, width=500, size=256, overlap=0.25)][:4]
    [(0, 0, 256, 256), (192, 0, 448, 256), (244, 0, 500, 256), (0, 44, 256, 300)]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from detlit.common.ranges import MAX_OVERLAP, MAX_TILES_PER_IMAGE, MIN_TILE_SIZE
from detlit.errors import ConfigError


@dataclass(frozen=True)
class Window:
    """One window of an image, in its pixels: columns ``x0`` to ``x1`` (excluded), rows ``y0`` to ``y1``."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.x0, self.y0, self.x1, self.y1)

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0


def check_tiling(size: int, overlap: float, option: str = "tile size") -> None:
    """Refuse a tile size or overlap outside its range (one sentence naming ``option``).

    Raises:
        ConfigError: ``size`` below :data:`~detlit.common.ranges.MIN_TILE_SIZE`, or ``overlap``
            outside 0 .. :data:`~detlit.common.ranges.MAX_OVERLAP`.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < MIN_TILE_SIZE:
        raise ConfigError(f"{option} {size!r} is below {MIN_TILE_SIZE} pixels; give {MIN_TILE_SIZE} or more")
    if not (isinstance(overlap, (int, float)) and math.isfinite(overlap) and 0.0 <= overlap <= MAX_OVERLAP):
        raise ConfigError(f"tile overlap {overlap!r} is not between 0 and {MAX_OVERLAP}; 0.2 is usual")


def steps(length: int, size: int, overlap: float) -> int:
    """How many windows cover ``length`` pixels (one axis)."""
    if length <= size:
        return 1
    stride = size - int(overlap * size)
    return 1 + math.ceil((length - size) / stride)


def count(height: int, width: int, size: int, overlap: float) -> int:
    """How many windows :func:`windows` cuts an image into, without cutting it."""
    return steps(height, size, overlap) * steps(width, size, overlap)


def windows(height: int, width: int, size: int, overlap: float) -> list[Window]:
    """The windows of a ``height`` x ``width`` image (see the module docstring), row by row.

    Raises:
        ConfigError: the size or overlap is out of range, or the image would take more than
            :data:`~detlit.common.ranges.MAX_TILES_PER_IMAGE` windows.
    """
    check_tiling(size, overlap)
    total = count(height, width, size, overlap)
    if total > MAX_TILES_PER_IMAGE:
        raise ConfigError(
            f"a {width}x{height} image would be cut into {total:,} tiles of {size} px (overlap {overlap:g}), more than "
            f"{MAX_TILES_PER_IMAGE:,}; choose a larger tile size or a smaller overlap"
        )
    stride = size - int(overlap * size)
    rows = _starts(height, size, stride)
    columns = _starts(width, size, stride)
    return [Window(x0, y0, min(x0 + size, width), min(y0 + size, height)) for y0 in rows for x0 in columns]


def _starts(length: int, size: int, stride: int) -> list[int]:
    """The first pixel of each window along one axis: every ``stride`` pixels, the last one moved
    back so that it ends at the image's edge (SAHI's rule)."""
    if length <= size:
        return [0]
    starts = list(range(0, length - size, stride))
    starts.append(length - size)
    return starts
