"""Stage 1 (reading the json), the records: images and their objects, held as columns of numpy arrays.

A COCO dataset the size of train2017 (118k images, 860k objects) costs gigabytes as Python
objects, and every data-loading worker copies those objects page by page as their reference
counts change (copy-on-read, pytorch issue 13246). :class:`Records` keeps the same information
in a few flat arrays instead (ids, sizes, file names in one byte buffer with offsets, objects
sorted by image with offsets, boxes as one float64 array): about 80 bytes per object, shared by
forked workers without copies. It is a sequence of :class:`ImageRecord`: indexing or iterating
builds the record of an image, with its :class:`Annotation` list, on access. Polygons are not
kept: detection needs the box, the area and the crowd flag.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import overload

import numpy as np


@dataclass(frozen=True)
class Annotation:
    """One COCO object; ``bbox`` is XYWH in absolute pixels, as in the json."""

    id: int
    image_id: int
    category_id: int
    bbox: tuple[float, float, float, float]
    area: float  # NaN when the json has none
    iscrowd: bool = False
    index: int = -1  # position in the json's annotations list

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        x, y, w, h = self.bbox
        return x, y, x + w, y + h

    @property
    def effective_area(self) -> float:
        """The json's ``area`` (a segment area for COCO itself), or the box area without one."""
        return self.area if math.isfinite(self.area) and self.area > 0 else self.bbox[2] * self.bbox[3]


@dataclass
class ImageRecord:
    """One image and its objects; ``file_name`` is relative to the image root.

    A record taken from :class:`Records` is a copy built on access: changing it changes nothing
    in the dataset.
    """

    id: int
    file_name: str
    width: int  # as the json says (0 when missing or invalid)
    height: int
    annotations: list[Annotation] = field(default_factory=list)
    index: int = -1  # position in the json's images list


def _int64(values: Iterable[int] | np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(values if isinstance(values, np.ndarray) else list(values), np.int64))


