"""Pretrained weights for a detectron2 model: model-zoo URLs, ``.pkl``/``.pth`` files, detlit checkpoints.

Weights files often come from elsewhere (a URL, a colleague): reading one never runs code from
it (:func:`read_checkpoint`). Parameters whose shape differs from the model (the class-dependent
heads, when the number of classes differs) keep their fresh initialisation; they, and parameters
the file does not have, are listed in the log.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from detlit.common.archives import check_archive
from detlit.common.paths import not_a_file
from detlit.common.safe_pickle import load_pickle
from detlit.compat import DetectionCheckpointer, PathManager
from detlit.errors import DetlitError, WeightsError
from detlit.model.checkpoints import verify_file

log = logging.getLogger(__name__)

REMOTE_PREFIXES = ("http://", "https://", "detectron2://")
LIGHTNING_PREFIX = "model."  # DetectionModule keeps the detectron2 model in `self.model`
FIX = "pass a detectron2 .pkl/.pth file or a detlit .ckpt checkpoint"
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
    problem = not_a_file(path)  # a named pipe or a device would block, or never end
    if problem is not None:
        raise WeightsError(
            f"weights file {source} {problem}; set model.weights to a .pkl/.pth/.ckpt file, "
            "a detectron2 model-zoo URL, or null to train from scratch"
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
    checkpoint = read_checkpoint(path)
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
