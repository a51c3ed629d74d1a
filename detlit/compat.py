"""The one door from detlit to detectron2.

Every detlit module imports detectron2 names from here, never from ``detectron2`` directly, so
the few adjustments that detectron2 v0.6 needs on today's stack are made once, before any
detectron2 module is loaded:

* Without the compiled extension (the pure-Python build that ``tools/install_detectron2.py``
  installs from PyPI), ``detectron2._C`` is replaced by a stand-in module. Faster R-CNN does not
  need it (torchvision provides ``roi_align`` and ``nms``); a rotated-box or deformable op raises
  :class:`CompiledOpMissingError` naming the op and the fix, only when it is actually called.
* Pillow 10 removed ``Image.LINEAR``, which detectron2 reads at import time; it is restored as
  the alias of ``Image.BILINEAR`` that it always was.
* ``detectron2.model_zoo`` imports ``pkg_resources`` (gone from setuptools >= 82), so model-zoo
  yaml files are found by path (:func:`model_zoo_config_path`), and only inside the model zoo's
  folder: an absolute path or a ``..`` that leaves it is not a model-zoo name. The model zoo's
  checkpoint URLs (:func:`model_zoo_checkpoint_url`) come from its module, imported with an empty
  stand-in ``pkg_resources`` that only its ``get_config_file`` would use, which detlit does not.

With upstream detectron2 (compiled ops present, current Pillow constants) nothing is changed.
"""

from __future__ import annotations

import importlib.util
import sys
import types
import warnings
from pathlib import Path
from typing import Any, NoReturn

from PIL import Image

from detlit.errors import ConfigError

INSTALL_GIT_HINT = "python tools/install_detectron2.py --source git"
INSTALL_HINT = "run `make install` (or `python tools/install_detectron2.py`)"


class CompiledOpMissingError(RuntimeError):
    """A detectron2 op that needs the compiled extension was called without it."""


def _missing_op(name: str) -> Any:
    def op(*args: Any, **kwargs: Any) -> NoReturn:
        raise CompiledOpMissingError(
            f"detectron2 op '{name}' needs detectron2's compiled extension, which this "
            f"installation does not have (pure-Python build); install upstream detectron2 "
            f"with `{INSTALL_GIT_HINT}`"
        )

    op.__name__ = name
    return op


class _CompiledOpsStandIn(types.ModuleType):
    """Stands in for ``detectron2._C``: every attribute is an op that raises when called."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _missing_op(name)


def _prepare() -> bool:
    """Apply the import-time adjustments; return whether compiled ops are present."""
    if not hasattr(Image, "LINEAR"):
        Image.LINEAR = Image.BILINEAR  # type: ignore[attr-defined]
    if importlib.util.find_spec("detectron2") is None:
        raise ImportError(f"detectron2 is not installed; {INSTALL_HINT}")
    compiled = importlib.util.find_spec("detectron2._C") is not None
    if not compiled and "detectron2._C" not in sys.modules:
        sys.modules["detectron2._C"] = _CompiledOpsStandIn("detectron2._C")
    return compiled


HAS_COMPILED_OPS = _prepare()

# detectron2 may only be imported after _prepare(). Its modules decorate functions with
# torch.jit.script at import time, which torch now answers with a FutureWarning per call that
# says nothing actionable to a detlit user.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
    import detectron2
    import detectron2.layers
    import detectron2.layers.nms
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import CfgNode, get_cfg
    from detectron2.config.compat import downgrade_config, guess_version, upgrade_config
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.transforms import ResizeShortestEdge as D2ResizeShortestEdge
    from detectron2.modeling import GeneralizedRCNN, build_model
    from detectron2.modeling.proposal_generator import PROPOSAL_GENERATOR_REGISTRY, RPN
    from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, CascadeROIHeads, Res5ROIHeads, StandardROIHeads
    from detectron2.structures import Boxes, BoxMode, ImageList, Instances, pairwise_ioa
    from detectron2.utils.events import EventStorage


def _model_zoo_urls() -> Any:
    """detectron2's ``model_zoo.get_checkpoint_url``, imported with or without ``pkg_resources``."""
    stand_in = "pkg_resources" not in sys.modules and importlib.util.find_spec("pkg_resources") is None
    if stand_in:
        sys.modules["pkg_resources"] = types.ModuleType("pkg_resources")
    try:
        from detectron2.model_zoo import get_checkpoint_url

        return get_checkpoint_url
    finally:
        if stand_in:
            del sys.modules["pkg_resources"]


