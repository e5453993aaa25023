"""Readers of the published dataset layouts. Each returns ``list[Sample]`` with absolute paths."""

from __future__ import annotations

from typing import Callable

from mclnet_cli.data.records import Sample
from mclnet_cli.data.sources.llcm import read_llcm
from mclnet_cli.data.sources.regdb import read_regdb
from mclnet_cli.data.sources.sysu import read_sysu

#: dataset name -> reader(root, **options); only RegDB takes an option (``trial``).
READERS: dict[str, Callable[..., list[Sample]]] = {
    "sysu": read_sysu,
    "regdb": read_regdb,
    "llcm": read_llcm,
}

__all__ = ["READERS", "read_sysu", "read_regdb", "read_llcm"]
