"""SYSU-MM01 reader: ``camN/<pid>/<index>.jpg`` plus ``exp/{train,val,test}_id.txt``.

Visible cameras 1, 2, 4, 5; infrared 3, 6. Only ids listed in a split file are
loaded (some camera folders hold people that belong to no split).
"""

from __future__ import annotations

from pathlib import Path

from mclnet_cli.data.records import Modality, Sample
from mclnet_cli.data.sources._common import list_images, numbered_subdirs, read_id_list, require_dir
from mclnet_cli.errors import DataError

VISIBLE_CAMS = (1, 2, 4, 5)
INFRARED_CAMS = (3, 6)
CAMERAS = (1, 2, 3, 4, 5, 6)
SPLIT_FILES = {"train": "train_id.txt", "val": "val_id.txt", "test": "test_id.txt"}


def camera_modality(cam: int) -> Modality:
    """The modality of a SYSU-MM01 camera."""
    return Modality.INFRARED if cam in INFRARED_CAMS else Modality.VISIBLE


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
    return samples
