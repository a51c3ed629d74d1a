"""Crowd regions are ignore regions: neither objects nor background for the RPN and ROI heads."""

from __future__ import annotations

import torch

from detlit.compat import RPN, Boxes, EventStorage, Instances, StandardROIHeads, build_model, pairwise_ioa
from detlit.model.config import build_d2_config, ignores_crowd

from .conftest import TINY_OVERRIDES

CROWD = [40.0, 40.0, 110.0, 110.0]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = build_d2_config(num_classes=2, overrides=TINY_OVERRIDES)
    assert ignores_crowd(cfg)
    return build_model(cfg).train()


def _targets(with_crowd: bool) -> Instances:
    boxes = [[2.0, 2.0, 30.0, 30.0]] + ([CROWD] if with_crowd else [])
    target = Instances((128, 128))
    target.gt_boxes = Boxes(torch.tensor(boxes))
    target.gt_classes = torch.tensor([1] + ([0] if with_crowd else []))
    target.gt_crowd = torch.tensor([False] + ([True] if with_crowd else []))
    return target


def _grid(step: int = 8, size: int = 16) -> Boxes:
    xs = torch.arange(0, 128 - size + 1, step, dtype=torch.float32)
    x, y = torch.meshgrid(xs, xs, indexing="ij")
    return Boxes(torch.stack([x.flatten(), y.flatten(), x.flatten() + size, y.flatten() + size], dim=1))


def test_rpn_ignores_negatives_inside_crowd_regions() -> None:
    rpn = _model().proposal_generator
    anchors = _grid()
    inside = pairwise_ioa(Boxes(torch.tensor([CROWD])), anchors)[0] >= 0.5
    assert inside.sum() > 20
    torch.manual_seed(1)
    (labels,), _ = rpn.label_and_sample_anchors([anchors], [_targets(with_crowd=True)])
    torch.manual_seed(1)
    (plain,), _ = RPN.label_and_sample_anchors(rpn, [anchors], [_targets(with_crowd=False)])
    assert (plain[inside] == 0).all()  # without the crowd flag: background
    assert (labels[inside] == -1).all()  # with it: ignored
    assert torch.equal(labels[~inside], plain[~inside])  # elsewhere nothing changes
    assert (labels == 1).sum() >= 1  # the real object still has positives


def test_roi_heads_sample_no_background_inside_crowd_regions() -> None:
    heads = _model().roi_heads
    proposals = Instances((128, 128))
    proposals.proposal_boxes = _grid(step=6, size=20)
    proposals.objectness_logits = torch.zeros(len(proposals.proposal_boxes))
    crowd = Boxes(torch.tensor([CROWD]))
    with EventStorage(0):
        (sampled,) = heads.label_and_sample_proposals([proposals], [_targets(with_crowd=True)])
        (plain,) = StandardROIHeads.label_and_sample_proposals(heads, [proposals], [_targets(with_crowd=False)])
    background = sampled.gt_classes == heads.num_classes
    assert background.any()
    assert (pairwise_ioa(crowd, sampled.proposal_boxes[background])[0] < 0.5).all()
    assert not sampled.has("gt_crowd")
    plain_background = plain.gt_classes == heads.num_classes
    assert (pairwise_ioa(crowd, plain.proposal_boxes[plain_background])[0] >= 0.5).any()
    assert not (sampled.gt_classes == 0).any()  # the crowd region never became an object of class 0


def test_training_with_a_crowd_region_gives_finite_losses() -> None:
    model = _model()
    image = torch.randint(0, 255, (3, 128, 128), dtype=torch.uint8)
    with EventStorage(0):
        losses = model([{"image": image, "instances": _targets(with_crowd=True), "height": 128, "width": 128}])
    assert all(torch.isfinite(v) for v in losses.values())
