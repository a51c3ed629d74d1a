"""The compat module is the only door to detectron2, and it keeps detectron2 importable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from detlit import compat
from detlit.errors import ConfigError

DETLIT = Path(__file__).resolve().parents[1] / "detlit"


def test_detectron2_imports_through_compat() -> None:
    assert compat.DETECTRON2_VERSION.startswith("0.")
    from detectron2.data import transforms  # noqa: F401  (reads Image.LINEAR at import)
    from detectron2.engine import DefaultPredictor  # noqa: F401

    assert compat.GeneralizedRCNN.__name__ == "GeneralizedRCNN"


def test_only_compat_imports_detectron2() -> None:
    pattern = re.compile(r"^\s*(import|from)\s+detectron2\b", re.MULTILINE)
    offenders = [p.name for p in DETLIT.glob("*.py") if p.name != "compat.py" and pattern.search(p.read_text())]
    assert offenders == []


@pytest.mark.skipif(compat.HAS_COMPILED_OPS, reason="detectron2's compiled ops are installed")
def test_rotated_op_raises_clear_error() -> None:
    from detectron2.layers import nms_rotated
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated

    boxes = torch.tensor([[10.0, 10.0, 4.0, 4.0, 0.0]])
    with pytest.raises(compat.CompiledOpMissingError, match="box_iou_rotated.*--source git"):
        pairwise_iou_rotated(boxes, boxes)
    with pytest.raises(compat.CompiledOpMissingError, match="nms_rotated.*--source git"):
        nms_rotated(boxes, torch.ones(1), 0.5)


@pytest.mark.skipif(compat.HAS_COMPILED_OPS, reason="detectron2's compiled ops are installed")
def test_rotated_roi_align_and_deformable_ops_raise_clear_error() -> None:
    import detectron2._C as compiled
    from detectron2.layers import ROIAlignRotated

    layer = ROIAlignRotated((2, 2), spatial_scale=1.0, sampling_ratio=0)
    with pytest.raises(compat.CompiledOpMissingError, match="roi_align_rotated_forward"):
        layer(torch.zeros(1, 1, 8, 8), torch.tensor([[0.0, 4.0, 4.0, 2.0, 2.0, 30.0]]))
    # CUDA-only in detectron2, so not reachable through a layer on a CPU machine:
    with pytest.raises(compat.CompiledOpMissingError, match="modulated_deform_conv_forward"):
        compiled.modulated_deform_conv_forward()


def test_model_zoo_configs_found_by_path() -> None:
    path = compat.model_zoo_config_path("COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml")
    assert path.is_file() and "_BASE_" in path.read_text()
    with pytest.raises(ConfigError, match="faster_rcnn_R_50_FPN_3x.yaml"):
        compat.model_zoo_config_path("COCO-Detection/no_such_model.yaml")
