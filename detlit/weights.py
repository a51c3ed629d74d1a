"""Loading pretrained weights into a detectron2 model: a URL, a .pkl or a .pth file."""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from detlit.compat import DetectionCheckpointer
from detlit.errors import WeightsError

log = logging.getLogger(__name__)

REMOTE_PREFIXES = ("http://", "https://", "detectron2://")


def load_pretrained(model: nn.Module, weights: str) -> None:
    """Load ``weights`` (model-zoo URL, ``detectron2://`` path, ``.pkl`` or ``.pth`` file).

    Heads whose shape differs (another number of classes) keep their fresh initialisation;
    detectron2's checkpointer logs each of them.
    """
    remote = weights.startswith(REMOTE_PREFIXES)
    if not remote and not Path(weights).is_file():
        raise WeightsError(
            f"weights file {weights} does not exist; set model.weights to a .pkl/.pth file, "
            "a detectron2 model-zoo URL, or null to train from scratch"
        )
    try:
        DetectionCheckpointer(model).load(weights)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        where = "download" if remote else "read"
        raise WeightsError(
            f"could not {where} weights {weights} ({type(err).__name__}: {err}); "
            "check the path or URL and the network, or set model.weights to null"
        ) from err
    log.info("loaded pretrained weights from %s", weights)
