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
metadata json beside the model file holds their :class:`~detlit.inference.facts.ModelFacts`, and
:mod:`detlit.inference.exported` alone writes and reads it. Both files may come from someone else,
and both are checked before the model runs (:func:`load_exported`): the metadata within bounds,
its facts in range, the model file the one it was written with (:class:`~detlit.inference.exported.ExportedModel`);
here, the model's own classifier says how many classes it has, which the class names must match,
and a class label beyond the names is refused at prediction.

A checkpoint is read once into a :class:`LoadedCheckpoint` (the model, the data settings that name
the run's data, the file's sha256), with the checks of :func:`~detlit.model.checkpoints.read_checkpoint`;
the :class:`~detlit.inference.predictor.Predictor` and the exporter both start from it.
"""

from __future__ import annotations

import functools
import inspect
import logging
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias, runtime_checkable

import numpy as np
import torch

from detlit.common.archives import check_archive
from detlit.common.devices import AUTO, resolve_device
from detlit.common.files import read_bounded, sha256_file
from detlit.common.ranges import MAX_WEIGHTS_DOWNLOAD
from detlit.common.safe_torchscript import check_torchscript
from detlit.errors import ConfigError, DetlitError, WeightsError
from detlit.inference.exported import ExportedModel, Format, metadata_path, weights_path
from detlit.inference.facts import FIX, ModelFacts
from detlit.model.detections import Detections  # what every runtime returns (raw, on the CPU)

if TYPE_CHECKING:
    from detlit.model.module import DetectionModule

log = logging.getLogger(__name__)

Precision: TypeAlias = Literal["32", "bf16", "16"]
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "16": torch.float16}

CLASSIFIER = "model.roi_heads.box_predictor.cls_score.weight"
"""The traced detector's box classifier (export's ``TracedDetector.model``): one row per class,
and a last one for the background."""


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

    def class_probabilities(self, images: Sequence[torch.Tensor], boxes: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per image, the box head's (M, K + 1) class probabilities on its M given XYXY boxes (in the
        inputs' pixels), :func:`detlit.model.box_classes.class_probabilities`.

        Raises:
            ConfigError: the model is a one-stage detector, which has no box head.
        """
        from detlit.model.box_classes import class_probabilities

        if self.module.is_dense:
            raise ConfigError(
                f"{type(self.module.model).__name__} is a one-stage detector: it has no box head to score given boxes"
            )
        with self._autocast():
            return class_probabilities(self.module.model, images, boxes)


@dataclass
class LoadedCheckpoint:
    """A detlit checkpoint read once: what predicting from it and exporting it need.

    Attributes:
        path: the checkpoint file.
        module: the model it holds, in eval mode on the CPU.
        data: the data module's settings saved with it (they name the run's json and image folders;
            empty when it holds none).
    """

    path: Path
    module: DetectionModule
    data: dict[str, Any]

    @classmethod
    def read(cls, path: Path) -> LoadedCheckpoint:
        """Read ``path`` with :func:`~detlit.model.checkpoints.read_checkpoint`'s checks (whole,
        not a zip bomb, weights only, a detlit checkpoint), then build its model from it.

        The model is built as Lightning's ``load_from_checkpoint`` builds it (its saved
        hyper-parameters, :meth:`~detlit.model.module.DetectionModule.on_load_checkpoint`, the state
        dict), from the one loaded copy: ``load_from_checkpoint`` would read the file again.

        Raises:
            WeightsError: the file is missing, not whole (a checksum fails), not a detlit
                checkpoint, or holds a hyper-parameter that cannot work.
        """
        from detlit.model.checkpoints import read_checkpoint

        checkpoint = read_checkpoint(path, "")
        try:
            module = _build_module(checkpoint)
        except ConfigError as err:  # a hyper-parameter out of range (DetectionModule checks them all)
            raise WeightsError(
                f"{path} holds a setting that cannot work ({err}); use a checkpoint of a detlit run"
            ) from err
        except DetlitError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as err:
            raise WeightsError(
                f"{path} is not a detlit checkpoint ({type(err).__name__}: {err}); pass a .ckpt file written by "
                "python -m detlit.fit"
            ) from err
        data = checkpoint.get("datamodule_hyper_parameters")
        return cls(path, module, dict(data) if isinstance(data, dict) else {})

    @functools.cached_property
    def sha256(self) -> str:
        """The checkpoint file's sha256 (computed when first asked: an exported model records it)."""
        return sha256_file(self.path)


