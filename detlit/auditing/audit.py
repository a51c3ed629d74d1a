"""After stage 8, auditing the labels: the job of ``python -m detlit.audit``.

The images of the json are predicted by models that did not train on them, through the one
inference path (:class:`~detlit.inference.predictor.Predictor`, every detection down to the model's
own floor, ``MODEL.ROI_HEADS.SCORE_THRESH_TEST``, not the checkpoint's per-class thresholds):

* out-of-fold, ``folds``: pairs of a checkpoint and the ``val.json`` of its fold (``python -m
  detlit.split --folds K``); each checkpoint predicts the images of its fold's ``val.json``, which
  are found in the json by file name. An image of the json in no fold's ``val.json`` is not
  audited by a model (one log line counts them);
* a held-out split, ``ckpt``: one checkpoint predicts every image; it must not have trained on them.

The detections are ranked against the labels (:mod:`detlit.auditing.ranking`) and written to
``out``: ``mistakes.csv`` (every row scoring ``min_score`` or more, :mod:`detlit.auditing.table`),
``gallery.html`` with ``crops/`` (the ``top`` first rows, :mod:`detlit.auditing.gallery`). With
``apply``, the job is instead :func:`~detlit.auditing.corrections.apply_edits`.
"""

from __future__ import annotations

import logging
import posixpath
import re
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from detlit.auditing.corrections import apply_edits
from detlit.auditing.gallery import CROPS, gallery_html, write_crops
from detlit.auditing.ranking import KINDS, AuditedImage, Found, HeadView, Labels, find_mistakes
from detlit.auditing.table import to_csv
from detlit.common.outputs import check_folder, check_not_images, check_outputs, write_lock, write_together
from detlit.common.paths import not_a_file
from detlit.data.checks import load_checked
from detlit.data.coco import CocoDataset, ImageRecord, load_coco
from detlit.data.images import load_image
from detlit.errors import ConfigError, DataError

if TYPE_CHECKING:
    from detlit.inference.predictor import Predictor

log = logging.getLogger(__name__)

CSV_NAME = "mistakes.csv"
HTML_NAME = "gallery.html"
CROP_PATTERN = re.compile(r"^\d{4,}\.jpg$")


def _key(name: str) -> str:
    return posixpath.normpath(name.replace("\\", "/"))


def fold_images(dataset: CocoDataset, folds: Sequence[tuple[Path, Path]]) -> list[list[int]]:
    """Per fold, the positions in ``dataset.images`` of the images its ``val.json`` lists.

    Raises:
        DataError: a val.json is unreadable, lists an image the json does not, or an image is in the
            val.json of two folds.
    """
    position = {_key(name): index for index, name in enumerate(dataset.images.file_names())}
    owner: dict[int, int] = {}
    chosen: list[list[int]] = []
    for number, (_, val_json) in enumerate(folds, 1):
        val = load_coco(val_json, dataset.image_root)
        indices = []
        for name in val.images.file_names():
            index = position.get(_key(name))
            if index is None:
                raise DataError(
                    f"--fold {val_json} lists image {name!r}, which {dataset.json_path} does not; pass the val.json "
                    "files of a split of --json (python -m detlit.split --folds K)"
                )
            if index in owner:
                raise DataError(
                    f"--fold {val_json}: image {name!r} is in the val.json of fold {owner[index]} too; pass the "
                    "folds of one split"
                )
            owner[index] = number
            indices.append(index)
        chosen.append(indices)
    return chosen


def _labels(record: ImageRecord) -> Labels:
    annotations = record.annotations
    return Labels.of(
        (a.id for a in annotations),
        (a.bbox for a in annotations),
        (a.category_id for a in annotations),
        (a.iscrowd for a in annotations),
    )


def predict(dataset: CocoDataset, ckpt: Path, indices: list[int], device: str, batch_size: int) -> dict[int, Found]:
    """The detections of one checkpoint on some images of the dataset, by image position; an image
    that cannot be read is logged and left out."""
    from detlit.inference.evaluate import predict_dataset
    from detlit.inference.predictor import Predictor

    problem = not_a_file(ckpt)
    if problem is not None:
        raise ConfigError(f"--ckpt {ckpt} {problem}; pass a checkpoint written by python -m detlit.fit")
    predictor = Predictor.load(ckpt, device=device, batch_size=batch_size, all_detections=True)
    unknown = sorted(set(dataset.label_map().category_ids) - set(predictor.label_map.category_ids))
    if unknown:
        raise DataError(
            f"{dataset.json_path} has category id(s) {unknown} that the model of {ckpt} does not know "
            f"({predictor.label_map.describe()}); audit with a model trained on these categories"
        )
    part = CocoDataset(dataset.json_path, dataset.image_root, dataset.images.take(indices), dataset.categories)
    (_, targets), results, _ = predict_dataset(part, predictor, progress=False)
    predicted = {int(target["image_id"]) for target in targets}
    by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        by_image[int(result["image_id"])].append(result)
    readable = [index for index in indices if dataset.images.record(index).id in predicted]
    views = head_views(dataset, predictor, readable)
    found = {}
    for index in readable:
        rows = by_image.get(dataset.images.record(index).id, [])
        found[index] = Found.of(
            (r["bbox"] for r in rows), (r["score"] for r in rows), (r["category_id"] for r in rows), views.get(index)
        )
    log.info("%s predicted %d of %d images", ckpt, len(found), len(indices))
    return found


