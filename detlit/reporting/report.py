"""``python -m detlit.report``: what one training run did and what to change, in one page that opens offline.

Examples::

    python -m detlit.report --run runs/sample/version_0
    python -m detlit.report --run runs/sample/version_0 --eval eval/sample --out reports/sample.html

Writes ``report.html`` into the run folder (or ``--out``): one file with every picture embedded as
a ``data:`` URI and its style inline, so it opens offline and makes no request; and the same
content as Markdown, ``report.md`` beside it, with its pictures as PNG files in ``report_files/``
(for ``--out NAME.html``: ``NAME.md`` and ``NAME_files/``). An existing report is never replaced
unless ``--overwrite`` is given.

Sections: run summary (duration, hardware, versions, dataset fingerprints, the config), findings
and recommendations, final metrics (``--eval``'s ``metrics.json``, else the last validation in
the TensorBoard event files), training curves, precision-recall and F1 curves with the confusion
matrix, the best and worst validation images, and the dataset statistics. Whatever the run folder
lacks (validation, a checkpoint, data that moved) is named in its section; the report is written
anyway. A folder that is not a run folder ends in one sentence and exit status 2.

Each finding comes from one small rule (``rule_*`` in :mod:`detlit.reporting.advice`) with its threshold in
a module constant there, and names the numbers that triggered it. The run folder is read by
:mod:`detlit.reporting.run_reader`; the page is a :mod:`detlit.reporting.document`, rendered to HTML and Markdown there.
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeAlias

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed or wanted

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from detlit.common.command import run_cli
from detlit.common.env import collect_env
from detlit.data.coco import CocoDataset, ImageRecord
from detlit.errors import ConfigError, DataError, DetlitError
from detlit.evaluation import plots
from detlit.evaluation.metric import COCO_NAMES, Evaluation
from detlit.inference.evaluate import COCO_TITLES
from detlit.reporting.advice import (
    NOTHING_ALARMING,
    Recommendation,
    rule_boxes_dropped,
    rule_confusion,
    rule_dataset_errors,
    rule_nonfinite_batches,
    rule_overfitting,
    rule_skipped_images,
    rule_small_objects,
    rule_still_improving,
    rule_weak_rare_classes,
)
from detlit.reporting.document import (
    NO_VALUE,
    Block,
    Callout,
    Code,
    Document,
    Figure,
    Gallery,
    Heading,
    Note,
    Table,
    Text,
    render_html,
    render_markdown,
)
from detlit.reporting.run_reader import (
    OVERALL_EXTRA,
    PER_CLASS_KEYS,
    DataSplit,
    FinalMetrics,
    Run,
    Series,
    choose_checkpoint,
    float_or_nan,
    locate,
    metrics_from_evaluation,
    metrics_from_scalars,
    read_eval,
    read_run,
    read_split,
)

log = logging.getLogger("detlit.reporting.report")

# --- settings ------------------------------------------------------------------------------------

MAX_IMAGES = 100  # validation images the model runs on for the example images
EXAMPLES = 4  # best and worst images shown, each
EXAMPLE_SIZE = 480  # pixels: drawn examples are scaled down to fit this square
PLOT_DPI = 90
LOSS_PARTS = ("loss", "loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc")
IGNORED_TAGS = ("hp_metric", "epoch")


# === the model on validation images =============================================================


@dataclass
class ImageOutcome:
    """Predictions on one validation image, judged at the per-class score thresholds."""

    record: ImageRecord
    boxes: np.ndarray  # kept detections, XYXY original pixels
    scores: np.ndarray
    labels: np.ndarray
    gt_boxes: np.ndarray  # XYXY original pixels, crowd regions included
    gt_labels: np.ndarray
    gt_crowd: np.ndarray
    tp: int
    fp: int
    fn: int

    @property
    def errors(self) -> int:
        return self.fp + self.fn

    @property
    def f1(self) -> float:
        """2 TP / (2 TP + FP + FN); 1.0 for an image without objects where nothing was detected."""
        denominator = 2 * self.tp + self.fp + self.fn
        return 1.0 if denominator == 0 else 2 * self.tp / denominator


@dataclass
class Examples:
    """The model's outcome on (up to ``MAX_IMAGES``) validation images."""

    checkpoint: Path
    outcomes: list[ImageOutcome]
    class_names: list[str]
    thresholds: np.ndarray
    threshold_source: str
    total_images: int
    unreadable: int
    evaluation: Evaluation | None


def spread(records: Sequence[ImageRecord], count: int) -> list[ImageRecord]:
    """``count`` records evenly spaced over the list (all of them when there are fewer)."""
    if count >= len(records):
        return list(records)
    if count <= 0:
        return []
    indices = sorted({round(i) for i in np.linspace(0, len(records) - 1, count)})
    return [records[i] for i in indices]


