"""Deployment: export with parity (TorchScript, ONNX), exported models that predict and evaluate,
one postprocess for every runtime, and the HTTP service on 127.0.0.1."""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from detlit.common.files import sha256_file
from detlit.data.images import load_image
from detlit.deploy import export as exporting
from detlit.deploy.parity import BOX_TOLERANCE, SCORE_TOLERANCE
from detlit.errors import WeightsError
from detlit.export import main as export_main
from detlit.inference.exported import ExportedModel, metadata_path
from detlit.inference.predictor import Predictor
from detlit.inference.runtimes import Detections, LoadedCheckpoint
from detlit.inference.slicing import Slicing

from .conftest import REPO, quiet_trainer, tiny_datamodule, tiny_module

FORMATS = ("torchscript", "onnx")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model after two training steps and a validation (so it holds per-class thresholds),
    saved as a run saves it: with the data module's settings, which name the validation images."""
    folder = tmp_path_factory.mktemp("run") / "checkpoints"
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=2)
    trainer.fit(tiny_module(), datamodule=tiny_datamodule(sample_dir))
    trainer.save_checkpoint(folder / "tiny.ckpt")
    return folder / "tiny.ckpt"


checkpoint_reads: dict[str, dict[str, int]] = {}
"""How often each export loaded a checkpoint (``torch.load``) and verified an archive (``ZipFile.testzip``)."""


@pytest.fixture(scope="module")
def exported(checkpoint: Path) -> dict[str, Path]:
    """Both formats, exported by the command into the checkpoint's folder (the default --out), counting
    the checkpoint's reads."""
    import zipfile

    models = {}
    for kind in FORMATS:
        counts = checkpoint_reads.setdefault(kind, {"load": 0, "testzip": 0})
        with pytest.MonkeyPatch.context() as patch:
            for owner, name in ((torch, "load"), (zipfile.ZipFile, "testzip")):
                patch.setattr(owner, name, _counted(getattr(owner, name), counts, name))
            with pytest.raises(SystemExit) as info:
                export_main(["--ckpt", str(checkpoint), "--format", kind])
        assert info.value.code == 0
        models[kind] = checkpoint.with_suffix(f".{kind}")
    return models


def _counted(function: Any, counts: dict[str, int], key: str) -> Any:
    def counting(*args: Any, **kwargs: Any) -> Any:
        counts[key] += 1
        return function(*args, **kwargs)

    return counting


def _val_images(sample_dir: Path) -> list[np.ndarray]:
    return [load_image(path) for path in sorted((sample_dir / "val").glob("*.jpg"))]


@pytest.mark.parametrize("kind", FORMATS)
def test_export_writes_the_model_and_its_metadata_after_parity(
    kind: str, exported: dict[str, Path], checkpoint: Path, sample_dir: Path
) -> None:
    model = exported[kind]
    assert model.is_file() and metadata_path(model).is_file()
    assert not [p for p in model.parent.iterdir() if p.name.endswith(".tmp")], "no temporary file is left"
    meta = json.loads(metadata_path(model).read_text())
    assert meta["format"] == kind and meta["file"] == model.name
    facts = meta["facts"]
    assert facts["class_names"] == ["circle", "square", "triangle"] and facts["category_ids"] == [1, 3, 7]
    assert len(facts["score_thresholds"]) == 3, "the thresholds validation chose travel with the model"
    assert (facts["image_format"], facts["min_size"], facts["max_size"], facts["score_floor"]) == (
        "BGR",
        128,
        192,
        0.05,
    )
    assert meta["source"]["checkpoint_sha256"] == sha256_file(checkpoint)
    assert meta["source"]["train_json_sha256"] == sha256_file(sample_dir / "train.json")
    assert {"detlit", "torch", "torchvision", "onnx", "onnxruntime"} <= set(meta["versions"])
    parity = meta["parity"]
    assert parity["passed"] and parity["images"] >= 8 and len(parity["input_sizes"]) >= 2
    assert parity["images_from"].startswith("the checkpoint's validation images")
    assert parity["pairs"] == parity["detections"] == parity["exported_detections"] > 100
    assert parity["max_box_difference_px"] <= BOX_TOLERANCE and parity["max_score_difference"] <= SCORE_TOLERANCE
    if kind == "torchscript":  # PyTorch's own kernels: exactly the same numbers
        assert parity["max_box_difference_px"] == 0.0 and parity["max_score_difference"] == 0.0


