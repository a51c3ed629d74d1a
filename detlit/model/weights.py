"""Stage 6, the model's pretrained weights: model-zoo names and URLs, ``.pkl``/``.pth`` files, detlit checkpoints.

``model.weights`` names a file, a URL (downloaded once into a verified cache,
:mod:`detlit.model.download`), or one of two names resolved for ``model.config_name``
(:func:`weights_source`): ``coco``, the model zoo's COCO-trained checkpoint of that architecture,
and ``imagenet``, the ImageNet backbone its model-zoo config starts from (``MODEL.WEIGHTS``).

Weights files often come from elsewhere (a URL, a colleague): reading one never runs code from
it (:func:`read_checkpoint`). Parameters whose shape differs from the model (the class-dependent
heads, when the number of classes differs) keep their fresh initialisation; they, and parameters
the file does not have, are listed in the log.
"""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from detlit.common.archives import check_archive
from detlit.common.paths import not_a_file
from detlit.common.safe_pickle import load_pickle
from detlit.compat import (
    MODEL_ZOO_CONFIGS,
    CfgNode,
    DetectionCheckpointer,
    find_model_zoo_config,
    model_zoo_checkpoint_url,
)
from detlit.errors import DetlitError, WeightsError
from detlit.model.checkpoints import verify_file
from detlit.model.download import fetch, is_remote

log = logging.getLogger(__name__)

COCO, IMAGENET = "coco", "imagenet"
"""The names ``model.weights`` takes besides files and URLs."""
LIGHTNING_PREFIX = "model."  # DetectionModule keeps the detectron2 model in `self.model`
FIX = "pass a detectron2 .pkl/.pth file or a detlit .ckpt checkpoint"
IMAGENET_BACKBONES = {
    (50, 1, 64): "detectron2://ImageNetPretrained/MSRA/R-50.pkl",
    (101, 1, 64): "detectron2://ImageNetPretrained/MSRA/R-101.pkl",
    (101, 32, 8): "detectron2://ImageNetPretrained/FAIR/X-101-32x8d.pkl",
}
"""The ImageNet weights the model zoo's configs start from (their ``MODEL.WEIGHTS``), by backbone:
(depth, groups, width per group)."""
# A backbone as detectron2's file and config names spell it: R-50, R_101, X-101-32x8d, X_101_32x8d.
BACKBONE_NAME = re.compile(r"(?:^|[/_-])([RX])[-_](\d+)(?:[-_](\d+)x(\d+)d)?(?=[._-]|$)")
# What a file that is not the weights it claims to be raises while it is read.
READ_ERRORS = (
    OSError,
    ValueError,
    TypeError,
    IndexError,
    RuntimeError,
    KeyError,
    EOFError,
    AttributeError,
    pickle.UnpicklingError,
)


def weights_source(weights: str, config_name: str, cfg: CfgNode) -> str:
    """The file or URL ``model.weights`` names: ``coco`` and ``imagenet`` resolved for the model.

    Raises:
        WeightsError: the model zoo has no such weights for this model (one sentence).
    """
    if weights == COCO:
        url = coco_url(config_name)
        _warn_other_backbone(url, cfg, "the model zoo's COCO-trained checkpoint")
        log.info("model.weights coco: the model zoo's COCO-trained %s, %s", config_name, url)
        return url
    if weights == IMAGENET:
        url = imagenet_url(config_name, cfg)
        log.info("model.weights imagenet: the ImageNet backbone of %s, %s", config_name, url)
        return url
    return weights


def coco_url(config_name: str) -> str:
    """The URL of the model zoo's COCO-trained checkpoint of ``config_name``."""
    zoo = find_model_zoo_config(config_name)
    url = model_zoo_checkpoint_url(str(zoo.relative_to(MODEL_ZOO_CONFIGS.resolve()))) if zoo is not None else None
    if url is None:
        where = "is no model-zoo config" if zoo is None else "has no COCO-trained checkpoint in the model zoo"
        raise WeightsError(
            f"model.weights coco names the model zoo's COCO-trained checkpoint of model.config_name, and {config_name} "
            f"{where}; set model.weights to a URL or file of weights of this architecture, imagenet, or null"
        )
    return url