def run_examples(
    checkpoint: Path,
    dataset: CocoDataset,
    max_images: int,
    device: str,
    thresholds: Sequence[float] | None = None,
    threshold_source: str = "",
) -> Examples:
    """Run a checkpoint on up to ``max_images`` images of ``dataset``; judge each image.

    Every detection the model keeps (detectron2's test threshold) goes into an evaluation of these
    images. An image's true and false positives and misses count the detections at or above
    ``thresholds``; by default the checkpoint's F1-optimal ones from its last validation, else
    those of this evaluation.

    Raises:
        WeightsError: the checkpoint cannot be loaded.
        DataError: an object's category is unknown to the model.
    """
    import torch

    from detlit.data.dataset import eval_target
    from detlit.evaluation.metric import DetectionMetrics
    from detlit.inference.predictor import Predictor, load_image

    predictor = Predictor.from_checkpoint(checkpoint, device=device, batch_size=4)
    names = list(predictor.label_map.names)
    predictor.score_thresholds[:] = predictor.module.cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST
    metric = DetectionMetrics(names)
    metric.warn_on_many_detections = False
    records = spread(dataset.images, max_images)
    predicted: list[tuple[ImageRecord, Any, dict[str, torch.Tensor]]] = []
    unreadable = 0
    for start in range(0, len(records), predictor.batch_size):
        arrays, kept = [], []
        for record in records[start : start + predictor.batch_size]:
            try:
                arrays.append(load_image(dataset.image_root / record.file_name))
                kept.append(record)
            except DataError as err:
                unreadable += 1
                log.warning("left out of the examples: %s", err)
        for record, output in zip(kept, predictor.predict(arrays), strict=True):
            target = eval_target(record, predictor.label_map)
            prediction = {
                "boxes": torch.as_tensor(output.boxes, dtype=torch.float64),
                "scores": torch.as_tensor(output.scores, dtype=torch.float64),
                "labels": torch.as_tensor(output.labels, dtype=torch.int64),
            }
            metric.update([prediction], [target])
            predicted.append((record, output, target))
    evaluation = metric.compute() if predicted else None
    if thresholds is None:
        saved = predictor.module.score_thresholds
        if saved is not None:
            thresholds, threshold_source = saved, "the checkpoint's F1-optimal score thresholds"
        elif evaluation is not None:
            thresholds = evaluation.score_thresholds()
            threshold_source = "the F1-optimal score thresholds on these images (the checkpoint holds none)"
        else:
            thresholds = [math.inf] * len(names)
    chosen = np.asarray(thresholds, dtype=np.float64)
    outcomes = [judge(record, output, target, chosen) for record, output, target in predicted]
    return Examples(checkpoint, outcomes, names, chosen, threshold_source, len(dataset.images), unreadable, evaluation)


def judge(record: ImageRecord, prediction: Any, target: Mapping[str, Any], thresholds: np.ndarray) -> ImageOutcome:
    """One image's detections at or above their class's threshold, matched to its objects."""
    from detlit.evaluation.drawing import match_predictions

    keep = prediction.scores >= thresholds[prediction.labels]
    boxes, scores, labels = prediction.boxes[keep], prediction.scores[keep], prediction.labels[keep]
    gt_boxes, gt_labels = target["boxes"].numpy(), target["labels"].numpy()
    gt_crowd = target["iscrowd"].numpy().astype(bool)
    matching = match_predictions(boxes, labels, scores, gt_boxes, gt_labels, gt_crowd)
    return ImageOutcome(
        record,
        boxes,
        scores,
        labels,
        gt_boxes,
        gt_labels,
        gt_crowd,
        tp=int(matching.true_positive.sum()),
        fp=int(matching.false_positive.sum()),
        fn=int(matching.missed.sum()),
    )


