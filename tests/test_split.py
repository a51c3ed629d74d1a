"""``python -m detlit.split``: seeded, stratified, exact, leak-free, group-preserving."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from detlit.check import main as check_cli
from detlit.data.sample import write_sample
from detlit.split import main as split_cli

from .conftest import REPO, tiny_cli_args


def _split(args: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        split_cli([*args, "--quiet"])
    assert info.value.code == 0


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 synthetic images (some without objects) under shapes/train."""
    root = tmp_path_factory.mktemp("shapes")
    write_sample(root, train=60, val=1, seed=3)
    return root


def _shares(coco: dict[str, Any]) -> dict[int, float]:
    total = len(coco["annotations"])
    ids = sorted({c["id"] for c in coco["categories"]})
    return {cid: sum(a["category_id"] == cid for a in coco["annotations"]) / total for cid in ids}


def test_same_seed_same_bytes_other_seed_other_split(shapes: Path, tmp_path: Path) -> None:
    for out, seed in (("a", 0), ("b", 0), ("c", 1)):
        _split(
            [
                str(shapes / "train.json"),
                "--images",
                str(shapes / "train"),
                "--out",
                str(tmp_path / out),
                "--seed",
                str(seed),
            ]
        )
    for name in ("train.json", "val.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "val.json").read_bytes() != (tmp_path / "c" / "val.json").read_bytes()


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.35])
def test_exact_fraction_and_everything_kept(shapes: Path, tmp_path: Path, fraction: float) -> None:
    _split(
        [
            str(shapes / "train.json"),
            "--images",
            str(shapes / "train"),
            "--out",
            str(tmp_path),
            "--val-fraction",
            str(fraction),
        ]
    )
    source, train, val = _load(shapes / "train.json"), _load(tmp_path / "train.json"), _load(tmp_path / "val.json")
    assert abs(len(val["images"]) - round(fraction * 60)) <= 1
    assert len(train["images"]) + len(val["images"]) == 60
    train_ids = {i["id"] for i in train["images"]}
    val_ids = {i["id"] for i in val["images"]}
    assert not train_ids & val_ids
    # every original record, id and field survives, on the side of its image
    originals = {a["id"]: a for a in source["annotations"]}
    for part, ids in ((train, train_ids), (val, val_ids)):
        assert part["categories"] == source["categories"] and part["info"] == source["info"]
        for a in part["annotations"]:
            assert a == originals[a["id"]] and a["image_id"] in ids
    assert len(train["annotations"]) + len(val["annotations"]) == len(source["annotations"])
    # empty images in proportion
    empty = {i["id"] for i in source["images"]} - {a["image_id"] for a in source["annotations"]}
    assert empty and abs(len(empty & val_ids) - fraction * len(empty)) <= 1.5


def test_content_duplicates_never_leak(shapes: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    shutil.copytree(shapes / "train", images)
    coco = _load(shapes / "train.json")
    names = [i["file_name"] for i in coco["images"]]
    for k in range(0, 30, 3):  # ten pairs of identical files
        shutil.copy(images / names[k], images / names[k + 1])
    (tmp_path / "dup.json").write_text(json.dumps(coco))
    for seed in range(3):
        out = tmp_path / f"out{seed}"
        _split(
            [
                str(tmp_path / "dup.json"),
                "--images",
                str(images),
                "--out",
                str(out),
                "--seed",
                str(seed),
                "--val-fraction",
                "0.3",
            ]
        )
        val_names = {i["file_name"] for i in _load(out / "val.json")["images"]}
        for k in range(0, 30, 3):
            assert (names[k] in val_names) == (names[k + 1] in val_names)


def test_groups_stay_together(shapes: Path, tmp_path: Path) -> None:
    coco = _load(shapes / "train.json")
    for index, image in enumerate(coco["images"]):
        image["video_id"] = index // 4
    (tmp_path / "videos.json").write_text(json.dumps(coco))
    _split(
        [
            str(tmp_path / "videos.json"),
            "--images",
            str(shapes / "train"),
            "--out",
            str(tmp_path / "out"),
            "--group-by",
            "video_id",
            "--val-fraction",
            "0.2",
        ]
    )
    val_videos = {i["video_id"] for i in _load(tmp_path / "out" / "val.json")["images"]}
    train_videos = {i["video_id"] for i in _load(tmp_path / "out" / "train.json")["images"]}
    assert val_videos and not val_videos & train_videos
    assert len(_load(tmp_path / "out" / "val.json")["images"]) == 12  # 3 whole videos of 4


def test_existing_outputs_are_not_overwritten(shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "train.json").write_text("mine")
    with pytest.raises(SystemExit) as info:
        split_cli([str(shapes / "train.json"), "--images", str(shapes / "train"), "--out", str(tmp_path)])
    assert info.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "train.json").read_text() == "mine"


def _rbc_split(rbc_dir: Path, out: Path) -> None:
    _split(
        [
            str(rbc_dir / "train" / "_annotations.coco.json"),
            str(rbc_dir / "valid" / "_annotations.coco.json"),
            "--images",
            str(rbc_dir / "train"),
            str(rbc_dir / "valid"),
            "--out",
            str(out),
            "--group-pattern",
            r"(.+)\.rf\.",
        ]
    )


def test_rbc_split_is_stratified_and_keeps_source_images_together(rbc_dir: Path, tmp_path: Path) -> None:
    _rbc_split(rbc_dir, tmp_path)
    train, val = _load(tmp_path / "train.json"), _load(tmp_path / "val.json")
    assert abs(len(val["images"]) - 23) <= 1
    train_shares, val_shares = _shares(train), _shares(val)
    for cid in (1, 2):
        assert abs(val_shares[cid] - train_shares[cid]) <= 0.03, (cid, train_shares, val_shares)
    # Roboflow writes 3 augmented copies of each source image: they must not straddle the split
    prefix = {i["file_name"].split(".rf.")[0] for i in val["images"]}
    assert not prefix & {i["file_name"].split(".rf.")[0] for i in train["images"]}
    # ids of the second file were shifted past the first file's, never duplicated
    ids = [i["id"] for i in train["images"] + val["images"]]
    assert len(ids) == len(set(ids)) == 230


@pytest.mark.cli
def test_rbc_split_passes_check_and_trains(rbc_dir: Path, tmp_path: Path) -> None:
    _rbc_split(rbc_dir, tmp_path)
    root = rbc_dir.resolve()
    for name in ("train.json", "val.json"):
        with pytest.raises(SystemExit) as info:
            check_cli([str(tmp_path / name), "--images", str(root), "--quiet"])
        assert info.value.code == 0
    args = [
        *tiny_cli_args(tmp_path),
        f"--data.train_json={tmp_path / 'train.json'}",
        f"--data.train_images={root}",
        f"--data.val_json={tmp_path / 'val.json'}",
        f"--data.val_images={root}",
        "--trainer.fast_dev_run=1",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "detlit.fit", f"--config={REPO / 'configs' / 'sample_cpu.yaml'}", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1->0 (rbc), 2->1 (wbc)" in result.stderr
