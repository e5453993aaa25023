"""``mclnet demo --quick`` end to end: every artefact exists and training beats the untrained network.

One quick demo (a few tens of seconds on a CPU) is shared by the tests of this
file; the refusals run on empty or foreign folders and never train. No test
asserts a duration (timings belong to ``benchmarks/``), and the learning check
asks only that training helps, with torch pinned to one thread so the numbers
do not depend on the machine's core count.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mclnet_cli.cli.app import app
from mclnet_cli.engine.demo import MARKER

runner = CliRunner()
pytestmark = pytest.mark.slow  # the shared quick demo trains a network; CI still runs these


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory) -> tuple[Path, dict]:
    """One ``demo --quick`` run on one torch thread (the same reductions, hence numbers, on any machine)."""
    import torch

    out = tmp_path_factory.mktemp("demo") / "out"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = runner.invoke(app, ["demo", "--quick", "--json", "--device", "cpu", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_quick_demo_writes_every_artefact(quick_demo) -> None:
    out, summary = quick_demo
    assert Path(summary["out"]) == out.resolve()
    assert (out / MARKER).is_file()

    prepared = Path(summary["dataset"]["prepared"])
    assert prepared == (out / "prepared").resolve()
    assert (prepared / "meta.json").is_file()
    meta = json.loads((prepared / "meta.json").read_text())
    assert meta["dataset"] == "synthetic" and summary["dataset"]["name"] == "synthetic"
    assert set(summary["dataset"]["counts"]) == {"train", "val", "test"}

    run_dir = Path(summary["run_dir"])
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "last.pt"):
        assert (run_dir / name).is_file(), name
    assert Path(summary["checkpoint"]) == run_dir / "last.pt"
    run_summary = json.loads((run_dir / "summary.json").read_text())
    assert run_summary["status"] == "complete"
    assert run_summary["epochs_completed"] == summary["training"]["epochs"]
    assert Path(summary["untrained_checkpoint"]).is_file()
    # tiny starts from the shipped weights: the demo scores that start too, from start.pt, which holds them
    from mclnet_cli.engine.checkpoint import load_checkpoint
    from mclnet_cli.model.pretrained import read_packaged

    key = "backbone.specific.infrared.0.0.weight"
    start = load_checkpoint(summary["start_checkpoint"])
    shipped = read_packaged("synthetic")["state"][key].float()
    assert Path(summary["start_checkpoint"]) == (out / "start.pt").resolve() and torch_equal(start["model"][key], shipped)
    assert not torch_equal(load_checkpoint(summary["untrained_checkpoint"])["model"][key], shipped)  # random

    index_dir = Path(summary["index"]["dir"])
    for name in ("index.faiss", "records.jsonl", "meta.json"):
        assert (index_dir / name).is_file(), name
    records = [json.loads(line) for line in (index_dir / "records.jsonl").read_text().splitlines()]
    test_visible = summary["dataset"]["counts"]["test"]["visible"]
    assert len(records) == summary["index"]["count"] == test_visible["images"]
    assert {r["modality"] for r in records} == {"visible"}
    assert len({r["pid"] for r in records}) == test_visible["ids"]  # pids read from the copied SYSU layout

    query = summary["query"]
    assert query["probe"].endswith(".jpg") and Path(query["probe"]).is_file()
    assert "/cam3/" in query["probe"] or "/cam6/" in query["probe"]  # an infrared camera
    assert len(query["results"]) == query["top_k"] == 10
    assert [hit["rank"] for hit in query["results"]] == list(range(1, 11))
    scores = [hit["score"] for hit in query["results"]]
    assert scores == sorted(scores, reverse=True)
    expected_matches = [hit["rank"] for hit in query["results"] if hit["pid"] == query["pid"]]
    assert query["matches_in_top_k"] == len(expected_matches)
    assert query["first_match_rank"] == (expected_matches[0] if expected_matches else None)

    picture = Path(summary["picture"])
    assert picture == (out / "ranked_list.png").resolve()
    width, height = _png_size(picture)
    assert width > 11 * 64 and height > 128  # probe + 10 thumbnails of 64x128, side by side
    assert picture.stat().st_size > 10_000

    assert json.loads((out / "demo.json").read_text()) == summary
    assert summary["time_s"] > 0  # reported; how long it may take is a benchmark, not a test


def test_quick_demo_training_beats_untrained(quick_demo) -> None:
    _, summary = quick_demo
    trained, untrained = summary["metrics"]["trained"], summary["metrics"]["untrained"]
    assert set(summary["metrics"]) >= {"trained", "untrained", "start"}
    for row in (trained, untrained, summary["metrics"]["start"]):
        assert set(row) == {"rank1", "rank5", "mAP", "mINP", "std"}
        assert set(row["std"]) == {"rank1", "rank5", "mAP", "mINP"}
        assert row["rank1"] <= row["rank5"]  # a CMC curve never falls
    assert summary["metrics"]["protocol"]["name"] == "sysu"
    assert summary["metrics"]["protocol"]["trials"] == list(range(10))  # the quick plan's ten draws, averaged
    # Training must help; by how much is measured in docs/benchmarks.md, not tuned to one machine here.
    assert trained["mAP"] > untrained["mAP"], (trained, untrained)


def test_previous_demo_needs_force(quick_demo, tmp_path) -> None:
    out, _ = quick_demo
    result = runner.invoke(app, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 1
    assert "--force" in result.output and "Traceback" not in result.output
    assert (out / "ranked_list.png").is_file()  # nothing was removed


def test_refuses_non_empty_foreign_folder(tmp_path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    for extra in ([], ["--force"]):
        result = runner.invoke(app, ["demo", "--quick", "--out", str(out), *extra])
        assert result.exit_code == 1
        assert "not empty" in result.output and str(out) in result.output.replace("\n", "")
        assert "Traceback" not in result.output
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "keep me"


def test_refuses_a_file_as_out(tmp_path) -> None:
    target = tmp_path / "file.txt"
    target.write_text("x")
    result = runner.invoke(app, ["demo", "--quick", "--out", str(target)])
    assert result.exit_code == 1
    assert "is a file" in result.output


def test_trained_index_finds_the_probe_person_more_often_than_chance(quick_demo) -> None:
    """Every infrared test image queries the demo's visible index: rank-1 hits beat chance clearly."""
    from mclnet_cli.engine.search import search_gallery

    out, summary = quick_demo
    records = [json.loads(line) for line in (Path(summary["index"]["dir"]) / "records.jsonl").read_text().splitlines()]
    gallery_pids = [r["pid"] for r in records]
    probes = sorted(
        str(p) for cam in ("cam3", "cam6") for p in (out / "synthetic" / cam).glob("*/*.jpg")
        if int(p.parent.name) in set(gallery_pids)
    )
    assert len(probes) >= 20
    report = search_gallery(Path(summary["index"]["dir"]), probes, "infrared", top_k=1, device="cpu")
    hits = [r.hits[0].pid == int(Path(r.probe).parent.name) for r in report.results]
    # chance of a rank-1 hit: the share of gallery images that belong to the probe's person
    chance = sum(gallery_pids.count(int(Path(p).parent.name)) / len(gallery_pids) for p in probes) / len(probes)
    assert sum(hits) / len(hits) > 1.5 * chance