def pick_examples(outcomes: Sequence[ImageOutcome], count: int) -> tuple[list[ImageOutcome], list[ImageOutcome]]:
    """(best, worst): the ``count`` images with the most errors (FP + FN; then the lowest F1), and of
    the rest the ``count`` with the highest F1 (then the most objects found). Images with objects
    come first among the best: an empty image without detections is perfect, but shows nothing."""
    count = min(count, len(outcomes) // 2) if len(outcomes) < 2 * count else count
    worst = sorted(outcomes, key=lambda o: (-o.errors, o.f1, o.record.id))[:count]
    taken = {o.record.id for o in worst}
    rest = [o for o in outcomes if o.record.id not in taken]
    best = sorted(rest, key=lambda o: (o.tp + o.fn == 0, -o.f1, -o.tp, o.errors, o.record.id))[:count]
    return best, worst


def draw_outcome(outcome: ImageOutcome, image_root: Path, class_names: Sequence[str]) -> bytes:
    """One image with ground truth and kept predictions, coloured by outcome, as PNG bytes."""
    from detlit.evaluation.drawing import draw_comparison
    from detlit.inference.predictor import load_image

    image = load_image(image_root / outcome.record.file_name)
    # Scaled to the display size before drawing (up or down), so labels and lines read the same
    # on every example whatever the size of its image.
    height, width = image.shape[:2]
    scale = EXAMPLE_SIZE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    shown = np.asarray(Image.fromarray(image).resize(size, resample))
    drawing = draw_comparison(
        shown,
        outcome.boxes * scale,
        outcome.labels,
        outcome.scores,
        outcome.gt_boxes * scale,
        outcome.gt_labels,
        class_names,
        outcome.gt_crowd,
    )
    return png_bytes(drawing)


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


# === training curves ==============================================================================


Line: TypeAlias = tuple[str, Series, str]  # label, series, matplotlib line style
Panel: TypeAlias = tuple[str, list[Line]]


def _finite(series: Series) -> tuple[list[int], list[float]]:
    steps = [step for step, _ in series]
    values = [value if math.isfinite(value) else math.nan for _, value in series]
    return steps, values


def plot_panels(panels: Sequence[Panel], columns: int = 3) -> bytes:
    """Small line plots against the step, one panel per group, as PNG bytes."""
    rows = math.ceil(len(panels) / columns)
    cols = min(columns, len(panels))
    figure, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 2.9 * rows), squeeze=False)
    for axis in axes.flat[len(panels) :]:
        axis.set_visible(False)
    for axis, (title, lines) in zip(axes.flat, panels, strict=False):
        for label, series, style in lines:
            steps, values = _finite(series)
            marker = "o" if len(series) <= 30 else None
            axis.plot(steps, values, style, label=label, marker=marker, markersize=3)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("step", fontsize=8)
        axis.tick_params(labelsize=8)
        axis.grid(alpha=0.3)
        if len(lines) > 1:
            axis.legend(fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=PLOT_DPI)
    plt.close(figure)
    return buffer.getvalue()


def curve_figures(scalars: Mapping[str, Series]) -> list[tuple[str, str, bytes]]:
    """(name, caption, PNG) of the training-curve figures the event files allow."""
    used: set[str] = set(IGNORED_TAGS)
    figures = []

    loss_names = [*LOSS_PARTS]
    loss_names += sorted(
        {t.split("/", 1)[1] for t in scalars if t.split("/", 1)[0] in ("train", "val") and "/loss" in t}
        - set(LOSS_PARTS)
    )
    panels: list[Panel] = []
    for part in loss_names:
        lines = [
            (f"{stage}/{part}", scalars.get(f"{stage}/{part}", []), style)
            for stage, style in (("train", "-"), ("val", "--"))
        ]
        lines = [line for line in lines if line[1]]
        used.update(line[0] for line in lines)
        if lines:
            panels.append((part, lines))
    if panels:
        figures.append(
            ("losses", "Losses: training (solid) and validation (dashed), each part on its own.", plot_panels(panels))
        )

    panels = []
    rates = [(tag, scalars[tag], "-") for tag in sorted(scalars) if tag.startswith("lr-") or tag.startswith("lr/")]
    if rates:
        panels.append(("learning rate", rates))
    if scalars.get("train/grad_norm"):
        panels.append(("gradient norm", [("train/grad_norm", scalars["train/grad_norm"], "-")]))
    for panel in panels:
        used.update(line[0] for line in panel[1])
    if panels:
        figures.append(
            ("optimisation", "Learning rate per parameter group, and the gradient norm.", plot_panels(panels, 2))
        )

    groups = (
        ("AP", ("map", "map50", "map75")),
        ("AP by object size", ("map_small", "map_medium", "map_large")),
        ("AR", ("mar1", "mar10", "mar100", "mar_small", "mar_medium", "mar_large")),
        ("precision / recall / F1", OVERALL_EXTRA),
    )
    panels = []
    for title, names in groups:
        lines = [
            (f"val/{n}", scalars[f"val/{n}"], "--" if "@thr" in n else "-") for n in names if scalars.get(f"val/{n}")
        ]
        if lines:
            panels.append((title, lines))
    for prefix, title in (("val/ap/", "AP per class"), ("val/ap50/", "AP50 per class"), ("val/f1/", "F1 per class")):
        lines = [(tag[len(prefix) :], scalars[tag], "-") for tag in sorted(scalars) if tag.startswith(prefix)]
        if lines:
            panels.append((title, lines))
            used.update(prefix + line[0] for line in lines)
    for panel in panels:
        used.update(line[0] for line in panel[1])
    if panels:
        figures.append(("validation", "Validation metrics after each validation.", plot_panels(panels)))

    rest = [tag for tag in sorted(scalars) if tag not in used and not tag.startswith(("val/threshold/", "val/ar100/"))]
    rest = [tag for tag in rest if not re.match(r"val/(precision|recall)(@thr)?/", tag)]
    if rest:
        panels = [(tag, [(tag, scalars[tag], "-")]) for tag in rest[:12]]
        figures.append(("other", "Other logged scalars.", plot_panels(panels)))
    return figures


