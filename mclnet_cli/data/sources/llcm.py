"""LLCM reader: training through ``idx/train_{vis,nir}.txt``, test through camera folders.

Test: ``test_vis|test_nir/camN/<pid>/<file>`` (``test_nir/cam3`` exists but is
empty). Paths are parsed by components, so a root containing "cam" is fine.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from mclnet_cli.data.records import Modality, Sample
from mclnet_cli.data.sources._common import (
    cam_number,
    list_images,
    numbered_subdirs,
    read_id_list,
    read_path_label_file,
    require_dir,
)
from mclnet_cli.data.sources.regdb import check_labels
from mclnet_cli.errors import DataError

TRAIN_FILES = {Modality.VISIBLE: "train_vis.txt", Modality.INFRARED: "train_nir.txt"}
TEST_FOLDERS = {Modality.VISIBLE: "test_vis", Modality.INFRARED: "test_nir"}


def cam_from_filename(name: str) -> int | None:
    """``0001_c04_s200685_f7830_nir.jpg`` -> 4 (the ``c<digits>`` token)."""
    for token in Path(name).stem.split("_"):
        if len(token) > 1 and token[0] == "c" and token[1:].isdigit():
            return int(token[1:])
    return None


def _train_samples(root: Path, idx: Path) -> list[Sample]:
    samples: list[Sample] = []
    for modality, name in TRAIN_FILES.items():
        idx_file = idx / name
        pairs = []
        for rel, label in read_path_label_file(idx_file):
            parts = PurePosixPath(rel.replace("\\", "/")).parts
            if len(parts) < 2 or not parts[-2].isdigit():
                raise DataError(f"{idx_file}: path {rel!r} has no <pid> folder before the file name")
            pid = int(parts[-2])
            cam = cam_from_filename(parts[-1])
            if cam is None:
                raise DataError(f"{idx_file}: file name {parts[-1]!r} has no camera token like _c04_")
            pairs.append((pid, label))
            samples.append(Sample(str(root / "/".join(parts)), pid, cam, modality, "train"))
        check_labels(idx_file, pairs)
    return samples


def _test_samples(root: Path, idx: Path) -> list[Sample]:
    id_file = idx / "test_id.txt"
    listed = set(read_id_list(id_file)) if id_file.is_file() else None
    samples: list[Sample] = []
    for modality, folder_name in TEST_FOLDERS.items():
        folder = require_dir(root / folder_name, f"LLCM {modality} test images in cam1..cam9/<pid>/")
        cams = sorted((cam_number(p.name), p) for p in folder.iterdir() if p.is_dir() and cam_number(p.name) is not None)
        if not cams:
            raise DataError(f"{folder}: no camera folders cam1..cam9")
        for cam, cam_dir in cams:
            for pid, pid_dir in sorted(numbered_subdirs(cam_dir).items()):
                if listed is not None and pid not in listed:
                    continue
                samples.extend(Sample(str(p), pid, cam, modality, "test") for p in list_images(pid_dir))
    return samples


def read_llcm(root: Path | str) -> list[Sample]:
    """Training samples (from idx files) followed by test samples (from camera folders)."""
    root = Path(root).resolve()
    require_dir(root, "LLCM root with idx/, test_vis/ and test_nir/")
    idx = require_dir(root / "idx", "LLCM idx files train_vis.txt and train_nir.txt")
    train = _train_samples(root, idx)
    test = _test_samples(root, idx)
    shared = sorted({s.pid for s in train} & {s.pid for s in test})
    if shared:
        raise DataError(f"{root}: person {shared[0]} appears in both the training idx files and the test folders")
    return train + test
