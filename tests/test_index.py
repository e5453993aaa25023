"""GalleryIndex (FAISS + sidecar) against brute force, storage, atomic swaps, layouts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import faiss
import numpy as np
import pytest

from mclnet_cli.errors import IndexStoreError
from mclnet_cli.index import store as store_module
from mclnet_cli.index.store import GalleryIndex, IndexRecord, plan_index
from mclnet_cli.data.sources.layout import identify
from mclnet_cli.index.autotune import apply_parameters

from conftest import wait_for_lock_wait

REPO = Path(__file__).resolve().parents[1]


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _records(n: int, prefix: str = "/gallery") -> list[IndexRecord]:
    return [IndexRecord(f"{prefix}/{i:05d}.jpg", "visible", pid=i % 7, cam=1) for i in range(n)]


def _row(hit_path: str) -> int:
    return int(Path(hit_path).stem)


def _clustered(rng: np.random.Generator, n: int, dim: int, clusters: int, noise: float = 0.6) -> np.ndarray:
    """Identity-like data: a few images per person around the person's centre."""
    centres = rng.normal(size=(clusters, dim))
    return centres[rng.integers(0, clusters, n)] + noise * rng.normal(size=(n, dim))


def _recall_at_k(gallery: GalleryIndex, x: np.ndarray, q: np.ndarray, k: int) -> float:
    truth = np.argsort(-(_unit(q) @ _unit(x).T), axis=1, kind="stable")[:, :k]
    found = gallery.search(q, k)
    return float(np.mean([len({_row(h.path) for h in hits} & set(truth[i].tolist())) / k for i, hits in enumerate(found)]))


# --------------------------------------------------------------------------- exact search


def test_flat_equals_brute_force_cosine_top_k() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 32)).astype(np.float32) * rng.uniform(0.5, 3.0, size=(300, 1))  # not unit length
    q = rng.normal(size=(20, 32)).astype(np.float32)
    # exact duplicates create ties: any order among equal scores is fine
    x[10] = x[11]
    q[0] = x[11] * 2.0
    gallery = GalleryIndex.build(x, _records(300), kind="flat")
    cosine = _unit(q) @ _unit(x).T
    expected_scores = -np.sort(-cosine, axis=1)[:, :10]
    results = gallery.search(q, top_k=10)
    assert len(results) == 20
    for i, hits in enumerate(results):
        assert [h.rank for h in hits] == list(range(1, 11))
        scores = np.array([h.score for h in hits])
        np.testing.assert_allclose(scores, expected_scores[i], atol=1e-5)
        # each hit's own brute-force score equals its reported score (ties may swap places)
        np.testing.assert_allclose([cosine[i, _row(h.path)] for h in hits], scores, atol=1e-5)
        assert len({h.path for h in hits}) == 10
    assert {_row(h.path) for h in results[0][:2]} == {10, 11}
    assert results[0][0].score == pytest.approx(1.0, abs=1e-5)


def test_hits_carry_record_fields_and_top_k_is_clamped() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 8))
    records = [IndexRecord(f"/g/{i}.jpg", "infrared", pid=100 + i, cam=3) for i in range(5)]
    gallery = GalleryIndex.build(x, records)
    (hits,) = gallery.search(x[2:3], top_k=50)
    assert len(hits) == 5
    assert hits[0].path == "/g/2.jpg" and hits[0].pid == 102 and hits[0].cam == 3
    assert hits[0].to_json() == {"rank": 1, "path": "/g/2.jpg", "score": hits[0].score, "pid": 102, "cam": 3}


def test_search_rejects_wrong_dimension_and_bad_input() -> None:
    gallery = GalleryIndex.build(np.eye(4, 8), _records(4))
    with pytest.raises(IndexStoreError, match="dimension 5"):
        gallery.search(np.ones((1, 5)), 3)
    with pytest.raises(IndexStoreError, match="top_k"):
        gallery.search(np.ones((1, 8)), 0)
    with pytest.raises(IndexStoreError, match="NaN"):
        gallery.search(np.full((1, 8), np.nan), 3)
    with pytest.raises(IndexStoreError, match="3 feature rows but 4 records"):
        GalleryIndex.build(np.eye(3, 8), _records(4))
    with pytest.raises(IndexStoreError, match="twice"):
        GalleryIndex.build(np.eye(2, 8), [IndexRecord("/a.jpg"), IndexRecord("/a.jpg")])
    with pytest.raises(IndexStoreError, match="unknown index kind"):
        GalleryIndex.build(np.eye(2, 8), _records(2), kind="lsh")


