"""Stage 5, loading: which images each step sees, on each process.

Training (:class:`TrainingBatchSampler`), every epoch:

1. optionally repeat images of rare categories (:func:`repeat_factors`, detectron2's
   ``RepeatFactorTrainingSampler``);
2. shuffle, identically on every process, with a generator seeded by ``seed + epoch``;
3. cut into batches, optionally of images of one orientation only (:func:`orientation_groups`,
   detectron2's ``AspectRatioGroupedDataset``), so little of a batch is padding;
4. deal the batches out to the processes, repeating the first few so that every process gets the
   same number of batches (the same number of steps, which DDP needs). Batches are dealt, not
   images: equal shares of images can still split into different numbers of orientation batches.

Validation and test (:class:`EvaluationBatchSampler`): every image on exactly one process,
nothing repeated, so metrics count each image once; batches of equal input shape only.

Both samplers subclass ``DistributedSampler``: Lightning only leaves a loader's sampler alone in a
multi-process run when it is one (``_requires_distributed_sampler`` in
``lightning/pytorch/trainer/connectors/data_connector.py``); any other sampler it replaces with
its own ``DistributedSampler``, or re-creates a batch sampler around one. Lightning also calls
``set_epoch`` on ``loader.sampler`` at the start of every epoch, which is what advances the
shuffle here.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator, Sequence, Sized
from typing import Generic, Protocol, TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from detlit.data.coco import ImageRecord
from detlit.data.records import as_records

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class SizedDataset(Protocol[T_co]):
    """A map-style dataset with a length."""

    def __getitem__(self, index: int) -> T_co: ...

    def __len__(self) -> int: ...


def orientation_groups(records: Sequence[ImageRecord]) -> list[int]:
    """Aspect-ratio group of each image as the json sizes it: 0 when width >= height, 1 otherwise."""
    columns = as_records(records)
    return (columns.widths < columns.heights).astype(np.int64).tolist()


def repeat_factors(records: Sequence[ImageRecord], threshold: float) -> list[float]:
    """How often each image is seen per epoch, so that rare categories are seen more often.

    As detectron2's ``RepeatFactorTrainingSampler``: with f(c) the fraction of images that contain
    category c, r(c) = max(1, sqrt(threshold / f(c))); an image's factor is the largest r(c) of
    its categories, 1 for an image without objects. Crowd regions are ignore regions, not objects,
    so they do not count.

    Args:
        records: the training images.
        threshold: frequency below which a category is repeated (detectron2 uses 0.001).
    """
    columns = as_records(records)
    objects = ~columns.crowd
    # Each (image, category) pair once: the images that contain each category.
    pairs = np.unique(np.stack([columns.owners[objects], columns.category_ids[objects]]), axis=1)
    _, category_of_pair, images_with = np.unique(pairs[1], return_inverse=True, return_counts=True)
    per_category = np.maximum(1.0, np.sqrt(threshold * len(columns) / np.maximum(images_with, 1)))
    factors = np.ones(len(columns))
    np.maximum.at(factors, pairs[0], per_category[category_of_pair])
    return factors.tolist()


class TrainingBatchSampler(DistributedSampler[list[int]]):
    """Shuffled training batches of one process, a new order each epoch (see the module docstring).

    Yields lists of dataset indices: the loader runs with ``batch_size=None`` over a
    :class:`BatchDataset`. All processes build the same list of the epoch's batches; when its
    length is not a multiple of ``num_replicas`` its first batches are appended again, and process
    ``rank`` takes every ``num_replicas``-th batch from ``rank`` on. So every process runs
    ``len(self)`` steps, and two processes share images only through those appended batches (or
    when repeat factors put copies of one image into different batches).

    Args:
        dataset: the training dataset (only its length is used).
        batch_size: images per batch; each orientation group ends in one smaller batch unless
            ``drop_last``.
        groups: a group id per image (:func:`orientation_groups`); batches never mix groups.
            ``None`` batches images in shuffled order.
        repeat_factors: expected number of times each image is seen per epoch (:func:`repeat_factors`):
            ``floor(r)`` times, plus once more with probability ``r - floor(r)``. ``None`` shows
            every image once.
        num_replicas: number of processes.
        rank: this process, ``0..num_replicas-1``.
        seed: shuffling seed, the same on every process.
        drop_last: drop the smaller batches, and the batches that do not divide evenly among the
            processes, instead of repeating some (unless no full batch would be left for a process).
    """

    def __init__(
        self,
        dataset: Sized,
        batch_size: int,
        groups: Sequence[int] | None = None,
        repeat_factors: Sequence[float] | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        drop_last: bool = False,
    ):
        super().__init__(
            dataset,  # type: ignore[arg-type]
            num_replicas=num_replicas,
            rank=rank,
            shuffle=True,
            seed=seed,
            drop_last=drop_last,
        )
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        size = len(dataset)
        for name, values in (("groups", groups), ("repeat_factors", repeat_factors)):
            if values is not None and len(values) != size:
                raise ValueError(f"{name} has {len(values)} entries for a dataset of {size}")
        self.size = size
        self.batch_size = batch_size
        self.groups = None if groups is None else list(groups)
        self.repeat_factors = None if repeat_factors is None else torch.tensor(repeat_factors, dtype=torch.float64)
        self._cached: tuple[int, list[list[int]]] | None = None
        self.skip_next = 0  # batches of the next epoch already trained before a resume

    def epoch_indices(self, generator: torch.Generator) -> list[int]:
        """All processes' indices of this epoch, repeated and shuffled."""
        indices = torch.arange(self.size)
        if self.repeat_factors is not None:
            whole = self.repeat_factors.floor()
            extra = torch.rand(self.size, generator=generator, dtype=torch.float64) < self.repeat_factors - whole
            indices = torch.repeat_interleave(indices, (whole + extra).long())
        return indices[torch.randperm(len(indices), generator=generator)].tolist()

    def epoch_batches(self) -> list[list[int]]:
        """All processes' batches of this epoch, evened out to a multiple of ``num_replicas``."""
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        indices = self.epoch_indices(generator)
        if self.groups is None:
            batches = [indices[i : i + self.batch_size] for i in range(0, len(indices), self.batch_size)]
        else:
            batches = []
            pending: dict[int, list[int]] = defaultdict(list)
            for index in indices:
                bucket = pending[self.groups[index]]
                bucket.append(index)
                if len(bucket) == self.batch_size:
                    batches.append(bucket)
                    pending[self.groups[index]] = []
            batches += [bucket for _, bucket in sorted(pending.items()) if bucket]
        if self.drop_last:
            full = [batch for batch in batches if len(batch) == self.batch_size]
            full = full[: len(full) - len(full) % self.num_replicas]
            if full:
                return full
            # Fewer full batches than processes: the smaller ones stay rather than an empty epoch.
        if batches and len(batches) % self.num_replicas:
            padding = self.num_replicas - len(batches) % self.num_replicas
            batches += (batches * math.ceil(padding / len(batches)))[:padding]
        return batches

    def _batches(self) -> list[list[int]]:
        if self._cached is None or self._cached[0] != self.epoch:
            self._cached = (self.epoch, self.epoch_batches()[self.rank :: self.num_replicas])
        return self._cached[1]

    def __iter__(self) -> Iterator[list[int]]:
        # A run resumed mid-epoch continues with the batches this epoch had left, in the same
        # order; the length stays the full epoch's, which is what Lightning counts progress in.
        skip, self.skip_next = self.skip_next, 0
        return iter(self._batches()[skip:])

    def __len__(self) -> int:
        return len(self._batches())