class Records(Sequence[ImageRecord]):
    """Images and their objects as columns (see the module docstring); a sequence of :class:`ImageRecord`.

    Image columns (one entry per image, in the json's order): ``ids``, ``widths``, ``heights``,
    ``positions`` (index in the json's ``images`` list). Object columns (one entry per object,
    grouped by image in image order, in the json's order within an image): ``annotation_ids``,
    ``category_ids``, ``bboxes`` (N, 4) XYWH float64, ``areas`` (NaN when the json has none),
    ``crowd``, ``annotation_positions``; the objects of image ``i`` are rows
    ``offsets[i]:offsets[i + 1]``. Build one with :meth:`from_columns` or :meth:`from_records`.
    """

    def __init__(
        self,
        ids: np.ndarray,
        widths: np.ndarray,
        heights: np.ndarray,
        positions: np.ndarray,
        names: np.ndarray,
        name_offsets: np.ndarray,
        offsets: np.ndarray,
        annotation_ids: np.ndarray,
        category_ids: np.ndarray,
        bboxes: np.ndarray,
        areas: np.ndarray,
        crowd: np.ndarray,
        annotation_positions: np.ndarray,
    ):
        self.ids, self.widths, self.heights, self.positions = ids, widths, heights, positions
        self.names, self.name_offsets = names, name_offsets
        self.offsets = offsets
        self.annotation_ids, self.category_ids, self.bboxes = annotation_ids, category_ids, bboxes
        self.areas, self.crowd, self.annotation_positions = areas, crowd, annotation_positions
        self._file_names: list[str] | None = None

    @classmethod
    def from_columns(
        cls,
        ids: Iterable[int] | np.ndarray,
        file_names: Sequence[str],
        widths: Iterable[int] | np.ndarray,
        heights: Iterable[int] | np.ndarray,
        positions: Iterable[int] | np.ndarray,
        owners: Iterable[int] | np.ndarray,
        annotation_ids: Iterable[int] | np.ndarray,
        category_ids: Iterable[int] | np.ndarray,
        bboxes: Sequence[Sequence[float]] | np.ndarray,
        areas: Iterable[float] | np.ndarray,
        crowd: Iterable[bool] | np.ndarray,
        annotation_positions: Iterable[int] | np.ndarray,
    ) -> Records:
        """Records from per-image and per-object columns; ``owners`` is each object's image, as an
        index into the image columns. Objects may come in any order: they are grouped by image,
        keeping their order within an image."""
        encoded = [name.encode("utf-8") for name in file_names]
        name_offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(name) for name in encoded], out=name_offsets[1:])
        owner = _int64(owners)
        order = np.argsort(owner, kind="stable")
        counts = np.bincount(owner, minlength=len(encoded)) if len(owner) else np.zeros(len(encoded), np.int64)
        offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        boxes = np.asarray(bboxes, np.float64).reshape(-1, 4)
        return cls(
            ids=_int64(ids),
            widths=np.asarray(widths if isinstance(widths, np.ndarray) else list(widths), np.int32),
            heights=np.asarray(heights if isinstance(heights, np.ndarray) else list(heights), np.int32),
            positions=_int64(positions),
            names=np.frombuffer(b"".join(encoded), np.uint8),
            name_offsets=name_offsets,
            offsets=offsets,
            annotation_ids=_int64(annotation_ids)[order],
            category_ids=_int64(category_ids)[order],
            bboxes=np.ascontiguousarray(boxes[order]),
            areas=np.asarray(areas if isinstance(areas, np.ndarray) else list(areas), np.float64)[order],
            crowd=np.asarray(crowd if isinstance(crowd, np.ndarray) else list(crowd), bool)[order],
            annotation_positions=_int64(annotation_positions)[order],
        )

    @classmethod
    def from_records(cls, records: Iterable[ImageRecord]) -> Records:
        """Records holding the given image records (and their annotations)."""
        images = list(records)
        annotations = [(i, a) for i, image in enumerate(images) for a in image.annotations]
        return cls.from_columns(
            ids=[image.id for image in images],
            file_names=[image.file_name for image in images],
            widths=[image.width for image in images],
            heights=[image.height for image in images],
            positions=[image.index for image in images],
            owners=[i for i, _ in annotations],
            annotation_ids=[a.id for _, a in annotations],
            category_ids=[a.category_id for _, a in annotations],
            bboxes=[a.bbox for _, a in annotations],
            areas=[a.area for _, a in annotations],
            crowd=[a.iscrowd for _, a in annotations],
            annotation_positions=[a.index for _, a in annotations],
        )

    # --- the sequence of records ---------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, index: int) -> ImageRecord: ...

    @overload
    def __getitem__(self, index: slice) -> Records: ...

    def __getitem__(self, index: int | slice) -> ImageRecord | Records:
        if isinstance(index, slice):
            return self.take(np.arange(len(self))[index])
        count = len(self)
        if not -count <= index < count:
            raise IndexError(f"image index {index} out of range for {count} images")
        return self.record(index % count)

    def __iter__(self) -> Iterator[ImageRecord]:
        for index in range(len(self)):
            yield self.record(index)

    def __repr__(self) -> str:
        return f"Records({len(self)} images, {self.num_annotations} annotations)"

    def record(self, index: int) -> ImageRecord:
        """The record of image ``index`` (0-based position), built from the columns."""
        return ImageRecord(
            int(self.ids[index]),
            self.file_name(index),
            int(self.widths[index]),
            int(self.heights[index]),
            self.annotations(index),
            int(self.positions[index]),
        )

    def file_name(self, index: int) -> str:
        start, stop = self.name_offsets[index], self.name_offsets[index + 1]
        return self.names[start:stop].tobytes().decode("utf-8")

    def file_names(self) -> list[str]:
        """Every file name (decoded once, then kept: the checks ask for them several times)."""
        if self._file_names is None:
            self._file_names = [self.file_name(index) for index in range(len(self))]
        return self._file_names

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_file_names": None}

    def rows(self, index: int) -> slice:
        """The object rows of image ``index``."""
        return slice(int(self.offsets[index]), int(self.offsets[index + 1]))

    def annotations(self, index: int) -> list[Annotation]:
        """The objects of image ``index`` as :class:`Annotation` records."""
        rows = self.rows(index)
        image_id = int(self.ids[index])
        return [
            Annotation(aid, image_id, cid, (x, y, w, h), area, crowd, position)
            for aid, cid, (x, y, w, h), area, crowd, position in zip(
                self.annotation_ids[rows].tolist(),
                self.category_ids[rows].tolist(),
                self.bboxes[rows].tolist(),
                self.areas[rows].tolist(),
                self.crowd[rows].tolist(),
                self.annotation_positions[rows].tolist(),
                strict=True,
            )
        ]

    # --- columns for vectorised code --------------------------------------------------------

    @property
    def num_annotations(self) -> int:
        return len(self.annotation_ids)

    @property
    def counts(self) -> np.ndarray:
        """Objects (crowd regions included) per image."""
        return np.diff(self.offsets)

    @property
    def owners(self) -> np.ndarray:
        """The image (0-based position) of every object."""
        return np.repeat(np.arange(len(self)), self.counts)

    def with_objects(self) -> np.ndarray:
        """Positions of the images that have at least one object that is not a crowd region."""
        counts = np.bincount(self.owners[~self.crowd], minlength=len(self))
        return np.flatnonzero(counts > 0)

    def take(self, indices: Sequence[int] | np.ndarray) -> Records:
        """The records of some images, in the order given."""
        chosen = np.asarray(indices, np.int64).reshape(-1)
        offsets, rows = _gather(self.offsets, chosen)
        name_offsets, name_rows = _gather(self.name_offsets, chosen)
        return Records(
            ids=self.ids[chosen],
            widths=self.widths[chosen],
            heights=self.heights[chosen],
            positions=self.positions[chosen],
            names=self.names[name_rows],
            name_offsets=name_offsets,
            offsets=offsets,
            annotation_ids=self.annotation_ids[rows],
            category_ids=self.category_ids[rows],
            bboxes=self.bboxes[rows],
            areas=self.areas[rows],
            crowd=self.crowd[rows],
            annotation_positions=self.annotation_positions[rows],
        )

    def effective_areas(self) -> np.ndarray:
        """:attr:`Annotation.effective_area` of every object."""
        box = self.bboxes[:, 2] * self.bboxes[:, 3]
        return np.where(np.isfinite(self.areas) & (self.areas > 0), self.areas, box)

    def nbytes(self) -> int:
        """Bytes held by the columns."""
        return sum(
            array.nbytes
            for array in (
                self.ids,
                self.widths,
                self.heights,
                self.positions,
                self.names,
                self.name_offsets,
                self.offsets,
                self.annotation_ids,
                self.category_ids,
                self.bboxes,
                self.areas,
                self.crowd,
                self.annotation_positions,
            )
        )


def _gather(offsets: np.ndarray, chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """New offsets and the rows they take, for the ranges ``offsets[i]:offsets[i + 1]`` of ``chosen``."""
    starts = offsets[chosen]
    counts = offsets[chosen + 1] - starts
    new = np.zeros(len(chosen) + 1, np.int64)
    np.cumsum(counts, out=new[1:])
    return new, np.arange(int(new[-1]), dtype=np.int64) + np.repeat(starts - new[:-1], counts)


def as_records(records: Sequence[ImageRecord]) -> Records:
    """``records`` as :class:`Records`: itself when it is one, else its columns."""
    return records if isinstance(records, Records) else Records.from_records(records)
