"""The report's sections: each a function of the :class:`Context` that returns document blocks.

Run summary, findings and recommendations (:mod:`detlit.reporting.advice`), final metrics,
training curves (:mod:`detlit.pictures.curves`), precision-recall / F1 / confusion pictures, the
best and worst validation images (:mod:`detlit.reporting.examples`), and the dataset statistics.
Whatever a run folder lacks is named in its section.
"""

from __future__ import annotations

import math
import shlex
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detlit.common.env import collect_env
from detlit.common.outputs import same_file
from detlit.common.ranges import is_whole
from detlit.common.run_folder import CONFIG, HPARAMS, METRICS, RECORD, RunFolder
from detlit.data.checks import COCO_SMALL, Resize, sliced_sizes
from detlit.evaluation.cocoeval import COCO_NAMES, COCO_TITLES
from detlit.evaluation.error_breakdown import DESCRIPTIONS, MAIN_TYPES, TYPES, ErrorBreakdown
from detlit.evaluation.evaluation import Evaluation
from detlit.pictures import plots
from detlit.pictures.curves import curve_figures
from detlit.reporting.advice import (
    NOTHING_ALARMING,
    Recommendation,
    rule_boxes_dropped,
    rule_confusion,
    rule_dataset_errors,
    rule_error_breakdown,
    rule_nonfinite_batches,
    rule_overfitting,
    rule_skipped_images,
    rule_slicing,
    rule_small_objects,
    rule_still_improving,
    rule_unfinished_schedule,
    rule_weak_rare_classes,
)
from detlit.reporting.document import NO_VALUE, Block, Callout, Code, Figure, Gallery, Heading, Note, Table, Text
from detlit.reporting.examples import EXAMPLES, Examples, draw_outcome, pick_examples
from detlit.reporting.run_reader import (
    OVERALL_EXTRA,
    PER_CLASS_KEYS,
    TENSORBOARD,
    DataSplit,
    FinalMetrics,
    Run,
    choose_checkpoint,
    float_or_nan,
    metrics_from_evaluation,
)


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
    test: DataSplit | None = None  # only when the run's config names data.test_json

    @property
    def splits(self) -> list[DataSplit]:
        """The run's data splits: train, val, and test when the config names one."""
        return [self.train, self.val, *([self.test] if self.test is not None else [])]

    def evaluated_split(self) -> DataSplit | None:
        """The split whose objects the final metrics counted: the one whose json the evaluation
        read (``--eval``), else val (the run's own validation)."""
        evaluated = self.metrics.evaluated_json if self.metrics is not None else None
        if evaluated is None:
            return self.val
        target = Path(evaluated)
        for split in self.splits:
            if split.json_path is not None and target.exists() and same_file(split.json_path, target):
                return split
        return None

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
        per-class number at all (the metrics of older runs) and the report ran the model itself."""
        metrics = self.metrics
        has_numbers = metrics is not None and any(
            math.isfinite(float_or_nan(row.get(key))) for row in metrics.per_class for key in PER_CLASS_KEYS
        )
        if has_numbers or self.examples is None or self.examples.evaluation is None:
            return metrics
        return metrics_from_evaluation(
            self.examples.evaluation,
            f"the model run by this report on {len(self.examples.outcomes)} validation images (no per-class "
            f"numbers in {self.run.metrics_source})",
        )


HARDWARE_KEYS = ("platform", "cpu cores", "torch threads", "cuda available", "gpus")


def _setting_text(value: Any) -> str:
    return "null" if value is None else str(value)


STOPPED_BY = {
    "max_epochs": "trainer.max_epochs reached",
    "max_steps": "trainer.max_steps reached",
    "max_time": "trainer.max_time reached",
    "early_stopping": "early stopping",
    "SIGTERM": "SIGTERM (resume with --ckpt last)",
    "Ctrl-C": "Ctrl-C (resume with --ckpt last)",
    "a callback": "a callback (trainer.should_stop)",
    "diverged": "a loss or the model's outputs became NaN or infinite (the model diverged)",
}


def _schedule_rows(run: Run) -> list[list[str]]:
    """Optimizer steps and epochs done (and planned, with why training stopped, from the record)."""
    schedule = run.record.get("schedule")
    planned = schedule.get("planned") if isinstance(schedule, dict) else None
    planned = planned if isinstance(planned, dict) else {}
    rows = []
    if run.steps is not None:
        total = planned.get("total_steps")
        rows.append(["optimizer steps", f"{run.steps} of {total} planned" if total else str(run.steps)])
    if run.epochs is not None:
        most = planned.get("max_epochs")
        rows.append(["epochs", f"{run.epochs} of {most}" if isinstance(most, int) and most > 0 else str(run.epochs)])
    stopped = run.record.get("stopped_by")
    if isinstance(stopped, str):
        error = run.record.get("error")
        rows.append(["stopped by", f"{STOPPED_BY.get(stopped, stopped)}" + (f": {error}" if error else "")])
    elif run.record.get("status") == "running":
        rows.append(["stopped by", f"nothing yet: the run was still running, or was killed ({RECORD} says running)"])
    return rows


def summary_section(context: Context) -> list[Block]:
    run = context.run
    blocks: list[Block] = [Heading("Run summary")]
    started, ended = run.started, run.ended
    rows = [["run folder", str(run.folder)]]
    if started and ended:
        rows += [
            ["started", started.isoformat(sep=" ")],
            [f"duration ({run.timing})", _duration((ended - started).total_seconds())],
        ]
    elif run.wall_times:
        first, last = run.wall_times
        rows.append([f"duration (times in {run.metrics_source})", _duration(last - first)])
    rows += _schedule_rows(run)
    environment = run.environment or collect_env()
    rows += [[key, value] for key, value in environment.items() if key in HARDWARE_KEYS]
    trainer = run.config.get("trainer")
    trainer = trainer if isinstance(trainer, dict) else {}
    for key in ("accelerator", "devices", "strategy", "precision", "max_epochs"):
        if key in trainer:
            rows.append([f"trainer.{key}", _setting_text(trainer[key])])
    rows.append(["checkpoints", ", ".join(p.name for p in run.checkpoints) or "none"])
    if run.command:
        rows.append(["command", f"`{run.command}`"])
    blocks.append(Table(["what", "value"], rows))

    width = max((len(key) for key in environment), default=0)
    versions = "\n".join(f"{key:<{width}}  {value}" for key, value in environment.items() if key not in HARDWARE_KEYS)
    if run.environment:
        blocks.append(Code(versions, summary=f"versions (recorded in {run.versions_source})"))
    else:
        blocks.append(Code(versions, summary=f"versions (of this machine: {run.versions_source} records none)"))
    if run.config_text is not None:
        blocks.append(Code(run.config_text, summary=CONFIG, language="yaml"))
    if run.config_note:
        where = RECORD if run.keeps_records else HPARAMS
        blocks.append(Note(f"{run.config_note}; data paths come from {where} where it has them."))
    blocks += [Note(f"{note}.") for note in run.notes]

    blocks.append(Heading("Dataset fingerprint", 3))
    blocks.append(
        Text(
            "sha256 of each json file, and of its image file names sorted (one per line): equal fingerprints, "
            "same data."
        )
    )
    rows = []
    for split in context.splits:
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
    for split in context.splits:
        if split.note and split.json_sha256 is None:
            blocks.append(Note(split.note))
        if split.changed:
            blocks.append(
                Note(
                    f"{split.json_path} is not the {split.name} json the run trained on: {RECORD} records sha256 "
                    f"`{split.recorded_sha256}`; the statistics below are of the file as it is now."
                )
            )
    return blocks


def recommendations(context: Context) -> list[Recommendation]:
    """Every rule on the run's numbers; the ones that fired."""
    run, metrics = context.run, context.metrics
    found: list[Recommendation | None] = [_unfinished(run)]  # first: it explains the other numbers
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
    found.append(_slicing(context))
    found.append(rule_overfitting(run.series("train/loss"), run.series("val/loss")))
    found.append(rule_still_improving(run.series("val/map")))
    train_objects = None
    if context.train.report is not None:
        train_objects = int(sum(context.train.report.stats.get("per_category", {}).values())) or None
    found.append(rule_boxes_dropped(run.series("train/boxes_dropped_by_aug"), train_objects))
    if metrics is not None and metrics.errors is not None:
        found.append(rule_error_breakdown(metrics.errors.overall, metrics.errors.ap50, metrics.errors.counts))
    if metrics is not None and metrics.confusion is not None:
        found.append(rule_confusion(metrics.class_names, metrics.confusion))
    elif context.examples is not None and context.examples.evaluation is not None:
        shown = context.examples.evaluation
        found.append(
            rule_confusion(
                context.examples.class_names,
                shown.best_confusion if shown.best_confusion is not None else shown.confusion,
            )
        )
    found.append(rule_skipped_images(run.series("train/skipped_images"), run.series("val/skipped_images")))
    found.append(rule_nonfinite_batches(run.series("train/skipped_nonfinite")))
    errors: Counter[str] = Counter()
    for split in context.splits:
        if split.report is not None:
            errors.update(f"{split.name} {f.kind}" for f in split.report.errors)
    found.append(rule_dataset_errors(errors))
    return [r for r in found if r is not None]


