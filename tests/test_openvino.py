"""Deployment as OpenVINO (float32): export with parity, the ``.xml`` graph and ``.bin`` weights that
predict, evaluate and serve like the checkpoint, no detection row for a model that finds nothing,
crafted OpenVINO files refused in one sentence before OpenVINO reads them, and re-export over an
existing export."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from detlit.common.files import sha256_file
from detlit.common.safe_xml import parse_xml
from detlit.data.images import load_image
from detlit.deploy.parity import BOX_TOLERANCE, SCORE_TOLERANCE
from detlit.errors import ConfigError, WeightsError
from detlit.evaluation.coco_results import BOX_DECIMALS
from detlit.export import main as export_main
from detlit.inference.exported import ExportedModel, metadata_path, weights_path
from detlit.inference.predictor import Prediction, Predictor
from detlit.inference.runtimes import LoadedCheckpoint, load_exported

from .conftest import REPO, quiet_trainer, tiny_datamodule, tiny_module
from .corpus_untrusted import LAUGHS_DTD, blind_checkpoint, copy_export, with_graph_head, with_metadata
from .test_deploy import _assert_answers, _request, _val_images, running_service

pytest.importorskip("openvino")

GREY = np.full((150, 200, 3), 128, np.uint8)
"""A uniform grey image."""


@pytest.fixture(scope="module")
def checkpoint(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model after two training steps and a validation, saved as a run saves it (its data
    settings name the validation images that parity runs on)."""
    folder = tmp_path_factory.mktemp("ov-run") / "checkpoints"
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=2)
    trainer.fit(tiny_module(), datamodule=tiny_datamodule(sample_dir))
    trainer.save_checkpoint(folder / "tiny.ckpt")
    return folder / "tiny.ckpt"


@pytest.fixture(scope="module")
def exported(checkpoint: Path) -> Path:
    """The checkpoint exported to OpenVINO by the command, into the checkpoint's folder."""
    with pytest.raises(SystemExit) as info:
        export_main(["--ckpt", str(checkpoint), "--format", "openvino"])
    assert info.value.code == 0
    return checkpoint.with_suffix(".xml")


@pytest.fixture(scope="module")
def blind(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same checkpoint (same name, another folder) that finds nothing in any image."""
    return blind_checkpoint(checkpoint, tmp_path_factory.mktemp("ov-blind") / checkpoint.name)


def _state(model: Path) -> dict[str, tuple[int, str]]:
    """The inode and sha256 of each of an export's three files, by name."""
    files = (model, weights_path(model), metadata_path(model))
    return {path.name: (path.stat().st_ino, sha256_file(path)) for path in files}


@pytest.fixture(scope="module")
def reexported(
    exported: Path, blind: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, tuple[int, str]]]:
    """The blind checkpoint exported with --overwrite over a copy of the first export; the new graph
    and the first export's files as they were (inode, sha256)."""
    model = copy_export(exported, tmp_path_factory.mktemp("ov-reexport"))
    before = _state(model)
    argv = ["--ckpt", str(blind), "--format", "openvino", "--out", str(model.parent), "--overwrite"]
    with pytest.raises(SystemExit) as info:
        export_main(argv)
    assert info.value.code == 0
    return model, before


# --- export and parity -----------------------------------------------------------------------------


def test_export_writes_graph_weights_and_metadata_after_parity(exported: Path, checkpoint: Path) -> None:
    weights, meta_path = weights_path(exported), metadata_path(exported)
    assert (exported.name, weights.name, meta_path.name) == ("tiny.xml", "tiny.bin", "tiny.xml.json")
    assert exported.is_file() and weights.is_file() and meta_path.is_file()
    assert not [p for p in exported.parent.iterdir() if p.name.endswith(".tmp")], "no temporary file is left"
    assert parse_xml(exported.read_bytes(), str(exported)).tag == "net"
    meta = json.loads(meta_path.read_text())
    assert (meta["format"], meta["file"], meta["version"]) == ("openvino", "tiny.xml", 2)
    assert "precision" not in meta and ExportedModel.read(exported).precision == "fp32"
    assert (meta["file_sha256"], meta["file_bytes"]) == (sha256_file(exported), exported.stat().st_size)
    assert (meta["weights_sha256"], meta["weights_bytes"]) == (sha256_file(weights), weights.stat().st_size)
    assert meta["source"]["checkpoint_sha256"] == sha256_file(checkpoint)
    assert meta["versions"]["openvino"] == importlib.metadata.version("openvino")
    # The weights stay float32 (not compressed to float16): 4 bytes per number of the model, give or
    # take the few the conversion folds or adds.
    numbers = sum(t.numel() for t in LoadedCheckpoint.read(checkpoint).module.model.state_dict().values())
    assert meta["weights_bytes"] == pytest.approx(4 * numbers, rel=0.01)
    parity = meta["parity"]
    assert parity["passed"] and parity["images"] >= 8 and len(parity["input_sizes"]) >= 2
    assert parity["images_from"].startswith("the checkpoint's validation images")
    assert parity["pairs"] == parity["detections"] == parity["exported_detections"] > 100
    assert parity["differing"] == 0
    assert parity["max_box_difference_px"] <= BOX_TOLERANCE and parity["max_score_difference"] <= SCORE_TOLERANCE