@pytest.mark.parametrize("kind", FORMATS)
def test_exported_models_predict_like_the_checkpoint(
    kind: str, exported: dict[str, Path], checkpoint: Path, sample_dir: Path
) -> None:
    images = _val_images(sample_dir)
    ours = Predictor.load(checkpoint, device="cpu", batch_size=3).predict(images)
    theirs = Predictor.load(exported[kind], batch_size=3).predict(images)
    assert Predictor.load(exported[kind]).score_thresholds.tolist() == pytest.approx(
        Predictor.load(checkpoint).score_thresholds.tolist()
    )
    assert sum(len(p) for p in ours) > 0
    thresholds = Predictor.load(checkpoint).score_thresholds
    for mine, other in zip(ours, theirs, strict=True):
        # A detection scoring within the score tolerance of its class's threshold may be kept by
        # one runtime and not the other; every other detection must be the same.
        a = mine.scores >= thresholds[mine.labels] + SCORE_TOLERANCE
        b = other.scores >= thresholds[other.labels] + SCORE_TOLERANCE
        np.testing.assert_array_equal(mine.labels[a], other.labels[b])
        np.testing.assert_allclose(mine.boxes[a], other.boxes[b], atol=BOX_TOLERANCE, rtol=0)
        np.testing.assert_allclose(mine.scores[a], other.scores[b], atol=SCORE_TOLERANCE, rtol=0)
        pick = lambda values, keep: [values[i] for i in np.flatnonzero(keep)]  # noqa: E731
        assert pick(mine.category_ids, a) == pick(other.category_ids, b)
        assert pick(mine.class_names, a) == pick(other.class_names, b)


def _mosaic(sample_dir: Path) -> np.ndarray:
    """A 480 x 480 image of four validation images (cut to 240 x 240), for sliced inference."""
    parts = [image[:240, :240] for image in _val_images(sample_dir)[:4]]
    return np.ascontiguousarray(np.concatenate([np.concatenate(parts[:2], 1), np.concatenate(parts[2:], 1)], 0))


@pytest.mark.parametrize("kind", FORMATS)
def test_exported_models_slice_like_the_checkpoint(
    kind: str, exported: dict[str, Path], checkpoint: Path, sample_dir: Path
) -> None:
    # NMS keeps boxes as they are, so the parity tolerances hold after merging (greedy merging
    # would let a box at the score floor, kept by one runtime only, grow a box of the other).
    slicing = Slicing(size=128, overlap=0.25, merge="nms")
    image = _mosaic(sample_dir)
    mine = Predictor.load(checkpoint, device="cpu", batch_size=4, slicing=slicing)(image)
    other = Predictor.load(exported[kind], batch_size=4, slicing=slicing)(image)
    thresholds = Predictor.load(checkpoint).score_thresholds
    a = mine.scores >= thresholds[mine.labels] + SCORE_TOLERANCE
    b = other.scores >= thresholds[other.labels] + SCORE_TOLERANCE
    assert a.sum() > 0 and a.sum() == b.sum()
    # Paired one to one, not by position: two scores within the tolerance may sort either way.
    unpaired = list(zip(other.labels[b], other.scores[b], other.boxes[b], strict=True))
    for label, score, box in zip(mine.labels[a], mine.scores[a], mine.boxes[a], strict=True):
        pair = next(
            (
                i
                for i, (their_label, their_score, their_box) in enumerate(unpaired)
                if their_label == label
                and abs(their_score - score) <= SCORE_TOLERANCE
                and np.abs(their_box - box).max() <= BOX_TOLERANCE
            ),
            None,
        )
        assert pair is not None, (label, score, box)
        unpaired.pop(pair)


