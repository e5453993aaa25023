"""Readers of the published layouts, on fake trees that follow DATASETS.md exactly.

The tree builders here are reused by test_prepare_cli.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mclnet_cli.data.images import load_rgb
from mclnet_cli.data.records import Modality
from mclnet_cli.data.sources import READERS, llcm, read_llcm, read_regdb, read_sysu, regdb, sysu
from mclnet_cli.errors import DataError


def write_image(path: Path, mode: str = "RGB", size: tuple[int, int] = (8, 16), value: int = 0) -> Path:
    """A tiny image; ``mode`` "I;16" writes a 16-bit PNG, "P" a palette image, "L" grayscale."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    if mode == "I;16":
        array = rng.integers(0, 65535, size=(size[1], size[0]), dtype=np.uint16)
        Image.fromarray(array).save(path)  # 16-bit PNG
    elif mode == "L":
        Image.fromarray(rng.integers(0, 255, size=(size[1], size[0]), dtype=np.uint8), mode="L").save(path)
    elif mode == "P":  # a coloured palette, so the file stays "P" on disk
        rgb = Image.fromarray(rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8), mode="RGB")
        rgb.quantize(16).save(path)
    else:
        Image.fromarray(rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8), mode="RGB").save(path)
    return path


# SYSU: pid -> {cam: number of images}
SYSU_TREE = {
    1: {1: 2, 2: 1, 3: 2, 4: 1, 5: 1, 6: 1},  # train
    2: {1: 1, 3: 1},  # train
    3: {2: 2, 6: 1},  # train
    4: {4: 1, 3: 1},  # val
    5: {1: 1, 2: 1, 3: 2, 6: 1},  # test
    6: {4: 2, 5: 1, 6: 1},  # test
    9: {1: 3, 3: 3},  # in no split: never loaded
}
SYSU_SPLITS = {"train": [1, 2, 3], "val": [4], "test": [5, 6]}
PARSERS = {"sysu": sysu.parse_path, "regdb": regdb.parse_path, "llcm": llcm.parse_path}
SIXTEEN_BIT = (1, 3, 2)  # (pid, cam, index) written as a 16-bit PNG


def make_sysu(root: Path, tree: dict[int, dict[int, int]] = SYSU_TREE, splits: dict[str, list[int]] = SYSU_SPLITS) -> Path:
    """SYSU-MM01 layout: camN/<pid 4 digits>/<index 4 digits>.jpg and exp/*_id.txt."""
    for cam in range(1, 7):
        (root / f"cam{cam}").mkdir(parents=True, exist_ok=True)
    for pid, cams in tree.items():
        for cam, n in cams.items():
            for index in range(1, n + 1):
                if (pid, cam, index) == SIXTEEN_BIT:  # a 16-bit infrared file, as found in the wild
                    write_image(root / f"cam{cam}" / f"{pid:04d}" / f"{index:04d}.png", mode="I;16", value=7)
                else:
                    write_image(root / f"cam{cam}" / f"{pid:04d}" / f"{index:04d}.jpg", value=pid * 100 + cam * 10 + index)
    (root / "exp").mkdir(exist_ok=True)
    for split, ids in splits.items():
        (root / "exp" / f"{split}_id.txt").write_text(",".join(map(str, ids)) + "\n")
    (root / "exp" / "available_id.txt").write_text(",".join(map(str, sorted(tree))) + "\n")
    return root


