"""``--device``: ``auto`` (a CUDA GPU when there is one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``."""

from __future__ import annotations

import torch

from detlit.errors import ConfigError

AUTO = "auto"


def resolve_device(name: str | torch.device = AUTO) -> torch.device:
    """The torch device a ``--device`` value names.

    Raises:
        ConfigError: not a device name, a CUDA device without a GPU, or a device type detlit does
            not run on.
    """
    if isinstance(name, torch.device):
        name = str(name)
    if name == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"device '{name}' is not a torch device; use auto, cpu, cuda or cuda:N") from err
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device '{name}' is not supported; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' asked for, but torch sees no CUDA GPU here; use --device cpu (or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device '{name}': this machine has {torch.cuda.device_count()} GPU(s); use cuda:0 or auto")
    return device
