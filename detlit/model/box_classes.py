"""What an R-CNN's box head says of boxes it is given: its class probabilities on them, as if they
were the region proposals.

Auditing labels asks this of the labelled boxes themselves (:mod:`detlit.auditing.ranking`): a
detector's detections of two classes on one object can score nearly alike after non-maximum
suppression and box regression, while the box head's probabilities on the exact labelled box say
which class it sees there. The images are model inputs (uint8 CHW in the model's channel order,
as :meth:`~detlit.model.module.DetectionModule.detect` takes them) and the boxes XYXY in those
inputs' pixels. Every R-CNN head of the menu answers it: the standard head (FPN, DC5), the C4 head
(``Res5ROIHeads``) and Cascade R-CNN, whose stages are averaged as detectron2 averages them at
inference (each stage is asked about the given box, not about the previous stage's refinement of
it). A one-stage detector (RetinaNet) has no box head to ask.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from detlit.compat import Boxes, CascadeROIHeads, GeneralizedRCNN, Instances, Res5ROIHeads


@torch.no_grad()
def class_probabilities(
    model: GeneralizedRCNN, images: Sequence[torch.Tensor], boxes: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """Per image, the (M, K + 1) softmax of the box head on its M boxes: K classes, then background.

    Args:
        model: an R-CNN in eval mode.
        images: model inputs, uint8 CHW.
        boxes: per image, (M, 4) XYXY boxes in that input's pixels (M may be 0).
    """
    heads = model.roi_heads
    classes = int(heads.num_classes) + 1
    if sum(len(b) for b in boxes) == 0:
        return [torch.zeros((0, classes)) for _ in boxes]
    batched = model.preprocess_image([{"image": image} for image in images])
    features = model.backbone(batched.tensor)
    device = batched.tensor.device
    given = [Boxes(b.to(device=device, dtype=torch.float32).reshape(-1, 4)) for b in boxes]
    proposals = [Instances(size, proposal_boxes=b) for size, b in zip(batched.image_sizes, given, strict=True)]
    if isinstance(heads, CascadeROIHeads):
        levels = [features[name] for name in heads.box_in_features]
        stages = []
        for stage in range(heads.num_cascade_stages):
            pooled = heads.box_head[stage](heads.box_pooler(levels, given))
            stages.append(heads.box_predictor[stage].predict_probs(heads.box_predictor[stage](pooled), proposals))
        per_image = [torch.stack(parts).mean(dim=0) for parts in zip(*stages, strict=True)]
    elif isinstance(heads, Res5ROIHeads):
        pooled = heads._shared_roi_transform([features[name] for name in heads.in_features], given)
        per_image = list(heads.box_predictor.predict_probs(heads.box_predictor(pooled.mean(dim=[2, 3])), proposals))
    else:
        pooled = heads.box_head(heads.box_pooler([features[name] for name in heads.box_in_features], given))
        per_image = list(heads.box_predictor.predict_probs(heads.box_predictor(pooled), proposals))
    return [p.float().cpu() for p in per_image]
