"""Drawings: boxes, labels and scores on images, and images arranged in a grid.

Every function takes and returns numpy RGB ``uint8`` arrays of shape (H, W, 3) and never
modifies its input. Boxes are XYXY in pixels of the image they are drawn on; boxes, labels and
scores may be numpy arrays, lists or CPU tensors.

Colours: predictions and ground truth take the colour of their class (:func:`class_color`, a
fixed palette by contiguous label, so a class looks the same in every drawing). A comparison of
predictions with ground truth (:func:`draw_comparison`) colours by outcome instead; its legend:

* true positive (a prediction matched to an object): solid green (:data:`TP_COLOR`);
* false positive (a prediction matched to nothing): dashed red (:data:`FP_COLOR`);
* missed object (ground truth no prediction matched): solid orange (:data:`MISSED_COLOR`);
* crowd region, and a prediction inside one (neither right nor wrong, as in COCO's
  evaluation): dashed grey (:data:`IGNORED_COLOR`).

Line widths and font sizes grow with the image (:func:`line_width`, :func:`font_size`), so a
drawing is readable on a 64-pixel thumbnail and on a 4000-pixel photo alike.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeAlias

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from detlit.evaluation.matching import Match, match_image

Color: TypeAlias = tuple[int, int, int]
Font: TypeAlias = ImageFont.FreeTypeFont | ImageFont.ImageFont

# Well-separated colours first (Tableau 10, then its light companions); more classes get
# hues spread by the golden ratio.
PALETTE: tuple[Color, ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (174, 199, 232),
    (255, 187, 120),
    (152, 223, 138),
    (255, 152, 150),
    (197, 176, 213),
    (196, 156, 148),
    (247, 182, 210),
    (199, 199, 199),
    (219, 219, 141),
    (158, 218, 229),
)
TP_COLOR: Color = (0, 200, 0)
FP_COLOR: Color = (230, 25, 25)
MISSED_COLOR: Color = (255, 140, 0)
IGNORED_COLOR: Color = (150, 150, 150)
BACKGROUND: Color = (32, 32, 32)
MATCH_IOU = 0.5
MIN_FONT_SIZE = 11


def class_color(label: int) -> Color:
    """The colour of a contiguous class label: the same in every drawing and every run."""
    if 0 <= label < len(PALETTE):
        return PALETTE[label]
    hue = (label * 0.618033988749895) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
    return round(red * 255), round(green * 255), round(blue * 255)


def line_width(height: int, width: int) -> int:
    """Box outline width in pixels: 1 up to 600-pixel images, then growing with the longer side."""
    return max(1, round(max(height, width) / 400))


def font_size(height: int, width: int) -> int:
    """Label font size in pixels: about 2% of the longer side, never below :data:`MIN_FONT_SIZE`."""
    return max(MIN_FONT_SIZE, round(max(height, width) / 45))


@lru_cache(maxsize=64)
def load_font(size: int) -> Font:
    """Pillow's built-in font at ``size`` pixels (no font file needed)."""
    return ImageFont.load_default(size=size)


def _rgb(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"images must be uint8, not {array.dtype}")
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"images must be (H, W) or (H, W, 3) RGB, not shape {array.shape}")
    if array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    return array[:, :, :3]


def _boxes(boxes: Any) -> np.ndarray:
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def _text_color(fill: Color) -> Color:
    """Black or white, whichever reads better on ``fill``."""
    luminance = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


@dataclass(frozen=True)
class BoxStyle:
    """How one box is drawn: outline colour, dashed or solid, and its label (None: no label)."""

    color: Color
    dashed: bool = False
    label: str | None = None


