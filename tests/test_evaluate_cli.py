"""`mclnet split` and `mclnet evaluate`: JSON shapes, features files, and a tiny checkpoint end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mclnet_cli.cli.app import app
from mclnet_cli.data.records import Modality, Sample, write_prepared
from mclnet_cli.metrics.protocols import sysu_trial

from conftest import write_fake_sysu

METRICS = {"rank1", "rank5", "rank10", "rank20", "mAP", "mINP"}


def fake_sysu_samples(root: Path, images: bool = False) -> list[Sample]:
    """The shared fake SYSU test tree (conftest), written under ``root``."""
    return write_fake_sysu(root, images)


def write_npz(path: Path, samples: list[Sample], features: np.ndarray, **replace) -> Path:
    arrays = {
        "features": features,
        "pids": np.array([s.pid for s in samples]),
        "cams": np.array([s.cam for s in samples]),
        "modalities": np.array([s.modality.value for s in samples]),
        "paths": np.array([s.path for s in samples]),
    }
    arrays.update(replace)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def invoke_json(runner: CliRunner, args: list[str]) -> dict:
    """Run the CLI, require success, parse its JSON stdout."""
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_features_npz_round_trip_json(tmp_path, cli_runner):
    samples = [s for s in fake_sysu_samples(tmp_path) if s.split == "test"]
    # perfect features: one axis per identity
    features = np.eye(4, dtype=np.float32)[[s.pid for s in samples]]
    npz = write_npz(tmp_path / "f.npz", samples, features)
    data = invoke_json(cli_runner, ["evaluate", "--features", str(npz), "--trials", "3", "--json"])
    assert data["protocol"]["name"] == "sysu" and data["protocol"]["trials"] == [0, 1, 2]
    assert data["protocol"]["flip"] is False and data["protocol"]["rerank"] is False
    assert list(data["results"]) == ["features"]
    result = data["results"]["features"]
    assert set(result["mean"]) == METRICS and set(result["std"]) == METRICS
    assert len(result["trials"]) == 3
    for row in result["trials"]:
        # pid 3 has visible images in cam 2 only: its cam-3 queries have no valid match
        assert row["queries"] == 10 and row["skipped_queries"] == 2 and row["valid_queries"] == 8
        assert all(row[k] == pytest.approx(100.0) for k in METRICS)
    assert result["mean"]["mAP"] == pytest.approx(100.0) and result["std"]["mAP"] == pytest.approx(0.0)


def test_features_npz_scores_match_direct_computation(tmp_path, cli_runner):
    from mclnet_cli.metrics import as_percent, rank_metrics

    samples = [s for s in fake_sysu_samples(tmp_path) if s.split == "test"]
    rng = np.random.default_rng(1)
    features = rng.normal(size=(len(samples), 6)).astype(np.float32) * 3.0  # not normalised
    npz = write_npz(
        tmp_path / "f.npz", samples, features, modalities=np.array([s.modality.index for s in samples])
    )
    data = invoke_json(cli_runner, ["evaluate", "--features", str(npz), "--trials", "2", "--mode", "indoor", "--json"])
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    rows = data["results"]["features"]["trials"]
    assert [row["trial"] for row in rows] == [0, 1]  # --trials 2: both checked below
    for t, row in enumerate(rows):
        trial = sysu_trial(samples, "indoor", 1, t)
        q, g = trial.query, trial.gallery
        pick = lambda attr, idx: np.array([getattr(samples[i], attr) for i in idx])  # noqa: E731
        expected = as_percent(
            rank_metrics(1 - unit[q] @ unit[g].T, pick("pid", q), pick("pid", g), pick("cam", q), pick("cam", g), "sysu")
        )
        assert {k: row[k] for k in METRICS} == pytest.approx(expected)


def test_features_npz_errors_are_one_line(tmp_path, cli_runner):
    samples = [s for s in fake_sysu_samples(tmp_path) if s.split == "test"]
    npz = write_npz(tmp_path / "f.npz", samples, np.ones((len(samples), 3)), cams=None)
    result = cli_runner.invoke(app, ["evaluate", "--features", str(npz)])
    assert result.exit_code == 1 and "missing array(s) cams" in result.output
    assert "Traceback" not in result.output
    # an object array would need pickle: refused
    bad = write_npz(tmp_path / "obj.npz", samples, np.ones((len(samples), 3)), pids=np.array([1] * (len(samples) - 1) + [None], dtype=object))
    result = cli_runner.invoke(app, ["evaluate", "--features", str(bad)])
    assert result.exit_code == 1 and "cannot read" in result.output
    result = cli_runner.invoke(app, ["evaluate"])
    assert result.exit_code == 1 and "CHECKPOINT" in result.output


def test_split_json_shape(tmp_path, cli_runner):
    samples = fake_sysu_samples(tmp_path)
    prepared = write_prepared(tmp_path / "prep", samples, {"dataset": "sysu", "reader": "sysu"})
    data = invoke_json(cli_runner, ["split", str(prepared), "--trial", "4", "--json"])
    assert data["protocol"]["protocol"] == "sysu" and data["protocol"]["trial"] == 4
    assert set(data) == {"protocol", "queries", "gallery"}
    assert all(set(row) == {"path", "pid", "cam"} for row in data["queries"] + data["gallery"])
    assert {row["cam"] for row in data["queries"]} == {3, 6} and len(data["queries"]) == 10
    expected = sysu_trial(samples, "all", 1, 4)
    assert [row["path"] for row in data["gallery"]] == [samples[i].path for i in expected.gallery]
    table = cli_runner.invoke(app, ["split", str(prepared), "--mode", "indoor"])
    assert table.exit_code == 0 and "gallery" in table.output
    wrong = cli_runner.invoke(app, ["split", str(prepared), "--protocol", "regdb", "--trial", "3"])
    assert wrong.exit_code == 1 and "only trial is 0" in wrong.output


def test_split_uses_the_engine_and_its_checks(tmp_path, cli_runner):
    from mclnet_cli.engine.evaluate import split_trial
    from mclnet_cli.metrics.protocols import llcm_trial

    samples = [
        Sample(f"/d/{m.value}/cam{cam}/{pid:04d}/{k}.jpg", pid, cam, m, "test")
        for m in Modality for pid in (1, 2, 3) for cam in (1, 2, 4) for k in range(3)
    ]
    prepared = write_prepared(tmp_path / "prep", samples, {"dataset": "llcm", "reader": "llcm"})
    view = split_trial(prepared, 2, direction="visible_to_infrared")  # protocol: the dataset's own
    expected = llcm_trial(samples, "visible_to_infrared", 2)
    assert view.trial.protocol == "llcm" and view.trial.trial == 2
    assert np.array_equal(view.trial.gallery, expected.gallery) and np.array_equal(view.trial.query, expected.query)
    data = invoke_json(cli_runner, ["split", str(prepared), "--trial", "2", "--direction", "visible_to_infrared", "--json"])
    assert data["protocol"]["protocol"] == "llcm" and data["protocol"]["data"] == str(prepared)
    assert [row["path"] for row in data["gallery"]] == [samples[i].path for i in expected.gallery]
    refusals = {
        ("--direction", "both"): "--direction 'both' is not allowed; choose from: visible_to_infrared, infrared_to_visible",
        ("--draws", "official"): "--draws official exists for the sysu protocol only",
        ("--protocol", "market"): "unknown protocol 'market' (--protocol)",
        ("--shots", "3"): "--shots 3 is not allowed",
    }
    for (option, value), message in refusals.items():
        result = cli_runner.invoke(app, ["split", str(prepared), option, value])
        assert result.exit_code == 1 and message in result.output.replace("\n", ""), result.output
        assert "Traceback" not in result.output
    # a negative trial is refused by the option's own bound: a usage error
    result = cli_runner.invoke(app, ["split", str(prepared), "--trial", "-1"])
    assert result.exit_code == 2 and "--trial" in result.output and "Traceback" not in result.output


def test_skipped_files_in_gallery_folders_are_noted(tmp_path):
    from mclnet_cli.engine.evaluate import draw_notes
    from mclnet_cli.metrics.protocols import protocol_trials

    samples = [s for s in fake_sysu_samples(tmp_path) if s.split == "test"]
    trials = protocol_trials(samples, "sysu", trials=2)
    in_gallery = str(tmp_path / "cam1" / "0001" / "0003.jpg")  # a visible folder the gallery is drawn from
    elsewhere = [str(tmp_path / "cam3" / "0001" / "0003.jpg"), str(tmp_path / "cam1" / "0009" / "0002.jpg")]
    assert draw_notes(samples, trials, {}) == []
    assert draw_notes(samples, trials, {"skipped": elsewhere}) == []  # infrared / training folders draw nothing
    (note,) = draw_notes(samples, trials, {"skipped": [*elsewhere, in_gallery]})
    assert note.startswith("1 file(s) skipped") and in_gallery in note and "not bit for bit" in note


def test_evaluate_checkpoint_end_to_end(tmp_path, tiny_checkpoint, fake_sysu, cli_runner):
    from mclnet_cli.engine.checkpoint import load_model
    from mclnet_cli.engine.extract import extract_features
    from mclnet_cli.metrics import as_percent, rank_metrics

    samples, prepared = fake_sysu
    data = invoke_json(cli_runner, ["evaluate", str(tiny_checkpoint), "--data", str(prepared), "--device", "cpu", "--json"])
    assert set(data["results"]) == {"bn", "pool"}
    assert data["protocol"]["trials"] == [0, 1]  # the checkpoint's eval.trials
    assert data["protocol"]["flip"] is False and data["protocol"]["rerank"] is False
    assert data["protocol"]["images_embedded"] <= len(samples) - 1
    assert "notes" not in data["protocol"]  # nothing was skipped at prepare time

    # trial 0 of the bn feature, recomputed by hand from extract_features + rank_metrics
    loaded = load_model(tiny_checkpoint)
    test = [s for s in samples if s.split == "test"]
    trial = sysu_trial(test, "all", 1, 0)
    embed = lambda group, m: extract_features(  # noqa: E731
        loaded.model, [s.path for s in group], m, height=64, width=32, feature="bn"
    ).features
    queries, gallery = [test[i] for i in trial.query], [test[i] for i in trial.gallery]
    qf, gf = embed(queries, Modality.INFRARED), embed(gallery, Modality.VISIBLE)
    expected = as_percent(rank_metrics(
        1 - qf @ gf.T, np.array([s.pid for s in queries]), np.array([s.pid for s in gallery]),
        np.array([s.cam for s in queries]), np.array([s.cam for s in gallery]), "sysu",
    ))
    row = data["results"]["bn"]["trials"][0]
    assert {k: row[k] for k in METRICS} == pytest.approx(expected, abs=1e-3)

    labelled = invoke_json(cli_runner, [
        "evaluate", str(tiny_checkpoint), "--data", str(prepared), "--device", "cpu",
        "--trials", "1", "--flip", "--rerank", "--json",
    ])
    assert labelled["protocol"]["flip"] is True and labelled["protocol"]["rerank"] is True
    assert len(labelled["results"]["pool"]["trials"]) == 1

    table = cli_runner.invoke(app, ["-q", "evaluate", str(tiny_checkpoint), "--data", str(prepared), "--device", "cpu"])
    assert table.exit_code == 0 and "mean" in table.output and "rerank off" in table.output

    # an image dropped at prepare time (--skip-bad) from a gallery folder: the report says the draws moved
    dropped = next(s for s in samples if s.split == "test" and s.cam == 1)
    skipped = write_prepared(
        tmp_path / "skipped", [s for s in samples if s is not dropped],
        {"dataset": "sysu", "reader": "sysu", "skipped": [dropped.path]},
    )
    noted = invoke_json(cli_runner, [
        "evaluate", str(tiny_checkpoint), "--data", str(skipped), "--device", "cpu", "--trials", "1", "--json",
    ])
    (note,) = noted["protocol"]["notes"]
    assert dropped.path in note and "agw gallery draws" in note


def test_evaluate_refuses_protocol_that_does_not_fit_the_dataset(tmp_path, tiny_checkpoint, cli_runner):
    samples = fake_sysu_samples(tmp_path)
    prepared = write_prepared(tmp_path / "prep", samples, {"dataset": "regdb", "reader": "regdb"})
    result = cli_runner.invoke(app, ["evaluate", str(tiny_checkpoint), "--data", str(prepared), "--device", "cpu"])
    assert result.exit_code == 1 and "pass --protocol regdb" in result.output
    assert "Traceback" not in result.output


def test_directional_protocols_key_results_by_direction(tmp_path, cli_runner):
    samples = [
        Sample(f"/d/{m.value}/cam{cam}/{pid:04d}/{k}.jpg", pid, cam, m, "test")
        for m in Modality for pid in (1, 2, 3) for cam in (1, 2, 4) for k in range(2)
    ]
    features = np.eye(4, dtype=np.float32)[[s.pid for s in samples]]
    npz = write_npz(tmp_path / "f.npz", samples, features)
    both = invoke_json(cli_runner, ["evaluate", "--features", str(npz), "--protocol", "llcm", "--trials", "2", "--json"])
    assert list(both["results"]) == ["visible_to_infrared/features", "infrared_to_visible/features"]
    assert both["protocol"]["cmc"] == "dedup" and both["protocol"]["trials"] == [0, 1]
    for result in both["results"].values():
        assert len(result["trials"]) == 2 and result["mean"]["mAP"] == pytest.approx(100.0)
        # one gallery image per (pid, camera): 3 ids x 3 cameras
        assert all(row["gallery"] == 9 for row in result["trials"])
    one = invoke_json(cli_runner, [
        "evaluate", "--features", str(npz), "--protocol", "regdb", "--direction", "infrared_to_visible", "--json",
    ])
    assert list(one["results"]) == ["infrared_to_visible/features"]
    assert one["protocol"]["cmc"] == "standard" and one["results"]["infrared_to_visible/features"]["trials"][0]["gallery"] == 18


@pytest.mark.parametrize("rerank", [False, True])
def test_scoring_reports_progress_per_trial(tmp_path, rerank):
    """Scoring (seconds per trial when re-ranked) advances a progress bar once per trial, named for what it does."""
    from contextlib import contextmanager

    from mclnet_cli.engine.evaluate import EvalSettings, evaluate_features_file
    from mclnet_cli.config import EvalConfig

    samples = [s for s in fake_sysu_samples(tmp_path) if s.split == "test"]
    npz = write_npz(tmp_path / "f.npz", samples, np.eye(4, dtype=np.float32)[[s.pid for s in samples]])
    seen: list[tuple[str, int, int]] = []

    @contextmanager
    def progress(description: str, total: int):
        steps = []
        yield steps.append
        seen.append((description, total, sum(steps)))

    settings = EvalSettings.resolve(EvalConfig(), trials=3, rerank=rerank)
    report = evaluate_features_file(npz, settings, progress=progress)
    name = "scoring trials (re-ranked)" if rerank else "scoring trials"
    assert seen == [(name, 3, 3)]
    assert len(report.results["features"].trials) == 3


# ----------------------------------------------------------------------------- protocol names, own data


def test_an_unknown_protocol_is_an_error_in_the_engine_and_the_cli(tmp_path, cli_runner):
    from mclnet_cli.config import EvalConfig
    from mclnet_cli.engine.evaluate import EvalSettings, score_trials
    from mclnet_cli.errors import ConfigError
    from mclnet_cli.metrics.protocols import Trial

    samples = [s for s in fake_sysu_samples(tmp_path) if s.split == "test"]
    features = np.eye(4, dtype=np.float32)[[s.pid for s in samples]]
    with pytest.raises(ConfigError, match=r"unknown protocol 'nope' \(--protocol\); choose from: sysu, regdb, llcm, own"):
        EvalSettings.resolve(EvalConfig(), protocol="nope")
    trial = Trial("nope", 0, "visible_to_infrared", np.array([0]), np.array([1]))
    with pytest.raises(ConfigError, match="unknown protocol 'nope'"):  # never scored as another protocol
        score_trials(samples, {"f": features}, np.arange(len(samples)), [trial])
    npz = write_npz(tmp_path / "f.npz", samples, features)
    result = cli_runner.invoke(app, ["evaluate", "--features", str(npz), "--protocol", "nope"])
    assert result.exit_code == 1 and "unknown protocol 'nope'" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def own_feature_samples() -> list[Sample]:
    """Both spectra, cameras 0, 1 and unknown (-1), two images each."""
    return [
        Sample(f"/own/{m.value}/{pid}/c{cam}_{k}.jpg", pid, cam, m, "test")
        for m in Modality for pid in (1, 2, 3) for cam in (-1, 0, 1) for k in range(2)
    ]


def test_own_protocol_through_evaluate_features(tmp_path, cli_runner):
    from mclnet_cli.metrics import as_percent, rank_metrics
    from mclnet_cli.metrics.protocols import protocol_trials

    samples = own_feature_samples()
    rng = np.random.default_rng(4)
    features = (np.eye(4)[[s.pid for s in samples]] + 0.8 * rng.normal(size=(len(samples), 4))).astype(np.float32)
    npz = write_npz(tmp_path / "f.npz", samples, features)
    whole = invoke_json(cli_runner, ["evaluate", "--features", str(npz), "--protocol", "own", "--trials", "0", "--json"])
    assert list(whole["results"]) == ["visible_to_infrared/features", "infrared_to_visible/features"]
    assert whole["protocol"]["draws"] == "none" and whole["protocol"]["trials"] == [0]
    assert whole["protocol"]["cmc"] == "standard"
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    for direction, source in (("visible_to_infrared", Modality.VISIBLE), ("infrared_to_visible", Modality.INFRARED)):
        q = np.array([i for i, s in enumerate(samples) if s.modality is source])
        g = np.array([i for i, s in enumerate(samples) if s.modality is not source])
        pick = lambda attr, idx: np.array([getattr(samples[i], attr) for i in idx])  # noqa: E731
        expected = as_percent(rank_metrics(1 - unit[q] @ unit[g].T, pick("pid", q), pick("pid", g), pick("cam", q),
                                           pick("cam", g), "own"))
        (row,) = whole["results"][f"{direction}/features"]["trials"]
        assert row["gallery"] == 18 and {k: row[k] for k in METRICS} == pytest.approx(expected)
    drawn = invoke_json(cli_runner, ["evaluate", "--features", str(npz), "--protocol", "own", "--trials", "2", "--json"])
    assert drawn["protocol"]["draws"] == "agw" and drawn["protocol"]["shots"] == 1
    expected_sizes = [len(t.gallery) for t in protocol_trials(samples, "own", trials=2)]
    sizes = [row["gallery"] for result in drawn["results"].values() for row in result["trials"]]
    assert sizes == expected_sizes == [9] * 4  # one image per (pid, camera): 3 ids x 3 cameras (unknown included)
    table = cli_runner.invoke(app, ["-q", "evaluate", "--features", str(npz), "--protocol", "own", "--trials", "0"])
    assert table.exit_code == 0 and "own | whole gallery | trials 0" in table.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--protocol", "own", "--shots", "10"], "--shots applies to sysu and llcm (own draws one image"),
        (["--protocol", "own", "--mode", "all"], "--mode applies to sysu only"),
        (["--protocol", "own", "--trials", "0", "--draws", "agw"], "--trials 0 compares with the whole gallery"),
        (["--protocol", "own", "--draws", "official"], "--draws official exists for the sysu protocol only"),
        (["--protocol", "own", "--trials", "11"], "--trials must be between 0 and 10 (0: the whole gallery)"),
        (["--protocol", "llcm", "--trials", "0"], "--trials must be between 1 and 10"),
    ],
)
def test_own_refuses_options_it_does_not_use(tmp_path, cli_runner, args, message):
    npz = write_npz(tmp_path / "f.npz", own_feature_samples(), np.ones((36, 3), dtype=np.float32))
    result = cli_runner.invoke(app, ["evaluate", "--features", str(npz), *args])
    assert result.exit_code == 1 and message in result.output.replace("\n", " "), result.output


def test_folder_and_csv_datasets_imply_the_own_protocol(tmp_path):
    from mclnet_cli.engine.evaluate import dataset_protocol, split_trial
    from mclnet_cli.metrics.protocols import protocol_trials

    assert dataset_protocol({"dataset": "folder"}) == dataset_protocol({"reader": "csv"}) == "own"
    assert dataset_protocol({"dataset": "llcm", "reader": "llcm"}) == "llcm"
    assert dataset_protocol({"dataset": "synthetic"}) is None
    samples = own_feature_samples()
    prepared = write_prepared(tmp_path / "prep", samples, {"dataset": "folder", "reader": "folder"})
    view = split_trial(prepared, 1, direction="visible_to_infrared")
    expected = protocol_trials(view.samples, "own", trials=[1], direction="visible_to_infrared")[0]
    assert view.trial.protocol == "own" and view.trial.trial == 1
    assert [view.samples[i].path for i in view.trial.gallery] == [view.samples[i].path for i in expected.gallery]