# --------------------------------------------------------------------------- approximate search


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_kinds_have_high_recall_at_10(kind: str) -> None:
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(300, 64))
    x = centres[rng.integers(0, 300, 3000)] + 0.6 * rng.normal(size=(3000, 64))
    probes = centres[rng.integers(0, 300, 50)] + 0.6 * rng.normal(size=(50, 64))  # new images of gallery people
    gallery = GalleryIndex.build(x, _records(3000), kind=kind)
    assert gallery.kind == kind
    assert _recall_at_k(gallery, x, probes, 10) >= 0.9
    if kind == "hnsw":  # the graph also copes with queries unlike anyone in the gallery
        assert _recall_at_k(gallery, x, rng.normal(size=(50, 64)), 10) >= 0.9


def test_ivfpq_builds_on_a_large_enough_gallery_and_recall_is_reasonable() -> None:
    rng = np.random.default_rng(3)
    x = _clustered(rng, 10000, 32, clusters=500)
    gallery = GalleryIndex.build(x, _records(10000), kind="ivfpq")
    assert gallery.kind == "ivfpq" and gallery.factory.startswith("IVF") and ",PQ4np" in gallery.factory
    q = x[:40] + 0.2 * rng.normal(size=(40, 32))
    assert _recall_at_k(gallery, x, q, 10) >= 0.5  # compressed codes: approximate scores


def test_plan_falls_back_when_the_gallery_is_too_small() -> None:
    small = plan_index("ivf", 100, 512)
    assert small.kind == "flat" and small.factory == "Flat" and small.notices
    pq = plan_index("ivfpq", 5000, 512)
    assert pq.kind == "ivf" and "ivfpq" in pq.notices[0]
    big = plan_index("ivf", 100_000, 512)
    assert big.params["nlist"] == round(4 * 100_000**0.5)
    assert 1 <= big.params["nprobe"] <= big.params["nlist"]
    assert plan_index("ivfpq", 100_000, 512).params["pq_m"] == 64
    assert plan_index("hnsw", 10, 512).factory == "HNSW32,Flat"  # graph: no training needed
    clamped = plan_index("ivf", 1000, 8, nlist=500)
    assert clamped.params["nlist"] == 1000 // 39 and clamped.notices


def test_build_on_a_tiny_gallery_with_ivf_falls_back_to_flat_and_says_so() -> None:
    gallery = GalleryIndex.build(np.random.default_rng(4).normal(size=(20, 16)), _records(20), kind="ivf")
    assert gallery.kind == "flat"
    assert any("flat" in n for n in gallery.notices)


# --------------------------------------------------------------------------- add


def test_add_appends_only_new_paths() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(10, 16))
    records = _records(10)
    gallery = GalleryIndex.build(x[:6], records[:6])
    added = gallery.add(x[4:], records[4:])  # rows 4, 5 are already there
    assert added == 4
    assert len(gallery) == 10 and len(gallery.records) == 10
    assert [r.path for r in gallery.records] == [r.path for r in records]
    assert gallery.add(x[:3], records[:3]) == 0
    (hits,) = gallery.search(x[8:9], 1)
    assert hits[0].path == records[8].path


def test_add_to_ivf_keeps_cells_and_finds_new_rows() -> None:
    rng = np.random.default_rng(6)
    x = _clustered(rng, 1500, 32, clusters=100)
    records = _records(1500)
    gallery = GalleryIndex.build(x[:1000], records[:1000], kind="ivf")
    nlist = gallery.params["nlist"]
    assert gallery.add(x[1000:], records[1000:]) == 500
    assert gallery.params["nlist"] == nlist and gallery.trained_on == 1000
    (hits,) = gallery.search(x[1200:1201], 1)
    assert hits[0].path == records[1200].path


# --------------------------------------------------------------------------- save / load