def _build_module(checkpoint: dict[str, Any]) -> DetectionModule:
    """The :class:`~detlit.model.module.DetectionModule` of a loaded checkpoint, in eval mode.

    Saved hyper-parameters that are not arguments of the module (Lightning's own ``_class_path``,
    ``_instantiator``) are left out, as ``load_from_checkpoint`` leaves them out.
    """
    from detlit.model.module import DetectionModule

    arguments = inspect.signature(DetectionModule.__init__).parameters
    hparams = {key: value for key, value in checkpoint["hyper_parameters"].items() if key in arguments}
    module = DetectionModule(**hparams)
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint["state_dict"])
    return module.eval()


# --- exported models -------------------------------------------------------------------------------


def _check_classes(named: dict[str, tuple[int, ...]], path: Path, facts: ModelFacts) -> None:
    """Refuse class names that do not match the classes of the model's own classifier.

    Args:
        named: the shapes of the model's tensors, by name (only :data:`CLASSIFIER`'s is looked at).
        path: the model file, for the message.
        facts: the facts of its metadata.

    Raises:
        WeightsError: the metadata names another number of classes than the classifier has.
    """
    shape = named.get(CLASSIFIER)
    if shape is None or len(shape) != 2:
        log.debug("%s has no tensor %s: its number of classes is checked at prediction", path, CLASSIFIER)
        return
    classes = shape[0] - 1  # the last row is the background
    if classes != len(facts.class_names):
        raise WeightsError(
            f"{metadata_path(path)} names {len(facts.class_names)} classes, but the model {path} has {classes} (its "
            f"box classifier has {shape[0]} outputs, one of them the background): they do not belong together; {FIX}"
        )


def checked_labels(detections: Detections, facts: ModelFacts, path: Path) -> Detections:
    """``detections`` whose labels all name a class of ``facts``; any other is one sentence, not an IndexError.

    Raises:
        WeightsError: a label below 0 or beyond the class names.
    """
    labels = detections.labels
    if labels.numel():
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= len(facts.class_names):
            raise WeightsError(
                f"{path} predicted class label {high if high >= len(facts.class_names) else low}, but its metadata "
                f"names {len(facts.class_names)} classes (labels 0..{len(facts.class_names) - 1}): the model and its "
                f"metadata do not belong together; {FIX}"
            )
    return detections


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
        check_archive(path, str(path), FIX)  # a TorchScript file is a zip archive that torch inflates whole
        check_torchscript(path)  # ... and a program: only a detector's operators, before any of it runs
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*torch.jit.load.*", category=FutureWarning)
                self.model = torch.jit.load(str(path), map_location="cpu")
        except RuntimeError as err:
            raise WeightsError(f"{path} is not a loadable TorchScript file ({err}); export the model again") from err
        self.model.eval()
        self.path = path
        _check_classes({name: tuple(t.shape) for name, t in self.model.state_dict().items()}, path, facts)

    @torch.no_grad()
    def __call__(self, images: Sequence[torch.Tensor], floor: float) -> list[Detections]:
        # Traced for one image: a batch is run image by image.
        return [checked_labels(Detections(*self.model(image)), self.facts, self.path) for image in images]


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
        self.path = path
        _check_classes(_onnx_shapes(path, CLASSIFIER), path, facts)

    def __call__(self, images: Sequence[torch.Tensor], floor: float) -> list[Detections]:
        detections = []
        for image in images:
            boxes, scores, labels = self.session.run(None, {self.input_name: image.numpy()})
            raw = Detections(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels).long())
            detections.append(checked_labels(raw, self.facts, self.path))
        return detections


