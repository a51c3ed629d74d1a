"""Exporting in reduced precision: int8 and float16 models, kept on their measured accuracy.

``python -m detlit.export --int8`` quantizes the float32 export (after its parity check) for the CPU:

* ONNX: onnxruntime's ``quantize_static`` in QDQ form, int8 weights (per channel) and uint8
  activations of every convolution and fully connected layer, activation ranges from the
  calibration images (min / max);
* OpenVINO: NNCF's post-training quantization (``nncf.quantize``, its defaults: symmetric int8
  weights and activations, fast bias correction).

``--half`` converts the float32 ONNX export to float16 for GPUs (onnxruntime-gpu, TensorRT):
onnxruntime's float16 converter, float32 kept at the model's input and outputs and around the
operators it has no float16 form for (non-maximum suppression, top-k, ROIAlign, resizing). No
calibration: every validation image checks it.

Exact parity cannot hold in reduced precision, so the check is accuracy (:func:`check_accuracy`):
AP and AP50 of the reduced model and of the float32 export on validation images the calibration
did not see, through the one inference and metric path
(:class:`~detlit.inference.predictor.Predictor`, :func:`~detlit.inference.evaluate.predict_dataset`,
:class:`~detlit.evaluation.metric.DetectionMetrics`): neither may be more than :data:`MAX_AP_DROP`
below the float32 figure (a higher one, which a few images can give, is recorded, not refused);
and speed, images/s of both on the same decoded images after one pass over them, on the device
the check ran on. For int8 the calibration images are the checkpoint's validation images (a
seeded half, at most :data:`CALIBRATION_IMAGES`; the other half checks accuracy), or the images
of ``--images`` (then every validation image checks accuracy).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np

from detlit.data.coco import CocoDataset, load_coco
from detlit.data.images import load_image
from detlit.errors import ConfigError, DataError, DetlitError
from detlit.inference.exported import Format
from detlit.inference.predict import find_images
from detlit.inference.predictor import Predictor
from detlit.inference.runtimes import Runtime

log = logging.getLogger(__name__)

Reduced: TypeAlias = Literal["int8", "fp16"]
OPTIONS: dict[Reduced, str] = {"int8": "--int8", "fp16": "--half"}
NAMES: dict[Reduced, str] = {"int8": "int8", "fp16": "float16"}

CALIBRATION_IMAGES = 64
"""Most images the int8 activation ranges are calibrated on."""
MIN_CHECK_IMAGES = 4
"""Fewest validation images the accuracy check takes."""
MAX_AP_DROP = 0.01
"""Most the reduced model's AP, and its AP50, may be below the float32 export's."""
SPEED_ROUNDS = 3
SPLIT_SEED = 0


class PrecisionError(DetlitError):
    """The int8 or float16 model is not accurate enough, or not faster and not asked to be kept."""


@dataclass(frozen=True)
class CheckData:
    """Images to calibrate on (RGB uint8; none for float16) and the validation images that check accuracy."""

    calibration: list[np.ndarray]
    check: CocoDataset
    calibration_from: str | None
    precision: Reduced = "int8"


def check_data(
    val_json: Path | None, val_images: Path | None, folder: Path | None, precision: Reduced = "int8"
) -> CheckData:
    """The calibration images and the accuracy check's dataset (module docstring).

    Raises:
        ConfigError: the validation json cannot be found or read, or holds too few images.
    """
    option = OPTIONS[precision]
    if val_json is None or val_images is None:
        raise ConfigError(
            f"{option} checks the {NAMES[precision]} model's AP on the run's validation images, and the checkpoint's "
            "val_json or its images cannot be found; export from the run folder the checkpoint was written in"
        )
    try:
        dataset = load_coco(val_json, val_images)
    except DataError as err:
        raise ConfigError(f"{option} checks AP on the run's validation images: {err}") from err
    count = len(dataset.images)
    if precision == "fp16":
        if count < MIN_CHECK_IMAGES:
            raise ConfigError(
                f"--half checks AP on the run's validation images, and {val_json} holds {count} (at least "
                f"{MIN_CHECK_IMAGES}); train with a larger validation split"
            )
        return CheckData([], dataset, None, "fp16")
    if folder is not None:
        paths = [image.path for image in find_images([str(folder)])][:CALIBRATION_IMAGES]
        calibration = [load_image(path) for path in paths]
        check, source = dataset, f"{len(calibration)} images of {folder}"
    else:
        order = np.random.default_rng(SPLIT_SEED).permutation(count)
        half = min(CALIBRATION_IMAGES, count // 2)
        chosen, rest = sorted(order[:half].tolist()), sorted(order[half:].tolist())
        calibration = [load_image(dataset.image_root / dataset.images.record(i).file_name) for i in chosen]
        check = CocoDataset(dataset.json_path, dataset.image_root, dataset.images.take(rest), dataset.categories)
        source = f"{len(calibration)} of the {count} validation images"
    if not calibration:
        raise ConfigError(f"--int8 found no images to calibrate on ({source}); pass --images with images like the data")
    if len(check.images) < MIN_CHECK_IMAGES:
        raise ConfigError(
            f"--int8 checks AP on the validation images the calibration does not use, and {val_json} leaves "
            f"{len(check.images)} (at least {MIN_CHECK_IMAGES}); pass --images to calibrate on other images"
        )
    return CheckData(calibration, check, source)


def require_format(kind: str, precision: Reduced) -> None:
    """One sentence for a format that has no such precision here.

    Raises:
        ConfigError: int8 TorchScript, or float16 other than ONNX.
    """
    if precision == "int8" and kind not in ("onnx", "openvino"):
        raise ConfigError("--int8 quantizes for the CPU runtimes: use --format onnx or --format openvino")
    if precision == "fp16" and kind != "onnx":
        raise ConfigError(
            "--half writes a float16 ONNX model for GPUs (onnxruntime-gpu, TensorRT): use --format onnx; "
            f"{kind} models run on the CPU here, in float32"
        )


def reduce(
    model: bytes, weights: bytes | None, kind: Format, precision: Reduced, inputs: Sequence[np.ndarray]
) -> tuple[bytes, bytes | None]:
    """The int8 or float16 model (and OpenVINO weights) of a float32 export; int8 calibrated on model
    inputs (uint8 CHW).

    Raises:
        ConfigError: the format has no such precision here, or the runtime's tools are missing.
        PrecisionError: the converter or quantizer failed on the model (its own error in the sentence).
    """
    require_format(kind, precision)
    try:
        if precision == "fp16":
            return _float16_onnx(model), None
        if kind == "onnx":
            return _quantize_onnx(model, inputs), None
        assert weights is not None
        return _quantize_openvino(model, weights, inputs)
    except DetlitError:
        raise
    except Exception as err:  # the converters raise their own exception types (protobuf, onnx, OpenVINO)
        raise PrecisionError(
            f"the {NAMES[precision]} conversion of the exported {kind} model failed ({type(err).__name__}: {err}); no "
            "model was written: use the float32 export, and report this with python -m detlit.env's output"
        ) from err


def _float16_onnx(model: bytes) -> bytes:
    """The ONNX model in float16, float32 kept at its inputs and outputs and around the operators
    onnxruntime's converter blocks (its default list)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    graph = onnx.load_from_string(model)
    del graph.graph.value_info[:]  # the exporter's float32 annotations of intermediate values
    return bytes(convert_float_to_float16(graph, keep_io_types=True).SerializeToString())


