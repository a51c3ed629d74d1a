"""detectron2's RPN and ROI heads with COCO crowd regions as ignore regions.

A crowd annotation (``iscrowd=1``) marks a region full of objects that were not boxed one by
one. Training on it as one object is wrong, and so is training the image area under it as
background. These heads take the crowd boxes out of the targets (``Instances.gt_crowd``) and
ignore, instead of treating as background, anchors and proposals that lie mostly inside one
(Detectron's rule: intersection over the anchor's area >= 0.5). Everything else is detectron2's
own code; the weights are identical to the standard heads'.
"""

from __future__ import annotations

import torch

from detlit.compat import (
    PROPOSAL_GENERATOR_REGISTRY,
    ROI_HEADS_REGISTRY,
    RPN,
    Boxes,
    Instances,
    StandardROIHeads,
    pairwise_ioa,
)

CROWD_FIELD = "gt_crowd"
CROWD_OVERLAP = 0.5  # fraction of an anchor / proposal inside a crowd region that ignores it


def split_crowd(targets: list[Instances]) -> tuple[list[Instances], list[Boxes | None]]:
    """Targets without crowd regions, and each image's crowd boxes (None when there are none)."""
    objects, crowds = [], []
    for target in targets:
        if target.has(CROWD_FIELD) and bool(target.get(CROWD_FIELD).any()):
            crowd = target.get(CROWD_FIELD)
            objects.append(_without_crowd_field(target[~crowd]))
            crowds.append(target.gt_boxes[crowd])
        else:
            objects.append(_without_crowd_field(target))
            crowds.append(None)
    return objects, crowds


def _without_crowd_field(instances: Instances) -> Instances:
    if not instances.has(CROWD_FIELD):
        return instances
    out = Instances(instances.image_size)
    for name, value in instances.get_fields().items():
        if name != CROWD_FIELD:
            out.set(name, value)
    return out


def inside_crowd(crowd: Boxes, boxes: Boxes) -> torch.Tensor:
    """Which ``boxes`` lie mostly inside one of the ``crowd`` boxes."""
    if len(crowd) == 0 or len(boxes) == 0:
        return torch.zeros(len(boxes), dtype=torch.bool, device=boxes.tensor.device)
    return pairwise_ioa(crowd, boxes).max(dim=0).values >= CROWD_OVERLAP


@PROPOSAL_GENERATOR_REGISTRY.register()
class CrowdIgnoringRPN(RPN):
    """detectron2's RPN; negative anchors inside crowd regions are ignored."""

    @torch.no_grad()
    def label_and_sample_anchors(
        self, anchors: list[Boxes], gt_instances: list[Instances]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        objects, crowds = split_crowd(gt_instances)
        labels, matched = super().label_and_sample_anchors(anchors, objects)
        all_anchors = Boxes.cat(anchors)
        for labels_i, crowd in zip(labels, crowds, strict=True):
            if crowd is not None:
                labels_i[(labels_i == 0) & inside_crowd(crowd.to(labels_i.device), all_anchors)] = -1
        return labels, matched


@ROI_HEADS_REGISTRY.register()
class CrowdIgnoringROIHeads(StandardROIHeads):
    """detectron2's StandardROIHeads; background proposals inside crowd regions are not sampled."""

    @torch.no_grad()
    def label_and_sample_proposals(self, proposals: list[Instances], targets: list[Instances]) -> list[Instances]:
        objects, crowds = split_crowd(targets)
        sampled = super().label_and_sample_proposals(proposals, objects)
        out = []
        for proposals_i, crowd in zip(sampled, crowds, strict=True):
            if crowd is not None:
                background = proposals_i.gt_classes == self.num_classes
                keep = ~(background & inside_crowd(crowd.to(background.device), proposals_i.proposal_boxes))
                proposals_i = proposals_i[keep]
            out.append(proposals_i)
        return out
