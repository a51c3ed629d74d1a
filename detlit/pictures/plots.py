"""Metric pictures as PNG bytes (matplotlib, no display): confusion matrix, PR and F1 curves, the
error breakdown; and :func:`figure_png`, the one way a figure becomes PNG bytes (the training curves use it too)."""

from __future__ import annotations

import io
import warnings

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed or wanted

import matplotlib.pyplot as plt
import numpy as np

from detlit.evaluation.error_breakdown import MAIN_TYPES, SPECIAL_TYPES, TYPES, ErrorBreakdown
from detlit.evaluation.evaluation import Evaluation

PLOT_DPI = 110


def confusion_matrix(evaluation: Evaluation, fixed: bool = False) -> bytes:
    """Counts at IoU and each class's F1-optimal score threshold (``fixed``: the one score threshold);
    rows true class (+ background), columns predicted (+ missed)."""
    names = list(evaluation.class_names)
    best = None if fixed else evaluation.best_confusion
    at_best = best is not None
    counts = (best if best is not None else evaluation.confusion).astype(int)
    size = max(4.0, 0.6 * len(names) + 2.5)
    figure, axes = plt.subplots(figsize=(size + 1, size))
    image = axes.imshow(np.log1p(counts), cmap="Blues")
    labels = [*names, "background"]
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted (background: missed objects)")
    axes.set_ylabel("true (background: false detections)")
    scores = "each class at its F1-optimal score" if at_best else f"score >= {evaluation.score_threshold:g}"
    axes.set_title(f"confusion at IoU {evaluation.iou_threshold:g}, {scores}")
    limit = counts.max() if counts.size else 0
    for (row, column), value in np.ndenumerate(counts):
        color = "white" if value > limit / 2 and limit else "black"
        axes.text(column, row, str(value), ha="center", va="center", color=color, fontsize=8)
    figure.colorbar(image, ax=axes, label="log(1 + count)")
    return figure_png(figure, PLOT_DPI)


def fixed_confusion_matrix(evaluation: Evaluation) -> bytes:
    """:func:`confusion_matrix` at the one fixed score threshold."""
    return confusion_matrix(evaluation, fixed=True)


def pr_curves(evaluation: Evaluation) -> bytes:
    """Precision against recall per class (raw counts at every score threshold)."""
    figure, axes = plt.subplots(figsize=(6, 5))
    for label, (name, curve) in enumerate(zip(evaluation.class_names, evaluation.curves, strict=True)):
        if curve.num_objects == 0 or len(curve.thresholds) == 0:
            continue
        ap50 = evaluation.ap50[label]
        axes.plot(curve.recall, curve.precision, label=f"{name} (AP50 {ap50:.3f})")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_title(f"precision-recall at IoU {evaluation.iou_threshold:g}")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower left")
    return figure_png(figure, PLOT_DPI)


def f1_curves(evaluation: Evaluation) -> bytes:
    """F1 against the score threshold per class, the F1-optimal threshold marked."""
    figure, axes = plt.subplots(figsize=(6, 5))
    for label, (name, curve) in enumerate(zip(evaluation.class_names, evaluation.curves, strict=True)):
        if curve.num_objects == 0 or len(curve.thresholds) == 0:
            continue
        (line,) = axes.plot(curve.thresholds, curve.f1, label=name)
        best = evaluation.best.thresholds[label]
        if np.isfinite(best):
            axes.axvline(best, color=line.get_color(), linestyle=":", alpha=0.7)
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("score threshold")
    axes.set_ylabel("F1")
    axes.set_title("F1 vs score threshold (dotted: each class's best)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower left")
    return figure_png(figure, PLOT_DPI)


def figure_png(figure: plt.Figure, dpi: int) -> bytes:
    """A matplotlib figure as PNG bytes, laid out tightly, and closed: figures made in a loop
    (a report, every validation) would otherwise stay in pyplot's memory."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # many classes: a crowded but complete figure
        figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    return buffer.getvalue()


ERROR_CLASSES_SHOWN = 20  # classes in the per-class panel of the error breakdown: those that lose the most


def error_breakdown(breakdown: ErrorBreakdown) -> bytes:
    """The AP50 lost per error type: bars over all classes (main types, then the special ones), and
    per class the main types' dAP for the classes that lose the most."""
    kinds = list(reversed(TYPES))  # the first type on top
    values = [max(float(np.nan_to_num(breakdown.overall[kind])), 0.0) for kind in kinds]
    lost = np.nansum(np.stack([breakdown.per_class[kind] for kind in MAIN_TYPES]), axis=0)
    shown = [int(i) for i in np.argsort(-lost, kind="stable")[:ERROR_CLASSES_SHOWN] if lost[i] > 0]
    figure, (bars, grid) = plt.subplots(
        1, 2, figsize=(11, max(4.0, 0.3 * len(shown) + 1.5)), gridspec_kw={"width_ratios": [1, 1.2]}
    )
    colors = ["tab:gray" if kind in SPECIAL_TYPES else "tab:red" for kind in kinds]
    bars.barh(kinds, values, color=colors)
    for row, value in enumerate(values):
        bars.text(value, row, f" {value:.3f}", va="center", fontsize=8)
    bars.set_xlim(0, max(max(values, default=0.0) * 1.25, 0.01))
    bars.set_xlabel("AP50 gained by fixing every error of the type (dAP)")
    bars.set_title(f"all classes: AP50 {breakdown.ap50:.3f} at IoU {breakdown.iou_threshold:g}")
    bars.grid(axis="x", alpha=0.3)
    if shown:
        table = np.stack([np.nan_to_num(breakdown.per_class[kind][shown]) for kind in MAIN_TYPES], axis=1)
        image = grid.imshow(table, cmap="Reds", aspect="auto", vmin=0.0)
        grid.set_xticks(range(len(MAIN_TYPES)), MAIN_TYPES)
        grid.set_yticks(range(len(shown)), [breakdown.class_names[i] for i in shown])
        limit = table.max()
        for (row, column), value in np.ndenumerate(table):
            color = "white" if limit and value > limit / 2 else "black"
            grid.text(column, row, f"{value:.2f}", ha="center", va="center", color=color, fontsize=7)
        figure.colorbar(image, ax=grid, label="dAP50 of the class")
        grid.set_title(f"per class (the {len(shown)} that lose the most)")
    else:
        grid.axis("off")
        grid.text(0.5, 0.5, "no class loses AP50 to these errors", ha="center", va="center")
    return figure_png(figure, PLOT_DPI)
