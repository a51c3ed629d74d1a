"""``python -m detlit.evaluate``: every metric of a model (or of any detector's results) on a test set.

Examples::

    python -m detlit.evaluate --ckpt runs/sample/version_0/checkpoints/last.ckpt \\
        --json data/sample/val.json --images data/sample/val --out eval/sample
    python -m detlit.evaluate --results coco_results.json --json test.json --images test/ --out eval/other

Writes into ``--out``: ``metrics.json`` (the 12 COCO numbers, precision / recall / F1 overall and
per class at the F1-optimal and at the fixed score threshold, the confusion matrix),
``per_class.csv``, ``coco_results.json`` (with a model), ``confusion_matrix.png``,
``pr_curves.png`` and ``f1_curves.png``, and prints the tables. An existing non-empty ``--out`` is
never overwritten unless ``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import track
from rich.table import Table

from detlit.common.command import run_cli
from detlit.data.checks import load_checked
from detlit.data.coco import CocoDataset, LabelMap
from detlit.data.dataset import eval_target
from detlit.errors import ConfigError, DataError
from detlit.evaluation import plots
from detlit.evaluation.metric import COCO_KEYS, DetectionMetrics, Evaluation
from detlit.evaluation.results import coco_results, read_results, write_results

log = logging.getLogger("detlit.inference.evaluate")

COCO_TITLES = {
    "map": "AP @[.50:.95]",
    "map50": "AP @.50",
    "map75": "AP @.75",
    "map_small": "AP small",
    "map_medium": "AP medium",
    "map_large": "AP large",
    "mar1": "AR max 1",
    "mar10": "AR max 10",
    "mar100": "AR max 100",
    "mar_small": "AR small",
    "mar_medium": "AR medium",
    "mar_large": "AR large",
}


def predict_dataset(
    dataset: CocoDataset, checkpoint: Path, device: str, batch_size: int
) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]], list[dict[str, Any]], LabelMap]:
    """Run a checkpoint on every image: metric inputs, COCO results, and the model's label map.

    An image that cannot be read is logged and left out (its objects are then not counted).
    """
    from detlit.inference.predictor import Predictor, load_image  # imports detectron2: only when a model is evaluated

    predictor = Predictor.from_checkpoint(checkpoint, device=device, batch_size=batch_size)
    # Evaluation ranks every detection the model keeps (detectron2's own test threshold), not
    # only those above the per-class F1-optimal thresholds that drawing uses.
    predictor.score_thresholds[:] = predictor.module.cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST
    label_map = predictor.label_map
    preds, targets, image_ids = [], [], []
    records = dataset.images
    for start in track(range(0, len(records), batch_size), description="predicting", transient=True):
        arrays, kept = [], []
        for record in records[start : start + batch_size]:
            try:
                arrays.append(load_image(dataset.image_root / record.file_name))
                kept.append(record)
            except DataError as err:
                log.warning("left out of the evaluation: %s", err)
        for record, output in zip(kept, predictor.predict(arrays), strict=True):
            preds.append(
                {
                    "boxes": torch.as_tensor(output.boxes, dtype=torch.float64),
                    "scores": torch.as_tensor(output.scores, dtype=torch.float64),
                    "labels": torch.as_tensor(output.labels, dtype=torch.int64),
                }
            )
            targets.append(eval_target(record, label_map))
            image_ids.append(record.id)
    return preds, targets, coco_results(preds, image_ids, label_map), label_map


def write_outputs(evaluation: Evaluation, out: Path, meta: dict[str, Any]) -> None:
    """metrics.json, per_class.csv and the three pictures."""
    (out / "metrics.json").write_text(json.dumps({**meta, **evaluation.as_json()}, indent=1))
    rows = evaluation.per_class()
    with (out / "per_class.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plots.confusion_matrix(evaluation, out / "confusion_matrix.png")
    plots.pr_curves(evaluation, out / "pr_curves.png")
    plots.f1_curves(evaluation, out / "f1_curves.png")


def print_tables(evaluation: Evaluation, console: Console) -> None:
    coco = Table(title="COCO metrics (IoU .50:.95 unless noted, area all, max 100 detections)")
    coco.add_column("metric")
    coco.add_column("value", justify="right")
    for key in COCO_KEYS.values():
        value = evaluation.coco[key]
        coco.add_row(COCO_TITLES[key], "-" if value != value else f"{value:.4f}")
    overall = evaluation.scalars()
    for name in ("precision", "recall", "f1"):
        coco.add_row(f"{name} (per-class best threshold)", f"{overall[name]:.4f}")
    for name in ("precision", "recall", "f1"):
        coco.add_row(f"{name} @ score {evaluation.score_threshold:g}", f"{overall[name + '@thr']:.4f}")
    console.print(coco)
    console.print(evaluation.table(f"per class (IoU {evaluation.iou_threshold:g})"))


def prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"--out {out} already holds files; choose another folder or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m detlit.evaluate", description="Evaluate detections on a COCO set.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", type=Path, help="detlit checkpoint to run on the images")
    source.add_argument("--results", type=Path, help="an existing COCO results json (any detector's)")
    parser.add_argument("--json", type=Path, required=True, help="COCO ground-truth json")
    parser.add_argument("--images", type=Path, required=True, help="folder the json's file names are relative to")
    parser.add_argument("--out", type=Path, help="output folder (default eval/<json name>)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--score-threshold", type=float, default=0.5, help="the fixed threshold for P/R/F1")
    parser.add_argument("--iou-threshold", type=float, default=0.5, help="IoU of P/R/F1 and the confusion matrix")
    parser.add_argument("--overwrite", action="store_true")
    return parser.parse_args(argv)


def evaluate_main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or Path("eval") / args.json.stem
    prepare_out(out, args.overwrite)
    started = time.perf_counter()
    dataset = load_checked(args.json, args.images, "--images", files=args.ckpt is not None)
    if args.ckpt is not None:
        if not args.ckpt.is_file():
            raise ConfigError(f"--ckpt {args.ckpt} does not exist; pass a checkpoint written by python -m detlit.fit")
        preds, targets, results, label_map = predict_dataset(dataset, args.ckpt, args.device, args.batch_size)
        write_results(results, out / "coco_results.json", overwrite=True)
        log.info("wrote %s (%d detections)", out / "coco_results.json", len(results))
    else:
        label_map = dataset.label_map()
        preds, targets = read_results(args.results, dataset.images, label_map)
    metric = DetectionMetrics(label_map.names, score_threshold=args.score_threshold, iou_threshold=args.iou_threshold)
    metric.update(preds, targets)
    evaluation: Evaluation = metric.compute()
    meta = {
        "source": str(args.ckpt or args.results),
        "json": str(args.json),
        "images": len(targets),
        "category_ids": list(label_map.category_ids),
        "seconds": round(time.perf_counter() - started, 2),
    }
    write_outputs(evaluation, out, meta)
    print_tables(evaluation, Console())
    log.info("wrote %s", ", ".join(p.name for p in sorted(out.iterdir())))
    return 0


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_cli(evaluate_main, argv))


if __name__ == "__main__":
    main()
