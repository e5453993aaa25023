"""Pick the torch device a command runs on (``auto`` prefers CUDA)."""

from __future__ import annotations

import torch

from mclnet_cli.config import Device, names
from mclnet_cli.errors import ConfigError

DEVICE_CHOICES = names(Device)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda when available else cpu; ``cuda``/``cuda:N`` must be available."""
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
        device = torch.device(text)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
        return device
    raise ConfigError(f"--device {name!r} is not known; choose from: {', '.join(DEVICE_CHOICES)} (or cuda:N)")
