"""Stage 1 (preparing the data, before the check), other label formats: YOLO, Pascal VOC, LabelMe and CVAT
labels read into a COCO detection json, and a COCO json written as YOLO labels.

detlit trains on COCO json only; ``python -m detlit.convert`` (:func:`detlit.data.formats.convert.convert`)
brings the other formats to it. One module per format reads it (:mod:`~detlit.data.formats.yolo`,
:mod:`~detlit.data.formats.voc`, :mod:`~detlit.data.formats.labelme`, :mod:`~detlit.data.formats.cvat`);
:mod:`~detlit.data.formats.common` holds what they share (class order, image sizes from the image
headers with the EXIF orientation applied, the list of problems), :mod:`~detlit.common.safe_xml`
reads XML from strangers (no DTD, no entities, bounded, line numbers kept) and
:mod:`~detlit.data.formats.detect` recognises a format from a path, cheaply, for ``convert`` without
``--from`` and for the sentence ``check`` and ``fit`` answer when they are given labels of another format.
"""

from __future__ import annotations

FORMATS = ("yolo", "voc", "labelme", "cvat")
"""The formats read into COCO, as ``--from`` names them."""
