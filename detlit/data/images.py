"""Images in, model input out: the one way an image file, PIL image or array becomes what the model sees.

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

from pathlib import Path
from typing import TypeAlias

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from detlit.errors import DataError

ImageInput: TypeAlias = str | Path | Image.Image | np.ndarray
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
CHANNEL_ORDERS = ("BGR", "RGB")
READ_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError)


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
    """Decode an image file as RGB uint8 (H, W, 3) with its EXIF orientation applied."""
    with Image.open(path) as image:
        return to_rgb(image)


def load_image(source: ImageInput) -> np.ndarray:
    """An image as RGB uint8 (H, W, 3), read the way training reads it.

    Files and PIL images get their EXIF orientation applied and are converted to RGB (grayscale
    and palette images expanded, an alpha channel dropped). Arrays are taken as RGB: (H, W) and
    (H, W, 1) are expanded, a fourth channel dropped.

    Raises:
        DataError: a file is missing or cannot be decoded (one sentence naming it).
        ValueError: an array is not uint8 or not shaped like an image.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise DataError(f"image {path} does not exist")
        try:
            return read_image(path)
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
    if image_format not in CHANNEL_ORDERS:
        raise ValueError(f"image_format must be 'BGR' or 'RGB', not '{image_format}'")
    if image_format == "BGR":
        pixels = pixels[:, :, ::-1]
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
