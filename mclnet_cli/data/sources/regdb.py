"""RegDB reader: ``Visible|Thermal/<pid>/<file>.bmp`` reached through per-trial idx files.

``idx/{train,test}_{visible,thermal}_{trial}.txt`` hold ``<relative path> <label>``.
The pid is the path's ``<pid>`` folder; the label must map one-to-one onto pids.
Camera 1 is visible, camera 2 thermal (infrared). :func:`parse_path` reads pid and
camera back from one image path by the same rules.
"""

from __future__ import annotations

from pathlib import Path, PurePath

from mclnet_cli.data.sources import REGDB_SPLIT
from mclnet_cli.types import Modality, Sample
from mclnet_cli.data.sources._common import PathInfo, as_number, path_parts, read_path_label_file, require_dir
from mclnet_cli.errors import DataError

TRIALS = range(REGDB_SPLIT.low, REGDB_SPLIT.high + 1)  # the table's --trial range
MODALITY_FOLDERS = {Modality.VISIBLE: ("Visible", "visible", 1), Modality.INFRARED: ("Thermal", "thermal", 2)}
_BY_TOP = {top: (modality, cam) for modality, (top, _, cam) in MODALITY_FOLDERS.items()}


def check_labels(path: Path, pairs: list[tuple[int, int]]) -> None:
    """Labels and pids of one idx file must correspond one to one."""
    by_label: dict[int, int] = {}
    by_pid: dict[int, int] = {}
    for pid, label in pairs:
        if by_label.setdefault(label, pid) != pid:
            raise DataError(f"{path}: label {label} is used for persons {by_label[label]} and {pid}")
        if by_pid.setdefault(pid, label) != label:
            raise DataError(f"{path}: person {pid} has labels {by_pid[pid]} and {label}")


def _folder_info(parts: tuple[str, ...]) -> PathInfo | None:
    """(pid, cam, modality) from ``.../Visible|Thermal/<pid>/<file>``, the file name unchecked."""
    if len(parts) < 3 or parts[-3] not in _BY_TOP:
        return None
    pid = as_number(parts[-2])
    if pid is None:
        return None
    modality, cam = _BY_TOP[parts[-3]]
    return PathInfo(pid, cam, modality)


def parse_path(path: str | PurePath) -> PathInfo | None:
    """``.../Visible/12/female_back_v_00001_12.bmp`` -> (12, 1, visible); None when not this layout.

    Outside a dataset root the folders alone are weak evidence, so the file name
    must also end in ``_<pid>``, as every file of the published set does.
    """
    parts = path_parts(path)
    found = _folder_info(parts)
    if found is None:
        return None
    tokens = PurePath(parts[-1]).stem.rsplit("_", 1)
    if len(tokens) != 2 or as_number(tokens[1]) != found.pid:
        return None
    return found


def pid_from_relpath(rel: str, idx_file: Path, top: str) -> int:
    """``Visible/12/female_back_v_00001_12.bmp`` -> 12, checking the top folder."""
    parts = path_parts(rel)
    found = _folder_info(parts)
    if found is None or parts[-3] != top:
        raise DataError(f"{idx_file}: path {rel!r} is not of the form {top}/<pid>/<file>")
    return found.pid


def read_regdb(root: Path | str, trial: int = 1) -> list[Sample]:
    """Train and test images of one trial (1..10), ordered as in the idx files."""
    if trial not in TRIALS:
        raise DataError(f"RegDB trial must be between {TRIALS[0]} and {TRIALS[-1]}, got {trial}")
    root = Path(root).resolve()
    require_dir(root, "RegDB root with Visible/, Thermal/ and idx/")
    idx = require_dir(root / "idx", "RegDB idx files train_visible_T.txt ... test_thermal_T.txt")
    for modality, (top, _, _) in MODALITY_FOLDERS.items():
        require_dir(root / top, f"RegDB {modality} images")
    samples: list[Sample] = []
    for split in ("train", "test"):
        for modality, (top, word, cam) in MODALITY_FOLDERS.items():
            idx_file = idx / f"{split}_{word}_{trial}.txt"
            pairs = []
            for rel, label in read_path_label_file(idx_file):
                pid = pid_from_relpath(rel, idx_file, top)
                pairs.append((pid, label))
                samples.append(Sample(str(root / rel.replace("\\", "/")), pid, cam, modality, split))
            check_labels(idx_file, pairs)
    train_ids = {s.pid for s in samples if s.split == "train"}
    test_ids = {s.pid for s in samples if s.split == "test"}
    shared = sorted(train_ids & test_ids)
    if shared:
        raise DataError(f"{idx}: trial {trial} lists person {shared[0]} in both train and test")
    return samples
