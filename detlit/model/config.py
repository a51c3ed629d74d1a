"""Stage [6]: the only module that builds a detectron2 ``CfgNode``.

detlit's typed settings become detectron2 config keys here and nowhere else, so the config that
a detlit model runs with is a complete detectron2 config: detectron2's own tools
(``DefaultPredictor``, ``DetectionCheckpointer``) work on it unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from detlit.compat import HAS_COMPILED_OPS, INSTALL_GIT_HINT, CfgNode, get_cfg, model_zoo_config_path
from detlit.errors import ConfigError
from detlit.model.heads import CrowdIgnoringROIHeads, CrowdIgnoringRPN

DEFAULT_CONFIG = "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml"

MENU = (
    "COCO-Detection/faster_rcnn_R_50_C4_1x.yaml",
    "COCO-Detection/faster_rcnn_R_50_C4_3x.yaml",
    "COCO-Detection/faster_rcnn_R_50_DC5_1x.yaml",
    "COCO-Detection/faster_rcnn_R_50_DC5_3x.yaml",
    "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml",
    "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml",
    "COCO-Detection/faster_rcnn_R_101_C4_3x.yaml",
    "COCO-Detection/faster_rcnn_R_101_DC5_3x.yaml",
    "COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml",
    "COCO-Detection/faster_rcnn_X_101_32x8d_FPN_3x.yaml",
    "Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml",
    "Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml",
    "COCO-Detection/retinanet_R_50_FPN_1x.yaml",
    "COCO-Detection/retinanet_R_50_FPN_3x.yaml",
    "COCO-Detection/retinanet_R_101_FPN_3x.yaml",
)
"""The model-zoo box detectors detlit trains: Faster R-CNN (C4, DC5, FPN heads; R50, R101,
X101-32x8d), Cascade R-CNN (its mask head switched off) and RetinaNet. 1x and 3x differ in
detectron2's schedule only; detlit's schedule is its own, so both name the same architecture."""

ARCHITECTURES = {
    "R50-C4": "COCO-Detection/faster_rcnn_R_50_C4_3x.yaml",
    "R50-DC5": "COCO-Detection/faster_rcnn_R_50_DC5_3x.yaml",
    "R50-FPN": "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml",
    "R101-C4": "COCO-Detection/faster_rcnn_R_101_C4_3x.yaml",
    "R101-DC5": "COCO-Detection/faster_rcnn_R_101_DC5_3x.yaml",
    "R101-FPN": "COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml",
    "X101-FPN": "COCO-Detection/faster_rcnn_X_101_32x8d_FPN_3x.yaml",
    "Cascade-R50-FPN": "Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml",
    "RetinaNet-R50-FPN": "COCO-Detection/retinanet_R_50_FPN_3x.yaml",
}
"""One config of the menu per architecture, by a short name (RetinaNet R101 aside)."""

META_ARCHITECTURES = ("GeneralizedRCNN", "RetinaNet")
CROWD_IGNORING_HEADS = {"RPN": CrowdIgnoringRPN.__name__, "StandardROIHeads": CrowdIgnoringROIHeads.__name__}


def ignores_crowd(cfg: CfgNode) -> bool:
    """Whether the model's heads treat ``gt_crowd`` instances as ignore regions."""
    names = set(CROWD_IGNORING_HEADS.values())
    return cfg.MODEL.PROPOSAL_GENERATOR.NAME in names and cfg.MODEL.ROI_HEADS.NAME in names


def build_d2_config(
    config_name: str = DEFAULT_CONFIG,
    num_classes: int = 80,
    min_size_train: Sequence[int] = (640, 672, 704, 736, 768, 800),
    max_size_train: int = 1333,
    min_size_test: int = 800,
    max_size_test: int = 1333,
    overrides: Mapping[str, Any] | None = None,
    freeze_at: int | None = None,
) -> CfgNode:
    """Build the detectron2 config of a detlit model.

    Args:
        config_name: model-zoo config, relative to detectron2's ``model_zoo/configs`` folder.
        num_classes: number of object classes (``MODEL.ROI_HEADS.NUM_CLASSES``).
        min_size_train: shortest-edge sizes sampled in training (``INPUT.MIN_SIZE_TRAIN``).
        max_size_train: cap on the longest edge in training.
        min_size_test: shortest-edge size at inference.
        max_size_test: cap on the longest edge at inference.
        overrides: extra detectron2 keys in dotted form, e.g. ``{"MODEL.RESNETS.DEPTH": 18}``,
            applied last.
        freeze_at: backbone stages to freeze (``MODEL.BACKBONE.FREEZE_AT``); None keeps the config's.

    Raises:
        ConfigError: an override names a key detectron2 does not have, or has a wrong type.
    """
    if not config_name.endswith(".yaml"):
        raise ConfigError(
            f"model.config_name {config_name} is not a .yaml config (detlit reads detectron2's yaml configs, not "
            "its Python LazyConfigs); pick a .yaml file such as " + DEFAULT_CONFIG
        )
    cfg = get_cfg()
    cfg.merge_from_file(str(model_zoo_config_path(config_name)))
    # Lightning places the model on its device; weights are loaded by detlit (module.py).
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.RETINANET.NUM_CLASSES = num_classes
    cfg.INPUT.MIN_SIZE_TRAIN = tuple(min_size_train)
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
    cfg.INPUT.MAX_SIZE_TRAIN = max_size_train
    cfg.INPUT.MIN_SIZE_TEST = min_size_test
    cfg.INPUT.MAX_SIZE_TEST = max_size_test
    for key, value in flatten_overrides(overrides or {}).items():
        _set_key(cfg, key, value)
    if freeze_at is not None:
        cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    check_box_detector(cfg, config_name)
    # A mask (or keypoint) R-CNN is used as the box detector it contains: detlit's data has boxes only.
    cfg.MODEL.MASK_ON = False
    cfg.MODEL.KEYPOINT_ON = False
    # The same heads, with crowd regions as ignore regions (detlit.model.heads).
    for node, standard in ((cfg.MODEL.PROPOSAL_GENERATOR, "RPN"), (cfg.MODEL.ROI_HEADS, "StandardROIHeads")):
        if standard == node.NAME:
            node.NAME = CROWD_IGNORING_HEADS[standard]
    cfg.freeze()
    return cfg


