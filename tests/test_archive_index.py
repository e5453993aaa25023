"""Issue 28 end to end: ``--dim`` applied by query, api.search, serve and --add; ``--chunk`` on-disk builds, resume, add."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mclnet_cli import api
from mclnet_cli.cli.app import app as cli_app
from mclnet_cli.errors import IndexStoreError
from mclnet_cli.index import chunked as chunked_module
from mclnet_cli.index.store import GalleryIndex
from mclnet_cli.index.reduction import REDUCTION_FILE, Reduction


def _images(root: Path, count: int, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        base = rng.integers(0, 255, size=(4, 2, 3)).astype(np.float64)  # a coarse "person" plus noise
        pixels = np.clip(np.kron(base, np.ones((10, 10, 1))) + rng.normal(0, 20, size=(40, 20, 3)), 0, 255)
        paths.append(root / f"{seed}_{i:03d}.png")
        Image.fromarray(pixels.astype(np.uint8)).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, two_stream_checkpoint: Path) -> dict:
    """120 gallery images, 20 more to add, 3 probes, and every feature embedded once through the public API."""
    root = tmp_path_factory.mktemp("archive")
    gallery, more, probes = _images(root / "g", 120, 1), _images(root / "more", 20, 2), _images(root / "probes", 3, 3)
    model = api.load(two_stream_checkpoint, device="cpu")
    features = {str(p.resolve()): f for p, f in zip(gallery + more, api.embed(model, gallery + more, "visible"))}
    return {"root": root, "gallery": root / "g", "more": root / "more", "probes": probes, "features": features,
            "probe_features": api.embed(model, probes, "infrared"), "checkpoint": two_stream_checkpoint}  # fmt: skip


def _index(archive: dict, gallery: Path, out: Path, *extra: str, cli_runner) -> dict:
    args = ["index", str(gallery), "-c", str(archive["checkpoint"]), "-m", "visible", "-o", str(out), "--device", "cpu",
            "--json", *extra]  # fmt: skip
    result = cli_runner.invoke(cli_app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _expected(archive: dict, index_dir: Path) -> tuple[np.ndarray, list[str]]:
    """Cosine scores [probe, row] computed by hand: reduce with the stored file, normalise, dot."""
    meta = json.loads((index_dir / "meta.json").read_text())
    paths = [json.loads(line)["path"] for line in (index_dir / "records.jsonl").read_text().splitlines()]
    gallery = np.stack([archive["features"][p] for p in paths])
    probes = archive["probe_features"]
    if meta.get("reduction"):
        reduction = Reduction.load(index_dir, meta["reduction"])
        unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
        gallery, probes = unit((gallery - reduction.mean) @ reduction.projection.T), unit((probes - reduction.mean) @ reduction.projection.T)
    return probes @ gallery.T, paths


def _check_hits(rows: list[list[tuple[str, float]]], archive: dict, index_dir: Path, k: int) -> None:
    scores, paths = _expected(archive, index_dir)
    for i, hits in enumerate(rows):
        assert len(hits) == k
        best = np.argsort(-scores[i], kind="stable")[:k]
        assert [h[1] for h in hits] == pytest.approx(scores[i][best].tolist(), abs=1e-4)
        for path, score in hits:  # each hit's own score, whatever the order of near-ties
            assert score == pytest.approx(float(scores[i][paths.index(path)]), abs=1e-4)


def _query(archive: dict, index_dir: Path, k: int, cli_runner) -> list[list[tuple[str, float]]]:
    args = ["query", *map(str, archive["probes"]), "--index", str(index_dir), "-m", "infrared", "-k", str(k), "--json",
            "--device", "cpu"]  # fmt: skip
    result = cli_runner.invoke(cli_app, args)
    assert result.exit_code == 0, result.output
    return [[(h["path"], h["score"]) for h in row["results"]] for row in json.loads(result.stdout)]


@pytest.fixture(scope="module")
def reduced(archive: dict, cli_runner) -> Path:
    out = archive["root"] / "reduced"
    report = _index(archive, archive["gallery"], out, "--dim", "16", "--whiten", cli_runner=cli_runner)
    assert report["dimension"] == 16 and (out / REDUCTION_FILE).is_file()
    return out


# --------------------------------------------------------------------------- --dim


def test_query_applies_the_reduction(archive: dict, reduced: Path, cli_runner) -> None:
    _check_hits(_query(archive, reduced, 5, cli_runner), archive, reduced, 5)


def test_api_search_applies_the_reduction(archive: dict, reduced: Path) -> None:
    report = api.search(reduced, archive["probes"], "infrared", top_k=5, device="cpu")
    _check_hits([[(h.path, h.score) for h in r.hits] for r in report.results], archive, reduced, 5)


def test_serve_search_applies_the_reduction(archive: dict, reduced: Path) -> None:
    pytest.importorskip("fastapi", reason="needs the serve extra")
    pytest.importorskip("httpx", reason="needs httpx (test extra)")
    from fastapi.testclient import TestClient

    from mclnet_cli.serve import ServeSettings, create_app

    client = TestClient(create_app(ServeSettings(index_dir=reduced, device="cpu")))
    files = [("probes", (p.name, p.read_bytes(), "image/png")) for p in archive["probes"]]
    response = client.post("/search", files=files, data={"modality": "infrared", "top_k": "5"})
    assert response.status_code == 200, response.text
    rows = [[(h["path"], h["score"]) for h in row["results"]] for row in response.json()["results"]]
    _check_hits(rows, archive, reduced, 5)


def test_add_applies_the_stored_reduction(archive: dict, reduced: Path, tmp_path: Path, cli_runner) -> None:
    out = tmp_path / "idx"
    shutil.copytree(reduced, out, ignore=shutil.ignore_patterns(".*"))
    before = (out / REDUCTION_FILE).read_bytes()
    report = _index(archive, archive["more"], out, "--add", "--dim", "4", cli_runner=cli_runner)
    assert report["added"] == 20 and report["count"] == 140 and report["dimension"] == 16
    assert (out / REDUCTION_FILE).read_bytes() == before  # reused, never retrained
    _check_hits(_query(archive, out, 140, cli_runner), archive, out, 140)  # every row, the added ones included


def test_whiten_needs_dim(archive: dict, tmp_path: Path) -> None:
    with pytest.raises(IndexStoreError, match="--whiten"):
        api.build_index(archive["checkpoint"], archive["gallery"], "visible", tmp_path / "x", whiten=True, device="cpu")


# --------------------------------------------------------------------------- --chunk


def test_chunked_build_is_on_disk_and_finds_what_exact_search_finds(archive: dict, tmp_path: Path, cli_runner) -> None:
    out = tmp_path / "ondisk"
    report = _index(archive, archive["gallery"], out, "--chunk", "25", "--kind", "ivf", "--nlist", "3", "--recall", "1.0",
                    cli_runner=cli_runner)  # fmt: skip
    assert report["count"] == 120 and report["kind"] == "ivf"
    meta = json.loads((out / "meta.json").read_text())
    assert (out / meta["ondisk"]["lists"]).is_file() and not (out / ".mclnet-build").exists()
    assert meta["chunked"]["shards"] == 5 and meta["chunked"]["tuned"]["recall_at_10"] == 1.0
    flat = tmp_path / "flat"
    _index(archive, archive["gallery"], flat, cli_runner=cli_runner)
    assert (out / "records.jsonl").read_text() == (flat / "records.jsonl").read_text()  # the single-process order
    got, want = _query(archive, out, 10, cli_runner), _query(archive, flat, 10, cli_runner)
    assert [[p for p, _ in row] for row in got] == [[p for p, _ in row] for row in want]
    _check_hits(got, archive, out, 10)


def test_a_killed_chunked_build_continues_from_the_last_finished_chunk(
    archive: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mclnet_cli.engine import sharded

    out, added = tmp_path / "idx", []
    original_add, original_embed = chunked_module.ChunkedBuilder.add_chunk, sharded._embed

    def dying_add(self, name, vectors):
        if len(added) == 2:
            raise RuntimeError("killed")
        added.append(name)
        return original_add(self, name, vectors)

    monkeypatch.setattr(chunked_module.ChunkedBuilder, "add_chunk", dying_add)
    options = dict(chunk=30, kind="ivf", nlist=3, recall=1.0, device="cpu")
    with pytest.raises(RuntimeError, match="killed"):
        api.build_index(archive["checkpoint"], archive["gallery"], "visible", out, **options)
    assert not (out / "meta.json").exists() and len(list((out / ".mclnet-build").glob("shard-*.json"))) == 2
    embedded: list[int] = []
    monkeypatch.setattr(chunked_module.ChunkedBuilder, "add_chunk", original_add)
    monkeypatch.setattr(sharded, "_embed", lambda job, paths, advance: embedded.append(len(paths)) or original_embed(job, paths, advance))
    report = api.build_index(archive["checkpoint"], archive["gallery"], "visible", out, **options)
    assert embedded == [30, 30]  # the last two chunks only: no training sample, no finished chunk again
    assert any("resuming" in n and "2 of 4" in n for n in report.notices)
    assert report.count == 120 and [r.path for r in GalleryIndex.load(out).records] == sorted(archive["features"])[:120]


def test_chunked_dim_then_adds_with_and_without_chunk(archive: dict, tmp_path: Path, cli_runner) -> None:
    out = tmp_path / "idx"
    _index(archive, archive["gallery"], out, "--chunk", "50", "--dim", "12", "--kind", "ivf", "--nlist", "3", "--recall",
           "1.0", cli_runner=cli_runner)  # fmt: skip
    first_lists = json.loads((out / "meta.json").read_text())["ondisk"]["lists"]
    more = sorted(archive["more"].iterdir())
    staged = tmp_path / "first"
    staged.mkdir()
    for path in more[:10]:
        shutil.copy(path, staged / path.name)
    report = _index(archive, staged, out, "--add", "--chunk", "4", cli_runner=cli_runner)
    assert report["added"] == 10 and report["count"] == 130 and report["dimension"] == 12
    report = _index(archive, archive["more"], out, "--add", cli_runner=cli_runner)  # other paths, without --chunk
    assert report["added"] == 20 and report["count"] == 150
    meta = json.loads((out / "meta.json").read_text())
    assert meta["ondisk"]["lists"] != first_lists and sorted(p.name for p in out.glob("lists-*")) == [meta["ondisk"]["lists"]]
    features = archive["features"]
    for path in more[:10]:  # copies: their own path, the same pixels
        features[str((staged / path.name).resolve())] = features[str(path.resolve())]
    gallery = GalleryIndex.load(out)
    gallery.params["nprobe"] = 3  # every cell: exact
    rows = [[(h.path, h.score) for h in hits] for hits in gallery.search(archive["probe_features"], 150)]
    _check_hits(rows, archive, out, 150)


def test_serve_reloads_an_on_disk_index_after_an_add(archive: dict, tmp_path: Path) -> None:
    pytest.importorskip("fastapi", reason="needs the serve extra")
    pytest.importorskip("httpx", reason="needs httpx (test extra)")
    from fastapi.testclient import TestClient

    from mclnet_cli.serve import ServeSettings, create_app

    out = tmp_path / "idx"
    api.build_index(archive["checkpoint"], archive["gallery"], "visible", out, chunk=60, kind="ivf", nlist=3, device="cpu")
    client = TestClient(create_app(ServeSettings(index_dir=out, device="cpu", uploads_dir=tmp_path / "uploads")))
    assert client.get("/gallery").json()["count"] == 120
    api.build_index(archive["checkpoint"], archive["more"], "visible", out, add=True, device="cpu")
    assert client.get("/gallery").json()["count"] == 140  # the new meta.json was picked up
    upload = archive["probes"][0]  # an upload adds through the same staged merge
    response = client.post("/gallery", files=[("images", ("new.png", upload.read_bytes(), "image/png"))])
    assert response.status_code == 200 and response.json()["count"] == 141, response.text
    assert len(GalleryIndex.load(out)) == 141 and len(list(out.glob("lists-*"))) == 1
    files = [("probes", (upload.name, upload.read_bytes(), "image/png"))]
    response = client.post("/search", files=files, data={"modality": "visible", "top_k": "3"})
    best = response.json()["results"][0]["results"][0]
    assert best["record"] == 140 and best["score"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_chunk_refuses_kinds_that_cannot_live_on_disk(archive: dict, tmp_path: Path, kind: str) -> None:
    with pytest.raises(IndexStoreError, match="--chunk"):
        api.build_index(archive["checkpoint"], archive["gallery"], "visible", tmp_path / "x", chunk=10, kind=kind, device="cpu")
