"""Stage 6, the model's definition: the only module that builds a detectron2 ``CfgNode``.

detlit's typed settings become detectron2 config keys here and nowhere else, so the config that
a detlit model runs with is a complete detectron2 config: detectron2's own tools
(``DefaultPredictor``, ``DetectionCheckpointer``) work on it unchanged.

``model.config_name`` may come from someone else (a checkpoint's hyper-parameters name it), so
its file is read as plain, bounded YAML (:mod:`detlit.common.safe_yaml`) and merged the way
detectron2's ``CfgNode.merge_from_file`` merges, without calling it: detectron2 falls back to
``yaml.unsafe_load``, which runs the code a ``!!python/object/apply`` tag names.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from detlit.common.safe_yaml import load_yaml, read_text
from detlit.compat import (
    HAS_COMPILED_OPS,
    INSTALL_GIT_HINT,
    MODEL_ZOO_CONFIGS,
    CfgNode,
    downgrade_config,
    find_model_zoo_config,
    get_cfg,
    guess_version,
    upgrade_config,
)
from detlit.errors import ConfigError
from detlit.model.heads import CrowdIgnoringROIHeads, CrowdIgnoringRPN

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml"
BASE_KEY = "_BASE_"
MAX_BASES = 8
"""Longest chain of ``_BASE_`` files (the model zoo's longest is 2)."""
CONFIG_VALUE_TYPES = (str, int, float, bool, type(None), list, tuple)
"""What a detectron2 config value may be (yacs' valid types), mappings aside."""
ZOO_EXPRESSIONS = {
    '!!python/object/apply:eval ["[[x, x * 2**(1.0/3), x * 2**(2.0/3) ] for x in [32, 64, 128, 256, 512 ]]"]': repr(
        [[x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in [32, 64, 128, 256, 512]]
    ),
}
"""The one Python expression of the model zoo's own configs (``Base-RetinaNet.yaml``'s anchor
sizes, which detectron2 evaluates with ``yaml.unsafe_load``), and its value written as plain YAML:
detlit computes it here, and reads every config file, the zoo's included, as plain YAML."""

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
        config_name: model-zoo config, relative to detectron2's ``model_zoo/configs`` folder, or
            the path of a detectron2 yaml file (see :func:`config_file`).
        num_classes: number of object classes (``MODEL.ROI_HEADS.NUM_CLASSES``).
        min_size_train: shortest-edge sizes sampled in training (``INPUT.MIN_SIZE_TRAIN``).
        max_size_train: cap on the longest edge in training.
        min_size_test: shortest-edge size at inference.
        max_size_test: cap on the longest edge at inference.
        overrides: extra detectron2 keys in dotted form, e.g. ``{"MODEL.RESNETS.DEPTH": 18}``,
            applied last.
        freeze_at: backbone stages to freeze (``MODEL.BACKBONE.FREEZE_AT``); None keeps the config's.

    Raises:
        ConfigError: the config file cannot be read (see :func:`merge_config_file`), or an
            override names a key detectron2 does not have, or has a wrong type.
    """
    cfg = get_cfg()
    merge_config_file(cfg, config_name)
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


def config_file(config_name: str) -> Path:
    """The yaml file ``model.config_name`` names: a model-zoo config, else an existing file of that path.

    Raises:
        ConfigError: not a ``.yaml`` name, or neither a model-zoo config nor a file.
    """
    if not config_name.endswith(".yaml"):
        raise ConfigError(
            f"model.config_name {config_name} is not a .yaml config (detlit reads detectron2's yaml configs, not "
            "its Python LazyConfigs); pick a .yaml file such as " + DEFAULT_CONFIG
        )
    zoo = find_model_zoo_config(config_name)
    if zoo is not None:
        return zoo
    path = Path(config_name).expanduser()
    if path.is_file():
        return path
    raise ConfigError(
        f"model.config_name {config_name}: no detectron2 model-zoo config of that name (under {MODEL_ZOO_CONFIGS}) "
        f"and no file of that path; name a model-zoo detection config such as {DEFAULT_CONFIG} (docs/architecture.md "
        "lists them) or the path of a detectron2 yaml file"
    )


def merge_config_file(cfg: CfgNode, config_name: str) -> None:
    """Merge the file ``config_name`` names (with its ``_BASE_`` files) into ``cfg``, as detectron2 does.

    detectron2's ``CfgNode.merge_from_file`` reads with ``yaml.unsafe_load`` when the safe loader
    refuses a tag; here every file is plain YAML (:func:`detlit.common.safe_yaml.read_yaml`), and
    the merge, the version check and the upgrade of old configs follow ``merge_from_file`` with
    detectron2's own functions.

    Raises:
        ConfigError: one sentence: the file cannot be found or read, a base cannot be, or a key or
            value is not detectron2's.
    """
    where = f"model.config_name {config_name}"
    path = config_file(config_name)
    loaded = CfgNode(_check_values(_load_with_bases(path, where, ()), where))
    latest = cfg.VERSION
    version = loaded.get("VERSION", None)
    if version is None:
        version = guess_version(loaded, str(path))
    if not isinstance(version, int) or isinstance(version, bool) or not 0 <= version <= latest:
        raise ConfigError(
            f"{where} has VERSION {version!r}; detectron2 configs are versions 0 to {latest}: fix or remove VERSION"
        )
    try:
        if version == latest:
            cfg.merge_from_other_cfg(loaded)
            return
        log.warning("%s is a v%d detectron2 config: upgraded to v%d", where, version, latest)
        old = downgrade_config(cfg, to_version=version)
        old.merge_from_other_cfg(loaded)
        upgraded = upgrade_config(old)
    except KeyError as err:
        raise ConfigError(_unknown_key(where, err)) from err
    except (ValueError, TypeError, AssertionError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"{where} does not fit detectron2's config ({reason}); fix that key") from err
    cfg.clear()
    cfg.update(upgraded)


def _load_with_bases(path: Path, where: str, chain: tuple[Path, ...]) -> dict[str, Any]:
    """A config file's mapping with its ``_BASE_`` files merged under it (detectron2's
    ``load_yaml_with_base``): a base is a path relative to the file, or absolute; URLs, cycles
    and chains longer than :data:`MAX_BASES` are refused."""
    source = where if not chain else f"{where}: base file {path}"
    text = read_text(path, source)
    if path.resolve().is_relative_to(MODEL_ZOO_CONFIGS.resolve()):
        for expression, value in ZOO_EXPRESSIONS.items():
            text = text.replace(expression, value)
    loaded = load_yaml(text, source)
    if loaded is None:
        raise ConfigError(f"{source} is empty; name a detectron2 config")
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"{source} is not a detectron2 config (it holds a {type(loaded).__name__}, not a mapping of keys); "
            "name a detectron2 yaml config"
        )
    bases = loaded.pop(BASE_KEY, None)
    if bases is None:
        return loaded
    merged: dict[str, Any] = {}
    for base in bases if isinstance(bases, list) else [bases]:
        _merge_into(_load_with_bases(_base_path(base, path, source, chain), where, (*chain, path)), merged, source)
    _merge_into(loaded, merged, source)
    return merged


def _base_path(base: Any, path: Path, source: str, chain: tuple[Path, ...]) -> Path:
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{source}: {BASE_KEY} {base!r} is not a file name; name a yaml file or a list of them")
    if base.startswith(("http://", "https://")):
        raise ConfigError(
            f"{source}: {BASE_KEY} {base} is a URL; detlit reads local base files only: download it and name its path"
        )
    found = Path(base).expanduser()
    found = found if found.is_absolute() else path.parent / found
    if not found.is_file():
        raise ConfigError(f"{source}: its {BASE_KEY} {found} does not exist; fix {BASE_KEY}")
    if any(found.resolve() == seen.resolve() for seen in (*chain, path)):
        raise ConfigError(f"{source}: {BASE_KEY} {base} leads back to a file that bases itself on it; break the cycle")
    if len(chain) + 1 > MAX_BASES:  # this base would be the chain's next
        raise ConfigError(f"{source}: more than {MAX_BASES} {BASE_KEY} files one on another; flatten the chain")
    return found


def _merge_into(config: dict[str, Any], base: dict[str, Any], source: str) -> None:
    """detectron2's merge of a config into its base: mappings key by key, anything else replaced."""
    for key, value in config.items():
        if isinstance(value, dict) and key in base:
            if not isinstance(base[key], dict):
                raise ConfigError(f"{source}: key '{key}' is a mapping, but its {BASE_KEY} sets it to a value")
            _merge_into(value, base[key], source)
        else:
            base[key] = value


def _check_values(config: dict[str, Any], where: str, prefix: str = "") -> dict[str, Any]:
    """``config``, once every key is a string and every value one a detectron2 config can hold."""
    for key, value in config.items():
        name = f"{prefix}{key}"
        if not isinstance(key, str):
            raise ConfigError(f"{where} is not a detectron2 config (it has the key {key!r}, not a name)")
        if isinstance(value, dict):
            _check_values(value, where, f"{name}.")
        elif not isinstance(value, CONFIG_VALUE_TYPES):
            raise ConfigError(
                f"{where} sets {name} to a {type(value).__name__}, which a detectron2 config cannot hold; give a "
                "string, number, boolean or list"
            )
    return config


def _unknown_key(where: str, err: KeyError) -> str:
    """The sentence for a key detectron2 does not know (yacs: ``Non-existent config key: A.B``)."""
    text = str(err.args[0]) if err.args else ""
    if "Non-existent config key" not in text:  # a key detectron2 renamed: its message says to what
        reason = text.splitlines()[0] if text else "KeyError"
        return f"{where} does not fit detectron2's config ({reason}); fix that key"
    key = text.rpartition(": ")[2]
    return (
        f"{where} is not a detectron2 config (it has key '{key}', which detectron2 does not know); "
        "model.config_name names a detectron2 model-zoo config or a detectron2 yaml file, a detlit config goes "
        "to --config"
    )


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
