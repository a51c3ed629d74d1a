"""Stage 1 (reading the json), conversion: detlit records as detectron2 dataset dicts, registered by name.

After :func:`register_detectron2`, detectron2's own tools (``DatasetCatalog.get``, its
``Visualizer`` through ``MetadataCatalog``, ``COCOEvaluator``) work on a detlit dataset, with
the same contiguous labels that detlit trains on.
"""

from __future__ import annotations

from typing import Any

from detlit.compat import BoxMode, DatasetCatalog, MetadataCatalog
from detlit.data.coco import CocoDataset, LabelMap


def to_detectron2_dicts(dataset: CocoDataset, label_map: LabelMap) -> list[dict[str, Any]]:
    """detectron2's standard dataset dicts: absolute file names, XYWH_ABS boxes, contiguous labels."""
    return [
        {
            "file_name": str(dataset.image_root / image.file_name),
            "height": image.height,
            "width": image.width,
            "image_id": image.id,
            "annotations": [
                {
                    "bbox": list(a.bbox),
                    "bbox_mode": BoxMode.XYWH_ABS,
                    "category_id": label_map.label(a.category_id),
                    "iscrowd": int(a.iscrowd),
                    "area": a.effective_area,
                }
                for a in image.annotations
            ],
        }
        for image in dataset.images
    ]


def register_detectron2(name: str, dataset: CocoDataset, label_map: LabelMap | None = None) -> None:
    """Register ``dataset`` in detectron2's DatasetCatalog and MetadataCatalog under ``name``."""
    label_map = label_map or dataset.label_map()
    dicts = to_detectron2_dicts(dataset, label_map)
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(
        thing_classes=list(label_map.names),
        thing_dataset_id_to_contiguous_id={cid: label for label, cid in enumerate(label_map.category_ids)},
        json_file=str(dataset.json_path),
        image_root=str(dataset.image_root),
        evaluator_type="coco",
    )
