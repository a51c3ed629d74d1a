"""Inference on images from Python: a trained checkpoint in, boxes in original pixels out.

Example::

    from detlit.inference.predictor import Predictor

    predictor = Predictor.from_checkpoint("runs/sample/version_0/checkpoints/last.ckpt")
    prediction = predictor("photo.jpg")  # one image in, one Prediction out
    for box, name, score in zip(prediction.boxes, prediction.class_names, prediction.scores):
        print(name, score, box)
    predictions = predictor(["a.jpg", "b.png", pil_image, rgb_array])  # a list in, a list out

Images are read and resized exactly as validation reads and resizes them (EXIF orientation
applied, converted to RGB, detlit's :func:`~detlit.data.transforms.eval_transform`), so the scores
mean what the validation metrics and the checkpoint's score thresholds measured. With
``resize="detectron2"`` the resize is detectron2's own (PIL bilinear, as in its
``DefaultPredictor``) instead. The two agree exactly on images already at the test size; where
an image is scaled down they differ (on the sample images, halved: by 1.4 grey levels on
average and up to 34 at sharp edges), because OpenCV's bilinear resize samples the two nearest
pixels per axis while PIL's widens its filter to every pixel under the output pixel. With the
same resize, predictions equal those of ``DefaultPredictor`` on the same weights.

Images are batched only with others of the same resized shape: detectron2 pads a batch to its
largest image, and the padding would change the features, so a prediction never depends on
which other images share its batch.
"""

from __future__ import annotations

import logging
import math
import pickle
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias, get_args, overload

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from detlit.compat import D2ResizeShortestEdge
from detlit.data.dataset import read_image
from detlit.data.transforms import eval_transform
from detlit.errors import ConfigError, DataError, WeightsError
from detlit.evaluation.drawing import draw_predictions
from detlit.model.module import DetectionModule

log = logging.getLogger(__name__)

ImageInput: TypeAlias = str | Path | Image.Image | np.ndarray
Precision: TypeAlias = Literal["32", "bf16", "16"]
Resize: TypeAlias = Literal["detlit", "detectron2"]
DEFAULT_SCORE_THRESHOLD = 0.5
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "16": torch.float16}


def load_image(source: ImageInput) -> np.ndarray:
    """An image as RGB uint8 (H, W, 3), read the way training reads it.

    Files and PIL images get their EXIF orientation applied and are converted to RGB (grayscale
    and palette images expanded, an alpha channel dropped, as :func:`detlit.data.dataset.read_image`
    does). Arrays are taken as RGB: (H, W) and (H, W, 1) are expanded, a fourth channel dropped.

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
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
            raise DataError(f"cannot read image {path}: {err}") from err
    if isinstance(source, Image.Image):
        return np.asarray(ImageOps.exif_transpose(source).convert("RGB"))
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


@dataclass
class Prediction:
    """The detections of one image, in its original pixels (after EXIF orientation).

    Attributes:
        boxes: (N, 4) float32 XYXY.
        scores: (N,) float32, highest first.
        labels: (N,) int64 contiguous class labels.
        class_names: class name of each detection.
        category_ids: original COCO category id of each detection.
        height: image height.
        width: image width.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    category_ids: list[int]
    height: int
    width: int

    def __len__(self) -> int:
        return len(self.scores)

    def draw(self, image: np.ndarray) -> np.ndarray:
        """The image (RGB uint8, original size) with these detections drawn on it."""
        known = dict(zip(self.labels.tolist(), self.class_names, strict=True))
        names = [known.get(label, str(label)) for label in range(max(known, default=-1) + 1)]
        return draw_predictions(image, self.boxes, self.labels, self.scores, names)


@contextmanager
def _score_floor(model: Any, floor: float) -> Iterator[None]:
    """Let the box head keep detections down to ``floor`` (detectron2 drops those below its
    ``SCORE_THRESH_TEST``, 0.05 in the model zoo, before NMS); restore it afterwards."""
    predictor = model.roi_heads.box_predictor
    saved = predictor.test_score_thresh
    predictor.test_score_thresh = min(saved, floor)
    try:
        yield
    finally:
        predictor.test_score_thresh = saved