def test_save_load_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(50, 24))
    records = _records(50)
    gallery = GalleryIndex.build(x, records, kind="hnsw", extra={"modality": "visible", "checkpoint": {"fingerprint": "ab"}})
    out = gallery.save(tmp_path / "idx")
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))  # .mclnet-lock: the writer lock
    assert visible == ["index.faiss", "meta.json", "records.jsonl"]
    assert faiss.read_index(str(out / "index.faiss")).ntotal == 50  # plain FAISS can read it
    meta = json.loads((out / "meta.json").read_text())
    assert meta["dimension"] == 24 and meta["metric"] == "inner_product" and meta["count"] == 50
    assert meta["kind"] == "hnsw" and meta["factory"] == "HNSW32,Flat" and meta["modality"] == "visible"
    lines = (out / "records.jsonl").read_text().splitlines()
    assert json.loads(lines[3]) == {"path": records[3].path, "modality": "visible", "pid": 3, "cam": 1}

    loaded = GalleryIndex.load(out)
    assert loaded.records == records and loaded.kind == "hnsw"
    assert loaded.extra == {"modality": "visible", "checkpoint": {"fingerprint": "ab"}}
    q = rng.normal(size=(5, 24))
    before = [[(h.path, round(h.score, 5)) for h in hits] for hits in gallery.search(q, 5)]
    after = [[(h.path, round(h.score, 5)) for h in hits] for hits in loaded.search(q, 5)]
    assert before == after
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp or backup left


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_interrupted_write_leaves_the_previous_index_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(8)
    old = GalleryIndex.build(rng.normal(size=(8, 16)), _records(8))
    target = old.save(tmp_path / "idx")
    before = _snapshot(target)
    new = GalleryIndex.build(rng.normal(size=(12, 16)), _records(12, "/other"))

    def boom(path: Path, text: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(store_module, "atomic_write_text", boom)
    with pytest.raises(OSError, match="disk full"):
        new.save(target)
    assert _snapshot(target) == before
    assert len(GalleryIndex.load(target)) == 8
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]  # staging folder cleaned up


def test_a_swap_that_fails_after_its_commit_is_finished_by_the_next_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(9)
    target = GalleryIndex.build(rng.normal(size=(8, 16)), _records(8)).save(tmp_path / "idx")
    new = GalleryIndex.build(rng.normal(size=(12, 16)), _records(12, "/other"))
    real_replace = store_module.os.replace
    calls = []

    def flaky_replace(src, dst):
        calls.append(Path(dst).name)
        if calls.count("records.jsonl") == 2:  # index.faiss already swapped in, records.jsonl fails
            raise OSError("interrupted")
        return real_replace(src, dst)

    monkeypatch.setattr(store_module.os, "replace", flaky_replace)
    with pytest.raises(OSError, match="interrupted"):
        new.save(target)
    monkeypatch.undo()
    assert (target / ".swap.json").is_file()  # committed: the next open rolls it forward
    assert GalleryIndex.load(target).records == _records(12, "/other")
    assert sorted(p.name for p in target.iterdir()) == [".mclnet-lock", "index.faiss", "meta.json", "records.jsonl"]


def test_save_replaces_an_existing_index(tmp_path: Path) -> None:
    rng = np.random.default_rng(10)
    GalleryIndex.build(rng.normal(size=(8, 16)), _records(8)).save(tmp_path / "idx")
    GalleryIndex.build(rng.normal(size=(3, 16)), _records(3, "/new")).save(tmp_path / "idx")
    loaded = GalleryIndex.load(tmp_path / "idx")
    assert [r.path for r in loaded.records] == [f"/new/{i:05d}.jpg" for i in range(3)]
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]


