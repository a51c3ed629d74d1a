"""The exported-model format (detlit/inference/exported.py): the metadata json beside an exported model,
written and read back by one type. Its bounds and the pair check are in tests/test_bounded_files.py; real
exports in tests/test_deploy.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from detlit.errors import WeightsError
from detlit.inference.exported import ExportedModel, is_exported, metadata_path
from detlit.inference.facts import ModelFacts

FACTS = ModelFacts(("circle", "square", "triangle"), (1, 3, 7), (0.5, 0.4, 0.3), "BGR", 128, 192, 0.05, 100)
KEYS = [
    "kind", "version", "format", "file", "file_sha256", "file_bytes", "created", "input", "outputs", "facts",
    "source", "versions", "parity", "seconds",
]  # fmt: skip
"""The keys of version 2 metadata, in the order export has written them since it recorded the sha256."""


def _written() -> ExportedModel:
    return ExportedModel.of(
        b"model bytes",
        "onnx",
        "last.onnx",
        FACTS,
        source={"checkpoint": "/runs/x/last.ckpt", "checkpoint_sha256": "ab" * 32},
        versions={"detlit": "0.3.0", "onnx_opset": "17"},
        parity={"passed": True, "images": 8, "images_from": "generated images"},
        seconds={"export": 1.5, "parity": 2.25},
    )


def test_metadata_reads_back_what_it_wrote_in_the_same_order() -> None:
    written = _written()
    document = written.to_json()
    assert list(document) == KEYS
    assert document["kind"] == "detlit exported model" and document["version"] == 2
    assert (document["file_sha256"], document["file_bytes"]) == (hashlib.sha256(b"model bytes").hexdigest(), 11)
    assert document["input"]["resize"] == {
        "rule": "shortest edge to min_size, longest edge at most max_size (detectron2 ResizeShortestEdge)",
        "min_size": 128,
        "max_size": 192,
    }
    assert document["input"]["channel_order"] == "BGR" and document["facts"] == FACTS.as_json()
    read = ExportedModel.from_json(json.loads(written.to_bytes()), Path("last.onnx.json"))
    assert read == written and read.to_bytes() == written.to_bytes()
    assert written.to_bytes().startswith(b'{\n "kind": "detlit exported model",\n "version": 2,\n')


def test_version_1_metadata_is_read_without_the_pair() -> None:
    """Metadata as detlit 0.2 wrote it: no file_sha256 and file_bytes."""
    document = {key: value for key, value in _written().to_json().items() if not key.startswith("file_")}
    document.update(version=1, file="last.onnx")
    read = ExportedModel.from_json(document, Path("last.onnx.json"))
    assert (read.version, read.file_sha256, read.file_bytes, read.facts) == (1, None, None, FACTS)
    assert read.to_json() == document


def test_a_format_detlit_does_not_run_is_one_sentence() -> None:
    document = {**_written().to_json(), "format": "tflite"}
    with pytest.raises(WeightsError, match=r"^m\.json names format 'tflite'; detlit runs torchscript, onnx, openvino$"):
        ExportedModel.from_json(document, Path("m.json"))


def test_descriptive_parts_that_are_no_objects_are_left_out() -> None:
    """Loading never uses the source, versions, parity or seconds: odd values there are dropped, not refused."""
    document = {**_written().to_json(), "source": "someone's", "parity": [1, 2], "created": 5}
    read = ExportedModel.from_json(document, Path("m.json"))
    assert (read.source, read.parity, read.created, read.versions) == (
        None,
        None,
        None,
        {"detlit": "0.3.0", "onnx_opset": "17"},
    )
    assert "source" not in read.to_json() and "parity" not in read.to_json()


def test_model_files_and_their_metadata_are_named_by_suffix() -> None:
    assert metadata_path(Path("out/last.onnx")) == Path("out/last.onnx.json")
    assert [is_exported(Path(name)) for name in ("a.onnx", "a.torchscript", "a.ckpt", "a.onnx.json")] == [
        True,
        True,
        False,
        False,
    ]
