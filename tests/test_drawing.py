"""Drawings: boxes land on their borders, outcomes and classes keep their colours."""

from __future__ import annotations

import numpy as np
import pytest

from detlit.evaluation.matching import match_image
from detlit.pictures import drawing

GREY = 128


def _grey(height: int, width: int) -> np.ndarray:
    return np.full((height, width, 3), GREY, dtype=np.uint8)


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a != b).any(axis=2)


def test_box_changes_its_border_not_its_middle() -> None:
    image = _grey(200, 200)
    drawn = drawing.draw_predictions(image, [[20, 30, 180, 170]], [2], [0.9], ["a", "b", "c"])
    color = drawing.class_color(2)
    # Left, right and bottom edges are the class colour (the label sits above the top edge).
    assert tuple(drawn[100, 20]) == color
    assert tuple(drawn[100, 179]) == color
    assert tuple(drawn[169, 100]) == color
    assert not _changed(drawn[40:160, 30:170], image[40:160, 30:170]).any()
    assert not _changed(drawn[175:, :], image[175:, :]).any()
    # The label is drawn above the box, in the class colour.
    assert (drawn[5:30, 20:60] == color).all(axis=2).sum() > 50
    assert (image == GREY).all(), "the input must not be modified"


def test_box_at_the_image_border_stays_inside_it() -> None:
    image = _grey(64, 64)
    drawn = drawing.draw_ground_truth(image, [[-10, -10, 80, 80]], [0], show_labels=False)
    assert tuple(drawn[0, 32]) == drawing.class_color(0)
    assert tuple(drawn[63, 32]) == drawing.class_color(0)
    assert tuple(drawn[32, 32]) == (GREY,) * 3


def _comparison() -> tuple[np.ndarray, np.ndarray]:
    image = _grey(300, 300)
    gt_boxes = [[20, 20, 120, 120], [150, 150, 280, 280]]
    gt_labels = [0, 1]
    pred_boxes = [[22, 22, 120, 120], [20, 150, 100, 280]]  # a hit, and a box over nothing
    drawn = drawing.draw_comparison(image, pred_boxes, [0, 1], [0.9, 0.8], gt_boxes, gt_labels, show_labels=False)
    return image, drawn


def test_true_positive_false_positive_and_missed_have_their_own_colours() -> None:
    _, drawn = _comparison()
    assert tuple(drawn[70, 22]) == drawing.TP_COLOR  # left edge of the matched prediction
    assert tuple(drawn[150, 20]) == drawing.FP_COLOR  # first dash of the unmatched prediction
    assert tuple(drawn[215, 279]) == drawing.MISSED_COLOR  # right edge of the missed object
    assert len({drawing.TP_COLOR, drawing.FP_COLOR, drawing.MISSED_COLOR, drawing.IGNORED_COLOR}) == 4


def test_false_positives_are_dashed() -> None:
    image, drawn = _comparison()
    left_edge = _changed(drawn[150:280, 20:21], image[150:280, 20:21]).reshape(-1)
    assert 0.4 < left_edge.mean() < 0.9, "a dashed edge is partly drawn"
    true_positive_edge = _changed(drawn[22:120, 22:23], image[22:120, 22:23]).reshape(-1)
    assert true_positive_edge.all()


def test_outcomes_are_those_of_the_one_matcher() -> None:
    # The 0.9 box takes the first object; the exact 0.6 box comes too late; the class-1 box does
    # not match a class-0 object, which is therefore missed (COCOeval's rules: detlit.evaluation.matching).
    gt = [[0, 0, 10, 10], [20, 0, 30, 10]]
    predictions = [[0, 0, 10, 10], [0, 0, 10, 9], [20, 0, 30, 10], [50, 50, 60, 60]]
    match = match_image(predictions, [0.6, 0.9, 0.8, 0.7], [0, 0, 1, 0], gt, [0, 0])
    assert match.gt_of.tolist() == [-1, 0, -1, -1]
    assert match.tp.tolist() == [False, True, False, False]
    assert match.fp.tolist() == [True, False, True, True]
    assert match.missed().tolist() == [False, True]
    image = _grey(80, 80)
    drawn = drawing.draw_comparison(
        image, predictions, [0, 0, 1, 0], [0.6, 0.9, 0.8, 0.7], gt, [0, 0], show_labels=False
    )
    assert tuple(drawn[5, 0]) == drawing.TP_COLOR  # the 0.9 box, drawn last of the boxes on the first object
    assert tuple(drawn[5, 29]) == drawing.MISSED_COLOR  # the missed object's right edge


