"""Records as columns, the schema read against the record-by-record parse, and the image header cache."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from detlit.data.coco import parse_coco, read_coco, read_json
from detlit.data.headers import read_headers
from detlit.data.records import Annotation, ImageRecord, Records


def _records() -> list[ImageRecord]:
    return [
        ImageRecord(7, "a/é.jpg", 40, 30, [Annotation(3, 7, 1, (1.0, 2.0, 3.0, 4.0), 9.0, False, 5)], index=0),
        ImageRecord(2, "b.png", 10, 20, [], index=1),
        ImageRecord(
            9,
            "c.jpg",
            50,
            50,
            [
                Annotation(1, 9, 2, (0.5, 0.5, 10.0, 10.0), float("nan"), True, 0),
                Annotation(4, 9, 1, (5.0, 5.0, 2.0, 2.0), 4.0, False, 2),
            ],
            index=2,
        ),
    ]


def test_records_round_trip_and_take() -> None:
    records = _records()
    columns = Records.from_records(records)
    assert len(columns) == 3 and columns.num_annotations == 3
    rebuilt = list(columns)
    for a, b in zip(rebuilt, records, strict=True):
        assert (a.id, a.file_name, a.width, a.height, a.index) == (b.id, b.file_name, b.width, b.height, b.index)
        assert [x.bbox for x in a.annotations] == [x.bbox for x in b.annotations]
        assert [(x.id, x.category_id, x.iscrowd, x.index) for x in a.annotations] == [
            (x.id, x.category_id, x.iscrowd, x.index) for x in b.annotations
        ]
    assert np.isnan(columns[2].annotations[0].area) and columns[-1].id == 9
    assert columns.counts.tolist() == [1, 0, 2] and columns.owners.tolist() == [0, 2, 2]
    subset = columns.take([2, 0])
    assert [r.id for r in subset] == [9, 7] and subset.file_names() == ["c.jpg", "a/é.jpg"]
    assert [a.id for a in subset[0].annotations] == [1, 4]
    assert [r.id for r in columns[1:]] == [2, 9]
    with pytest.raises(IndexError):
        columns[3]
    copy = pickle.loads(pickle.dumps(columns))
    assert copy.file_names() == columns.file_names() and np.array_equal(copy.bboxes, columns.bboxes)


def _document(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "info": {"year": 2017},
        "images": [
            {"id": 5, "file_name": "x/5.jpg", "width": 64, "height": 48, "license": 1},
            {"id": 2, "file_name": "2.jpg", "width": 32, "height": 32},
        ],
        "annotations": [
            {"id": 1, "image_id": 2, "category_id": 7, "bbox": [1, 1, 5, 5], "segmentation": [[1, 1, 6, 1, 6, 6]]},
            {"id": 3, "image_id": 5, "category_id": 1, "bbox": [2.5, 3, 10, 9], "area": 50.5, "iscrowd": 1},
            {"id": 2, "image_id": 5, "category_id": 7, "bbox": [0, 0, 4, 4], "area": None, "iscrowd": 0},
        ],
        "categories": [{"id": 7, "name": "b", "supercategory": "s"}, {"id": 1, "name": "a"}],
    }
    document.update(changes)
    return document


def _columns(records: Records) -> dict[str, Any]:
    names = ("ids", "widths", "heights", "positions", "offsets", "annotation_ids", "category_ids", "bboxes", "crowd")
    out = {name: getattr(records, name).tolist() for name in names}
    out["areas"] = np.nan_to_num(records.areas, nan=-1.0).tolist()
    out["annotation_positions"] = records.annotation_positions.tolist()
    out["file_names"] = records.file_names()
    return out


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"annotations": []},
        # not for the schema: read record by record, with the same records where they are usable
        {"categories": [{"id": 7, "name": "b"}, {"id": "1", "name": "a"}]},
    ],
)
def test_schema_read_equals_the_record_by_record_parse(tmp_path: Path, changes: dict[str, Any]) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps(_document(**changes)))
    dataset, findings = read_coco(path, tmp_path)
    reference, reference_findings = parse_coco(read_json(path), path, tmp_path)
    assert _columns(dataset.images) == _columns(reference.images)
    assert dataset.categories == reference.categories and findings == reference_findings
    if not changes:
        assert [r.id for r in dataset.images] == [5, 2]  # the json's order
        assert [a.id for a in dataset.images[0].annotations] == [3, 2]  # objects grouped by image
        assert dataset.images[0].annotations[0].index == 1  # position in the json, for repairs


@pytest.mark.parametrize(
    ("changes", "kind"),
    [
        ({"images": [{"id": 5, "file_name": "a.jpg", "width": 64, "height": 48}] * 2}, "duplicate_image_id"),
        ({"images": [{"id": 5, "file_name": "a.jpg", "width": 64.0, "height": 0}]}, "bad_image_size"),
        (
            {"annotations": [{"id": 1, "image_id": 2, "category_id": 7, "bbox": [1, True, 5, 5]}]},
            "bad_bbox",
        ),
        ({"annotations": [{"id": 1, "image_id": 8, "category_id": 7, "bbox": [1, 1, 5, 5]}]}, "unknown_image"),
    ],
)
def test_problems_the_schema_cannot_take_are_findings(tmp_path: Path, changes: dict[str, Any], kind: str) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps(_document(**changes)))
    _, findings = read_coco(path, tmp_path)
    assert kind in {f.kind for f in findings}


def test_header_cache_is_used_until_a_file_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    monkeypatch.setenv("DETLIT_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "images"
    root.mkdir()
    names = [f"{i}.png" for i in range(6)]
    for i, name in enumerate(names):
        Image.new("RGB", (10 + i, 20)).save(root / name)
    names.append("missing.png")
    first = read_headers(root, names, cache_min=1)
    assert first.cached == 0 and first.width.tolist() == [10, 11, 12, 13, 14, 15, 0]
    assert first.exists.tolist() == [True] * 6 + [False]
    assert len(list((tmp_path / "cache").glob("headers-*.npz"))) == 1

    second = read_headers(root, names, cache_min=1)
    assert second.cached == 6 and second.width.tolist() == first.width.tolist()
    assert second.mode == first.mode and not second.exists[6]

    Image.new("RGB", (99, 20)).save(root / "2.png")  # same name, other size and time
    stamp = os.stat(root / "2.png").st_mtime_ns + 10**9
    os.utime(root / "2.png", ns=(stamp, stamp))
    third = read_headers(root, names, cache_min=1)
    assert third.cached == 5 and third.width[2] == 99

    monkeypatch.setenv("DETLIT_CACHE_DIR", "off")
    assert read_headers(root, names, cache_min=1).cached == 0
