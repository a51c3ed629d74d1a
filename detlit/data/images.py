"""Images in, model input out: the one way an image file, PIL image or array becomes what the model sees.

* :func:`open_image` is the one way detlit opens an image file: Pillow reads its header, and a
  file of more pixels than :func:`max_image_pixels` is refused before any pixel is decoded (a PNG
  of a few hundred kilobytes can hold 900 million pixels, gigabytes once decoded);
* :func:`read_image` decodes a file as RGB uint8 (H, W, 3) with its EXIF orientation applied;
* :func:`load_image` takes a file, a PIL image or an array and returns the same, with one clear
  sentence for a file that cannot be read;
* :func:`to_model_image` turns a (resized) RGB array into the model's input tensor: (C, H, W)
  uint8, channels in the model's ``INPUT.FORMAT`` order.

The training and evaluation datasets (:mod:`detlit.data.dataset`) and the predictor
(:mod:`detlit.inference.predictor`) both read with :func:`read_image`, resize with
:func:`detlit.data.transforms.eval_transform` (training: its own augmentations) and finish with
:func:`to_model_image`, so a prediction sees the pixels validation saw.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from detlit.common.paths import not_a_file
from detlit.errors import ConfigError, DataError

if TYPE_CHECKING:  # torch is imported where a tensor is made: reading headers (check, split) does not need it
    import torch

ImageInput: TypeAlias = str | Path | Image.Image | np.ndarray
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
CHANNEL_ORDERS = ("BGR", "RGB")
READ_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError)

MAX_IMAGE_PIXELS = 178_956_970
"""The most pixels an image file may have: Pillow's own refusal threshold (twice its default
``Image.MAX_IMAGE_PIXELS``), about 13400 x 13400; decoded as RGB it takes 537 MB. Set
:data:`PIXELS_VARIABLE` to change it."""
PIXELS_VARIABLE = "DETLIT_MAX_IMAGE_PIXELS"


class ImageTooLarge(DataError):
    """An image of more pixels than its limit: refused before it is decoded.

    Attributes:
        size: the size found, in words (``30000 x 30000 pixels``).
        limit: the most pixels the image could have had.
    """

    def __init__(self, message: str, size: str, limit: int):
        super().__init__(message)
        self.size, self.limit = size, limit


def max_image_pixels() -> int:
    """The most pixels an image file may have: ``$DETLIT_MAX_IMAGE_PIXELS``, else :data:`MAX_IMAGE_PIXELS`.

    Raises:
        ConfigError: the variable is set to something other than a whole number of 1 or more.
    """
    text = os.environ.get(PIXELS_VARIABLE, "").strip()
    if not text:
        return MAX_IMAGE_PIXELS
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(
            f"{PIXELS_VARIABLE}={text!r} is not a whole number of pixels above 0; set it to the most pixels an image "
            f"may have (default {MAX_IMAGE_PIXELS}), or unset it"
        )
    return value


def _too_large(name: str, limit: int, size: str) -> ImageTooLarge:
    return ImageTooLarge(
        f"image {name} is {size}, more than the {limit:,} pixels detlit decodes (a decompression bomb, or an image "
        f"too large to train on); shrink or drop it, or raise the limit with the environment variable "
        f"{PIXELS_VARIABLE}",
        size,
        limit,
    )


def _pillow_pixels(err: Exception) -> str:
    """The pixel count Pillow's DecompressionBombError names (it does not say the width and height)."""
    found = re.search(r"\((\d+) pixels\)", str(err))
    return f"{int(found.group(1)):,} pixels" if found else "larger than Pillow decodes"


@contextmanager
def open_image(source: Path | bytes, limit: int | None = None) -> Iterator[Image.Image]:
    """An image file (or its bytes, as the service receives them) opened by Pillow, refused before any
    pixel is decoded when it has more pixels than ``limit`` (default :func:`max_image_pixels`).

    Pillow reads the header only; the size it declares is held against the limit.
    Pillow's own check (it refuses more than twice its ``Image.MAX_IMAGE_PIXELS`` when opening, and
    checks frames and tiles while decoding) ends in the same sentence. A limit raised through
    :data:`PIXELS_VARIABLE` beyond Pillow's raises Pillow's with it, for this process.

    Raises:
        ImageTooLarge: the image (or a frame or tile of it) has more pixels than the limit.
        ConfigError: :data:`PIXELS_VARIABLE` is not a number.
        OSError, UnidentifiedImageError, ...: Pillow cannot read the file (see ``READ_ERRORS``).
    """
    limit = max_image_pixels() if limit is None else limit
    if Image.MAX_IMAGE_PIXELS is not None and limit > 2 * Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit  # Pillow warns above it (detlit refuses those) and refuses above twice it
    name = str(source) if isinstance(source, Path) else "in the request"
    try:
        with Image.open(source if isinstance(source, Path) else io.BytesIO(source)) as image:
            width, height = image.size
            if width * height > limit:
                raise _too_large(name, limit, f"{width} x {height} pixels")
            yield image
    except Image.DecompressionBombError as err:
        raise _too_large(name, limit, _pillow_pixels(err)) from err


