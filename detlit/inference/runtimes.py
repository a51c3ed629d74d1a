"""How a trained model runs: in PyTorch from a checkpoint, as TorchScript, or in ONNX Runtime.

Every runtime answers the same call: a batch of same-shape model input images (uint8 (3, H, W)
tensors, already resized, channels in the model's order) in, per image the raw
:class:`Detections` out: boxes XYXY in the INPUT image's pixels, scores and contiguous labels,
what the model keeps above its score floor. Rescaling to the original image, the per-class
thresholds and the names are the :class:`~detlit.inference.predictor.Predictor`'s, once for every
runtime.

* :class:`EagerRuntime`: a :class:`~detlit.model.module.DetectionModule` (a loaded checkpoint) in
  PyTorch, on any device, in full or mixed precision; it can lower its score floor for a caller
  that wants detections below it.
* :class:`TorchScriptRuntime`: a file written by ``python -m detlit.export --format torchscript``,
  run with torch and torchvision only (no detectron2, no Lightning), on the CPU it was traced on.
* :class:`OnnxRuntime`: a file written by ``--format onnx``, run by onnxruntime, with its CUDA
  provider when onnxruntime has one and the CPU otherwise.

Exported models fix their score floor and per-image detection limit when they are exported; the
metadata json beside the model file (:func:`metadata_path`) holds their
:class:`~detlit.inference.facts.ModelFacts`.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol, TypeAlias, runtime_checkable

import torch

from detlit.common.devices import AUTO, resolve_device
from detlit.errors import ConfigError, WeightsError
from detlit.inference.facts import ModelFacts

if TYPE_CHECKING:
    from detlit.model.module import DetectionModule

log = logging.getLogger(__name__)

Precision: TypeAlias = Literal["32", "bf16", "16"]
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "16": torch.float16}

FORMATS = ("torchscript", "onnx")
SUFFIXES = {"torchscript": ".torchscript", "onnx": ".onnx"}
METADATA_KIND = "detlit exported model"
METADATA_VERSION = 1


class Detections(NamedTuple):
    """One image's raw detections, on the CPU: what a model outputs before detlit's postprocess."""

    boxes: torch.Tensor  # (N, 4) XYXY in the input image's pixels
    scores: torch.Tensor  # (N,)
    labels: torch.Tensor  # (N,) int64 contiguous labels


@runtime_checkable
class Runtime(Protocol):
    """A model that runs (see the module docstring)."""

    name: str
    facts: ModelFacts
    device: torch.device
    fixed_floor: bool  # True: detections at or below facts.score_floor cannot be had

    def __call__(self, images: Sequence[torch.Tensor], floor: float) -> list[Detections]:
        """Raw detections of same-shape model input images; ``floor`` lowers the score floor where
        the runtime can (never raises it)."""
        ...


# --- a checkpoint, in PyTorch ---------------------------------------------------------------------


def check_precision(device: torch.device, precision: str) -> None:
    if precision == "32":
        return
    if not torch.amp.is_autocast_available(device.type):
        raise ConfigError(f"mixed precision is not available on {device.type}; use precision 32")
    if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError("this GPU cannot compute in bfloat16; use precision 16 or 32")


class EagerRuntime:
    """A :class:`~detlit.model.module.DetectionModule` run by PyTorch (put in eval mode on ``device``).

    Args:
        module: the trained model.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``32``, or ``bf16`` / ``16`` mixed precision (torch.autocast).
    """

    name = "checkpoint"
    fixed_floor = False

    def __init__(self, module: DetectionModule, device: str = AUTO, precision: Precision = "32"):
        self.device = resolve_device(device)
        check_precision(self.device, precision)
        self.precision = precision
        self.module = module.to(self.device).eval()
        self.facts = ModelFacts.from_module(module)

    def _autocast(self) -> Any:
        if self.precision == "32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[self.precision])

    @torch.no_grad()
    def __call__(self, images: Sequence[torch.Tensor], floor: float) -> list[Detections]:
        with self.module.score_floor(floor), self._autocast():
            results = self.module.detect(images)
        return [
            Detections(r.pred_boxes.tensor.to("cpu"), r.scores.to("cpu"), r.pred_classes.to("cpu")) for r in results
        ]


# --- exported models -------------------------------------------------------------------------------


def metadata_path(model: Path) -> Path:
    """The metadata json of an exported model file: ``last.onnx`` -> ``last.onnx.json``."""
    return model.with_name(model.name + ".json")


def is_exported(path: Path) -> bool:
    """Whether ``path`` names an exported model file (by its suffix)."""
    return path.suffix in SUFFIXES.values()


def read_metadata(model: Path) -> dict[str, Any]:
    """The metadata json beside an exported model file.

    Raises:
        WeightsError: the model file or its metadata is missing or unreadable.
    """
    if not model.is_file():
        raise WeightsError(f"exported model {model} does not exist; write one with python -m detlit.export")
    path = metadata_path(model)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WeightsError(
            f"{path} is missing: an exported model needs the metadata json written beside it; export the model "
            "again with python -m detlit.export"
        ) from None
    except (OSError, ValueError) as err:
        raise WeightsError(f"{path} is not readable JSON ({err}); export the model again") from err
    if not isinstance(document, dict) or document.get("kind") != METADATA_KIND:
        raise WeightsError(f"{path} is not the metadata of a detlit exported model; export the model again")
    return document


class TorchScriptRuntime:
    """A TorchScript file written by ``python -m detlit.export --format torchscript``.

    It needs torch and torchvision only. It was traced on the CPU, where it runs: devices are
    written into a traced graph.
    """

    name = "torchscript"
    fixed_floor = True

    def __init__(self, path: Path, facts: ModelFacts, device: str = AUTO):
        import torchvision  # noqa: F401  (registers roi_align and nms, which the traced graph calls)

        if device != AUTO and resolve_device(device).type != "cpu":
            raise ConfigError(
                f"TorchScript model {path} was traced on the CPU and runs there; use --device cpu (or auto), or "
                "export --format onnx to run on a GPU with onnxruntime-gpu"
            )
        self.device = torch.device("cpu")
        self.facts = facts
        # The traced graph holds detectron2's torch.meshgrid call, which warns at every image (compat.py
        # silences it for detectron2 itself); torch.jit.load warns that TorchScript is deprecated.
        warnings.filterwarnings("ignore", message="torch.meshgrid: in an upcoming release", category=UserWarning)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*torch.jit.load.*", category=FutureWarning)
                self.model = torch.jit.load(str(path), map_location="cpu")
        except RuntimeError as err:
            raise WeightsError(f"{path} is not a loadable TorchScript file ({err}); export the model again") from err
        self.model.eval()

    @torch.no_grad()
    def __call__(self, images: Sequence[torch.Tensor], floor: float) -> list[Detections]:
        # Traced for one image: a batch is run image by image.
        return [Detections(*self.model(image)) for image in images]


class OnnxRuntime:
    """An ONNX file written by ``python -m detlit.export --format onnx``, run by onnxruntime.

    ``device`` ``auto`` takes onnxruntime's CUDA provider when it has one (``onnxruntime-gpu``),
    else the CPU; onnxruntime uses as many threads as torch (``torch.get_num_threads()``).
    """

    name = "onnx"
    fixed_floor = True

    def __init__(self, path: Path, facts: ModelFacts, device: str = AUTO):
        try:
            import onnxruntime
        except ImportError:
            raise ConfigError(
                f"running {path} needs onnxruntime, which is not installed; run `make install` (or pip install "
                "onnxruntime)"
            ) from None
        available = onnxruntime.get_available_providers()
        cuda = "CUDAExecutionProvider" in available
        wanted = resolve_device(device) if device != AUTO else torch.device("cuda" if cuda else "cpu")
        if wanted.type == "cuda" and not cuda:
            raise ConfigError(
                f"device {device} asked for, but this onnxruntime has no CUDA provider (only "
                f"{', '.join(available)}); install onnxruntime-gpu, or use --device cpu"
            )
        if wanted.type == "cuda":
            providers: list[Any] = [("CUDAExecutionProvider", {"device_id": wanted.index or 0}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.log_severity_level = 3  # errors only: its warnings about unused initialisers say nothing to users
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types for unreadable files
            raise WeightsError(f"{path} is not a loadable ONNX model ({err}); export the model again") from err
        self.input_name = self.session.get_inputs()[0].name
        self.device = wanted
        self.facts = facts

    def __call__(self, images: Sequence[torch.Tensor], floor: float) -> list[Detections]:
        detections = []
        for image in images:
            boxes, scores, labels = self.session.run(None, {self.input_name: image.numpy()})
            detections.append(
                Detections(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels).long())
            )
        return detections


def load_exported(path: Path, device: str = AUTO) -> Runtime:
    """The runtime of an exported model file (``.torchscript`` or ``.onnx``) and its metadata.

    Raises:
        WeightsError: the file, its metadata or a fact is missing, or the file cannot be loaded.
        ConfigError: the device cannot run it, or onnxruntime is missing.
    """
    document = read_metadata(path)
    facts = ModelFacts.from_json(document.get("facts", {}), str(metadata_path(path)))
    kind = document.get("format")
    if kind == "torchscript":
        return TorchScriptRuntime(path, facts, device)
    if kind == "onnx":
        return OnnxRuntime(path, facts, device)
    raise WeightsError(f"{metadata_path(path)} names format {kind!r}; detlit runs {', '.join(FORMATS)}")