def _unfinished(run: Run) -> Recommendation | None:
    """:func:`rule_unfinished_schedule` on the run's record (a 0.2 run kept none: no finding)."""
    if not run.keeps_records:
        return None
    schedule = run.record.get("schedule")
    planned = schedule.get("planned") if isinstance(schedule, dict) else None
    planned = planned if isinstance(planned, dict) else {}
    total, most = planned.get("total_steps"), planned.get("max_epochs")
    stopped = run.record.get("stopped_by")
    rates = next((run.series(tag) for tag in sorted(run.scalars) if tag.startswith(("lr-", "lr/"))), [])
    files = RunFolder(run.folder)
    optimizer = run.model_setting("optimizer")
    init = optimizer.get("init_args") if isinstance(optimizer, dict) else None
    peak = init.get("lr") if isinstance(init, dict) else None
    return rule_unfinished_schedule(
        stopped if isinstance(stopped, str) else None,
        run.steps,
        total if isinstance(total, int) else None,
        run.epochs,
        most if isinstance(most, int) and most > 0 else None,
        rates,
        f"python -m detlit.fit --config {_path(files.config, CONFIG)} --ckpt {_path(files.last_checkpoint, 'last')}",
        float(peak) if isinstance(peak, (int, float)) and not isinstance(peak, bool) else None,
    )


