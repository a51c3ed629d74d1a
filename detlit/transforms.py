"""Stage [3]: named Albumentations pipelines; boxes follow the image through ``BboxParams``.

Boxes enter and leave every pipeline as ``pascal_voc`` (XYXY absolute pixels), the format
detectron2 uses, with their contiguous labels in the ``labels`` field and crowd flags in ``crowd``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np

from detlit.errors import ConfigError

PRESETS = ("none", "flip")


def resized_shape(height: int, width: int, short: int, max_size: int) -> tuple[int, int]:
    """Output (height, width) of detectron2's ResizeShortestEdge for one short-edge size."""
    scale = short / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


class ResizeShortestEdge(A.DualTransform):
    """Scale the short edge to a size drawn from ``min_sizes``, the long edge capped at ``max_size``.

    The same rule, sizes and rounding as detectron2's ``ResizeShortestEdge`` (sample style
    "choice"). Boxes are kept normalised by Albumentations, so they need no change here.
    """

    def __init__(self, min_sizes: Sequence[int], max_size: int, interpolation: int = cv2.INTER_LINEAR, p: float = 1.0):
        super().__init__(p=p)
        if not min_sizes:
            raise ValueError("min_sizes must name at least one size")
        self.min_sizes = [int(s) for s in min_sizes]
        self.max_size = int(max_size)
        self.interpolation = interpolation

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        short = self.min_sizes[0] if len(self.min_sizes) == 1 else self.py_random.choice(self.min_sizes)
        return {"out_shape": resized_shape(height, width, short, self.max_size)}

    def apply(self, img: np.ndarray, out_shape: tuple[int, int], **params: Any) -> np.ndarray:
        if img.shape[:2] == tuple(out_shape):
            return img
        return cv2.resize(img, (out_shape[1], out_shape[0]), interpolation=self.interpolation)

    def apply_to_bboxes(self, bboxes: np.ndarray, **params: Any) -> np.ndarray:
        return bboxes

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("min_sizes", "max_size", "interpolation")


def _compose(steps: list[Any]) -> A.Compose:
    return A.Compose(
        steps,
        bbox_params=A.BboxParams(
            format="pascal_voc", label_fields=["labels", "crowd"], clip=True, filter_invalid_bboxes=True
        ),
    )


def train_transform(preset: str, min_sizes: Sequence[int], max_size: int) -> A.Compose:
    """The training pipeline of a named preset.

    Args:
        preset: ``none`` (resize only) or ``flip`` (resize and horizontal flip).
        min_sizes: shortest-edge sizes, one drawn per image.
        max_size: cap on the longest edge.

    Raises:
        ConfigError: ``preset`` is not a known name (a ValueError).
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown augmentation preset '{preset}'; known presets: {', '.join(PRESETS)}")
    steps: list[Any] = [ResizeShortestEdge(min_sizes, max_size)]
    if preset == "flip":
        steps.append(A.HorizontalFlip(p=0.5))
    return _compose(steps)


def eval_transform(min_size: int, max_size: int) -> A.Compose:
    """The deterministic resize used for validation, test and prediction."""
    return _compose([ResizeShortestEdge([min_size], max_size)])
