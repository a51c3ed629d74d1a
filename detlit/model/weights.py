"""Pretrained weights for a detectron2 model: model-zoo URLs, ``.pkl``/``.pth`` files, detlit checkpoints.

Parameters whose shape differs from the model (the class-dependent heads, when the number of
classes differs) keep their fresh initialisation; they, and parameters the file does not have,
are listed in the log.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detlit.compat import DetectionCheckpointer, PathManager
from detlit.errors import WeightsError
from detlit.model.checkpoints import verify_file

log = logging.getLogger(__name__)

REMOTE_PREFIXES = ("http://", "https://", "detectron2://")
LIGHTNING_PREFIX = "model."  # DetectionModule keeps the detectron2 model in `self.model`


def local_path(source: str) -> Path:
    """The local file of ``source``, downloading (and caching) a URL first."""
    if source.startswith(REMOTE_PREFIXES):
        try:
            return Path(PathManager.get_local_path(source))
        except (OSError, ValueError, RuntimeError) as err:
            raise WeightsError(
                f"could not download weights {source} ({type(err).__name__}: {err}); check the URL and the "
                "network, download the file yourself and set model.weights to its path, or set model.weights "
                "to null to train from scratch"
            ) from err
    path = Path(source)
    if not path.is_file():
        raise WeightsError(
            f"weights file {source} does not exist; set model.weights to a .pkl/.pth/.ckpt file, "
            "a detectron2 model-zoo URL, or null to train from scratch"
        )
    return path


def read_checkpoint(path: Path, model: nn.Module) -> dict[str, Any]:
    """The file as detectron2's checkpointer expects it: ``{"model": state_dict, ...}``."""
    try:
        if path.suffix == ".ckpt":
            verify_file(path, "model.weights")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            state = checkpoint.get("state_dict", checkpoint)
            weights = {k[len(LIGHTNING_PREFIX) :]: v for k, v in state.items() if k.startswith(LIGHTNING_PREFIX)}
            if not weights:
                raise KeyError("no detectron2 model weights (keys 'model.*') in its state_dict")
            return {"model": weights}
        # .pkl (detectron2 model zoo or Detectron1 format; name conversion by detectron2) or .pth
        loaded: dict[str, Any] = DetectionCheckpointer(model)._load_file(str(path))
        return loaded
    except (OSError, ValueError, RuntimeError, KeyError, EOFError, AttributeError, pickle.UnpicklingError) as err:
        raise WeightsError(
            f"could not read weights from {path} ({type(err).__name__}: {err}); pass a detectron2 .pkl/.pth "
            "file or a detlit .ckpt checkpoint"
        ) from err


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
    checkpoint = read_checkpoint(path, model)
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
