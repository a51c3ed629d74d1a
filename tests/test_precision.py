"""Reduced-precision exports: the verdict of the accuracy and speed check, the data it runs on, export
--int8 end to end for ONNX (and, slow, OpenVINO) and export --half for ONNX, with the files, metadata
and predictions they give."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detlit.deploy.export import require_accuracy
from detlit.deploy.precision import MAX_AP_DROP, PrecisionCheck, PrecisionError, check_data
from detlit.errors import ConfigError
from detlit.inference.exported import metadata_path
from detlit.inference.predictor import Predictor

from .conftest import REPO, quiet_trainer, tiny_datamodule, tiny_module


def _check(ap: float, ap50: float, int8_rate: float, fp32_ap: float = 0.5, fp32_ap50: float = 0.8) -> PrecisionCheck:
    return PrecisionCheck(
        "int8",
        {"ap": fp32_ap, "ap50": fp32_ap50, "images_per_second": 10.0},
        {"ap": ap, "ap50": ap50, "images_per_second": int8_rate},
        12,
        "6 of the 18 validation images",
    )


def test_an_accurate_faster_int8_model_is_kept_with_its_figures() -> None:
    check = _check(0.495, 0.792, 17.5)
    assert check.accurate and check.speedup == pytest.approx(1.75)
    verdict = require_accuracy(check, Path("m.ckpt"), keep_slower=False)
    assert verdict.startswith("accurate and 1.75x as fast as float32")
    assert "AP 0.4950 against 0.5000" in verdict and "17.50 images/s against 10.00" in verdict
    document = check.as_json()
    assert document["int8"]["ap"] == 0.495 and document["float32"]["ap50"] == 0.8 and document["speedup"] == 1.75
    assert document["max_ap_drop"] == MAX_AP_DROP == 0.01


def test_an_int8_model_losing_more_than_the_limit_is_refused_in_one_sentence() -> None:
    for ap, ap50 in ((0.489, 0.8), (0.5, 0.789)):  # AP, then AP50, 0.011 below float32
        check = _check(ap, ap50, 30.0)
        assert not check.accurate
        with pytest.raises(PrecisionError, match=r"^the int8 model of m\.ckpt loses too much accuracy \(on 12 "):
            require_accuracy(check, Path("m.ckpt"), keep_slower=True)
    assert _check(0.52, 0.85, 30.0).accurate  # above float32 on the check images: recorded, not refused


def test_an_int8_model_that_is_not_faster_is_kept_only_when_asked() -> None:
    check = _check(0.5, 0.8, 9.0)
    with pytest.raises(PrecisionError, match=r"not faster than float32 on this machine .*pass --keep-slower"):
        require_accuracy(check, Path("m.ckpt"), keep_slower=False)
    assert require_accuracy(check, Path("m.ckpt"), keep_slower=True).startswith("kept, though not faster than float32")


def test_int8_data_splits_the_validation_images_or_calibrates_on_a_folder(sample_dir: Path, tmp_path: Path) -> None:
    from detlit.data.sample import write_sample

    write_sample(tmp_path / "ten", train=2, val=10, seed=3)
    data = check_data(tmp_path / "ten" / "val.json", tmp_path / "ten" / "val", None)
    assert len(data.calibration) == 5 and len(data.check.images) == 5
    assert data.calibration_from == "5 of the 10 validation images"
    assert all(image.dtype == np.uint8 and image.ndim == 3 for image in data.calibration)
    checked = set(data.check.images.file_names())
    assert len(checked) == 5 and checked < {f"val_{i:04d}.jpg" for i in range(10)} | checked
    folder = check_data(sample_dir / "val.json", sample_dir / "val", sample_dir / "train")
    assert len(folder.calibration) == 12 and len(folder.check.images) == 6
    assert folder.calibration_from == f"12 images of {sample_dir / 'train'}"
    with pytest.raises(ConfigError, match="val_json or its images cannot be found"):
        check_data(None, None, None)
    # the sample's 6 validation images leave 3 for the check when half calibrate: too few
    with pytest.raises(ConfigError, match=r"leaves 3 \(at least 4\); pass --images"):
        check_data(sample_dir / "val.json", sample_dir / "val", None)


@pytest.fixture(scope="module")
def trained(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model after a few training steps, its checkpoint naming the sample's val split."""
    module = tiny_module()
    trainer = quiet_trainer(max_steps=3, limit_val_batches=0)
    trainer.fit(module, datamodule=tiny_datamodule(sample_dir))
    path = tmp_path_factory.mktemp("int8") / "tiny.ckpt"
    trainer.save_checkpoint(path)
    return path


