"""Protocols: gallery draws against a literal re-implementation of the AGW-family reference code."""

from __future__ import annotations

import os
import random
import sys
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


def test_official_draws_file_errors(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="not found"):
        load_official_draws(tmp_path / "rand_perm_cam.mat")
    (tmp_path / "rand_perm_cam.mat").write_bytes(b"not matlab")
    import scipy.io  # noqa: F401  (the test extra declares scipy: missing, this fails)

    with pytest.raises(DataError):
        load_official_draws(tmp_path / "rand_perm_cam.mat")
    monkeypatch.setitem(sys.modules, "scipy.io", None)  # what a machine without the mat extra sees
    with pytest.raises(ConfigError, match="needs scipy"):
        load_official_draws(tmp_path / "rand_perm_cam.mat")


def test_the_declared_test_extra_is_installed():
    """scipy-dependent tests import scipy and fail without it; this names the cause in one line."""
    import importlib.util

    missing = [name for name in ("pytest", "scipy") if importlib.util.find_spec(name) is None]
    assert not missing, f"install the test extra (pip install -e '.[test]'): missing {', '.join(missing)}"


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

    assert PROTOCOLS == ("sysu", "regdb", "llcm", "own")
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


# ----------------------------------------------------------------------------
# Official draws from a real MATLAB file (scipy.io.savemat), layout of the official
# evaluation code: get_testing_set.m reads rand_perm_cam{cam_num}{i_id}(run_time,:),
# i.e. a 6x1 cell (one per camera) of cells indexed by pid, each a [10 x images]
# double matrix of 1-based image numbers, empty where the camera did not see the pid.


def write_rand_perm_cam(path: Path, root: Path, orientation: str = "row", trials: int = 10) -> dict:
    """A rand_perm_cam.mat for the folders under ``root``; returns {(cam, pid): [trials, images] numbers}."""
    import scipy.io as sio  # the test extra declares scipy: missing, this fails
    rng = np.random.default_rng(11)
    max_pid = max(int(d.name) for d in root.glob("cam*/*") if d.is_dir())
    outer = np.empty((6, 1), dtype=object)
    table = {}
    for cam in range(1, 7):
        inner = np.empty((1, max_pid + 2) if orientation == "row" else (max_pid + 2, 1), dtype=object)
        for pid in range(1, max_pid + 3):
            folder = root / f"cam{cam}" / f"{pid:04d}"
            n = len(list(folder.glob("*.jpg"))) if folder.is_dir() else 0
            perm = np.stack([rng.permutation(n) + 1 for _ in range(trials)]).astype(np.float64) if n else np.zeros((0, 0))
            inner.flat[pid - 1] = perm
            if n:
                table[(cam, pid)] = perm.astype(np.int64)
        outer[cam - 1, 0] = inner
    path.parent.mkdir(parents=True, exist_ok=True)
    sio.savemat(str(path), {"rand_perm_cam": outer})
    return table


def official_gallery(root: Path, table: dict, cams, trial: int, shots: int) -> list[str]:
    """Trial ``trial``'s gallery straight from the table: image k of a folder is 000k.jpg."""
    return [
        str(root / f"cam{cam}" / f"{pid:04d}" / f"{int(k):04d}.jpg")
        for pid in TEST_IDS
        for cam in cams
        if (cam, pid) in table
        for k in table[(cam, pid)][trial, :shots]
    ]


@pytest.mark.parametrize("orientation", ["row", "column"])
def test_official_draws_from_a_real_mat_file(tmp_path, orientation):
    import scipy  # noqa: F401  (the test extra declares scipy: missing, this fails)
    root = tmp_path / "SYSU-MM01"
    samples = build_fake_sysu(root)
    table = write_rand_perm_cam(root / "exp" / "rand_perm_cam.mat", root, orientation)
    draws = load_official_draws(root / "exp" / "rand_perm_cam.mat")
    # every folder of every camera (training ids too) has its matrix, keyed by (cam, pid)
    assert set(draws.table) == set(table)
    assert all(np.array_equal(draws.table[key], value) for key, value in table.items())
    assert any(value.shape[1] >= 10 for key, value in table.items() if key[1] in TEST_IDS and key[0] in (1, 2, 4, 5))
    for mode, cams in (("all", (1, 2, 4, 5)), ("indoor", (1, 2))):
        for shots in (1, 10):
            for t in (0, 3, 9):
                trial = sysu_trial(samples, mode, shots, t, official=draws)
                assert trial.draws == "official"
                assert paths_of(samples, trial.gallery) == official_gallery(root, table, cams, t, shots)
    # the draws differ from the AGW family's (or the check above would prove little)
    assert paths_of(samples, sysu_trial(samples, "all", 1, 0, official=draws).gallery) != agw_gallery_reference(
        str(root), "all", 0
    )