def head_views(dataset: CocoDataset, predictor: Predictor, indices: list[int]) -> dict[int, HeadView]:
    """What the model's box head says of each image's labelled boxes, by image position (none for a
    one-stage detector: its ``class`` rows then come from detections alone, one log line)."""
    if not predictor.has_box_head:
        log.info("a one-stage detector has no box head: wrong classes are looked for in its detections only")
        return {}
    columns = np.asarray(predictor.label_map.category_ids, np.int64)
    views: dict[int, HeadView] = {}
    for start in range(0, len(indices), predictor.batch_size):
        chunk = [i for i in indices[start : start + predictor.batch_size] if dataset.images.record(i).annotations]
        if not chunk:
            continue
        records = [dataset.images.record(i) for i in chunk]
        pixels = [load_image(dataset.image_root / record.file_name) for record in records]
        boxes = [
            np.asarray([[x, y, x + w, y + h] for x, y, w, h in (a.bbox for a in record.annotations)], np.float64)
            for record in records
        ]
        for index, probabilities in zip(chunk, predictor.label_probabilities(pixels, boxes), strict=True):
            views[index] = HeadView(probabilities[:, :-1], columns)
    return views


def audit(
    json_path: Path,
    images: Path | None = None,
    out: Path | None = None,
    folds: Sequence[tuple[Path, Path]] = (),
    ckpt: Path | None = None,
    top: int = 200,
    min_score: float = 0.2,
    device: str = "auto",
    batch_size: int = 4,
    apply: Path | None = None,
    fix: Path | None = None,
    overwrite: bool = False,
) -> int:
    """``python -m detlit.audit``: rank the likely label mistakes of ``json_path`` (module docstring),
    or with ``apply`` write the corrected copy ``fix`` of it from an edited CSV."""
    if apply is not None:
        if folds or ckpt is not None or out is not None:
            raise ConfigError("--apply corrects a json from an edited CSV: leave out --fold, --ckpt and --out")
        if fix is None:
            raise ConfigError("--apply needs --fix FIXED.json, the corrected copy to write (the json is never written)")
        return apply_edits(csv_path=apply, json_path=json_path, fix=fix, images=images, overwrite=overwrite)
    if fix is not None:
        raise ConfigError("--fix names the corrected copy that --apply writes; give --apply EDITED.csv too")
    if bool(folds) == (ckpt is not None):
        raise ConfigError("give the models that audit: --fold CKPT VAL_JSON once per fold, or --ckpt CKPT, not both")
    if images is None:
        raise ConfigError("the audit runs models on the images: give --images, the folder of the json's images")
    if out is None:
        raise ConfigError("give --out FOLDER for mistakes.csv and gallery.html")
    check_folder(out)
    started = time.perf_counter()
    pairs = [(ckpt, None)] if ckpt is not None else [(c, v) for c, v in folds]
    inputs = [json_path, *(p for pair in pairs for p in pair if p is not None)]
    outputs = [out / CSV_NAME, out / HTML_NAME, out / CROPS]
    with write_lock(out):
        check_outputs(outputs, inputs=inputs, overwrite=overwrite)
        dataset = load_checked(json_path, images, "--images", files=True)
        check_not_images(outputs, [(dataset.image_root, dataset.images.file_names())])
        everything = list(range(len(dataset.images)))
        parts = [everything] if ckpt is not None else fold_images(dataset, folds)
        found: dict[int, Found] = {}
        for (model, _), indices in zip(pairs, parts, strict=True):
            assert model is not None
            found.update(predict(dataset, model, indices, device, batch_size))
        if len(found) < len(dataset.images):
            log.warning(
                "%d of %d images of %s are in no fold's val.json or could not be read: not audited by a model "
                "(duplicate labels are still looked for)",
                len(dataset.images) - len(found),
                len(dataset.images),
                json_path,
            )
        audited = [
            AuditedImage(record.id, record.file_name, _labels(record), found.get(index))
            for index, record in enumerate(dataset.images)
        ]
        mistakes = find_mistakes(audited, min_score=min_score)
        names = {c.id: c.name for c in dataset.categories}
        shown = mistakes[:top]
        stale = [p for p in (out / CROPS).glob("*.jpg") if CROP_PATTERN.match(p.name)] if (out / CROPS).is_dir() else []
        crops = write_crops(out, shown, dataset.image_root, names)
        for path in stale:
            if path.name not in {Path(c).name for c in crops if c}:
                path.unlink(missing_ok=True)  # a crop of an earlier audit in this folder
        title = f"Likely label mistakes of {json_path.name}"
        write_together(
            {
                out / CSV_NAME: to_csv(mistakes, names).encode("utf-8"),
                out / HTML_NAME: gallery_html(shown, crops, names, title, len(mistakes)).encode("utf-8"),
            }
        )
    counts = Counter(m.kind for m in mistakes)
    log.info(
        "%d likely mistakes (score >= %g) in %d images audited by a model: %s",
        len(mistakes),
        min_score,
        len(found),
        ", ".join(f"{counts[k]} {k}" for k in KINDS),
    )
    log.info(
        "wrote %s (all rows) and %s (%d rows, crops in %s) in %.1f s",
        out / CSV_NAME,
        out / HTML_NAME,
        len(shown),
        out / CROPS,
        time.perf_counter() - started,
    )
    return 0
