"""Exporting a checkpoint to TorchScript or ONNX, as ``python -m detlit.export`` does, with parity checked.

The exported model is detectron2's ``GeneralizedRCNN`` traced around its inference without the
postprocess (:class:`TracedDetector`): one image in, uint8 (3, H, W) of any height and width,
already resized, channels in the model's order; out the detections above the model's score floor,
boxes XYXY in that image's pixels, scores and contiguous labels. Resizing, scaling boxes back to
the original image and the per-class thresholds stay in detlit (:class:`~detlit.inference.predictor.Predictor`),
so they are the same for every format. ``detectron2.export`` (v0.6) cannot be imported on torch 2,
hence the small wrapper; ONNX goes through torch's TorchScript-based exporter (``dynamo=False``:
the dynamo exporter fails on R-CNN's data-dependent shapes) at opset :data:`ONNX_OPSET` (below 16,
ROIAlign's ``aligned=True`` is dropped with only a warning).

Into ``--out`` (default: the checkpoint's folder) go ``<checkpoint name>.torchscript`` or
``<checkpoint name>.onnx`` and, beside it, ``<model file>.json``: its metadata
(:class:`~detlit.inference.exported.ExportedModel`, the one home of that format): the model facts
(class names, original category ids, per-class thresholds, channel order, resize rule, score
floor), the checkpoint it came from with the run's dataset fingerprint (sha256 of the training json
when it can be found), the versions, and the parity figures.

The checkpoint is read once (:class:`~detlit.inference.runtimes.LoadedCheckpoint`): its model is
traced, run for parity and described by the metadata; its data settings name the parity images
and the training json; its sha256 goes into the metadata.

Parity is checked at every export (:mod:`detlit.deploy.parity`): the exported file, as written,
against the checkpoint on :data:`PARITY_IMAGES` or more images at two or more input sizes: the
checkpoint's validation images when they can be found, else ``--images``, else generated ones.
The model file is written under a temporary name and moved into place only when parity passes;
otherwise the export stops with one sentence and leaves no model file behind.

The model and its metadata are one pair: the metadata records the model file's sha256 and size,
which every loader checks before it loads the model (:meth:`~detlit.inference.exported.ExportedModel.read`).
Both are written in full to temporary files, then the model is renamed into place and the metadata
last. A reader, or an export interrupted at any point, finds the old pair, the new model beside
the old metadata (which names another sha256: refused in one sentence), or the new pair; never one
export's model used with another's metadata.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import logging
import platform
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from detlit.common.devices import AUTO
from detlit.common.files import locate, sha256_file
from detlit.common.outputs import atomic_write, check_folder, check_outputs, write_lock
from detlit.common.paths import not_a_file
from detlit.common.run_folder import recorded_data
from detlit.data.coco import load_coco
from detlit.data.images import load_image
from detlit.data.sample import make_image
from detlit.deploy.parity import Parity, compare
from detlit.deploy.precision import (
    NAMES,
    CheckData,
    PrecisionCheck,
    PrecisionError,
    Reduced,
    check_accuracy,
    check_data,
    reduce,
    require_format,
)
from detlit.errors import ConfigError, DataError, DetlitError
from detlit.inference.exported import FORMATS, SUFFIXES, ExportedModel, Format, Precision, metadata_path, weights_path
from detlit.inference.predict import find_images
from detlit.inference.predictor import Predictor
from detlit.inference.runtimes import RUNTIMES, LoadedCheckpoint, Runtime

log = logging.getLogger(__name__)

ONNX_OPSET = 17
PARITY_IMAGES = 8
GENERATED_SEED = 0
VERSIONED = ("torch", "torchvision", "onnx", "onnxruntime", "openvino", "detectron2", "lightning")


class ParityError(DetlitError):
    """The exported model's detections are not the checkpoint's."""


class TracedDetector(torch.nn.Module):
    """``image`` uint8 (3, H, W) -> (boxes (N, 4) XYXY in the image's pixels, scores (N,), classes (N,)).

    Detections are those ``GeneralizedRCNN.inference`` keeps (above its score floor, at most its
    detections per image), before detectron2's postprocess.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        (instances,) = self.model.inference([{"image": image}], do_postprocess=False)  # type: ignore[operator]
        return instances.pred_boxes.tensor, instances.scores, instances.pred_classes


STANDARD_HEAD = ("FastRCNNOutputLayers.predict_boxes", "FastRCNNOutputLayers.predict_probs")


@contextmanager
def one_image_head(model: Any) -> Iterator[None]:
    """Let the box predictor skip its per-image split while tracing one image.

    detectron2 splits the box head's outputs by ``len(proposals)``, a Python number that tracing
    writes into the graph as a constant (the proposal count of the traced image): the traced model
    would then fail on any image with another count. For one image the split returns the whole
    tensor, so these replacements compute the same numbers without it.

    Raises:
        ConfigError: the box predictor is not detectron2's standard one.
    """
    predictor = model.roi_heads.box_predictor
    methods = (type(predictor).predict_boxes.__qualname__, type(predictor).predict_probs.__qualname__)
    if methods != STANDARD_HEAD:
        raise ConfigError(
            f"the box predictor {type(predictor).__name__} is not detectron2's FastRCNNOutputLayers; export "
            "supports the standard Faster R-CNN box head"
        )

    def predict_boxes(predictions: tuple[torch.Tensor, torch.Tensor], proposals: list[Any]) -> list[torch.Tensor]:
        _, deltas = predictions
        return [predictor.box2box_transform.apply_deltas(deltas, proposals[0].proposal_boxes.tensor)]

    def predict_probs(predictions: tuple[torch.Tensor, torch.Tensor], proposals: list[Any]) -> list[torch.Tensor]:
        scores, _ = predictions
        return [F.softmax(scores, dim=-1)]

    predictor.predict_boxes, predictor.predict_probs = predict_boxes, predict_probs
    try:
        yield
    finally:
        del predictor.predict_boxes, predictor.predict_probs


def require_exportable(module: Any) -> None:
    """Raise one sentence for architectures of the menu that export cannot trace.

    Export traces one Faster R-CNN: a region proposal network and one standard box head. RetinaNet
    (no ROI heads) and Cascade R-CNN (three box heads) run from their checkpoints instead.
    """
    name = module.hparams["config_name"]
    fix = "predict, evaluate and serve it from its checkpoint (--ckpt) instead"
    if module.is_dense:
        raise ConfigError(f"{name} is a RetinaNet: export traces Faster R-CNN models only; {fix}")
    if isinstance(module.model.roi_heads.box_predictor, torch.nn.ModuleList):
        raise ConfigError(f"{name} is a Cascade R-CNN: export traces Faster R-CNN's one box head only; {fix}")


def _nms_without_branches(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou: float) -> torch.Tensor:
    """torchvision's traced ``batched_nms`` (its coordinate trick, the same numbers) without its
    branch for no boxes: the largest coordinate is taken with a 0 beside the boxes, which changes
    nothing for boxes clipped to the image and is defined for none."""
    from torchvision.ops import nms

    largest = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max()
    offsets = idxs.to(boxes) * (largest + torch.tensor(1).to(boxes))
    return nms(boxes + offsets[:, None], scores, iou)


@contextmanager
def branchless_nms() -> Iterator[None]:
    """Trace non-maximum suppression without torchvision's ``If`` for no boxes, whose empty branch
    OpenVINO (2026.4) turns into one undefined row (an image without detections would get one) and
    whose subgraphs onnxruntime's float16 converter leaves with dangling inputs."""
    from torchvision.ops import boxes as box_ops

    saved = box_ops.batched_nms
    box_ops.batched_nms = _nms_without_branches
    try:
        yield
    finally:
        box_ops.batched_nms = saved


@contextmanager
def concatenated_padding(model: Any) -> Iterator[None]:
    """Trace the padding of the image to the backbone's size divisibility as concatenated zeros.

    ``GeneralizedRCNN.preprocess_image`` normalises the image and pads it with ``F.pad``, whose
    ONNX form for sizes known only at run time (pads reordered by a reversed slice) OpenVINO
    (2026.4) evaluates wrongly: a 128x130 input was padded to 159x161 instead of 128x160. The same
    normalisation and the same zeros, appended by ``torch.cat``, give the same numbers.
    """
    from detlit.compat import ImageList

    divisor = int(model.backbone.size_divisibility)

    def preprocess_image(batched_inputs: list[dict[str, torch.Tensor]]) -> Any:
        (item,) = batched_inputs
        image = (item["image"].to(model.pixel_mean.device) - model.pixel_mean) / model.pixel_std
        channels, height, width = image.shape
        if divisor > 1:
            right, bottom = (divisor - width % divisor) % divisor, (divisor - height % divisor) % divisor
            image = torch.cat([image, image.new_zeros((channels, height, right))], dim=2)
            image = torch.cat([image, image.new_zeros((channels, bottom, width + right))], dim=1)
        return ImageList(image.unsqueeze(0), [(height, width)])

    model.preprocess_image = preprocess_image
    try:
        yield
    finally:
        del model.preprocess_image


@dataclass(frozen=True)
class ModelFiles:
    """An exported model's bytes: the model file, and an OpenVINO model's weights file."""

    model: bytes
    weights: bytes | None = None

    def write(self, folder: Path, name: str) -> Path:
        """Write the files as ``folder/name`` (and its weights beside it); the model file's path."""
        path = folder / name
        path.write_bytes(self.model)
        if self.weights is not None:
            weights_path(path).write_bytes(self.weights)
        return path


def write_model(model: torch.nn.Module, example: torch.Tensor, kind: Format) -> ModelFiles:
    """Trace ``model`` (a ``GeneralizedRCNN`` in eval mode, on the CPU) on ``example``; the ``kind`` files' bytes.

    OpenVINO's model is converted from the ONNX export by OpenVINO's own converter
    (``openvino.convert_model``), its weights kept in float32.
    """
    if kind != "openvino":
        return ModelFiles(traced_bytes(model, example, kind))
    try:
        import openvino
    except ImportError:
        raise ConfigError("--format openvino needs OpenVINO, which is not installed; run `make install`") from None
    onnx = traced_bytes(model, example, "onnx")
    with tempfile.TemporaryDirectory(prefix="detlit-openvino-") as folder:
        source = Path(folder) / "model.onnx"
        source.write_bytes(onnx)
        converted = openvino.convert_model(str(source))
        openvino.save_model(converted, str(Path(folder) / "model.xml"), compress_to_fp16=False)
        return ModelFiles((Path(folder) / "model.xml").read_bytes(), (Path(folder) / "model.bin").read_bytes())


@torch.no_grad()
def traced_bytes(model: torch.nn.Module, example: torch.Tensor, kind: Format) -> bytes:
    """The TorchScript or ONNX file of ``model`` traced on ``example`` (:class:`TracedDetector`).

    The one ONNX graph, which onnxruntime runs and OpenVINO and the float16 converter start from, is
    traced with :func:`branchless_nms` and :func:`concatenated_padding`: the same numbers, in
    operators every one of them reads right. The file is written in memory: torch's writers fail on
    a full disk by aborting the process, Python's file writes with one error that the command turns
    into a sentence.
    """
    traced = TracedDetector(model).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings(), one_image_head(model):
        # Tracing warns about every Python number it records; the parity check is what tells.
        warnings.simplefilter("ignore")
        if kind == "torchscript":
            torch.jit.save(torch.jit.trace(traced, (example,), check_trace=False), buffer)
            return buffer.getvalue()
        with branchless_nms(), concatenated_padding(model):
            torch.onnx.export(
                traced,
                (example,),
                buffer,  # type: ignore[arg-type]  # the TorchScript-based exporter writes to streams too
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=["image"],
                output_names=["boxes", "scores", "classes"],
                dynamic_axes={
                    "image": {1: "height", 2: "width"},
                    "boxes": {0: "detections"},
                    "scores": {0: "detections"},
                    "classes": {0: "detections"},
                },
            )
    return buffer.getvalue()


def _versions() -> dict[str, str]:
    from detlit import __version__

    versions = {"detlit": __version__, "python": platform.python_version()}
    for package in VERSIONED:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def source_document(checkpoint: LoadedCheckpoint) -> dict[str, Any]:
    """The checkpoint and the run's dataset fingerprint, for the metadata."""
    path = checkpoint.path.resolve()
    source: dict[str, Any] = {"checkpoint": str(path), "checkpoint_sha256": checkpoint.sha256}
    train_json = checkpoint.data.get("train_json")
    source["train_json"] = train_json
    recorded = recorded_data(checkpoint.path, "train").get("sha256")  # what the run trained on (run.json)
    if isinstance(recorded, str):
        source["train_json_sha256"] = recorded
    else:  # a run without a record (detlit 0.2): the file as it is now
        found = locate(train_json, list(path.parents))
        source["train_json_sha256"] = sha256_file(found) if found is not None and found.is_file() else None
    if source["train_json_sha256"] is None:
        source["note"] = "the training json was not found: the dataset fingerprint is left out"
    return source


def _validation_images(checkpoint: LoadedCheckpoint) -> list[np.ndarray]:
    anchors, data = list(checkpoint.path.resolve().parents), checkpoint.data
    json_path = locate(data.get("val_json"), anchors)
    root = locate(data.get("val_images") or data.get("train_images"), anchors)
    if json_path is None or root is None:
        return []
    try:
        records = load_coco(json_path, root).images
    except DataError as err:
        log.info("validation images not used for parity: %s", err)
        return []
    return _readable([root / record.file_name for record in records])


def _readable(paths: list[Path]) -> list[np.ndarray]:
    images: list[np.ndarray] = []
    for path in paths:
        if len(images) == PARITY_IMAGES:
            break
        try:
            images.append(load_image(path))
        except DataError as err:
            log.info("not used for parity: %s", err)
    return images


def parity_images(
    checkpoint: LoadedCheckpoint, folder: Path | None, predictor: Predictor
) -> tuple[list[np.ndarray], str]:
    """At least :data:`PARITY_IMAGES` images at two or more model input sizes, and where they come from."""
    images: list[np.ndarray] = _validation_images(checkpoint)
    source = "the checkpoint's validation images"
    if not images and folder is not None:
        images = _readable([image.path for image in find_images([str(folder)])])
        source = f"the images in {folder}"
    if not images:
        source = "generated images"
    rng = np.random.default_rng(GENERATED_SEED)
    generated = 0
    while len(images) < PARITY_IMAGES or len({_input_size(predictor, i) for i in images}) < 2:
        images.append(np.asarray(make_image(rng)[0]))
        generated += 1
        if generated > 4 * PARITY_IMAGES:
            raise ConfigError("generated parity images all resize to one size; pass --images with images of two shapes")
    if generated and source != "generated images":
        source += f" and {generated} generated ones"
    return images, source


def _input_size(predictor: Predictor, image: np.ndarray) -> tuple[int, int]:
    tensor = predictor.preprocess(image)["image"]
    return int(tensor.shape[1]), int(tensor.shape[2])


def check_parity(eager: Predictor, runtime: Runtime, images: list[np.ndarray]) -> Parity:
    """The exported ``runtime`` against the checkpoint's ``eager`` predictor on ``images``."""
    exported = Predictor(runtime, all_detections=True, batch_size=1)
    facts = eager.facts
    return compare(
        eager.predict(images),
        exported.predict(images),
        [_input_size(eager, image) for image in images],
        facts.score_floor,
        facts.detections_per_image,
    )


def output_paths(ckpt: Path, kind: Format, out: Path | None, precision: Precision = "fp32") -> tuple[Path, Path]:
    """The model file and its metadata json (``<checkpoint name>.int8.onnx`` for an int8 model,
    ``.fp16.onnx`` for a float16 one)."""
    tag = "" if precision == "fp32" else f".{precision}"
    model = (out if out is not None else ckpt.parent) / f"{ckpt.stem}{tag}{SUFFIXES[kind]}"
    return model, metadata_path(model)


def require_options(kind: str, precision: Precision, keep_slower: bool) -> None:
    """One sentence for a format, precision and ``--keep-slower`` that do not go together.

    Raises:
        ConfigError: an unknown format, int8 TorchScript, float16 other than ONNX, or
            ``keep_slower`` in float32.
    """
    if kind not in FORMATS:
        raise ConfigError(f"--format {kind} is unknown; use one of {', '.join(FORMATS)}")
    if precision != "fp32":
        require_format(kind, precision)
    if keep_slower and precision == "fp32":
        raise ConfigError(
            "--keep-slower keeps an int8 or float16 model that is not faster: give it with --int8 or --half"
        )


def export(
    ckpt: Path,
    kind: Format,
    out: Path | None = None,
    images: Path | None = None,
    overwrite: bool = False,
    precision: Precision = "fp32",
    keep_slower: bool = False,
) -> Path:
    """``python -m detlit.export``: write ``ckpt`` as ``kind`` with its metadata, after a parity check;
    with ``precision`` ``int8`` or ``fp16``, its int8 or float16 model instead, after the parity
    check of the float32 graph and the accuracy check of the reduced one (:mod:`detlit.deploy.precision`).

    Returns:
        The model file.

    Raises:
        ConfigError: an unknown format, options that do not go together, a missing input, or an
            output that exists.
        WeightsError: the checkpoint cannot be loaded.
        ParityError: the exported model's detections are not the checkpoint's (nothing is written).
        PrecisionError: the reduced model's AP is off, or it is not faster (where its speed counts)
            and ``keep_slower`` is not set (nothing is written).
    """
    require_options(kind, precision, keep_slower)
    problem = not_a_file(ckpt)  # a named pipe or a device would block, or never end
    if problem is not None:
        raise ConfigError(f"--ckpt {ckpt} {problem}; pass a .ckpt file of a training run")
    if images is not None and not images.is_dir():
        raise ConfigError(f"--images {images} is not a folder; name a folder of images for the parity check")
    if out is not None:
        check_folder(out)
    model_path, meta_path = output_paths(ckpt, kind, out, precision)
    with write_lock(model_path.parent):
        outputs = [model_path, *([weights_path(model_path)] if kind == "openvino" else []), meta_path]
        check_outputs(outputs, inputs=[ckpt], overwrite=overwrite)
        started = time.perf_counter()
        checkpoint = LoadedCheckpoint.read(ckpt)
        require_exportable(checkpoint.module)
        eager = Predictor(checkpoint.module, device="cpu", all_detections=True, batch_size=1)
        # the reduced model's check data first: too few validation images end the export before tracing
        found = None if precision == "fp32" else reduced_data(checkpoint, precision, images)
        chosen, image_source = parity_images(checkpoint, images, eager)
        example = eager.preprocess(chosen[0])["image"]
        written = write_model(checkpoint.module.model, example, kind)
        accuracy: dict[str, Any] | None = None
        # Parity (and the int8 or float16 checks) run the files as written, from a temporary folder; the files
        # are moved into place only when every check passed.
        with tempfile.TemporaryDirectory(prefix="detlit-export-") as temporary:
            candidate = written.write(Path(temporary), f"float32{SUFFIXES[kind]}")
            exported_at = time.perf_counter()
            fp32 = RUNTIMES[kind](candidate, eager.facts, "cpu")
            parity = check_parity(eager, fp32, chosen)
            log.info("parity on %s: %s", image_source, parity.describe())
            if not parity.compared:
                log.warning(
                    "parity compared nothing: %s detects nothing above its score floor %g on %s, so the exported "
                    "model is unchecked; pass --images with images that hold the objects it was trained on, or train "
                    "it longer",
                    ckpt,
                    eager.facts.score_floor,
                    image_source,
                )
            if not parity.passed:
                raise ParityError(
                    f"the exported {kind} model does not match {ckpt} on {image_source} ({parity.describe()}); no "
                    "model was written: report this with python -m detlit.env's output"
                )
            seconds = {
                "export": round(exported_at - started, 2),
                "parity": round(time.perf_counter() - exported_at, 2),
            }
            if found is not None:
                reduced_at = time.perf_counter()
                written, check = reduced_export(eager, fp32, written, kind, found, Path(temporary))
                verdict = require_accuracy(check, ckpt, keep_slower)
                accuracy = {**check.as_json(), "verdict": verdict}
                seconds[precision] = round(time.perf_counter() - reduced_at, 2)
        described = ExportedModel.of(
            written.model,
            kind,
            model_path.name,
            eager.facts,
            source=source_document(checkpoint),
            versions={**_versions(), **({"onnx_opset": str(ONNX_OPSET)} if kind != "torchscript" else {})},
            parity={
                **parity.as_json(),
                "images_from": image_source,
                **({"of": "the float32 model"} if precision != "fp32" else {}),
            },
            seconds=seconds,
            weights=written.weights,
            precision=precision,
            accuracy=accuracy,
        )
        # The model (and its weights) are renamed into place first, the metadata last.
        with contextlib.ExitStack() as stack:
            metadata = stack.enter_context(atomic_write(meta_path))
            if written.weights is not None:
                stack.enter_context(atomic_write(weights_path(model_path))).write(written.weights)
            stack.enter_context(atomic_write(model_path)).write(written.model)
            metadata.write(described.to_bytes())
        print(f"parity ({image_source}): {parity.describe()}")
        if accuracy is not None:
            print(f"{precision}: {accuracy['verdict']}")
        print(f"wrote {model_path} and {meta_path} in {time.perf_counter() - started:.1f} s")
        return model_path


def reduced_data(checkpoint: LoadedCheckpoint, precision: Reduced, images: Path | None) -> CheckData:
    """The calibration images (int8: ``images``, else half the run's validation images) and the
    validation images that check the reduced model (:func:`~detlit.deploy.precision.check_data`)."""
    anchors, data = list(checkpoint.path.resolve().parents), checkpoint.data
    return check_data(
        locate(data.get("val_json"), anchors),
        locate(data.get("val_images") or data.get("train_images"), anchors),
        images if precision == "int8" else None,
        precision,
    )


def reduced_export(
    eager: Predictor, fp32: Runtime, written: ModelFiles, kind: Format, found: CheckData, folder: Path
) -> tuple[ModelFiles, PrecisionCheck]:
    """The int8 or float16 model (``found.precision``) of the float32 export ``written`` (running as
    ``fp32`` on the CPU), and its check. float16 is checked where onnxruntime runs it by default: on
    its CUDA provider when it has one, else on the CPU."""
    precision = found.precision
    if found.calibration_from is not None:
        log.info("%s: calibrating on %s", NAMES[precision], found.calibration_from)
    inputs = [eager.preprocess(image)["image"].numpy() for image in found.calibration]
    model, weights = reduce(written.model, written.weights, kind, precision, inputs)
    files = ModelFiles(model, weights)
    candidate = files.write(folder, f"{precision}{SUFFIXES[kind]}")
    device = "cpu" if precision == "int8" else AUTO
    runtime = RUNTIMES[kind](candidate, eager.facts, device)
    if runtime.device != fp32.device:  # the float32 reference on the same device
        fp32 = RUNTIMES[kind](folder / f"float32{SUFFIXES[kind]}", eager.facts, device)
    check = check_accuracy(fp32, runtime, found)
    log.info("%s %s", NAMES[precision], check.describe())
    return files, check


def require_accuracy(check: PrecisionCheck, ckpt: Path, keep_slower: bool) -> str:
    """The verdict line of a reduced model, or one sentence when it is not to be written.

    Raises:
        PrecisionError: its AP is off, or it is not faster where its speed counts (int8 anywhere,
            float16 on a GPU) and ``keep_slower`` is not set.
    """
    name = NAMES[check.precision]
    if not check.accurate:
        raise PrecisionError(
            f"the {name} model of {ckpt} loses too much accuracy ({check.describe()}); no model was written: use the "
            f"float32 export{', or calibrate on other images with --images' if check.precision == 'int8' else ''}"
        )
    if not check.speed_counts:
        return (
            f"accurate ({check.describe()}); float16 is for GPUs: its speed on the CPU says nothing, measure it on the "
            "GPU it will run on"
        )
    if check.speedup <= 1.0:
        line = f"not faster than float32 on this machine ({check.describe()})"
        if not keep_slower:
            raise PrecisionError(f"the {name} model is {line}; no model was written: pass --keep-slower to keep it")
        return f"kept, though {line}"
    return f"accurate and {check.speedup:.2f}x as fast as float32 ({check.describe()})"
