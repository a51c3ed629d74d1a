"""``python -m detlit.split --folds K``: K train/val pairs with split's guarantees."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from detlit.check import main as check_cli
from detlit.data.sample import write_sample
from detlit.data.split import check_pair, split_marker
from detlit.split import main as split_cli


def _split(args: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        split_cli([*args, "--quiet"])
    assert info.value.code == 0


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """62 synthetic images (some without objects) under shapes/train."""
    root = tmp_path_factory.mktemp("shapes")
    write_sample(root, train=62, val=1, seed=3)
    return root


def _folds(shapes: Path, out: Path, k: int, *extra: str, json_path: Path | None = None) -> list[tuple[dict, dict]]:
    source = json_path or shapes / "train.json"
    _split([str(source), "--images", str(shapes / "train"), "--out", str(out), "--folds", str(k), *extra])
    return [(_load(out / f"fold_{i}" / "train.json"), _load(out / f"fold_{i}" / "val.json")) for i in range(1, k + 1)]


def test_every_image_in_exactly_one_val_fold_of_equal_size(shapes: Path, tmp_path: Path) -> None:
    source = _load(shapes / "train.json")
    all_ids = {i["id"] for i in source["images"]}
    folds = _folds(shapes, tmp_path / "f", 5)
    val_ids = [{i["id"] for i in val["images"]} for _, val in folds]
    assert Counter(i for ids in val_ids for i in ids) == Counter(all_ids)  # each image once
    assert sorted(len(ids) for ids in val_ids) == [12, 12, 12, 13, 13]  # 62 images
    for (train, val), ids in zip(folds, val_ids, strict=True):
        train_ids = {i["id"] for i in train["images"]}
        assert train_ids == all_ids - ids
        # annotations follow their images, none lost, none doubled
        assert len(train["annotations"]) + len(val["annotations"]) == len(source["annotations"])
        assert {a["image_id"] for a in val["annotations"]} <= ids
    # stratified: each fold's val holds about a fifth of each category's objects
    for cid in {c["id"] for c in source["categories"]}:
        total = sum(a["category_id"] == cid for a in source["annotations"])
        for _, val in folds:
            share = sum(a["category_id"] == cid for a in val["annotations"]) / total
            assert abs(share - 0.2) < 0.06, (cid, share)


def test_folds_are_seeded_and_marked_as_pairs(shapes: Path, tmp_path: Path) -> None:
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        _folds(shapes, tmp_path / name, 3, "--seed", seed)
    files = [f"fold_{i}/{part}.json" for i in (1, 2, 3) for part in ("train", "val")]
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert (tmp_path / "a" / "fold_1/val.json").read_bytes() != (tmp_path / "c" / "fold_1/val.json").read_bytes()
    markers = [split_marker(tmp_path / "a" / f) for f in files]
    assert all(m is not None for m in markers)
    ids = [m["id"] for m in markers if m is not None]
    assert ids[0] == ids[1] and ids[2] == ids[3] and ids[0] != ids[2]  # one pair per fold
    check_pair(tmp_path / "a/fold_2/train.json", tmp_path / "a/fold_2/val.json")


def test_groups_and_duplicates_stay_in_one_fold(shapes: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    shutil.copytree(shapes / "train", images)
    coco = _load(shapes / "train.json")
    names = [i["file_name"] for i in coco["images"]]
    for k in range(0, 12, 2):  # six pairs of identical files
        shutil.copy(images / names[k], images / names[k + 1])
    for index, image in enumerate(coco["images"]):
        image["video_id"] = 100 + index // 5 if index >= 20 else None
    (tmp_path / "grouped.json").write_text(json.dumps(coco))
    grouped = [str(tmp_path / "grouped.json"), "--images", str(images), "--out", str(tmp_path / "f")]
    _split([*grouped, "--folds", "4", "--group-by", "video_id"])
    fold_of = {}
    for k in range(1, 5):
        for image in _load(tmp_path / "f" / f"fold_{k}" / "val.json")["images"]:
            fold_of[image["file_name"]] = k
            assert fold_of.setdefault(("video", image["video_id"]), k) == k or image["video_id"] is None
    for k in range(0, 12, 2):
        assert fold_of[names[k]] == fold_of[names[k + 1]]


def test_each_fold_passes_check(shapes: Path, tmp_path: Path) -> None:
    _folds(shapes, tmp_path / "f", 2)
    for part in ("train", "val"):
        with pytest.raises(SystemExit) as info:
            check_cli([str(tmp_path / "f/fold_2" / f"{part}.json"), "--images", str(shapes / "train"), "--quiet"])
        assert info.value.code == 0


def test_bad_fold_counts_are_one_sentence(shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = [str(shapes / "train.json"), "--images", str(shapes / "train"), "--out", str(tmp_path / "f")]
    for extra, words in (
        (["--folds", "1"], "too few to cross-validate"),
        (["--folds", "101"], "above 100"),
        (["--folds", "63"], "63 folds need at least 63 images"),
        (["--folds", "3", "--val-fraction", "0.2"], "leave out --val-fraction"),
    ):
        with pytest.raises(SystemExit) as info:
            split_cli([*base, *extra])
        err = capsys.readouterr().err
        assert info.value.code == 2 and words in err, err
        assert err.count("\n") == 1 or "usage" in err
    assert not (tmp_path / "f").exists() or not any((tmp_path / "f").rglob("*.json"))


def test_existing_folds_are_not_overwritten(shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "fold_2").mkdir()
    (tmp_path / "fold_2" / "val.json").write_text("mine")
    with pytest.raises(SystemExit) as info:
        split_cli(
            [str(shapes / "train.json"), "--images", str(shapes / "train"), "--out", str(tmp_path), "--folds", "2"]
        )
    assert info.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "fold_2" / "val.json").read_text() == "mine"
    assert not (tmp_path / "fold_1").exists()


def test_rbc_folds_keep_source_images_together(rbc_dir: Path, tmp_path: Path) -> None:
    """The real data: Roboflow's augmented copies of one photo (``NAME.rf.HASH``) never in two folds."""
    _split(
        [
            str(rbc_dir / "train" / "_annotations.coco.json"),
            str(rbc_dir / "valid" / "_annotations.coco.json"),
            "--images",
            str(rbc_dir / "train"),
            str(rbc_dir / "valid"),
            "--out",
            str(tmp_path),
            "--folds",
            "5",
            "--group-pattern",
            r"(.+)\.rf\.",
        ]
    )
    fold_of: dict[str, int] = {}
    sizes, objects = [], []
    for k in range(1, 6):
        val = _load(tmp_path / f"fold_{k}" / "val.json")
        sizes.append(len(val["images"]))
        objects.append(len(val["annotations"]))
        for image in val["images"]:
            source = image["file_name"].split(".rf.")[0]
            assert fold_of.setdefault(source, k) == k
    assert max(sizes) - min(sizes) <= 2  # groups of augmented copies may keep folds one image apart
    assert max(objects) / min(objects) < 1.25, objects


def test_tables_are_not_cut_when_output_is_a_pipe(shapes: Path, tmp_path: Path) -> None:
    """Piped (``split ... | tee``), a table keeps every class name whole, as wide as its content."""
    import subprocess
    import sys

    coco = _load(shapes / "train.json")
    for category in coco["categories"]:
        category["name"] = f"{category['name']} with a name far longer than eighty columns allow in a table cell"
    (tmp_path / "long.json").write_text(json.dumps(coco))
    args = [str(tmp_path / "long.json"), "--images", str(shapes / "train"), "--out", str(tmp_path / "f")]
    for extra in ([], ["--folds", "3"]):
        out = tmp_path / "f" if not extra else tmp_path / "g"
        args[-1] = str(out)
        result = subprocess.run(
            [sys.executable, "-m", "detlit.split", *args, *extra], capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stderr
        for category in coco["categories"]:
            assert category["name"] in result.stdout
        assert "…" not in result.stdout