def shape_batches(
    shapes: Sequence[tuple[int, int]], batch_size: int, indices: Sequence[int] | None = None
) -> list[list[int]]:
    """Batches of at most ``batch_size`` indices whose images have the same (resized) shape.

    detectron2 pads a batch to its largest image, and GroupNorm statistics (and border features)
    then depend on which images share a batch. Batching only images of one shape makes every
    image's prediction independent of its neighbours, whatever the batch size: validation, test,
    ``python -m detlit.evaluate`` and the predictor all batch this way, so their numbers agree.

    Args:
        shapes: (height, width) of each image, by index.
        batch_size: images per batch at most.
        indices: the indices to batch (default: all), in the order batches are filled.
    """
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for index in range(len(shapes)) if indices is None else indices:
        groups[(int(shapes[index][0]), int(shapes[index][1]))].append(index)
    return [
        members[start : start + batch_size]
        for members in groups.values()
        for start in range(0, len(members), batch_size)
    ]


class EvaluationBatchSampler(DistributedSampler[list[int]]):
    """Evaluation batches of one process: its unpadded shard, batched by equal input shape
    (:func:`shape_batches`), so the numbers equal those of ``python -m detlit.evaluate`` and of the
    predictor, whatever the batch size.

    Args:
        shapes: the resized (height, width) of each image.
        batch_size: images per batch at most.
        num_replicas: number of processes.
        rank: this process, ``0..num_replicas-1``.
    """

    def __init__(self, shapes: Sequence[tuple[int, int]], batch_size: int, num_replicas: int = 1, rank: int = 0):
        super().__init__(shapes, num_replicas=num_replicas, rank=rank, shuffle=False)  # type: ignore[arg-type]
        self.batches = shape_batches(shapes, batch_size, range(rank, len(shapes), num_replicas))

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class BatchDataset(Dataset[list[T]], Generic[T]):
    """A dataset's items fetched a batch at a time: ``BatchDataset(d)[[3, 1]] == [d[3], d[1]]``.

    Lets a loader run with ``batch_size=None`` under a sampler that yields whole batches; such a
    sampler can be the loader's ``sampler``, which Lightning respects, unlike a ``batch_sampler``.

    Args:
        dataset: the dataset to fetch from.
    """

    def __init__(self, dataset: SizedDataset[T]):
        self.dataset = dataset

    def __getitem__(self, indices: list[int]) -> list[T]:
        return [self.dataset[index] for index in indices]

    def __len__(self) -> int:
        return len(self.dataset)