def _near_a_cut(prediction: Prediction, thresholds: np.ndarray) -> np.ndarray:
    """Detections whose score is within the score tolerance of their class's threshold: a rounding
    difference decides whether one runtime keeps them."""
    return np.abs(prediction.scores - thresholds[prediction.labels]) <= SCORE_TOLERANCE


def test_openvino_predicts_like_the_checkpoint(exported: Path, checkpoint: Path, sample_dir: Path) -> None:
    images = [*_val_images(sample_dir), GREY]
    reference = Predictor.load(checkpoint, device="cpu")
    ours = reference.predict(images)
    predictor = Predictor.load(exported)
    theirs = predictor.predict(images)
    thresholds = reference.score_thresholds
    assert predictor.runtime.name == "openvino" and predictor.score_thresholds.tolist() == pytest.approx(
        thresholds.tolist()
    )
    assert sum(len(p) for p in ours) > 0
    for mine, other in zip(ours, theirs, strict=True):
        a, b = ~_near_a_cut(mine, thresholds), ~_near_a_cut(other, thresholds)
        assert a.sum() == b.sum(), "the same number of detections (away from a threshold)"
        np.testing.assert_array_equal(mine.labels[a], other.labels[b])
        np.testing.assert_allclose(mine.boxes[a], other.boxes[b], atol=BOX_TOLERANCE, rtol=0)
        np.testing.assert_allclose(mine.scores[a], other.scores[b], atol=SCORE_TOLERANCE, rtol=0)


def test_every_detection_above_the_floor_is_the_checkpoints(exported: Path, checkpoint: Path) -> None:
    """Without thresholds (every detection above the score floor) on the grey image, where this
    barely trained model finds many things."""
    reference = Predictor.load(checkpoint, device="cpu", all_detections=True)
    mine, other = reference(GREY), Predictor.load(exported, all_detections=True)(GREY)
    floor = np.full(len(reference.class_names), reference.facts.score_floor)
    a, b = ~_near_a_cut(mine, floor), ~_near_a_cut(other, floor)
    assert a.sum() == b.sum() > 10
    # Sorted by class, then score: two scores within the tolerance may come in either order.
    ours, theirs = np.lexsort((mine.scores[a], mine.labels[a])), np.lexsort((other.scores[b], other.labels[b]))
    np.testing.assert_array_equal(mine.labels[a][ours], other.labels[b][theirs])
    np.testing.assert_allclose(mine.scores[a][ours], other.scores[b][theirs], atol=SCORE_TOLERANCE, rtol=0)


def test_sliced_inference_runs_the_openvino_model_like_the_checkpoint(
    exported: Path, checkpoint: Path, sample_dir: Path
) -> None:
    """Slicing cuts and merges in detlit, the same for every runtime: tiles of 64 px of the val images."""
    from detlit.inference.slicing import Slicing

    slicing = Slicing(size=64, overlap=0.25)
    images = _val_images(sample_dir)[:3]
    reference = Predictor.load(checkpoint, device="cpu", all_detections=True, slicing=slicing)
    mine = reference.predict(images)
    theirs = Predictor.load(exported, all_detections=True, slicing=slicing).predict(images)
    floor = np.full(len(reference.class_names), reference.facts.score_floor)
    assert sum(len(p) for p in mine) > 10
    for a, b in zip(mine, theirs, strict=True):
        keep_a, keep_b = ~_near_a_cut(a, floor), ~_near_a_cut(b, floor)
        assert keep_a.sum() == keep_b.sum()
        ours, other = np.lexsort((a.scores[keep_a], a.labels[keep_a])), np.lexsort((b.scores[keep_b], b.labels[keep_b]))
        np.testing.assert_allclose(a.scores[keep_a][ours], b.scores[keep_b][other], atol=SCORE_TOLERANCE, rtol=0)


def test_a_model_that_finds_nothing_gives_no_row(
    reexported: tuple[Path, dict[str, tuple[int, str]]], blind: Path, sample_dir: Path
) -> None:
    """OpenVINO returns one undefined row for an empty ``If`` branch; export traces NMS without it."""
    model, _ = reexported
    predictor = Predictor.load(model, all_detections=True)
    for image in (GREY, _val_images(sample_dir)[0]):
        (raw,) = predictor.runtime([predictor.preprocess(image)["image"]], predictor.facts.score_floor)
        assert (tuple(raw.boxes.shape), tuple(raw.scores.shape), tuple(raw.labels.shape)) == ((0, 4), (0,), (0,))
        assert raw.boxes.dtype == torch.float32 and raw.scores.dtype == torch.float32
    images = [GREY, *_val_images(sample_dir)]
    assert [len(p) for p in predictor.predict(images)] == [0] * 7
    assert [len(p) for p in Predictor.load(blind, device="cpu", all_detections=True).predict(images)] == [0] * 7