def _quantize_onnx(model: bytes, inputs: Sequence[np.ndarray]) -> bytes:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.left = iter(inputs)

        def get_next(self) -> dict[str, np.ndarray] | None:
            image = next(self.left, None)
            return None if image is None else {"image": image}

    with tempfile.TemporaryDirectory(prefix="detlit-int8-") as folder:
        source, target = Path(folder) / "model.onnx", Path(folder) / "int8.onnx"
        source.write_bytes(model)
        quiet = logging.getLogger()
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # its advice to pre-process the model is printed on the root logger
        try:
            quantize_static(
                str(source),
                str(target),
                Reader(),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=["Conv", "Gemm", "MatMul"],
            )
        finally:
            quiet.setLevel(level)
        return target.read_bytes()


def _quantize_openvino(model: bytes, weights: bytes, inputs: Sequence[np.ndarray]) -> tuple[bytes, bytes]:
    try:
        import nncf
        import openvino
    except ImportError:
        raise ConfigError("--int8 --format openvino needs OpenVINO and NNCF; run `make install`") from None
    graph = openvino.Core().read_model(model, weights)
    quantized = nncf.quantize(graph, nncf.Dataset(list(inputs)), subset_size=len(inputs))
    with tempfile.TemporaryDirectory(prefix="detlit-int8-") as folder:
        target = Path(folder) / "int8.xml"
        openvino.save_model(quantized, str(target), compress_to_fp16=False)
        return target.read_bytes(), target.with_suffix(".bin").read_bytes()