def test_summary_reports_top10_hit_rate_over_all_infrared_probes(quick_demo) -> None:
    """``probes`` counts every infrared test image, and its hit rate is what a top-10 search of each gives."""
    from mclnet_cli.data.records import Modality, load_prepared
    from mclnet_cli.engine.demo import PICTURE_ROWS
    from mclnet_cli.engine.search import search_gallery

    out, summary = quick_demo
    infrared = sorted(
        load_prepared(out / "prepared").select("test", Modality.INFRARED), key=lambda s: (s.pid, s.cam, s.path)
    )
    probes = summary["probes"]
    assert probes["count"] == len(infrared) >= 20 and probes["top_k"] == 10
    report = search_gallery(Path(summary["index"]["dir"]), [s.path for s in infrared], "infrared", top_k=10, device="cpu")
    found = sum(any(h.pid == s.pid for h in r.hits) for s, r in zip(infrared, report.results))
    assert probes["found_in_top_k"] == found
    assert probes["hit_rate"] == pytest.approx(100.0 * found / len(infrared), abs=0.01)
    assert summary["query"]["probe"] == infrared[0].path  # the first probe in order, not a chosen one
    # the picture shows the first PICTURE_ROWS probes in order: it has the size of exactly that picture
    from mclnet_cli.index.picture import render_ranked_list

    shown = min(PICTURE_ROWS, len(infrared))
    assert probes["picture_rows"] == shown
    expected = render_ranked_list(
        [(s.path, s.pid, r.hits, s.cam) for s, r in zip(infrared[:shown], report.results)], top_k=10,
        probe_modality="infrared", gallery_modality="visible",
    )
    from PIL import Image
    import numpy as np

    with Image.open(summary["picture"]) as drawn:  # the same picture, legend (spectra) and captions (cams) included
        assert np.array_equal(np.asarray(drawn.convert("RGB")), np.asarray(expected.convert("RGB")))
    # the summary names the feature it scores and indexes
    assert summary["metrics"]["feature"] == summary["index"]["feature"] == "bn"
    fewer = render_ranked_list(
        [(s.path, s.pid, r.hits, s.cam) for s, r in zip(infrared[:shown - 1], report.results)], top_k=10,
        probe_modality="infrared", gallery_modality="visible",
    )
    assert fewer.size[1] < expected.size[1]  # the row count is what sets the height