def test_official_draws_through_split_and_evaluate_cli(tmp_path):
    import scipy  # noqa: F401  (the test extra declares scipy: missing, this fails)
    import json

    from typer.testing import CliRunner

    from mclnet_cli.cli.app import app
    from mclnet_cli.data.records import write_prepared
    from mclnet_cli.metrics import as_percent, rank_metrics

    runner = CliRunner()
    root = tmp_path / "SYSU-MM01"
    samples = build_fake_sysu(root)
    perm_file = root / "exp" / "rand_perm_cam.mat"
    table = write_rand_perm_cam(perm_file, root)
    prepared = write_prepared(tmp_path / "prep", samples, {"dataset": "sysu", "reader": "sysu", "root": str(root)})

    def run_json(args):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    for shots, trial, extra in ((1, 2, ["--perm-file", str(perm_file)]), (10, 5, [])):  # [] : <root>/exp/ default
        data = run_json(
            ["split", str(prepared), "--draws", "official", "--shots", str(shots), "--trial", str(trial), "--json", *extra]
        )
        assert data["protocol"]["draws"] == "official" and data["protocol"]["shots"] == shots
        expected = official_gallery(root, table, (1, 2, 4, 5), trial, shots)
        assert [row["path"] for row in data["gallery"]] == expected

    # evaluate --features: each trial's scores are those of the official gallery, computed here
    test = [s for s in samples if s.split == "test"]
    features = np.random.default_rng(2).normal(size=(len(test), 8)).astype(np.float32)
    npz = tmp_path / "f.npz"
    np.savez(
        npz, features=features, pids=np.array([s.pid for s in test]), cams=np.array([s.cam for s in test]),
        modalities=np.array([s.modality.value for s in test]), paths=np.array([s.path for s in test]),
    )
    args = ["evaluate", "--features", str(npz), "--trials", "3", "--json"]
    official = run_json([*args, "--draws", "official", "--perm-file", str(perm_file)])
    agw = run_json(args)
    assert official["protocol"]["draws"] == "official"
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    row_of = {s.path: i for i, s in enumerate(test)}
    q = np.array([i for i, s in enumerate(test) if s.cam in (3, 6)])
    keys = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")
    for t, row in enumerate(official["results"]["features"]["trials"]):
        assert row["trial"] == t
        g = np.array([row_of[p] for p in official_gallery(root, table, (1, 2, 4, 5), t, 1)])
        pick = lambda attr, idx: np.array([getattr(test[i], attr) for i in idx])  # noqa: E731
        expected = as_percent(
            rank_metrics(1 - unit[q] @ unit[g].T, pick("pid", q), pick("pid", g), pick("cam", q), pick("cam", g), "sysu")
        )
        assert {k: row[k] for k in keys} == pytest.approx(expected)
    assert official["results"]["features"]["trials"] != agw["results"]["features"]["trials"]


def test_official_draws_mat_layout_errors_are_one_line(tmp_path):
    import scipy.io as sio  # the test extra declares scipy: missing, this fails

    def cells(*items, shape=None):
        array = np.empty(shape or (len(items), 1), dtype=object)
        for i, item in enumerate(items):
            array.flat[i] = item
        return array

    good_pid = np.array([[1.0, 2.0], [2.0, 1.0]])
    cases = {
        "missing": ({"rand_perm": cells(*[cells(good_pid)] * 6)}, "no variable 'rand_perm_cam'"),
        "numeric": ({"rand_perm_cam": np.ones((6, 10))}, r"'rand_perm_cam' is a 6x10 float64 matrix; expected"),
        "four cameras": ({"rand_perm_cam": cells(*[cells(good_pid)] * 4)}, r"is a 4x1 cell array; expected .*6 cameras"),
        "struct": ({"rand_perm_cam": {"cam1": good_pid}}, r"is a 1x1 struct; expected"),
        "camera not a cell": ({"rand_perm_cam": cells(*[cells(good_pid)] * 5, good_pid)}, r"rand_perm_cam\{6\} is a 2x2"),
        "pid is a cell": (
            {"rand_perm_cam": cells(*[cells(good_pid, cells(good_pid))] * 6)},
            r"rand_perm_cam\{1\}\{2\} is a 1x1 cell array; expected a numeric \[trials x images\] matrix",
        ),
        "zero": ({"rand_perm_cam": cells(*[cells(np.array([[0.0, 1.0]]))] * 6)}, r"\{1\}\{1\} holds values that are not 1-based"),
        "fraction": ({"rand_perm_cam": cells(*[cells(np.array([[1.5, 2.0]]))] * 6)}, "not 1-based image numbers"),
    }
    for name, (variables, message) in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.mat"
        sio.savemat(str(path), variables)
        with pytest.raises(DataError, match=message) as caught:
            load_official_draws(path)
        assert "\n" not in str(caught.value) and str(path) in str(caught.value), name
    # the layout itself is fine with either orientation of the per-camera cell; a row too short is caught at draw time
    sio.savemat(str(tmp_path / "ok.mat"), {"rand_perm_cam": cells(*[cells(good_pid, shape=(1, 1))] * 6)})
    draws = load_official_draws(tmp_path / "ok.mat")
    assert draws.pick(1, 1, 1, 1, 2) == [1]
    with pytest.raises(DataError, match="has 2 trials, trial 2 asked"):
        draws.pick(1, 1, 2, 1, 2)
    with pytest.raises(DataError, match="no permutation for camera 1, pid 2"):
        draws.pick(2, 1, 0, 1, 2)