def make_regdb(root: Path, ids: int = 6, per_id: int = 2) -> Path:
    """RegDB layout; trial T puts ids rotated by T in train/test halves. Thermal files are palette BMPs."""
    pids = list(range(1, ids + 1))
    for pid in pids:
        for k in range(per_id):
            serial = pid * 10 + k
            sex = "female" if pid % 2 else "male"
            write_image(root / "Visible" / str(pid) / f"{sex}_back_v_{serial:05d}_{pid}.bmp", value=serial)
            write_image(root / "Thermal" / str(pid) / f"{sex}_back_t_{serial:05d}_{pid}.bmp", mode="P", value=serial + 1)
    (root / "idx").mkdir(parents=True, exist_ok=True)
    for trial in range(1, 11):
        order = pids[trial % ids :] + pids[: trial % ids]
        halves = {"train": order[: ids // 2], "test": order[ids // 2 :]}
        for split, members in halves.items():
            for word, top, letter in (("visible", "Visible", "v"), ("thermal", "Thermal", "t")):
                lines = []
                for label, pid in enumerate(members):
                    sex = "female" if pid % 2 else "male"
                    for k in range(per_id):
                        lines.append(f"{top}/{pid}/{sex}_back_{letter}_{pid * 10 + k:05d}_{pid}.bmp {label}")
                (root / "idx" / f"{split}_{word}_{trial}.txt").write_text("\n".join(lines) + "\n")
    return root


def make_llcm(root: Path) -> Path:
    """LLCM layout: idx/train_{vis,nir}.txt for training, test_{vis,nir}/camN/<pid>/ for test."""
    train = {1: [(2, "vis"), (4, "nir")], 2: [(1, "vis"), (1, "nir"), (5, "nir")], 3: [(7, "vis"), (7, "nir")]}
    lines = {"vis": [], "nir": []}
    for label, (pid, shots) in enumerate(sorted(train.items())):
        for n, (cam, kind) in enumerate(shots):
            rel = f"{kind}/{pid:04d}/{pid:04d}_c{cam:02d}_s2000{n}_f{n}_{kind}.jpg"
            write_image(root / rel, mode="L" if kind == "nir" else "RGB", value=pid * 10 + n)
            lines[kind].append(f"{rel} {label}")
    (root / "idx").mkdir(parents=True, exist_ok=True)
    (root / "idx" / "train_vis.txt").write_text("\n".join(lines["vis"]) + "\n")
    (root / "idx" / "train_nir.txt").write_text("\n".join(lines["nir"]) + "\n")
    test = {"test_vis": {10: [1, 2], 11: [9]}, "test_nir": {10: [2, 4], 11: [1]}}
    for folder, people in test.items():
        kind = folder.split("_")[1]
        for pid, cams in people.items():
            for cam in cams:
                write_image(root / folder / f"cam{cam}" / f"{pid:04d}" / f"{pid:04d}_c{cam:02d}_s1_f1_{kind}.jpg", mode="L" if kind == "nir" else "RGB", value=pid + cam)
    (root / "test_nir" / "cam3").mkdir(parents=True, exist_ok=True)  # exists but empty, as in the real set
    (root / "idx" / "test_id.txt").write_text("10,11\n")
    return root


@pytest.mark.parametrize("dataset", ["sysu", "regdb", "llcm"])
def test_each_reader_reads_its_tree_and_parse_path_agrees(tmp_path: Path, dataset: str) -> None:
    """READERS[name] reads its tree; parse_path gives back every sample's pid, cam and modality."""
    make = {"sysu": make_sysu, "regdb": make_regdb, "llcm": make_llcm}[dataset]
    samples = READERS[dataset](make(tmp_path / dataset))
    assert samples and all(Path(s.path).is_file() for s in samples)
    parse = PARSERS[dataset]
    # LLCM training images (vis|nir/<pid>/<file>, reached through idx files) have no camera folder
    checked = [s for s in samples if dataset != "llcm" or s.split == "test"]
    assert checked
    for s in checked:
        assert parse(s.path) == (s.pid, s.cam, s.modality), s.path


@pytest.mark.parametrize(
    ("dataset", "path", "expected"),
    [
        ("sysu", "/d/SYSU/cam6/0020/0003.jpg", (20, 6, Modality.INFRARED)),
        ("sysu", "/d/SYSU/cam2/7/0001.png", (7, 2, Modality.VISIBLE)),
        ("sysu", "/cam3_copy/SYSU/cam4/0001/0001.jpg", (1, 4, Modality.VISIBLE)),
        ("sysu", "/d/SYSU/cam7/0020/0003.jpg", None),
        ("sysu", "/d/SYSU/cam1/²/0003.jpg", None),
        ("sysu", "/d/SYSU/cam1/0020/photo.jpg", None),
        ("sysu", "0003.jpg", None),
        ("regdb", "/x/RegDB/Thermal/7/male_back_t_00001_7.bmp", (7, 2, Modality.INFRARED)),
        ("regdb", "Visible\\12\\female_back_v_00001_12.bmp", (12, 1, Modality.VISIBLE)),
        ("regdb", "/x/RegDB/Visible/12/female_back_v_00001_13.bmp", None),
        ("regdb", "/x/RegDB/visible/12/female_back_v_00001_12.bmp", None),
        ("llcm", "/d/LLCM/test_nir/cam9/0010/0010_c09_s1_f2_nir.jpg", (10, 9, Modality.INFRARED)),
        ("llcm", "/d/LLCM/gallery_vis/cam4/0123/0123_c04_s1_f1_vis.jpg", (123, 4, Modality.VISIBLE)),
        ("llcm", "/d/LLCM/test_vis/cam4/0123/0123_c05_s1_f1_vis.jpg", None),
        ("llcm", "/d/LLCM/test_rgb/cam4/0123/0123_c04_s1_f1_vis.jpg", None),
        ("llcm", "/d/LLCM/vis/0123/0123_c04_s1_f1_vis.jpg", None),
    ],
)
def test_parse_path(dataset: str, path: str, expected: tuple | None) -> None:
    assert PARSERS[dataset](path) == expected


def test_sysu_camera_constants_cover_the_cameras() -> None:
    assert sorted(sysu.VISIBLE_CAMS + sysu.INFRARED_CAMS) == list(sysu.CAMERAS)
    assert {sysu.camera_modality(c) for c in sysu.INFRARED_CAMS} == {Modality.INFRARED}


def test_sysu_counts_ids_cameras_modalities(tmp_path: Path) -> None:
    root = make_sysu(tmp_path / "SYSU-MM01")
    samples = read_sysu(root)
    expected = {(pid, cam): n for pid, cams in SYSU_TREE.items() if pid != 9 for cam, n in cams.items()}
    found: dict[tuple[int, int], int] = {}
    for s in samples:
        found[(s.pid, s.cam)] = found.get((s.pid, s.cam), 0) + 1
        assert Path(s.path).is_absolute() and Path(s.path).is_file()
        assert Path(s.path).parent.name == f"{s.pid:04d}" and Path(s.path).parent.parent.name == f"cam{s.cam}"
        assert s.modality is (Modality.INFRARED if s.cam in (3, 6) else Modality.VISIBLE)
        split = next(name for name, ids in SYSU_SPLITS.items() if s.pid in ids)
        assert s.split == split
    assert found == expected
    assert 9 not in {s.pid for s in samples}


def test_sysu_root_containing_cam(tmp_path: Path) -> None:
    root = make_sysu(tmp_path / "cam5_camera_data" / "cam2")
    samples = read_sysu(root)
    assert {(s.pid, s.cam) for s in samples if s.pid == 6} == {(6, 4), (6, 5), (6, 6)}


@pytest.mark.parametrize(
    ("content", "needle"),
    [("1,2,3,\n", "trailing or doubled comma"), ("1,2,x3\n", "'x3'"), ("\n", "empty id list"), ("1,2,2\n", "listed twice")],
)
def test_sysu_malformed_split_file_names_it(tmp_path: Path, content: str, needle: str) -> None:
    root = make_sysu(tmp_path / "SYSU")
    (root / "exp" / "train_id.txt").write_text(content)
    with pytest.raises(DataError) as info:
        read_sysu(root)
    assert "train_id.txt" in str(info.value) and needle in str(info.value)


def test_sysu_missing_pieces(tmp_path: Path) -> None:
    root = make_sysu(tmp_path / "SYSU")
    (root / "exp" / "val_id.txt").unlink()
    with pytest.raises(DataError, match="val_id.txt"):
        read_sysu(root)
    root = make_sysu(tmp_path / "SYSU2")
    (root / "cam6").rename(root / "camera6")
    with pytest.raises(DataError, match="cam6"):
        read_sysu(root)


def test_sysu_id_in_two_splits(tmp_path: Path) -> None:
    root = make_sysu(tmp_path / "SYSU", splits={"train": [1, 2, 3], "val": [3], "test": [5, 6]})
    with pytest.raises(DataError, match="id 3 is listed in both train and val"):
        read_sysu(root)


def test_sysu_listed_id_without_images_is_refused_naming_the_split_file(tmp_path: Path) -> None:
    root = make_sysu(tmp_path / "SYSU", splits={"train": [1, 2, 3, 7], "val": [4], "test": [5, 6]})
    with pytest.raises(DataError) as info:
        read_sysu(root)
    assert "train_id.txt" in str(info.value) and "id 7 has no images" in str(info.value)


def test_regdb_trials_and_modalities(tmp_path: Path) -> None:
    root = make_regdb(tmp_path / "RegDB")
    one, two = read_regdb(root, trial=1), read_regdb(root, trial=2)
    for samples in (one, two):
        assert len(samples) == 6 * 2 * 2  # every id, 2 images, 2 modalities
        for s in samples:
            assert (s.cam, s.modality) in {(1, Modality.VISIBLE), (2, Modality.INFRARED)}
            assert Path(s.path).parent.name == str(s.pid) and Path(s.path).is_file()
            assert Path(s.path).parent.parent.name == ("Visible" if s.cam == 1 else "Thermal")
        train = {s.pid for s in samples if s.split == "train"}
        assert len(train) == 3 and not train & {s.pid for s in samples if s.split == "test"}
    assert {s.pid for s in one if s.split == "train"} != {s.pid for s in two if s.split == "train"}
    thermal = next(s for s in one if s.modality is Modality.INFRARED)
    assert Image.open(thermal.path).mode == "P" and load_rgb(thermal.path).mode == "RGB"


def test_regdb_label_inconsistent_with_pid(tmp_path: Path) -> None:
    root = make_regdb(tmp_path / "RegDB")
    idx = root / "idx" / "train_visible_1.txt"
    lines = idx.read_text().splitlines()
    path, _ = lines[0].rsplit(" ", 1)
    lines[0] = f"{path} 2"  # first person's image labelled as the third person
    idx.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="train_visible_1.txt"):
        read_regdb(root, trial=1)
    with pytest.raises(DataError, match="between 1 and 10"):
        read_regdb(root, trial=11)


def test_regdb_bad_idx_line(tmp_path: Path) -> None:
    root = make_regdb(tmp_path / "RegDB")
    (root / "idx" / "test_thermal_4.txt").write_text("Thermal/1/a.bmp one\n")
    with pytest.raises(DataError, match=r"test_thermal_4.txt:1: label 'one' is not an integer"):
        read_regdb(root, trial=4)


def test_llcm_train_from_idx_test_from_folders(tmp_path: Path) -> None:
    root = make_llcm(tmp_path / "cam_archive" / "LLCM")
    samples = read_llcm(root)
    train = [s for s in samples if s.split == "train"]
    test = [s for s in samples if s.split == "test"]
    assert sorted((s.pid, s.cam, s.modality.value) for s in train) == sorted(
        [(1, 2, "visible"), (1, 4, "infrared"), (2, 1, "visible"), (2, 1, "infrared"), (2, 5, "infrared"), (3, 7, "visible"), (3, 7, "infrared")]
    )
    assert sorted((s.pid, s.cam, s.modality.value) for s in test) == sorted(
        [(10, 1, "visible"), (10, 2, "visible"), (11, 9, "visible"), (10, 2, "infrared"), (10, 4, "infrared"), (11, 1, "infrared")]
    )
    for s in test:
        assert Path(s.path).parts[-3] == f"cam{s.cam}" and Path(s.path).parts[-4] == ("test_vis" if s.modality is Modality.VISIBLE else "test_nir")


def test_llcm_label_must_match_pid_folder(tmp_path: Path) -> None:
    root = make_llcm(tmp_path / "LLCM")
    idx = root / "idx" / "train_nir.txt"
    lines = idx.read_text().splitlines()
    path, _ = lines[-1].rsplit(" ", 1)
    lines[-1] = f"{path} 0"  # pid 3's image given pid 1's label
    idx.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="train_nir.txt: label 0 is used for persons 1 and 3"):
        read_llcm(root)


def test_llcm_test_ids_filter(tmp_path: Path) -> None:
    root = make_llcm(tmp_path / "LLCM")
    (root / "idx" / "test_id.txt").write_text("11\n")
    assert {s.pid for s in read_llcm(root) if s.split == "test"} == {11}