def check_box_detector(cfg: CfgNode, config_name: str) -> None:
    """Refuse, in one sentence, a config that is not a box detector detlit can train.

    Raises:
        ConfigError: another meta-architecture (region proposals only, segmentation), precomputed
            proposals, rotated boxes, or deformable convolutions without detectron2's compiled ops.
    """
    model = cfg.MODEL
    where = f"model.config_name {config_name}"
    menu = "pick a Faster R-CNN, Cascade R-CNN or RetinaNet config (docs/architecture.md lists them)"
    if model.META_ARCHITECTURE not in META_ARCHITECTURES:
        raise ConfigError(
            f"{where} is a {model.META_ARCHITECTURE}, not a box detector detlit trains (it needs "
            f"{' or '.join(META_ARCHITECTURES)}); {menu}"
        )
    if model.LOAD_PROPOSALS or model.PROPOSAL_GENERATOR.NAME == "PrecomputedProposals":
        raise ConfigError(f"{where} reads precomputed proposal files, which detlit does not make; {menu}")
    if "Rotated" in model.ANCHOR_GENERATOR.NAME or model.PROPOSAL_GENERATOR.NAME == "RRPN":
        raise ConfigError(f"{where} detects rotated boxes; detlit trains axis-aligned COCO boxes: {menu}")
    if any(model.RESNETS.DEFORM_ON_PER_STAGE) and not HAS_COMPILED_OPS:
        raise ConfigError(
            f"{where} uses deformable convolutions, which need detectron2's compiled ops ({INSTALL_GIT_HINT}); {menu}"
        )


def uses_frozen_batchnorm(cfg: CfgNode) -> bool:
    """Whether the backbone's norm layers are frozen BatchNorm (fixed statistics from pretraining)."""
    return bool(cfg.MODEL.RESNETS.NORM == "FrozenBN")


def portable_config(cfg: CfgNode) -> CfgNode:
    """The config with detectron2's own head names, for use without detlit installed."""
    portable = cfg.clone()
    portable.defrost()
    for node, standard in ((portable.MODEL.PROPOSAL_GENERATOR, "RPN"), (portable.MODEL.ROI_HEADS, "StandardROIHeads")):
        if CROWD_IGNORING_HEADS[standard] == node.NAME:
            node.NAME = standard
    portable.freeze()
    return portable


def flatten_overrides(overrides: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"MODEL": {"RESNETS": {"DEPTH": 18}}}`` and ``{"MODEL.RESNETS.DEPTH": 18}`` alike
    become dotted keys (the CLI's ``--model.overrides.MODEL.RESNETS.DEPTH=18`` gives the first)."""
    flat: dict[str, Any] = {}
    for key, value in overrides.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_overrides(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _set_key(cfg: CfgNode, key: str, value: Any) -> None:
    node = cfg
    *parents, leaf = key.split(".")
    for part in parents:
        if part not in node or not isinstance(node[part], CfgNode):
            raise ConfigError(f"unknown detectron2 config key '{key}' in overrides")
        node = node[part]
    if leaf not in node:
        raise ConfigError(f"unknown detectron2 config key '{key}' in overrides")
    if isinstance(node[leaf], CfgNode):
        raise ConfigError(f"override '{key}' names a whole config section; set its keys one by one")
    try:
        cfg.merge_from_list([key, value])
    except (ValueError, TypeError, AssertionError) as err:
        raise ConfigError(f"override '{key}: {value!r}' does not fit detectron2's config: {err}") from err