# === the sections ================================================================================


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return NO_VALUE
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    number = float_or_nan(value)
    return f"{number:.{digits}f}" if math.isfinite(number) else NO_VALUE


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours} h {minutes:02d} min {secs:02d} s" if hours else f"{minutes} min {secs:02d} s"


@dataclass
class Context:
    """Everything the sections are built from."""

    run: Run
    train: DataSplit
    val: DataSplit
    metrics: FinalMetrics | None
    eval_dir: Path | None
    examples: Examples | None
    examples_note: str | None
    class_names: list[str]
    category_ids: list[int] | None

    def objects_by_class(self, split: DataSplit) -> dict[str, int]:
        """Objects of a split per class name (matched by category id when the ids are known)."""
        per_id = split.objects_per_category
        if not per_id:
            return {}
        if self.category_ids is not None and len(self.category_ids) == len(self.class_names):
            return {name: per_id.get(cid, 0) for name, cid in zip(self.class_names, self.category_ids, strict=True)}
        names = {}
        if split.dataset is not None:
            names = {c.name: per_id.get(c.id, 0) for c in split.dataset.categories}
        return {name: names[name] for name in self.class_names if name in names}

    def per_class_metrics(self) -> FinalMetrics | None:
        """The metrics whose per-class rows the report shows: the final metrics, unless they have no
        per-class number at all (event files of older runs) and the report ran the model itself."""
        metrics = self.metrics
        has_numbers = metrics is not None and any(
            math.isfinite(float_or_nan(row.get(key))) for row in metrics.per_class for key in PER_CLASS_KEYS
        )
        if has_numbers or self.examples is None or self.examples.evaluation is None:
            return metrics
        return metrics_from_evaluation(
            self.examples.evaluation,
            f"the model run by this report on {len(self.examples.outcomes)} validation images (the event files "
            "hold no per-class numbers)",
        )


HARDWARE_KEYS = ("platform", "cpu cores", "torch threads", "cuda available", "gpus")


def _setting_text(value: Any) -> str:
    return "null" if value is None else str(value)


def summary_section(context: Context) -> list[Block]:
    run = context.run
    blocks: list[Block] = [Heading("Run summary")]
    started, ended = run.log.started, run.log.ended
    rows = [["run folder", str(run.folder)]]
    if started and ended:
        rows += [
            ["started", started.isoformat(sep=" ")],
            ["duration (first to last line of run.log)", _duration((ended - started).total_seconds())],
        ]
    elif run.wall_times:
        first, last = run.wall_times
        rows.append(["duration (TensorBoard wall times)", _duration(last - first)])
    steps = max(
        (series[-1][0] for tag, series in run.scalars.items() if tag.startswith("train/") and series), default=None
    )
    epochs = run.scalars.get("epoch")
    if steps is not None:
        rows.append(["optimizer steps", str(steps + 1)])
    if epochs:
        rows.append(["epochs", f"{int(max(v for _, v in epochs)) + 1}"])
    environment = run.log.environment or collect_env()
    rows += [[key, value] for key, value in environment.items() if key in HARDWARE_KEYS]
    trainer = run.config.get("trainer")
    trainer = trainer if isinstance(trainer, dict) else {}
    for key in ("accelerator", "devices", "strategy", "precision", "max_epochs"):
        if key in trainer:
            rows.append([f"trainer.{key}", _setting_text(trainer[key])])
    rows.append(["checkpoints", ", ".join(p.name for p in run.checkpoints) or "none"])
    if run.log.command:
        rows.append(["command", f"`{run.log.command}`"])
    blocks.append(Table(["what", "value"], rows))

    width = max((len(key) for key in environment), default=0)
    versions = "\n".join(f"{key:<{width}}  {value}" for key, value in environment.items() if key not in HARDWARE_KEYS)
    if run.log.environment:
        blocks.append(Code(versions, summary="versions (recorded in run.log)"))
    else:
        blocks.append(Code(versions, summary="versions (of this machine: run.log records none)"))
    if run.config_text is not None:
        blocks.append(Code(run.config_text, summary="config.yaml", language="yaml"))
    if run.config_note:
        blocks.append(Note(run.config_note + "; data paths come from hparams.yaml where it has them."))

    blocks.append(Heading("Dataset fingerprint", 3))
    blocks.append(
        Text(
            "sha256 of each json file, and of its image file names sorted (one per line): equal fingerprints, "
            "same data."
        )
    )
    rows = []
    for split in (context.train, context.val):
        if split.configured_json is None:
            continue
        images = str(len(split.dataset.images)) if split.dataset is not None else NO_VALUE
        rows.append(
            [
                split.name,
                str(split.configured_json),
                images,
                f"`{split.json_sha256}`" if split.json_sha256 else NO_VALUE,
                f"`{split.names_sha256}`" if split.names_sha256 else NO_VALUE,
            ]
        )
    if rows:
        blocks.append(Table(["split", "json", "images", "sha256 of the json", "sha256 of the file names"], rows, {2}))
    for split in (context.train, context.val):
        if split.note and split.json_sha256 is None:
            blocks.append(Note(split.note))
    return blocks


