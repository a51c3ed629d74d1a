"""The report's example images: a checkpoint on validation images, each image judged by the one matcher.

:func:`run_examples` runs the model (through :class:`~detlit.inference.predictor.Predictor`, every
detection it keeps) on up to :data:`MAX_IMAGES` evenly spaced validation images and evaluates them
with :class:`~detlit.evaluation.metric.DetectionMetrics`. :func:`judge` counts each image's true
positives, false positives and missed objects with :func:`~detlit.evaluation.matching.match_image`,
at each class's score threshold: COCOeval's rules, so the images' counts add up to the metric's
counts at the same thresholds and IoU. :func:`pick_examples` chooses the best and worst.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from detlit.data.coco import CocoDataset, ImageRecord
from detlit.data.images import load_image
from detlit.data.targets import eval_target
from detlit.evaluation.evaluation import Evaluation
from detlit.evaluation.matching import Match, match_image
from detlit.evaluation.metric import DetectionMetrics
from detlit.pictures.drawing import draw_comparison

log = logging.getLogger(__name__)

MAX_IMAGES = 100  # validation images the model runs on for the example images
EXAMPLES = 4  # best and worst images shown, each
EXAMPLE_SIZE = 960  # pixels: drawn examples are scaled to fit this square (labels of 21 px; click for full size)
MAX_UPSCALE = 2.0  # ... a small image at most this much larger: beyond, the page grows and shows nothing more
MATCH_IOU = 0.5  # the IoU at which the report's images are judged, as its per-class numbers


@dataclass
class ImageOutcome:
    """Predictions on one validation image, judged at the per-class score thresholds.

    ``boxes``, ``scores`` and ``labels`` are the detections at or above their class's threshold;
    ``match`` is their outcome (COCOeval's rules at :data:`MATCH_IOU`).
    """

    record: ImageRecord
    boxes: np.ndarray  # XYXY original pixels
    scores: np.ndarray
    labels: np.ndarray
    gt_boxes: np.ndarray  # XYXY original pixels, crowd regions included
    gt_labels: np.ndarray
    gt_crowd: np.ndarray
    match: Match

    @property
    def tp(self) -> int:
        return int(self.match.tp.sum())

    @property
    def fp(self) -> int:
        return int(self.match.fp.sum())

    @property
    def fn(self) -> int:
        return int(self.match.missed().sum())

    @property
    def errors(self) -> int:
        return self.fp + self.fn

    @property
    def f1(self) -> float:
        """2 TP / (2 TP + FP + FN); 1.0 for an image without objects where nothing was detected."""
        denominator = 2 * self.tp + self.fp + self.fn
        return 1.0 if denominator == 0 else 2 * self.tp / denominator


@dataclass
class Examples:
    """The model's outcome on (up to ``MAX_IMAGES``) validation images."""

    checkpoint: Path
    outcomes: list[ImageOutcome]
    class_names: list[str]
    thresholds: np.ndarray
    threshold_source: str
    total_images: int
    unreadable: int
    evaluation: Evaluation | None


def spread(records: Sequence[ImageRecord], count: int) -> list[ImageRecord]:
    """``count`` records evenly spaced over the list (all of them when there are fewer)."""
    if count >= len(records):
        return list(records)
    if count <= 0:
        return []
    indices = sorted({round(i) for i in np.linspace(0, len(records) - 1, count)})
    return [records[i] for i in indices]


def judge(
    record: ImageRecord,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    target: dict,
    thresholds: np.ndarray,
) -> ImageOutcome:
    """One image's detections at or above their class's threshold, matched to its objects."""
    keep = scores >= thresholds[labels]
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    gt_boxes, gt_labels = target["boxes"].numpy(), target["labels"].numpy()
    gt_crowd = target["iscrowd"].numpy().astype(bool)
    match = match_image(boxes, scores, labels, gt_boxes, gt_labels, gt_crowd, MATCH_IOU)
    return ImageOutcome(record, boxes, scores, labels, gt_boxes, gt_labels, gt_crowd, match)


def run_examples(
    checkpoint: Path,
    dataset: CocoDataset,
    max_images: int,
    device: str,
    thresholds: Sequence[float] | None = None,
    threshold_source: str = "",
    batch_size: int = 4,
) -> Examples:
    """Run a checkpoint on up to ``max_images`` images of ``dataset``; judge each image.

    Every detection the model keeps (its own test threshold) goes into an evaluation of these
    images. An image's true and false positives and misses count the detections at or above
    ``thresholds``; by default the checkpoint's F1-optimal ones from its last validation, else
    those of this evaluation.

    Raises:
        WeightsError: the checkpoint cannot be loaded.
        DataError: an object's category is unknown to the model.
    """
    from detlit.inference.predictor import Predictor

    predictor = Predictor.from_checkpoint(checkpoint, device=device, batch_size=batch_size, all_detections=True)
    names = list(predictor.label_map.names)
    metric = DetectionMetrics(names, iou_threshold=MATCH_IOU)
    records = spread(dataset.images, max_images)
    predicted = []
    unreadable = 0
    for outcome in predictor.predict_files([dataset.image_root / r.file_name for r in records]):
        if outcome.prediction is None:
            unreadable += 1
            log.warning("left out of the examples: %s", outcome.error)
            continue
        record, prediction = records[outcome.index], outcome.prediction
        target = eval_target(record, predictor.label_map)
        metric.update([prediction.metric_input()], [target])
        predicted.append((record, prediction, target))
    evaluation = metric.compute() if predicted else None
    if thresholds is None:
        if predictor.saved_thresholds is not None:
            thresholds, threshold_source = predictor.saved_thresholds, "the checkpoint's F1-optimal score thresholds"
        elif evaluation is not None:
            thresholds = evaluation.score_thresholds()
            threshold_source = "the F1-optimal score thresholds on these images (the checkpoint holds none)"
        else:
            thresholds = [math.inf] * len(names)
    chosen = np.asarray(thresholds, dtype=np.float64)
    outcomes = [judge(record, p.boxes, p.scores, p.labels, target, chosen) for record, p, target in predicted]
    return Examples(checkpoint, outcomes, names, chosen, threshold_source, len(dataset.images), unreadable, evaluation)


def pick_examples(outcomes: Sequence[ImageOutcome], count: int) -> tuple[list[ImageOutcome], list[ImageOutcome]]:
    """(best, worst): the ``count`` images with the most errors (FP + FN; then the lowest F1), and of
    the rest the ``count`` with the highest F1 (then the most objects found). Images with objects
    come first among the best: an empty image without detections is perfect, but shows nothing."""
    count = min(count, len(outcomes) // 2) if len(outcomes) < 2 * count else count
    worst = sorted(outcomes, key=lambda o: (-o.errors, o.f1, o.record.id))[:count]
    taken = {o.record.id for o in worst}
    rest = [o for o in outcomes if o.record.id not in taken]
    best = sorted(rest, key=lambda o: (o.tp + o.fn == 0, -o.f1, -o.tp, o.errors, o.record.id))[:count]
    return best, worst


def draw_outcome(outcome: ImageOutcome, image_root: Path, class_names: Sequence[str]) -> bytes:
    """One image with ground truth and kept predictions, coloured by outcome, as PNG bytes."""
    image = load_image(image_root / outcome.record.file_name)
    # Scaled to the display size before drawing (down, or up to twice), so labels and lines read
    # the same on every example whatever the size of its image.
    height, width = image.shape[:2]
    scale = min(EXAMPLE_SIZE / max(height, width), MAX_UPSCALE)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    shown = np.asarray(Image.fromarray(image).resize(size, resample))
    drawing = draw_comparison(
        shown,
        outcome.boxes * scale,
        outcome.labels,
        outcome.scores,
        outcome.gt_boxes * scale,
        outcome.gt_labels,
        class_names,
        outcome.gt_crowd,
        match=outcome.match,
    )
    return png_bytes(drawing)


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