def imagenet_url(config_name: str, cfg: CfgNode) -> str:
    """The model zoo's ImageNet weights of the model's backbone, those its configs start from."""
    backbone = backbone_in(cfg)
    url = IMAGENET_BACKBONES.get(backbone) if "resnet" in str(cfg.MODEL.BACKBONE.NAME) else None
    if url is None:
        raise WeightsError(
            "model.weights imagenet: detectron2's model zoo has ImageNet weights for ResNet-50, ResNet-101 and "
            f"ResNeXt-101 32x8d backbones, and this model's backbone is a {describe(backbone)} (model.config_name "
            f"{config_name}, model.overrides MODEL.RESNETS.*); set model.weights to a detectron2 .pkl/.pth file of "
            "its backbone, or null to train from scratch (with GroupNorm, as configs/sample_cpu.yaml)"
        )
    return url


def backbone_of(name: str) -> tuple[int, int, int] | None:
    """(depth, groups, width per group) of a ResNet or ResNeXt as a file or config name spells it."""
    found = BACKBONE_NAME.search(name)
    if found is None:
        return None
    if found.group(1) == "R":
        return int(found.group(2)), 1, 64
    if found.group(3) is None:
        return None
    return int(found.group(2)), int(found.group(3)), int(found.group(4))


def backbone_in(cfg: CfgNode) -> tuple[int, int, int]:
    """(depth, groups, width per group) of the model's ResNet backbone."""
    resnets = cfg.MODEL.RESNETS
    return int(resnets.DEPTH), int(resnets.NUM_GROUPS), int(resnets.WIDTH_PER_GROUP)


def describe(backbone: tuple[int, int, int]) -> str:
    depth, groups, width = backbone
    return f"ResNet-{depth}" if groups == 1 else f"ResNeXt-{depth} {groups}x{width}d"


def _warn_other_backbone(url: str, cfg: CfgNode, what: str) -> None:
    trained = backbone_of(url.split("/detectron2/", 1)[-1])
    if trained is not None and trained != backbone_in(cfg):
        log.warning(
            "%s (%s) has a %s backbone and this model a %s (model.overrides): only the tensors of matching name and "
            "shape load",
            what,
            url,
            describe(trained),
            describe(backbone_in(cfg)),
        )


def local_path(source: str) -> Path:
    """The local file of ``source``, downloading (and caching) a URL first."""
    if is_remote(source):
        return fetch(source)
    path = Path(source)
    problem = not_a_file(path)  # a named pipe or a device would block, or never end
    if problem is not None:
        raise WeightsError(
            f"weights file {source} {problem}; set model.weights to a .pkl/.pth/.ckpt file, "
            "a detectron2 model-zoo URL, coco, imagenet, or null to train from scratch"
        )
    return path


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The file as detectron2's checkpointer expects it: ``{"model": state_dict, ...}``.

    Nothing in the file runs: ``.pkl`` goes through the restricted unpickler of
    :mod:`detlit.common.safe_pickle`, every other format through ``torch.load(weights_only=True)``.
    The formats are detectron2's (``DetectionCheckpointer._load_file``), which is never called,
    since it unpickles with ``pickle.load``.

    Raises:
        WeightsError: the file asks for code, cannot be read, or holds no weights (one sentence).
    """
    named = f"model.weights {path}"
    try:
        if path.suffix == ".ckpt":
            checkpoint = _read_lightning(path)
        elif path.suffix == ".pkl":
            checkpoint = _read_pkl(path)
        else:
            check_archive(path, named, FIX)
            checkpoint = _read_torch(path)
    except READ_ERRORS as err:
        if isinstance(err, DetlitError):
            raise
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise WeightsError(f"could not read weights from {path} ({type(err).__name__}: {reason}); {FIX}") from err
    _require_tensors(checkpoint["model"], path)
    return checkpoint


def _read_lightning(path: Path) -> dict[str, Any]:
    """A detlit checkpoint's detectron2 weights (its ``model.*`` keys)."""
    verify_file(path, "model.weights")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise KeyError("no state_dict")
    weights = {k[len(LIGHTNING_PREFIX) :]: v for k, v in state.items() if str(k).startswith(LIGHTNING_PREFIX)}
    if not weights:
        raise KeyError("no detectron2 model weights (keys 'model.*') in its state_dict")
    return {"model": weights}