def recommendations(context: Context) -> list[Recommendation]:
    """Every rule on the run's numbers; the ones that fired."""
    run, metrics = context.run, context.metrics
    found: list[Recommendation | None] = []
    instances = context.objects_by_class(context.train)
    per_class = context.per_class_metrics()
    if per_class is not None and instances:
        found.append(
            rule_weak_rare_classes({r["class"]: float_or_nan(r["ap"]) for r in per_class.per_class}, instances)
        )
    if metrics is not None and context.train.report is not None:
        sizes = context.train.report.stats.get("box_sizes", {})
        overall = metrics.overall
        found.append(
            rule_small_objects(
                sizes,
                overall.get("map", math.nan),
                overall.get("map_small", math.nan),
                run.data_setting("min_size_test"),
            )
        )
    found.append(rule_overfitting(run.series("train/loss"), run.series("val/loss")))
    found.append(rule_still_improving(run.series("val/map")))
    train_objects = None
    if context.train.report is not None:
        train_objects = int(sum(context.train.report.stats.get("per_category", {}).values())) or None
    found.append(rule_boxes_dropped(run.series("train/boxes_dropped_by_aug"), train_objects))
    if metrics is not None and metrics.confusion is not None:
        found.append(rule_confusion(metrics.class_names, metrics.confusion))
    elif context.examples is not None and context.examples.evaluation is not None:
        found.append(rule_confusion(context.examples.class_names, context.examples.evaluation.confusion))
    found.append(rule_skipped_images(run.series("train/skipped_images"), run.series("val/skipped_images")))
    found.append(rule_nonfinite_batches(run.series("train/skipped_nonfinite")))
    errors: Counter[str] = Counter()
    for split in (context.train, context.val):
        if split.report is not None:
            errors.update(f"{split.name} {f.kind}" for f in split.report.errors)
    found.append(rule_dataset_errors(errors))
    return [r for r in found if r is not None]


def findings_section(context: Context) -> list[Block]:
    blocks: list[Block] = [Heading("Findings and recommendations")]
    found = recommendations(context)
    if not found:
        blocks.append(Callout("Nothing alarming", NOTHING_ALARMING, "ok"))
    for item in found:
        blocks.append(Callout(item.title, f"{item.evidence} {item.advice}"))
    missing = []
    if context.metrics is None:
        missing.append("final metrics")
    if context.train.report is None:
        missing.append("training-set statistics")
    if missing:
        blocks.append(Note(f"Rules that need the {' and '.join(missing)} could not run: see those sections."))
    return blocks


def metrics_section(context: Context) -> list[Block]:
    blocks: list[Block] = [Heading("Final metrics")]
    metrics = context.metrics
    if metrics is None:
        blocks.append(
            Note(
                "No validation metrics: the event files hold no `val/map` (validation was off or never ran), no "
                "--eval folder was given, and the model could not be run on validation images. "
                "`python -m detlit.evaluate --ckpt CHECKPOINT --json VAL.json --images VAL/ --out EVAL` and "
                "`--eval EVAL` fill this section."
            )
        )
        return blocks
    blocks.append(Text(f"Source: {metrics.source}."))
    rows = [[COCO_TITLES.get(k, k), _num(metrics.overall.get(k))] for k in COCO_NAMES]
    titles = {"precision": "precision", "recall": "recall", "f1": "F1"}
    threshold = metrics.score_threshold if metrics.score_threshold is not None else 0.5
    # Runs logged before these numbers existed have none of them: their rows are left out.
    if any(math.isfinite(float_or_nan(metrics.overall.get(name))) for name in OVERALL_EXTRA):
        for name in ("precision", "recall", "f1"):
            rows.append([f"{titles[name]} (each class at its F1-optimal threshold)", _num(metrics.overall.get(name))])
        for name in ("precision", "recall", "f1"):
            rows.append([f"{titles[name]} at score {threshold:g}", _num(metrics.overall.get(f"{name}@thr"))])
    blocks.append(Table(["metric", "value"], rows, {1}))

    blocks.append(Heading("Per class", 3))
    per_class = context.per_class_metrics() or metrics
    if per_class is not metrics:
        blocks.append(Text(f"Source: {per_class.source}."))
    instances = context.objects_by_class(context.train)
    val_objects = context.objects_by_class(context.val)
    rows = []
    for row in per_class.per_class:
        name = str(row["class"])
        objects = row.get("objects")
        rows.append(
            [
                name,
                _num(instances.get(name)),
                _num(objects if objects is not None else val_objects.get(name)),
                *(_num(row.get(k)) for k in ("ap", "ap50", "precision", "recall", "f1", "threshold")),
            ]
        )
    columns = ["class", "training objects", "validation objects", "AP", "AP50", "precision", "recall", "F1"]
    blocks.append(Table([*columns, "F1-optimal threshold"], rows, set(range(1, 9))))
    blocks.append(
        Text(
            "AP is COCO's AP at IoU .50:.95; precision, recall and F1 are at IoU 0.5 with each class at the score "
            "threshold that maximises its F1 (`-`: not logged, or no detection ever matched)."
        )
    )
    return blocks


