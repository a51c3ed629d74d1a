"""Stage 1 (preparing the data, before the check), other label formats: the convert job, labels of another format
into a COCO json, or a COCO json into YOLO labels.

:func:`convert` (``python -m detlit.convert``) reads every label file first and lists every problem
(one sentence each, with file and line) before it writes anything; with any problem it writes nothing
and ends in one sentence (exit status 2). Into COCO it writes ``OUT/annotations.json``; into YOLO,
``OUT/labels/<image path>.txt`` for every image, ``OUT/data.yaml`` and ``OUT/classes.txt``, all
committed together (:func:`~detlit.common.outputs.write_together`). Before any work it asks the output
guard (:func:`~detlit.common.outputs.check_outputs`): an existing output stops it unless ``overwrite``,
and no output may be one of its inputs (a label file, the names file, the json, an image), ``overwrite``
or not; the output folder is held against a second command while it writes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detlit.common.outputs import check_outputs, write_bytes, write_lock, write_together
from detlit.data.coco import raise_on_errors, read_coco
from detlit.data.formats import FORMATS
from detlit.data.formats.common import (
    Classes,
    Labelled,
    Problems,
    coco_document,
    image_files,
    read_names,
    require_folder,
)
from detlit.data.formats.cvat import annotations_file, read_cvat
from detlit.data.formats.detect import label_format
from detlit.data.formats.labelme import json_files, read_labelme
from detlit.data.formats.voc import read_voc, xml_files
from detlit.data.formats.yolo import data_yaml, default_labels, find_names, read_yolo, yolo_labels
from detlit.errors import ConfigError, DataError

log = logging.getLogger(__name__)

ANNOTATIONS = "annotations.json"
LABELS = "labels"
DATA_YAML = "data.yaml"
CLASSES_TXT = "classes.txt"


@dataclass(frozen=True)
class Summary:
    """What a conversion wrote."""

    source: str
    target: Path  # the json, or the labels folder
    images: int
    objects: int
    classes: int
    image_folder: Path

    def line(self) -> str:
        done = (
            f"converted {self.images} images, {self.objects} objects of {self.classes} classes from {self.source} "
            f"into {self.target}"
        )
        if self.target.suffix == ".json":
            return f"{done}; check it: python -m detlit.check {self.target} --images {self.image_folder}"
        return done


def convert(
    *,
    source: str | None = None,
    target: str | None = None,
    labels: Path | None = None,
    json_path: Path | None = None,
    images: Path,
    out: Path,
    names: Path | None = None,
    overwrite: bool = False,
) -> Summary:
    """Convert labels of ``source`` format into ``OUT/annotations.json``, or a COCO json into YOLO labels.

    Args:
        source: ``yolo``, ``voc``, ``labelme``, ``cvat`` or ``coco``; None: told from ``labels``
            (:func:`~detlit.data.formats.detect.label_format`), or ``coco`` when ``json_path`` is given.
        target: ``coco`` or ``yolo``; None: ``yolo`` from a COCO json, else ``coco``.
        labels: the labels: a folder (YOLO, VOC, LabelMe), one file (VOC, LabelMe) or CVAT's xml;
            None for YOLO: the ``labels`` twin of the image folder (Ultralytics' rule).
        json_path: the COCO json to write as YOLO labels.
        images: the image folder the labels' images are relative to.
        out: the folder to write into.
        names: the class names in order (one per line, or a YOLO ``data.yaml``); YOLO: found beside
            the labels when not given; other formats: fixes the class order and refuses other labels.
        overwrite: replace outputs an earlier conversion wrote.

    Raises:
        ConfigError: options that do not fit together, or an output the guard refuses.
        DataError: unreadable input, or problems in the labels (all logged, the first in the sentence).
    """
    source, target = _route(source, target, labels, json_path, names, images)
    require_folder(images, "--images")
    if source == "coco":
        assert json_path is not None
        return _to_yolo(json_path, images, out, overwrite)
    if labels is None:
        labels = default_labels(images)
        log.info("YOLO labels from %s (the image folder's 'labels' twin)", labels)
    if not labels.exists():
        raise DataError(f"--labels {labels} does not exist; pass the folder (or file) of your {source} labels")
    return _to_coco(source, labels, images, out, names, overwrite)


def _route(
    source: str | None,
    target: str | None,
    labels: Path | None,
    json_path: Path | None,
    names: Path | None,
    images: Path,
) -> tuple[str, str]:
    """The source and target formats, checked against the options given."""
    if json_path is not None:
        if names is not None:
            raise ConfigError("--names is for --labels; a COCO json (--json) names its classes itself")
        if source not in (None, "coco") or labels is not None:
            raise ConfigError(
                "--json is a COCO json to write as YOLO labels; give --labels and --from for other formats"
            )
        if target not in (None, "yolo"):
            raise ConfigError("a COCO json converts to YOLO labels: --to yolo (or leave --to out)")
        return "coco", "yolo"
    if source == "coco" or target == "yolo":
        raise ConfigError("COCO to YOLO reads the COCO json from --json JSON; pass it")
    if source is None:
        where = labels if labels is not None else _yolo_twin(images)
        found = label_format(where) if where is not None else None
        if found == "coco":
            raise ConfigError(
                f"--labels {where} is a COCO json already; pass it to check and fit, or write it as YOLO labels "
                "with --json"
            )
        if found not in FORMATS:
            raise ConfigError(
                f"cannot tell the format of --labels {where}; pass --from with one of {', '.join(FORMATS)}"
            )
        log.info("labels in %s are %s (pass --from to say otherwise)", where, found)
        source = found
    return source, "coco"


def _yolo_twin(images: Path) -> Path | None:
    try:
        return default_labels(images)
    except ConfigError:
        return None


def _inputs(source: str, labels: Path) -> list[Path]:
    """The label files a conversion reads (listed, not read)."""
    if source == "voc":
        return xml_files(labels)
    if source == "labelme":
        return json_files(labels)
    if source == "cvat":
        return [annotations_file(labels)]
    return [labels] if labels.is_file() else []


def _to_coco(source: str, labels: Path, images: Path, out: Path, names: Path | None, overwrite: bool) -> Summary:
    if source == "yolo":
        if not labels.is_dir():
            raise DataError(f"--labels {labels} is a file; YOLO labels are a folder of .txt files, one per image")
        names = names or find_names(labels)
    annotations = out / ANNOTATIONS
    inputs = [*_inputs(source, labels), *([names] if names is not None else [])]
    with write_lock(out):
        check_outputs([annotations], inputs=inputs, overwrite=overwrite)
        document, classes = _read(source, labels, images, names)
        write_bytes(annotations, json.dumps(document, indent=1, ensure_ascii=False).encode("utf-8"))
    summary = Summary(
        source, annotations, len(document["images"]), len(document["annotations"]), len(classes.names), images
    )
    log.info(
        "wrote %s: %d images, %d objects; classes: %s",
        annotations,
        summary.images,
        summary.objects,
        ", ".join(classes.names),
    )
    return summary


def _read(source: str, labels: Path, images: Path, names: Path | None) -> tuple[dict[str, Any], Classes]:
    """The COCO document of the labels, and their classes; every problem listed, then one sentence."""
    problems = Problems()
    class_names = read_names(names, problems) if names is not None else []
    problems.stop()  # the class order must be right before any label is read against it
    classes = Classes(class_names, fixed=names is not None, source=str(names))
    found: list[Labelled]
    if source == "yolo":
        found, classes, sizes = read_yolo(labels, images, class_names, str(names), problems)
    elif source == "voc":
        found, classes, sizes = read_voc(labels, images, classes, problems)
    elif source == "labelme":
        found, classes, sizes = read_labelme(labels, images, classes, problems)
    else:
        found, classes, sizes = read_cvat(labels, images, classes, problems)
    problems.stop()
    if not found:
        raise DataError(f"no image found for the labels in {labels} under {images}; check --images")
    if source != "yolo":
        _note_unlabelled(images, found)
    return coco_document(found, classes, sizes), classes


def _note_unlabelled(images: Path, found: list[Labelled]) -> None:
    """Log the images that no label file names (one file per image formats leave them out)."""
    named = {image.file_name for image in found}
    left = [name for name in image_files(images) if name not in named]
    if left:
        log.warning(
            "%d images under %s have no label file and are left out (e.g. %s): an image not labelled yet would "
            "teach the model that its objects are background; save an empty label file for an image without objects",
            len(left),
            images,
            ", ".join(left[:3]),
        )


def _to_yolo(json_path: Path, images: Path, out: Path, overwrite: bool) -> Summary:
    dataset, findings = read_coco(json_path, images)
    raise_on_errors(findings, json_path, images)
    files, names, counts = yolo_labels(dataset)
    contents = {out / LABELS / name: text.encode("utf-8") for name, text in files.items()}
    contents[out / DATA_YAML] = data_yaml(names, json_path).encode("utf-8")
    contents[out / CLASSES_TXT] = "".join(f"{name}\n" for name in names).encode("utf-8")
    with write_lock(out):
        check_outputs(
            list(contents), inputs=[json_path], overwrite=overwrite, images=[(images, dataset.images.file_names())]
        )
        write_together(contents)
    if counts["crowd"]:
        log.info("%d crowd regions left out: YOLO has no ignore regions", counts["crowd"])
    if counts["clipped"]:
        log.info("%d boxes clipped to their image (YOLO refuses coordinates outside 0..1)", counts["clipped"])
    if counts["no_area"]:
        log.warning("%d boxes have no area inside their image and are left out", counts["no_area"])
    log.info("wrote %d label files under %s, %s and %s", len(files), out / LABELS, out / DATA_YAML, out / CLASSES_TXT)
    return Summary("coco", out / LABELS, len(files), counts["objects"], len(names), images)