def test_export_reads_the_checkpoint_once(exported: dict[str, Path]) -> None:
    # Before: the archive verified once, then loaded twice (Lightning's load_from_checkpoint, and
    # torch.load for the data settings), and hashed a fourth time.
    assert checkpoint_reads == {kind: {"load": 1, "testzip": 1} for kind in FORMATS}


def test_a_loaded_checkpoint_is_the_model_lightning_loads(checkpoint: Path, sample_dir: Path) -> None:
    from detlit.model.module import DetectionModule

    loaded = LoadedCheckpoint.read(checkpoint)
    theirs = DetectionModule.load_from_checkpoint(checkpoint, map_location="cpu")
    assert not loaded.module.training
    assert dict(loaded.module.hparams) == {k: v for k, v in theirs.hparams.items() if not k.startswith("_")}
    assert loaded.module.score_thresholds == theirs.score_thresholds and len(theirs.score_thresholds or []) == 3
    ours, reference = loaded.module.state_dict(), theirs.state_dict()
    assert list(ours) == list(reference) and all(torch.equal(ours[k], reference[k]) for k in ours)
    assert loaded.data["val_json"] == str(sample_dir / "val.json")
    assert loaded.sha256 == sha256_file(checkpoint)


@pytest.mark.parametrize("kind", FORMATS)
def test_exported_metadata_reads_back_to_its_own_bytes(kind: str, exported: dict[str, Path]) -> None:
    written = metadata_path(exported[kind]).read_bytes()
    metadata = ExportedModel.read(exported[kind])
    assert metadata.to_bytes() == written
    assert (metadata.format, metadata.version, metadata.file) == (kind, 2, exported[kind].name)