def _read_pkl(path: Path) -> dict[str, Any]:
    """A detectron2 model-zoo pickle kept as it is; a Detectron1/Caffe2 one as detectron2 converts it."""
    data = load_pickle(path, f"weights file {path}")
    if not isinstance(data, dict):
        raise ValueError(f"it holds a {type(data).__name__}, not a mapping of weights")
    if "model" in data and "__author__" in data:
        return data
    # Caffe2 / Detectron1: detection models keep their weights under "blobs", ImageNet ones at the top.
    blobs = data["blobs"] if isinstance(data.get("blobs"), dict) else data
    weights = {k: v for k, v in blobs.items() if not str(k).endswith("_momentum")}
    return {"model": weights, "__author__": "Caffe2", "matching_heuristics": True}


def _read_torch(path: Path) -> dict[str, Any]:
    """A ``.pth`` state dict (or ``{"model": state_dict}``); a pycls ``.pyth`` as detectron2 converts it."""
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(loaded, dict):
        raise ValueError(f"it holds a {type(loaded).__name__}, not a mapping of weights")
    if path.suffix == ".pyth":
        if not isinstance(loaded.get("model_state"), dict):
            raise KeyError("a pycls .pyth file holds 'model_state'")
        state = {k: v for k, v in loaded["model_state"].items() if not str(k).endswith("num_batches_tracked")}
        return {"model": state, "__author__": "pycls", "matching_heuristics": True}
    return loaded if "model" in loaded else {"model": loaded}


def _require_tensors(weights: Any, path: Path) -> None:
    """Refuse, in one sentence, weights detectron2's loader would stop at with a traceback."""
    if not isinstance(weights, dict):
        raise WeightsError(
            f"weights file {path} holds a {type(weights).__name__} as its model, not a mapping of tensors; {FIX}"
        )
    for key, value in weights.items():
        if not isinstance(value, (np.ndarray, torch.Tensor)):
            raise WeightsError(
                f"weights file {path} holds a {type(value).__name__} at {str(key)[:80]!r}, where weights are arrays "
                f"or tensors; {FIX}"
            )


def model_name(model: nn.Module) -> str:
    backbone = getattr(model, "backbone", None)
    return f"{type(model).__name__} with a {type(backbone).__name__}" if backbone is not None else type(model).__name__


def load_pretrained(model: nn.Module, source: str) -> dict[str, list[str]]:
    """Load ``source`` into ``model``; return (and log) what was not loaded.

    Returns:
        ``reinitialised`` (shape differs: fresh initialisation kept), ``missing`` (not in the
        file) and ``unexpected`` (in the file, not in the model) parameter names.
    """
    path = local_path(source)
    try:
        checkpoint = read_checkpoint(path)
    except WeightsError as err:
        if not is_remote(source):
            raise
        # Downloaded, but not weights: nothing the server sent stays in the cache.
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".sha256").unlink(missing_ok=True)
        raise WeightsError(f"{err} (downloaded from {source}; removed from the cache)") from err
    loaded = len(checkpoint["model"])
    incompatible = DetectionCheckpointer(model)._load_model(checkpoint)
    report = {
        "reinitialised": [name for name, _, _ in incompatible.incorrect_shapes],
        "missing": [k for k in incompatible.missing_keys if k not in {n for n, _, _ in incompatible.incorrect_shapes}],
        "unexpected": list(incompatible.unexpected_keys),
    }
    fitted = loaded - len(report["unexpected"]) - len(report["reinitialised"])
    if fitted <= 0:
        raise WeightsError(
            f"none of the {loaded} tensors in {source} fits this model ({model_name(model)}); pass weights of the "
            "same architecture (model.config_name, model.overrides), or null to train from scratch"
        )
    log.info(
        "loaded pretrained weights from %s (%d of the %d tensors in the file fit the model)", source, fitted, loaded
    )
    if report["reinitialised"]:
        shapes = ", ".join(f"{k} {tuple(a)} -> {tuple(b)}" for k, a, b in incompatible.incorrect_shapes)
        log.info("re-initialised (shape differs, e.g. another number of classes): %s", shapes)
    if report["missing"]:
        log.warning("not in %s, left as initialised: %s", source, ", ".join(report["missing"]))
    if report["unexpected"]:
        log.info("in %s but not in the model, ignored: %s", source, ", ".join(report["unexpected"]))
    return report
