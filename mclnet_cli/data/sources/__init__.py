"""Readers of the published dataset layouts. Each returns ``list[Sample]`` with absolute paths.

Each module also has ``parse_path(path) -> PathInfo | None``, which reads pid,
camera and spectrum back from one image path by the same rules as its reader
(used by :mod:`mclnet_cli.data.sources.layout` for gallery folders).
"""

from __future__ import annotations

from typing import Callable

from mclnet_cli.types import Sample
from mclnet_cli.data.sources._common import PathInfo
from mclnet_cli.data.sources.llcm import read_llcm
from mclnet_cli.data.sources.regdb import read_regdb
from mclnet_cli.data.sources.sysu import read_sysu

#: dataset name -> reader(root, **options); only RegDB takes an option (``trial``).
READERS: dict[str, Callable[..., list[Sample]]] = {
    "sysu": read_sysu,
    "regdb": read_regdb,
    "llcm": read_llcm,
}

__all__ = ["READERS", "PathInfo", "read_sysu", "read_regdb", "read_llcm"]
