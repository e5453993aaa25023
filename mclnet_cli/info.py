"""Environment facts for bug reports: versions, device, threads, paths."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment_info() -> dict[str, Any]:
    """Versions of mclnet and its stack, the compute device and thread counts, where presets live."""
    import torch

    from mclnet_cli import __version__
    from mclnet_cli.config import presets_dir

    cuda = torch.cuda.is_available()
    info: dict[str, Any] = {
        "mclnet": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "faiss": _version("faiss-cpu") or _version("faiss-gpu") or _version("faiss"),
        "numpy": _version("numpy"),
        "pillow": _version("pillow"),
        "typer": _version("typer"),
        "cuda_available": cuda,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "cuda_devices": torch.cuda.device_count() if cuda else 0,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "presets_dir": str(presets_dir()),
    }
    if cuda:
        info["cuda"] = torch.version.cuda
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
    return info