class OpenVinoRuntime:
    """An OpenVINO model (``.xml`` graph, ``.bin`` weights) written by ``python -m detlit.export
    --format openvino``, run by OpenVINO on the CPU with as many threads as torch.

    Both files are read into memory once, within bounds (:data:`MAX_OPENVINO_XML_BYTES`, the weights
    at most :data:`~detlit.common.ranges.MAX_WEIGHTS_DOWNLOAD`), the graph parsed first without DTDs or
    entities (:func:`~detlit.common.safe_xml.parse_xml`); OpenVINO then reads the graph from those
    bytes, so the files checked are the files run. One compiled model takes every input size.
    """

    name = "openvino"
    fixed_floor = True

    def __init__(self, path: Path, facts: ModelFacts, device: str = AUTO):
        try:
            import openvino
        except ImportError:
            raise ConfigError(
                f"running {path} needs OpenVINO, which is not installed; run `make install` (or pip install openvino)"
            ) from None
        from detlit.common.safe_xml import parse_xml
        from detlit.errors import DataError

        if device != AUTO and resolve_device(device).type != "cpu":
            raise ConfigError(
                f"OpenVINO model {path} runs on the CPU here; use --device cpu (or auto), or export --format onnx to "
                "run on a GPU with onnxruntime-gpu"
            )
        graph = read_bounded(path, MAX_OPENVINO_XML_BYTES, WeightsError, FIX)
        weights = read_bounded(weights_path(path), MAX_WEIGHTS_DOWNLOAD, WeightsError, FIX)
        try:
            parse_xml(graph, str(path), "OpenVINO graphs", FIX)
        except DataError as err:
            raise WeightsError(str(err)) from None
        core = openvino.Core()
        try:
            model = core.read_model(graph, weights)  # from the bytes checked (OpenVINO keeps its own copy)
            shapes = {
                op.get_friendly_name(): tuple(int(d) for d in op.get_output_shape(0))
                for op in model.get_ops()
                if op.get_type_name() == "Constant" and op.get_friendly_name() == CLASSIFIER
            }
            _check_classes(shapes, path, facts)
            # float32 as exported: on CPUs with bfloat16 units OpenVINO would otherwise compute in bfloat16
            config = {
                "INFERENCE_NUM_THREADS": torch.get_num_threads(),
                "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_PRECISION_HINT": "f32",
            }
            self.request = core.compile_model(model, "CPU", config).create_infer_request()
        except (RuntimeError, UnicodeDecodeError) as err:  # OpenVINO raises RuntimeError for graphs it cannot read
            raise WeightsError(f"{path} is not a loadable OpenVINO model ({err}); {FIX}") from err
        self.device = torch.device("cpu")
        self.facts = facts
        self.path = path

    def __call__(self, images: Sequence[torch.Tensor], floor: float) -> list[Detections]:
        detections = []
        for image in images:
            self.request.infer({0: np.ascontiguousarray(image.numpy())})
            boxes, scores, labels = (np.array(self.request.get_tensor(name).data) for name in OUTPUT_NAMES)
            raw = Detections(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels).long())
            detections.append(checked_labels(raw, self.facts, self.path))
        return detections


OUTPUT_NAMES = ("boxes", "scores", "classes")
MAX_OPENVINO_XML_BYTES = 64 * 2**20
"""Largest OpenVINO graph (``.xml``) read: a Faster R-CNN's is about 1 MB; the weights are in the ``.bin``."""


def _onnx_shapes(path: Path, *names: str) -> dict[str, tuple[int, ...]]:
    """The shapes of an ONNX file's initializers of these names (torch's exporter keeps parameter
    names); onnxruntime does not tell them, so the file is parsed once more by onnx."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as err:  # protobuf raises its own exception types for files it cannot parse
        raise WeightsError(f"{path} is not a loadable ONNX model ({err}); {FIX}") from err
    return {tensor.name: tuple(int(d) for d in tensor.dims) for tensor in graph.initializer if tensor.name in names}


RUNTIMES: dict[Format, type[TorchScriptRuntime] | type[OnnxRuntime] | type[OpenVinoRuntime]] = {
    "torchscript": TorchScriptRuntime,
    "onnx": OnnxRuntime,
    "openvino": OpenVinoRuntime,
}


def load_exported(path: Path, device: str = AUTO) -> Runtime:
    """The runtime of an exported model file (``.torchscript``, ``.onnx`` or ``.xml``) and its metadata.

    Raises:
        WeightsError: the file, its metadata or a fact is missing or out of range, the file is not
            the one the metadata was written with, its classes are not the metadata's, or it cannot
            be loaded (:meth:`ExportedModel.read <detlit.inference.exported.ExportedModel.read>`).
        ConfigError: the device cannot run it, or onnxruntime is missing.
    """
    exported = ExportedModel.read(path)
    return RUNTIMES[exported.format](path, exported.facts, device)
