"""Training curves: the report's panels come from plain series by tag, named by the evaluation's own tag list."""

from __future__ import annotations

import io
import math

from PIL import Image

from detlit.evaluation.evaluation import OVERALL, logged_tags, tag
from detlit.pictures.curves import PLOT_DPI, CurveFigure, curve_figures, curve_panels

CLASSES = ["cat", "loss_x"]  # a class whose name starts like a loss


def _series(start: float) -> list[tuple[int, float]]:
    return [(10, start), (20, start + 0.1), (30, start + 0.2)]


def _run() -> dict[str, list[tuple[int, float]]]:
    """What a run of this version logs: losses, learning rate, gradient norm, every validation tag."""
    scalars = {tag(stage, part): _series(1.0) for stage in ("train", "val") for part in ("loss", "loss_cls")}
    scalars |= {"lr-AdamW": _series(0.001), "train/grad_norm": _series(3.0), "epoch": _series(0), "hp_metric": []}
    scalars |= {name: _series(0.5) for name in logged_tags("val", CLASSES)}
    return scalars


def _titles(figure: CurveFigure) -> list[str]:
    return [title for title, _ in figure[2]]


def _labels(figure: CurveFigure, title: str) -> list[str]:
    return [label for panel, lines in figure[2] if panel == title for label, _, _ in lines]


def test_validation_panels_draw_every_number_the_evaluation_logs_over_all_classes() -> None:
    figures = {figure[0]: figure for figure in curve_panels(_run())}
    assert list(figures) == ["losses", "optimisation", "validation"]
    validation = figures["validation"]
    assert _titles(validation) == [
        "AP",
        "AP by object size",
        "AR",
        "precision / recall / F1",
        "AP per class",
        "AP50 per class",
        "F1 per class",
    ]
    assert _labels(validation, "AP") == ["val/map", "val/map50", "val/map75"]
    assert _labels(validation, "AP by object size") == ["val/map_small", "val/map_medium", "val/map_large"]
    assert len(_labels(validation, "AR")) == 6
    overall = [label for title, lines in validation[2][:4] for label, _, _ in lines]
    assert overall == [tag("val", name) for name in OVERALL]
    rates = {
        label: style
        for title, lines in validation[2]
        if title == "precision / recall / F1"
        for label, _, style in lines
    }
    assert rates == {
        "val/precision": "-",
        "val/recall": "-",
        "val/f1": "-",
        "val/precision@thr": "--",
        "val/recall@thr": "--",
        "val/f1@thr": "--",
    }
    assert _labels(validation, "AP per class") == CLASSES
    assert _labels(validation, "F1 per class") == CLASSES
    # Per-class precision, recall and threshold are the report table's: no "other" figure draws them.
    assert "other" not in figures


def test_a_class_named_like_a_loss_is_not_a_loss() -> None:
    losses = next(figure for figure in curve_panels(_run()) if figure[0] == "losses")
    assert _titles(losses) == ["loss", "loss_cls"]
    assert _labels(losses, "loss") == ["train/loss", "val/loss"]
    assert [style for _, lines in losses[2] for _, _, style in lines] == ["-", "--", "-", "--"]


def test_series_no_panel_names_are_drawn_apart_and_lightnings_own_left_out() -> None:
    scalars = {f"test/{name}": [(100, 0.5)] for name in ("map", "map50")}
    scalars |= {f"custom/{n:02d}": _series(n) for n in range(14)}
    scalars |= {"epoch": _series(0), "hp_metric": [(0, -1.0)], "val/map": [(10, math.nan), (20, math.inf), (30, 0.4)]}
    figures = {figure[0]: figure for figure in curve_panels(scalars)}
    assert list(figures) == ["validation", "other"]
    assert _titles(figures["validation"]) == ["AP"]
    other = _titles(figures["other"])
    assert other == [f"custom/{n:02d}" for n in range(12)], "the first twelve by name"


def test_figures_are_pngs_of_their_panels_size() -> None:
    figures = curve_figures(_run())
    assert [(name, caption) for name, caption, _ in figures] == [
        ("losses", "Losses: training (solid) and validation (dashed), each part on its own."),
        ("optimisation", "Learning rate per parameter group, and the gradient norm."),
        ("validation", "Validation metrics after each validation."),
    ]
    sizes = [Image.open(io.BytesIO(png)).size for _, _, png in figures]
    # losses: 2 panels in one row; optimisation: 2 panels; validation: 7 panels, 3 columns, 3 rows.
    assert sizes == [
        (round(8.0 * PLOT_DPI), round(2.9 * PLOT_DPI)),
        (round(8.0 * PLOT_DPI), round(2.9 * PLOT_DPI)),
        (round(12.0 * PLOT_DPI), round(8.7 * PLOT_DPI)),
    ]
    assert curve_figures({}) == []
