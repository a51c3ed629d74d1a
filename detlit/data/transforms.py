"""Stage 3, augmentation and resizing: named Albumentations pipelines; boxes follow the image through ``BboxParams``.

Boxes enter and leave every pipeline as ``pascal_voc`` (XYXY absolute pixels), the format
detectron2 uses, with their contiguous labels in the ``labels`` field and crowd flags in ``crowd``.

Every pipeline starts with :class:`ResizeShortestEdge` and drops, after each step, the boxes
that keep less than :data:`MIN_VISIBILITY` of their area inside the image or cover less than
:data:`MIN_AREA` pixels, so crops and affine moves never leave slivers of objects behind.

Training presets (:data:`PRESETS`):

* ``none``: resize only;
* ``flip``: resize and horizontal flip;
* ``default``: ``flip`` and mild colour jitter (the resize is already multi-scale: it draws one
  of several shortest-edge sizes per image);
* ``strong``: ``default``, a random crop that keeps one whole box, a mild affine move, and now
  and then blur or noise.

Instead of a preset, a list of Albumentations transforms can be given (in YAML, as
``class_path``/``init_args`` entries); the resize is put before them and the box rules around them.
"""

from __future__ import annotations

import copy
import importlib
import json
import math
from collections.abc import Sequence
from typing import Any, TypeAlias

import albumentations as A
import cv2
import numpy as np
from albumentations.augmentations.crops.transforms import BaseCrop

from detlit.common.safe_yaml import load_yaml
from detlit.errors import ConfigError

PRESETS = ("none", "flip", "default", "strong")

MIN_VISIBILITY = 0.3
"""A box keeping less than this fraction of its area inside the image after a step is dropped.

Low enough to keep objects a crop cuts in half, high enough to drop slivers that would teach
the detector to fire on object edges."""

MIN_AREA = 4.0
"""A box covering less than this many pixels (in the transformed image) is dropped: a
2x2-pixel object cannot be learned and only adds noise to the box regression."""

Step: TypeAlias = A.BasicTransform | A.BaseCompose
"""One step of a custom pipeline: a transform, or a composition such as ``A.OneOf``."""


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


class RandomCropKeepingABox(BaseCrop):
    """Crop a window of a random fraction of each side that contains one whole, randomly chosen box.

    Albumentations' ``AtLeastOneBBoxRandomCrop`` needs one fixed crop size, which images resized
    to different shapes cannot share, so the size is drawn relative to each image here. Both sides
    are scaled by the same factor, so the image keeps its aspect ratio (and its aspect-ratio group).
    Other boxes may be cut; the pipeline's ``min_visibility`` decides which of them stay. A box
    larger than the window is kept in part; an image without boxes is cropped anywhere.

    Args:
        scale: range of the window's side as a fraction of the image's side.
        p: probability of cropping.
    """

    def __init__(self, scale: tuple[float, float] = (0.6, 1.0), p: float = 1.0):
        super().__init__(p=p)
        low, high = scale
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"scale must satisfy 0 < low <= high <= 1, not {scale}")
        self.scale = (float(low), float(high))

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        factor = self.py_random.uniform(*self.scale)
        crop_h, crop_w = max(1, round(height * factor)), max(1, round(width * factor))
        x1, y1, x2, y2 = 0.0, 0.0, float(width), float(height)  # no box: the window may go anywhere
        bboxes = data.get("bboxes")
        if bboxes is not None and len(bboxes) > 0:
            # Boxes arrive normalised to [0, 1], with encoded label columns after the first four.
            chosen = np.asarray(bboxes[self.py_random.randrange(len(bboxes))][:4], dtype=np.float64)
            x1, y1, x2, y2 = chosen * np.array([width, height, width, height])
        x0 = self._start(x1, x2, crop_w, width)
        y0 = self._start(y1, y2, crop_h, height)
        return {"crop_coords": (x0, y0, x0 + crop_w, y0 + crop_h)}

    def _start(self, low: float, high: float, window: int, size: int) -> int:
        """A random start of a ``window``-pixel span inside ``size`` pixels that covers [low, high].

        When [low, high] is longer than the window, the window stays inside it instead.
        """
        first, last = high - window, low
        if first > last:
            first, last = last, first
        first_px = min(max(math.ceil(first), 0), size - window)
        last_px = min(max(math.floor(last), first_px), size - window)
        return self.py_random.randint(first_px, last_px)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scale",)