def _export(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "detlit.export", *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )


def _written(trained: Path, sample_dir: Path, kind: str, suffix: str) -> None:
    images = str(sample_dir / "train")  # calibrate on the train images: all 6 val images check accuracy
    result = _export("--ckpt", str(trained), "--format", kind, "--int8", "--keep-slower", "--images", images)
    assert result.returncode == 0, result.stderr[-3000:]
    model = trained.with_name(f"tiny.int8{suffix}")
    assert f"wrote {model}" in result.stdout and "int8: " in result.stdout
    meta = json.loads(metadata_path(model).read_text())
    assert meta["precision"] == "int8" and meta["format"] == kind
    accuracy = meta["accuracy"]
    assert accuracy["int8"]["ap"] >= accuracy["float32"]["ap"] - MAX_AP_DROP
    assert accuracy["int8"]["images_per_second"] > 0 and accuracy["float32"]["images_per_second"] > 0
    assert accuracy["images"] == 6 and accuracy["calibrated_on"] == f"12 images of {sample_dir / 'train'}"
    assert meta["parity"]["of"] == "the float32 model" and meta["parity"]["passed"] is True
    # the int8 model runs where any exported model runs
    predictor = Predictor.load(model, device="cpu", all_detections=True)
    assert predictor.runtime.name == kind
    prediction = predictor(np.full((120, 150, 3), 128, np.uint8))
    assert prediction.boxes.shape[1] == 4 and len(prediction.scores) == len(prediction.labels)


def test_export_int8_onnx_writes_the_quantized_model_with_its_check(trained: Path, sample_dir: Path) -> None:
    _written(trained, sample_dir, "onnx", ".onnx")
    assert trained.with_name("tiny.int8.onnx").stat().st_size < 0.4 * trained.stat().st_size


@pytest.mark.slow
def test_export_int8_openvino_writes_the_quantized_model_with_its_check(trained: Path, sample_dir: Path) -> None:
    _written(trained, sample_dir, "openvino", ".xml")
    assert trained.with_name("tiny.int8.bin").is_file()


def _half(ap: float, ap50: float, rate: float, device: str) -> PrecisionCheck:
    return PrecisionCheck(
        "fp16",
        {"ap": 0.5, "ap50": 0.8, "images_per_second": 10.0},
        {"ap": ap, "ap50": ap50, "images_per_second": rate},
        20,
        None,
        device,
    )


def test_a_float16_model_is_kept_on_its_accuracy_and_its_speed_counts_on_a_gpu_only() -> None:
    on_cpu = _half(0.4995, 0.8, 7.0, "cpu")  # slower on the CPU: float16 is not for it
    verdict = require_accuracy(on_cpu, Path("m.ckpt"), keep_slower=False)
    assert verdict.startswith("accurate (on 20 validation images: AP 0.4995 against 0.5000 in float32")
    assert "(0.70x, on the cpu)" in verdict and "float16 is for GPUs" in verdict
    document = on_cpu.as_json()
    assert document["fp16"]["ap"] == 0.4995 and document["device"] == "cpu" and "calibrated_on" not in document
    with pytest.raises(
        PrecisionError, match=r"^the float16 model of m\.ckpt loses too much accuracy \(on 20 validation "
    ):
        require_accuracy(_half(0.5, 0.785, 30.0, "cuda"), Path("m.ckpt"), keep_slower=True)
    with pytest.raises(PrecisionError, match=r"^the float16 model is not faster than float32 on this machine .*cuda"):
        require_accuracy(_half(0.5, 0.8, 9.0, "cuda"), Path("m.ckpt"), keep_slower=False)
    assert require_accuracy(_half(0.5, 0.8, 25.0, "cuda"), Path("m.ckpt"), False).startswith("accurate and 2.50x")


def test_float16_is_checked_on_every_validation_image(sample_dir: Path, tmp_path: Path) -> None:
    data = check_data(sample_dir / "val.json", sample_dir / "val", None, "fp16")
    assert data.calibration == [] and data.calibration_from is None and len(data.check.images) == 6
    from detlit.data.sample import write_sample

    write_sample(tmp_path / "three", train=2, val=3, seed=3)
    with pytest.raises(
        ConfigError, match=r"^--half checks AP on the run's validation images, and .* holds 3 \(at least 4\)"
    ):
        check_data(tmp_path / "three" / "val.json", tmp_path / "three" / "val", None, "fp16")
    with pytest.raises(ConfigError, match=r"^--half checks the float16 model's AP on the run's validation images"):
        check_data(None, None, None, "fp16")


