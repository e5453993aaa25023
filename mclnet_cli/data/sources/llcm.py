"""LLCM reader: training through ``idx/train_{vis,nir}.txt``, test through camera folders.

Test: ``test_vis|test_nir/camN/<pid>/<file>`` (``test_nir/cam3`` exists but is
empty). Paths are parsed by components, so a root containing "cam" is fine.
:func:`parse_path` reads pid, camera and spectrum back from one test-layout path.
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
    read_path_label_file,
    require_dir,
)
from mclnet_cli.data.sources.regdb import check_labels
from mclnet_cli.errors import DataError

TRAIN_FILES = {Modality.VISIBLE: "train_vis.txt", Modality.INFRARED: "train_nir.txt"}
TEST_FOLDERS = {Modality.VISIBLE: "test_vis", Modality.INFRARED: "test_nir"}
SPECTRUM_WORDS = {Modality.VISIBLE: "vis", Modality.INFRARED: "nir"}


def _cam_token(token: str) -> int | None:
    """``c04`` -> 4."""
    return as_number(token[1:]) if token[:1] in ("c", "C") and len(token) > 1 else None


def cam_from_filename(name: str) -> int | None:
    """``0001_c04_s200685_f7830_nir.jpg`` -> 4 (the ``c<digits>`` token)."""
    for token in PurePath(name).stem.split("_"):
        cam = _cam_token(token)
        if cam is not None:
            return cam
    return None


def spectrum_modality(folder: str) -> Modality | None:
    """``test_vis`` / ``vis`` -> visible, ``test_nir`` / ``nir`` -> infrared (any ``<name>_vis|_nir``)."""
    name = folder.lower()
    for modality, word in SPECTRUM_WORDS.items():
        if name == word or name.endswith("_" + word):
            return modality
    return None


def parse_path(path: str | PurePath) -> PathInfo | None:
    """``.../test_vis/cam4/0123/0123_c04_s1_f1_vis.jpg`` -> (123, 4, visible); None when not this layout.

    The test layout ``<name>_vis|_nir/camN/<pid>/<pid>_c<NN>_...``; the pid and
    camera in the file name must agree with the folders.
    """
    parts = path_parts(path)
    if len(parts) < 4:
        return None
    modality, cam, pid = spectrum_modality(parts[-4]), cam_number(parts[-3]), as_number(parts[-2])
    tokens = PurePath(parts[-1]).stem.split("_")
    if modality is None or cam is None or pid is None or len(tokens) < 3:
        return None
    if as_number(tokens[0]) != pid or _cam_token(tokens[1]) != cam:
        return None
    return PathInfo(pid, cam, modality)


def _train_samples(root: Path, idx: Path) -> list[Sample]:
    samples: list[Sample] = []
    for modality, name in TRAIN_FILES.items():
        idx_file = idx / name
        pairs = []
        for rel, label in read_path_label_file(idx_file):
            parts = path_parts(rel)
            pid = as_number(parts[-2]) if len(parts) >= 2 else None
            if pid is None:
                raise DataError(f"{idx_file}: path {rel!r} has no <pid> folder before the file name")
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