class _Canvas:
    """A PIL drawing surface sized to one image, with line width and font chosen for it."""

    def __init__(self, image: np.ndarray, width: int | None = None, size: int | None = None):
        self.image = Image.fromarray(np.ascontiguousarray(_rgb(image)))
        self.draw = ImageDraw.Draw(self.image)
        h, w = self.image.height, self.image.width
        self.width = width or line_width(h, w)
        self.font = load_font(size or font_size(h, w))

    def box(self, box: Sequence[float], style: BoxStyle) -> None:
        x1, y1, x2, y2 = box
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            return
        # A box spans pixels x1 .. x2 - 1; PIL's rectangle includes its end coordinates.
        w, h = self.image.width, self.image.height
        left, top = min(max(round(x1), 0), w - 1), min(max(round(y1), 0), h - 1)
        right, bottom = min(max(round(x2) - 1, left), w - 1), min(max(round(y2) - 1, top), h - 1)
        if style.dashed:
            self._dashed(left, top, right, bottom, style.color)
        else:
            self.draw.rectangle((left, top, right, bottom), outline=style.color, width=self.width)
        if style.label:
            self.label(left, top, bottom, style.label, style.color)

    def _dashed(self, left: int, top: int, right: int, bottom: int, color: Color) -> None:
        # Filled rectangles, not lines: they cover the same pixels a solid outline of this width does.
        dash, gap, width = 3 * self.width + 2, 2 * self.width + 1, self.width
        for horizontal, fixed, start, end in (
            (True, top, left, right),
            (True, bottom - width + 1, left, right),
            (False, left, top, bottom),
            (False, right - width + 1, top, bottom),
        ):
            position = start
            while position <= end:
                stop = min(position + dash - 1, end)
                if horizontal:
                    self.draw.rectangle((position, fixed, stop, fixed + width - 1), fill=color)
                else:
                    self.draw.rectangle((fixed, position, fixed + width - 1, stop), fill=color)
                position += dash + gap

    def label(self, left: int, top: int, bottom: int, text: str, color: Color) -> None:
        x0, y0, x1, y1 = self.draw.textbbox((0, 0), text, font=self.font)
        text_w, text_h = x1 - x0, y1 - y0
        pad = max(1, self.width)
        box_w, box_h = text_w + 2 * pad, text_h + 2 * pad
        # Above the box when there is room, else inside its top edge; never past the right border.
        y = top - box_h if top - box_h >= 0 else min(top, max(0, self.image.height - box_h))
        x = min(left, max(0, self.image.width - box_w))
        self.draw.rectangle((x, y, x + box_w - 1, y + box_h - 1), fill=color)
        self.draw.text((x + pad - x0, y + pad - y0), text, fill=_text_color(color), font=self.font)

    def array(self) -> np.ndarray:
        return np.array(self.image)


def draw_boxes(
    image: np.ndarray, boxes: Any, styles: Sequence[BoxStyle], width: int | None = None, size: int | None = None
) -> np.ndarray:
    """Draw boxes in the given styles, the first of them at the bottom.

    Args:
        image: RGB uint8 (H, W, 3); grayscale (H, W) is accepted too.
        boxes: (N, 4) XYXY pixels.
        styles: one per box.
        width: line width; by default :func:`line_width` of the image.
        size: font size; by default :func:`font_size` of the image.
    """
    xyxy = _boxes(boxes)
    if len(styles) != len(xyxy):
        raise ValueError(f"{len(xyxy)} boxes but {len(styles)} styles")
    canvas = _Canvas(image, width, size)
    for box, style in zip(xyxy.tolist(), styles, strict=True):
        canvas.box(box, style)
    return canvas.array()


def _name(label: int, class_names: Sequence[str] | None) -> str:
    return class_names[label] if class_names is not None and 0 <= label < len(class_names) else str(label)


def draw_predictions(
    image: np.ndarray,
    boxes: Any,
    labels: Any,
    scores: Any,
    class_names: Sequence[str] | None = None,
    show_labels: bool = True,
) -> np.ndarray:
    """Draw predicted boxes in their class colours, labelled ``name score``.

    Higher scores are drawn last, so their labels stay readable where boxes overlap.

    Args:
        image: RGB uint8 (H, W, 3).
        boxes: (N, 4) XYXY pixels.
        labels: (N,) contiguous class labels.
        scores: (N,) confidence scores.
        class_names: name of each contiguous label (the label number is shown without).
        show_labels: write class names and scores next to the boxes.
    """
    xyxy = _boxes(boxes)
    classes = np.asarray(labels, dtype=np.int64).reshape(-1)
    confidence = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(confidence, kind="stable")
    styles = [
        BoxStyle(
            class_color(int(classes[i])),
            label=f"{_name(int(classes[i]), class_names)} {confidence[i]:.2f}" if show_labels else None,
        )
        for i in order
    ]
    return draw_boxes(image, xyxy[order], styles)


