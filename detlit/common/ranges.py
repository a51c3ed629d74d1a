"""Numbers someone sets, checked against the range where they mean something, before they are used.

Every numeric field of a config (``DetectionModule``, ``CocoDataModule``, the trainer and its
checkpoint callbacks) is checked when a command starts, and a value outside its range ends in one
:class:`~detlit.errors.ConfigError` that names the setting, the value and the range. A
checkpoint's hyper-parameters go through the same checks when it is loaded, so the upper bounds
here are the ones a crafted file must not pass: a larger value is either a typo or a request for
more memory than any machine has.

Argparse options of the commands use the same ranges through the types of
:mod:`detlit.common.command`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from detlit.errors import ConfigError

MAX_IMAGE_SIDE = 4096
"""Largest image size (shortest edge, or cap on the longest) a model resizes to, in pixels.

detectron2's own configs stop at 2048 (Cityscapes); at 4096 one image's stride-4 feature map of a
ResNet already takes 1 GB in float32, and a checkpoint asking for 60000 would make every image
take hundreds of GB: so anything above is refused rather than attempted."""

MAX_CLASSES = 20_000
"""Most object classes a model may have: the largest detection vocabularies (LVIS: 1203, V3Det:
13204) fit, and the box predictor's layers stay below 400 MB; a crafted checkpoint's class count
is refused before any layer or class name is made for it."""

MAX_SEED = 2**32 - 1
"""Largest seed: numpy's legacy generators (Optuna's samplers, Lightning's ``seed_everything``)
take 32-bit seeds only."""

MAX_BATCH_SIZE = 1024
"""Most images per batch: far more than a GPU holds at detection sizes (a batch is loaded, decoded
and resized at once before the model sees it)."""

MAX_WORKERS = 256
"""Most data-loading worker processes per device: each one is a process with its own copy of the
loader's state."""

MAX_PARAMETERS = 2_000_000_000
"""Most parameters and buffers a model may have: 8 GB of float32 weights before any gradient or
optimizer state, ten times the largest architecture of the menu (R101-DC5, 184 M). A checkpoint's
``model.overrides`` decide layer widths (``MODEL.ROI_BOX_HEAD.FC_DIM: 1000000`` asks for a
trillion), so the model's size is counted, without memory, before it is built."""

MAX_LOG_IMAGES = 64
"""Most validation images drawn into TensorBoard: each drawing stays in memory until the epoch
ends, and a montage of more is not readable."""

MAX_WEIGHTS_DOWNLOAD = 2 * 2**30
"""Most bytes a ``model.weights`` download may have (2 GiB): five times the model zoo's largest
box detector checkpoint (X101-FPN: 104 M float32 parameters, about 420 MB); a server that
announces or sends more is refused before the disk fills."""