def _image_size(run: Run, key: str) -> int:
    """The run's ``data.<key>`` image size; the data module's default when the run has none."""
    value = run.data_setting(key)
    return int(value) if is_whole(value) and value > 0 else int(getattr(Resize(), key))


def _path(value: Path | str | None, placeholder: str) -> str:
    return shlex.quote(str(value)) if value else placeholder


def _slicing(context: Context) -> Recommendation | None:
    """:func:`rule_slicing` on the final metrics and the validation set's small objects, with the
    commands for this run's best checkpoint and data."""
    metrics, val, train, run = context.metrics, context.val, context.train, context.run
    if metrics is None or val.report is None or val.dataset is None:
        return None
    min_size, max_size = _image_size(run, "min_size_test"), _image_size(run, "max_size_test")
    images = val.dataset.images
    small = ~images.crowd & (images.effective_areas() < COCO_SMALL)
    sliced = sliced_sizes(val.dataset, small, min_size, max_size)
    if sliced is None:
        return None
    checkpoint, _ = choose_checkpoint(run)
    val_images = val.image_root or run.data_setting("val_images")
    command = (
        f"python -m detlit.evaluate --ckpt {_path(checkpoint, 'CHECKPOINT')} --json {_path(val.json_path, 'VAL.json')} "
        f"--images {_path(val_images, 'FOLDER')} --slice {sliced.size} --out eval/sliced-{sliced.size}"
    )
    train_images = train.image_root or run.data_setting("train_images")
    tile_command = (
        f"python -m detlit.tile --json {_path(train.json_path, 'TRAIN.json')} --images {_path(train_images, 'FOLDER')} "
        f"--out tiles --size {sliced.size}"
    )
    sizes = val.report.stats.get("box_sizes", {})
    return rule_slicing(
        metrics.overall.get("map_small", math.nan),
        metrics.overall.get("map_large", math.nan),
        int(sizes.get("small", 0)),
        int(sizes.get("large", 0)),
        tile=sliced.size,
        resized_side=sliced.resized,
        sliced_side=sliced.sliced,
        min_size_test=min_size,
        command=command,
        tile_command=tile_command,
    )


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
                f"No validation metrics: {context.run.metrics_source} holds no `val/map` (validation was off or never "
                "ran), no --eval folder was given, and the model could not be run on validation images. "
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
    evaluated = context.evaluated_split()
    split_objects = context.objects_by_class(evaluated) if evaluated is not None else {}
    rows = []
    for row in per_class.per_class:
        name = str(row["class"])
        objects = row.get("objects")
        rows.append(
            [
                name,
                _num(instances.get(name)),
                _num(objects if objects is not None else split_objects.get(name)),
                *(_num(row.get(k)) for k in ("ap", "ap50", "precision", "recall", "f1", "threshold")),
            ]
        )
    counted = {"val": "validation objects", "test": "test objects", "train": "training-set objects"}
    objects_column = counted.get(evaluated.name, "objects") if evaluated is not None else "objects evaluated"
    columns = ["class", "training objects", objects_column, "AP", "AP50", "precision", "recall", "F1"]
    blocks.append(Table([*columns, "F1-optimal threshold"], rows, set(range(1, 9))))
    blocks.append(
        Text(
            "AP is COCO's AP at IoU .50:.95; precision, recall and F1 are at IoU 0.5 with each class at the score "
            "threshold that maximises its F1 (`-`: not logged, or no detection ever matched)."
        )
    )
    if metrics.errors is not None:
        blocks += _error_blocks(metrics.errors)
    return blocks


