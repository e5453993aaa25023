"""Gallery index: FAISS index + JSON sidecar (build, add, search, save, load), auto-tuning and the ranked-list picture.

Names are imported lazily so that importing this package does not load FAISS or torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "GalleryIndex": "mclnet_cli.index.store",
    "Hit": "mclnet_cli.index.store",
    "IndexRecord": "mclnet_cli.index.store",
    "plan_index": "mclnet_cli.index.store",
    "save_ranked_list": "mclnet_cli.index.picture",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mclnet_cli.index' has no attribute {name!r}")