def is_whole(value: Any) -> bool:
    """Whether ``value`` is a whole number (not a bool, not a float)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """Whether ``value`` is a finite number (int or float, not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def show(value: float) -> str:
    """A bound as it is typed: ``4096``, ``0.5``, ``4294967295``."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def span(low: float | None, high: float | None, whole: bool, above: bool = False) -> str:
    """A range in words: ``a whole number from 1 to 4096``, ``a number above 0``, ..."""
    kind = "a whole number" if whole else "a number"
    if low is not None and high is not None:
        return (
            f"{kind} above {show(low)} and at most {show(high)}"
            if above
            else f"{kind} from {show(low)} to {show(high)}"
        )
    if low is not None:
        return f"{kind} above {show(low)}" if above else f"{kind} of {show(low)} or more"
    if high is not None:
        return f"{kind} of {show(high)} or less"
    return kind


def whole(name: str, value: Any, low: int | None = None, high: int | None = None, fix: str | None = None) -> int:
    """``value`` when it is a whole number in ``[low, high]``.

    Raises:
        ConfigError: ``name is VALUE; FIX`` (``fix`` defaults to the range in words).
    """
    fix = fix or f"use {span(low, high, whole=True)}"
    if not is_whole(value) or (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f"{name} is {value!r}; {fix}")
    return int(value)


def real(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    above: bool = False,
    fix: str | None = None,
) -> float:
    """``value`` when it is a finite number in ``[low, high]`` (``(low, high]`` with ``above``).

    NaN and infinity are refused: no setting of detlit means something with them.

    Raises:
        ConfigError: ``name is VALUE; FIX`` (``fix`` defaults to the range in words).
    """
    fix = fix or f"use {span(low, high, whole=False, above=above)}"
    if not is_real(value):
        raise ConfigError(f"{name} is {value!r}; {fix} (finite: not NaN or infinity)")
    too_low = low is not None and (value <= low if above else value < low)
    if too_low or (high is not None and value > high):
        raise ConfigError(f"{name} is {value!r}; {fix}")
    return float(value)


def optional_whole(
    name: str, value: Any, low: int | None = None, high: int | None = None, fix: str | None = None
) -> None:
    """:func:`whole`, where ``None`` (the setting left out) is fine too."""
    if value is not None:
        whole(name, value, low, high, fix)


def check_image_sizes(
    prefix: str, min_size_train: Sequence[Any], max_size_train: Any, min_size_test: Any, max_size_test: Any
) -> None:
    """The resize settings of a model or a data module (``prefix``: ``data.`` or ``model.``).

    Each size is a whole number of pixels from 1 to :data:`MAX_IMAGE_SIDE`, and each cap on the
    longest edge is at least its shortest-edge sizes: below them no image could reach those
    sizes (detectron2's resize stops at the cap), so they would mean nothing.

    Raises:
        ConfigError: one sentence naming the first size out of range.
    """
    if not isinstance(min_size_train, Sequence) or isinstance(min_size_train, str) or not min_size_train:
        shown = "empty" if isinstance(min_size_train, Sequence) and not min_size_train else repr(min_size_train)
        raise ConfigError(f"{prefix}min_size_train is {shown}; give one or more image sizes, e.g. [640, 800]")
    for size in min_size_train:
        _image_size(f"{prefix}min_size_train holds", size)
    for name, size in (
        ("max_size_train", max_size_train),
        ("min_size_test", min_size_test),
        ("max_size_test", max_size_test),
    ):
        _image_size(f"{prefix}{name} is", size)
    _cap_reaches(prefix, "max_size_train", max_size_train, "min_size_train", max(min_size_train))
    _cap_reaches(prefix, "max_size_test", max_size_test, "min_size_test", min_size_test)


def _cap_reaches(prefix: str, cap: str, value: int, sizes: str, largest: int) -> None:
    if value < largest:
        raise ConfigError(
            f"{prefix}{cap} is {value}, below {prefix}{sizes}'s {largest}: no image would be resized to that "
            f"shortest edge; raise {prefix}{cap} to {largest} or more, or lower {prefix}{sizes}"
        )


def _image_size(named: str, size: Any) -> None:
    if not is_whole(size) or size < 1:
        raise ConfigError(f"{named} {size!r}; image sizes are whole numbers of pixels above 0")
    if size > MAX_IMAGE_SIDE:
        raise ConfigError(
            f"{named} {size}, more than {MAX_IMAGE_SIDE} pixels: one image would need tens of GB of memory; "
            f"give {MAX_IMAGE_SIDE} or less (tile larger images instead)"
        )


MIN_TILE_SIZE = 32
"""Smallest tile side (sliced inference, tiled data): below a detector's largest stride (32 for
FPN's P5) a tile holds less than one feature-map cell."""

MAX_OVERLAP = 0.9
"""Largest overlap between neighbouring tiles, as a fraction of the tile side: at 0.9 every pixel
is already seen by about 100 tiles."""

MAX_TILES_PER_IMAGE = 10_000
"""Most tiles one image may be cut into (sliced inference, tiled data): 10,000 tiles of 640 px
with 20% overlap cover a 51,000 x 51,000 px image; a smaller tile or a larger overlap that asks
for more is refused before any tile is cut."""

MAX_FOLDS = 100
"""Most folds ``split --folds`` makes: each fold writes the whole dataset's json again (as its
train and val parts), and cross-validation rarely uses more than 10."""