def draw_ground_truth(
    image: np.ndarray,
    boxes: Any,
    labels: Any,
    class_names: Sequence[str] | None = None,
    crowd: Any = None,
    show_labels: bool = True,
) -> np.ndarray:
    """Draw ground-truth boxes in their class colours, labelled with the class name.

    Args:
        image: RGB uint8 (H, W, 3).
        boxes: (N, 4) XYXY pixels.
        labels: (N,) contiguous class labels.
        class_names: name of each contiguous label.
        crowd: (N,) flags of crowd regions, drawn dashed grey.
        show_labels: write class names next to the boxes.
    """
    xyxy = _boxes(boxes)
    classes = np.asarray(labels, dtype=np.int64).reshape(-1)
    is_crowd = np.zeros(len(xyxy), bool) if crowd is None else np.asarray(crowd, dtype=bool).reshape(-1)
    styles = []
    for label, flag in zip(classes.tolist(), is_crowd.tolist(), strict=True):
        name = _name(label, class_names) if show_labels else None
        if flag:
            styles.append(BoxStyle(IGNORED_COLOR, dashed=True, label=f"{name} (crowd)" if name else None))
        else:
            styles.append(BoxStyle(class_color(label), label=name))
    return draw_boxes(image, xyxy, styles)


def draw_comparison(
    image: np.ndarray,
    pred_boxes: Any,
    pred_labels: Any,
    pred_scores: Any,
    gt_boxes: Any,
    gt_labels: Any,
    class_names: Sequence[str] | None = None,
    gt_crowd: Any = None,
    iou_threshold: float = MATCH_IOU,
    show_labels: bool = True,
    match: Match | None = None,
) -> np.ndarray:
    """Draw predictions and ground truth together, coloured by outcome (legend: module docstring).

    The outcome of each box is that of :func:`detlit.evaluation.matching.match_image` (COCOeval's
    rules, as in the metrics) at ``iou_threshold``, or the given ``match`` of these very boxes.
    Matched ground truth is not drawn (its true positive covers it); missed objects are.

    Args:
        image: RGB uint8 (H, W, 3).
        pred_boxes: (N, 4) XYXY pixels.
        pred_labels: (N,) contiguous labels.
        pred_scores: (N,) scores.
        gt_boxes: (M, 4) XYXY pixels.
        gt_labels: (M,) contiguous labels.
        class_names: name of each contiguous label.
        gt_crowd: (M,) crowd flags (none by default).
        iou_threshold: least IoU of a match.
        show_labels: write class names and scores next to the boxes.
        match: the outcome of these boxes, when the caller matched them already.
    """
    pred, gt = _boxes(pred_boxes), _boxes(gt_boxes)
    p_labels = np.asarray(pred_labels, dtype=np.int64).reshape(-1)
    g_labels = np.asarray(gt_labels, dtype=np.int64).reshape(-1)
    scores = np.asarray(pred_scores, dtype=np.float64).reshape(-1)
    crowd = np.zeros(len(gt), bool) if gt_crowd is None else np.asarray(gt_crowd, dtype=bool).reshape(-1)
    if match is None:
        match = match_image(pred, scores, p_labels, gt, g_labels, crowd, iou_threshold)
    boxes: list[np.ndarray] = []
    styles: list[BoxStyle] = []
    for j in np.flatnonzero(crowd | match.missed()):
        name = _name(int(g_labels[j]), class_names)
        if crowd[j]:
            styles.append(BoxStyle(IGNORED_COLOR, dashed=True, label=f"{name} (crowd)" if show_labels else None))
        else:
            styles.append(BoxStyle(MISSED_COLOR, label=f"{name} missed" if show_labels else None))
        boxes.append(gt[j])
    for i in np.argsort(scores, kind="stable"):
        text = f"{_name(int(p_labels[i]), class_names)} {scores[i]:.2f}" if show_labels else None
        if match.tp[i]:
            styles.append(BoxStyle(TP_COLOR, label=text))
        elif match.fp[i]:
            styles.append(BoxStyle(FP_COLOR, dashed=True, label=text))
        else:  # on a crowd region, or beyond the detections COCOeval counts
            styles.append(BoxStyle(IGNORED_COLOR, dashed=True, label=text))
        boxes.append(pred[i])
    return draw_boxes(image, np.asarray(boxes).reshape(-1, 4), styles)