def curves_section(context: Context) -> list[Block]:
    blocks: list[Block] = [Heading("Training curves")]
    if not context.run.scalars:
        blocks.append(Note("The run folder has no readable TensorBoard event file: no curves."))
        return blocks
    for name, caption, png in curve_figures(context.run.scalars):
        blocks.append(Figure(f"curves_{name}", png, caption))
    if not context.run.series("val/map"):
        blocks.append(Note("No validation scalars in the event files: validation was off or never finished."))
    return blocks


EVAL_PICTURES = (
    ("pr_curves", "Precision against recall per class (IoU 0.5)."),
    ("f1_curves", "F1 against the score threshold per class; dotted: each class's F1-optimal threshold."),
    (
        "confusion_matrix",
        "Confusion matrix: rows true class (last: false detections), columns predicted (last: missed).",
    ),
)


def evaluation_pictures_section(context: Context) -> list[Block]:
    blocks: list[Block] = [Heading("Precision-recall, F1 and confusion")]
    if context.eval_dir is not None:
        blocks.append(Text(f"From {context.eval_dir}."))
        gallery = Gallery([], columns=3)
        blocks.append(gallery)
        for name, caption in EVAL_PICTURES:
            path = context.eval_dir / f"{name}.png"
            if path.is_file():
                gallery.figures.append(Figure(f"eval_{name}", path.read_bytes(), caption))
            elif name == "confusion_matrix" and context.metrics is not None and context.metrics.confusion is not None:
                blocks.append(Note(f"{path.name} is missing; the counts from metrics.json:"))
                blocks.append(_confusion_table(context.metrics.class_names, context.metrics.confusion))
            else:
                blocks.append(Note(f"{path} is missing."))
        return blocks
    examples = context.examples
    if examples is None or examples.evaluation is None:
        blocks.append(
            Note(
                "Not available: no --eval folder, and the model was not run on validation images "
                f"({context.examples_note or 'see the example images section'})."
            )
        )
        return blocks
    blocks.append(
        Text(
            f"On the {len(examples.outcomes)} validation images the report ran the model on (of "
            f"{examples.total_images}); `python -m detlit.evaluate` and `--eval` give them for the whole set."
        )
    )
    gallery = Gallery([], columns=3)
    with tempfile.TemporaryDirectory() as folder:
        for name, caption in EVAL_PICTURES:
            draw: Callable[[Evaluation, Path], Path] = getattr(plots, name)
            path = draw(examples.evaluation, Path(folder) / f"{name}.png")
            gallery.figures.append(Figure(f"eval_{name}", path.read_bytes(), caption))
    blocks.append(gallery)
    return blocks


def _confusion_table(names: Sequence[str], counts: np.ndarray) -> Table:
    labels = [*names, "background"]
    rows = [[labels[i], *(str(int(v)) for v in counts[i])] for i in range(min(len(labels), len(counts)))]
    return Table(["true \\ predicted", *labels], rows, set(range(1, len(labels) + 1)))


LEGEND = (
    "Green: detection that found an object; red dashed: false detection; orange: missed object; grey dashed: crowd "
    "region (or a detection inside one)."
)


def examples_section(context: Context) -> list[Block]:
    blocks: list[Block] = [Heading("Best and worst validation images")]
    examples = context.examples
    if examples is None:
        blocks.append(Note(f"No example images: {context.examples_note}."))
        return blocks
    dataset = context.val.dataset
    assert dataset is not None
    blocks.append(
        Text(
            f"The model ({examples.checkpoint.name}) ran on {len(examples.outcomes)} of the {examples.total_images} "
            f"validation images (evenly spaced); detections kept at {examples.threshold_source}. Images are ranked "
            "by their errors (false detections + missed objects), then by F1. " + LEGEND
        )
    )
    if examples.unreadable:
        blocks.append(Note(f"{examples.unreadable} images could not be read and were left out."))
    best, worst = pick_examples(examples.outcomes, EXAMPLES)
    for title, chosen, prefix in (("Worst", worst, "worst"), ("Best", best, "best")):
        if not chosen:
            continue
        figures = []
        for rank, outcome in enumerate(chosen, 1):
            objects = outcome.tp + outcome.fn
            caption = (
                f"{outcome.record.file_name} (id {outcome.record.id}): {objects} objects, {outcome.tp} found, "
                f"{outcome.fp} false, {outcome.fn} missed, F1 {outcome.f1:.2f}"
            )
            png = draw_outcome(outcome, dataset.image_root, examples.class_names)
            figures.append(Figure(f"{prefix}_{rank}", png, caption))
        blocks += [Heading(title, 3), Gallery(figures)]
    return blocks


