"""The corpus of bad inputs: every mistake a user can make, and every file crafted to attack
detlit, ends in one sentence, a non-zero exit status and no traceback; no input file changes and
no crafted file runs code (no marker file appears).

Each case names a mistake (``what``, listed in docs/errors.md with the answer), the command, its
arguments in a prepared workspace, the sentence expected (a regular expression) and the exit
status (:mod:`tests.corpus`). The general cases are listed here; the areas of the security and
reliability work (``tests/corpus_*.py``) add theirs and the files they need. Commands run in this
process (their ``main``), so the corpus stays fast.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from detlit.data.sample import write_sample

from . import corpus_formats, corpus_options, corpus_outputs, corpus_resources, corpus_service, corpus_untrusted
from .conftest import REPO, quiet_trainer, tiny_datamodule, tiny_module
from .corpus import Case, Workspace, args, fit

AREAS = (corpus_untrusted, corpus_resources, corpus_outputs, corpus_options, corpus_service, corpus_formats)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    root = tmp_path_factory.mktemp("corpus")
    sample = root / "sample"
    write_sample(sample, train=8, val=4, seed=3)
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    sgd = tiny_module(optimizer=lambda params: torch.optim.SGD(params, lr=0.02, momentum=0.9))  # as sample_cpu.yaml
    trainer.fit(sgd, datamodule=tiny_datamodule(sample))
    finished = root / "finished.ckpt"
    trainer.save_checkpoint(finished)
    checkpoint = torch.load(finished, map_location="cpu", weights_only=True)
    # the same weights, half-way through epoch 0 of a run of 2 epochs
    checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] = 0
    ckpt = root / "model.ckpt"
    torch.save(checkpoint, ckpt)
    other = dict(checkpoint)
    other["hyper_parameters"] = {**checkpoint["hyper_parameters"], "class_names": ["a", "b"], "category_ids": [1, 2]}
    other["hyper_parameters"]["num_classes"] = 2
    torch.save(other, root / "other-classes.ckpt")
    data = ckpt.read_bytes()
    (root / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    zeroed = bytearray(data)
    zeroed[len(data) // 2 : len(data) // 2 + 100_000] = bytes(100_000)
    (root / "zeroed.ckpt").write_bytes(bytes(zeroed))
    (root / "text.ckpt").write_text("not a checkpoint\n")
    (root / "folder.ckpt").mkdir()
    (root / "not.json").write_text('{"images": [')
    (root / "list.json").write_text("[1, 2]")
    (root / "empty.json").write_text("")
    (root / "no-coco.json").write_text('{"foo": 1}')
    (root / "binary.json").write_bytes(bytes(range(256)) * 4)
    (root / "some-folder").mkdir()
    (root / "a-file").write_text("a file, not a folder\n")
    runs = root / "runs"
    existing = runs / "sample" / "version_0"
    existing.mkdir(parents=True)
    (existing / "config.yaml").write_text("# another run\n")
    train = json.loads((sample / "train.json").read_text())
    one = {**train, "images": train["images"][:1]}
    one["annotations"] = [a for a in train["annotations"] if a["image_id"] == one["images"][0]["id"]]
    (root / "one-image.json").write_text(json.dumps(one))
    unknown = json.loads((sample / "val.json").read_text())
    unknown["categories"].append({"id": 99, "name": "unknown"})
    unknown["annotations"][0]["category_id"] = 99
    (root / "val-unknown-category.json").write_text(json.dumps(unknown))
    results = [{"image_id": 1, "category_id": 1, "bbox": [1.0, 2.0, 3.0, 4.0], "score": float("nan")}]
    (root / "nan-results.json").write_text(json.dumps(results))
    (root / "dict-results.json").write_text('{"a": 1}')
    (root / "unknown-image-results.json").write_text(
        json.dumps([{"image_id": 12345, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}])
    )
    (root / "no-images.json").write_text(json.dumps({**unknown, "images": [], "annotations": []}))
    huge = json.loads((sample / "val.json").read_text())
    first = huge["images"][0]["id"]
    huge["images"][0]["id"] = 2**63 + 5
    for annotation in huge["annotations"]:
        if annotation["image_id"] == first:
            annotation["image_id"] = 2**63 + 5
    (root / "huge-ids.json").write_text(json.dumps(huge))
    (root / "search.yaml").write_text("params:\n  model.warmup_steps: {type: int, low: 1, high: 5}\n")
    (root / "bad-search.yaml").write_text("params: [\n")
    (root / "unrelated.pth").write_bytes(b"")
    torch.save(
        {"model": {"some.layer.weight": torch.zeros(3, 3), "other.bias": torch.zeros(3)}}, root / "unrelated.pth"
    )
    (root / "alone.onnx").write_bytes(b"an exported model without its metadata json")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        made = Workspace(root, sample, ckpt, finished, runs, listener.getsockname()[1])
        for area in AREAS:
            area.prepare(made)
        yield made


CASES = [
    # --- check ----------------------------------------------------------------------------------
    Case("json file missing", "check", args("{root}/missing.json", "--images", "{sample}/train"), "does not exist"),
    Case("json path is a folder", "check", args("{root}/some-folder", "--images", "{sample}/train"), "is a folder"),
    Case("json is not valid JSON", "check", args("{root}/not.json", "--images", "{sample}/train"), "not valid JSON"),
    Case("json top level is a list", "check", args("{root}/list.json", "--images", "{sample}/train"), "top level"),
    Case("json is empty", "check", args("{root}/empty.json", "--images", "{sample}/train"), "the file is empty"),
    Case("json is not COCO", "check", args("{root}/no-coco.json", "--images", "{sample}/train"), "not a COCO"),
    Case("json is binary", "check", args("{root}/binary.json", "--images", "{sample}/train"), "not a text file"),
    Case(
        "report written over the json",
        "check",
        args("{sample}/train.json", "--images", "{sample}/train", "--report", "{sample}/train.json", "--overwrite"),
        "which is an input of this command",
    ),
    Case(
        "repaired copy written over the json",
        "check",
        args("{sample}/train.json", "--images", "{sample}/train", "--fix", "{sample}/train.json", "--overwrite"),
        "which is an input of this command",
    ),
    Case(
        "repaired copy over an existing file",
        "check",
        args("{sample}/train.json", "--images", "{sample}/train", "--fix", "{root}/search.yaml"),
        "already exists",
    ),
    # --- split ----------------------------------------------------------------------------------
    Case(
        "split written over its input",
        "split",
        args("{sample}/train.json", "--images", "{sample}/train", "--out", "{sample}", "--overwrite"),
        "which is an input of this command",
    ),
    Case(
        "split without a validation image",
        "split",
        args("{root}/one-image.json", "--images", "{sample}/train", "--out", "{root}/split-one"),
        "validation",
    ),
    Case(
        "split fraction out of range",
        "split",
        args("{sample}/train.json", "--images", "{sample}/train", "--out", "{root}/s", "--val-fraction", "1.5"),
        "--val-fraction",
    ),
    Case(
        "split with fewer image folders than jsons",
        "split",
        args("{sample}/train.json", "{sample}/val.json", "--images", "{sample}/train", "--out", "{root}/s2"),
        "give one folder per json",
    ),
    # --- fit ------------------------------------------------------------------------------------
    Case("train json missing", "fit", fit("--data.train_json={root}/missing.json"), "does not exist"),
    Case("train json is a folder", "fit", fit("--data.train_json={root}/some-folder"), "is a folder"),
    Case("train json is not JSON", "fit", fit("--data.train_json={root}/not.json"), "not valid JSON"),
    Case("image folder without the images", "fit", fit("--data.train_images={root}/some-folder"), "none of the"),
    Case(
        "unknown detectron2 key", "fit", fit("--model.overrides.MODEL.NO_SUCH_KEY=1"), "unknown detectron2 config key"
    ),
    Case("unknown augmentation preset", "fit", fit("--data.augment=stronk"), "unknown augmentation preset"),
    Case(
        "augmentation list with an unknown transform",
        "fit",
        fit('--data.augment=[{{"class_path": "albumentations.NoSuchFlip"}}]'),
        "albumentations.NoSuchFlip does not exist",
    ),
    Case("validation json without images", "fit", fit("--data.val_json={root}/no-images.json"), "holds no image"),
    Case("batch size 0", "fit", fit("--data.batch_size=0"), "data.batch_size"),
    Case("negative batch size", "fit", fit("--data.batch_size=-2"), "data.batch_size"),
    Case("negative worker count", "fit", fit("--data.num_workers=-1"), "data.num_workers"),
    Case("image size 0", "fit", fit("--data.min_size_train=[0]"), "data.min_size_train"),
    Case("negative image size", "fit", fit("--data.min_size_train=[-5]"), "data.min_size_train"),
    Case("longest edge 0", "fit", fit("--data.max_size_train=0"), "data.max_size_train"),
    Case("checkpoint truncated", "fit", fit("--ckpt={root}/truncated.ckpt"), "not a whole checkpoint"),
    Case("checkpoint is a text file", "fit", fit("--ckpt={root}/text.ckpt"), "not a whole checkpoint"),
    Case("checkpoint damaged inside", "fit", fit("--ckpt={root}/zeroed.ckpt"), "is damaged"),
    Case("checkpoint of other classes", "fit", fit("--ckpt={root}/other-classes.ckpt"), "was trained on classes"),
    Case(
        "checkpoint of a finished run",
        "fit",
        fit("--ckpt={root}/finished.ckpt", "--trainer.max_epochs=1", "--trainer.max_steps=-1"),
        "already finished its run",
    ),
    Case(
        "checkpoint of another optimizer",
        "fit",
        fit("--ckpt={ckpt}", "--trainer.max_steps=9", "--model.optimizer=torch.optim.AdamW"),
        "was trained with another optimizer than AdamW",
    ),
    Case(
        "checkpoint of other trainable parameters",
        "fit",
        fit("--ckpt={ckpt}", "--trainer.max_steps=9", "--model.freeze_at=2"),
        "optimizer state for parameter groups",
    ),
    Case("checkpoint is a folder", "fit", fit("--ckpt={root}/folder.ckpt"), "is a folder"),
    Case("checkpoint missing", "fit", fit("--ckpt={root}/missing.ckpt"), "does not exist"),
    Case(
        "last checkpoint without runs", "fit", fit("--ckpt=last", "--trainer.logger.init_args.name=none"), "no .*last"
    ),
    Case(
        "run folder of another run",
        "fit",
        fit("--trainer.logger.init_args.version=0"),
        "already holds a run",
    ),
    Case(
        "run folder under a file",
        "fit",
        fit("--trainer.logger.init_args.save_dir={root}/a-file/runs"),
        "cannot write the run folder",
    ),
    Case("weights file missing", "fit", fit("--model.weights={root}/missing.pkl"), "does not exist"),
    Case("weights of another architecture", "fit", fit("--model.weights={root}/unrelated.pth"), "fits this model"),
    Case("weights that are not a checkpoint", "fit", fit("--model.weights={root}/text.ckpt"), "not a whole"),
    Case(
        "validation category unknown to training",
        "fit",
        fit("--data.val_json={root}/val-unknown-category.json"),
        "does not define",
    ),
    Case("validate without a checkpoint", "fit", lambda w: ["validate", *w.fit_args()], "needs a checkpoint"),
    Case(
        "test without a test set",
        "fit",
        lambda w: ["test", *w.fit_args(f"--ckpt={w.ckpt}")],
        "needs a test set",
    ),
    # --- evaluate -------------------------------------------------------------------------------
    Case(
        "IoU threshold above 1",
        "evaluate",
        args("--results", "{root}/nan-results.json", "--json", "{sample}/val.json", "--iou-threshold", "2"),
        "--iou-threshold",
    ),
    Case(
        "evaluation folder is a file",
        "evaluate",
        args("--results", "{root}/nan-results.json", "--json", "{sample}/val.json", "--out", "{root}/a-file"),
        "is a file",
    ),
    Case(
        "results with a NaN score",
        "evaluate",
        args("--results", "{root}/nan-results.json", "--json", "{sample}/val.json", "--out", "{root}/e1"),
        "finite numbers",
    ),
    Case(
        "results that are not a list",
        "evaluate",
        args("--results", "{root}/dict-results.json", "--json", "{sample}/val.json", "--out", "{root}/e2"),
        "not a list of results",
    ),
    Case(
        "results of unknown images",
        "evaluate",
        args("--results", "{root}/unknown-image-results.json", "--json", "{sample}/val.json", "--out", "{root}/e3"),
        "not in the ground truth",
    ),
    Case(
        "evaluate a missing checkpoint",
        "evaluate",
        args("--ckpt", "{root}/missing.ckpt", "--json", "{sample}/val.json", "--images", "{sample}/val"),
        "does not exist",
    ),
    Case(
        "evaluate a text file as a checkpoint",
        "evaluate",
        args("--ckpt", "{root}/text.ckpt", "--json", "{sample}/val.json", "--images", "{sample}/val"),
        "not a whole checkpoint",
    ),
    Case(
        "evaluate a model without the images",
        "evaluate",
        args("--ckpt", "{ckpt}", "--json", "{sample}/val.json"),
        "give --images",
    ),
    Case(
        "image ids beyond 64 bits",
        "evaluate",
        args("--ckpt", "{ckpt}", "--json", "{root}/huge-ids.json", "--images", "{sample}/val", "--out", "{root}/e4"),
        "beyond the 64-bit integers",
    ),
    # --- predict --------------------------------------------------------------------------------
    Case("predict with nothing to read", "predict", args("--ckpt", "{ckpt}", "{root}/some-folder"), "no images found"),
    Case(
        "predict into the input folder",
        "predict",
        args("--ckpt", "{ckpt}", "{sample}/val", "--out", "{sample}/val"),
        "holds the input folder",
    ),
    Case("predict a missing input", "predict", args("--ckpt", "{ckpt}", "{root}/missing-folder"), "does not exist"),
    Case(
        "predict with a missing checkpoint",
        "predict",
        args("--ckpt", "{root}/missing.ckpt", "{sample}/val"),
        "does not exist",
    ),
    Case(
        "predict with a damaged checkpoint",
        "predict",
        args("--ckpt", "{root}/zeroed.ckpt", "{sample}/val", "--out", "{root}/p1"),
        "is damaged",
    ),
    Case(
        "score threshold above 1",
        "predict",
        args("--ckpt", "{ckpt}", "{sample}/val", "--score-threshold", "1.5"),
        "1.5",
    ),
    Case("batch size 0 for prediction", "predict", args("--ckpt", "{ckpt}", "{sample}/val", "--batch-size", "0"), "0"),
    # --- export, serve -------------------------------------------------------------------------
    Case(
        "export a missing checkpoint", "export", args("--ckpt", "{root}/missing.ckpt", "--format", "onnx"), "not exist"
    ),
    Case("export a damaged checkpoint", "export", args("--ckpt", "{root}/zeroed.ckpt", "--format", "onnx"), "damaged"),
    Case("export a text file", "export", args("--ckpt", "{root}/text.ckpt", "--format", "torchscript"), "not a whole"),
    Case("export to an unknown format", "export", args("--ckpt", "{ckpt}", "--format", "tflite"), "invalid choice"),
    Case(
        "export with parity images that are a file",
        "export",
        args("--ckpt", "{ckpt}", "--format", "onnx", "--images", "{root}/a-file", "--out", "{root}/x1"),
        "is not a folder",
    ),
    Case("serve a missing model", "serve", args("--model", "{root}/none.onnx"), "does not exist"),
    Case("serve a damaged checkpoint", "serve", args("--ckpt", "{root}/zeroed.ckpt", "--port", "18765"), "damaged"),
    Case("serve a model without its metadata", "serve", args("--model", "{root}/alone.onnx"), "alone.onnx.json"),
    Case("serve both a checkpoint and a model", "serve", args("--ckpt", "{ckpt}", "--model", "x.onnx"), "not allowed"),
    Case("serve on a port below 1024", "serve", args("--ckpt", "{ckpt}", "--port", "80"), "outside 1024..65535"),
    Case("serve on a port that is taken", "serve", args("--ckpt", "{ckpt}", "--port", "{port}"), "is taken"),
    Case("serve on an address of another machine", "serve", args("--ckpt", "{ckpt}", "--host", "10.9.8.7"), "--host"),
    # --- report, browse, tune, sample -----------------------------------------------------------
    Case("report of a folder that is no run", "report", args("--run", "{root}/some-folder"), "not a detlit run"),
    Case("report of a missing folder", "report", args("--run", "{root}/missing-run"), "is not a folder"),
    Case("browse into a file", "browse", args("--config", "x.yaml", "--out", "{root}/a-file"), "is a file"),
    Case("browse without a config", "browse", args("--n", "2"), "--config is missing"),
    Case("browse with a tiny grid cell", "browse", args("--config", "x.yaml", "--cell", "3"), "too small"),
    Case("tune with no trials", "tune", args("--config", "x", "--search", "{root}/search.yaml", "--trials", "0"), "0"),
    Case(
        "tune search space missing",
        "tune",
        args("--config", "{root}/search.yaml", "--search", "{root}/missing.yaml", "--trials", "1"),
        "does not exist",
    ),
    Case(
        "tune search space not YAML",
        "tune",
        args("--config", "{root}/search.yaml", "--search", "{root}/bad-search.yaml", "--trials", "1"),
        "not valid YAML",
    ),
    Case("sample over an existing one", "sample", args("--out", "{sample}"), "already exists"),
]
CASES += [case for area in AREAS for case in area.CASES]


def _files(argv: list[str]) -> dict[Path, str]:
    """sha256 of every file an argument names (a folder: the files in it)."""
    found: dict[Path, str] = {}
    for arg in argv:
        value = arg.split("=", 1)[-1]
        path = Path(value)
        if not value or value.startswith(("{", "[")) or not path.exists():  # JSON values name no file
            continue
        for file in [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]:
            found[file] = hashlib.sha256(file.read_bytes()).hexdigest()
    return found


def _run(command: str, argv: list[str]) -> int:
    module = importlib.import_module(f"detlit.{command}")
    with pytest.raises(SystemExit) as stopped:
        module.main(argv)
    return int(stopped.value.code or 0)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.command}: {c.what}" for c in CASES])
def test_every_mistake_is_one_sentence(case: Case, workspace: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    argv = case.argv(workspace)
    before = _files(argv)
    status = _run(case.command, argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    assert status == case.status, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith(("error: ", "usage: ")) or ": error: " in line]
    sentence = [line for line in errors if not line.startswith("usage: ")]
    assert len(sentence) == 1, err[-3000:]
    assert re.search(case.expect, sentence[0]), sentence[0]
    assert _files(argv) == before, "an input file changed"
    assert not workspace.marker.exists(), "a crafted file ran code"


def test_the_corpus_is_large_and_documented() -> None:
    text = (REPO / "docs" / "errors.md").read_text()
    assert len(CASES) >= 60
    assert len({c.what for c in CASES}) == len(CASES)
    for case in CASES:
        assert f"| `{case.command}` | {case.what} |" in text, f"docs/errors.md does not list: {case.what}"


def test_a_failed_start_leaves_no_run_folder(workspace: Workspace, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    argv = [*workspace.fit_args("--model.weights=" + str(workspace.root / "missing.pkl"))]
    argv = [a for a in argv if not a.startswith("--trainer.logger.init_args.save_dir")]
    status = _run("fit", [*argv, f"--trainer.logger.init_args.save_dir={runs}"])
    assert status == 2
    assert not list(runs.glob("*/version_*")), "a run folder was left behind"
    shutil.rmtree(runs, ignore_errors=True)
