"""`--kind auto`: the structure fits the memory budget and the tuned search meets the recall target."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from mclnet_cli.index import autotune
from mclnet_cli.index.store import GalleryIndex, records_for


def identity_like(count: int, dim: int, seed: int) -> np.ndarray:
    """Clusters of 10 noisy views per 'person', unit rows (the shape of re-id features)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(count // 10 + 1, dim))
    x = centres[np.arange(count) // 10] + 0.6 * rng.normal(size=(count, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def recall_at_10(index: faiss.Index, matrix: np.ndarray, rows: np.ndarray) -> float:
    """Independent reference: top-10 overlap with brute-force numpy, the query row itself left out."""
    scores = matrix[rows] @ matrix.T
    scores[np.arange(len(rows)), rows] = -np.inf
    exact = np.argsort(-scores, axis=1)[:, :10]
    found = index.search(np.ascontiguousarray(matrix[rows]), 11)[1]
    hits = [len(set(int(x) for x in f if x != r and x >= 0) & set(e.tolist())) / 10 for r, f, e in zip(rows, found, exact)]
    return float(np.mean(hits))


def build(matrix: np.ndarray, tmp_path: Path, **kwargs) -> GalleryIndex:
    records = records_for([f"/g/{i}.jpg" for i in range(len(matrix))], "visible")
    gallery = GalleryIndex.build(matrix, records, "auto", **kwargs)
    gallery.save(tmp_path / "idx")
    return GalleryIndex.load(tmp_path / "idx")


def tuning_rows(count: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.sort(rng.choice(count, size=min(autotune.TUNING_QUERIES, count), replace=False))


def test_small_galleries_stay_exact(tmp_path: Path) -> None:
    gallery = build(identity_like(800, 32, 1), tmp_path)
    assert gallery.kind == "flat" and gallery.extra["auto"]["recall_at_10"] == 1.0


@pytest.mark.parametrize("target", [0.9, 0.99])
def test_ivf_is_tuned_until_the_target_is_met(tmp_path: Path, monkeypatch, target: float) -> None:
    monkeypatch.setattr(autotune, "FLAT_MAX_WORK", 0)  # pretend exhaustive search is too slow
    matrix = identity_like(12000, 64, 2)
    gallery = build(matrix, tmp_path, recall=target)
    auto = gallery.extra["auto"]
    assert gallery.kind == "ivf" and "HNSW" in gallery.factory
    assert auto["met"] is True and auto["recall_at_10"] >= target
    # the reloaded index applies the tuned nprobe, and recall measured independently agrees
    assert faiss.extract_index_ivf(gallery.index).nprobe == gallery.params["nprobe"]
    assert recall_at_10(gallery.index, matrix, tuning_rows(len(matrix))) == pytest.approx(auto["recall_at_10"], abs=1e-3)


def test_a_higher_target_searches_more_cells(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(autotune, "FLAT_MAX_WORK", 0)
    matrix = identity_like(12000, 64, 3)
    low = build(matrix, tmp_path / "a", recall=0.5).params["nprobe"]
    high = build(matrix, tmp_path / "b", recall=0.99).params["nprobe"]
    assert high > low


def test_a_memory_budget_picks_product_quantisation_with_refine(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(autotune, "FLAT_MAX_WORK", 0)
    matrix = identity_like(10000, 32, 4)
    budget = 10000 * 32 * 4 // 2  # half of the full vectors: ivf cannot fit
    gallery = build(matrix, tmp_path, recall=0.9, memory_bytes=budget)
    auto = gallery.extra["auto"]
    assert gallery.kind == "ivfpq" and "Refine" in gallery.factory
    assert auto["memory_bytes"] <= budget
    assert faiss.downcast_index(gallery.index).k_factor == gallery.params["k_factor"]
    assert recall_at_10(gallery.index, matrix, tuning_rows(len(matrix))) == pytest.approx(auto["recall_at_10"], abs=1e-3)
    assert auto["met"] is (auto["recall_at_10"] >= 0.9)


def test_candidates_follow_the_memory_budget() -> None:
    """Exact while cheap; over that, the most accurate structure that fits, down to OPQ + IVF-PQ."""
    def factories(count: int, dim: int, budget: int | None) -> list[str]:
        return [factory for _, factory, _, _ in autotune._candidates(count, dim, budget)]

    assert factories(1000, 64, None) == ["Flat"]
    big, dim = 1_000_000, 2048
    assert factories(big, dim, None)[0].startswith("IVF") and factories(big, dim, None)[0].endswith(",Flat")
    refine_only = factories(big, dim, big * dim * 2)  # half the float32 vectors
    assert "Refine" in refine_only[0] and all(",Flat" not in f for f in refine_only)
    tight = factories(big, dim, big * 100)
    assert tight == [f for f in tight if f.startswith("OPQ")] and tight
    # nothing fits: the smallest structure, and auto_index says so
    assert factories(big, dim, 10)[0].startswith("OPQ")


def test_an_unreachable_target_is_reported_not_hidden(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(autotune, "FLAT_MAX_WORK", 0)
    monkeypatch.setattr(autotune, "_sweep", lambda kind, factory, params: [{"nprobe": 1, "quantizer_ef": 64}])
    matrix = identity_like(12000, 64, 5)
    records = records_for([f"/g/{i}.jpg" for i in range(len(matrix))], "visible")
    gallery = GalleryIndex.build(matrix, records, "auto", recall=0.999)
    auto = gallery.extra["auto"]
    assert auto["met"] is False and auto["recall_at_10"] < 0.999
    assert any("not reached" in n for n in gallery.notices)
    assert recall_at_10(gallery.index, matrix, tuning_rows(len(matrix))) == pytest.approx(auto["recall_at_10"], abs=1e-3)


def test_index_cli_passes_kind_recall_and_memory(tmp_path: Path, prepared_dataset: Path, make_checkpoint, cli_runner) -> None:
    import json

    from mclnet_cli.cli.app import app

    gallery = prepared_dataset.parent / "img"
    plain = make_checkpoint(tmp_path / "plain.pt")
    result = cli_runner.invoke(app, ["index", str(gallery), "-c", str(plain), "-m", "visible", "--out", str(tmp_path / "a"),
                                     "--kind", "auto", "--recall", "0.9", "--memory", "0.5", "--json"])
    assert result.exit_code == 0, result.output
    auto = json.loads(result.stdout)["auto"]
    assert auto["target_recall"] == 0.9 and auto["budget_bytes"] == 2**29
    assert GalleryIndex.load(tmp_path / "a").extra["auto"] == auto  # kept in meta.json
    # the checkpoint's config supplies kind and target when the options are left out
    configured = make_checkpoint(tmp_path / "auto.pt", overrides=("index.kind=auto", "index.recall=0.8"))
    result = cli_runner.invoke(app, ["index", str(gallery), "-c", str(configured), "-m", "visible", "--out", str(tmp_path / "b"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["auto"]["target_recall"] == 0.8


def test_exact_neighbours_match_brute_force_inner_product() -> None:
    rng = np.random.default_rng(7)
    gallery = rng.standard_normal((300, 16)).astype(np.float32)
    queries = gallery[[3, 50, 299]]
    found = autotune._exact_neighbours(gallery, queries)
    expected = np.argsort(-(queries @ gallery.T), axis=1)[:, : autotune.RECALL_K + 1]
    np.testing.assert_array_equal(found, expected)
