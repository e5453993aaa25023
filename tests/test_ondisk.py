"""On-disk IVF galleries: chunked shards merged into a lists file, read in place or moved, added to, tuned."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from mclnet_cli.errors import IndexStoreError
from mclnet_cli.index import ondisk
from mclnet_cli.index.chunked import ChunkedBuilder, ExactTopK, plan_chunked, recall_at_10, tune_nprobe, unit_rows
from mclnet_cli.index.store import GalleryIndex, IndexRecord


def _clustered(seed: int, n: int, dim: int = 16, clusters: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    return unit_rows(centres[rng.integers(0, clusters, n)] + 0.4 * rng.normal(size=(n, dim)))


def _records(n: int, start: int = 0) -> list[IndexRecord]:
    return [IndexRecord(f"/g/{i:05d}.jpg", "visible", pid=i, cam=1) for i in range(start, start + n)]


def _chunked(work: Path, x: np.ndarray, chunk: int, reduce_dim: int | None = None) -> tuple[ChunkedBuilder, list[str]]:
    plan = plan_chunked("ivf", x.shape[0], reduce_dim or x.shape[1], x.shape[0], nlist=8)
    builder = ChunkedBuilder.train(work, x, plan, reduce_dim=reduce_dim)
    names = []
    for i, start in enumerate(range(0, x.shape[0], chunk)):
        names.append(f"shard-{i:03d}")
        builder.add_chunk(names[-1], builder.prepare(x[start : start + chunk]))
    return builder, names


def _gallery(tmp_path: Path, x: np.ndarray, chunk: int = 250) -> Path:
    builder, names = _chunked(tmp_path / "work", x, chunk)
    out = tmp_path / "idx"
    out.mkdir()
    index = builder.merge(names, out / ondisk.new_lists_name())
    gallery = GalleryIndex(index, _records(x.shape[0]), "ivf", builder.plan.factory, dict(builder.plan.params),
                           ondisk=ondisk.OnDisk.of(index))  # fmt: skip
    return gallery.save(out)


def test_merged_shards_equal_one_in_memory_index_row_for_row(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    x = _clustered(0, 1000)
    builder, names = _chunked(tmp_path / "work", x, chunk=300)  # 300, 300, 300, 100 rows
    merged = builder.merge(names, tmp_path / "lists.ivfdata")
    assert capfd.readouterr().out == ""  # FAISS's "resizing ..." line must not reach stdout (--json)
    assert ondisk.is_ondisk(merged) and merged.ntotal == 1000
    single = faiss.read_index(str(builder.work / "trained.faiss"))
    single.add(x)
    for index in (merged, single):
        faiss.extract_index_ivf(index).nprobe = 3
    assert np.array_equal(merged.search(x[:50], 10)[1], single.search(x[:50], 10)[1])


def test_saved_folder_reads_with_plain_faiss_and_after_a_move(tmp_path: Path) -> None:
    x = _clustered(1, 600)
    out = _gallery(tmp_path, x)
    meta = json.loads((out / "meta.json").read_text())
    lists = meta["ondisk"]["lists"]
    assert (out / lists).stat().st_size == meta["ondisk"]["bytes"] and meta["ondisk"]["path"] == str(out.resolve() / lists)
    plain = faiss.read_index(str(out / "index.faiss"), faiss.IO_FLAG_READ_ONLY)  # the path inside is absolute
    assert plain.ntotal == 600
    moved = tmp_path / "elsewhere" / "idx"
    moved.parent.mkdir()
    shutil.move(str(out), str(moved))
    loaded = GalleryIndex.load(moved)
    assert loaded.ondisk is not None and loaded.ondisk.lists_path == moved.resolve() / lists
    (hits,) = loaded.search(x[123:124], 1)
    assert hits[0].path == "/g/00123.jpg" and hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_add_to_an_on_disk_index_stages_rows_then_merges_a_new_lists_file(tmp_path: Path) -> None:
    x = _clustered(2, 700)
    out = _gallery(tmp_path, x[:500])
    old_lists = json.loads((out / "meta.json").read_text())["ondisk"]["lists"]
    gallery = GalleryIndex.load(out)
    reader = GalleryIndex.load(out)  # a server holding the previous version
    assert gallery.add(x[500:], _records(200, 500)) == 200
    assert len(gallery) == 700
    (hits,) = gallery.search(x[650:651], 1)  # staged rows are searchable before the save
    assert hits[0].path == "/g/00650.jpg"
    gallery.save(out)
    new_lists = json.loads((out / "meta.json").read_text())["ondisk"]["lists"]
    assert new_lists != old_lists and not (out / old_lists).exists()
    assert sorted(p.name for p in out.glob("lists-*")) == [new_lists]
    assert len(reader.search(x[:1], 1)[0]) == 1  # the old mapping stays valid after its file is removed
    loaded = GalleryIndex.load(out)
    assert len(loaded) == 700 and [r.path for r in loaded.records] == [r.path for r in _records(700)]
    faiss.extract_index_ivf(loaded.index).nprobe = 8
    ids = loaded.index.search(x[[10, 510, 699]], 1)[1][:, 0]
    assert ids.tolist() == [10, 510, 699]
    with pytest.raises(IndexStoreError, match="on disk"):
        loaded.remove(["/g/00001.jpg"])


def test_saving_to_another_folder_copies_the_lists_there(tmp_path: Path) -> None:
    x = _clustered(5, 500)
    out = _gallery(tmp_path, x)
    other = GalleryIndex.load(out).save(tmp_path / "copy")
    meta = json.loads((other / "meta.json").read_text())
    assert (other / meta["ondisk"]["lists"]).is_file() and meta["ondisk"]["path"].startswith(str(other.resolve()))
    shutil.rmtree(out)
    (hits,) = GalleryIndex.load(other).search(x[42:43], 1)
    assert hits[0].path == "/g/00042.jpg"


def test_a_meta_naming_other_lists_or_a_missing_lists_file_is_an_error(tmp_path: Path) -> None:
    out = _gallery(tmp_path, _clustered(3, 400))
    meta_path = out / "meta.json"
    meta = json.loads(meta_path.read_text())
    lists = out / meta["ondisk"]["lists"]
    lists.rename(out / "lists-gone.ivfdata")
    with pytest.raises(IndexStoreError, match="missing"):
        GalleryIndex.load(out)
    (out / "lists-gone.ivfdata").rename(lists)
    meta["ondisk"]["path"] = str(out / "lists-other.ivfdata")
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(IndexStoreError, match="does not use the lists file"):
        GalleryIndex.load(out)


def test_streamed_exact_top_k_equals_brute_force_and_tuning_reaches_the_target(tmp_path: Path) -> None:
    x = _clustered(4, 1200, dim=24)
    queries = x[::40]
    truth = ExactTopK(queries)
    for start in range(0, 1200, 350):
        truth.update(x[start : start + 350], start)
    brute = np.argsort(-(queries @ x.T), axis=1, kind="stable")[:, :11]
    assert np.array_equal(np.sort(truth.ids, axis=1), np.sort(brute, axis=1))
    truth.save(tmp_path / "top.npy")
    again = ExactTopK(queries)
    again.merge_file(tmp_path / "top.npy", 0)
    assert np.array_equal(again.ids, truth.ids)

    builder, names = _chunked(tmp_path / "work", x, chunk=500)
    merged = builder.merge(names, tmp_path / "lists.ivfdata")
    nprobe, recall = tune_nprobe(merged, truth, 0.99)
    assert recall >= 0.99 and 1 <= nprobe <= 8
    assert recall_at_10(merged.search(queries, 11)[1], truth) == pytest.approx(recall)
    _, exhaustive = tune_nprobe(merged, truth, 1.0, fixed=8)
    assert exhaustive == pytest.approx(1.0)  # every cell probed: exact


def test_plan_caps_cells_by_the_sample_and_keeps_ivf_for_small_galleries() -> None:
    plan = plan_chunked("ivf", 10**8, 256, 100_000)
    assert plan.params["nlist"] == 100_000 // 39 and plan.notices
    small = plan_chunked("ivfpq", 200, 64, 200)
    assert small.kind == "ivf" and small.params == {"nlist": 5, "nprobe": 5}
    with pytest.raises(IndexStoreError, match="ivf or ivfpq"):
        plan_chunked("hnsw", 10, 8, 10)