def test_save_refuses_to_clobber_a_folder_that_is_not_an_index(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(IndexStoreError, match="not an mclnet index"):
        GalleryIndex.build(np.eye(2, 4), _records(2)).save(photos)
    assert (photos / "holiday.jpg").read_bytes() == b"precious"


def test_load_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(IndexStoreError, match="index not found"):
        GalleryIndex.load(tmp_path / "missing")
    out = GalleryIndex.build(np.eye(3, 4), _records(3)).save(tmp_path / "idx")
    (out / "meta.json").write_text("{not json")
    with pytest.raises(IndexStoreError, match="meta.json: not valid JSON"):
        GalleryIndex.load(out)
    out = GalleryIndex.build(np.eye(3, 4), _records(3)).save(tmp_path / "idx2")
    with (out / "records.jsonl").open("a") as handle:
        handle.write(json.dumps({"path": "/extra.jpg"}) + "\n")
    with pytest.raises(IndexStoreError, match="4 rows but the index holds 3"):
        GalleryIndex.load(out)
    out = GalleryIndex.build(np.eye(3, 4), _records(3)).save(tmp_path / "idx3")
    (out / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(IndexStoreError, match="cannot read the FAISS index"):
        GalleryIndex.load(out)


def test_load_puts_back_a_backup_left_by_an_older_version(tmp_path: Path) -> None:
    out = GalleryIndex.build(np.eye(3, 4), _records(3)).save(tmp_path / "idx")
    out.rename(tmp_path / ".idx.bak-1234abcd")  # as an older mclnet left it, killed between its two renames
    assert len(GalleryIndex.load(tmp_path / "idx")) == 3
    assert not list(tmp_path.glob(".idx.*"))


# --------------------------------------------------------------------------- layouts


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/data/SYSU-MM01/cam3/0007/0012.jpg", (7, 3, "infrared", "sysu")),
        ("/data/SYSU-MM01/cam1/0333/0001.jpg", (333, 1, "visible", "sysu")),
        ("/x/RegDB/Visible/42/female_front_v_00123_42.bmp", (42, 1, "visible", "regdb")),
        ("/x/RegDB/Thermal/7/male_back_t_00001_7.bmp", (7, 2, "infrared", "regdb")),
        ("/d/LLCM/test_vis/cam4/0123/0123_c04_s170917_f4380_vis.jpg", (123, 4, "visible", "llcm")),
        ("/d/LLCM/test_nir/cam9/0010/0010_c09_s1_f2_nir.jpg", (10, 9, "infrared", "llcm")),
        # a root folder whose name contains "cam" must not confuse the parser
        ("/mnt/cam2_backup/camera/SYSU/cam6/0020/0003.jpg", (20, 6, "infrared", "sysu")),
        # any run of digits is a pid folder, as for the SYSU reader (which loads such a folder)
        ("/data/SYSU-MM01/cam3/7/0012.jpg", (7, 3, "infrared", "sysu")),
    ],
)
def test_known_layouts_give_pid_and_cam(path: str, expected: tuple) -> None:
    found = identify(path)
    assert found is not None
    assert (found.pid, found.cam, found.modality.value, found.dataset) == expected


@pytest.mark.parametrize(
    "path",
    [
        "/photos/holiday/img_0001.jpg",
        "/data/SYSU-MM01/cam7/0007/0012.jpg",  # no camera 7 in SYSU
        "/data/SYSU-MM01/cam3/x7/0012.jpg",  # pid folder not digits
        "/data/SYSU-MM01/cam3/0007/img_12.jpg",  # file name not an index
        "/x/RegDB/Infrared/42/female_front_v_00123_42.bmp",  # not Visible/Thermal
        "/x/RegDB/Visible/42/female_front_v_00123_43.bmp",  # file pid differs from folder
        "/d/LLCM/test_vis/cam4/0123/0124_c04_s1_f1_vis.jpg",
        "relative.jpg",
    ],
)
def test_unknown_layouts_give_nothing(path: str) -> None:
    assert identify(path) is None


def test_save_removes_staging_folders_an_older_version_left_beside_a_live_index(tmp_path: Path) -> None:
    out = GalleryIndex.build(np.eye(3, 4), _records(3)).save(tmp_path / "idx")
    (tmp_path / ".idx.tmp-1a2b3c").mkdir()  # an older mclnet killed while writing its staging folder
    (tmp_path / ".idx.tmp-1a2b3c" / "index.faiss").write_bytes(b"half")
    GalleryIndex.build(np.eye(2, 4), _records(2, "/new")).save(out)
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]


# --------------------------------------------------------------------------- memory-mapped open


