"""The one COCO results writer (original category ids, XYWH, 2-decimal boxes) and its reader."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from pycocotools.coco import COCO

from detlit.common.outputs import check_outputs
from detlit.data.coco import LabelMap, load_coco
from detlit.errors import ConfigError, DataError
from detlit.evaluation.coco_results import coco_results, read_results, write_results
from detlit.evaluation.metric import DetectionMetrics

LABEL_MAP = LabelMap((0, 5, 90), ("zero", "five", "ninety"))


def _detections(boxes: list[list[float]], scores: list[float], classes: list[int]) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(classes, dtype=torch.int64),
    }


def _ground_truth(tmp_path: Path, image_ids: list[int]) -> Path:
    data = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 640, "height": 480} for i in image_ids],
        "annotations": [
            {"id": 1, "image_id": image_ids[0], "category_id": 5, "bbox": [10, 20, 30, 40], "area": 1200, "iscrowd": 0}
        ],
        "categories": [
            {"id": cid, "name": name} for cid, name in zip(LABEL_MAP.category_ids, LABEL_MAP.names, strict=True)
        ],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    return path


def test_written_category_ids_are_the_original_ones_and_load_in_pycocotools(tmp_path: Path) -> None:
    outputs = [
        _detections([[10, 20, 40, 60.123456], [1, 2, 3, 4]], [0.9, 0.25], [1, 2]),
        _detections([[0, 0, 5, 5]], [0.5], [0]),
        _detections([], [], []),
    ]
    results = coco_results(outputs, [7, 8, 9], LABEL_MAP)
    assert [r["category_id"] for r in results] == [5, 90, 0]
    assert [r["image_id"] for r in results] == [7, 7, 8]
    assert results[0]["bbox"] == [10.0, 20.0, 30.0, 40.12]  # XYWH, 2 decimals
    assert results[0]["score"] == pytest.approx(0.9)

    path = write_results(results, tmp_path / "out" / "results.json")
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(_ground_truth(tmp_path, [7, 8, 9])))
        loaded = ground_truth.loadRes(str(path))
    assert sorted(a["category_id"] for a in loaded.anns.values()) == [0, 5, 90]
    assert loaded.anns[1]["bbox"] == [10.0, 20.0, 30.0, 40.12]

    # and back: the file evaluates against its ground truth with the original ids mapped to labels
    records = load_coco(tmp_path / "gt.json", tmp_path).images
    preds, targets = read_results(path, records, LABEL_MAP)
    assert [p["labels"].tolist() for p in preds] == [[1, 2], [0], []]
    assert preds[0]["boxes"][0].tolist() == pytest.approx([10.0, 20.0, 40.0, 60.12])
    metric = DetectionMetrics(LABEL_MAP.names)
    metric.update(preds, targets)
    assert metric.compute().best.tp.tolist() == [0, 1, 0]  # the "five" detection matches its object


def test_labels_outside_the_label_map_are_refused() -> None:
    with pytest.raises(ValueError, match="label 3"):
        coco_results([_detections([[0, 0, 1, 1]], [0.5], [3])], [1], LABEL_MAP)


def _result(image_id: int, score: float, category_id: int = 5) -> dict[str, Any]:
    return {"image_id": image_id, "category_id": category_id, "bbox": [0.0, 0.0, 1.0, 1.0], "score": score}


def test_results_are_written_whole_and_never_over_an_existing_file(tmp_path: Path) -> None:
    path = write_results([_result(1, 0.5)], tmp_path / "results.json")
    with pytest.raises(ConfigError, match="already exists; choose another --out, or pass --overwrite"):
        check_outputs([path])
    check_outputs([path], overwrite=True)
    write_results([], path)
    assert json.loads(path.read_text()) == []
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"], "no temporary file is left"
    with pytest.raises(ConfigError, match="which is an input of this command"):
        check_outputs([path], inputs=[tmp_path / "." / "results.json"], overwrite=True)


@pytest.mark.parametrize(
    ("results", "message"),
    [
        ([_result(7, 0.5, category_id=6)], r"results\.json: none of its 1 results has a category of the ground truth"),
        ([_result(7, 0.5), _result(99, 0.5)], r"results\.json: result 1 is for image_id 99, which is not in the"),
        ({"annotations": []}, r"results\.json holds a JSON dict, not a list of results"),
        (
            {"images": [{"id": 1, "file_name": "other.jpg"}], "annotations": []},
            r"image 'other\.jpg' is not in the ground",
        ),
        ([{"image_id": 7, "category_id": 5, "bbox": [1, 2, 3], "score": 0.5}], r"result 0 is .* needs .* a bbox"),
    ],
)
def test_bad_results_files_name_the_file_and_the_fix(tmp_path: Path, results: Any, message: str) -> None:
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    records = load_coco(_ground_truth(tmp_path, [7, 8]), tmp_path).images
    with pytest.raises(DataError, match=message) as error:
        read_results(path, records, LABEL_MAP)
    assert "; " in str(error.value)  # what is wrong; how to fix it
