"""Files that would take unbounded memory or time are refused from what they declare, before they
are inflated or decoded: zip bombs given as checkpoints or TorchScript files, decompression-bomb
images, exported metadata out of its ranges; and an exported model is used only with the metadata
written with it."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from detlit.common.archives import MAX_MEMBERS, MAX_RATIO, SLACK, check_archive
from detlit.common.files import sha256_file
from detlit.data.checks import check_file, load_checked
from detlit.data.coco import load_coco
from detlit.data.headers import inspect_file, read_headers
from detlit.data.images import MAX_IMAGE_PIXELS, ImageTooLarge, load_image, open_image
from detlit.errors import ConfigError, DataError, WeightsError
from detlit.inference.exported import ExportedModel, metadata_path
from detlit.inference.facts import ModelFacts
from detlit.inference.runtimes import Detections, TorchScriptRuntime, checked_labels
from detlit.model.checkpoints import verify_file

from .conftest import quiet_trainer, tiny_datamodule, tiny_module
from .corpus_resources import (
    BOMB_BYTES,
    BOMB_SIDE,
    deflated_zeros,
    write_image_bomb,
    write_metadata_variants,
    write_zip,
    write_zip_bomb,
)

FACTS = ModelFacts(("circle", "square", "triangle"), (1, 3, 7), (0.5, 0.4, 0.3), "BGR", 128, 192, 0.05, 100)


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file torch.save writes as a checkpoint does: a zip archive of stored tensors and data.pkl."""
    path = tmp_path_factory.mktemp("ckpt") / "small.ckpt"
    state = {"model.a.weight": torch.ones(64, 64), "model.b.bias": torch.ones(64)}
    torch.save({"state_dict": state, "hyper_parameters": {"class_names": ["a"]}}, path)
    return path


# --- zip bombs ----------------------------------------------------------------------------------

MEASURE = """
import json, re, resource, sys
from pathlib import Path

def peak():
    return int(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1)) // 1024

def size():
    return int(re.search(r"VmSize:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024

from detlit.data.images import read_image
from detlit.model.checkpoints import read_checkpoint
# Should the checks ever let a bomb through, it fails here with a MemoryError instead of taking the machine.
resource.setrlimit(resource.RLIMIT_AS, (size() + 2**30, resource.RLIM_INFINITY))
found = {}
readers = {"checkpoint": lambda: read_checkpoint(Path(sys.argv[1])), "image": lambda: read_image(Path(sys.argv[2]))}
for name, read in readers.items():
    before = peak()
    try:
        read()
        sentence = ""
    except Exception as err:
        sentence = f"{type(err).__name__}: {err}"
    found[name] = {"sentence": sentence, "growth_mb": peak() - before}
print(json.dumps(found))
"""


