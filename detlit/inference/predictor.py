"""The one inference path: a trained model over images, in shape-grouped batches, boxes in original pixels.

Example::

    from detlit import Predictor

    predictor = Predictor.from_checkpoint("runs/sample/version_0/checkpoints/last.ckpt")
    prediction = predictor("photo.jpg")  # one image in, one Prediction out
    for box, name, score in zip(prediction.boxes, prediction.class_names, prediction.scores):
        print(name, score, box)
    predictions = predictor(["a.jpg", "b.png", pil_image, rgb_array])  # a list in, a list out

``python -m detlit.predict``, ``python -m detlit.evaluate`` and the report's example images all run
models through :class:`Predictor`; so a number, a drawing and a results file of one model agree.

Images are read and resized exactly as validation reads and resizes them (EXIF orientation
applied, converted to RGB, :func:`~detlit.data.transforms.eval_transform`, then
:func:`~detlit.data.images.to_model_image`), so the scores mean what the validation metrics and
the checkpoint's score thresholds measured. With ``resize="detectron2"`` the resize is
detectron2's own (PIL bilinear, as in its ``DefaultPredictor``) instead. The two agree exactly on
images already at the test size; where an image is scaled down they differ (on the sample images,
halved: by 1.4 grey levels on average and up to 34 at sharp edges), because OpenCV's bilinear
resize samples the two nearest pixels per axis while PIL's widens its filter to every pixel under
the output pixel. With the same resize, predictions equal those of ``DefaultPredictor`` on the same
weights.

Images are batched only with others of the same resized shape
(:func:`~detlit.data.samplers.shape_batches`), so a prediction never depends on which other images
share its batch.

The model itself is a :class:`~detlit.inference.runtimes.Runtime`: a checkpoint in PyTorch, or a
model exported by ``python -m detlit.export`` (TorchScript, ONNX). Every runtime returns raw
detections in the resized image's pixels; :func:`~detlit.model.detections.postprocess` scales them
to the original image exactly as detectron2's ``detector_postprocess`` does, for every runtime alike
and as validation does, and the per-class thresholds come after it. ``Predictor.load(path)`` takes
either kind of file.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, get_args, overload

import numpy as np
import torch
from PIL import Image

from detlit.common.devices import AUTO
from detlit.common.ranges import MAX_TILES_PER_IMAGE
from detlit.data.images import ImageInput, load_image, to_model_image
from detlit.data.samplers import shape_batches
from detlit.data.transforms import eval_transform
from detlit.data.windows import Window
from detlit.data.windows import count as count_tiles
from detlit.errors import ConfigError, DataError, WeightsError
from detlit.inference.exported import is_exported
from detlit.inference.facts import ModelFacts
from detlit.inference.runtimes import EagerRuntime, LoadedCheckpoint, Precision, Runtime, load_exported
from detlit.inference.slicing import Slicing, concatenated, merge_detections, shifted
from detlit.model.detections import Detections, postprocess
from detlit.pictures.drawing import draw_predictions

if TYPE_CHECKING:
    from detlit.data.coco import LabelMap
    from detlit.model.module import DetectionModule

log = logging.getLogger(__name__)

Resize: TypeAlias = Literal["detlit", "detectron2"]
DEFAULT_SCORE_THRESHOLD = 0.5
CHUNK_BATCHES = 4  # batches of files read ahead, so images of one size can share a batch


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

    def metric_input(self) -> dict[str, torch.Tensor]:
        """The detections as :class:`~detlit.evaluation.metric.DetectionMetrics` takes them."""
        tensors = (torch.as_tensor(values) for values in (self.boxes, self.scores, self.labels))
        return Detections(*tensors).metric_input()

    def draw(self, image: np.ndarray) -> np.ndarray:
        """The image (RGB uint8, original size) with these detections drawn on it."""
        known = dict(zip(self.labels.tolist(), self.class_names, strict=True))
        names = [known.get(label, str(label)) for label in range(max(known, default=-1) + 1)]
        return draw_predictions(image, self.boxes, self.labels, self.scores, names)


@dataclass
class FilePrediction:
    """One image file's outcome: its pixels and prediction, or why it could not be read."""

    index: int
    pixels: np.ndarray | None = None
    prediction: Prediction | None = None
    error: DataError | None = None