def test_a_model_exported_with_version_1_metadata_still_loads(
    exported: dict[str, Path], sample_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Metadata as detlit 0.2 wrote it (version 1: no sha256 and size of the model file)."""
    model = tmp_path / exported["onnx"].name
    model.write_bytes(exported["onnx"].read_bytes())
    document = json.loads(metadata_path(exported["onnx"]).read_text())
    old = {key: value for key, value in document.items() if key not in ("file_sha256", "file_bytes")}
    metadata_path(model).write_text(json.dumps({**old, "version": 1}, indent=1))
    images = _val_images(sample_dir)[:2]
    with caplog.at_level("WARNING"):
        ours = Predictor.load(model, score_threshold=0.1).predict(images)
    assert "does not record its model file's sha256 (exported by an earlier detlit)" in caplog.text
    theirs = Predictor.load(exported["onnx"], score_threshold=0.1).predict(images)
    assert sum(len(p) for p in ours) > 0
    for mine, other in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(mine.boxes, other.boxes)
        np.testing.assert_array_equal(mine.scores, other.scores)


def _evaluate(argv: list[str]) -> dict[str, Any]:
    from detlit.evaluate import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    out = Path(argv[argv.index("--out") + 1])
    return dict(json.loads((out / "metrics.json").read_text())["coco"])


def test_exported_models_evaluate_to_the_checkpoints_numbers(
    exported: dict[str, Path], checkpoint: Path, sample_dir: Path, tmp_path: Path
) -> None:
    data = ["--json", str(sample_dir / "val.json"), "--images", str(sample_dir / "val"), "--device", "cpu"]
    reference = _evaluate(["--ckpt", str(checkpoint), *data, "--out", str(tmp_path / "ckpt")])
    assert reference["map50"] > 0
    for kind, model in exported.items():
        numbers = _evaluate(["--model", str(model), *data, "--out", str(tmp_path / kind)])
        for key in ("map", "map50", "map75", "mar100"):
            assert numbers[key] == pytest.approx(reference[key], abs=0.001), (kind, key)


def test_predict_command_takes_an_exported_model(exported: dict[str, Path], sample_dir: Path, tmp_path: Path) -> None:
    from detlit.predict import main

    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        main(["--model", str(exported["onnx"]), str(sample_dir / "val"), "--out", str(out), "--score-threshold", "0.1"])
    assert info.value.code == 0
    document = json.loads((out / "predictions.json").read_text())
    assert len(document["images"]) == 6 and document["annotations"]
    assert {a["category_id"] for a in document["annotations"]} <= {1, 3, 7}


@pytest.mark.cli
def test_torchscript_runs_without_detectron2_and_lightning(exported: dict[str, Path], sample_dir: Path) -> None:
    code = (
        "import sys; from detlit import Predictor; "
        f"p = Predictor.load({str(exported['torchscript'])!r}, score_threshold=0.05); "
        f"print(len(p({str(sorted((sample_dir / 'val').glob('*.jpg'))[1])!r}))); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'detectron2', 'lightning', 'pytorch_lightning', "
        "'onnxruntime'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    count, heavy = result.stdout.split("\n")[:2]
    assert int(count) > 0 and heavy == "[]"
    assert "Warning" not in result.stderr


def test_failed_parity_leaves_no_model_file(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    forward = exporting.TracedDetector.forward

    def shifted(self: Any, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        boxes, scores, classes = forward(self, image)
        return boxes + 0.5, scores, classes  # an export that moves every box by half a pixel

    monkeypatch.setattr(exporting.TracedDetector, "forward", shifted)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        export_main(["--ckpt", str(checkpoint), "--format", "torchscript", "--out", str(out)])
    assert info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: the exported torchscript model does not match")
    shift = float(re.search(r"max box difference ([0-9.e-]+) px", error[0]).group(1))  # type: ignore[union-attr]
    assert shift >= 0.5, "half a pixel of the model input, more in the original image"
    assert not out.exists(), "neither the model, nor its metadata, nor a temporary file, nor the folder export made"


def test_parity_of_a_model_that_detects_nothing_is_said_to_check_nothing(
    sample_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from .conftest import TINY_OVERRIDES

    # an untrained model scores about 1 / 4 everywhere: nothing reaches a score floor of 0.99
    module = tiny_module(overrides={**TINY_OVERRIDES, "MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.99})
    trainer = quiet_trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(module, datamodule=tiny_datamodule(sample_dir))
    trainer.save_checkpoint(tmp_path / "blind.ckpt")
    with caplog.at_level("WARNING"), pytest.raises(SystemExit) as info:
        export_main(["--ckpt", str(tmp_path / "blind.ckpt"), "--format", "onnx"])
    assert info.value.code == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(
        m.startswith(f"parity compared nothing: {tmp_path / 'blind.ckpt'} detects nothing above its score floor 0.99")
        and "the exported model is unchecked; pass --images" in m
        for m in warnings
    ), warnings
    parity = json.loads(metadata_path(tmp_path / "blind.onnx").read_text())["parity"]
    assert parity["passed"] is True and parity["compared"] is False
    assert parity["detections"] == parity["exported_detections"] == parity["pairs"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "onnx", "--ckpt", "missing.ckpt"], "--ckpt missing.ckpt does not exist"),
        (["--format", "onnx", "--images", "nowhere"], "--images nowhere is not a folder"),
    ],
)
def test_export_refuses_bad_arguments_in_one_sentence(
    args: list[str], message: str, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = args if "--ckpt" in args else ["--ckpt", str(checkpoint), *args]
    with pytest.raises(SystemExit) as info:
        export_main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_an_existing_export_is_replaced_only_with_overwrite(
    exported: dict[str, Path], checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        export_main(["--ckpt", str(checkpoint), "--format", "onnx"])
    assert info.value.code == 2
    assert "already exists; choose another --out, or pass --overwrite" in capsys.readouterr().err


def test_an_exported_model_needs_its_metadata(exported: dict[str, Path], tmp_path: Path) -> None:
    alone = tmp_path / "alone.onnx"
    alone.write_bytes(exported["onnx"].read_bytes())
    with pytest.raises(WeightsError, match=r"alone\.onnx\.json is missing: .*export the model again"):
        Predictor.load(alone)
    with pytest.raises(WeightsError, match="does not exist"):
        Predictor.load(tmp_path / "nothing.torchscript")


def test_postprocess_is_detectron2s(sample_dir: Path) -> None:
    """The one postprocess gives detectron2's ``detector_postprocess`` numbers, bit for bit."""
    import detlit.compat  # noqa: F401, I001  (first: it prepares detectron2's import)
    from detectron2.modeling.postprocessing import detector_postprocess
    from detectron2.structures import Boxes, Instances

    from detlit.inference.predictor import postprocess

    generator = torch.Generator().manual_seed(0)
    boxes = torch.rand(200, 4, generator=generator) * torch.tensor([220.0, 180.0, 220.0, 180.0]) - 10
    boxes[:, 2:] = boxes[:, :2] + torch.rand(200, 2, generator=generator) * 60 - 5  # some empty, some outside
    scores, labels = torch.rand(200, generator=generator), torch.randint(0, 3, (200,), generator=generator)
    for output in ((240, 320), (37, 411), (171, 128)):
        instances = Instances((171, 213), pred_boxes=Boxes(boxes.clone()), scores=scores, pred_classes=labels)
        theirs = detector_postprocess(instances, *output)
        ours = postprocess(Detections(boxes, scores, labels), (171, 213), output)
        assert 0 < len(ours.boxes) < 200
        assert torch.equal(ours.boxes, theirs.pred_boxes.tensor)
        assert torch.equal(ours.scores, theirs.scores) and torch.equal(ours.labels, theirs.pred_classes)


# --- the default R50-FPN architecture --------------------------------------------------------------


def _calibrate_frozen_batch_norm(module: Any, image: torch.Tensor) -> None:
    """Set every FrozenBatchNorm's statistics to those of its input on one image.

    From scratch, the R50's frozen batch norms are identities: activations grow layer after layer
    until every proposal covers the whole image and nothing is detected, so parity would compare
    nothing. With statistics taken from the data, the random network detects (at random)."""

    def hook(layer: Any, inputs: tuple[torch.Tensor]) -> None:
        layer.running_mean.copy_(inputs[0].mean((0, 2, 3)))
        layer.running_var.copy_(inputs[0].var((0, 2, 3)))

    layers = [m for m in module.model.modules() if type(m).__name__ == "FrozenBatchNorm2d"]
    hooks = [layer.register_forward_pre_hook(hook) for layer in layers]
    with torch.no_grad():
        module.model.backbone(module.model.preprocess_image([{"image": image}]).tensor)
    for handle in hooks:
        handle.remove()
    assert len(layers) > 50


@pytest.fixture(scope="module")
def r50_checkpoint(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default config's R50-FPN (COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml) from scratch,
    validated on the sample at a small size and saved as a run saves it."""
    from detlit.model.config import DEFAULT_CONFIG
    from detlit.model.module import DetectionModule

    sizes = {"min_size_train": [160], "max_size_train": 256, "min_size_test": 160, "max_size_test": 256}
    torch.manual_seed(0)
    module = DetectionModule(
        num_classes=3, class_names=["circle", "square", "triangle"], category_ids=[1, 3, 7], **sizes
    )
    assert module.hparams["config_name"] == DEFAULT_CONFIG == "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml"
    image = torch.from_numpy(np.ascontiguousarray(_val_images(sample_dir)[1][:160, :, ::-1].transpose(2, 0, 1)))
    _calibrate_frozen_batch_norm(module, image)
    trainer = quiet_trainer()
    trainer.validate(module, datamodule=tiny_datamodule(sample_dir, **sizes), verbose=False)
    path = tmp_path_factory.mktemp("r50") / "r50.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def r50_metrics(r50_checkpoint: Path, sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("r50-eval") / "ckpt"
    return _evaluate(["--ckpt", str(r50_checkpoint), *_r50_data(sample_dir), "--out", str(out)])


def _r50_data(sample_dir: Path) -> list[str]:
    return ["--json", str(sample_dir / "val.json"), "--images", str(sample_dir / "val"), "--device", "cpu"]


@pytest.mark.cli
@pytest.mark.parametrize("kind", FORMATS)
def test_r50_fpn_exports_with_parity_predicts_evaluates_and_serves(
    kind: str, r50_checkpoint: Path, r50_metrics: dict[str, Any], sample_dir: Path, tmp_path: Path
) -> None:
    model = exporting.export(r50_checkpoint, kind)  # type: ignore[arg-type]
    parity = json.loads(metadata_path(model).read_text())["parity"]
    assert parity["passed"] and parity["images"] >= 8 and len(parity["input_sizes"]) >= 2
    assert parity["detections"] > 300, "the calibrated random R50 detects: parity compares something"
    assert parity["max_box_difference_px"] <= BOX_TOLERANCE

    numbers = _evaluate(["--model", str(model), *_r50_data(sample_dir), "--out", str(tmp_path / "eval")])
    for key in ("map", "map50", "mar100"):
        assert numbers[key] == pytest.approx(r50_metrics[key], abs=0.001), key

    image = sorted((sample_dir / "val").glob("*.jpg"))[0]
    expected = Predictor.load(model, score_threshold=0.3)(image)
    assert len(expected) > 0
    with running_service(tmp_path, "--model", str(model), "--score-threshold", "0.3") as url:
        status, answer = _request(f"{url}/predict", image.read_bytes(), {"Content-Type": "image/jpeg"})
    assert status == 200, answer
    _assert_answers(answer, expected)


# --- the service -----------------------------------------------------------------------------------

REQUEST_TIMEOUT = 60.0  # seconds per HTTP request: the service answers in well under a second


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _request(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=data, headers=headers or {}, method="POST" if data is not None else "GET"
    )
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as answer:
            status, body = answer.status, answer.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode()


@contextlib.contextmanager
def running_service(tmp_path: Path, *args: str) -> Iterator[str]:
    """``python -m detlit.serve ARGS`` on 127.0.0.1 and a free port, in its own process group; the
    URL once ``/health`` answers. Stopped with SIGTERM afterwards; every process it started must end."""
    port = _free_port()
    log = (tmp_path / f"serve-{port}.log").open("w")
    command = [sys.executable, "-m", "detlit.serve", *args, "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert process.poll() is None, (tmp_path / f"serve-{port}.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the service did not answer /health in 300 s"
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.read() == b"ok":
                    break
            time.sleep(0.5)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=60)
        left = _group_alive(process.pid, seconds=20)
        if left:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()
    assert not left, "the service left processes behind after SIGTERM"
    assert not list(tmp_path.glob("client.py")), "the service writes nothing where it runs"


def _group_alive(group: int, seconds: float) -> bool:
    """Whether a process of ``group`` is still running after waiting up to ``seconds`` for all to end."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.2)
    return True


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _multipart(field: str, filename: str, data: bytes) -> tuple[bytes, dict[str, str]]:
    boundary = "detlit-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def _assert_answers(answer: dict[str, Any], expected: Any) -> None:
    assert (answer["width"], answer["height"]) == (expected.width, expected.height)
    detections = answer["detections"]
    assert [d["class_name"] for d in detections] == expected.class_names
    assert [d["category_id"] for d in detections] == expected.category_ids
    boxes = np.array([d["box_xyxy"] for d in detections]).reshape(-1, 4)
    np.testing.assert_allclose(boxes, expected.boxes, atol=1e-4, rtol=0)
    xywh = np.array([d["box_xywh"] for d in detections]).reshape(-1, 4)
    np.testing.assert_allclose(xywh[:, 2:], boxes[:, 2:] - boxes[:, :2], atol=1e-4)
    np.testing.assert_allclose([d["score"] for d in detections], expected.scores, atol=1e-6, rtol=0)


@pytest.mark.cli
def test_the_service_answers_like_the_predictor_and_survives_bad_payloads(
    exported: dict[str, Path], sample_dir: Path, tmp_path: Path
) -> None:
    model = exported["onnx"]
    files = sorted((sample_dir / "val").glob("*.jpg"))
    predictor = Predictor.load(model, score_threshold=0.1)
    expected = predictor([load_image(path) for path in files])
    bomb = io.BytesIO()
    Image.new("L", (8000, 8000)).save(bomb, format="PNG")  # 64 million pixels in about 60 kB
    limits = ["--max-image-bytes", "500000", "--max-image-pixels", "20000000", "--batch-size", "4"]
    with running_service(tmp_path, "--model", str(model), "--score-threshold", "0.1", *limits) as url:
        predict = f"{url}/predict"
        raw = files[1].read_bytes()
        status, answer = _request(predict, raw, {"Content-Type": "image/jpeg"})
        assert status == 200, answer
        _assert_answers(answer, expected[1])
        assert answer["thresholds"] == {"circle": 0.1, "square": 0.1, "triangle": 0.1}
        assert _request(predict, *_multipart("image", "x.jpg", raw)) == (200, answer)
        encoded = json.dumps({"image": base64.b64encode(raw).decode()}).encode()
        assert _request(predict, encoded, {"Content-Type": "application/json"}) == (200, answer)

        bad = {
            "not an image": (b"hello, this is text", {"Content-Type": "image/jpeg"}, 400, "not an image"),
            "empty": (b"", {"Content-Type": "image/jpeg"}, 400, "no body"),
            "too many bytes": (os.urandom(600_000), {"Content-Type": "image/jpeg"}, 413, "more than the limit"),
            "decompression bomb": (bomb.getvalue(), {"Content-Type": "image/png"}, 413, "8000 x 8000 pixels"),
            "truncated": (raw[: len(raw) // 3], {"Content-Type": "image/jpeg"}, 400, "truncated"),
            "bad json": (b"{not json", {"Content-Type": "application/json"}, 400, "not valid JSON"),
            "json without image": (b'{"x": 1}', {"Content-Type": "application/json"}, 400, 'no "image"'),
            "form without file": (b"a=1", {"Content-Type": "multipart/form-data; boundary=zz"}, 400, "form"),
        }
        for name, (body, headers, code, words) in bad.items():
            status, answer = _request(predict, body, headers)
            assert status == code, (name, answer)
            assert isinstance(answer, dict) and words in answer["detail"], (name, answer)
            assert answer["detail"].count(". ") == 0, (name, "one sentence")

        # Concurrent requests are batched; a bad image in a batch fails only itself.
        bodies = [path.read_bytes() for path in files] + [b"garbage", bomb.getvalue()]
        with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
            answers = list(pool.map(lambda b: _request(predict, b, {"Content-Type": "image/jpeg"}), bodies))
        for (status, answer), prediction in zip(answers, expected, strict=False):
            assert status == 200, answer
            _assert_answers(answer, prediction)
        assert [status for status, _ in answers[len(files) :]] == [400, 413]

        assert _request(f"{url}/health") == (200, "ok")
        status, info = _request(f"{url}/info")
        assert status == 200 and info["model"]["category_ids"] == [1, 3, 7] and info["model"]["runtime"] == "onnx"
        assert info["model"]["thresholds_from"] == "the score threshold given"
    # Each request logged once its answer is sent (method, path, status, milliseconds), and the stop.
    served = next(tmp_path.glob("serve-*.log")).read_text()
    requests = re.findall(r"(GET|POST) (/\w+) (\d{3}) \d+\.\d ms", served)
    assert requests.count(("POST", "/predict", "200")) == 3 + len(files)
    assert ("POST", "/predict", "413") in requests and ("POST", "/predict", "400") in requests
    assert ("GET", "/info", "200") in requests
    assert re.search(r"service on http://127\.0\.0\.1:\d+ stopped", served)


@pytest.mark.cli
@pytest.mark.parametrize("option", ["--model", "--ckpt"])
def test_the_service_serves_torchscript_and_checkpoints(
    option: str, exported: dict[str, Path], checkpoint: Path, sample_dir: Path, tmp_path: Path
) -> None:
    model = exported["torchscript"] if option == "--model" else checkpoint
    image = sorted((sample_dir / "val").glob("*.jpg"))[3]
    expected = Predictor.load(model, device="cpu")(image)
    with running_service(tmp_path, option, str(model), "--device", "cpu") as url:
        status, answer = _request(f"{url}/predict", image.read_bytes(), {"Content-Type": "image/jpeg"})
    assert status == 200, answer
    _assert_answers(answer, expected)


@pytest.mark.cli
def test_the_service_slices(exported: dict[str, Path], sample_dir: Path, tmp_path: Path) -> None:
    image = Image.fromarray(_mosaic(sample_dir))
    body = io.BytesIO()
    image.save(body, format="PNG")
    slicing = Slicing(size=160, overlap=0.25)
    expected = Predictor.load(exported["onnx"], slicing=slicing)(np.asarray(image))
    options = ("--slice", "160", "--slice-overlap", "0.25")
    with running_service(tmp_path, "--model", str(exported["onnx"]), "--device", "cpu", *options) as url:
        status, answer = _request(f"{url}/predict", body.getvalue(), {"Content-Type": "image/png"})
        _, info = _request(f"{url}/info")
    assert status == 200, answer
    _assert_answers(answer, expected)
    assert info["model"]["slicing"] == slicing.as_json() and info["model"]["runtime"] == "onnx"
    assert info["model"]["thresholds_from"].startswith("the onnx model's metadata")


@pytest.mark.cli
def test_the_documented_clients_work(exported: dict[str, Path], sample_dir: Path, tmp_path: Path) -> None:
    """docs/deploy.md's curl commands (the JSON body built in a file) and Python client, as written,
    against a running service; the image made 600 kB, where base64 on curl's command line would fail."""
    text = (REPO / "docs" / "deploy.md").read_text()
    shell = re.search(r"```bash service\n(.*?)```", text, re.DOTALL)
    python = re.search(r"```python service\n(.*?)```", text, re.DOTALL)
    assert shell and python
    work = tmp_path / "work"
    (work / "data" / "sample" / "val").mkdir(parents=True)
    big = np.random.default_rng(0).integers(0, 256, (700, 900, 3), dtype=np.uint8)  # noise: a large JPEG
    big[100:400, 100:400] = np.asarray(
        Image.open(sample_dir / "val" / "val_0000.jpg").convert("RGB").resize((300, 300))
    )
    Image.fromarray(big).save(work / "data" / "sample" / "val" / "val_0000.jpg", quality=95)
    assert (work / "data" / "sample" / "val" / "val_0000.jpg").stat().st_size > 400_000
    with running_service(tmp_path, "--model", str(exported["onnx"]), "--device", "cpu") as url:
        for line in shell.group(1).strip().splitlines():
            command = line.split("  #")[0].replace("http://127.0.0.1:8000", url)
            result = subprocess.run(["bash", "-c", command], cwd=work, capture_output=True, text=True, timeout=120)
            assert result.returncode == 0, (command, result.stderr)
            if "/predict" in command:
                assert "detections" in json.loads(result.stdout), (command, result.stdout[:300])
        code = python.group(1).replace("http://127.0.0.1:8000", url)
        result = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
    assert (work / "request.json").stat().st_size > 500_000  # the base64 body went through a file


def test_the_service_refuses_a_missing_model_in_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from detlit.serve import main

    with pytest.raises(SystemExit) as info:
        main(["--model", str(tmp_path / "none.onnx")])
    assert info.value.code == 2
    assert "none.onnx does not exist" in capsys.readouterr().err