def resize_to_fit(image: np.ndarray, max_height: int, max_width: int) -> tuple[np.ndarray, float]:
    """Scale an image down (never up) to fit ``max_height`` x ``max_width``; return it and the scale."""
    array = _rgb(image)
    h, w = array.shape[:2]
    scale = min(max_height / h, max_width / w, 1.0)
    if scale >= 1.0:
        return array, 1.0
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # Box filtering averages all source pixels under each output pixel: no aliasing on big reductions.
    return np.array(Image.fromarray(np.ascontiguousarray(array)).resize(size, Image.Resampling.BOX)), scale


def title_height(cell_width: int) -> int:
    """Height of the title band above a grid cell ``cell_width`` pixels wide."""
    size = font_size(cell_width, cell_width)
    return round(size * 1.5)


def grid_shape(count: int, columns: int | None = None) -> tuple[int, int]:
    """(rows, columns) of a grid of ``count`` images: nearly square unless ``columns`` is given."""
    if count < 1:
        raise ValueError("a grid needs at least one image")
    cols = min(count, columns) if columns else math.ceil(math.sqrt(count))
    return math.ceil(count / cols), cols


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font: Font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def montage(
    images: Sequence[np.ndarray],
    titles: Sequence[str] | None = None,
    columns: int | None = None,
    cell_size: tuple[int, int] | None = None,
    gap: int = 4,
    background: Color = BACKGROUND,
) -> np.ndarray:
    """Arrange images in a grid, each centred in its cell, optionally with a title above it.

    The result is ``rows * (cell_h + title) + (rows + 1) * gap`` pixels high and
    ``columns * cell_w + (columns + 1) * gap`` wide, with ``title`` = :func:`title_height` of the
    cell width when titles are given, 0 otherwise.

    Args:
        images: RGB uint8 images, of any sizes.
        titles: one line per image, shortened to the cell width.
        columns: images per row; by default the grid is nearly square (:func:`grid_shape`).
        cell_size: (height, width) of a cell; by default that of the largest image. Larger images
            are scaled down to fit, smaller ones keep their size.
        gap: pixels between and around cells.
        background: colour of the gaps and the unused parts of cells.
    """
    arrays = [_rgb(image) for image in images]
    if titles is not None and len(titles) != len(arrays):
        raise ValueError(f"{len(arrays)} images but {len(titles)} titles")
    rows, cols = grid_shape(len(arrays), columns)
    cell_h, cell_w = cell_size or (max(a.shape[0] for a in arrays), max(a.shape[1] for a in arrays))
    band = title_height(cell_w) if titles is not None else 0
    out = Image.new("RGB", (cols * cell_w + (cols + 1) * gap, rows * (cell_h + band) + (rows + 1) * gap), background)
    draw = ImageDraw.Draw(out)
    font = load_font(font_size(cell_w, cell_w))
    for index, array in enumerate(arrays):
        row, col = divmod(index, cols)
        x = gap + col * (cell_w + gap)
        y = gap + row * (cell_h + band + gap)
        fitted, _ = resize_to_fit(array, cell_h, cell_w)
        h, w = fitted.shape[:2]
        out.paste(Image.fromarray(np.ascontiguousarray(fitted)), (x + (cell_w - w) // 2, y + band + (cell_h - h) // 2))
        if titles is not None:
            text = _fit_text(draw, titles[index], font, cell_w)
            draw.text((x, y + band // 2), text, fill=(235, 235, 235), font=font, anchor="lm")
    return np.array(out)
