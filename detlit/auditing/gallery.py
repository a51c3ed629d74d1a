"""After stage 8, auditing the labels: ``gallery.html``, the most likely mistakes as crops to look at.

One row per mistake, most likely first: a crop of the image around the label and the suggestion
(the two boxes drawn with :mod:`detlit.pictures.drawing`), the kind, the class, the suggestion, the
score and the note. The crops are JPEG files in ``crops/`` beside the page (``crops/0001.jpg`` for
rank 1), linked by relative paths; every text is escaped, and the page runs no script and loads
nothing but those files.

Colours: a label the suggestion deletes is solid red; a label the suggestion changes is solid
orange; the suggested box is dashed green.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image

from detlit.auditing.ranking import Mistake
from detlit.common.outputs import write_image
from detlit.data.images import load_image
from detlit.errors import DataError
from detlit.pictures.drawing import FP_COLOR, MISSED_COLOR, TP_COLOR, BoxStyle, draw_boxes

log = logging.getLogger(__name__)

CROPS = "crops"
CROP_SIDE = 256  # pixels: crops are scaled to fit a square of this side ...
MAX_ZOOM = 4.0  # ... enlarged at most this much
MARGIN = 0.5  # of the larger box side, around the boxes
MIN_MARGIN = 16  # pixels of the image

CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: #1d2330;
  max-width: 1180px; margin: 0 auto; padding: 20px 28px 60px; line-height: 1.45; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #dfe3ea; padding: 4px 9px; text-align: left; vertical-align: top; }
th { background: #f0f3f7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td code { word-break: break-all; }
img { display: block; }
"""


def crop_name(rank: int) -> str:
    """The crop of a row, relative to the output folder."""
    return f"{CROPS}/{rank:04d}.jpg"


def _xyxy(box: Sequence[float]) -> tuple[float, float, float, float]:
    x, y, w, h = box
    return x, y, x + w, y + h


def crop(image: np.ndarray, mistake: Mistake, names: Mapping[int, str]) -> np.ndarray:
    """The part of an image (RGB uint8) around a mistake's boxes, scaled to :data:`CROP_SIDE`, with
    the label and the suggestion drawn."""
    boxes = [_xyxy(mistake.box)] + ([_xyxy(mistake.suggested_box)] if mistake.suggested_box else [])
    x1, y1 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x2, y2 = max(b[2] for b in boxes), max(b[3] for b in boxes)
    margin = max(MIN_MARGIN, MARGIN * max(x2 - x1, y2 - y1))
    height, width = image.shape[:2]
    left, top = max(0, int(x1 - margin)), max(0, int(y1 - margin))
    right, bottom = min(width, int(np.ceil(x2 + margin))), min(height, int(np.ceil(y2 + margin)))
    right, bottom = max(right, left + 1), max(bottom, top + 1)
    part = np.ascontiguousarray(image[top:bottom, left:right])
    scale = min(MAX_ZOOM, CROP_SIDE / max(part.shape[:2]))
    size = (max(1, round(part.shape[1] * scale)), max(1, round(part.shape[0] * scale)))
    part = np.array(Image.fromarray(part).resize(size, Image.Resampling.BILINEAR))

    def placed(box: tuple[float, float, float, float]) -> list[float]:
        return [(box[0] - left) * scale, (box[1] - top) * scale, (box[2] - left) * scale, (box[3] - top) * scale]

    name = names.get(mistake.category_id, str(mistake.category_id))
    cid = mistake.category_id if mistake.suggested_category_id is None else mistake.suggested_category_id
    suggested = names.get(cid, str(cid))
    drawn, styles = [], []
    if mistake.kind != "missing":
        deleted = mistake.kind in ("spurious", "duplicate")
        text = f"delete {name}" if deleted else f"{name} -> {suggested}" if mistake.kind == "class" else name
        drawn.append(placed(boxes[0]))
        styles.append(BoxStyle(FP_COLOR if deleted else MISSED_COLOR, label=text))
    if mistake.suggested_box is not None:
        drawn.append(placed(boxes[-1]))
        styles.append(BoxStyle(TP_COLOR, dashed=True, label=f"{suggested} {mistake.score:.2f}"))
    return draw_boxes(part, np.asarray(drawn).reshape(-1, 4), styles)


