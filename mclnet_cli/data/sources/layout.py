"""Person id and camera from the path of an image, when it follows a known dataset layout.

A gallery folder handed to ``mclnet index`` is often a copy of part of a public
dataset. When its paths follow one of the layouts below, the index records the
pid and camera so that ``mclnet query`` can mark correct and wrong matches:

- SYSU-MM01: ``.../camN/<pid>/<index, digits>.jpg`` (cams 1, 2, 4, 5 visible;
  3, 6 infrared).
- RegDB: ``.../Visible|Thermal/<pid>/<...>_<pid>.bmp`` (one co-located camera
  pair: recorded as cam 1 for visible, cam 2 for thermal).
- LLCM: ``.../<name>_vis|_nir/camN/<pid>/<pid>_c<NN>_...jpg``.

The rules are those of the dataset readers: each ``parse_path`` lives beside its
reader in :mod:`mclnet_cli.data.sources`. Ids are read from path components
(never from character offsets), so a root folder whose name contains "cam" does
not confuse the parser.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath

from mclnet_cli.types import Modality
from mclnet_cli.data.sources import llcm, regdb, sysu

# LLCM first: its camN/<pid>/ folders would otherwise pass for SYSU's.
_PARSERS = (("llcm", llcm.parse_path), ("sysu", sysu.parse_path), ("regdb", regdb.parse_path))


@dataclass(frozen=True)
class PathIdentity:
    """What a dataset layout says about one image: pid, camera, spectrum, and which layout."""

    pid: int
    cam: int
    modality: Modality
    dataset: str  # sysu | regdb | llcm


def identify(path: str | PurePath) -> PathIdentity | None:
    """Pid, camera and spectrum of ``path`` if it follows a known layout, else ``None``."""
    for dataset, parse in _PARSERS:
        found = parse(path)
        if found is not None:
            return PathIdentity(found.pid, found.cam, found.modality, dataset)
    return None
