"""The versions detlit runs with (``python -m detlit.env``), for bug reports, run logs and reports."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys

import torch

PACKAGES = (
    "torchvision",
    "lightning",
    "torchmetrics",
    "albumentations",
    "pycocotools",
    "faster-coco-eval",
    "numpy",
    "pillow",
    "opencv-python-headless",
    "tensorboard",
)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def collect_env() -> dict[str, str]:
    """Name -> version (or state) of everything that decides how detlit behaves."""
    from detlit import __version__
    from detlit.compat import DETECTRON2_VERSION, HAS_COMPILED_OPS

    info = {
        "detlit": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "cuda available": str(torch.cuda.is_available()),
        "cuda (torch build)": str(torch.version.cuda),
    }
    if torch.cuda.is_available():
        names = {torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())}
        info["gpus"] = f"{torch.cuda.device_count()} x {', '.join(sorted(names))}"
    info["detectron2"] = DETECTRON2_VERSION
    info["detectron2 compiled ops"] = (
        "present"
        if HAS_COMPILED_OPS
        else "absent (pure-Python build: Faster R-CNN works; rotated/deformable ops do not)"
    )
    info.update({package: _version(package) for package in PACKAGES})
    return info


def format_env(info: dict[str, str]) -> str:
    width = max(len(key) for key in info)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in info.items())
