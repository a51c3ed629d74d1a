"""Training curves: small matplotlib panels of a run's logged series, as PNG bytes.

They take plain data, the series of each logged tag (``{tag: [(step, value), ...]}``), whichever
logger or file the series were read from, so the report draws the same curves from any of them.
Validation's panels find their tags through the evaluation's own names
(:data:`~detlit.evaluation.evaluation.OVERALL`, :data:`~detlit.evaluation.evaluation.PER_CLASS`,
:func:`~detlit.evaluation.evaluation.tag`) instead of spelling ``val/...`` here, so a number the
evaluation logs is drawn under the name it is logged with, and a per-class tag is never taken for
another kind of series (a class called ``loss_x`` is not a loss).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TypeAlias

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed or wanted

import matplotlib.pyplot as plt

from detlit.evaluation.cocoeval import COCO_NAMES
from detlit.evaluation.evaluation import OVERALL, PER_CLASS, tag
from detlit.pictures.plots import figure_png

Series: TypeAlias = Sequence[tuple[int, float]]
"""(step, value) pairs of one logged tag, ascending steps."""
Line: TypeAlias = tuple[str, Series, str]
"""label, series, matplotlib line style."""
Panel: TypeAlias = tuple[str, list[Line]]
"""title and lines of one small plot."""
CurveFigure: TypeAlias = tuple[str, str, list[Panel], int]
"""name, caption, panels and columns of one figure, before it is drawn."""

TRAIN, VALIDATION = "train", "val"
"""The stages whose curves are drawn (the test runs once: it has no curves)."""
PLOT_DPI = 90
LOSS_PARTS = ("loss", "loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc")
"""The R-CNN losses, drawn first and in this order; other losses a model logs follow by name."""
IGNORED_TAGS = ("hp_metric", "epoch")
"""Series Lightning logs that are no training curve."""
PER_CLASS_PANELS = (("ap", "AP per class"), ("ap50", "AP50 per class"), ("f1", "F1 per class"))
"""The per-class numbers drawn, one line per class; the other per-class numbers are in the report's table."""


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
    return figure_png(figure, PLOT_DPI)


def overall_groups() -> list[tuple[str, list[str]]]:
    """The panels of the numbers over all classes, each with its names in the order of
    :data:`~detlit.evaluation.evaluation.OVERALL`: COCO's AP, AP by object size and AR, then the
    rates (precision, recall, F1; the ``@thr`` ones at the fixed threshold)."""
    groups: dict[str, list[str]] = {"AP": [], "AP by object size": [], "AR": [], "precision / recall / F1": []}
    for name in OVERALL:
        if name not in COCO_NAMES:
            groups["precision / recall / F1"].append(name)
        elif name.startswith("mar"):
            groups["AR"].append(name)
        elif "_" in name:  # map_small, map_medium, map_large
            groups["AP by object size"].append(name)
        else:
            groups["AP"].append(name)
    return list(groups.items())


def _class_prefix(stage: str, name: str) -> str:
    """What every per-class tag of ``name`` starts with: ``<stage>/<name>/``."""
    return tag(stage, name, "")


def _is_loss(stage_and_part: str) -> bool:
    """Whether a tag is a loss of training or validation (``train/loss_cls``), not a per-class number."""
    stage, _, part = stage_and_part.partition("/")
    return stage in (TRAIN, VALIDATION) and part.startswith("loss") and "/" not in part


def loss_figure(scalars: Mapping[str, Series], used: set[str]) -> CurveFigure | None:
    """Each loss on its own panel, training solid and validation dashed."""
    parts = [*LOSS_PARTS]
    parts += sorted({t.partition("/")[2] for t in scalars if _is_loss(t)} - set(LOSS_PARTS))
    panels: list[Panel] = []
    for part in parts:
        lines = [
            (tag(stage, part), scalars.get(tag(stage, part), []), style)
            for stage, style in ((TRAIN, "-"), (VALIDATION, "--"))
        ]
        lines = [line for line in lines if line[1]]
        used.update(line[0] for line in lines)
        if lines:
            panels.append((part, lines))
    if not panels:
        return None
    return ("losses", "Losses: training (solid) and validation (dashed), each part on its own.", panels, 3)


def optimisation_figure(scalars: Mapping[str, Series], used: set[str]) -> CurveFigure | None:
    """The learning rate of each parameter group (Lightning's ``LearningRateMonitor``) and the gradient norm."""
    panels: list[Panel] = []
    rates: list[Line] = [(t, scalars[t], "-") for t in sorted(scalars) if t.startswith("lr-") or t.startswith("lr/")]
    if rates:
        panels.append(("learning rate", rates))
    grad_norm = tag(TRAIN, "grad_norm")
    if scalars.get(grad_norm):
        panels.append(("gradient norm", [(grad_norm, scalars[grad_norm], "-")]))
    for _, lines in panels:
        used.update(line[0] for line in lines)
    if not panels:
        return None
    return ("optimisation", "Learning rate per parameter group, and the gradient norm.", panels, 2)


def validation_figure(scalars: Mapping[str, Series], used: set[str]) -> CurveFigure | None:
    """The evaluation's numbers after each validation: over all classes, then per class."""
    panels: list[Panel] = []
    for title, names in overall_groups():
        lines: list[Line] = [
            (tag(VALIDATION, n), scalars[tag(VALIDATION, n)], "--" if "@thr" in n else "-")
            for n in names
            if scalars.get(tag(VALIDATION, n))
        ]
        if lines:
            panels.append((title, lines))
            used.update(line[0] for line in lines)
    for name, title in PER_CLASS_PANELS:
        prefix = _class_prefix(VALIDATION, name)
        tags = [t for t in sorted(scalars) if t.startswith(prefix)]
        if tags:
            panels.append((title, [(t[len(prefix) :], scalars[t], "-") for t in tags]))
            used.update(tags)
    if not panels:
        return None
    return ("validation", "Validation metrics after each validation.", panels, 3)


def other_figure(scalars: Mapping[str, Series], used: set[str]) -> CurveFigure | None:
    """The first twelve series no other figure drew, by name, but for the per-class numbers of
    validation that only the report's table shows."""
    not_drawn = tuple(_class_prefix(VALIDATION, name) for name in PER_CLASS)
    rest = [t for t in sorted(scalars) if t not in used and not t.startswith(not_drawn)]
    if not rest:
        return None
    return ("other", "Other logged scalars.", [(t, [(t, scalars[t], "-")]) for t in rest[:12]], 3)


def curve_panels(scalars: Mapping[str, Series]) -> list[CurveFigure]:
    """The training-curve figures the series allow, in the report's order, before they are drawn."""
    used: set[str] = set(IGNORED_TAGS)
    figures = [figure(scalars, used) for figure in (loss_figure, optimisation_figure, validation_figure)]
    figures.append(other_figure(scalars, used))  # after the others: it draws what they left
    return [figure for figure in figures if figure is not None]


def curve_figures(scalars: Mapping[str, Series]) -> list[tuple[str, str, bytes]]:
    """(name, caption, PNG) of the training-curve figures the series allow.

    Args:
        scalars: the series of each logged tag, ``{tag: [(step, value), ...]}``.
    """
    return [(name, caption, plot_panels(panels, columns)) for name, caption, panels, columns in curve_panels(scalars)]
