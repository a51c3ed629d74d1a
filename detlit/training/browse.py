"""Looking at images as the model will see them, before training (``python -m detlit.browse``).

The config is the one ``python -m detlit.fit --config`` reads, parsed by the same parser, so
every ``--data.*`` override of ``detlit.fit`` works here too (the model and trainer sections are
read but not built). The first ``--n`` images that the training loader deals out (``--split
train``: shuffled, grouped and augmented exactly as training will get them) or that the
validation loader serves (``--split val``: resized only) are drawn with their boxes and class
names, crowd regions dashed grey, and written as one grid to ``--out/{split}-seed{seed}.png``
(default folder ``browse/``; an existing grid is replaced only with ``--overwrite``). Each title
names the image and its box count; the log says how many boxes augmentation dropped (cropped out
or shrunk below the pipeline's minimum).

``--seed`` seeds the augmentations, so the same command draws the same grid; the order of the
images is the data's own (``data.seed``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.cli import LightningArgumentParser
from PIL import Image
from torch.utils.data import DataLoader

from detlit.common.outputs import check_folder, check_not_images, check_outputs, write_image, write_lock
from detlit.data.datamodule import CocoDataModule
from detlit.errors import ConfigError
from detlit.model.module import DetectionModule
from detlit.pictures.drawing import draw_ground_truth, montage, resize_to_fit
from detlit.training.cli import DetlitCLI

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
CELL = 384  # pixels: larger images are scaled down to fit their grid cell before drawing
MIN_CELL = 32


class _DataOnlyCLI(DetlitCLI):
    """detlit.training.cli's parser; of the parsed config, only the data module is built."""

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # Lightning warns when `args` comes with a command line: here `args` is that command line.
        self.config = parser.parse_args(args)

    def instantiate_classes(self) -> None:
        parser = LightningArgumentParser()
        parser.add_lightning_class_args(CocoDataModule, "data")
        config = parser.parse_object({"data": self.config["data"]})
        # jsonargparse 4.49 renamed instantiate_classes (which it now warns about) to instantiate.
        instantiate = getattr(parser, "instantiate", parser.instantiate_classes)
        self.config_init = instantiate(config)
        self.datamodule = self.config_init["data"]


def build_datamodule(cli_args: list[str]) -> CocoDataModule:
    """The data module of a detlit fit config (``--config FILE`` and ``--data.*`` overrides)."""
    cli = _DataOnlyCLI(
        DetectionModule,
        CocoDataModule,
        run=False,
        auto_configure_optimizers=False,
        args=cli_args,
        seed_everything_default=False,
    )
    datamodule: CocoDataModule = cli.datamodule
    return datamodule


def take_images(datamodule: CocoDataModule, split: str, n: int, seed: int) -> list[dict[str, Any]]:
    """The first ``n`` detectron2 input dicts the ``split`` loader yields, augmentations seeded by ``seed``.

    Raises:
        ConfigError: ``split`` is unknown, or ``val`` without a validation json.
    """
    if split not in SPLITS:
        raise ConfigError(f"--split {split} is unknown; use train or val")
    if n < 1:
        raise ConfigError(f"--n {n}: ask for at least one image")
    datamodule.setup("fit")
    if split not in datamodule.datasets:
        raise ConfigError("--split val needs data.val_json in the config (or --data.val_json)")
    datamodule.datasets[split].transform.set_random_seed(seed)
    loader = datamodule.train_dataloader() if split == "train" else datamodule.val_dataloader()
    if not isinstance(loader, DataLoader):
        raise ConfigError(f"the data module serves no single {split} loader")
    items: list[dict[str, Any]] = []
    for batch in loader:
        # Unreadable files come as markers (``{"skipped": path}``) where the data module keeps going.
        readable = [item for item in batch if "skipped" not in item]
        items.extend(readable[: n - len(items)])
        if len(items) >= n:
            break
    return items


def to_rgb(item: dict[str, Any], image_format: str) -> np.ndarray:
    """The input dict's image as RGB uint8 (H, W, 3); ``image_format`` is its channel order."""
    pixels = item["image"].permute(1, 2, 0).numpy()
    return np.ascontiguousarray(pixels[:, :, ::-1] if image_format == "BGR" else pixels)


def draw_item(item: dict[str, Any], image_format: str, class_names: Sequence[str], cell: int = CELL) -> np.ndarray:
    """One input dict drawn: its image scaled to fit ``cell`` and its ground-truth boxes."""
    image, scale = resize_to_fit(to_rgb(item, image_format), cell, cell)
    instances = item["instances"]
    boxes = instances.gt_boxes.tensor.numpy() * scale
    crowd = instances.gt_crowd.numpy() if instances.has("gt_crowd") else None
    return draw_ground_truth(image, boxes, instances.gt_classes.numpy(), class_names, crowd)


def _title(item: dict[str, Any]) -> str:
    dropped = int(item.get("boxes_dropped", 0))
    counts = f"{len(item['instances'])} boxes" + (f", {dropped} dropped" if dropped else "")
    return f"{Path(item['file_name']).name} ({counts})"


def render(
    items: Sequence[dict[str, Any]], image_format: str, class_names: Sequence[str], cell: int = CELL
) -> np.ndarray:
    """A grid of the drawn input dicts, each titled with its file name, box count and boxes dropped."""
    drawings = [draw_item(item, image_format, class_names, cell) for item in items]
    titles = [_title(item) for item in items]
    return montage(drawings, titles, cell_size=(cell, cell))


def browse(
    cli_args: list[str],
    split: str = "train",
    n: int = 16,
    out: Path = Path("browse"),
    seed: int = 0,
    cell: int = CELL,
    overwrite: bool = False,
) -> int:
    """``python -m detlit.browse``: draw the first ``n`` images of a loader into ``out/{split}-seed{seed}.png``.

    Args:
        cli_args: ``--config FILE`` and ``--data.*`` overrides, read as ``python -m detlit.fit`` reads them.
    """
    if cell < MIN_CELL:
        raise ConfigError(f"--cell {cell} is too small to show anything; use {MIN_CELL} pixels or more")
    if not any(a == "--config" or a.startswith("--config=") for a in cli_args):
        raise ConfigError("--config is missing; pass the fit config, e.g. --config configs/sample_cpu.yaml")
    path = out / f"{split}-seed{seed}.png"
    check_folder(out)
    with write_lock(out):
        check_outputs([path], overwrite=overwrite)
        datamodule = build_datamodule(cli_args)
        data = [datamodule.train_data, datamodule.val_data]
        check_not_images([path], [(d.image_root, d.images.file_names()) for d in data if d is not None])
        items = take_images(datamodule, split, n, seed)
        if len(items) < n:
            log.warning("the %s split has only %d images", split, len(items))
        boxes = sum(len(item["instances"]) for item in items)
        dropped = sum(int(item.get("boxes_dropped", 0)) for item in items)
        log.info("%d images, %d boxes; augmentation dropped %d boxes", len(items), boxes, dropped)
        grid = render(items, datamodule.hparams["image_format"], datamodule.class_names, cell)
        write_image(path, Image.fromarray(grid), "PNG")
    print(f"{len(items)} {split} images ({boxes} boxes, {dropped} dropped by augmentation) drawn in {path}")
    return 0