_get_checkpoint_url = _model_zoo_urls()

# detectron2 v0.6 calls torch.meshgrid without `indexing` (its anchors need the default "ij").
warnings.filterwarnings("ignore", message="torch.meshgrid: in an upcoming release", category=UserWarning)

if not HAS_COMPILED_OPS:
    # nms_rotated goes through torch.ops, not _C; give it the same clear error.
    detectron2.layers.nms.nms_rotated = _missing_op("nms_rotated")
    detectron2.layers.nms_rotated = detectron2.layers.nms.nms_rotated

DETECTRON2_VERSION: str = detectron2.__version__


MODEL_ZOO_CONFIGS = Path(detectron2.__file__).parent / "model_zoo" / "configs"
"""The folder of detectron2's model-zoo yaml configs."""


def find_model_zoo_config(name: str) -> Path | None:
    """The model-zoo config ``name`` names (relative to :data:`MODEL_ZOO_CONFIGS`), or None.

    A name is a model-zoo name only when it is relative and leads to a file inside the folder:
    an absolute path, or a ``..`` that leaves the folder, is not one.
    """
    if not name or Path(name).is_absolute():
        return None
    configs = MODEL_ZOO_CONFIGS.resolve()
    path = (configs / name).resolve()
    return path if path.is_relative_to(configs) and path.is_file() else None


def model_zoo_detection_configs() -> list[str]:
    """The names of the model zoo's COCO detection configs, for messages."""
    return sorted(str(p.relative_to(MODEL_ZOO_CONFIGS)) for p in MODEL_ZOO_CONFIGS.glob("COCO-Detection/*.yaml"))


def model_zoo_config_path(name: str) -> Path:
    """Path of a model-zoo config such as ``COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml``.

    Raises:
        ConfigError: ``name`` is no model-zoo config (see :func:`find_model_zoo_config`).
    """
    path = find_model_zoo_config(name)
    if path is None:
        raise ConfigError(
            f"no detectron2 model-zoo config '{name}' under {MODEL_ZOO_CONFIGS}; detection configs are: "
            + ", ".join(model_zoo_detection_configs())
        )
    return path


def model_zoo_checkpoint_url(name: str) -> str | None:
    """The URL of the model zoo's COCO-trained checkpoint of the config ``name`` (relative to
    :data:`MODEL_ZOO_CONFIGS`), or None when the model zoo has none."""
    try:
        return str(_get_checkpoint_url(name))
    except RuntimeError:
        return None


__all__ = [
    "DETECTRON2_VERSION",
    "HAS_COMPILED_OPS",
    "MODEL_ZOO_CONFIGS",
    "PROPOSAL_GENERATOR_REGISTRY",
    "ROI_HEADS_REGISTRY",
    "RPN",
    "BoxMode",
    "Boxes",
    "CascadeROIHeads",
    "CfgNode",
    "CompiledOpMissingError",
    "D2ResizeShortestEdge",
    "DatasetCatalog",
    "DetectionCheckpointer",
    "EventStorage",
    "GeneralizedRCNN",
    "ImageList",
    "Instances",
    "MetadataCatalog",
    "Res5ROIHeads",
    "StandardROIHeads",
    "build_model",
    "downgrade_config",
    "find_model_zoo_config",
    "get_cfg",
    "guess_version",
    "model_zoo_checkpoint_url",
    "model_zoo_config_path",
    "model_zoo_detection_configs",
    "pairwise_ioa",
    "upgrade_config",
]