# --- the commands ----------------------------------------------------------------------------------


def _command(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", *argv], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _finished(process: subprocess.Popen[str]) -> None:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]


@pytest.mark.cli
def test_predict_and_evaluate_commands_run_an_openvino_model(
    exported: Path, checkpoint: Path, sample_dir: Path, tmp_path: Path
) -> None:
    data = ["--json", str(sample_dir / "val.json"), "--images", str(sample_dir / "val")]
    predicting = _command(
        "detlit.predict", "--model", str(exported), str(sample_dir / "val"), "--out", str(tmp_path / "predict")
    )
    evaluating = _command("detlit.evaluate", "--model", str(exported), *data, "--out", str(tmp_path / "openvino"))
    from detlit.evaluate import main

    with pytest.raises(SystemExit) as info:
        main(["--ckpt", str(checkpoint), *data, "--device", "cpu", "--out", str(tmp_path / "ckpt")])
    assert info.value.code == 0
    _finished(predicting)
    _finished(evaluating)

    document = json.loads((tmp_path / "predict" / "predictions.json").read_text())
    files = sorted((sample_dir / "val").glob("*.jpg"))
    assert sorted(image["file_name"] for image in document["images"]) == [f.name for f in files]
    expected = Predictor.load(exported).predict([load_image(f) for f in files])
    ids = {image["file_name"]: image["id"] for image in document["images"]}
    assert sum(len(p) for p in expected) > 0
    for file, prediction in zip(files, expected, strict=True):
        found = [a for a in document["annotations"] if a["image_id"] == ids[file.name]]
        assert [a["category_id"] for a in found] == prediction.category_ids
        xywh = np.array([a["bbox"] for a in found]).reshape(-1, 4)
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        np.testing.assert_allclose(xyxy, prediction.boxes, atol=2 * 10**-BOX_DECIMALS, rtol=0)  # x, w rounded
        np.testing.assert_allclose([a["score"] for a in found], prediction.scores, atol=1e-6, rtol=0)
    assert len(list((tmp_path / "predict").glob("*.jpg"))) == len(files), "one drawing per image"

    metrics = {name: json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("openvino", "ckpt")}
    reference = metrics["ckpt"]["coco"]
    assert reference["map50"] > 0
    for key in ("map", "map50", "map75", "mar100"):
        assert metrics["openvino"]["coco"][key] == pytest.approx(reference[key], abs=1e-3), key


@pytest.mark.cli
def test_the_service_serves_an_openvino_model(exported: Path, sample_dir: Path, tmp_path: Path) -> None:
    image = sorted((sample_dir / "val").glob("*.jpg"))[2]
    expected = Predictor.load(exported, score_threshold=0.1)(image)
    assert len(expected) > 0
    with running_service(tmp_path, "--model", str(exported), "--score-threshold", "0.1") as url:
        status, answer = _request(f"{url}/predict", image.read_bytes(), {"Content-Type": "image/jpeg"})
        _, info = _request(f"{url}/info")
    assert status == 200, answer
    _assert_answers(answer, expected)
    assert info["model"]["runtime"] == "openvino" and info["model"]["category_ids"] == [1, 3, 7]


# --- crafted files ---------------------------------------------------------------------------------

DTD = b'<!DOCTYPE net [<!ENTITY lol "lol">]>\n'


def _dtd(model: Path, other: Path) -> None:
    with_graph_head(model, DTD)


def _laughs(model: Path, other: Path) -> None:
    with_graph_head(model, LAUGHS_DTD)


def _other_weights(model: Path, other: Path) -> None:
    shutil.copyfile(weights_path(other), weights_path(model))


def _no_weights(model: Path, other: Path) -> None:
    weights_path(model).unlink()


def _no_weights_sha256(model: Path, other: Path) -> None:
    with_metadata(model, weights_sha256=None)


def _int4(model: Path, other: Path) -> None:
    with_metadata(model, precision="int4")


CRAFTED = {
    "a DTD": (_dtd, r"tiny\.xml line 2 declares a DTD \(<!DOCTYPE \.\.\.>\); detlit reads OpenVINO graphs without"),
    "a billion laughs": (_laughs, r"tiny\.xml line 2 declares a DTD \(<!DOCTYPE \.\.\.>\).*export the model again"),
    "another export's weights": (
        _other_weights,
        r"tiny\.bin is not the weights file its metadata .*tiny\.xml\.json was written with \(their sha256 differ\)",
    ),
    "no weights": (_no_weights, r"the weights file of .*tiny\.xml, .*tiny\.bin, does not exist"),
    "no weights sha256": (
        _no_weights_sha256,
        r"tiny\.xml\.json lacks the weights file's sha256 and size \(weights_sha256, weights_bytes\)",
    ),
    "precision int4": (_int4, r"tiny\.xml\.json names precision 'int4'; detlit runs fp32, int8, fp16: export"),
}


@pytest.fixture
def unread(monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenVINO's reader made to fail the test if a model reaches it."""
    import openvino

    class Refused:
        def __init__(self) -> None:
            raise AssertionError("OpenVINO was asked to read a model that should have been refused")

    monkeypatch.setattr(openvino, "Core", Refused)


@pytest.mark.parametrize("name", list(CRAFTED))
def test_crafted_openvino_files_are_refused_before_openvino_reads_them(
    name: str, exported: Path, reexported: tuple[Path, dict[str, tuple[int, str]]], tmp_path: Path, unread: None
) -> None:
    craft, expected = CRAFTED[name]
    model = copy_export(exported, tmp_path)
    craft(model, reexported[0])
    with pytest.raises(WeightsError, match=expected) as info:
        Predictor.load(model)
    assert "\n" not in str(info.value) and ". " not in str(info.value), "one sentence"


def test_openvino_runs_on_the_cpu_only(exported: Path, monkeypatch: pytest.MonkeyPatch, unread: None) -> None:
    with pytest.raises(ConfigError):  # where torch sees no GPU, or the model's own sentence where it does
        Predictor.load(exported, device="cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"OpenVINO model .*tiny\.xml runs on the CPU here; use --device cpu"):
        Predictor.load(exported, device="cuda")


# --- re-export -------------------------------------------------------------------------------------


def test_reexport_with_overwrite_replaces_all_three_files(
    reexported: tuple[Path, dict[str, tuple[int, str]]], blind: Path
) -> None:
    model, before = reexported
    after = _state(model)
    assert set(after) == set(before) == {"tiny.xml", "tiny.bin", "tiny.xml.json"}
    for name in after:
        assert after[name][0] != before[name][0], f"{name} was replaced (a new file renamed into place)"
    assert after["tiny.bin"][1] != before["tiny.bin"][1] and after["tiny.xml.json"][1] != before["tiny.xml.json"][1]
    assert not [p for p in model.parent.iterdir() if p.name.endswith(".tmp") or p.name == ".detlit.lock"]
    meta = json.loads(metadata_path(model).read_text())
    assert (meta["file_sha256"], meta["weights_sha256"]) == (after["tiny.xml"][1], after["tiny.bin"][1])
    assert meta["source"]["checkpoint_sha256"] == sha256_file(blind)
    assert meta["parity"]["passed"] and meta["parity"]["detections"] == meta["parity"]["exported_detections"] == 0
    assert ExportedModel.read(model).weights_sha256 == after["tiny.bin"][1]
    assert load_exported(model).name == "openvino"


def test_reexport_without_overwrite_is_refused_naming_the_file(
    exported: Path, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = copy_export(exported, tmp_path / "all")
    alone = copy_export(exported, tmp_path / "bin-only")
    alone.unlink()  # an earlier export's weights, left alone
    metadata_path(alone).unlink()
    for folder, existing in ((model.parent, model), (alone.parent, weights_path(alone))):
        before = {p.name: sha256_file(p) for p in folder.iterdir()}
        with pytest.raises(SystemExit) as info:
            export_main(["--ckpt", str(checkpoint), "--format", "openvino", "--out", str(folder)])
        assert info.value.code == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert error == [f"error: {existing} already exists; choose another --out, or pass --overwrite to replace it"]
        assert {p.name: sha256_file(p) for p in folder.iterdir()} == before, "nothing written"


def test_a_graph_or_weights_beyond_their_bounds_are_refused_before_they_are_read(
    exported: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from detlit.inference import runtimes

    graph = exported.stat().st_size
    monkeypatch.setattr(runtimes, "MAX_OPENVINO_XML_BYTES", graph - 1)
    with pytest.raises(WeightsError, match=rf"tiny\.xml is {graph:,} bytes, more than the {graph - 1:,} bytes detlit"):
        load_exported(exported)
    monkeypatch.setattr(runtimes, "MAX_OPENVINO_XML_BYTES", graph)
    monkeypatch.setattr(runtimes, "MAX_WEIGHTS_DOWNLOAD", 2**20)
    with pytest.raises(WeightsError, match=r"tiny\.bin is [\d,]+ bytes, more than the 1,048,576 bytes detlit reads"):
        load_exported(exported)
