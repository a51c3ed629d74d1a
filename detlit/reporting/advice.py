"""The findings rules of the run report: a few numbers of a run in, a recommendation or None out.

Each rule (``rule_*``) reads the numbers it needs, compares them with thresholds kept as module
constants below, and when it fires returns a :class:`Recommendation` that names the numbers that
triggered it and what to change.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from detlit.reporting.run_reader import Series

# --- thresholds of the findings rules ------------------------------------------------------------

LOW_CLASS_AP = 0.25  # a class AP below this is low whatever the other classes reach
WEAK_CLASS_AP_RATIO = 0.7  # ... and so is one below 70% of the mean AP over classes
FEW_INSTANCES = 100  # training objects of a class: fewer than this is few
FEW_INSTANCES_RATIO = 0.5  # ... and so is fewer than half the median class
SMALL_OBJECT_SHARE = 0.3  # share of small training objects (COCO: area < 32 x 32) worth a look
SMALL_AP_RATIO = 0.7  # AP_small below 70% of the overall AP
SLICING_AP_RATIO = 0.5  # AP_small below half of AP_large ...
SLICING_AP_GAP = 0.2  # ... and at least this much below it ...
SLICING_MIN_OBJECTS = 20  # ... each measured on at least this many validation objects ...
SLICING_MIN_GAIN = 1.5  # ... and tiles would show the small objects at least this many times larger
OVERFIT_VAL_RISE = 0.1  # val/loss 10% above its lowest point while train/loss kept falling
MIN_VALIDATIONS = 3  # validations needed before a trend is read
STILL_RISING_WINDOW = 3  # the last validations a metric's trend is read over
STILL_RISING_GAIN = 0.01  # val/map gain over that window (absolute) that says "train longer" ...
STILL_RISING_LAST_GAIN = 0.005  # ... when the last validation still gained this much
DROPPED_BOXES_SHARE = 0.01  # boxes dropped by augmentation per epoch, as a share of training objects
CONFUSION_SHARE = 0.1  # share of a class's objects detected as one other class
CONFUSION_MIN_COUNT = 3  # ... and at least this many of them
SKIPPED_IMAGES = 1  # unreadable images skipped in an epoch (train) or a validation
NONFINITE_BATCHES = 1  # batches skipped for a non-finite loss
DATASET_ERRORS = 1  # errors found by the dataset check
UNFINISHED_SHARE = 0.98  # optimizer steps done below this share of the planned total: the schedule did not finish
ERROR_MIN_DAP = 0.02  # AP50 that fixing the costliest error type would add (0-1 units) for it to be a finding


@dataclass(frozen=True)
class Recommendation:
    """One finding about the run: the rule that fired, the numbers behind it, and what to do."""

    rule: str
    title: str
    evidence: str
    advice: str


NOTHING_ALARMING = (
    "No rule found anything alarming: the schedule finished, no weak rare class, no small-object gap, no "
    "over-fitting, no metric still rising at the end, no boxes dropped by augmentation, no confused class pair, "
    "no error type that costs much AP50, no skipped images, no dataset errors."
)


INTERRUPTIONS = ("SIGTERM", "Ctrl-C", "error", "diverged")


def rule_unfinished_schedule(
    stopped_by: str | None,
    steps: int | None,
    total_steps: int | None,
    epochs: int | None,
    max_epochs: int | None,
    learning_rate: Series,
    continue_command: str,
    peak_rate: float | None = None,
) -> Recommendation | None:
    """Training stopped before its learning-rate schedule ended (``trainer.max_time``, early
    stopping, an interruption, or fewer than :data:`UNFINISHED_SHARE` of the planned steps): the
    run's numbers are those of a model in mid-schedule, which explains them before anything else,
    so this finding comes first. ``peak_rate``: the optimizer's configured rate (else the highest
    one logged)."""
    short = steps is not None and bool(total_steps) and steps < UNFINISHED_SHARE * (total_steps or 0)
    cut = stopped_by in ("max_time", "early_stopping", "a callback", *INTERRUPTIONS)
    if not (short or cut):
        return None
    done = [f"{steps:,} of {total_steps:,} planned optimizer steps" if steps is not None and total_steps else ""]
    if epochs is not None and max_epochs:
        done.append(f"{epochs} of {max_epochs} epochs")
    what = " (" + ", ".join(d for d in done if d) + ")" if any(done) else ""
    reason = {
        "max_time": "trainer.max_time",
        "early_stopping": "early stopping",
        "a callback": "a callback",
        "diverged": "a loss that became NaN or infinite (the model diverged)",
        None: "something that left no record (the run was killed, or is still running)",
    }.get(stopped_by, stopped_by)
    evidence = f"Training stopped by {reason}{what}."
    rates = [value for _, value in learning_rate if math.isfinite(value)]
    top = peak_rate if peak_rate is not None and peak_rate > 0 else (max(rates) if rates else 0.0)
    if rates and top > 0:
        share = rates[-1] / top
        evidence += (
            f" The learning rate at the end was {rates[-1]:.3g}, {share:.0%} of the schedule's peak ({top:.3g})."
        )
    if stopped_by == "diverged":
        advice = (
            "The model diverged: its loss (or its outputs) became NaN or infinite, and training stopped. Continuing "
            "would diverge again: lower the learning rate (model.optimizer's lr), lengthen model.warmup_steps, or "
            "clip gradients (trainer.gradient_clip_val, e.g. 1.0), then train again; model.on_nonfinite_loss=skip "
            "skips such batches instead."
        )
    elif stopped_by == "early_stopping":
        advice = (
            "The learning-rate schedule is planned over trainer.max_epochs and early stopping cut it before it "
            "decayed, so the model never trained at a low rate. Train to the planned end without early "
            f"stopping, or set trainer.max_epochs to about {epochs or 'the epoch it stopped at'} so that the "
            "schedule decays within it; the other findings read numbers of an unfinished schedule."
        )
    else:
        longer = " with a longer --trainer.max_time" if stopped_by == "max_time" else ""
        advice = (
            "The numbers describe a model in mid-schedule, before its learning rate decayed; the other findings "
            f"read them. Continue where it stopped{longer}: `{continue_command}`."
        )
    return Recommendation("unfinished_schedule", "The learning-rate schedule did not finish", evidence, advice)


def rule_weak_rare_classes(ap: Mapping[str, float], instances: Mapping[str, int]) -> Recommendation | None:
    """Classes with a low AP and few training objects: more data for them helps most.

    Low: AP below :data:`LOW_CLASS_AP` or below :data:`WEAK_CLASS_AP_RATIO` x the mean AP. Few:
    fewer than :data:`FEW_INSTANCES` objects or fewer than :data:`FEW_INSTANCES_RATIO` x the
    median class's.
    """
    known = {name: value for name, value in ap.items() if math.isfinite(value) and name in instances}
    if not known:
        return None
    mean_ap = statistics.fmean(known.values())
    median = statistics.median(instances[name] for name in known)
    weak = [
        name
        for name, value in known.items()
        if (value < LOW_CLASS_AP or value < WEAK_CLASS_AP_RATIO * mean_ap)
        and (instances[name] < FEW_INSTANCES or instances[name] < FEW_INSTANCES_RATIO * median)
    ]
    if not weak:
        return None
    listed = "; ".join(f"'{name}': AP {known[name]:.3f} with {instances[name]} training objects" for name in weak)
    return Recommendation(
        "weak_rare_classes",
        "Classes with a low AP and few training objects",
        f"{listed} (mean AP over classes {mean_ap:.3f}, median {median:g} training objects per class).",
        "More labelled examples of these classes help most; until then, oversample the images that hold them "
        "(`data.repeat_factor_threshold`, e.g. 0.001) and check their labels with `python -m detlit.check`.",
    )


def rule_small_objects(
    box_sizes: Mapping[str, int], map_all: float, map_small: float, min_size_test: Any = None
) -> Recommendation | None:
    """Many small objects (at least :data:`SMALL_OBJECT_SHARE`) and AP_small below
    :data:`SMALL_AP_RATIO` x the overall AP: the input resolution or the anchors are too coarse."""
    total = sum(box_sizes.values())
    if total == 0 or not (math.isfinite(map_all) and math.isfinite(map_small)) or map_all <= 0:
        return None
    share = box_sizes.get("small", 0) / total
    if share < SMALL_OBJECT_SHARE or map_small >= SMALL_AP_RATIO * map_all:
        return None
    now = f", now {min_size_test}" if min_size_test is not None else ""
    return Recommendation(
        "small_objects",
        "Many small objects, found poorly",
        f"{share:.0%} of the training objects are small (area under 32 x 32 pixels) and AP_small is "
        f"{map_small:.3f} against AP {map_all:.3f} over all sizes.",
        f"Raise the input resolution (`data.min_size_train` / `data.min_size_test`{now}) or give the RPN "
        "smaller anchors (`model.overrides` `MODEL.ANCHOR_GENERATOR.SIZES`, e.g. [[16], [32], [64], [128], [256]]).",
    )


def rule_slicing(
    map_small: float,
    map_large: float,
    small_objects: int,
    large_objects: int,
    tile: int,
    resized_side: float,
    sliced_side: float,
    min_size_test: Any,
    command: str,
    tile_command: str,
) -> Recommendation | None:
    """Small objects found far worse than large ones where the resize shrinks them: slicing is the
    likely fix.

    Fires when AP_small is below :data:`SLICING_AP_RATIO` x AP_large and at least
    :data:`SLICING_AP_GAP` below it, both measured on at least :data:`SLICING_MIN_OBJECTS`
    validation objects (COCO small: area under 32 x 32 pixels; large: over 96 x 96), and tiles of
    ``tile`` pixels would show the small objects (median ``resized_side`` pixels after the resize
    of the whole image) at least :data:`SLICING_MIN_GAIN` times larger (``sliced_side``): where the
    resize does not shrink them (COCO's photos at 800), tiles change nothing.

    Args:
        command: the ``python -m detlit.evaluate ... --slice`` command that measures it.
        tile_command: the ``python -m detlit.tile`` command that cuts the training data into tiles.
    """
    if not (math.isfinite(map_small) and math.isfinite(map_large)):
        return None
    if small_objects < SLICING_MIN_OBJECTS or large_objects < SLICING_MIN_OBJECTS:
        return None
    if map_small >= SLICING_AP_RATIO * map_large or map_large - map_small < SLICING_AP_GAP:
        return None
    if not resized_side > 0 or sliced_side < SLICING_MIN_GAIN * resized_side:
        return None
    return Recommendation(
        "slicing",
        "Small objects found far worse than large ones: slice",
        f"AP_small is {map_small:.3f} against AP_large {map_large:.3f} ({small_objects} small and {large_objects} "
        f"large validation objects); the resize to min_size_test {min_size_test} leaves the small objects a median "
        f"of {resized_side:.1f} px, and in tiles of {tile} px they would be {sliced_side:.1f} px.",
        f"Slicing is the likely fix: measure it with `{command}`; if AP_small rises, predict with the same `--slice "
        f"{tile}`, and train on tiles of that size (`{tile_command}`) so that the model learns objects at the size it "
        "will see them.",
    )


def _mean_between(series: Series, low: int, high: int) -> float:
    """Mean of the values logged at steps in (low, high]; the last value before ``high`` if none."""
    inside = [value for step, value in series if low < step <= high]
    if inside:
        return statistics.fmean(inside)
    before = [value for step, value in series if step <= high]
    return before[-1] if before else math.nan


def rule_overfitting(train_loss: Series, val_loss: Series) -> Recommendation | None:
    """val/loss at least :data:`OVERFIT_VAL_RISE` above its lowest point while train/loss kept
    falling (at least :data:`MIN_VALIDATIONS` validations): the train/val gap grows."""
    if len(val_loss) < MIN_VALIDATIONS or not train_loss:
        return None
    best = min(range(len(val_loss)), key=lambda i: val_loss[i][1])
    best_step, best_value = val_loss[best]
    last_step, last_value = val_loss[-1]
    if best == len(val_loss) - 1 or not last_value >= best_value * (1 + OVERFIT_VAL_RISE):
        return None
    before_best = val_loss[best - 1][0] if best else -1
    train_then = _mean_between(train_loss, before_best, best_step)
    train_now = _mean_between(train_loss, val_loss[-2][0], last_step)
    if not train_now < train_then:
        return None
    return Recommendation(
        "overfitting",
        "Over-fitting: the train/val loss gap grows",
        f"val/loss rose {last_value / best_value - 1:.0%} from its lowest {best_value:.3f} (step {best_step}) to "
        f"{last_value:.3f} (step {last_step}) while train/loss fell from {train_then:.3f} to {train_now:.3f}: the "
        f"gap grew from {best_value - train_then:.3f} to {last_value - train_now:.3f}.",
        "Use the best checkpoint rather than the last; add augmentation (`data.augment: default` or `strong`) or "
        "weight decay, or stop early (an `EarlyStopping` callback on `val/map`, see docs/training.md).",
    )


def rule_still_improving(val_map: Series) -> Recommendation | None:
    """val/map still rising when training stopped: over the last :data:`STILL_RISING_WINDOW`
    validations it gained at least :data:`STILL_RISING_GAIN`, at the last one at least
    :data:`STILL_RISING_LAST_GAIN` (a curve that has flattened out does not count), and it ends at its best."""
    if len(val_map) < 2:
        return None
    window = min(STILL_RISING_WINDOW, len(val_map))
    start_step, start = val_map[-window]
    before = val_map[-2][1]
    end_step, end = val_map[-1]
    best = max(value for _, value in val_map)
    if not (end - start >= STILL_RISING_GAIN and end - before >= STILL_RISING_LAST_GAIN and end >= best):
        return None
    return Recommendation(
        "still_improving",
        "Validation metrics still rising at the end",
        f"val/map rose from {start:.3f} (step {start_step}) to {end:.3f} (step {end_step}) over the last "
        f"{window} validations, {end - before:+.3f} at the last one, and is at its best at the end.",
        "Train longer (`trainer.max_epochs`), or continue from this checkpoint with a fresh schedule "
        "(`model.weights` set to it).",
    )


def rule_boxes_dropped(dropped: Series, train_objects: int | None) -> Recommendation | None:
    """Augmentation drops boxes (``train/boxes_dropped_by_aug``, a sum per epoch): at least
    :data:`DROPPED_BOXES_SHARE` of the training objects per epoch, or any when that number is unknown."""
    total = sum(value for _, value in dropped)
    if not dropped or total <= 0:
        return None
    per_epoch = total / len(dropped)
    if train_objects:
        share = per_epoch / train_objects
        if share < DROPPED_BOXES_SHARE:
            return None
        evidence = (
            f"augmentation dropped {total:g} boxes in {len(dropped)} epochs, {per_epoch:.1f} per epoch: "
            f"{share:.1%} of the {train_objects} training objects."
        )
    else:
        evidence = f"augmentation dropped {total:g} boxes in {len(dropped)} epochs ({per_epoch:.1f} per epoch)."
    return Recommendation(
        "boxes_dropped",
        "Boxes dropped by augmentation",
        evidence,
        "Crops and affine moves push objects out of the image; a milder preset (`data.augment: default`) or "
        "gentler crop settings keep them. `python -m detlit.browse --config CONFIG` shows what training sees.",
    )


def rule_confusion(class_names: Sequence[str], counts: Any) -> Recommendation | None:
    """The largest off-diagonal cell of the confusion matrix relative to its row (the true class's
    objects): at least :data:`CONFUSION_SHARE` of them and :data:`CONFUSION_MIN_COUNT` objects."""
    matrix = np.asarray(counts, dtype=np.int64)
    classes = len(class_names)
    if matrix.ndim != 2 or matrix.shape[0] < classes or matrix.shape[1] < classes or classes < 2:
        return None
    best: tuple[float, int, int, int, int] | None = None
    for row in range(classes):
        objects = int(matrix[row].sum())
        for column in range(classes):
            if column == row or objects == 0:
                continue
            count = int(matrix[row, column])
            share = count / objects
            if best is None or share > best[0]:
                best = (share, count, objects, row, column)
    if best is None:
        return None
    share, count, objects, row, column = best
    if share < CONFUSION_SHARE or count < CONFUSION_MIN_COUNT:
        return None
    return Recommendation(
        "confusion",
        f"'{class_names[row]}' mistaken for '{class_names[column]}'",
        f"{count} of the {objects} '{class_names[row]}' objects ({share:.0%}) were detected as "
        f"'{class_names[column]}' (the largest off-diagonal cell of the confusion matrix, relative to its row).",
        "Check that the two classes are labelled consistently, add examples that tell them apart, or merge them "
        "if the difference does not matter for your use.",
    )


def rule_skipped_images(train_skipped: Series, val_skipped: Series) -> Recommendation | None:
    """Unreadable images skipped: at least :data:`SKIPPED_IMAGES` in an epoch or a validation."""
    train = max((value for _, value in train_skipped), default=0.0)
    val = max((value for _, value in val_skipped), default=0.0)
    if train < SKIPPED_IMAGES and val < SKIPPED_IMAGES:
        return None
    return Recommendation(
        "skipped_images",
        "Images skipped as unreadable",
        f"up to {train:g} training images per epoch (`train/skipped_images`) and {val:g} validation images per "
        "validation (`val/skipped_images`) could not be read and were skipped.",
        "Find them with `python -m detlit.check JSON --images FOLDER` (it decodes every image); `--fix OUT.json` "
        "writes a copy without them.",
    )


def rule_nonfinite_batches(skipped: Series) -> Recommendation | None:
    """Batches skipped for a non-finite loss: at least :data:`NONFINITE_BATCHES`."""
    total = sum(value for _, value in skipped)
    if total < NONFINITE_BATCHES:
        return None
    return Recommendation(
        "nonfinite_batches",
        "Batches skipped for a non-finite loss",
        f"{total:g} batches had a NaN or infinite loss and were skipped (`train/skipped_nonfinite`).",
        "Lower the learning rate or lengthen the warm-up (`model.warmup_steps`), clip gradients "
        "(`trainer.gradient_clip_val`), and check the images the log names.",
    )


ERROR_TITLES = {
    "Cls": "classification",
    "Loc": "localisation",
    "Both": "classification and localisation together",
    "Dupe": "duplicate detections",
    "Bkg": "background detections",
    "Miss": "missed objects",
}
ERROR_EVIDENCE = {
    "Cls": "boxes that fit an object of another class, at IoU 0.5 or more",
    "Loc": "boxes of the right class placed loosely, at IoU 0.1-0.5 with their object",
    "Both": "boxes of another class's object, placed loosely",
    "Dupe": "second detections of objects already found",
    "Bkg": "detections where no object is, at IoU 0.1 or less with every object",
    "Miss": "objects that no detection found, not even a wrong one",
}
ERROR_ADVICE = {
    "Cls": "Check that the classes are labelled consistently (the confusion matrix shows which pairs mix), add "
    "examples that tell them apart or merge classes whose difference does not matter; train longer "
    "(`trainer.max_epochs`) or from pretrained weights (`model.weights`).",
    "Loc": "Draw the training boxes tighter and alike (`python -m detlit.browse` shows them), train at a larger size "
    "(`data.min_size_train` / `data.min_size_test`) or for more epochs; Cascade R-CNN "
    "(`model.config_name` `Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml`) refines boxes in three stages.",
    "Both": "The model is weak at both: train longer, from pretrained weights (`model.weights`), with more data.",
    "Dupe": "Two detections of one object outlive the non-maximum suppression: lower its IoU "
    "(`model.overrides` `MODEL.ROI_HEADS.NMS_THRESH_TEST`, 0.5 by default, e.g. 0.4); with `--slice`, the "
    "tiles' detections are merged by `--slice-merge`.",
    "Bkg": "Check the validation labels for objects left unlabelled (each counts here), add images of the background "
    "without objects to the training data, and raise the score threshold where the detections are used.",
    "Miss": "Small objects: a larger input size (`data.min_size_test`) or smaller anchors; many objects per image: "
    "more detections per image (`model.overrides` `TEST.DETECTIONS_PER_IMAGE`); rare classes: more examples or "
    "`data.repeat_factor_threshold`.",
}


def rule_error_breakdown(overall: Mapping[str, float], ap50: float, counts: Mapping[str, int]) -> Recommendation | None:
    """The error type that costs the most AP50 (``metrics.json``'s ``errors``), when fixing it
    would add at least :data:`ERROR_MIN_DAP`: what it is and what to do about it.

    Args:
        overall: dAP50 per error type (Cls, Loc, Both, Dupe, Bkg, Miss; others are ignored).
        ap50: the AP50 the breakdown starts from.
        counts: errors per type.
    """
    known = {k: v for k, v in overall.items() if k in ERROR_TITLES and math.isfinite(v)}
    if not known:
        return None
    kind = max(known, key=lambda k: known[k])
    value = known[kind]
    if value < ERROR_MIN_DAP:
        return None
    others = ", ".join(f"{k} {v:.3f}" for k, v in known.items() if k != kind)
    return Recommendation(
        "error_breakdown",
        f"Most lost AP50 is {ERROR_TITLES[kind]} ({kind})",
        f"{counts.get(kind, 0)} {kind} errors ({ERROR_EVIDENCE[kind]}): fixing them would add {value:.3f} to the "
        f"AP50 of {ap50:.3f}, more than any other error type would (dAP50: {others}).",
        ERROR_ADVICE[kind],
    )


def rule_dataset_errors(errors: Mapping[str, int]) -> Recommendation | None:
    """The dataset check found errors (at least :data:`DATASET_ERRORS`), keyed ``"<split> <kind>"``."""
    total = sum(errors.values())
    if total < DATASET_ERRORS:
        return None
    listed = ", ".join(f"{key} x{count}" for key, count in sorted(errors.items()))
    return Recommendation(
        "dataset_errors",
        "Errors in the dataset",
        f"the dataset check found {total} errors: {listed}.",
        "`python -m detlit.check JSON --images FOLDER` lists them; `--fix OUT.json` writes a repaired copy.",
    )