def test_bombs_are_refused_before_anything_inflates(small_checkpoint: Path, tmp_path: Path) -> None:
    """A 3 MB checkpoint declaring 3 GB and a 110 KB PNG of 900 M pixels: one sentence each, and the
    process that reads them grows by a few megabytes (measured: 0 and 1 MB)."""
    bomb = write_zip_bomb(small_checkpoint, tmp_path / "bomb.ckpt")
    with zipfile.ZipFile(bomb) as archive:
        declared = sum(member.file_size for member in archive.infolist())
    assert bomb.stat().st_size < 4e6 and declared > BOMB_BYTES > 3 * 2**30, "a real bomb: 3 MB declaring > 3 GB"
    image = write_image_bomb(tmp_path / "bomb.png")
    assert image.stat().st_size < 200_000
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run(
        [sys.executable, "-c", MEASURE, str(bomb), str(image)], capture_output=True, text=True, env=env, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(run.stdout.splitlines()[-1])
    checkpoint, picture = found["checkpoint"], found["image"]
    assert checkpoint["sentence"].startswith(f"WeightsError: --ckpt {bomb} is 3.2 MB but its archive members declare")
    assert "a zip bomb or a damaged file, left unread; pass a .ckpt file" in checkpoint["sentence"]
    assert picture["sentence"] == (
        f"ImageTooLarge: image {image} is 900,000,000 pixels, more than the 178,956,970 pixels detlit decodes (a "
        "decompression bomb, or an image too large to train on); shrink or drop it, or raise the limit with the "
        "environment variable DETLIT_MAX_IMAGE_PIXELS"
    )
    # Read without the checks, the checkpoint took 3089 MB (torch.load) and the image 10307 MB (decoded, as RGB).
    assert checkpoint["growth_mb"] < 100 and picture["growth_mb"] < 100, found


def test_real_archives_pass_and_the_bounds_hold(small_checkpoint: Path, tmp_path: Path) -> None:
    check_archive(small_checkpoint, "x", "fix")
    verify_file(small_checkpoint)
    # One block of 16 MiB zeros deflates to 16 KB: within the slack for a file that small ...
    block, crc = deflated_zeros(2**24)
    write_zip(tmp_path / "code.zip", [("archive/code/x.py", block, zipfile.ZIP_DEFLATED, crc, 2**24)])
    size = (tmp_path / "code.zip").stat().st_size
    assert MAX_RATIO * size + SLACK >= 2**24
    check_archive(tmp_path / "code.zip", "x", "fix")
    # ... two are beyond it.
    twice, crc = deflated_zeros(2**25)
    write_zip(tmp_path / "two.zip", [("archive/data/0", twice, zipfile.ZIP_DEFLATED, crc, 2**25)])
    with pytest.raises(WeightsError, match=r"^model two\.zip is 32\.\d KB but its archive members declare 33\.6 MB"):
        check_archive(tmp_path / "two.zip", "model two.zip", "export it again")
    # Members counted from the end record, before the directory is parsed.
    many = [(f"archive/data/{i}", b"", zipfile.ZIP_STORED, 0, 0) for i in range(MAX_MEMBERS + 1)]
    write_zip(tmp_path / "many.zip", many)
    with pytest.raises(WeightsError, match=r"is a zip archive of 100,001 members, more than the 100,000 a model"):
        check_archive(tmp_path / "many.zip", "x", "fix")
    # Not a zip archive at all: its reader says so.
    (tmp_path / "text.ckpt").write_text("not a checkpoint\n")
    check_archive(tmp_path / "text.ckpt", "x", "fix")
    with pytest.raises(WeightsError, match="is not a whole checkpoint"):
        verify_file(tmp_path / "text.ckpt")


def test_a_torchscript_zip_bomb_is_refused_before_torch_loads_it(tmp_path: Path) -> None:
    scripted = tmp_path / "small.torchscript"
    torch.jit.save(torch.jit.script(torch.nn.Linear(4, 4)), str(scripted))
    bomb = write_zip_bomb(scripted, tmp_path / "bomb.torchscript", size=2**28)
    with pytest.raises(
        WeightsError, match=r"bomb\.torchscript is 2\d\d\.\d KB but its archive members declare 268\.4 MB"
    ):
        TorchScriptRuntime(bomb, FACTS, "cpu")


# --- image bombs ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bomb_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A json of two readable images and a decompression bomb between them."""
    folder = tmp_path_factory.mktemp("bomb-data")
    Image.new("RGB", (64, 48), (200, 30, 30)).save(folder / "a.png")
    write_image_bomb(folder / "bomb.png")
    Image.new("RGB", (48, 64), (30, 200, 30)).save(folder / "c.png")
    names = [("a.png", 64, 48), ("bomb.png", BOMB_SIDE, BOMB_SIDE), ("c.png", 48, 64)]
    coco = {
        "images": [{"id": i + 1, "file_name": n, "width": w, "height": h} for i, (n, w, h) in enumerate(names)],
        "annotations": [
            {"id": i + 1, "image_id": i + 1, "category_id": 5, "bbox": [4, 4, 20, 20], "area": 400, "iscrowd": 0}
            for i in range(3)
        ],
        "categories": [{"id": 5, "name": "thing"}],
    }
    (folder / "data.json").write_text(json.dumps(coco))
    return folder


def test_the_pixel_limit_is_detlits_and_can_be_moved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    assert MAX_IMAGE_PIXELS == 2 * Image.MAX_IMAGE_PIXELS
    small = write_image_bomb(tmp_path / "small.png", 40, 30)
    monkeypatch.setenv("DETLIT_MAX_IMAGE_PIXELS", "1199")
    with pytest.raises(ImageTooLarge, match=r"small\.png is 40 x 30 pixels, more than the 1,199 pixels detlit"):
        load_image(small)
    monkeypatch.setenv("DETLIT_MAX_IMAGE_PIXELS", "1200")
    assert load_image(small).shape == (30, 40, 3)
    monkeypatch.setenv("DETLIT_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ConfigError, match=r"DETLIT_MAX_IMAGE_PIXELS='lots' is not a whole number of pixels"):
        load_image(small)
    # Raised beyond Pillow's own threshold, the limit raises Pillow's: the header opens (nothing is decoded here).
    bomb = write_image_bomb(tmp_path / "bomb.png")
    monkeypatch.setenv("DETLIT_MAX_IMAGE_PIXELS", str(BOMB_SIDE * BOMB_SIDE))
    with open_image(bomb) as image:
        assert image.size == (BOMB_SIDE, BOMB_SIDE)
    assert Image.MAX_IMAGE_PIXELS == BOMB_SIDE * BOMB_SIDE


def test_check_reports_an_image_bomb_and_training_refuses_it(bomb_dataset: Path) -> None:
    bomb = bomb_dataset / "bomb.png"
    info = inspect_file(bomb, decode=True)
    assert info.too_large and info.error.startswith(f"image {bomb} is 900,000,000 pixels, more than the 178,956")
    headers = read_headers(bomb_dataset, ["a.png", "bomb.png", "c.png"])
    assert headers.too_large == {1} and headers.usable.tolist() == [True, False, True]
    report, _ = check_file(bomb_dataset / "data.json", bomb_dataset)
    [finding] = report.errors
    assert (finding.kind, finding.image_id) == ("image_too_large", 2)
    assert finding.message.startswith(f"image 2: image {bomb} is 900,000,000 pixels")
    assert [r.action for r in finding.repairs] == ["drop"]
    with pytest.raises(DataError, match=r"data\.json: image 2: image .*bomb\.png is 900,000,000 pixels"):
        load_checked(bomb_dataset / "data.json", bomb_dataset)


def test_datasets_treat_an_image_bomb_as_an_unreadable_image(
    bomb_dataset: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from detlit.data.dataset import DetectionDataset
    from detlit.data.transforms import eval_transform

    dataset = load_coco(bomb_dataset / "data.json", bomb_dataset)

    def made(on_unreadable: Any) -> DetectionDataset:
        return DetectionDataset(
            dataset.images, bomb_dataset, dataset.label_map(), eval_transform(64, 64), on_unreadable=on_unreadable
        )

    with caplog.at_level(logging.WARNING):
        assert made("mark")[1] == {"skipped": str(bomb_dataset / "bomb.png"), "image_id": 2}
        replaced = made("replace")[1]
    assert replaced["image_id"] == 3 and replaced["skipped_images"] == [str(bomb_dataset / "bomb.png")]
    assert f"skipping image {bomb_dataset / 'bomb.png'} is 900,000,000 pixels" in caplog.text
    with pytest.raises(DataError, match=r"bomb\.png is 900,000,000 pixels.*, or set data\.strict_images=false"):
        made("raise")[1]


# --- exported metadata ----------------------------------------------------------------------------


def _set(**changes: Any) -> Callable[[dict[str, Any]], None]:
    return lambda facts: facts.update(changes)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set(min_size=60000), r"facts\.min_size is 60000, not a whole number of pixels in 1\.\.4096"),
        (_set(min_size=0), r"facts\.min_size is 0, not a whole"),
        (_set(min_size=-5), r"facts\.min_size is -5, not a whole"),
        (_set(min_size=128.5), r"facts\.min_size is 128\.5, not a whole"),
        (_set(min_size="128"), r"facts\.min_size is '128', not a whole"),
        (_set(max_size=True), r"facts\.max_size is True, not a whole"),
        (_set(max_size=100), r"facts\.max_size 100 is below facts\.min_size 128"),
        (_set(score_floor=float("nan")), r"facts\.score_floor is nan, not a number from 0 to 1"),
        (_set(score_floor=1.5), r"facts\.score_floor is 1\.5, not a number from 0 to 1"),
        (_set(score_thresholds=[0.5, float("inf"), 0.5]), r"facts\.score_thresholds\[1\] is inf, not a number"),
        (_set(score_thresholds=[0.5, -0.1, 0.5]), r"facts\.score_thresholds\[1\] is -0\.1, not a number"),
        (_set(score_thresholds=[0.5]), r"facts\.score_thresholds is \[0\.5\], not a list of 3 thresholds"),
        (_set(detections_per_image=0), r"facts\.detections_per_image is 0, not a whole number of detections in 1"),
        (_set(detections_per_image=10**6), r"facts\.detections_per_image is 1000000, not a whole number"),
        (_set(class_names=[]), r"facts\.class_names is \[\], not a list of class names"),
        (_set(class_names=["a", 2, "c"]), r"facts\.class_names\[1\] is 2, not a string"),
        (_set(category_ids=[1, 1, 7]), r"facts\.category_ids holds 1 more than once"),
        (_set(category_ids=[1, True, 7]), r"facts\.category_ids\[1\] is True, not a 64-bit whole number"),
        (_set(category_ids=[1, 2**63, 7]), r"facts\.category_ids\[1\] is 9223372036854775808, not a 64-bit"),
        (_set(category_ids=[1, 3]), r"facts\.category_ids holds 2 ids for 3 class names"),
        (_set(image_format="RGBA"), r"facts\.image_format is 'RGBA', not one of BGR, RGB"),
        (lambda facts: facts.pop("score_floor"), r"the model fact facts\.score_floor is missing"),
    ],
)
def test_every_model_fact_is_range_checked(change: Callable[[dict[str, Any]], None], message: str) -> None:
    facts = FACTS.as_json()
    change(facts)
    with pytest.raises(WeightsError, match=rf"^m\.onnx\.json: {message}.*; export the model again with python -m"):
        ModelFacts.from_json(facts, "m.onnx.json")


