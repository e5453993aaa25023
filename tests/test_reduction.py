"""PCA reduction (``--dim``/``--whiten``): training, the stored file, and its use by GalleryIndex search and add."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from mclnet_cli.errors import IndexStoreError
from mclnet_cli.index.store import GalleryIndex, IndexRecord
from mclnet_cli.index.reduction import REDUCTION_FILE, Reduction, train_reduction


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _records(n: int, prefix: str = "/g") -> list[IndexRecord]:
    return [IndexRecord(f"{prefix}/{i:05d}.jpg", "visible", pid=i, cam=1) for i in range(n)]


def _manual(reduction: Reduction, x: np.ndarray) -> np.ndarray:
    """What the docs say the stored file means: normalise((unit(x) - A[0]) @ A[1:].T)."""
    return _unit((_unit(x) - reduction.mean) @ reduction.projection.T)


def test_pca_of_low_rank_data_keeps_all_variance_and_the_ranking_of_centred_features() -> None:
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(32, 6)))[0].T  # 6 orthonormal directions in 32-d
    x = rng.normal(size=(400, 6)) * np.array([5, 4, 3, 2, 1.5, 1]) @ basis
    reduction = train_reduction(x, 6)
    assert reduction.dimension == 6 and reduction.input_dimension == 32
    assert reduction.variance_kept > 0.999
    assert np.allclose(reduction.projection @ reduction.projection.T, np.eye(6), atol=1e-4)  # orthonormal rows
    reduced = reduction.apply(x.astype(np.float32))
    assert np.allclose(np.linalg.norm(reduced, axis=1), 1.0, atol=1e-5)
    centred = _unit(x - x.mean(axis=0))
    assert np.allclose(reduced @ reduced.T, centred @ centred.T, atol=1e-4)  # a lossless PCA keeps every cosine


def test_whitening_gives_unit_variance_per_direction() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 16)) * np.linspace(4, 0.5, 16)
    reduction = train_reduction(x, 5, whiten=True)
    projected = (x.astype(np.float32) - reduction.mean) @ reduction.projection.T
    assert np.allclose(np.cov(projected, rowvar=False), np.eye(5), atol=0.05)
    plain = train_reduction(x, 5)
    assert not np.allclose(np.var((x - plain.mean) @ plain.projection.T, axis=0), 1.0, atol=0.2)


def test_dimension_and_sample_size_are_checked() -> None:
    x = np.random.default_rng(2).normal(size=(10, 8))
    with pytest.raises(IndexStoreError, match="between 1 and 7"):
        train_reduction(x, 8)
    with pytest.raises(IndexStoreError, match="more than 12"):
        train_reduction(np.random.default_rng(2).normal(size=(10, 20)), 12)  # 10 images cannot span 12 directions


def test_gallery_with_reduction_scores_equal_the_manual_reduction(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(120, 24))
    gallery = GalleryIndex.build(x[:100], _records(100), reduce_dim=8, extra={"modality": "visible"})
    assert gallery.dimension == 8 and gallery.feature_dimension == 24
    out = gallery.save(tmp_path / "idx")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["dimension"] == 8
    block = meta["reduction"]
    assert {k: v for k, v in block.items() if k not in ("variance_kept", "sha256")} == {
        "method": "pca", "file": REDUCTION_FILE, "input_dimension": 24, "dimension": 8, "whiten": False, "trained_on": 100}
    assert 0 < block["variance_kept"] < 1
    stored = np.load(out / REDUCTION_FILE, allow_pickle=False)
    assert stored.dtype == np.float32 and stored.shape == (9, 24)  # mean row + 8 projection rows
    assert hashlib.sha256(stored.tobytes()).hexdigest() == block["sha256"]

    loaded = GalleryIndex.load(out)
    reduction = loaded.reduction
    assert reduction is not None and np.array_equal(reduction.projection, stored[1:])
    q = rng.normal(size=(3, 24))
    expected = _manual(reduction, q) @ _manual(reduction, x[:100]).T
    for i, hits in enumerate(loaded.search(q, 5)):
        best = np.argsort(-expected[i], kind="stable")[:5]
        assert [h.path for h in hits] == [f"/g/{j:05d}.jpg" for j in best]
        assert np.allclose([h.score for h in hits], expected[i][best], atol=1e-5)
    with pytest.raises(IndexStoreError, match="dimension 8"):
        loaded.search(_manual(reduction, q), 1)  # already-reduced features are not what search takes


def test_add_reuses_the_stored_reduction_and_never_retrains(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(80, 16))
    out = GalleryIndex.build(x[:60], _records(60), reduce_dim=6, whiten=True).save(tmp_path / "idx")
    before = (out / REDUCTION_FILE).read_bytes()
    gallery = GalleryIndex.load(out)
    assert gallery.add(x[60:], _records(80)[60:]) == 20
    gallery.save(out)
    assert (out / REDUCTION_FILE).read_bytes() == before
    loaded = GalleryIndex.load(out)
    q = rng.normal(size=(1, 16))
    (hits,) = loaded.search(q, 80)
    expected = (_manual(loaded.reduction, q) @ _manual(loaded.reduction, x).T)[0]
    assert len(hits) == 80
    for hit in hits:  # the added rows (60..79) went through the same reduction as the first 60
        assert hit.score == pytest.approx(float(expected[int(Path(hit.path).stem)]), abs=1e-5)


def test_an_index_without_reduction_loads_as_before(tmp_path: Path) -> None:
    x = np.random.default_rng(5).normal(size=(20, 12))
    out = GalleryIndex.build(x, _records(20)).save(tmp_path / "idx")
    meta = json.loads((out / "meta.json").read_text())
    assert "reduction" not in meta and not (out / REDUCTION_FILE).exists()
    loaded = GalleryIndex.load(out)
    assert loaded.reduction is None and loaded.feature_dimension == loaded.dimension == 12
    # an index rebuilt without --dim over one that had it drops the stale file
    GalleryIndex.build(x, _records(20), reduce_dim=4).save(out)
    assert (out / REDUCTION_FILE).is_file()
    GalleryIndex.build(x, _records(20)).save(out)
    assert not (out / REDUCTION_FILE).exists() and GalleryIndex.load(out).reduction is None


def test_a_damaged_reduction_file_is_named(tmp_path: Path) -> None:
    x = np.random.default_rng(6).normal(size=(30, 12))
    out = GalleryIndex.build(x, _records(30), reduce_dim=4).save(tmp_path / "idx")
    np.save(out / REDUCTION_FILE, np.zeros((3, 12), dtype=np.float32))
    with pytest.raises(IndexStoreError, match=REDUCTION_FILE):
        GalleryIndex.load(out)
    np.save(out / REDUCTION_FILE, np.ones((5, 12), dtype=np.float32))  # the right shape, not the saved values
    with pytest.raises(IndexStoreError, match="not the reduction meta.json describes"):
        GalleryIndex.load(out)
