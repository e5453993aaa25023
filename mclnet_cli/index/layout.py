"""Person id and camera from the path of an image, when it follows a known dataset layout.

A gallery folder handed to ``mclnet index`` is often a copy of part of a public
dataset. When its paths follow one of the layouts below, the index records the
pid and camera so that ``mclnet query`` can mark correct and wrong matches:

- SYSU-MM01: ``.../camN/<pid, 4 digits>/<index, digits>.jpg`` (cams 1, 2, 4, 5
  visible; 3, 6 infrared).
- RegDB: ``.../Visible|Thermal/<pid>/<...>_<pid>.bmp`` (one co-located camera
  pair: recorded as cam 1 for visible, cam 2 for thermal).
- LLCM: ``.../<name>_vis|_nir/camN/<pid, 4 digits>/<pid>_c<NN>_...jpg``.

Ids are read from path components (never from character offsets), so a root
folder whose name contains "cam" does not confuse the parser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePath

from mclnet_cli.data.records import Modality

SYSU_VISIBLE_CAMS = (1, 2, 4, 5)
SYSU_INFRARED_CAMS = (3, 6)

_CAM_DIR = re.compile(r"^cam(\d+)$", re.IGNORECASE)
_SYSU_PID = re.compile(r"^\d{4}$")
_SYSU_FILE = re.compile(r"^\d+$")
_LLCM_FILE = re.compile(r"^(\d+)_c(\d+)_", re.IGNORECASE)
_LLCM_ROOT = re.compile(r"(^|_)(vis|nir)$", re.IGNORECASE)
_REGDB_FILE = re.compile(r"_(\d+)$")


@dataclass(frozen=True)
class PathIdentity:
    """What a dataset layout says about one image: pid, camera, spectrum, and which layout."""

    pid: int
    cam: int
    modality: Modality
    dataset: str  # sysu | regdb | llcm


def _llcm(parts: tuple[str, ...], stem: str) -> PathIdentity | None:
    if len(parts) < 4:
        return None
    spectrum_dir, cam_dir, pid_dir = parts[-4], parts[-3], parts[-2]
    cam_match, file_match, root_match = _CAM_DIR.match(cam_dir), _LLCM_FILE.match(stem), _LLCM_ROOT.search(spectrum_dir)
    if not (cam_match and file_match and root_match and pid_dir.isdigit()):
        return None
    pid, cam = int(pid_dir), int(cam_match.group(1))
    if int(file_match.group(1)) != pid or int(file_match.group(2)) != cam:
        return None
    modality = Modality.VISIBLE if root_match.group(2).lower() == "vis" else Modality.INFRARED
    return PathIdentity(pid, cam, modality, "llcm")


def _sysu(parts: tuple[str, ...], stem: str) -> PathIdentity | None:
    if len(parts) < 3:
        return None
    cam_match = _CAM_DIR.match(parts[-3])
    if not (cam_match and _SYSU_PID.match(parts[-2]) and _SYSU_FILE.match(stem)):
        return None
    cam = int(cam_match.group(1))
    if cam in SYSU_VISIBLE_CAMS:
        modality = Modality.VISIBLE
    elif cam in SYSU_INFRARED_CAMS:
        modality = Modality.INFRARED
    else:
        return None
    return PathIdentity(int(parts[-2]), cam, modality, "sysu")


def _regdb(parts: tuple[str, ...], stem: str) -> PathIdentity | None:
    if len(parts) < 3:
        return None
    spectrum_dir, pid_dir = parts[-3], parts[-2]
    if spectrum_dir not in ("Visible", "Thermal") or not pid_dir.isdigit():
        return None
    file_match = _REGDB_FILE.search(stem)
    if not file_match or int(file_match.group(1)) != int(pid_dir):
        return None
    if spectrum_dir == "Visible":
        return PathIdentity(int(pid_dir), 1, Modality.VISIBLE, "regdb")
    return PathIdentity(int(pid_dir), 2, Modality.INFRARED, "regdb")


def identify(path: str | PurePath) -> PathIdentity | None:
    """Pid, camera and spectrum of ``path`` if it follows a known layout, else ``None``."""
    pure = PurePath(path)
    parts, stem = pure.parts, pure.stem
    # LLCM first: its camN/<pid>/ folders would otherwise pass for SYSU's.
    for parser in (_llcm, _sysu, _regdb):
        found = parser(parts, stem)
        if found is not None:
            return found
    return None
