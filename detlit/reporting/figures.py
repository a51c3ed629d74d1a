"""The report's training-curve figures: small matplotlib panels of the TensorBoard scalars, as PNG bytes."""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from typing import TypeAlias

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed or wanted

import matplotlib.pyplot as plt

from detlit.reporting.run_reader import OVERALL_EXTRA, Series

PLOT_DPI = 90
LOSS_PARTS = ("loss", "loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc")
IGNORED_TAGS = ("hp_metric", "epoch")

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