# ----------------------------------------------------------------------------
# ProtocolSpec: one record per protocol; the fourth protocol, own (prepared folder/csv data)


def test_every_protocol_name_has_one_spec_and_unknown_names_are_refused():
    from mclnet_cli import config
    from mclnet_cli.metrics.protocols import PROTOCOL_SPECS, get_protocol

    assert tuple(PROTOCOL_SPECS) == config.names(config.Protocol) == PROTOCOLS
    assert all(get_protocol(name).name == name for name in PROTOCOLS)
    assert get_protocol(" LLCM ").name == "llcm"
    with pytest.raises(ConfigError, match=r"unknown protocol 'nope'; choose from: sysu, regdb, llcm, own$"):
        get_protocol("nope")
    samples = [Sample("/a.jpg", 1, 1, Modality.VISIBLE, "test"), Sample("/b.jpg", 1, 2, Modality.INFRARED, "test")]
    with pytest.raises(ConfigError, match="unknown protocol 'nope'"):
        protocol_trials(samples, "nope", trials=1)


def test_ranking_imports_nothing_from_the_project():
    import ast

    from mclnet_cli.metrics import ranking

    tree = ast.parse(Path(ranking.__file__).read_text(encoding="utf-8"))
    modules = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    modules += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    assert not [m for m in modules if m.startswith("mclnet_cli")], modules


def test_own_hand_computed_case_with_known_and_unknown_cameras():
    from mclnet_cli.metrics import rank_metrics

    # gallery (infrared): g0 pid 1 cam 1, g1 pid 2 cam 2, g2 pid 1 camera unknown, g3 pid 1 cam 2
    g_pids, g_cams = np.array([1, 2, 1, 1]), np.array([1, 2, -1, 2])
    # queries: pid 1 on cam 1 (loses g0), pid 1 on an unknown camera (loses nothing, not even g2),
    # pid 2 on cam 2 (loses g1, its only match: skipped)
    q_pids, q_cams = np.array([1, 1, 2]), np.array([1, -1, 2])
    dist = np.tile(np.array([0.1, 0.2, 0.3, 0.4]), (3, 1))
    result = rank_metrics(dist, q_pids, g_pids, q_cams, g_cams, "own", max_rank=4)
    # q0 ranks g1, g2, g3: matches at 2 and 3; q1 ranks g0..g3: matches at 1, 3 and 4 (standard CMC)
    assert (result.num_valid, result.num_skipped) == (2, 1)
    assert np.allclose(result.cmc, [0.5, 1.0, 1.0, 1.0])
    assert result.mAP == pytest.approx(((1 / 2 + 2 / 3) / 2 + (1 + 2 / 3 + 3 / 4) / 3) / 2)
    assert result.mINP == pytest.approx((2 / 3 + 3 / 4) / 2)
    # llcm excludes g2 for q1 as well (-1 == -1): the unknown camera is what own treats differently
    llcm = rank_metrics(dist, q_pids, g_pids, q_cams, g_cams, "llcm", max_rank=4)
    assert llcm.mAP == pytest.approx(((1 / 2 + 2 / 3) / 2 + (1 + 2 / 3) / 2) / 2)


