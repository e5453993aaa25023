"""SYSU-MM01 reader: ``camN/<pid>/<index>.jpg`` plus ``exp/{train,val,test}_id.txt``.

Visible cameras 1, 2, 4, 5; infrared 3, 6. Only ids listed in a split file are
loaded (some camera folders hold people that belong to no split).
:func:`parse_path` reads pid and camera back from one image path by the same rules.
"""

from __future__ import annotations

from pathlib import Path, PurePath

from mclnet_cli.types import Modality, Sample
from mclnet_cli.data.sources._common import (
    PathInfo,
    as_number,
    cam_number,
    list_images,
    numbered_subdirs,
    path_parts,
    read_id_list,
    require_dir,
)
from mclnet_cli.errors import DataError

VISIBLE_CAMS = (1, 2, 4, 5)
INFRARED_CAMS = (3, 6)
CAMERAS = (1, 2, 3, 4, 5, 6)
SPLIT_FILES = {"train": "train_id.txt", "val": "val_id.txt", "test": "test_id.txt"}


def camera_modality(cam: int) -> Modality:
    """The modality of a SYSU-MM01 camera."""
    return Modality.INFRARED if cam in INFRARED_CAMS else Modality.VISIBLE


def parse_path(path: str | PurePath) -> PathInfo | None:
    """``.../cam3/0007/0012.jpg`` -> (7, 3, infrared); None when the path is not in this layout.

    The pid folder is any run of digits (as the reader's ``numbered_subdirs``); the
    camera folder must be one of cam1..cam6; the file name is the image index
    (digits), as in the published set.
    """
    parts = path_parts(path)
    if len(parts) < 3:
        return None
    cam, pid = cam_number(parts[-3]), as_number(parts[-2])
    if cam not in CAMERAS or pid is None or as_number(PurePath(parts[-1]).stem) is None:
        return None
    return PathInfo(pid, cam, camera_modality(cam))


def read_splits(root: Path) -> dict[str, list[int]]:
    """Split name -> listed ids; an id in two splits is an error."""
    exp = require_dir(root / "exp", "SYSU-MM01 split files train_id.txt, val_id.txt, test_id.txt")
    splits = {split: read_id_list(exp / name) for split, name in SPLIT_FILES.items()}
    seen: dict[int, str] = {}
    for split, ids in splits.items():
        for pid in ids:
            if pid in seen:
                raise DataError(f"{exp}: id {pid} is listed in both {seen[pid]} and {split}")
            seen[pid] = split
    return splits


def read_sysu(root: Path | str) -> list[Sample]:
    """All images of the listed ids, ordered by split, pid, camera, file name."""
    root = Path(root).resolve()
    require_dir(root, "SYSU-MM01 root with cam1..cam6 and exp/")
    splits = read_splits(root)
    cam_dirs = {cam: require_dir(root / f"cam{cam}", "SYSU-MM01 camera folder") for cam in CAMERAS}
    pid_dirs = {cam: numbered_subdirs(folder) for cam, folder in cam_dirs.items()}
    samples: list[Sample] = []
    for split, ids in splits.items():
        for pid in sorted(ids):
            for cam in CAMERAS:
                folder = pid_dirs[cam].get(pid)
                if folder is None:
                    continue
                modality = camera_modality(cam)
                samples.extend(Sample(str(p), pid, cam, modality, split) for p in list_images(folder))
    if not samples:
        raise DataError(f"{root}: no images found for the listed ids under cam1..cam6/<pid>/")
    seen = {s.pid for s in samples}
    empty = [(split, pid) for split, ids in splits.items() for pid in sorted(ids) if pid not in seen]
    if empty:  # a listed identity without a single image is a broken tree, not something to drop silently
        split, pid = empty[0]
        more = f" ({len(empty) - 1} more listed ids without images)" if len(empty) > 1 else ""
        raise DataError(f"{root / 'exp' / f'{split}_id.txt'}: id {pid} has no images under cam1..cam6/{pid:04d}/{more}")
    return samples
