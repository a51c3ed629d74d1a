"""Shared fixtures: a small synthetic dataset, a tiny model config, the real rbc data."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from detlit.data.sample import write_sample

REPO = Path(__file__).resolve().parents[1]

# A Faster R-CNN small enough for CPU unit tests: ResNet-18 FPN, GroupNorm, few proposals.
TINY_OVERRIDES: dict[str, Any] = {
    "MODEL.RESNETS.DEPTH": 18,
    "MODEL.RESNETS.RES2_OUT_CHANNELS": 64,
    "MODEL.RESNETS.NORM": "GN",
    "MODEL.FPN.NORM": "GN",
    "MODEL.FPN.OUT_CHANNELS": 64,
    "MODEL.PIXEL_STD": [57.375, 57.12, 58.395],
    "MODEL.ROI_BOX_HEAD.FC_DIM": 64,
    "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO": 2,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 32,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN": 200,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN": 50,
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 200,
    "MODEL.RPN.POST_NMS_TOPK_TEST": 50,
}
TINY_SIZES: dict[str, Any] = {
    "min_size_train": [128],
    "max_size_train": 192,
    "min_size_test": 128,
    "max_size_test": 192,
}


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small copy of the synthetic sample dataset (12 train, 6 val images)."""
    out = tmp_path_factory.mktemp("sample")
    write_sample(out, train=12, val=6, seed=1)
    return out


@pytest.fixture(scope="session")
def rbc_dir() -> Path:
    """The real blood-cell dataset, from $DETLIT_RBC_DIR or ../shared/data/rbc."""
    path = Path(os.environ.get("DETLIT_RBC_DIR", REPO.parent / "shared" / "data" / "rbc"))
    if not (path / "train" / "_annotations.coco.json").is_file():
        pytest.skip(f"real rbc dataset not found at {path} (set DETLIT_RBC_DIR to run this test)")
    return path


@pytest.fixture(scope="session")
def coco_eval_dir() -> Path:
    """The COCO fake-results reference data, from $DETLIT_COCO_EVAL_DIR or ../shared/data/coco-fake100-eval."""
    path = Path(os.environ.get("DETLIT_COCO_EVAL_DIR", REPO.parent / "shared" / "data" / "coco-fake100-eval"))
    names = ("instances_val2014_100.json", "instances_val2014_fakebbox100_results.json", "SOURCE.txt")
    if not all((path / name).is_file() for name in names):
        pytest.skip(f"COCO reference data not found at {path} (set DETLIT_COCO_EVAL_DIR to run this test)")
    return path


def source_stats(source: Path) -> list[float]:
    """The 12 bbox stats written in the reference data's SOURCE.txt."""
    text = source.read_text()
    block = text[text.index("bbox:") + len("bbox:") : text.index("segm:")]
    return [float(x) for x in re.findall(r"\d+\.\d+", block)]


def tiny_cli_args(sample: Path) -> list[str]:
    """CLI arguments that train the tiny model on a sample folder."""
    args = [
        f"--data.train_json={sample / 'train.json'}",
        f"--data.train_images={sample / 'train'}",
        f"--data.val_json={sample / 'val.json'}",
        f"--data.val_images={sample / 'val'}",
        "--data.batch_size=2",
        "--data.num_workers=0",
        "--data.min_size_train=[128]",
        "--data.max_size_train=192",
        "--data.min_size_test=128",
        "--data.max_size_test=192",
        "--model.weights=null",
        "--model.freeze_at=0",
    ]
    # The config's overrides replaced as a whole: the run builds exactly tiny_module()'s model.
    return [*args, f"--model.overrides={json.dumps(TINY_OVERRIDES)}"]


def tiny_module(**kwargs: Any) -> Any:
    """The tiny DetectionModule for the sample's 3 classes, seeded."""
    import torch

    from detlit.model.module import DetectionModule

    torch.manual_seed(0)
    args: dict[str, Any] = {
        "num_classes": 3,
        "class_names": ["circle", "square", "triangle"],
        "category_ids": [1, 3, 7],
        "overrides": TINY_OVERRIDES,
        "freeze_at": 0,
        **TINY_SIZES,
    }
    args.update(kwargs)
    return DetectionModule(**args)


def tiny_datamodule(sample: Path, **kwargs: Any) -> Any:
    """CocoDataModule on a sample folder with the tiny sizes, in-process loading."""
    from detlit.data.datamodule import CocoDataModule

    args: dict[str, Any] = {
        "train_json": str(sample / "train.json"),
        "train_images": str(sample / "train"),
        "val_json": str(sample / "val.json"),
        "val_images": str(sample / "val"),
        "batch_size": 2,
        "num_workers": 0,
        **TINY_SIZES,
    }
    args.update(kwargs)
    return CocoDataModule(**args)


def quiet_trainer(**kwargs: Any) -> Any:
    """A CPU Trainer without logger, checkpoints, progress bar or model summary (unless asked)."""
    from lightning.pytorch import Trainer

    args: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }
    args.update(kwargs)
    return Trainer(**args)