def test_model_facts_read_back_what_they_wrote() -> None:
    assert ModelFacts.from_json(FACTS.as_json(), "m") == FACTS
    assert ModelFacts.from_json({**FACTS.as_json(), "score_thresholds": None}, "m").score_thresholds is None
    with pytest.raises(WeightsError, match=r"^m: 'facts' is a list, not an object"):
        ModelFacts.from_json([], "m")


def _exported(tmp_path: Path, document: Any = None, text: str | None = None) -> Path:
    """``m.onnx`` (a few bytes) and its metadata: ``text``, else ``document``, else what export writes."""
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model bytes")
    if document is None:
        document = ExportedModel.of(b"model bytes", "onnx", model.name, FACTS).to_json()
    metadata_path(model).write_text(text if text is not None else json.dumps(document))
    return model


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (" " * (16 * 2**20 + 1), r"m\.onnx\.json is larger than the 16 MiB the metadata of an exported model may be"),
        (
            "[" * 100_000 + "]" * 100_000,
            r"m\.onnx\.json nests or holds 100000 arrays and objects, more than the limit of 256 \(an export",
        ),
        ('{"kind": ' + "[" * 300 + "]" * 300 + "}", r"nests or holds 301 arrays and objects, more than the limit"),
        ('{"kind": "' + "[" * 300 + '"}', r"is not the metadata of a detlit exported model"),  # brackets in a string
        ("{", r"m\.onnx\.json is not readable JSON \(Expecting property name"),
        ("[1, 2]", r"m\.onnx\.json is not the metadata of a detlit exported model"),
    ],
)
def test_metadata_is_read_within_bounds(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(WeightsError, match=message):
        ExportedModel.read(_exported(tmp_path, text=text))


def test_the_model_and_its_metadata_are_checked_as_a_pair(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = _exported(tmp_path)
    assert ExportedModel.read(model).file_bytes == len(b"model bytes")
    model.write_bytes(b"model bytez")  # same size, another sha256
    with pytest.raises(WeightsError, match=r"m\.onnx is not the model file its metadata .* \(their sha256 differ\)"):
        ExportedModel.read(model)
    model.write_bytes(b"another model")
    with pytest.raises(WeightsError, match="their sha256 differ"):
        ExportedModel.read(model)
    unrecorded = ExportedModel(format="onnx", file=model.name, facts=FACTS).to_json()
    assert "file_sha256" not in unrecorded and unrecorded["version"] == 2
    with pytest.raises(WeightsError, match=r"lacks the model file's sha256 and size \(file_sha256, file_bytes\)"):
        ExportedModel.from_json(unrecorded, metadata_path(model))
    with caplog.at_level(logging.WARNING):
        ExportedModel.from_json({**unrecorded, "version": 1}, metadata_path(model)).check_file(model)
    assert "does not record its model file's sha256 (exported by an earlier detlit)" in caplog.text


def test_a_label_beyond_the_class_names_is_one_sentence() -> None:
    def raw(*labels: int) -> Detections:
        return Detections(torch.zeros(len(labels), 4), torch.full((len(labels),), 0.9), torch.tensor(labels))

    assert checked_labels(raw(0, 2, 1), FACTS, Path("m.onnx")).labels.tolist() == [0, 2, 1]
    assert checked_labels(raw(), FACTS, Path("m.onnx")).labels.numel() == 0
    with pytest.raises(WeightsError, match=r"^m\.onnx predicted class label 3, but its metadata names 3 classes"):
        checked_labels(raw(0, 3), FACTS, Path("m.onnx"))
    with pytest.raises(WeightsError, match=r"predicted class label -1, .*\(labels 0\.\.2\)"):
        checked_labels(raw(-1, 1), FACTS, Path("m.onnx"))


# --- exported models: the pair on disk ------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two checkpoints of the tiny model of one name (their exports have one name) and different weights."""
    folder = tmp_path_factory.mktemp("pair")
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1)
    trainer.fit(tiny_module(), datamodule=tiny_datamodule(sample_dir))
    first, second = folder / "a" / "tiny.ckpt", folder / "b" / "tiny.ckpt"
    trainer.save_checkpoint(first)
    checkpoint = torch.load(first, map_location="cpu", weights_only=True)
    checkpoint["state_dict"] = {
        k: v + 0.001 if v.is_floating_point() else v for k, v in checkpoint["state_dict"].items()
    }
    second.parent.mkdir()
    torch.save(checkpoint, second)
    return first, second


@pytest.fixture(scope="module")
def exported(checkpoints: tuple[Path, Path]) -> dict[str, Path]:
    """The first checkpoint exported in both formats, beside it."""
    from detlit.deploy.export import export

    return {kind: export(checkpoints[0], kind) for kind in ("onnx", "torchscript")}  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["onnx", "torchscript"])
