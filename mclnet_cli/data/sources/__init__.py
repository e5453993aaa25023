"""Readers of the published dataset layouts, and the one table of datasets ``prepare`` reads.

Each reader ``<name>.read_<name>(root, **options)`` returns ``list[Sample]``
with absolute paths. Each module also has ``parse_path(path) -> PathInfo | None``,
which reads pid, camera and spectrum back from one image path by the same rules
as its reader (used by :mod:`mclnet_cli.data.sources.layout` for gallery folders).

:data:`SOURCES` is the dataset table: ``mclnet prepare NAME`` is built from it
(one sub-command per entry: the shared options plus the entry's own), and
:func:`mclnet_cli.data.prepare.prepare_dataset` reads through it. Importing it
imports no reader (they need numpy and PIL), so ``mclnet --help`` stays light.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mclnet_cli.types import Sample


@dataclass(frozen=True)
class SourceOption:
    """A whole-number option one reader takes besides the root (RegDB's identity split)."""

    name: str  # the reader's keyword, the command's --NAME, and the key in meta.json and the report
    default: int
    low: int
    high: int
    help: str


@dataclass(frozen=True)
class Source:
    """One dataset ``prepare`` reads: one line on its published layout and its own options.

    The reader is ``read_<name>`` of the module ``<name>`` beside this one, imported on first use.
    """

    name: str
    layout: str
    options: tuple[SourceOption, ...] = ()

    @property
    def reader(self) -> Callable[..., list[Sample]]:
        return getattr(importlib.import_module(f"{__name__}.{self.name}"), f"read_{self.name}")

    def read(self, root: Path | str, **options: int) -> list[Sample]:
        """The samples of the tree at ``root``."""
        return self.reader(root, **options)


REGDB_SPLIT = SourceOption(
    "trial", 1, 1, 10, "RegDB identity split 1..10 (one model per split; train it with --set data.regdb_split=N)."
)

#: dataset name -> Source; the names are config.Dataset's but "synthetic" (drawn, then read as SYSU-MM01).
SOURCES: dict[str, Source] = {
    source.name: source
    for source in (
        Source("sysu", "SYSU-MM01: cam1..cam6/<pid>/<index>.jpg with exp/{train,val,test}_id.txt."),
        Source("regdb", "RegDB: Visible|Thermal/<pid>/*.bmp through idx/{train,test}_{visible,thermal}_T.txt.", (REGDB_SPLIT,)),
        Source("llcm", "LLCM: training via idx/train_{vis,nir}.txt, test via test_vis|test_nir/camN/<pid>/."),
    )
}

#: dataset name -> reader(root, **options)
READERS: dict[str, Callable[..., list[Sample]]] = {name: source.read for name, source in SOURCES.items()}


def __getattr__(name: str) -> Any:
    """``read_<dataset>`` and ``PathInfo`` on first use (they import numpy and PIL)."""
    dataset = name.removeprefix("read_")
    if name.startswith("read_") and dataset in SOURCES:
        return SOURCES[dataset].reader
    if name == "PathInfo":
        from mclnet_cli.data.sources._common import PathInfo

        return PathInfo
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["READERS", "SOURCES", "PathInfo", "Source", "SourceOption", "read_sysu", "read_regdb", "read_llcm"]