def own_loop_reference(dist, q_pids, g_pids, q_cams, g_cams, max_rank):
    """Per query, plainly: drop same pid on the same known camera, sort by (distance, column), standard CMC."""
    hits, aps, inps = np.zeros(max_rank), [], []
    for i in range(len(q_pids)):
        kept = [j for j in range(len(g_pids)) if not (g_pids[j] == q_pids[i] and g_cams[j] == q_cams[i] >= 0)]
        ranked = sorted(kept, key=lambda j: (dist[i, j], j))
        matches = [r + 1 for r, j in enumerate(ranked) if g_pids[j] == q_pids[i]]
        if not matches:
            continue
        if matches[0] <= max_rank:
            hits[matches[0] - 1:] += 1
        aps.append(np.mean([(k + 1) / r for k, r in enumerate(matches)]))
        inps.append(len(matches) / matches[-1])
    return hits / len(aps), float(np.mean(aps)), float(np.mean(inps)), len(aps)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_own_metrics_match_a_brute_force_loop(seed):
    from mclnet_cli.metrics import rank_metrics

    rng = np.random.default_rng(seed)
    nq, ng = int(rng.integers(5, 30)), int(rng.integers(5, 40))
    q_pids, g_pids = rng.integers(0, 6, nq), rng.integers(0, 6, ng)
    q_cams, g_cams = rng.integers(-1, 3, nq), rng.integers(-1, 3, ng)
    dist = rng.integers(0, 8, (nq, ng)).astype(np.float32) / 8  # ties on purpose
    result = rank_metrics(dist, q_pids, g_pids, q_cams, g_cams, "own", max_rank=10)
    cmc, m_ap, m_inp, valid = own_loop_reference(dist, q_pids, g_pids, q_cams, g_cams, 10)
    assert result.num_valid == valid and result.num_skipped == nq - valid
    assert np.allclose(result.cmc, cmc) and result.mAP == pytest.approx(m_ap) and result.mINP == pytest.approx(m_inp)


def own_samples(seed: int = 3) -> list[Sample]:
    """Both spectra, several images per (pid, camera), cameras 0-2 and unknown (-1); one training image."""
    rng = np.random.default_rng(seed)
    samples = [
        Sample(f"/own/{m.value}/{pid}/c{cam}_{k}.jpg", pid, cam, m, "test")
        for m in Modality for pid in (4, 1, 7) for cam in (-1, 0, 1, 2) if rng.random() < 0.8
        for k in range(int(rng.integers(1, 4)))
    ]
    order = rng.permutation(len(samples))
    return [samples[i] for i in order] + [Sample("/own/visible/9/c0_0.jpg", 9, 0, Modality.VISIBLE, "train")]


def own_draw_reference(samples, direction, trial):
    """One image per (pid, camera) of the other spectrum: pids and cameras ascending, choice(sorted paths)."""
    other = "infrared" if direction == "visible_to_infrared" else "visible"
    gallery = [s for s in samples if s.split == "test" and s.modality.value == other]
    rng = random.Random(trial)
    drawn = []
    for pid in sorted({s.pid for s in gallery}):
        for cam in sorted({s.cam for s in gallery}):
            paths = sorted(s.path for s in gallery if (s.pid, s.cam) == (pid, cam))
            if paths:
                drawn.append(rng.choice(paths))
    return drawn


def test_own_trials_draw_single_shot_in_both_directions_or_take_the_whole_gallery():
    samples = own_samples()
    trials = protocol_trials(samples, "own", trials=3)
    assert [(t.direction, t.trial) for t in trials] == [
        (d, n) for d in ("visible_to_infrared", "infrared_to_visible") for n in range(3)
    ]
    for t in trials:
        source = Modality.VISIBLE if t.direction == "visible_to_infrared" else Modality.INFRARED
        assert sorted(t.query.tolist()) == [i for i, s in enumerate(samples) if s.split == "test" and s.modality is source]
        assert paths_of(samples, t.gallery) == own_draw_reference(samples, t.direction, t.trial)
        assert t.draws == "agw" and t.shots == 1
    assert any(samples[i].cam == -1 for i in trials[0].gallery)  # unknown cameras form a group of their own
    assert paths_of(samples, trials[0].gallery) != paths_of(samples, trials[1].gallery)
    whole = protocol_trials(samples, "own", trials=0, direction="infrared_to_visible")
    (only,) = whole
    assert (only.trial, only.draws, only.direction) == (0, "none", "infrared_to_visible")
    assert sorted(only.gallery.tolist()) == [
        i for i, s in enumerate(samples) if s.split == "test" and s.modality is Modality.VISIBLE
    ]
    with pytest.raises(ConfigError, match="shots 10 is not allowed; choose from: 1"):
        protocol_trials(samples, "own", trials=1, shots=10)
    with pytest.raises(ConfigError, match="trials must be a positive count"):
        protocol_trials(samples, "sysu", trials=0)  # only own reads 0 as the whole gallery
