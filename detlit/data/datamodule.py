"""Stage 5, loading: CocoDataModule reads, checks, transforms and batches the data for fit / validate / test."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from detlit.common import ranges
from detlit.common.ranges import MAX_BATCH_SIZE, MAX_SEED, MAX_WORKERS
from detlit.data.checks import compare_splits, load_checked
from detlit.data.coco import CocoDataset, LabelMap
from detlit.data.dataset import DetectionDataset, collate
from detlit.data.findings import log_summary
from detlit.data.images import CHANNEL_ORDERS
from detlit.data.samplers import (
    BatchDataset,
    EvaluationBatchSampler,
    TrainingBatchSampler,
    orientation_groups,
    repeat_factors,
)
from detlit.data.split import check_pair
from detlit.data.transforms import Step, describe_augment, eval_transform, resized_shape, train_transform
from detlit.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def check_numbers(hp: Mapping[str, Any]) -> None:
    """Raise one sentence naming the setting when a count, an image size, a seed or a channel
    order of the data module's arguments ``hp`` cannot work (see :mod:`detlit.common.ranges`)."""
    ranges.whole(
        "data.batch_size",
        hp["batch_size"],
        1,
        MAX_BATCH_SIZE,
        f"use 1 or more images per batch (at most {MAX_BATCH_SIZE})",
    )
    ranges.whole(
        "data.num_workers",
        hp["num_workers"],
        0,
        MAX_WORKERS,
        f"use 0 (load in the main process) or more (at most {MAX_WORKERS})",
    )
    ranges.check_image_sizes(
        "data.", hp["min_size_train"], hp["max_size_train"], hp["min_size_test"], hp["max_size_test"]
    )
    threshold = hp["repeat_factor_threshold"]
    if threshold is not None:
        ranges.real(
            "data.repeat_factor_threshold",
            threshold,
            0.0,
            1.0,
            above=True,
            fix="use a fraction of the images in (0, 1] such as 0.001, or null to switch repeats off",
        )
    ranges.whole("data.seed", hp["seed"], 0, MAX_SEED)
    if hp["image_format"] not in CHANNEL_ORDERS:
        raise ConfigError(
            f"data.image_format is {hp['image_format']!r}; use BGR (detectron2's model-zoo configs) or RGB"
        )


def without_empty_images(data: CocoDataset) -> CocoDataset:
    """The training set without its images that have no object (crowd regions do not count)."""
    kept = data.images.with_objects()
    left_out = len(data.images) - len(kept)
    log.info(
        "data.train_empty_images=false: %d of %d training images have no object and are left out",
        left_out,
        len(data.images),
    )
    if not len(kept):
        raise DataError(f"{data.json_path} has no image with an object to train on")
    return dataclasses.replace(data, images=data.images.take(kept))