def dataset_section(context: Context) -> list[Block]:
    blocks: list[Block] = [Heading("Dataset statistics")]
    splits = [s for s in (context.train, context.val) if s.report is not None]
    for split in (context.train, context.val):
        if split.report is None and split.note:
            blocks.append(Note(f"{split.name}: {split.note}."))
    if not splits:
        return blocks
    blocks.append(
        Text(
            "From `python -m detlit.check` on each json (image headers read, images not decoded). Objects exclude "
            "crowd regions."
        )
    )
    columns = ["", *(s.name for s in splits)]
    keys = (
        ("images", lambda st: st["images"]),
        ("annotations", lambda st: st["annotations"]),
        ("categories", lambda st: st["categories"]),
        ("images without objects", lambda st: st["empty_images"]),
        ("objects per image (min / mean / max)", lambda st: "{min} / {mean} / {max}".format(**st["boxes_per_image"])),
        ("small / medium / large objects", lambda st: "{small} / {medium} / {large}".format(**st["box_sizes"])),
        ("crowd regions", lambda st: st["crowd"]),
    )
    rows = []
    for label, get in keys:
        row = [label]
        for split in splits:
            assert split.report is not None
            try:
                row.append(str(get(split.report.stats)))
            except (KeyError, TypeError):
                row.append(NO_VALUE)
        rows.append(row)
    blocks.append(Table(columns, rows, set(range(1, len(columns)))))

    categories: dict[str, list[str]] = {}
    for position, split in enumerate(splits):
        assert split.report is not None
        for key, count in split.report.stats.get("per_category", {}).items():
            categories.setdefault(str(key), [NO_VALUE] * len(splits))[position] = str(count)
    blocks.append(Heading("Objects per category", 3))
    blocks.append(
        Table(
            ["category (id name)", *(s.name for s in splits)],
            [[k, *v] for k, v in categories.items()],
            set(range(1, len(splits) + 1)),
        )
    )

    blocks.append(Heading("Findings of the check", 3))
    rows = []
    for split in splits:
        assert split.report is not None
        counted = Counter((f.severity.value, f.kind) for f in split.report.findings)
        first: dict[tuple[str, str], str] = {}
        for finding in split.report.findings:
            first.setdefault((finding.severity.value, finding.kind), finding.message)
        order = {"error": 0, "warning": 1, "info": 2}
        for (severity, kind), count in sorted(counted.items(), key=lambda item: (order.get(item[0][0], 3), item[0][1])):
            rows.append([split.name, severity, kind, str(count), first[(severity, kind)]])
    if rows:
        blocks.append(Table(["split", "severity", "kind", "count", "first example"], rows, {3}))
    else:
        blocks.append(Text("The check found nothing to report."))
    return blocks


SECTIONS = (
    summary_section,
    findings_section,
    metrics_section,
    curves_section,
    evaluation_pictures_section,
    examples_section,
    dataset_section,
)


# === building and writing ========================================================================


def _class_info(run: Run, metrics: FinalMetrics | None, train: DataSplit) -> tuple[list[str], list[int] | None]:
    """Class names and original category ids, from the evaluation, the run's hyper-parameters or the data."""
    names = run.model_setting("class_names")
    ids = run.model_setting("category_ids")
    if metrics is not None and metrics.category_ids is not None:
        return metrics.class_names, metrics.category_ids
    if isinstance(names, list) and names:
        return [str(n) for n in names], [int(i) for i in ids] if isinstance(ids, list) else None
    if train.dataset is not None:
        try:
            label_map = train.dataset.label_map()
        except DataError:
            return [], None
        return list(label_map.names), list(label_map.category_ids)
    return [], None