@dataclass(frozen=True)
class PrecisionCheck:
    """AP, AP50 and images/s of the float32 export and of its reduced model on the same images."""

    precision: Reduced
    fp32: dict[str, float]
    reduced: dict[str, float]
    images: int
    calibration_from: str | None
    device: str = "cpu"

    @property
    def accurate(self) -> bool:
        return all(self.fp32[key] - self.reduced[key] <= MAX_AP_DROP for key in ("ap", "ap50"))

    @property
    def speedup(self) -> float:
        return self.reduced["images_per_second"] / self.fp32["images_per_second"]

    @property
    def speed_counts(self) -> bool:
        """Whether the speed was measured where the model is meant to run: float16 is for GPUs."""
        return self.precision == "int8" or self.device != "cpu"

    def describe(self) -> str:
        images = "validation images the calibration did not use" if self.calibration_from else "validation images"
        return (
            f"on {self.images} {images}: AP {self.reduced['ap']:.4f} against {self.fp32['ap']:.4f} in float32, AP50 "
            f"{self.reduced['ap50']:.4f} against {self.fp32['ap50']:.4f} (at most {MAX_AP_DROP:g} lower); "
            f"{self.reduced['images_per_second']:.2f} images/s against {self.fp32['images_per_second']:.2f} "
            f"({self.speedup:.2f}x, on the {self.device})"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "float32": self.fp32,
            self.precision: self.reduced,
            "max_ap_drop": MAX_AP_DROP,
            "images": self.images,
            **({"calibrated_on": self.calibration_from} if self.calibration_from else {}),
            "speedup": round(self.speedup, 3),
            "device": self.device,
        }


def average_precision(predictor: Predictor, dataset: CocoDataset) -> dict[str, float]:
    """AP and AP50 of a predictor (made with ``all_detections``) on a dataset, as ``evaluate`` computes them."""
    from detlit.evaluation.metric import DetectionMetrics
    from detlit.inference.evaluate import predict_dataset

    (preds, targets), _, label_map = predict_dataset(dataset, predictor, progress=False)
    metric = DetectionMetrics(label_map.names)
    metric.update(preds, targets)
    coco = metric.compute().coco
    return {"ap": round(float(coco["map"]), 5), "ap50": round(float(coco["map50"]), 5)}


def _speeds(runtimes: dict[str, Runtime], images: list[np.ndarray]) -> dict[str, float]:
    """Images/s of each runtime over the same decoded images, best of :data:`SPEED_ROUNDS` rounds."""
    predictors = {name: Predictor(runtime, all_detections=True, batch_size=1) for name, runtime in runtimes.items()}
    for predictor in predictors.values():
        predictor.predict(images)  # a first pass: lazy initialisation is not timed
    best = dict.fromkeys(predictors, 0.0)
    for _ in range(SPEED_ROUNDS):
        for name, predictor in predictors.items():
            started = time.perf_counter()
            predictor.predict(images)
            best[name] = max(best[name], len(images) / (time.perf_counter() - started))
    return {name: round(value, 3) for name, value in best.items()}


def check_accuracy(fp32: Runtime, reduced: Runtime, data: CheckData) -> PrecisionCheck:
    """The reduced model against the float32 export (both on one device): AP, AP50 and speed on the check images."""
    started = time.perf_counter()
    float_ap, reduced_ap = (
        average_precision(Predictor(runtime, all_detections=True, batch_size=1), data.check)
        for runtime in (fp32, reduced)
    )
    records = data.check.images
    images = [load_image(data.check.image_root / records.record(i).file_name) for i in range(min(len(records), 32))]
    speed = _speeds({"fp32": fp32, "reduced": reduced}, images)
    log.info("%s accuracy and speed checked in %.1f s", NAMES[data.precision], time.perf_counter() - started)
    return PrecisionCheck(
        data.precision,
        {**float_ap, "images_per_second": speed["fp32"]},
        {**reduced_ap, "images_per_second": speed["reduced"]},
        len(records),
        data.calibration_from,
        reduced.device.type,
    )
