"""Stage [5]: CocoDataModule builds stages [1]-[4] for fit / validate / test."""

from __future__ import annotations

import logging

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from detlit.coco import CocoDataset, LabelMap
from detlit.dataset import DetectionDataset, collate
from detlit.errors import DataError
from detlit.transforms import eval_transform, train_transform
from detlit.validate import load_checked

log = logging.getLogger(__name__)


class CocoDataModule(LightningDataModule):
    """COCO json files and image folders, served as detectron2 input dicts.

    Every json is checked when the module is built (``detlit.validate``): errors stop with one
    sentence that names the first of them and the command that reports all; warnings are logged.

    The label map (contiguous labels <-> COCO category ids) is built from the training json and
    exposed as ``num_classes``, ``class_names`` and ``category_ids``, which the CLI links into
    the model so they are never typed twice.

    Args:
        train_json: COCO json of the training images.
        train_images: folder that the training json's ``file_name`` entries are relative to.
        val_json: COCO json of the validation images (no validation when omitted).
        val_images: folder of the validation images (defaults to ``train_images``).
        test_json: COCO json of the test images, for ``python -m detlit.fit test``.
        test_images: folder of the test images (defaults to ``val_images``).
        batch_size: images per batch on each device.
        num_workers: data-loading worker processes per device.
        augment: training augmentation preset (see ``detlit.transforms.PRESETS``).
        min_size_train: shortest-edge sizes in training; one is drawn per image.
        max_size_train: cap on the longest edge in training.
        min_size_test: shortest-edge size for validation, test and prediction.
        max_size_test: cap on the longest edge for validation, test and prediction.
        image_format: channel order the model expects (``BGR`` for model-zoo configs).
        check_files: before training, read every image header (missing files, sizes that
            disagree with the json, EXIF rotation); the json itself is always checked.
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
        augment: str = "flip",
        min_size_train: list[int] = [640, 672, 704, 736, 768, 800],  # noqa: B006 (read only)
        max_size_train: int = 1333,
        min_size_test: int = 800,
        max_size_test: int = 1333,
        image_format: str = "BGR",
        check_files: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters()
        train_transform(augment, min_size_train, max_size_train)  # fail fast on a bad preset
        self.train_data = load_checked(train_json, train_images, "data.train_images", check_files)
        self.label_map: LabelMap = self.train_data.label_map()
        log.info("label map (COCO id -> label): %s", self.label_map.describe())
        self.val_data = self._load_like_train(val_json, val_images or train_images, "data.val_images")
        self.test_data = self._load_like_train(test_json, test_images or val_images or train_images, "data.test_images")
        self.datasets: dict[str, DetectionDataset] = {}

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
        known = set(self.label_map.category_ids)
        for image in dataset.images:
            for annotation in image.annotations:
                if annotation.category_id not in known:
                    raise DataError(
                        f"{json_path}: annotation {annotation.id} has category_id "
                        f"{annotation.category_id}, which the training json "
                        f"{self.train_data.json_path} does not define; use the same categories"
                    )
        return dataset

    def _dataset(self, data: CocoDataset, train: bool) -> DetectionDataset:
        hp = self.hparams
        if train:
            transform = train_transform(hp["augment"], hp["min_size_train"], hp["max_size_train"])
        else:
            transform = eval_transform(hp["min_size_test"], hp["max_size_test"])
        return DetectionDataset(data.images, data.image_root, self.label_map, transform, hp["image_format"])

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.datasets["train"] = self._dataset(self.train_data, True)
        if stage in ("fit", "validate") and self.val_data is not None:
            self.datasets["val"] = self._dataset(self.val_data, False)
        if stage == "test":
            if self.test_data is None:
                raise DataError("no test set: set data.test_json (and data.test_images) to test")
            self.datasets["test"] = self._dataset(self.test_data, False)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        workers = self.hparams["num_workers"]
        return DataLoader(
            self.datasets[split],
            batch_size=self.hparams["batch_size"],
            shuffle=shuffle,
            num_workers=workers,
            collate_fn=collate,
            persistent_workers=workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        return self._loader("val", shuffle=False) if "val" in self.datasets else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
