"""A detector's raw detections and the one postprocess that puts them in the original image's pixels.

A model sees a resized image; its detections come out in the resized image's pixels.
:func:`postprocess` scales them to the original image with the float operations of detectron2's
``detector_postprocess``, in its order, and is the only code that does: validation and test
(:class:`~detlit.model.module.DetectionModule`), and through
:class:`~detlit.inference.predictor.Predictor` predict, evaluate, the report's example images,
export parity and the service. So ``val/map`` of a checkpoint and ``python -m detlit.evaluate`` of
the same checkpoint on the same images measure the same detections, by construction.

It lives below both the model and the inference package, and imports neither detectron2 nor
Lightning: an exported model runs without them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Detections(NamedTuple):
    """One image's detections: what a model outputs (in its input image's pixels), or, after
    :func:`postprocess`, the same detections in the original image's pixels."""

    boxes: torch.Tensor  # (N, 4) XYXY
    scores: torch.Tensor  # (N,)
    labels: torch.Tensor  # (N,) int64 contiguous labels

    def metric_input(self) -> dict[str, torch.Tensor]:
        """The detections as :class:`~detlit.evaluation.metric.DetectionMetrics` takes them.

        float64, so that every path hands the metric the same numbers: the metric turns boxes into
        XYWH in their own dtype, and a float32 subtraction would round widths differently from
        the float64 one of a COCO results file.
        """
        return {
            "boxes": self.boxes.detach().to(torch.float64),
            "scores": self.scores.detach().to(torch.float64),
            "labels": self.labels.detach().to(torch.int64),
        }


def postprocess(detections: Detections, input_size: tuple[int, int], output_size: tuple[int, int]) -> Detections:
    """Detections of a resized image, in the original image's pixels.

    The float operations of detectron2's ``detector_postprocess``, in its order: boxes scaled by
    output / input size per axis (one Python float per axis, as detectron2 computes it), clipped
    to the output image, empty boxes dropped. Exact on any device: a multiplication by one number,
    a clamp and a comparison round the same everywhere.

    Args:
        detections: boxes XYXY in the input image's pixels, scores, labels.
        input_size: (height, width) of the image the model saw.
        output_size: (height, width) of the original image.
    """
    (in_height, in_width), (height, width) = input_size, output_size
    boxes = detections.boxes.clone()
    boxes[:, 0::2] *= width / in_width
    boxes[:, 1::2] *= height / in_height
    x1, y1 = boxes[:, 0].clamp(min=0, max=width), boxes[:, 1].clamp(min=0, max=height)
    x2, y2 = boxes[:, 2].clamp(min=0, max=width), boxes[:, 3].clamp(min=0, max=height)
    boxes = torch.stack((x1, y1, x2, y2), dim=-1)
    keep = ((x2 - x1) > 0.0) & ((y2 - y1) > 0.0)
    return Detections(boxes[keep], detections.scores[keep], detections.labels[keep])