def _mapped_files() -> set[str]:
    """Paths this process has memory-mapped (Linux /proc)."""
    maps = Path("/proc/self/maps")
    if not maps.is_file():
        pytest.skip("needs /proc/self/maps to see mappings")
    return {line.split(maxsplit=5)[5].strip() for line in maps.read_text().splitlines() if len(line.split(maxsplit=5)) == 6}


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq"])
def test_mmap_open_maps_the_file_and_searches_like_a_full_read(kind: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    x = _clustered(rng, 2000, 32, 40)
    out = GalleryIndex.build(x, _records(2000), kind=kind, nlist=16, pq_m=8).save(tmp_path / "idx")
    q = rng.normal(size=(8, 32))
    in_memory = GalleryIndex.load(out)
    mapped = GalleryIndex.load(out, mmap=True)
    assert (in_memory.mapped, mapped.mapped) == (False, True)
    assert str((out / "index.faiss").resolve()) in _mapped_files()
    expected = [[(h.path, round(h.score, 4)) for h in hits] for hits in in_memory.search(q, 10)]
    assert [[(h.path, round(h.score, 4)) for h in hits] for hits in mapped.search(q, 10)] == expected
    with pytest.raises(IndexStoreError, match="memory-mapped"):
        mapped.add(rng.normal(size=(1, 32)), _records(1, "/new"))

    # a writer swapping in a new index leaves the mapped one searchable as it was
    GalleryIndex.build(rng.normal(size=(300, 32)), _records(300, "/other"), kind="flat").save(out)
    assert [[(h.path, round(h.score, 4)) for h in hits] for hits in mapped.search(q, 10)] == expected


def test_mmap_auto_maps_only_files_from_the_size_threshold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = GalleryIndex.build(np.random.default_rng(0).normal(size=(40, 16)), _records(40), kind="flat").save(tmp_path / "i")
    size = (out / "index.faiss").stat().st_size
    monkeypatch.setattr(store_module, "MMAP_AUTO_BYTES", size + 1)
    assert GalleryIndex.load(out, mmap=None).mapped is False
    monkeypatch.setattr(store_module, "MMAP_AUTO_BYTES", size)
    assert GalleryIndex.load(out, mmap=None).mapped is True
    assert GalleryIndex.load(out).mapped is False  # the default reads into memory (writers need that)


def test_unit_float32_features_are_indexed_without_a_copy_and_others_are_left_untouched() -> None:
    rng = np.random.default_rng(4)
    raw = rng.standard_normal((50, 8)).astype(np.float32) * 3.0
    before = raw.copy()
    normalised = store_module._as_matrix(raw, "build")
    assert not np.shares_memory(normalised, raw)  # not unit length: a normalised copy
    np.testing.assert_array_equal(raw, before)  # the caller's array is not modified
    np.testing.assert_allclose(np.linalg.norm(normalised, axis=1), 1.0, atol=1e-6)
    unit = normalised.copy()
    assert store_module._as_matrix(unit, "build") is unit  # already unit rows: used as it is
    # the same answers either way
    records = [IndexRecord(f"{i}.jpg") for i in range(50)]
    a = GalleryIndex.build(raw, records).search(raw[:3], 5)
    b = GalleryIndex.build(unit, records).search(raw[:3], 5)
    assert [[h.path for h in hits] for hits in a] == [[h.path for h in hits] for hits in b]


def test_invalid_values_are_found_in_any_block(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "_BLOCK_ROWS", 4)
    features = np.ones((20, 3), dtype=np.float32)
    features[17, 1] = np.inf  # in the fifth block of four rows
    with pytest.raises(IndexStoreError, match="NaN or infinite"):
        store_module._as_matrix(features, "build")
    features[17, 1] = 1.0
    features[9] *= 2.0  # one long row in a middle block: the whole matrix is normalised
    out = store_module._as_matrix(features, "build")
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)


# --------------------------------------------------------------------------- removing rows