def test_exported_metadata_names_the_model_file_and_its_classes(
    kind: str, exported: dict[str, Path], tmp_path: Path
) -> None:
    from detlit.inference.predictor import Predictor

    model = exported[kind]
    meta = json.loads(metadata_path(model).read_text())
    assert (meta["version"], meta["file_sha256"], meta["file_bytes"]) == (2, sha256_file(model), model.stat().st_size)
    assert Predictor.load(model).class_names == ["circle", "square", "triangle"]
    # Fewer class names than the model's classifier has: each format tells its number of classes.
    crafted = write_metadata_variants(model, tmp_path)
    with pytest.raises(WeightsError, match=r"names 2 classes, but the model .* has 3 \(its box classifier has 4"):
        Predictor.load(crafted["fewer-classes"])
    with pytest.raises(WeightsError, match=r"their sha256 differ"):
        Predictor.load(crafted["other-export"])


@pytest.mark.slow
def test_an_interrupted_overwrite_never_leaves_a_pair_that_loads(
    checkpoints: tuple[Path, Path], exported: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An export --overwrite interrupted at either rename leaves the old pair, or the new model beside
    the old metadata, which is refused."""
    from detlit.deploy.export import export
    from detlit.inference.predictor import Predictor

    model = tmp_path / exported["onnx"].name
    model.write_bytes(exported["onnx"].read_bytes())
    metadata_path(model).write_bytes(metadata_path(exported["onnx"]).read_bytes())
    old = model.read_bytes(), metadata_path(model).read_bytes()
    replace = os.replace

    def interrupted(at: Path) -> Callable[[Any, Any], None]:
        def rename(source: Any, target: Any) -> None:
            if Path(target) == at:
                raise KeyboardInterrupt
            replace(source, target)

        return rename

    for at in (model, metadata_path(model)):
        monkeypatch.setattr(os, "replace", interrupted(at))
        with pytest.raises(KeyboardInterrupt):
            export(checkpoints[1], "onnx", out=tmp_path, overwrite=True)
        monkeypatch.setattr(os, "replace", replace)
        assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")], "no temporary file is left"
        assert metadata_path(model).read_bytes() == old[1]
        if at == model:
            assert model.read_bytes() == old[0], "the old pair, untouched"
            Predictor.load(model)
    assert model.read_bytes() != old[0], "the new model is in place, beside the old metadata"
    with pytest.raises(WeightsError, match=r"is not the model file its metadata .* was written with \(their sha256"):
        Predictor.load(model)