def write_crops(out: Path, mistakes: Sequence[Mistake], image_root: Path, names: Mapping[int, str]) -> list[str | None]:
    """Write the crop of each mistake (rank = position + 1) into ``out/crops``; per mistake the crop's
    path relative to ``out``, or None when its image could not be read. Each image is read once."""
    by_file: dict[str, list[int]] = {}
    for index, mistake in enumerate(mistakes):
        by_file.setdefault(mistake.file_name, []).append(index)
    written: list[str | None] = [None] * len(mistakes)
    for file_name, indices in by_file.items():
        try:
            image = load_image(image_root / file_name)
        except DataError as err:
            log.warning("no crop for %s: %s", file_name, err)
            continue
        for index in indices:
            name = crop_name(index + 1)
            write_image(out / name, Image.fromarray(crop(image, mistakes[index], names)), "JPEG", quality=90)
            written[index] = name
    return written


def _suggestion(mistake: Mistake, names: Mapping[int, str]) -> str:
    if mistake.kind in ("spurious", "duplicate"):
        return "delete the label"
    if mistake.kind == "class":
        cid = mistake.suggested_category_id
        return f"class {names.get(cid, str(cid)) if cid is not None else '?'}"
    x, y, w, h = mistake.suggested_box or (0.0, 0.0, 0.0, 0.0)
    what = "add" if mistake.kind == "missing" else "box"
    return f"{what} {x:.0f}, {y:.0f}, {w:.0f} x {h:.0f}"


def gallery_html(
    mistakes: Sequence[Mistake], crops: Sequence[str | None], names: Mapping[int, str], title: str, total: int
) -> str:
    """The page: one table row per mistake (its crop linked relatively), every text escaped."""
    rows = []
    for rank, (mistake, picture) in enumerate(zip(mistakes, crops, strict=True), 1):
        image = f'<img src="{html.escape(quote(picture))}" alt="rank {rank}">' if picture else "(unreadable)"
        cells = [
            f'<td class="num">{rank}</td>',
            f"<td>{image}</td>",
            f"<td>{html.escape(mistake.kind)}</td>",
            f"<td>{html.escape(names.get(mistake.category_id, str(mistake.category_id)))}</td>",
            f"<td>{html.escape(_suggestion(mistake, names))}</td>",
            f'<td class="num">{mistake.score:.3f}</td>',
            f"<td><code>{html.escape(mistake.file_name)}</code> (image {mistake.image_id})</td>",
            f"<td>{'' if mistake.annotation_id is None else mistake.annotation_id}</td>",
            f"<td>{html.escape(mistake.note)}</td>",
        ]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(
        f"<th>{h}</th>" for h in ("rank", "crop", "kind", "class", "suggestion", "score", "image", "annotation", "note")
    )
    shown = f"the {len(mistakes)} most likely of {total}" if len(mistakes) < total else f"all {total}"
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            # Nothing but the crops beside the page: no script, no request elsewhere.
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src 'self' file:; "
            "style-src 'unsafe-inline'\">",
            f"<title>{html.escape(title)}</title>",
            f"<style>{CSS}</style>",
            "</head>",
            "<body>",
            f"<h1>{html.escape(title)}</h1>",
            f"<p>{html.escape(shown)} rows of mistakes.csv, most likely first. Red: a label to delete; orange: a "
            "label to change; dashed green: the suggestion. Mark the rows to apply in the accept column of "
            "mistakes.csv.</p>",
            f"<table><tr>{head}</tr>",
            *rows,
            "</table>",
            "</body>",
            "</html>",
            "",
        ]
    )