def _scores(results: list) -> list[dict[str, float]]:
    return [{h.path: h.score for h in hits} for hits in results]


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_remove_drops_the_rows_and_the_others_keep_their_scores(kind: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    x = _clustered(rng, 1000, 32, 25)
    gallery = GalleryIndex.build(x, _records(1000), kind=kind, nlist=16, nprobe=16)
    assert gallery.kind == kind
    q = x[[0, 1, 500, 998]] + 0.05 * rng.normal(size=(4, 32))
    before = _scores(gallery.search(q, 20))
    gone = {f"/gallery/{i:05d}.jpg" for i in (0, 7, 500, 999)}
    assert gallery.remove(gone | {"/not/indexed.jpg"}) == 4
    assert len(gallery) == len(gallery.records) == 996
    assert [r.path for r in gallery.records] == [r.path for r in _records(1000) if r.path not in gone]  # order kept
    loaded = GalleryIndex.load(gallery.save(tmp_path / "idx"))
    for searched in (gallery, loaded):
        after = _scores(searched.search(q, 20))
        for old, new in zip(before, after):
            assert not gone & set(new)
            common = set(old) & set(new)
            assert len(common) >= 10
            assert max(abs(old[p] - new[p]) for p in common) < 1e-5
    assert loaded.remove([]) == 0 and len(loaded) == 996


@pytest.mark.parametrize("factory", ["IVF16,PQ8x4np", "IVF16_HNSW32,PQ8x4np,Refine(SQ8)", "OPQ8,IVF16_HNSW32,PQ8x4np"])
def test_removal_keeps_the_stored_codes_of_compressed_and_wrapped_indices(factory: str) -> None:
    """ivfpq and what --kind auto builds: rows leave their inverted lists, the others' codes (so scores) stay."""
    rng = np.random.default_rng(13)
    x = _unit(_clustered(rng, 1500, 32, 30))
    index = faiss.index_factory(32, factory, faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add(x)
    apply_parameters(index, {"nprobe": 16})  # every cell: the search is exhaustive over the codes
    q = _unit(x[:6] + 0.05 * rng.normal(size=(6, 32)))
    old_scores, old_rows = index.search(q, 10)
    keep = np.ones(1500, dtype=bool)
    keep[[0, 3, 700, 1499]] = False
    store_module._remove_rows(index, keep)
    index = faiss.deserialize_index(faiss.serialize_index(index))  # as saved and loaded
    apply_parameters(index, {"nprobe": 16})
    assert index.ntotal == 1496
    new_scores, new_rows = index.search(q, 10)
    kept_rows = np.flatnonzero(keep)
    for i in range(len(q)):
        old = {int(r): float(s) for r, s in zip(old_rows[i], old_scores[i])}
        new = {int(kept_rows[r]): float(s) for r, s in zip(new_rows[i], new_scores[i]) if r >= 0}
        assert not {0, 3, 700, 1499} & set(new)
        common = set(old) & set(new)
        assert len(common) >= 6 and max(abs(old[r] - new[r]) for r in common) < 1e-5


MAPPED_CHANGES = """
import sys
import numpy as np
from mclnet_cli.errors import IndexStoreError
from mclnet_cli.index import store as store_module
from mclnet_cli.index.store import GalleryIndex, IndexRecord
store_module.MMAP_AUTO_BYTES = 1  # mmap=None maps this small file too
for mmap in (True, None):
    for change in ("add", "remove"):
        mapped = GalleryIndex.load(sys.argv[1], mmap=mmap)
        try:
            if change == "add":
                mapped.add(np.ones((1, mapped.dimension)), [IndexRecord("/new/0.jpg")])
            else:
                mapped.remove([mapped.records[0].path])
        except IndexStoreError as exc:
            print("refused:", exc, flush=True)
        else:
            print("changed", change, flush=True)
"""


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_a_memory_mapped_index_refuses_add_and_remove_with_one_line(kind: str, tmp_path: Path) -> None:
    """FAISS aborts the whole process when a mapped flat or HNSW index grows: in a child, so that pytest survives."""
    x = _clustered(np.random.default_rng(14), 700, 16, 10)
    out = GalleryIndex.build(x, _records(700), kind=kind, nlist=16).save(tmp_path / "idx")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    child = subprocess.run(
        [sys.executable, "-c", MAPPED_CHANGES, str(out)], capture_output=True, text=True, env=env, timeout=300
    )
    assert child.returncode == 0, child.stdout + child.stderr
    lines = child.stdout.splitlines()
    assert len(lines) == 4, child.stdout
    assert all(line.startswith("refused: ") and "memory-mapped" in line for line in lines), child.stdout
    assert [r.path for r in GalleryIndex.load(out).records] == [r.path for r in _records(700)]


# --------------------------------------------------------------------------- the writer lock and the swap order


def _live_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.startswith(".")}


def test_save_without_the_lock_takes_it_and_waits_for_the_writer_holding_it(
    tmp_path: Path, index_lock_waits: threading.Event
) -> None:
    rng = np.random.default_rng(15)
    target = GalleryIndex.build(rng.normal(size=(8, 16)), _records(8)).save(tmp_path / "idx")
    before = _live_files(target)
    new = GalleryIndex.build(rng.normal(size=(3, 16)), _records(3, "/new"))
    failures: list[BaseException] = []

    def save() -> None:
        try:
            new.save(target)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failures.append(exc)

    saver = threading.Thread(target=save)
    with store_module.writer_lock(target):  # another writer is at work
        saver.start()
        assert wait_for_lock_wait(index_lock_waits, saver), "save wrote without waiting for the writer lock"
        assert _live_files(target) == before
    saver.join(timeout=120)
    assert not saver.is_alive() and not failures, failures
    assert [r.path for r in GalleryIndex.load(target).records] == [r.path for r in _records(3, "/new")]


def test_the_swap_renames_meta_json_last_so_a_reader_that_sees_it_reads_the_whole_new_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """meta.json commits the set: the server reloads when it changes, so the files it names must be in place."""
    rng = np.random.default_rng(16)
    target = GalleryIndex.build(rng.normal(size=(8, 16)), _records(8)).save(tmp_path / "idx")
    new = GalleryIndex.build(rng.normal(size=(12, 16)), _records(12, "/other"))
    real_replace = store_module.os.replace
    renamed: list[str] = []
    seen_by_readers: list[list[str]] = []

    def watched_replace(src, dst):  # noqa: ANN001, ANN202 - os.replace's signature
        result = real_replace(src, dst)
        if Path(dst).parent == target and Path(dst).name in ("index.faiss", "records.jsonl", "meta.json"):
            renamed.append(Path(dst).name)
            if json.loads((target / "meta.json").read_text())["count"] == 12:  # a reader now sees the new meta.json
                seen_by_readers.append([r.path for r in GalleryIndex._load_once(target).records])
        return result

    monkeypatch.setattr(store_module.os, "replace", watched_replace)
    new.save(target)
    monkeypatch.undo()
    assert sorted(renamed) == ["index.faiss", "meta.json", "records.jsonl"] and renamed[-1] == "meta.json"
    assert seen_by_readers == [[r.path for r in _records(12, "/other")]]


class _Crash(BaseException):
    """The process dies here (nothing after it runs, no handler catches it)."""


@pytest.mark.parametrize("after", [1, 2, 3])
def test_a_crash_between_the_swap_renames_loads_the_complete_new_index(
    after: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(17)
    target = GalleryIndex.build(rng.normal(size=(8, 16)), _records(8)).save(tmp_path / "idx")
    new = GalleryIndex.build(rng.normal(size=(12, 16)), _records(12, "/other"))
    real_replace = store_module.os.replace
    done: list[str] = []

    def dying_replace(src, dst):  # noqa: ANN001, ANN202 - os.replace's signature
        result = real_replace(src, dst)
        if Path(dst).parent == target and Path(dst).name in ("index.faiss", "records.jsonl", "meta.json"):
            done.append(Path(dst).name)
            if len(done) == after:
                raise _Crash
        return result

    monkeypatch.setattr(store_module.os, "replace", dying_replace)
    with pytest.raises(_Crash):
        new.save(target)
    monkeypatch.undo()
    loaded = GalleryIndex.load(target)  # rolls the committed swap forward
    assert [r.path for r in loaded.records] == [r.path for r in _records(12, "/other")] and len(loaded) == 12
    assert sorted(p.name for p in target.iterdir()) == [".mclnet-lock", "index.faiss", "meta.json", "records.jsonl"]