class Predictor:
    """A trained detector on images: files, PIL images or RGB arrays, one or a list.

    Args:
        module: the trained model; put in eval mode on ``device``.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        score_threshold: keep detections scoring at least this, in every class. By default the
            per-class thresholds that validation found best (saved in the checkpoint), else
            :data:`DEFAULT_SCORE_THRESHOLD`.
        precision: ``32``, or ``bf16`` / ``16`` for mixed precision (torch.autocast).
        batch_size: images per forward pass.
        resize: ``detlit`` (OpenCV, as in training and validation) or ``detectron2`` (PIL, as
            detectron2's DefaultPredictor); see the module docstring.

    Raises:
        ConfigError: an unknown precision or resize, an unavailable device, or precision the
            device cannot run.
    """

    def __init__(
        self,
        module: DetectionModule,
        device: str = "cpu",
        score_threshold: float | None = None,
        precision: Precision = "32",
        batch_size: int = 4,
        resize: Resize = "detlit",
    ):
        if precision not in get_args(Precision):
            raise ConfigError(f"precision '{precision}' is unknown; use one of {', '.join(get_args(Precision))}")
        if resize not in get_args(Resize):
            raise ConfigError(f"resize '{resize}' is unknown; use one of {', '.join(get_args(Resize))}")
        if batch_size < 1:
            raise ConfigError(f"batch_size is {batch_size}; use 1 or more")
        self.device = _device(device)
        self.precision = precision
        _check_precision(self.device, precision)
        self.module = module.to(self.device).eval()
        self.label_map = module.label_map
        self.batch_size = batch_size
        self.resize = resize
        self.image_format: str = module.cfg.INPUT.FORMAT
        hp = module.hparams
        self.min_size, self.max_size = int(hp["min_size_test"]), int(hp["max_size_test"])
        self._transform = eval_transform(self.min_size, self.max_size)
        self.score_thresholds = self._thresholds(score_threshold, getattr(module, "score_thresholds", None))

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str = "cpu",
        score_threshold: float | None = None,
        precision: Precision = "32",
        batch_size: int = 4,
        resize: Resize = "detlit",
    ) -> Predictor:
        """A predictor for a detlit checkpoint (``.ckpt``); the other arguments as for the class.

        Raises:
            WeightsError: the file is missing or is not a detlit checkpoint.
        """
        path = Path(path)
        if not path.is_file():
            raise WeightsError(f"checkpoint {path} does not exist; pass a .ckpt file of a training run")
        try:
            module = DetectionModule.load_from_checkpoint(path, map_location="cpu")
        except (KeyError, TypeError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
            raise WeightsError(
                f"{path} is not a detlit checkpoint ({type(err).__name__}: {err}); pass a .ckpt file written by "
                "python -m detlit.fit"
            ) from err
        return cls(module, device, score_threshold, precision, batch_size, resize)

    @property
    def class_names(self) -> list[str]:
        return list(self.label_map.names)

    def _thresholds(self, given: float | None, saved: Sequence[float] | None) -> np.ndarray:
        classes = self.label_map.num_classes
        if given is not None:
            if not math.isfinite(given) or not 0.0 <= given <= 1.0:
                raise ConfigError(f"score threshold {given} is not between 0 and 1")
            return np.full(classes, given, dtype=np.float64)
        if saved is not None:
            if len(saved) != classes:
                raise WeightsError(f"the checkpoint holds {len(saved)} score thresholds for {classes} classes")
            log.info("score thresholds from the checkpoint: %s", _describe(self.class_names, saved))
            return np.asarray(saved, dtype=np.float64)
        return np.full(classes, DEFAULT_SCORE_THRESHOLD, dtype=np.float64)

    def preprocess(self, image: np.ndarray) -> dict[str, Any]:
        """The detectron2 input dict of an RGB uint8 image: resized, in the model's channel order."""
        height, width = image.shape[:2]
        if self.resize == "detlit":
            no_boxes = np.zeros((0, 4), dtype=np.float32)
            resized = self._transform(image=image, bboxes=no_boxes, labels=[], crowd=[])["image"]
        else:
            resize = D2ResizeShortestEdge([self.min_size, self.min_size], self.max_size)
            resized = resize.get_transform(image).apply_image(image)
        if self.image_format == "BGR":
            resized = resized[:, :, ::-1]
        tensor = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        return {"image": tensor, "height": height, "width": width}

    @overload
    def __call__(self, images: ImageInput) -> Prediction: ...

    @overload
    def __call__(self, images: list[ImageInput] | tuple[ImageInput, ...]) -> list[Prediction]: ...

    def __call__(self, images: ImageInput | list[ImageInput] | tuple[ImageInput, ...]) -> Prediction | list[Prediction]:
        """Predict one image (returns a :class:`Prediction`) or a list (returns a list).

        Raises:
            DataError: an image file cannot be read.
        """
        if isinstance(images, (str, Path, Image.Image, np.ndarray)):
            return self.predict([load_image(images)])[0]
        return self.predict([load_image(image) for image in images])

    def predict(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """Predictions for RGB uint8 arrays (as :func:`load_image` returns them), in their order."""
        inputs = [self.preprocess(image) for image in images]
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index, item in enumerate(inputs):
            groups[tuple(item["image"].shape[1:])].append(index)
        results: list[Prediction | None] = [None] * len(inputs)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                for index, output in zip(chunk, self._forward([inputs[i] for i in chunk]), strict=True):
                    results[index] = output
        return [r for r in results if r is not None]

    def _autocast(self) -> Any:
        if self.precision == "32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[self.precision])

    @torch.no_grad()
    def _forward(self, batch: list[dict[str, Any]]) -> list[Prediction]:
        floor = float(self.score_thresholds.min())
        with _score_floor(self.module.model, floor), self._autocast():
            outputs = self.module(batch)
        return [self._prediction(output["instances"].to("cpu")) for output in outputs]

    def _prediction(self, instances: Any) -> Prediction:
        labels = instances.pred_classes.numpy().astype(np.int64)
        scores = instances.scores.float().numpy()
        keep = scores >= self.score_thresholds[labels]
        labels, scores = labels[keep], scores[keep]
        height, width = instances.image_size
        return Prediction(
            boxes=instances.pred_boxes.tensor.float().numpy()[keep].reshape(-1, 4),
            scores=scores,
            labels=labels,
            class_names=[self.label_map.names[label] for label in labels.tolist()],
            category_ids=[self.label_map.category_id(label) for label in labels.tolist()],
            height=int(height),
            width=int(width),
        )


def _describe(names: Sequence[str], thresholds: Sequence[float]) -> str:
    return ", ".join(f"{name} {value:.3g}" for name, value in zip(names, thresholds, strict=True))


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"device '{name}' is not a torch device; use cpu or cuda") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' asked for, but torch sees no CUDA GPU here; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device '{name}' is not supported; use cpu or cuda")
    return device


def _check_precision(device: torch.device, precision: str) -> None:
    if precision == "32":
        return
    if not torch.amp.is_autocast_available(device.type):
        raise ConfigError(f"mixed precision is not available on {device.type}; use precision 32")
    if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError("this GPU cannot compute in bfloat16; use precision 16 or 32")