def _eight_bit(values: np.ndarray) -> np.ndarray:
    """One channel of 16-bit, 32-bit or float pixels as uint8, scaled by its value range.

    16-bit data (what ``I;16`` PNGs and most ``I`` images hold) keeps its top 8 bits; float data in
    [0, 1] is multiplied by 255; anything larger is scaled by its maximum. Pillow's own conversion
    clips every value above 255, which turns a 16-bit image almost white.
    """
    floating = np.issubdtype(values.dtype, np.floating)
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    top = float(values.max(initial=0.0))
    if floating and top <= 1.0:
        scale = 255.0
    elif top <= 255.0:
        scale = 1.0
    elif top <= 65535.0:
        scale = 1.0 / 257.0
    else:
        scale = 255.0 / top
    return np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)


def to_rgb(image: Image.Image) -> np.ndarray:
    """A PIL image of any mode Pillow reads, EXIF orientation applied, as RGB uint8 (H, W, 3).

    Grayscale, palette and CMYK images are converted to RGB; transparency is dropped (a palette
    with a transparent colour goes through RGBA so Pillow does not guess); 16-bit, 32-bit and float
    images are scaled to 8 bits by their value range (:func:`_eight_bit`), not clipped.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        gray = _eight_bit(np.asarray(image))
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode == "LAB":  # Pillow converts LAB to RGB only through a colour transform
        from PIL import ImageCms

        lab, srgb = ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB")
        transform = ImageCms.buildTransformFromOpenProfiles(lab, srgb, "LAB", "RGB")
        converted = ImageCms.applyTransform(image, transform)
        image = converted if converted is not None else image
    return np.asarray(image.convert("RGB"))


def read_image(path: Path) -> np.ndarray:
    """Decode an image file as RGB uint8 (H, W, 3) with its EXIF orientation applied.

    Raises:
        ImageTooLarge: more pixels than :func:`max_image_pixels` (nothing is decoded).
    """
    with open_image(path) as image:
        return to_rgb(image)


def load_image(source: ImageInput) -> np.ndarray:
    """An image as RGB uint8 (H, W, 3), read the way training reads it.

    Files and PIL images get their EXIF orientation applied and are converted to RGB (grayscale
    and palette images expanded, an alpha channel dropped). Arrays are taken as RGB: (H, W) and
    (H, W, 1) are expanded, a fourth channel dropped.

    Raises:
        DataError: a file is missing, cannot be decoded, or has too many pixels (one sentence naming it).
        ValueError: an array is not uint8 or not shaped like an image.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        problem = not_a_file(path)  # a named pipe or a device would block, or never end
        if problem is not None:
            raise DataError(f"image {path} {problem}")
        try:
            return read_image(path)
        except (ImageTooLarge, ConfigError):
            raise
        except READ_ERRORS as err:
            raise DataError(f"cannot read image {path}: {err}") from err
    if isinstance(source, Image.Image):
        return to_rgb(source)
    array = np.asarray(source)
    if array.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8 RGB, not {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or 0 in array.shape:
        raise ValueError(f"image arrays must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), not {array.shape}")
    if array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    return array[:, :, :3]


def to_model_image(pixels: np.ndarray, image_format: str) -> torch.Tensor:
    """An RGB uint8 (H, W, 3) image as the model's input: (C, H, W) uint8 in ``image_format`` order."""
    import cv2
    import torch

    if image_format not in CHANNEL_ORDERS:
        raise ValueError(f"image_format must be 'BGR' or 'RGB', not '{image_format}'")
    # OpenCV writes each channel out in one pass: 0.6 ms for an 800 x 1066 image, where numpy's
    # strided transpose copy takes 1.1 ms, on every image a loader worker prepares.
    planes = cv2.split(np.ascontiguousarray(pixels))
    return torch.from_numpy(np.stack(planes[::-1] if image_format == "BGR" else planes))
