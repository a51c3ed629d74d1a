"""``python -m detlit.check``: a corpus of broken datasets, one defect each.

Every case starts from the same valid dataset (4 JPEG images, 2 objects each, categories 1 and
2) and breaks one thing. For each: the finding it must produce, the exit code, and, for
repairable defects, that the ``--fix`` copy passes the check and keeps every valid annotation.
"""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from detlit.check import main as check
from detlit.data.checks import check_file

from .conftest import REPO

W, H = 64, 48


def _write_image(path: Path, seed: int, mode: str = "RGB", exif_orientation: int | None = None) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    if exif_orientation is None:
        image.save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        image.save(path, exif=exif)


def base_dataset(root: Path) -> dict[str, Any]:
    (root / "images").mkdir(parents=True)
    images, annotations = [], []
    for i in range(1, 5):
        _write_image(root / "images" / f"img{i}.jpg", seed=i)
        images.append({"id": i, "file_name": f"img{i}.jpg", "width": W, "height": H})
        for k, box in enumerate(([2, 3, 20, 10], [30, 20, 25, 20])):
            annotations.append(
                {
                    "id": 10 * i + k,
                    "image_id": i,
                    "category_id": 1 + k,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    return {
        "info": {"description": "corpus"},
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": 1, "name": "cat", "supercategory": "animal"},
            {"id": 2, "name": "dog", "supercategory": "animal"},
        ],
    }


Mutation = Callable[[dict[str, Any], Path], None]


@dataclass
class Case:
    name: str
    mutate: Mutation
    kind: str | None  # finding kind it must produce (None: the file is unusable, exit 2)
    exit_code: int
    repairable: bool = False
    affected: set[int] = field(default_factory=set)  # annotation ids the defect may cost
    text: str = ""  # for unusable files: a phrase of the one-sentence error


def ann(coco: dict[str, Any], aid: int) -> dict[str, Any]:
    return next(a for a in coco["annotations"] if a.get("id") == aid)


def img(coco: dict[str, Any], iid: int) -> dict[str, Any]:
    return next(i for i in coco["images"] if i.get("id") == iid)


def _set(path: str, value: Any) -> Mutation:
    """Mutation that sets ``annotations.<id>.<key>`` or ``images.<id>.<key>``."""
    section, ident, key = path.split(".")

    def mutate(coco: dict[str, Any], root: Path) -> None:
        (ann if section == "annotations" else img)(coco, int(ident))[key] = value

    return mutate


def _raw(text: str) -> Mutation:
    def mutate(coco: dict[str, Any], root: Path) -> None:
        coco.clear()
        coco["__raw__"] = text

    return mutate


def _truncate(coco: dict[str, Any], root: Path) -> None:
    data = (root / "images" / "img2.jpg").read_bytes()
    (root / "images" / "img2.jpg").write_bytes(data[: len(data) // 2])


def _png_alpha(coco: dict[str, Any], root: Path) -> None:
    _write_image(root / "images" / "img3.png", seed=3, mode="RGBA")
    img(coco, 3)["file_name"] = "img3.png"


def _grayscale(coco: dict[str, Any], root: Path) -> None:
    _write_image(root / "images" / "img3.jpg", seed=3, mode="L")


def _exif_rotated_unrotated_size(coco: dict[str, Any], root: Path) -> None:
    _write_image(root / "images" / "img4.jpg", seed=4, exif_orientation=6)  # json still says 64x48


def _exif_rotated_correct_size(coco: dict[str, Any], root: Path) -> None:
    _write_image(root / "images" / "img4.jpg", seed=4, exif_orientation=6)
    img(coco, 4).update(width=H, height=W)
    for a in coco["annotations"]:
        if a["image_id"] == 4:
            a["bbox"] = [1, 1, 10, 10]


def _missing_file(coco: dict[str, Any], root: Path) -> None:
    (root / "images" / "img2.jpg").unlink()


def _unlisted_file(coco: dict[str, Any], root: Path) -> None:
    _write_image(root / "images" / "extra.jpg", seed=9)


def _duplicate_content(coco: dict[str, Any], root: Path) -> None:
    shutil.copy(root / "images" / "img1.jpg", root / "images" / "img2.jpg")


def _duplicate_image_id(coco: dict[str, Any], root: Path) -> None:
    img(coco, 2)["id"] = 1


def _duplicate_file_name(coco: dict[str, Any], root: Path) -> None:
    img(coco, 2)["file_name"] = "img1.jpg"


def _duplicate_annotation(coco: dict[str, Any], root: Path) -> None:
    coco["annotations"].append({**ann(coco, 10), "id": 99})


def _duplicate_annotation_id(coco: dict[str, Any], root: Path) -> None:
    ann(coco, 11)["id"] = 10


def _placeholder_category(coco: dict[str, Any], root: Path) -> None:
    coco["categories"].append({"id": 0, "name": "animal", "supercategory": "none"})


def _unused_category(coco: dict[str, Any], root: Path) -> None:
    coco["categories"].append({"id": 7, "name": "bird", "supercategory": "animal"})


def _zero_based_ids(coco: dict[str, Any], root: Path) -> None:
    for c in coco["categories"]:
        c["id"] -= 1
    for a in coco["annotations"]:
        a["category_id"] -= 1


def _duplicate_category_name(coco: dict[str, Any], root: Path) -> None:
    coco["categories"][1]["name"] = "cat"


def _crowd(coco: dict[str, Any], root: Path) -> None:
    ann(coco, 20)["iscrowd"] = 1


def _annotation_not_object(coco: dict[str, Any], root: Path) -> None:
    coco["annotations"].append([1, 2, 3])


def _category_without_name(coco: dict[str, Any], root: Path) -> None:
    coco["categories"].append({"id": 5})


def _drop_key(path: str) -> Mutation:
    section, ident, key = path.split(".")

    def mutate(coco: dict[str, Any], root: Path) -> None:
        del (ann if section == "annotations" else img)(coco, int(ident))[key]

    return mutate


def _windows_path(coco: dict[str, Any], root: Path) -> None:
    (root / "images" / "sub").mkdir()
    shutil.move(root / "images" / "img2.jpg", root / "images" / "sub" / "img2.jpg")
    img(coco, 2)["file_name"] = "sub\\img2.jpg"


def _huge_image_id(coco: dict[str, Any], root: Path) -> None:
    img(coco, 1)["id"] = 2**63 + 5
    for annotation in coco["annotations"]:
        if annotation["image_id"] == 1:
            annotation["image_id"] = 2**63 + 5


def _single_object_class(coco: dict[str, Any], root: Path) -> None:
    # 4 cats, 4 dogs and one bishop: the bishop cannot be learned
    coco["categories"].append({"id": 3, "name": "bishop", "supercategory": "piece"})
    ann(coco, 11)["category_id"] = 3
    for i in (2, 3, 4):
        coco["annotations"].append({**ann(coco, 10 * i), "id": 100 + i, "bbox": [40, 2, 10, 10], "area": 100})


CASES = [
    # unusable files: one sentence, exit 2
    Case("empty file", _raw(""), None, 2, text="the file is empty"),
    Case("not json", _raw("images: [1, 2"), None, 2, text="is not valid JSON"),
    Case("json list", _raw("[1, 2, 3]"), None, 2, text="top level is a JSON list"),
    Case("images key missing", _raw('{"annotations": [], "categories": []}'), None, 2, text="'images'"),
    Case(
        "images not a list", _raw('{"images": {}, "annotations": [], "categories": []}'), None, 2, text="must be a list"
    ),
    # structure
    Case("bbox of 3 numbers", _set("annotations.10.bbox", [1, 2, 3]), "bad_bbox", 1, True, {10}),
    Case("bbox missing", _drop_key("annotations.11.bbox"), "bad_bbox", 1, True, {11}),
    Case("bbox of strings", _set("annotations.11.bbox", ["1", "2", "3", "4"]), "bad_bbox", 1, True, {11}),
    Case("string ids", _set("annotations.20.image_id", "2"), "string_id", 1, True),
    Case("image id a string", _set("images.3.id", "3"), "bad_image", 1, True),
    Case("annotation not an object", _annotation_not_object, "bad_annotation", 1, True),
    Case("category without name", _category_without_name, "bad_category", 1),
    Case("duplicate image id", _duplicate_image_id, "duplicate_image_id", 1),
    Case("duplicate annotation id", _duplicate_annotation_id, "duplicate_annotation_id", 1, True, {11}),
    Case("unknown image", _set("annotations.30.image_id", 77), "unknown_image", 1, True, {30}),
    Case("unknown category", _set("annotations.31.category_id", 9), "unknown_category", 1, True, {31}),
    Case("duplicate file name", _duplicate_file_name, "duplicate_file_name", 1),
    # paths and files
    Case("missing file", _missing_file, "missing_file", 1, True, {20, 21}),
    Case("path escapes root", _set("images.1.file_name", "../img1.jpg"), "path_escapes_root", 1),
    Case("absolute path", _set("images.1.file_name", "/etc/img1.jpg"), "path_escapes_root", 1),
    Case("truncated jpeg", _truncate, "unreadable_image", 1, True, {20, 21}),
    Case("png with alpha", _png_alpha, "converted_to_rgb", 0),
    Case("grayscale image", _grayscale, "grayscale", 0),
    Case("unlisted file", _unlisted_file, "unlisted_files", 0),
    # sizes
    Case("size mismatch", _set("images.2.width", 100), "size_mismatch", 1, True),
    Case("negative size", _set("images.2.height", -48), "size_mismatch", 1, True),
    Case("exif rotated, json unrotated", _exif_rotated_unrotated_size, "size_mismatch", 1, True),
    Case("exif rotated, json rotated", _exif_rotated_correct_size, "exif_orientation", 0),
    # boxes
    Case("non-finite box", _set("annotations.10.bbox", [1, 2, float("nan"), 4]), "non_finite_box", 1, True, {10}),
    Case("zero-width box", _set("annotations.10.bbox", [1, 2, 0, 4]), "non_positive_box", 1, True, {10}),
    Case("negative-height box", _set("annotations.10.bbox", [1, 20, 5, -4]), "non_positive_box", 1, True, {10}),
    Case("box partly outside", _set("annotations.11.bbox", [50, 30, 25, 10]), "box_outside_image", 0, True),
    Case("box entirely outside", _set("annotations.11.bbox", [70, 50, 5, 5]), "box_outside_image", 1, True, {11}),
    Case("xyxy written as xywh", _set("annotations.11.bbox", [30, 20, 55, 40]), "xyxy_as_xywh", 1, True),
    Case("tiny box", _set("annotations.10.bbox", [2, 3, 1, 10]), "tiny_box", 0),
    Case("area too large", _set("annotations.10.area", 5000), "area_mismatch", 0, True),
    Case("area missing", _drop_key("annotations.10.area"), "area_mismatch", 0, True),
    # labels
    Case("0-based category ids", _zero_based_ids, "category_ids", 0),
    Case("placeholder category", _placeholder_category, "placeholder_category", 0),
    Case("unused category", _unused_category, "unused_category", 0),
    Case("duplicate category name", _duplicate_category_name, "duplicate_category_name", 0),
    # crowd and duplicates
    Case("crowd annotation", _crowd, "crowd", 0),
    Case("duplicate annotation", _duplicate_annotation, "duplicate_annotation", 0, True),
    Case("duplicate image content", _duplicate_content, "duplicate_image", 0),
    # paths and ids written by other tools
    Case("windows separators", _windows_path, "windows_path", 0, True),
    Case("image id beyond 64 bits", _huge_image_id, "id_out_of_range", 1, False, {10, 11}),
    Case("a class with a single object", _single_object_class, "few_objects", 0),
]


def _materialise(case: Case, root: Path) -> tuple[Path, dict[str, Any]]:
    coco = base_dataset(root)
    case.mutate(coco, root)
    path = root / "data.json"
    if "__raw__" in coco:
        path.write_text(coco["__raw__"])
    else:
        path.write_text(json.dumps(coco))
    return path, coco


def _run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        check(argv)
    return int(exit_info.value.code or 0)


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 30
    assert len({c.kind for c in CASES if c.kind}) >= 30


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_broken_input(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = _materialise(case, tmp_path)
    before = path.read_bytes()
    code = _run([str(path), "--images", str(tmp_path / "images"), "--quiet"])
    captured = capsys.readouterr()
    assert code == case.exit_code, captured.err[-2000:]
    assert "Traceback" not in captured.err
    if case.kind is None:
        errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and case.text in errors[0] and str(path) in errors[0]
        return
    report, _ = check_file(path, tmp_path / "images")
    kinds = {f.kind for f in report.findings}
    assert case.kind in kinds, sorted(kinds)
    assert all(f.message for f in report.findings)
    finding = next(f for f in report.findings if f.kind == case.kind)
    assert finding.repairable == case.repairable or not case.repairable
    if case.repairable:
        out = tmp_path / "fixed.json"
        assert _run([str(path), "--images", str(tmp_path / "images"), "--fix", str(out), "--quiet"]) == 0
        assert path.read_bytes() == before  # the input is never modified
        fixed_report, _ = check_file(out, tmp_path / "images")
        assert fixed_report.errors == []
        valid = {a["id"] for a in base_dataset(tmp_path / "again")["annotations"]} - case.affected
        kept = {a["id"] for a in json.loads(out.read_text())["annotations"] if isinstance(a, dict)}
        assert valid <= kept, sorted(valid - kept)
        assert (out.parent / "fixed.repairs.txt").read_text().strip()


def test_valid_dataset_has_no_findings(tmp_path: Path) -> None:
    path, _ = _materialise(Case("none", lambda c, r: None, None, 0), tmp_path)
    report, _ = check_file(path, tmp_path / "images")
    assert report.findings == []
    assert report.stats["images"] == 4 and report.stats["annotations"] == 8
    assert report.stats["box_sizes"] == {"small": 8, "medium": 0, "large": 0}


def test_xyxy_repair_converts_the_box(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case = next(c for c in CASES if c.kind == "xyxy_as_xywh")
    path, _ = _materialise(case, tmp_path)
    assert _run([str(path), "--images", str(tmp_path / "images"), "--fix", str(tmp_path / "f.json"), "--quiet"]) == 0
    # quiet, yet it says where the copy went
    assert capsys.readouterr().out.strip() == (
        f"wrote {tmp_path / 'f.json'} (0 error(s) remain; repairs in {tmp_path / 'f.repairs.txt'})"
    )
    fixed = ann(json.loads((tmp_path / "f.json").read_text()), 11)
    assert fixed["bbox"] == [30, 20, 25, 20] and math.isclose(fixed["area"], 500)


def test_fix_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = _materialise(Case("size", _set("images.2.width", 100), None, 0), tmp_path)
    assert _run([str(path), "--images", str(tmp_path / "images"), "--fix", str(path), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "--fix would write" in error and "which is an input of this command" in error
    existing = tmp_path / "taken.json"
    existing.write_text("mine")
    assert _run([str(path), "--images", str(tmp_path / "images"), "--fix", str(existing), "--quiet"]) == 2
    assert existing.read_text() == "mine"


def test_report_json(tmp_path: Path) -> None:
    path, _ = _materialise(Case("crowd", _crowd, None, 0), tmp_path)
    out = tmp_path / "report.json"
    assert _run([str(path), "--images", str(tmp_path / "images"), "--report", str(out), "--quiet"]) == 0
    report = json.loads(out.read_text())
    assert report["summary"] == {"error": 0, "warning": 0, "info": 1}
    assert report["findings"][0]["kind"] == "crowd" and report["stats"]["crowd"] == 1


def test_rbc_train_reports_placeholder_and_zero_based_ids(rbc_dir: Path) -> None:
    report, _ = check_file(rbc_dir / "train" / "_annotations.coco.json", rbc_dir / "train")
    assert {f.kind for f in report.findings} == {"placeholder_category", "category_ids"}
    assert all(f.severity.value == "info" for f in report.findings)
    assert _run([str(rbc_dir / "train" / "_annotations.coco.json"), "--images", str(rbc_dir / "train"), "--quiet"]) == 0


def test_a_bom_json_is_read(tmp_path: Path) -> None:
    """Windows tools write a UTF-8 byte-order mark first: the file is read as any other."""
    coco = base_dataset(tmp_path)
    (tmp_path / "bom.json").write_text(json.dumps(coco), encoding="utf-8-sig")
    assert (tmp_path / "bom.json").read_bytes()[:3] == b"\xef\xbb\xbf"
    report, dataset = check_file(tmp_path / "bom.json", tmp_path / "images")
    assert not report.findings and len(dataset.images) == 4


def test_windows_paths_are_read_and_repaired(tmp_path: Path) -> None:
    path, _ = _materialise(Case("w", _windows_path, "windows_path", 0, True), tmp_path)
    report, dataset = check_file(path, tmp_path / "images")
    assert [f.kind for f in report.findings] == ["windows_path"]
    assert "sub/img2.jpg" in dataset.images.file_names(), "the image is read under its POSIX name"
    out = tmp_path / "fixed.json"
    assert _run([str(path), "--images", str(tmp_path / "images"), "--fix", str(out), "--quiet"]) == 0
    fixed = json.loads(out.read_text())
    assert img(fixed, 2)["file_name"] == "sub/img2.jpg" and len(fixed["annotations"]) == 8


def test_classes_missing_from_train_or_val_are_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    coco = base_dataset(tmp_path)
    (tmp_path / "train.json").write_text(json.dumps(coco))
    val = {**coco, "annotations": [a for a in coco["annotations"] if a["category_id"] == 1]}
    (tmp_path / "val.json").write_text(json.dumps(val))
    argv = [str(tmp_path / "train.json"), "--images", str(tmp_path / "images"), "--val", str(tmp_path / "val.json")]
    with caplog.at_level("WARNING"):
        assert _run([*argv, "--verbose"]) == 0
    assert "category 2 'dog' has 4 training object(s) but none in val" in caplog.text


def test_every_finding_code_is_documented() -> None:
    """Each finding kind the data checks can report has its row in docs/data.md."""
    import ast
    import re

    kinds: dict[str, str] = {}
    for path in sorted((REPO / "detlit" / "data").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name not in ("Finding", "_finding", "error"):
                continue
            for arg in node.args[:2]:  # Finding(severity, kind, ...), parser.error(kind, ...)
                text = arg.value if isinstance(arg, ast.Constant) else None
                if isinstance(text, str) and re.fullmatch(r"[a-z]+(_[a-z0-9]+)*", text):
                    kinds.setdefault(text, path.name)
    assert len(kinds) > 30  # the scan finds the checks
    documented = (REPO / "docs" / "data.md").read_text()
    missing = {kind: where for kind, where in kinds.items() if f"`{kind}`" not in documented}
    assert not missing, f"finding kinds without a row in docs/data.md: {missing}"


# --- dropping and merging categories -----------------------------------------------------------


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from detlit.data.sample import write_sample

    root = tmp_path_factory.mktemp("shapes")
    write_sample(root, train=10, val=1, seed=2)
    return root


def _categories_of(path: Path) -> tuple[list[tuple[int, str]], Counter[int]]:
    coco = json.loads(path.read_text())
    return [(c["id"], c["name"]) for c in coco["categories"]], Counter(a["category_id"] for a in coco["annotations"])


def test_drop_and_merge_categories_in_the_fixed_copy(shapes: Path, tmp_path: Path) -> None:
    source = shapes / "train.json"
    before = source.read_bytes()
    _, counts = _categories_of(source)
    images = len(json.loads(before)["images"])
    out = tmp_path / "fixed.json"
    args = [str(source), "--images", str(shapes / "train"), "--fix", str(out), "--quiet"]
    assert _run([*args, "--drop-category", "3", "--merge-category", "triangle=circle"]) == 0  # 3: square's id
    categories, after = _categories_of(out)
    assert categories == [(1, "circle")]
    assert after == Counter({1: counts[1] + counts[7]})  # squares gone, triangles are circles now
    assert len(json.loads(out.read_text())["images"]) == images  # images stay
    assert source.read_bytes() == before  # the input untouched
    changes = (tmp_path / "fixed.repairs.txt").read_text().splitlines()
    assert sum(line.startswith("drop categories[") for line in changes) == 2
    assert sum("category_id=1" in line for line in changes) == counts[7]


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (
            ["--drop-category", "hexagon"],
            "--drop-category hexagon: no category has that name or id; the categories are 1 'circle'",
        ),
        (["--merge-category", "circle"], "--merge-category circle: give SOURCE=TARGET"),
        (["--merge-category", "circle=circle"], "cannot be merged into itself"),
        (["--merge-category", "circle=square", "--drop-category", "square"], "'square' is itself dropped or merged"),
        (["--drop-category", "circle", "--drop-category", "1"], "already named by --drop-category circle"),
    ],
)
def test_bad_category_changes_are_one_sentence(
    shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], words: str
) -> None:
    out = tmp_path / "fixed.json"
    assert _run([str(shapes / "train.json"), "--images", str(shapes / "train"), "--fix", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1, err
    assert not out.exists()


def test_category_changes_need_fix(shapes: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run([str(shapes / "train.json"), "--images", str(shapes / "train"), "--drop-category", "circle"]) == 2
    assert "--drop-category changes the dataset: give --fix OUT.json" in capsys.readouterr().err


def test_rbc_placeholder_category_dropped(rbc_dir: Path, tmp_path: Path) -> None:
    """The real export: its placeholder category (id 0, no objects) dropped by name, then checked clean."""
    source = rbc_dir / "valid" / "_annotations.coco.json"
    placeholder = next(c["name"] for c in json.loads(source.read_text())["categories"] if c["id"] == 0)
    out = tmp_path / "fixed.json"
    assert (
        _run([str(source), "--images", str(rbc_dir / "valid"), "--fix", str(out), "--drop-category", placeholder]) == 0
    )
    categories, _ = _categories_of(out)
    assert 0 not in [cid for cid, _ in categories] and len(categories) >= 2