class Predictor:
    """A trained detector on images: files, PIL images or RGB arrays, one or a list.

    Args:
        model: the trained model (put in eval mode on ``device``), or a
            :class:`~detlit.inference.runtimes.Runtime` (an exported model: see :meth:`from_exported`).
        device: ``auto`` (a CUDA GPU when there is one), ``cpu``, ``cuda`` or ``cuda:N``; for a
            runtime, the device it was made for.
        score_threshold: keep detections scoring at least this, in every class. By default the
            per-class thresholds that validation found best (saved in the checkpoint), else
            :data:`DEFAULT_SCORE_THRESHOLD`.
        all_detections: keep every detection the model outputs (down to its own test threshold,
            ``MODEL.ROI_HEADS.SCORE_THRESH_TEST``), as evaluation needs; ``score_threshold`` must
            then be left out.
        precision: ``32``, or ``bf16`` / ``16`` for mixed precision (torch.autocast; checkpoints only).
        batch_size: images per forward pass.
        resize: ``detlit`` (OpenCV, as in training and validation) or ``detectron2`` (PIL, as
            detectron2's DefaultPredictor); see the module docstring.
        slicing: run the model on overlapping tiles of each image at full resolution and merge
            their detections (:class:`~detlit.inference.slicing.Slicing`); None: the whole image.

    Raises:
        ConfigError: an unknown precision or resize, an unavailable device, precision the device
            or runtime cannot run, or a threshold outside 0..1.
    """

    def __init__(
        self,
        model: DetectionModule | Runtime,
        device: str = AUTO,
        score_threshold: float | None = None,
        all_detections: bool = False,
        precision: Precision = "32",
        batch_size: int = 4,
        resize: Resize = "detlit",
        slicing: Slicing | None = None,
    ):
        if precision not in get_args(Precision):
            raise ConfigError(f"precision '{precision}' is unknown; use one of {', '.join(get_args(Precision))}")
        if resize not in get_args(Resize):
            raise ConfigError(f"resize '{resize}' is unknown; use one of {', '.join(get_args(Resize))}")
        if batch_size < 1:
            raise ConfigError(f"batch size is {batch_size}; use 1 or more")
        if all_detections and score_threshold is not None:
            raise ConfigError("a score threshold and all detections exclude each other; give one of them")
        if isinstance(model, Runtime):
            if precision != "32":
                raise ConfigError(f"a {model.name} model runs in precision 32; mixed precision is for checkpoints")
            self.runtime: Runtime = model
        else:
            self.runtime = EagerRuntime(model, device, precision)
        self.device = self.runtime.device
        self.precision = precision
        facts: ModelFacts = self.runtime.facts
        self.facts = facts
        self.label_map: LabelMap = facts.label_map
        self.batch_size = batch_size
        self.resize = resize
        self.slicing = slicing
        self.image_format = facts.image_format
        self.min_size, self.max_size = facts.min_size, facts.max_size
        self.model_threshold = facts.score_floor
        self.saved_thresholds: list[float] | None = (
            None if facts.score_thresholds is None else list(facts.score_thresholds)
        )
        self._transform = eval_transform(self.min_size, self.max_size)
        self.thresholds_from = ""  # where the score thresholds came from, in words (settings(), /info)
        if all_detections:
            self._thresholds = np.full(self.label_map.num_classes, self.model_threshold, dtype=np.float64)
            self.thresholds_from = "none: every detection the model keeps"
        else:
            self._thresholds = self._choose_thresholds(score_threshold)
        below = float(self._thresholds.min()) < self.model_threshold
        if self.runtime.fixed_floor and below and not all_detections:
            log.warning(
                "the %s model keeps no detection scoring %g or less (its score floor, fixed at export): lower "
                "thresholds act as %g",
                self.runtime.name,
                self.model_threshold,
                self.model_threshold,
            )

    @classmethod
    def load(cls, path: str | Path, **kwargs: Any) -> Predictor:
        """A predictor for a checkpoint (``.ckpt``) or an exported model (``.torchscript``, ``.onnx``)."""
        path = Path(path)
        return cls.from_exported(path, **kwargs) if is_exported(path) else cls.from_checkpoint(path, **kwargs)

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs: Any) -> Predictor:
        """A predictor for a detlit checkpoint (``.ckpt``); keyword arguments as for the class.

        Raises:
            WeightsError: the file is missing, not whole (a checksum fails) or not a detlit checkpoint
                (:meth:`LoadedCheckpoint.read <detlit.inference.runtimes.LoadedCheckpoint.read>`).
        """
        return cls(LoadedCheckpoint.read(Path(path)).module, **kwargs)

    @classmethod
    def from_exported(cls, path: str | Path, device: str = AUTO, **kwargs: Any) -> Predictor:
        """A predictor for a model written by ``python -m detlit.export`` (``.torchscript``, ``.onnx`` or ``.xml``,
        with its metadata json beside it); keyword arguments as for the class.

        Raises:
            WeightsError: the file or its metadata is missing or unreadable.
            ConfigError: the device cannot run the model, or onnxruntime is missing.
        """
        return cls(load_exported(Path(path), device), **kwargs)

    def settings(self) -> dict[str, Any]:
        """How this predictor runs its model, as predictions.json, metrics.json and the service's
        ``/info`` record it: the runtime, the resize and the test size, the slicing (None: whole
        images), and where the score thresholds came from."""
        return {
            "runtime": self.runtime.name,
            "resize": self.resize,
            "min_size_test": self.min_size,
            "max_size_test": self.max_size,
            "slicing": None if self.slicing is None else self.slicing.as_json(),
            "thresholds_from": self.thresholds_from,
        }

    @property
    def class_names(self) -> list[str]:
        return list(self.label_map.names)

    @property
    def score_thresholds(self) -> np.ndarray:
        """The score threshold of each class (a copy: thresholds are set when the predictor is made)."""
        return self._thresholds.copy()

    def _choose_thresholds(self, given: float | None) -> np.ndarray:
        classes = self.label_map.num_classes
        if given is not None:
            if not math.isfinite(given) or not 0.0 <= given <= 1.0:
                raise ConfigError(f"score threshold {given} is not between 0 and 1")
            self.thresholds_from = "the score threshold given"
            return np.full(classes, given, dtype=np.float64)
        saved = self.saved_thresholds
        holder = "the checkpoint" if self.runtime.name == "checkpoint" else f"the {self.runtime.name} model's metadata"
        if saved is not None:
            if len(saved) != classes:
                raise WeightsError(f"{holder} holds {len(saved)} score thresholds for {classes} classes")
            self.thresholds_from = f"{holder} (each class's F1-best score on the validation set)"
            log.info("score thresholds from %s: %s", holder, _describe(self.class_names, saved))
            return np.asarray(saved, dtype=np.float64)
        self.thresholds_from = f"the default {DEFAULT_SCORE_THRESHOLD:g}: {holder} holds none"
        return np.full(classes, DEFAULT_SCORE_THRESHOLD, dtype=np.float64)

    def preprocess(self, image: np.ndarray) -> dict[str, Any]:
        """The detectron2 input dict of an RGB uint8 image: resized, in the model's channel order."""
        height, width = image.shape[:2]
        if self.resize == "detlit":
            no_boxes = np.zeros((0, 4), dtype=np.float32)
            resized = self._transform(image=image, bboxes=no_boxes, labels=[], crowd=[])["image"]
        else:
            from detlit.compat import D2ResizeShortestEdge

            resize = D2ResizeShortestEdge([self.min_size, self.min_size], self.max_size)
            resized = resize.get_transform(image).apply_image(image)
        return {"image": to_model_image(resized, self.image_format), "height": height, "width": width}

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
        """Predictions for RGB uint8 arrays (as :func:`~detlit.data.images.load_image` returns them), in order."""
        if self.slicing is not None:
            return [self._prediction(self._sliced(image, self.slicing), *image.shape[:2]) for image in images]
        inputs = [self.preprocess(image) for image in images]
        detections = self._detections(inputs)
        return [
            self._prediction(found, int(item["height"]), int(item["width"]))
            for found, item in zip(detections, inputs, strict=True)
        ]

    @property
    def has_box_head(self) -> bool:
        """Whether :meth:`label_probabilities` can be asked: a checkpoint of an R-CNN (not an exported
        file, not a one-stage detector)."""
        return isinstance(self.runtime, EagerRuntime) and not self.runtime.module.is_dense

    def label_probabilities(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per image, what the model's box head says of given boxes (labelled ones, say): an (M, K + 1)
        array of class probabilities, the K classes in label order, then background.

        Args:
            images: RGB uint8 arrays, as for :meth:`predict`.
            boxes: per image, (M, 4) XYXY boxes in its original pixels.

        Raises:
            ConfigError: the model is an exported file or a one-stage detector (neither has a box
                head to ask), or slicing is on.
        """
        if not isinstance(self.runtime, EagerRuntime):
            raise ConfigError(
                f"class probabilities of given boxes need the checkpoint (.ckpt); a {self.runtime.name} model "
                "returns detections only"
            )
        if self.slicing is not None:
            raise ConfigError("class probabilities of given boxes are asked of whole images: load without slicing")
        inputs = [self.preprocess(image) for image in images]
        scaled = []
        for item, given in zip(inputs, boxes, strict=True):
            height, width = (int(v) for v in item["image"].shape[1:])
            scale = torch.tensor([width / item["width"], height / item["height"]] * 2, dtype=torch.float32)
            scaled.append(torch.as_tensor(np.asarray(given, np.float32).reshape(-1, 4)) * scale)
        shapes = [(int(item["image"].shape[1]), int(item["image"].shape[2])) for item in inputs]
        results: list[np.ndarray] = [np.zeros((0, 0))] * len(inputs)
        for batch in shape_batches(shapes, self.batch_size):
            found = self.runtime.class_probabilities([inputs[i]["image"] for i in batch], [scaled[i] for i in batch])
            for index, probabilities in zip(batch, found, strict=True):
                results[index] = probabilities.numpy().astype(np.float64)
        return results

    def _check_tiles(self, image: np.ndarray, path: Path) -> None:
        """Refuse, naming the file, an image that slicing would cut into more tiles than one image may take.

        Raises:
            DataError: more than :data:`~detlit.common.ranges.MAX_TILES_PER_IMAGE` tiles.
        """
        if self.slicing is None:
            return
        height, width = image.shape[:2]
        tiles = count_tiles(height, width, self.slicing.size, self.slicing.overlap)
        if tiles > MAX_TILES_PER_IMAGE:
            raise DataError(
                f"{path} is {width}x{height}: in tiles of {self.slicing.size} px (overlap {self.slicing.overlap:g}) "
                f"that is {tiles:,} tiles, more than {MAX_TILES_PER_IMAGE:,}; choose a larger --slice for it"
            )

    def _detections(self, inputs: Sequence[dict[str, Any]]) -> list[Detections]:
        """The detections of preprocessed images in their original pixels, down to the lowest class
        threshold; images of one resized shape share batches."""
        floor = float(self._thresholds.min())
        shapes = [(int(item["image"].shape[1]), int(item["image"].shape[2])) for item in inputs]
        results: list[Detections | None] = [None] * len(inputs)
        for batch in shape_batches(shapes, self.batch_size):
            raw = self.runtime([inputs[i]["image"] for i in batch], floor)
            for index, found in zip(batch, raw, strict=True):
                item = inputs[index]
                results[index] = postprocess(found, shapes[index], (int(item["height"]), int(item["width"])))
        return [r for r in results if r is not None]

    def _sliced(self, image: np.ndarray, slicing: Slicing) -> Detections:
        """One image's detections from its tiles (and the whole image, with ``full_image``), merged.

        Tiles are preprocessed and run a few batches at a time, so an image of thousands of tiles
        never holds more than those resized tiles in memory.
        """
        height, width = image.shape[:2]
        windows: list[Window | None] = list(slicing.windows(height, width))
        if slicing.full_image and len(windows) > 1:
            windows.append(None)  # the whole image, resized as without slicing
        parts = []
        chunk = self.batch_size * CHUNK_BATCHES
        for start in range(0, len(windows), chunk):
            part = windows[start : start + chunk]
            crops = [image if w is None else np.ascontiguousarray(image[w.y0 : w.y1, w.x0 : w.x1]) for w in part]
            found = self._detections([self.preprocess(crop) for crop in crops])
            parts += [d if w is None else shifted(d, w) for d, w in zip(found, part, strict=True)]
        return merge_detections(concatenated(parts), slicing)

    def predict_files(self, paths: Sequence[Path]) -> Iterator[FilePrediction]:
        """Predict image files a few batches at a time (so images of one size share batches);
        yield one :class:`FilePrediction` per file, in order. A file that cannot be read comes with
        its error, and the others go on."""
        chunk = self.batch_size * CHUNK_BATCHES
        for start in range(0, len(paths), chunk):
            outcomes = []
            for index in range(start, min(start + chunk, len(paths))):
                try:
                    pixels = load_image(paths[index])
                    self._check_tiles(pixels, paths[index])
                    outcomes.append(FilePrediction(index, pixels=pixels))
                except DataError as err:
                    outcomes.append(FilePrediction(index, error=err))
            readable = [o for o in outcomes if o.pixels is not None]
            predictions = self.predict([o.pixels for o in readable if o.pixels is not None])
            for outcome, prediction in zip(readable, predictions, strict=True):
                outcome.prediction = prediction
            yield from outcomes

    def _prediction(self, detections: Detections, height: int, width: int) -> Prediction:
        """A :class:`Prediction` of detections in the image's pixels: the per-class thresholds applied."""
        labels = detections.labels.numpy().astype(np.int64)
        scores = detections.scores.float().numpy()
        keep = scores >= self._thresholds[labels]
        labels, scores = labels[keep], scores[keep]
        return Prediction(
            boxes=detections.boxes.float().numpy()[keep].reshape(-1, 4),
            scores=scores,
            labels=labels,
            class_names=[self.label_map.names[label] for label in labels.tolist()],
            category_ids=[self.label_map.category_id(label) for label in labels.tolist()],
            height=height,
            width=width,
        )


def _describe(names: Sequence[str], thresholds: Sequence[float]) -> str:
    return ", ".join(f"{name} {value:.3g}" for name, value in zip(names, thresholds, strict=True))
