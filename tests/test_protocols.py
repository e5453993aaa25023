"""Protocols: gallery draws against a literal re-implementation of the AGW-family reference code."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest

from mclnet_cli.data.records import Modality, Sample
from mclnet_cli.errors import ConfigError, DataError
from mclnet_cli.metrics.protocols import (
    PROTOCOLS,
    OfficialDraws,
    check_choice,
    check_protocol,
    llcm_trial,
    load_official_draws,
    protocol_trials,
    regdb_trial,
    skipped_in_gallery_folders,
    sysu_trial,
)

TEST_IDS = [3, 7, 10, 25, 140]


def build_fake_sysu(root: Path, seed: int = 0) -> list[Sample]:
    """A SYSU-MM01-shaped tree of empty files; returns its samples in a shuffled order."""
    rng = np.random.default_rng(seed)
    samples = []
    for pid in TEST_IDS + [2, 99]:  # 2 and 99 are training ids
        split = "test" if pid in TEST_IDS else "train"
        for cam in range(1, 7):
            if rng.random() < 0.25:
                continue  # this person was not seen by this camera: no folder
            folder = root / f"cam{cam}" / f"{pid:04d}"
            folder.mkdir(parents=True)
            for k in range(1, int(rng.integers(1, 16)) + 1):
                path = folder / f"{k:04d}.jpg"
                path.touch()
                modality = Modality.INFRARED if cam in (3, 6) else Modality.VISIBLE
                samples.append(Sample(str(path), pid, cam, modality, split))
    order = rng.permutation(len(samples))
    return [samples[i] for i in order]


def agw_gallery_reference(data_path: str, mode: str, trial: int) -> list[str]:
    """The AGW-family gallery draw, literally: global random.seed, os.listdir, sorted paths."""
    random.seed(trial)
    rgb_cameras = ["cam1", "cam2", "cam4", "cam5"] if mode == "all" else ["cam1", "cam2"]
    ids = ["%04d" % x for x in TEST_IDS]
    files_rgb = []
    for pid in sorted(ids):
        for cam in rgb_cameras:
            img_dir = os.path.join(data_path, cam, pid)
            if os.path.isdir(img_dir):
                new_files = sorted([img_dir + "/" + i for i in os.listdir(img_dir)])
                files_rgb.append(random.choice(new_files))
    return files_rgb


@pytest.fixture(scope="module")
def sysu(tmp_path_factory):
    root = tmp_path_factory.mktemp("SYSU-MM01")
    return root, build_fake_sysu(root)


def paths_of(samples, indices):
    return [samples[i].path for i in indices]


@pytest.mark.parametrize("mode", ["all", "indoor"])
@pytest.mark.parametrize("trial", [0, 1, 7])
def test_sysu_gallery_equals_agw_draw(sysu, mode, trial):
    root, samples = sysu
    result = sysu_trial(samples, mode=mode, shots=1, trial=trial)
    assert paths_of(samples, result.gallery) == agw_gallery_reference(str(root), mode, trial)


def test_sysu_queries_are_all_infrared_test_images(sysu):
    _, samples = sysu
    for mode in ("all", "indoor"):
        trial = sysu_trial(samples, mode=mode, trial=3)
        expected = {i for i, s in enumerate(samples) if s.split == "test" and s.cam in (3, 6)}
        assert set(trial.query.tolist()) == expected and len(trial.query) == len(expected)


def test_trials_differ_and_indoor_uses_cams_1_2(sysu):
    _, samples = sysu
    galleries = [tuple(sysu_trial(samples, "all", 1, t).gallery) for t in range(10)]
    assert len(set(galleries)) > 1
    indoor = sysu_trial(samples, "indoor", 1, 0)
    assert {samples[i].cam for i in indoor.gallery} <= {1, 2}
    allsearch = sysu_trial(samples, "all", 1, 0)
    assert {samples[i].cam for i in allsearch.gallery} == {1, 2, 4, 5}
    # one image per existing (pid, cam) folder of the test ids
    groups = {(s.pid, s.cam) for s in samples if s.split == "test" and s.cam in (1, 2, 4, 5)}
    assert sorted((samples[i].pid, samples[i].cam) for i in allsearch.gallery) == sorted(groups)


def test_multi_shot_draws_ten_distinct_seeded_images(sysu):
    _, samples = sysu
    a = sysu_trial(samples, "all", 10, 2)
    b = sysu_trial(samples, "all", 10, 2)
    c = sysu_trial(samples, "all", 10, 3)
    assert np.array_equal(a.gallery, b.gallery)
    assert not np.array_equal(a.gallery, c.gallery)
    assert len(set(a.gallery.tolist())) == len(a.gallery)
    for pid, cam in {(s.pid, s.cam) for s in samples if s.split == "test" and s.cam in (1, 2, 4, 5)}:
        size = sum(1 for s in samples if (s.pid, s.cam, s.split) == (pid, cam, "test"))
        drawn = [i for i in a.gallery if (samples[i].pid, samples[i].cam) == (pid, cam)]
        assert len(drawn) == min(10, size)


def test_official_draws_pick_numbered_images(sysu):
    _, samples = sysu
    groups = {}
    for s in samples:
        if s.split == "test" and s.cam in (1, 2):
            groups.setdefault((s.cam, s.pid), []).append(s.path)
    # trial 1 takes the last image of each folder, trial 0 the first
    table = {key: np.array([np.arange(1, len(p) + 1), np.arange(len(p), 0, -1)]) for key, p in groups.items()}
    trial = sysu_trial(samples, "indoor", 1, 1, official=OfficialDraws(table))
    assert trial.draws == "official"
    expected = sorted(max(p) for p in groups.values())
    assert sorted(paths_of(samples, trial.gallery)) == expected
    del table[next(iter(table))]
    with pytest.raises(DataError, match="no permutation"):
        sysu_trial(samples, "indoor", 1, 0, official=OfficialDraws(table))


def test_official_draws_file_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_official_draws(tmp_path / "rand_perm_cam.mat")
    (tmp_path / "rand_perm_cam.mat").write_bytes(b"not matlab")
    try:
        import scipy  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="needs scipy"):
            load_official_draws(tmp_path / "rand_perm_cam.mat")
    else:
        with pytest.raises(DataError):
            load_official_draws(tmp_path / "rand_perm_cam.mat")


def build_fake_llcm(root: Path) -> list[Sample]:
    samples = []
    rng = np.random.default_rng(5)
    for pid in (1, 4, 9):
        for kind, modality in (("test_vis", Modality.VISIBLE), ("test_nir", Modality.INFRARED)):
            for cam in range(1, 10):
                if kind == "test_nir" and cam == 3:
                    continue
                if rng.random() < 0.3:
                    continue
                folder = root / kind / f"cam{cam}" / f"{pid:04d}"
                folder.mkdir(parents=True)
                for k in range(int(rng.integers(1, 5))):
                    path = folder / f"{pid:04d}_c{cam:02d}_s{k}_f{k * 7}_{kind[-3:]}.jpg"
                    path.touch()
                    samples.append(Sample(str(path), pid, cam, modality, "test"))
    return samples[::-1]


def llcm_reference(root: str, direction: str, trial: int) -> list[str]:
    random.seed(trial)
    if direction == "infrared_to_visible":
        kind, cams = "test_vis", [f"cam{c}" for c in range(1, 10)]
    else:
        kind, cams = "test_nir", [f"cam{c}" for c in (1, 2, 4, 5, 6, 7, 8, 9)]
    files = []
    for pid in sorted("%04d" % x for x in (1, 4, 9)):
        for cam in cams:
            img_dir = os.path.join(root, kind, cam, pid)
            if os.path.isdir(img_dir):
                files.append(random.choice(sorted([img_dir + "/" + i for i in os.listdir(img_dir)])))
    return files


@pytest.mark.parametrize("direction", ["infrared_to_visible", "visible_to_infrared"])
def test_llcm_directions(tmp_path, direction):
    samples = build_fake_llcm(tmp_path)
    for t in (0, 4):
        trial = llcm_trial(samples, direction, t)
        assert paths_of(samples, trial.gallery) == llcm_reference(str(tmp_path), direction, t)
    source = Modality.INFRARED if direction == "infrared_to_visible" else Modality.VISIBLE
    assert {samples[i].modality for i in trial.query} == {source}
    assert len(trial.query) == sum(s.modality is source for s in samples)
    assert {samples[i].modality for i in trial.gallery} == {source.other()}


def test_regdb_both_directions_no_sampling():
    samples = [
        Sample(f"/r/{m}/{pid}/{k}.bmp", pid, 1 if m == "Visible" else 2,
               Modality.VISIBLE if m == "Visible" else Modality.INFRARED, "test")
        for m in ("Visible", "Thermal") for pid in (1, 2, 3) for k in range(4)
    ] + [Sample("/r/Visible/9/0.bmp", 9, 1, Modality.VISIBLE, "train")]
    trials = protocol_trials(samples, "regdb", direction="both", trials=10)
    assert [t.direction for t in trials] == ["visible_to_infrared", "infrared_to_visible"]
    v2i, i2v = trials
    assert all(samples[i].modality is Modality.VISIBLE for i in v2i.query) and len(v2i.query) == 12
    assert all(samples[i].modality is Modality.INFRARED for i in v2i.gallery) and len(v2i.gallery) == 12
    assert np.array_equal(v2i.query, i2v.gallery) and np.array_equal(v2i.gallery, i2v.query)
    assert regdb_trial(samples, "infrared_to_visible").draws == "none"


def test_protocol_trials_errors(sysu):
    _, samples = sysu
    assert [t.trial for t in protocol_trials(samples, "sysu", trials=3)] == [0, 1, 2]
    with pytest.raises(ConfigError, match="choose from"):
        protocol_trials(samples, "market", trials=1)
    with pytest.raises(ConfigError, match="mode"):
        sysu_trial(samples, mode="outdoor")
    train_only = [s for s in samples if s.split == "train"]
    with pytest.raises(DataError, match="no query images"):
        sysu_trial(train_only)


def test_protocol_names_and_checks_have_one_owner():
    from mclnet_cli.engine.evaluate import EvalSettings
    from mclnet_cli.metrics import ranking

    assert PROTOCOLS == ("sysu", "regdb", "llcm")
    assert check_protocol(" SYSU ") == "sysu"
    with pytest.raises(ConfigError, match=r"unknown protocol 'market' \(--protocol\); choose from: sysu, regdb, llcm"):
        check_protocol("market", "--protocol")
    with pytest.raises(ConfigError, match=r"--shots 3 is not allowed; choose from: 1, 10"):
        check_choice("--shots", 3, (1, 10))
    assert not hasattr(ranking, "PROTOCOLS")  # the metrics use this module's list
    with pytest.raises(ConfigError, match=r"unknown protocol 'market' \(--protocol\)"):
        EvalSettings(protocol="market").check()
    with pytest.raises(ConfigError, match="--draws 'mat' is not allowed"):
        EvalSettings(draws="mat").check()
    with pytest.raises(ConfigError, match="--trials must be between 1 and 10"):
        EvalSettings(trials=11).check()


def test_skipped_file_in_a_gallery_folder_shifts_the_draws_and_is_reported(sysu):
    root, samples = sysu
    # a visible test image of a cam-1 folder with several images, dropped as prepare --skip-bad would
    # (the file stays in the folder, where the reference code still lists it)
    by_folder: dict[str, list[Sample]] = {}
    for s in samples:
        if s.split == "test" and s.cam == 1:
            by_folder.setdefault(str(Path(s.path).parent), []).append(s)
    folder = next(f for f, group in sorted(by_folder.items()) if len(group) >= 3)
    dropped = sorted(s.path for s in by_folder[folder])[0]
    kept = [s for s in samples if s.path != dropped]
    trials = protocol_trials(kept, "sysu", mode="all", trials=10)
    assert any(paths_of(kept, t.gallery) != agw_gallery_reference(str(root), "all", t.trial) for t in trials)
    assert skipped_in_gallery_folders(kept, trials, [dropped]) == [dropped]
    # not a gallery folder: an infrared folder, a training id's folder
    infrared = next(s.path for s in samples if s.split == "test" and s.cam == 3)
    train = next(s.path for s in samples if s.split == "train" and s.cam == 1)
    assert skipped_in_gallery_folders(kept, trials, [infrared, train]) == []
    # nothing was dropped: the draws are the reference's
    full = protocol_trials(samples, "sysu", mode="all", trials=3)
    assert all(paths_of(samples, t.gallery) == agw_gallery_reference(str(root), "all", t.trial) for t in full)


def test_regdb_draws_nothing_so_skipped_files_never_matter():
    samples = [
        Sample(f"/r/{m}/{pid}/{k}.bmp", pid, 1 if m == "Visible" else 2,
               Modality.VISIBLE if m == "Visible" else Modality.INFRARED, "test")
        for m in ("Visible", "Thermal") for pid in (1, 2) for k in range(3)
    ]
    trials = protocol_trials(samples, "regdb", direction="both")
    assert skipped_in_gallery_folders(samples, trials, ["/r/Visible/1/9.bmp", "/r/Thermal/2/9.bmp"]) == []