def test_a_model_the_converters_cannot_read_is_one_sentence() -> None:
    from detlit.deploy.precision import reduce

    for precision in ("fp16", "int8"):
        with pytest.raises(PrecisionError, match=r"conversion of the exported onnx model failed \(.*\); no model was"):
            reduce(b"not an onnx model", None, "onnx", precision, [np.zeros((3, 32, 32), np.uint8)])  # type: ignore[arg-type]
    with pytest.raises(
        ConfigError,
        match=r"--half writes a float16 ONNX model for GPUs \(onnxruntime-gpu, TensorRT\): use --format onnx; openvino",
    ):
        reduce(b"", None, "openvino", "fp16", [])


def test_export_half_writes_a_float16_onnx_model_that_detects_as_the_float32_one(
    trained: Path, sample_dir: Path
) -> None:
    import onnx

    fp32 = _export("--ckpt", str(trained), "--format", "onnx", "--overwrite")
    assert fp32.returncode == 0, fp32.stderr[-3000:]
    result = _export("--ckpt", str(trained), "--format", "onnx", "--half")
    assert result.returncode == 0, result.stderr[-3000:]
    model = trained.with_name("tiny.fp16.onnx")
    assert f"wrote {model}" in result.stdout and "fp16: accurate (on 6 validation images" in result.stdout
    meta = json.loads(metadata_path(model).read_text())
    assert meta["precision"] == "fp16" and meta["format"] == "onnx"
    accuracy = meta["accuracy"]
    assert accuracy["fp16"]["ap"] >= accuracy["float32"]["ap"] - MAX_AP_DROP and accuracy["images"] == 6
    assert accuracy["device"] == "cpu" and meta["parity"]["of"] == "the float32 model"
    # weights in float16: half the float32 file, every convolution's and fully connected layer's
    graph = onnx.load(str(model)).graph
    weights = {t.name: t.data_type for t in graph.initializer if t.name.endswith(".weight")}
    assert weights and set(weights.values()) == {onnx.TensorProto.FLOAT16}
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [o.type.tensor_type.elem_type for o in graph.output[:2]] == [onnx.TensorProto.FLOAT] * 2
    size, full = model.stat().st_size, trained.with_name("tiny.onnx").stat().st_size
    assert 0.45 * full < size < 0.55 * full
    # it detects what the float32 export detects, within float16's rounding: this barely trained model's
    # scores lie within 0.02 of each other, so a few near-ties resolve otherwise in non-maximum suppression
    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((sample_dir / "val").glob("*.jpg"))]
    half, single = (
        Predictor.load(path, device="cpu", all_detections=True).predict(images)
        for path in (model, trained.with_name("tiny.onnx"))
    )
    paired = total = 0
    for a, b in zip(half, single, strict=True):
        for box, score, label in zip(b.boxes, b.scores, b.labels, strict=True):
            same = (a.labels == label) & (np.abs(a.boxes - box).max(axis=1) < 0.5)
            paired += bool(same.any() and np.abs(a.scores[same] - score).min() < 0.002)
            total += 1
    assert total > 100 and paired >= 0.9 * total, (paired, total)


@pytest.mark.cli
def test_int8_and_half_options_out_of_place_are_one_sentence(trained: Path) -> None:
    result = _export("--ckpt", str(trained), "--format", "torchscript", "--int8")
    assert result.returncode == 2
    assert "--int8 quantizes for the CPU runtimes: use --format onnx or --format openvino" in result.stderr
    result = _export("--ckpt", str(trained), "--format", "onnx", "--keep-slower")
    assert result.returncode == 2
    assert "--keep-slower keeps an int8 or float16 model that is not faster: give it with --int8 or --half" in (
        result.stderr
    )
    for kind in ("torchscript", "openvino"):
        result = _export("--ckpt", str(trained), "--format", kind, "--half")
        assert result.returncode == 2
        assert (
            f"--half writes a float16 ONNX model for GPUs (onnxruntime-gpu, TensorRT): use --format onnx; {kind}"
            in (result.stderr)
        )
    # too few validation images for the int8 check: said before anything is traced
    result = _export("--ckpt", str(trained), "--format", "onnx", "--int8", "--out", str(trained.parent / "few"))
    assert result.returncode == 2 and "leaves 3 (at least 4); pass --images" in result.stderr
    assert "parity" not in result.stderr + result.stdout and not (trained.parent / "few").exists()
    result = _export("--ckpt", str(trained), "--format", "onnx", "--half", "--int8")
    assert result.returncode == 2 and "not allowed with argument" in result.stderr
    assert not list(trained.parent.glob("tiny.*.torchscript")) and not trained.with_name("tiny.fp16.xml").exists()