def _preset_steps(preset: str) -> list[Step]:
    steps: list[Step] = []
    if preset in ("flip", "default", "strong"):
        steps.append(A.HorizontalFlip(p=0.5))
    if preset in ("default", "strong"):
        steps.append(A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.5))
    if preset == "strong":
        steps += [
            RandomCropKeepingABox(scale=(0.6, 1.0), p=0.5),
            A.Affine(scale=(0.9, 1.1), keep_ratio=True, translate_percent=(-0.05, 0.05), rotate=(-5, 5), p=0.3),
            A.OneOf(
                [A.GaussianBlur(blur_limit=(3, 5), sigma_limit=(0.1, 1.5)), A.GaussNoise(std_range=(0.02, 0.05))], p=0.2
            ),
        ]
    return steps


def _compose(steps: Sequence[Step], min_visibility: float, min_area: float) -> A.Compose:
    return A.Compose(
        list(steps),
        bbox_params=A.BboxParams(
            format="pascal_voc",
            label_fields=["labels", "crowd"],
            min_visibility=min_visibility,
            min_area=min_area,
            clip=True,
            filter_invalid_bboxes=True,
        ),
    )


def train_transform(
    augment: str | Sequence[Step],
    min_sizes: Sequence[int],
    max_size: int,
    min_visibility: float = MIN_VISIBILITY,
    min_area: float = MIN_AREA,
) -> A.Compose:
    """The training pipeline: the multi-scale resize, then a preset's steps or the given ones.

    Args:
        augment: a preset name from :data:`PRESETS`, or Albumentations transforms to run after
            the resize (copied, so one list can serve several pipelines).
        min_sizes: shortest-edge sizes, one drawn per image.
        max_size: cap on the longest edge.
        min_visibility: boxes keeping less of their area inside the image are dropped.
        min_area: boxes covering fewer pixels are dropped.

    Raises:
        ConfigError: ``augment`` is neither a known preset nor a list of transforms (a ValueError).
    """
    if isinstance(augment, str):
        if augment.lstrip()[:1] in ("[", "{"):
            raise ConfigError(unbuilt_steps(augment))
        if augment not in PRESETS:
            raise ConfigError(f"unknown augmentation preset '{augment}'; known presets: {', '.join(PRESETS)}")
        steps = _preset_steps(augment)
    else:
        for position, step in enumerate(augment, start=1):
            if not isinstance(step, (A.BasicTransform, A.BaseCompose)):
                raise ConfigError(
                    f"augmentation step {position} is a {type(step).__name__}, not an Albumentations transform; "
                    "give each step as a class_path (such as albumentations.HorizontalFlip) with its init_args"
                )
        steps = copy.deepcopy(list(augment))
    return _compose([ResizeShortestEdge(min_sizes, max_size), *steps], min_visibility, min_area)


def unbuilt_steps(text: str) -> str:
    """Why a list of transforms given as text could not be built (the config parser then keeps the text)."""
    try:
        steps = load_yaml(text, f"data.augment {text!r}")
    except ConfigError as err:
        return str(err)
    for position, step in enumerate(steps if isinstance(steps, list) else [steps], start=1):
        path = step.get("class_path") if isinstance(step, dict) else None
        if not isinstance(path, str) or "." not in path:
            return (
                f"data.augment step {position} has no class_path; give each step as {{class_path: ..., init_args: ...}}"
            )
        module, _, name = path.rpartition(".")
        try:
            found = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            return (
                f"data.augment step {position}: {path} does not exist; name an Albumentations transform such as "
                "albumentations.HorizontalFlip"
            )
        if not (isinstance(found, type) and issubclass(found, (A.BasicTransform, A.BaseCompose))):
            return f"data.augment step {position}: {path} is not an Albumentations transform"
    return (
        f"data.augment {text!r} could not be built: check each step's init_args against its transform "
        "(python -m detlit.fit --print_config shows the list as parsed)"
    )


def eval_transform(
    min_size: int, max_size: int, min_visibility: float = MIN_VISIBILITY, min_area: float = MIN_AREA
) -> A.Compose:
    """The deterministic resize used for validation, test and prediction."""
    return _compose([ResizeShortestEdge([min_size], max_size)], min_visibility, min_area)


def describe_augment(augment: str | Sequence[Step]) -> str | list[dict[str, Any]]:
    """``augment`` as plain data for hyper-parameters.

    A preset stays its name; each step of a custom pipeline becomes its Albumentations
    ``to_dict`` description (loadable with ``A.from_dict``). Transform objects cannot stay in
    hyper-parameters: checkpoints are read with ``torch.load(weights_only=True)``, which refuses
    them, and ``hparams.yaml`` cannot hold them either.
    """
    if isinstance(augment, str):
        return augment
    described = []
    for step in augment:
        try:
            description: Any = A.to_dict(step)["transform"]
        except (NotImplementedError, TypeError, ValueError, AttributeError):
            description = {"__class_fullname__": type(step).__qualname__, "repr": repr(step)}
        # A JSON round trip turns tuples and numpy scalars into plain lists and numbers.
        described.append(json.loads(json.dumps(description, default=str)))
    return described
