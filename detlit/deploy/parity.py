"""Parity of an exported model with its checkpoint: the same detections, up to rounding.

Both models run through the same :class:`~detlit.inference.predictor.Predictor` (the same reading,
resizing, postprocess; every detection each model keeps), and their detections on each image are
paired one to one: the same class, and for each checkpoint detection (highest score first) the
exported detection nearest to it, if within :data:`PAIR_BOX_WINDOW` pixels and
:data:`PAIR_SCORE_WINDOW` in score. Over the pairs, the largest box coordinate difference (pixels)
and the largest score difference must stay within :data:`BOX_TOLERANCE` and
:data:`SCORE_TOLERANCE`.

A detection without a partner is one of two kinds:

* at a cut: its score is within :data:`SCORE_TOLERANCE` of the model's score floor, or of the
  lowest score kept when the model kept its most detections per image; a rounding difference
  decides whether it is in or out. These are counted and allowed.
* differing: any other. A near-tie (two candidate boxes that overlap and score the same up to
  rounding) may be decided one way by PyTorch and the other way by another runtime, in the
  proposals or in the final NMS. At most :data:`DIFFERING_SHARE` of the checkpoint's detections
  may differ; a broken export differs everywhere.

Parity with no detections on either side compares nothing (:attr:`Parity.compared` is False):
it passes, and the exporter says that the model is unchecked.

TorchScript runs PyTorch's own kernels and matches exactly (differences 0.0); ONNX Runtime's
kernels round differently, by about 1e-5 in score and 1e-3 px in box on the sample model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detlit.inference.predictor import Prediction

BOX_TOLERANCE = 0.01
"""Largest box coordinate difference (pixels of the original image) a pair may have."""

SCORE_TOLERANCE = 1e-3
"""Largest score difference a pair may have."""

PAIR_BOX_WINDOW = 1.0
"""Detections whose boxes differ by more (pixels) are not taken as one detection."""

PAIR_SCORE_WINDOW = 0.02
"""Detections whose scores differ by more are not taken as one detection."""

DIFFERING_SHARE = 0.01
"""Share of the checkpoint's detections that may lack a partner away from a cut (near-ties)."""


@dataclass
class Parity:
    """How closely an exported model's detections follow its checkpoint's, on the parity images."""

    images: int = 0
    sizes: list[tuple[int, int]] = field(default_factory=list)  # distinct model input sizes (height, width)
    detections: int = 0  # the checkpoint's
    exported_detections: int = 0
    pairs: int = 0
    max_box_difference: float = 0.0
    max_score_difference: float = 0.0
    at_cut: int = 0
    differing: int = 0

    @property
    def allowed_differing(self) -> int:
        return math.floor(DIFFERING_SHARE * self.detections)

    @property
    def compared(self) -> bool:
        """Whether either model detected anything on the parity images: without detections, parity
        holds but checks nothing."""
        return self.detections > 0 or self.exported_detections > 0

    @property
    def passed(self) -> bool:
        return (
            self.max_box_difference <= BOX_TOLERANCE
            and self.max_score_difference <= SCORE_TOLERANCE
            and self.differing <= self.allowed_differing
        )

    def describe(self) -> str:
        sizes = ", ".join(f"{h}x{w}" for h, w in self.sizes)
        return (
            f"{self.images} images at {len(self.sizes)} input sizes ({sizes}): {self.pairs} of {self.detections} "
            f"detections paired ({self.exported_detections} exported), max box difference "
            f"{self.max_box_difference:.3g} px (tolerance {BOX_TOLERANCE:g}), max score difference "
            f"{self.max_score_difference:.3g} (tolerance {SCORE_TOLERANCE:g}), {self.at_cut} unpaired at the score "
            f"floor or detection limit, {self.differing} differing (at most {self.allowed_differing})"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "compared": self.compared,
            "images": self.images,
            "input_sizes": [list(size) for size in self.sizes],
            "detections": self.detections,
            "exported_detections": self.exported_detections,
            "pairs": self.pairs,
            "max_box_difference_px": self.max_box_difference,
            "max_score_difference": self.max_score_difference,
            "unpaired_at_cut": self.at_cut,
            "differing": self.differing,
            "tolerance": {
                "box_px": BOX_TOLERANCE,
                "score": SCORE_TOLERANCE,
                "differing_share": DIFFERING_SHARE,
            },
        }


def _pair(ours: Prediction, theirs: Prediction) -> list[tuple[int, int]]:
    """One-to-one pairs (index in ``ours``, index in ``theirs``), as the module docstring says."""
    if not len(ours) or not len(theirs):
        return []
    box_difference = np.abs(ours.boxes[:, None, :] - theirs.boxes[None, :, :]).max(axis=2)
    score_difference = np.abs(ours.scores[:, None] - theirs.scores[None, :])
    candidate = (
        (ours.labels[:, None] == theirs.labels[None, :])
        & (box_difference <= PAIR_BOX_WINDOW)
        & (score_difference <= PAIR_SCORE_WINDOW)
    )
    taken = np.zeros(len(theirs), dtype=bool)
    pairs = []
    for i in np.argsort(-ours.scores, kind="stable"):
        options = np.flatnonzero(candidate[i] & ~taken)
        if len(options):
            j = int(options[np.argmin(box_difference[i, options])])
            taken[j] = True
            pairs.append((int(i), j))
    return pairs


def _at_cut(scores: np.ndarray, floor: float, limit: int) -> np.ndarray:
    """Which of an image's detections score within the tolerance of a cut: the floor, or (when the
    image holds ``limit`` detections) the lowest score kept."""
    near = np.abs(scores - floor) <= SCORE_TOLERANCE
    if len(scores) >= limit:
        near |= scores <= scores.min() + SCORE_TOLERANCE
    return near


def compare(
    ours: Sequence[Prediction],
    theirs: Sequence[Prediction],
    input_sizes: Sequence[tuple[int, int]],
    floor: float,
    limit: int,
) -> Parity:
    """The parity of ``theirs`` (the exported model's predictions) with ``ours`` (the checkpoint's),
    image by image; ``floor`` and ``limit`` are the model's score floor and detections per image."""
    parity = Parity(images=len(ours), sizes=sorted(set(input_sizes)))
    for mine, other in zip(ours, theirs, strict=True):
        pairs = _pair(mine, other)
        parity.detections += len(mine)
        parity.exported_detections += len(other)
        parity.pairs += len(pairs)
        if pairs:
            i, j = (np.asarray(side) for side in zip(*pairs, strict=True))
            boxes = float(np.abs(mine.boxes[i] - other.boxes[j]).max())
            scores = float(np.abs(mine.scores[i] - other.scores[j]).max())
            parity.max_box_difference = max(parity.max_box_difference, boxes)
            parity.max_score_difference = max(parity.max_score_difference, scores)
        for prediction, paired in ((mine, {p[0] for p in pairs}), (other, {p[1] for p in pairs})):
            alone = np.ones(len(prediction), dtype=bool)
            alone[list(paired)] = False
            cut = _at_cut(prediction.scores, floor, limit)
            parity.at_cut += int((alone & cut).sum())
            parity.differing += int((alone & ~cut).sum())
    return parity