class CocoDataModule(LightningDataModule):
    """COCO json files and image folders, served as detectron2 input dicts.

    Every json is checked when the module is built (``detlit.data.checks``): errors stop with one
    sentence that names the first of them and the command that reports all; warnings are logged.

    The label map (contiguous labels <-> COCO category ids) is built from the training json and
    exposed as ``num_classes``, ``class_names`` and ``category_ids``, which the CLI links into
    the model so they are never typed twice.

    With several processes (DDP) every loader serves only its process's share of the images
    (``detlit.data.samplers``): training batches are dealt out evenly, so every process runs the same
    number of steps; validation and test images are each seen by exactly one process.

    Args:
        train_json: COCO json of the training images.
        train_images: folder that the training json's ``file_name`` entries are relative to.
        val_json: COCO json of the validation images (no validation when omitted).
        val_images: folder of the validation images (defaults to ``train_images``).
        test_json: COCO json of the test images, for ``python -m detlit.fit test``.
        test_images: folder of the test images (defaults to ``val_images``).
        batch_size: images per batch on each device.
        num_workers: data-loading worker processes per device.
        augment: training augmentation: a preset name (``none``, ``flip``, ``default``, ``strong``;
            see ``detlit.data.transforms``) or a list of Albumentations transforms (``class_path`` and
            ``init_args`` in YAML; ``A.OneOf`` and other compositions too) run after the resize.
        min_size_train: shortest-edge sizes in training; one is drawn per image.
        max_size_train: cap on the longest edge in training.
        min_size_test: shortest-edge size for validation, test and prediction.
        max_size_test: cap on the longest edge for validation, test and prediction.
        image_format: channel order the model expects (``BGR`` for model-zoo configs).
        check_files: before training, read every image header (missing files, sizes that
            disagree with the json, EXIF rotation); the json itself is always checked.
        strict_images: stop at an image file that cannot be decoded instead of skipping it
            (skipped files are logged by name and counted in ``train/skipped_images``).
        group_by_aspect_ratio: batch landscape and portrait training images separately, so
            less of each batch is padding.
        repeat_factor_threshold: show training images of categories found in fewer than this
            fraction of the images more often (detectron2 uses 0.001); ``None`` shows each once.
        seed: seed of the training order (and of the repeats), a new order each epoch, and of the
            augmentations (each process and loader worker its own stream of it).
        train_empty_images: train on images without objects too (as background only); ``False``
            leaves them out of training, as detectron2 does by default
            (``DATALOADER.FILTER_EMPTY_ANNOTATIONS``). Validation and test keep every image.
        drop_last: train on full batches only (the default): each epoch's smaller batches (the
            images left over in each orientation group, different ones each epoch) are left out,
            as detectron2's loader never makes one; with fewer full batches than processes the
            smaller ones stay. ``False`` trains on every image every epoch, the smaller batches
            included, as detlit 0.1 did.
    """

    def __init__(
        self,
        train_json: str,
        train_images: str,
        val_json: str | None = None,
        val_images: str | None = None,
        test_json: str | None = None,
        test_images: str | None = None,
        batch_size: int = 2,
        num_workers: int = 2,
        augment: str | list[Step] = "flip",
        min_size_train: list[int] = [640, 672, 704, 736, 768, 800],  # noqa: B006 (read only)
        max_size_train: int = 1333,
        min_size_test: int = 800,
        max_size_test: int = 1333,
        image_format: str = "BGR",
        check_files: bool = True,
        strict_images: bool = False,
        group_by_aspect_ratio: bool = True,
        repeat_factor_threshold: float | None = None,
        seed: int = 0,
        train_empty_images: bool = True,
        drop_last: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters()
        check_numbers(self.hparams)
        # hparams end up in checkpoints and hparams.yaml, which cannot hold transform objects:
        # they keep a plain description, and the transforms themselves live here.
        self.augment = augment
        self.save_hyperparameters({**self.hparams, "augment": describe_augment(augment)})
        train_transform(augment, min_size_train, max_size_train)  # fail fast on a bad preset
        self.train_data = load_checked(train_json, train_images, "data.train_images", check_files)
        self.label_map: LabelMap = self.train_data.label_map()
        if not train_empty_images:
            self.train_data = without_empty_images(self.train_data)
        log.info("label map (COCO id -> label): %s", self.label_map.describe())
        self.val_data = self._load_like_train(val_json, val_images or train_images, "data.val_images")
        if self.val_data is not None:
            if not len(self.val_data.images):
                raise DataError(
                    f"data.val_json {val_json} holds no image; give a validation set with images, or leave "
                    "data.val_json out to train without validation"
                )
            check_pair(train_json, self.val_data.json_path)
            log_summary(compare_splits(self.train_data, self.val_data), log, "train / val")
        self.test_data = self._load_like_train(test_json, test_images or val_images or train_images, "data.test_images")
        self.datasets: dict[str, DetectionDataset] = {}
        self._resume_position: dict[str, int] | None = None

    @property
    def num_classes(self) -> int:
        return self.label_map.num_classes

    @property
    def class_names(self) -> list[str]:
        return list(self.label_map.names)

    @property
    def category_ids(self) -> list[int]:
        return list(self.label_map.category_ids)

    def _load_like_train(self, json_path: str | None, image_root: str, option: str) -> CocoDataset | None:
        """Load and check a validation or test json, and that it speaks the training categories."""
        if json_path is None:
            return None
        dataset = load_checked(json_path, image_root, option, self.hparams["check_files"])
        images = dataset.images
        unknown = np.flatnonzero(~np.isin(images.category_ids, self.label_map.category_ids))
        if len(unknown):
            row = int(unknown[0])
            raise DataError(
                f"{json_path}: annotation {int(images.annotation_ids[row])} has category_id "
                f"{int(images.category_ids[row])}, which the training json "
                f"{self.train_data.json_path} does not define; use the same categories"
            )
        return dataset

    def _dataset(self, data: CocoDataset, train: bool) -> DetectionDataset:
        hp = self.hparams
        if train:
            transform = train_transform(self.augment, hp["min_size_train"], hp["max_size_train"])
        else:
            transform = eval_transform(hp["min_size_test"], hp["max_size_test"])
        # An unreadable file met in training is replaced by the next image (the run goes on); in
        # evaluation it is left out of the metrics. Both are logged with the file name.
        on_unreadable: Literal["replace", "mark", "raise"] = "replace" if train else "mark"
        if hp["strict_images"]:
            on_unreadable = "raise"
        return DetectionDataset(
            data.images,
            data.image_root,
            self.label_map,
            transform,
            hp["image_format"],
            on_unreadable,
            targets=not train,
            augment_seed=(hp["seed"], self._processes()[1]) if train else None,
        )

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.datasets["train"] = self._dataset(self.train_data, True)
        if stage in ("fit", "validate") and self.val_data is not None:
            self.datasets["val"] = self._dataset(self.val_data, False)
        if stage == "test":
            if self.test_data is None:
                raise DataError("no test set: set data.test_json (and data.test_images) to test")
            self.datasets["test"] = self._dataset(self.test_data, False)

    def _processes(self) -> tuple[int, int]:
        """(number of processes, this process's rank); (1, 0) outside a trainer."""
        if self.trainer is None:
            return 1, 0
        return self.trainer.world_size, self.trainer.global_rank

    def _loader_options(self) -> dict[str, Any]:
        workers = self.hparams["num_workers"]
        return {"num_workers": workers, "collate_fn": collate, "persistent_workers": workers > 0}

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        dataset = self.datasets["train"]
        if getattr(self.trainer, "overfit_batches", 0):
            # Lightning swaps the sampler of an overfitting run for a SequentialSampler, which only
            # works on an ordinary loader: the same first batches every epoch is what it wants anyway.
            return DataLoader(dataset, batch_size=hp["batch_size"], shuffle=False, **self._loader_options())
        num_replicas, rank = self._processes()
        threshold = hp["repeat_factor_threshold"]
        sampler = TrainingBatchSampler(
            dataset,
            hp["batch_size"],
            groups=orientation_groups(dataset.records) if hp["group_by_aspect_ratio"] else None,
            repeat_factors=None if threshold is None else repeat_factors(dataset.records, threshold),
            num_replicas=num_replicas,
            rank=rank,
            seed=hp["seed"],
            drop_last=hp["drop_last"],
        )
        if self.trainer is not None:
            # Lightning creates the loader's iterator (and workers draw their first batches) before
            # it calls set_epoch, and when resuming, before it restores its epoch counter: so the
            # epoch comes from this module's own saved position when resuming, and from the fit
            # loop otherwise (lightning/pytorch/loops/fit_loop.py, `on_advance_start`).
            # (`current` is annotated as the base tracker; the fit loop's has `processed`.)
            epoch = self.trainer.fit_loop.epoch_progress.current.processed  # type: ignore[attr-defined]
            position = self._resume_position
            if position:
                epoch = position["epoch"]
                if 0 < position["batches_done"] < len(sampler):
                    sampler.skip_next = position["batches_done"]
                    log.info("resuming epoch %d after its first %d batches", epoch, sampler.skip_next)
                elif position["batches_done"] >= len(sampler):
                    epoch += 1  # saved at the end of an epoch: the next one starts
            sampler.set_epoch(epoch)
            self._resume_position = None
        # The sampler yields whole batches; as the loader's `sampler` (not `batch_sampler`) Lightning
        # keeps it and calls its set_epoch (see detlit.data.samplers).
        return DataLoader(BatchDataset(dataset), batch_size=None, sampler=sampler, **self._loader_options())

    def state_dict(self) -> dict[str, Any]:
        """Where training is in the current epoch, saved in every checkpoint."""
        if self.trainer is None:
            return {}
        return {
            "epoch": self.trainer.current_epoch,
            "batches_done": self.trainer.fit_loop.epoch_loop.batch_progress.current.processed,  # type: ignore[attr-defined]
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_position = dict(state_dict) if state_dict else None

    def _eval_loader(self, split: str) -> DataLoader:
        num_replicas, rank = self._processes()
        dataset = self.datasets[split]
        hp = self.hparams
        records = dataset.records
        shapes = [
            resized_shape(height, width, hp["min_size_test"], hp["max_size_test"])
            for height, width in zip(records.heights.tolist(), records.widths.tolist(), strict=True)
        ]
        # Each image on exactly one process (Lightning's DistributedSampler would repeat some, and
        # repeats would count twice in the metrics), batched with images of its own shape only.
        sampler = EvaluationBatchSampler(shapes, hp["batch_size"], num_replicas, rank)
        return DataLoader(BatchDataset(dataset), batch_size=None, sampler=sampler, **self._loader_options())

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        return self._eval_loader("val") if "val" in self.datasets else []

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