def test_predictions_inside_crowd_regions_are_ignored() -> None:
    gt = [[0, 0, 100, 100]]
    match = match_image([[10, 10, 30, 30], [90, 90, 150, 150]], [0.9, 0.8], [0, 0], gt, [0], gt_crowd=[True])
    assert match.ignored.tolist() == [True, False]
    assert match.fp.tolist() == [False, True]
    assert match.missed().tolist() == [False], "a crowd region is never a missed object"


def test_palette_is_stable_and_distinct() -> None:
    first = [drawing.class_color(i) for i in range(60)]
    assert first == [drawing.class_color(i) for i in range(60)]
    assert len(set(first[: len(drawing.PALETTE)])) == len(drawing.PALETTE)
    assert len(set(first)) == 60
    assert all(0 <= c <= 255 for color in first for c in color)
    # The colour belongs to the label, not to its position among the drawn boxes.
    drawn = drawing.draw_predictions(_grey(100, 100), [[10, 10, 90, 90]], [5], [0.5], show_labels=False)
    assert tuple(drawn[50, 10]) == drawing.class_color(5)


def _border_thickness(size: int) -> int:
    image = _grey(size, size)
    box = [size * 0.25, size * 0.25, size * 0.75, size * 0.75]
    drawn = drawing.draw_predictions(image, [box], [0], [0.9], show_labels=False)
    row = drawn[size // 2]
    return int((row == drawing.class_color(0)).all(axis=1).sum() // 2)


def test_line_width_and_font_grow_with_the_image() -> None:
    assert _border_thickness(64) == 1
    assert _border_thickness(4000) == drawing.line_width(4000, 4000) == 10
    assert drawing.font_size(64, 64) == drawing.MIN_FONT_SIZE
    assert drawing.font_size(4000, 3000) > 5 * drawing.font_size(64, 64)
    small = drawing.draw_predictions(_grey(64, 64), [[8, 30, 60, 60]], [0], [0.9], ["cat"])
    large = drawing.draw_predictions(_grey(4000, 4000), [[500, 2000, 3900, 3900]], [0], [0.9], ["cat"])
    label_height_small = int((small[:30, 8] == drawing.class_color(0)).all(axis=1).sum())
    label_height_large = int((large[:2000, 500] == drawing.class_color(0)).all(axis=1).sum())
    assert 8 <= label_height_small < 30
    assert label_height_large > 5 * label_height_small


def test_montage_size_placement_and_titles() -> None:
    red = np.zeros((40, 60, 3), np.uint8)
    red[..., 0] = 255
    blue = np.zeros((80, 20, 3), np.uint8)
    blue[..., 2] = 255
    images = [red, blue, red, blue, red]
    grid = drawing.montage(images, columns=3, gap=4)
    rows, cols = drawing.grid_shape(5, 3)
    assert (rows, cols) == (2, 3)
    assert grid.shape == (2 * 80 + 3 * 4, 3 * 60 + 4 * 4, 3)
    # The first image is centred in the first 80 x 60 cell.
    assert tuple(grid[4 + 19, 4]) == drawing.BACKGROUND
    assert tuple(grid[4 + 20, 4]) == (255, 0, 0)
    assert tuple(grid[4 + 59, 63]) == (255, 0, 0)
    assert tuple(grid[4 + 60, 4]) == drawing.BACKGROUND
    titled = drawing.montage(images, titles=[f"image {i}" for i in range(5)], columns=3, gap=4)
    band = drawing.title_height(60)
    assert titled.shape == (2 * (80 + band) + 3 * 4, 3 * 60 + 4 * 4, 3)
    assert (titled[4 : 4 + band, 4 : 4 + 60] != drawing.BACKGROUND).any(axis=2).sum() > 10


def test_montage_scales_large_images_down_to_the_cell() -> None:
    big = np.full((400, 800, 3), 200, np.uint8)
    grid = drawing.montage([big], cell_size=(100, 100), gap=0)
    assert grid.shape == (100, 100, 3)
    assert (grid[25:75, :] == 200).all() and (grid[:20] == drawing.BACKGROUND).all()
    fitted, scale = drawing.resize_to_fit(np.zeros((10, 10, 3), np.uint8), 100, 100)
    assert fitted.shape == (10, 10, 3) and scale == 1.0, "small images are never scaled up"


def test_bad_images_are_refused() -> None:
    with pytest.raises(ValueError, match="uint8"):
        drawing.draw_predictions(np.zeros((10, 10, 3), np.float32), [], [], [])
    with pytest.raises(ValueError, match="styles"):
        drawing.draw_boxes(_grey(10, 10), [[0, 0, 5, 5]], [])