ERROR_CLASS_ROWS = 20  # classes in the report's per-class error table: those that lose the most AP50


def _error_blocks(errors: ErrorBreakdown) -> list[Block]:
    """The AP50 lost per error type, over all classes and for the classes that lose the most."""
    blocks: list[Block] = [Heading("Where the AP50 is lost", 3)]
    blocks.append(
        Text(
            f"Each error type's dAP50 is the AP50 that fixing all its errors would add to {_num(errors.ap50)} "
            f"(IoU {errors.iou_threshold:g}; background: IoU at most {errors.background_iou:g} with every object; "
            "docs/inference.md, Error breakdown). FalsePos and FalseNeg change precision or recall alone: every false "
            "detection ranked last, every missed object left out."
        )
    )
    rows = [[kind, _num(errors.overall[kind]), str(errors.counts[kind]), DESCRIPTIONS[kind]] for kind in TYPES]
    blocks.append(Table(["error type", "dAP50", "errors", "what"], rows, {1, 2}))
    lost = np.nansum(np.stack([errors.per_class[kind] for kind in MAIN_TYPES]), axis=0)
    shown = [int(i) for i in np.argsort(-lost, kind="stable")[:ERROR_CLASS_ROWS] if lost[i] > 0]
    if shown:
        rows = [
            [errors.class_names[i], _num(errors.class_ap50[i]), *(_num(errors.per_class[k][i]) for k in MAIN_TYPES)]
            for i in shown
        ]
        blocks.append(Table(["class", "AP50", *MAIN_TYPES], rows, set(range(1, len(MAIN_TYPES) + 2))))
        losing = int((lost > 0).sum())
        blocks.append(
            Text(f"Per class: the {len(shown)} classes that lose the most AP50 (of {losing} that lose some).")
        )
    return blocks


def curves_section(context: Context) -> list[Block]:
    blocks: list[Block] = [Heading("Training curves")]
    if not context.run.scalars:
        missing = "The run folder has no readable TensorBoard event file"
        blocks.append(
            Note(f"{METRICS} holds no values: no curves." if context.run.keeps_records else f"{missing}: no curves.")
        )
        return blocks
    for name, caption, png in curve_figures(context.run.scalars):
        blocks.append(Figure(f"curves_{name}", png, caption))
    if not context.run.series("val/map"):
        where = "the event files" if context.run.metrics_source == TENSORBOARD else context.run.metrics_source
        blocks.append(Note(f"No validation scalars in {where}: validation was off or never finished."))
    return blocks


EVAL_PICTURES = (
    ("pr_curves", "Precision against recall per class (IoU 0.5)."),
    ("f1_curves", "F1 against the score threshold per class; dotted: each class's F1-optimal threshold."),
    (
        "confusion_matrix",
        "Confusion matrix, each class at its F1-optimal score threshold: rows true class (last: false "
        "detections), columns predicted (last: missed).",
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
    for name, caption in EVAL_PICTURES:
        draw: Callable[[Evaluation], bytes] = getattr(plots, name)
        gallery.figures.append(Figure(f"eval_{name}", draw(examples.evaluation), caption))
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
    if examples.evaluation is not None:
        # The metric's own counts at these thresholds: the sum of the images' counts below.
        counts = examples.evaluation.counts_at(examples.thresholds)
        blocks.append(
            Text(
                f"On these images, at these thresholds (IoU {examples.evaluation.iou_threshold:g}): "
                f"{int(counts.tp.sum())} objects found, {int(counts.fp.sum())} false detections, "
                f"{int(counts.fn.sum())} objects missed."
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
    splits = [s for s in context.splits if s.report is not None]
    for split in context.splits:
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