def build_report(
    run_dir: Path,
    eval_dir: Path | None = None,
    device: str = "cpu",
    max_images: int = MAX_IMAGES,
) -> Document:
    """Read a run folder (and an evaluation folder) and build the report.

    Raises:
        ConfigError: ``run_dir`` is not a run folder, or ``eval_dir`` is not an evaluation folder.
    """
    run = read_run(run_dir)
    log.info("read %s: %d scalar tags, %d checkpoints", run_dir, len(run.scalars), len(run.checkpoints))
    metrics, eval_document = read_eval(eval_dir) if eval_dir is not None else (None, {})
    train, val = read_split(run, "train"), read_split(run, "val")
    class_names, category_ids = _class_info(run, metrics, train)
    if metrics is None:
        metrics = metrics_from_scalars(run.scalars, class_names)

    examples, note = None, None
    evaluated = (
        locate(eval_document.get("source"), [eval_dir.resolve(), *eval_dir.resolve().parents]) if eval_dir else None
    )
    checkpoint, why = choose_checkpoint(run, evaluated)
    if max_images <= 0:
        note = "--max-images 0"
    elif checkpoint is None:
        note = f"no checkpoint in {run.folder / 'checkpoints'}"
    elif val.dataset is None or val.image_root is None:
        note = val.note or "the validation images were not found"
    else:
        thresholds, source = None, ""
        if metrics is not None and eval_dir is not None:
            # NaN / null: no threshold ever gave a true positive; such a class keeps no detection
            thresholds = [
                t if math.isfinite(t) else math.inf for t in (float_or_nan(r["threshold"]) for r in metrics.per_class)
            ]
            source = "the F1-optimal score thresholds of --eval"
        log.info("running %s (%s) on up to %d validation images", checkpoint, why, max_images)
        try:
            examples = run_examples(checkpoint, val.dataset, max_images, device, thresholds, source)
        except (DetlitError, RuntimeError, OSError) as err:
            note = f"{checkpoint} could not be run ({err})"
            log.warning("example images left out: %s", note)
    if metrics is None and examples is not None and examples.evaluation is not None:
        metrics = metrics_from_evaluation(
            examples.evaluation,
            f"the model run by this report on {len(examples.outcomes)} validation images (the event files hold no "
            "validation metrics)",
        )
    context = Context(run, train, val, metrics, eval_dir, examples, note, class_names, category_ids)
    blocks: list[Block] = []
    for section in SECTIONS:
        blocks += section(context)
    subtitle = f"Run folder `{run.folder}`, report written {datetime.now().isoformat(sep=' ', timespec='seconds')}."
    return Document(f"Training report: {run.name}", subtitle, blocks)


@dataclass
class OutputPaths:
    html: Path
    markdown: Path
    files: Path

    @classmethod
    def for_html(cls, html_path: Path) -> OutputPaths:
        return cls(html_path, html_path.with_suffix(".md"), html_path.with_name(f"{html_path.stem}_files"))


def prepare_outputs(out: Path, overwrite: bool) -> OutputPaths:
    """The report's three paths; an existing one stops here unless ``overwrite``.

    Raises:
        ConfigError: ``out`` does not end in .html, or the report exists and ``overwrite`` is off.
    """
    if out.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(f"--out {out} must end in .html (the Markdown copy goes next to it)")
    paths = OutputPaths.for_html(out)
    existing = [p for p in (paths.html, paths.markdown, paths.files) if p.exists()]
    if existing and not overwrite:
        raise ConfigError(
            f"{existing[0]} already exists; pass --overwrite to replace the report, or choose another --out"
        )
    return paths


def write_report(document: Document, paths: OutputPaths) -> None:
    """Write the HTML page, the Markdown copy and its pictures (stale pictures of an older report removed)."""
    paths.html.parent.mkdir(parents=True, exist_ok=True)
    paths.files.mkdir(exist_ok=True)
    figures = document.figures()
    names = {f"{figure.name}.png" for figure in figures}
    for old in paths.files.glob("*.png"):
        if old.name not in names:
            old.unlink()
    for figure in figures:
        (paths.files / f"{figure.name}.png").write_bytes(figure.png)
    paths.markdown.write_text(render_markdown(document, paths.files.name), encoding="utf-8")
    paths.html.write_text(render_html(document), encoding="utf-8")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m detlit.report", description="Write the report of a training run.")
    parser.add_argument("--run", type=Path, required=True, help="run folder, e.g. runs/sample/version_0")
    parser.add_argument("--eval", type=Path, help="output folder of python -m detlit.evaluate for this run")
    parser.add_argument("--out", type=Path, help="the HTML file (default RUN/report.html); the .md goes beside it")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report")
    parser.add_argument("--device", default="cpu", help="device for the example images: cpu, cuda or cuda:N")
    parser.add_argument(
        "--max-images", type=int, default=MAX_IMAGES, help="validation images to run the model on (0: none)"
    )
    return parser.parse_args(argv)


def report_main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    paths = prepare_outputs(args.out or args.run / "report.html", args.overwrite)
    document = build_report(args.run, args.eval, args.device, args.max_images)
    write_report(document, paths)
    print(f"report: {paths.html}\nMarkdown: {paths.markdown} (pictures in {paths.files})")
    return 0


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_cli(report_main, argv))


if __name__ == "__main__":
    main()
