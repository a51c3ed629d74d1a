"""Stage [6]: the only module that builds a detectron2 ``CfgNode``.

detlit's typed settings become detectron2 config keys here and nowhere else, so the config that
a detlit model runs with is a complete detectron2 config: detectron2's own tools
(``DefaultPredictor``, ``DetectionCheckpointer``) work on it unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from detlit.compat import CfgNode, get_cfg, model_zoo_config_path
from detlit.errors import ConfigError
from detlit.model.heads import CrowdIgnoringROIHeads, CrowdIgnoringRPN

DEFAULT_CONFIG = "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml"
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
    # The same heads, with crowd regions as ignore regions (detlit.model.heads).
    for node, standard in ((cfg.MODEL.PROPOSAL_GENERATOR, "RPN"), (cfg.MODEL.ROI_HEADS, "StandardROIHeads")):
        if standard == node.NAME:
            node.NAME = CROWD_IGNORING_HEADS[standard]
    cfg.freeze()
    return cfg


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
