"""Stage 1, reading the json: COCO json -> records, label map, and one-sentence errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from detlit.data.coco import LabelMap, load_coco, require_images
from detlit.errors import DataError


def _coco(categories: list[dict[str, Any]], annotations: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "images": [{"id": 10, "file_name": "a.jpg", "width": 100, "height": 80}],
        "annotations": annotations,
        "categories": categories,
    }


def _write(tmp_path: Path, data: Any, name: str = "data.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_label_map_round_trip_with_non_contiguous_ids(tmp_path: Path) -> None:
    cats = [{"id": 90, "name": "c"}, {"id": 0, "name": "a"}, {"id": 5, "name": "b"}]
    anns = [{"id": i, "image_id": 10, "category_id": c, "bbox": [1, 2, 3, 4]} for i, c in enumerate((0, 5, 90))]
    label_map = load_coco(_write(tmp_path, _coco(cats, anns)), tmp_path).label_map()
    assert label_map.category_ids == (0, 5, 90)
    assert label_map.names == ("a", "b", "c")
    assert [label_map.label(c) for c in (0, 5, 90)] == [0, 1, 2]
    assert [label_map.category_id(label) for label in range(3)] == [0, 5, 90]


def test_roboflow_placeholder_category_is_not_a_class(tmp_path: Path) -> None:
    cats = [
        {"id": 0, "name": "cells", "supercategory": "none"},
        {"id": 1, "name": "rbc", "supercategory": "cells"},
        {"id": 2, "name": "wbc", "supercategory": "cells"},
    ]
    anns = [{"id": 1, "image_id": 10, "category_id": 1, "bbox": [1, 2, 3, 4]}]
    dataset = load_coco(_write(tmp_path, _coco(cats, anns)), tmp_path)
    assert [c.id for c in dataset.placeholder_categories()] == [0]
    assert dataset.label_map() == LabelMap((1, 2), ("rbc", "wbc"))


def test_annotation_fields_are_parsed(tmp_path: Path) -> None:
    anns = [{"id": 7, "image_id": 10, "category_id": 3, "bbox": [1, 2, 3, 4], "area": 9.5, "iscrowd": 1}]
    dataset = load_coco(_write(tmp_path, _coco([{"id": 3, "name": "x"}], anns)), tmp_path)
    (annotation,) = dataset.images[0].annotations
    assert annotation.xyxy == (1.0, 2.0, 4.0, 6.0)
    assert annotation.area == 9.5 and annotation.iscrowd


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "top level is a JSON list"),
        ('{"images": []}', "'annotations', 'categories' missing"),
        ('{"images": {}, "annotations": [], "categories": []}', "'images' must be a list"),
    ],
)
def test_unusable_json_gives_one_sentence(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "data.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=message) as info:
        load_coco(path, tmp_path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_annotation_with_unknown_category(tmp_path: Path) -> None:
    anns = [{"id": 1, "image_id": 10, "category_id": 4, "bbox": [1, 2, 3, 4]}]
    with pytest.raises(DataError, match="category_id 4, which is not in 'categories'"):
        load_coco(_write(tmp_path, _coco([{"id": 3, "name": "x"}], anns)), tmp_path)


def test_image_folder_without_the_images(tmp_path: Path) -> None:
    dataset = load_coco(_write(tmp_path, _coco([{"id": 3, "name": "x"}], [])), tmp_path / "empty")
    with pytest.raises(DataError, match="does not exist; set data.train_images"):
        require_images(dataset, "data.train_images")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="none of the 1 images .* is under .*empty"):
        require_images(dataset, "data.train_images")
