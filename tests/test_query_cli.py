"""``mclnet index`` and ``mclnet query`` end to end on a tiny untrained model (resnet18, 64x32).

Retrieval is checked on a constructed case: each person is a distinct random
texture, the gallery holds noisy copies in one spectrum and the probes are
other noisy copies in the other spectrum. An untrained MCLNet starts with both
streams equal, so this tests the plumbing (paths, ranking, pids), not learning;
stream routing is tested with a two-stream checkpoint in test_wiring.py and the
trained-model variant lives in the demo test.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mclnet_cli.cli.app import app
from mclnet_cli.config import load_config
from mclnet_cli.index.store import GalleryIndex, IndexRecord
from mclnet_cli.engine.indexing import build_gallery_index
from mclnet_cli.engine.search import search_gallery

from conftest import CheckpointFactory

runner = CliRunner()
PIDS = (1, 2, 3, 4)
HIT_KEYS = {"rank", "path", "score", "pid", "cam"}


def _person(pid: int) -> np.ndarray:
    """A person-specific coarse random luminance pattern with a mild colour tint, 128x64 RGB.

    Identity lives in the luminance, so it survives the grey "infrared" copies.
    """
    rng = np.random.default_rng(pid)
    coarse = rng.integers(0, 256, size=(8, 4, 1)).astype(np.float64)
    tint = rng.uniform(0.8, 1.0, size=(1, 1, 3))
    return np.kron(coarse, np.ones((16, 16, 1))) * tint


def _copy(pid: int, seed: int, gray: bool = False) -> Image.Image:
    noise = np.random.default_rng(1000 * pid + seed).normal(0.0, 8.0, size=(128, 64, 3))
    array = np.clip(_person(pid) + noise, 0, 255)
    if gray:  # an "infrared" copy: one channel
        array = np.repeat(array.mean(axis=2, keepdims=True), 3, axis=2)
    return Image.fromarray(array.astype(np.uint8))


def _sysu_tree(root: Path, cam: int, per_person: int, gray: bool, start: int = 1) -> list[Path]:
    paths = []
    for pid in PIDS:
        for i in range(start, start + per_person):
            path = root / f"cam{cam}" / f"{pid:04d}" / f"{i:04d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            _copy(pid, cam * 100 + i, gray).save(path, quality=95)
            paths.append(path)
    return paths


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint: Path) -> Path:
    """The shared untrained tiny checkpoint (conftest); never modified here."""
    return tiny_checkpoint


@pytest.fixture()
def gallery(tmp_path: Path) -> Path:
    root = tmp_path / "SYSU" / "gallery"
    _sysu_tree(root, cam=1, per_person=2, gray=False)
    return root


@pytest.fixture()
def probes(tmp_path: Path) -> Path:
    root = tmp_path / "SYSU" / "probes"
    _sysu_tree(root, cam=3, per_person=1, gray=True)
    return root


def _dim(checkpoint: Path) -> int:
    """The feature dimension of ``checkpoint``'s model (256 for tiny's narrow resnet18)."""
    from mclnet_cli.engine.checkpoint import load_model

    return load_model(checkpoint).model.feature_dim


def _index(gallery: Path, checkpoint: Path, out: Path, *extra: str) -> dict:
    args = ["index", str(gallery), "--checkpoint", str(checkpoint), "--modality", "visible", "--out", str(out)]
    result = runner.invoke(app, [*args, "--device", "cpu", "--json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _query(index: Path, *args: str) -> list:
    result = runner.invoke(app, ["query", *args, "--index", str(index), "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# --------------------------------------------------------------------------- index


def test_index_json_skips_corrupt_and_non_image_files(tmp_path: Path, gallery: Path, checkpoint: Path) -> None:
    (gallery / "cam1" / "0001" / "0099.jpg").write_bytes(b"not a jpeg at all")
    (gallery / "notes.txt").write_text("gallery of 4 people")
    out = tmp_path / "idx"
    report = _index(gallery, checkpoint, out)
    assert report["count"] == 8 and report["added"] == 8 and report["modality"] == "visible"
    assert report["kind"] == "flat" and report["dimension"] == _dim(checkpoint)
    skipped = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert set(skipped) == {"0099.jpg", "notes.txt"}
    assert "cannot decode" in skipped["0099.jpg"] and "not an image" in skipped["notes.txt"]
    assert report["images_per_s"] > 0

    meta = json.loads((out / "meta.json").read_text())
    assert meta["count"] == 8 and meta["metric"] == "inner_product" and meta["factory"] == "Flat"
    assert meta["modality"] == "visible" and meta["dimension"] == _dim(checkpoint)
    assert meta["checkpoint"]["path"] == str(checkpoint.resolve()) and len(meta["checkpoint"]["fingerprint"]) == 16
    rows = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [Path(r["path"]).parent.name for r in rows] == ["0001", "0001", "0002", "0002", "0003", "0003", "0004", "0004"]
    assert rows[2]["pid"] == 2 and rows[2]["cam"] == 1 and rows[2]["modality"] == "visible"


def test_index_text_output_lists_skipped_files(tmp_path: Path, gallery: Path, checkpoint: Path) -> None:
    (gallery / "broken.png").write_bytes(b"\x89PNG broken")
    args = ["index", str(gallery), "-c", str(checkpoint), "-m", "visible", "-o", str(tmp_path / "idx"), "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "broken.png" in result.output and "indexed 8 visible image(s)" in result.output


def test_add_embeds_only_new_files(tmp_path: Path, gallery: Path, checkpoint: Path) -> None:
    out = tmp_path / "idx"
    assert _index(gallery, checkpoint, out)["count"] == 8
    new = _sysu_tree(gallery, cam=1, per_person=1, gray=False, start=3)  # 4 new images
    report = _index(gallery, checkpoint, out, "--add")
    assert report["added"] == 4 and report["count"] == 12 and report["appended"] is True
    paths = [json.loads(line)["path"] for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(paths) == len(set(paths)) == 12
    assert {str(p.resolve()) for p in new} <= set(paths)
    again = _index(gallery, checkpoint, out, "--add")
    assert again["added"] == 0 and again["count"] == 12
    assert any("nothing new" in n for n in again["notices"])


def test_add_with_another_checkpoint_is_refused(
    tmp_path: Path, gallery: Path, checkpoint: Path, make_checkpoint: CheckpointFactory
) -> None:
    out = tmp_path / "idx"
    _index(gallery, checkpoint, out)
    other = make_checkpoint(tmp_path / "other.pt", seed=1)
    args = ["index", str(gallery), "-c", str(other), "-m", "visible", "-o", str(out), "--add", "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "fingerprint" in result.output and "Traceback" not in result.output


def test_interrupted_rebuild_keeps_the_old_index(
    tmp_path: Path, gallery: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "idx"
    _index(gallery, checkpoint, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _sysu_tree(gallery, cam=1, per_person=1, gray=False, start=3)

    def interrupted(self: GalleryIndex, folder: Path) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(GalleryIndex, "_write_files", interrupted)
    args = ["index", str(gallery), "-c", str(checkpoint), "-m", "visible", "-o", str(out), "--device", "cpu", "--force"]
    result = runner.invoke(app, args)
    assert result.exit_code == 130 and "interrupted" in result.output
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert len(GalleryIndex.load(out)) == 8
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_index_kind_and_batch_size_come_from_the_checkpoint_config(
    tmp_path: Path, gallery: Path, monkeypatch: pytest.MonkeyPatch, make_checkpoint: CheckpointFactory
) -> None:
    from mclnet_cli.engine import extract

    hnsw = make_checkpoint(tmp_path / "hnsw.pt", overrides=("index.kind=hnsw", "index.batch_size=3"))
    sizes: list[int] = []
    real_extract = extract.extract_features

    def spy(*args, **kwargs):
        sizes.append(kwargs["batch_size"])
        return real_extract(*args, **kwargs)

    monkeypatch.setattr(extract, "extract_features", spy)
    report = _index(gallery, hnsw, tmp_path / "from-config")
    assert report["kind"] == "hnsw" and report["factory"] == "HNSW32,Flat" and sizes == [3]
    assert json.loads((tmp_path / "from-config" / "meta.json").read_text())["kind"] == "hnsw"

    report = _index(gallery, hnsw, tmp_path / "overridden", "--kind", "flat", "--batch-size", "5")
    assert report["kind"] == "flat" and report["factory"] == "Flat" and sizes == [3, 5]

    # --add without --kind: no "--kind ... ignored" notice about a kind nobody asked for
    again = _index(gallery, hnsw, tmp_path / "overridden", "--add")
    assert again["kind"] == "flat" and not any("ignored" in n for n in again["notices"])
    again = _index(gallery, hnsw, tmp_path / "overridden", "--add", "--kind", "ivf")
    assert any("--kind ivf ignored" in n for n in again["notices"])


def test_index_settings_fill_only_what_is_not_given() -> None:
    from mclnet_cli.config import IndexConfig
    from mclnet_cli.engine.indexing import resolve_index_settings

    config = IndexConfig(kind="ivf", batch_size=8, nlist=20, nprobe=None, hnsw_m=16, pq_m=None)
    settings = resolve_index_settings(config, kind="ivfpq", nprobe=4)
    assert (settings.kind, settings.batch_size, settings.nlist, settings.nprobe) == ("ivfpq", 8, 20, 4)
    assert (settings.hnsw_m, settings.pq_m) == (16, None)
    assert resolve_index_settings(IndexConfig()).nlist is None  # automatic, by gallery size


def test_index_options_nlist_and_bad_config_values(tmp_path: Path, checkpoint: Path) -> None:
    from mclnet_cli.config import ConfigError

    with pytest.raises(ConfigError, match="index.nlist must be at least 1"):
        load_config("tiny", ["index.nlist=0"])
    # --nlist reaches the planner: too many cells for 8 images is clamped, then falls back to flat, with notices
    gallery = tmp_path / "g"
    _sysu_tree(gallery, cam=1, per_person=1, gray=False)
    report = _index(gallery, checkpoint, tmp_path / "idx", "--kind", "ivf", "--nlist", "64")
    assert report["kind"] == "flat"
    assert any("nlist 64 needs" in n for n in report["notices"]) and any("using flat" in n for n in report["notices"])


def test_index_errors_are_one_line(tmp_path: Path, gallery: Path, checkpoint: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["index", str(empty), "-c", str(checkpoint), "-m", "visible", "-o", str(tmp_path / "i1")], "no image files"),
        (["index", str(tmp_path / "nope"), "-c", str(checkpoint), "-m", "visible", "-o", str(tmp_path / "i2")], "not found"),
        (["index", str(gallery), "-c", str(tmp_path / "x.pt"), "-m", "visible", "-o", str(tmp_path / "i3")], "checkpoint not found"),
        (["index", str(gallery), "-c", str(checkpoint), "-m", "uv", "-o", str(tmp_path / "i4")], "unknown modality"),
        (["index", str(gallery), "-c", str(checkpoint), "-m", "visible", "-o", str(gallery)], "not an mclnet index"),
    ]
    for args, message in cases:
        result = runner.invoke(app, [*args, "--device", "cpu"])
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output


def _live_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.startswith(".")}


def test_remove_then_query_never_returns_the_removed_images(
    tmp_path: Path, gallery: Path, probes: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "idx"
    _index(gallery, checkpoint, out)
    before = _query(out, str(probes), "--modality", "infrared")
    one = gallery / "cam1" / "0001" / "0001.jpg"
    monkeypatch.chdir(gallery.parent)  # a folder named relative to here: every record under it goes
    result = runner.invoke(app, ["index", "--remove", str(one), "gallery/cam1/0002", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"index": str(out), "kind": "flat", "removed": 3, "count": 5}
    gone = {str(one.resolve())} | {str(p.resolve()) for p in (gallery / "cam1" / "0002").iterdir()}
    after = _query(out, str(probes), "--modality", "infrared")
    for old_row, new_row in zip(before, after):
        old = {h["path"]: h["score"] for h in old_row["results"]}
        new = {h["path"]: h["score"] for h in new_row["results"]}
        assert set(new) == set(old) - gone and len(new) == 5
        assert all(new[path] == pytest.approx(old[path], abs=1e-6) for path in new)  # the others keep their scores
    text = runner.invoke(app, ["index", "--remove", str(gallery / "cam1" / "0003"), "-o", str(out)])
    assert text.exit_code == 0 and "removed 2 image(s)" in text.stdout and "(3 left, flat)" in text.stdout


def test_removing_a_path_not_in_the_index_fails_and_changes_nothing(tmp_path: Path, gallery: Path, checkpoint: Path) -> None:
    out = tmp_path / "idx"
    _index(gallery, checkpoint, out)
    before = _live_files(out)
    known = gallery / "cam1" / "0001" / "0001.jpg"
    missing = tmp_path / "elsewhere.jpg"
    result = runner.invoke(app, ["index", "--remove", str(known), str(missing), "-o", str(out)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{missing} is not in the index {out}" in errors[0], result.output
    assert _live_files(out) == before
    # usage errors: nothing runs
    assert runner.invoke(app, ["index", "--remove", str(known), "-o", str(out), "--add"]).exit_code == 2
    assert runner.invoke(app, ["index", str(gallery), "-m", "visible", "-o", str(tmp_path / "new")]).exit_code == 2
    assert runner.invoke(app, ["index", str(gallery), str(gallery), "-c", str(checkpoint), "-m", "visible", "-o", str(out)]).exit_code == 2
    assert _live_files(out) == before and not (tmp_path / "new").exists()


def test_an_add_of_the_other_spectrum_is_refused_before_embedding(tmp_path: Path, gallery: Path, probes: Path, checkpoint: Path) -> None:
    out = tmp_path / "idx"
    _index(gallery, checkpoint, out)
    before = _live_files(out)
    args = ["index", str(probes), "-c", str(checkpoint), "-m", "infrared", "-o", str(out), "--add", "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert f"error: {out} indexes visible images; cannot add infrared ones (use another --out)" in result.output
    assert "embedding" not in result.output and _live_files(out) == before


# --------------------------------------------------------------------------- query


def test_query_json_shape_and_cross_spectrum_retrieval(
    tmp_path: Path, gallery: Path, probes: Path, checkpoint: Path
) -> None:
    out = tmp_path / "idx"
    _index(gallery, checkpoint, out)
    results = _query(out, str(probes), "--modality", "infrared", "--top-k", "3")
    assert [Path(r["probe"]).parent.name for r in results] == ["0001", "0002", "0003", "0004"]
    for row in results:
        assert {"probe", "results"} <= set(row)
        assert row["index"] == str(out) and row["feature"] == "bn" and row["checkpoint"] == str(checkpoint.resolve())
        assert row["probe_modality"] == "infrared" and row["gallery_modality"] == "visible"
        assert [h["rank"] for h in row["results"]] == [1, 2, 3]
        assert all(set(h) == HIT_KEYS for h in row["results"])
        scores = [h["score"] for h in row["results"]]
        assert scores == sorted(scores, reverse=True)
    # each person has two gallery copies among eight images: chance of rank-1 is 1/4
    rank1 = [int(Path(r["probe"]).parent.name) == r["results"][0]["pid"] for r in results]
    assert sum(rank1) == 4
    top2 = [{h["pid"] for h in r["results"][:2]} == {int(Path(r["probe"]).parent.name)} for r in results]
    assert sum(top2) >= 3


def test_query_mmap_searches_the_mapped_file_with_the_same_results(
    tmp_path: Path, gallery: Path, probes: Path, checkpoint: Path
) -> None:
    out = tmp_path / "idx"
    _index(gallery, checkpoint, out)
    read = _query(out, str(probes), "--modality", "infrared", "--no-mmap")
    mapped = _query(out, str(probes), "--modality", "infrared", "--mmap")
    assert {row["mapped"] for row in read} == {False} and {row["mapped"] for row in mapped} == {True}
    assert [row["results"] for row in mapped] == [row["results"] for row in read]
    assert {row["mapped"] for row in _query(out, str(probes), "--modality", "infrared")} == {False}  # small: read


def test_query_single_files_and_text_table(tmp_path: Path, gallery: Path, probes: Path, checkpoint: Path) -> None:
    out = tmp_path / "idx"
    _index(gallery, checkpoint, out)
    probe = probes / "cam3" / "0002" / "0001.jpg"
    result = runner.invoke(app, ["query", str(probe), "-i", str(out), "-m", "ir", "-k", "2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "pid 2, cam 3" in result.output and "0002" in result.output
    assert "note:" not in result.output  # cross-spectrum: no note


def test_same_modality_query_prints_a_note(tmp_path: Path, gallery: Path, checkpoint: Path) -> None:
    out = tmp_path / "idx"
    _index(gallery, checkpoint, out)
    probe = gallery / "cam1" / "0003" / "0001.jpg"
    result = runner.invoke(app, ["query", str(probe), "-i", str(out), "-m", "visible", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    assert "same-spectrum" in result.output
    (row,) = json.loads(result.stdout)
    assert row["results"][0]["path"] == str(probe.resolve()) and row["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_save_writes_a_ranked_list_picture(tmp_path: Path, gallery: Path, probes: Path, checkpoint: Path) -> None:
    from mclnet_cli.index import picture

    out = tmp_path / "idx"
    _index(gallery, checkpoint, out)
    png = tmp_path / "pics" / "ranked.png"
    results = _query(out, str(probes), "-m", "infrared", "-k", "3", "--save", str(png))
    image = Image.open(png).convert("RGB")
    cell_w, cell_h = 64 + 2 * picture.BORDER, 128 + 2 * picture.BORDER
    rows_h = 4 * (cell_h + picture.CAPTION + picture.GAP)
    assert image.width == picture.GAP + cell_w + picture.SEPARATOR + 3 * (cell_w + picture.GAP)
    legend_h = image.height - picture.GAP - rows_h
    assert 0 < legend_h < 60  # the legend above the rows
    top = legend_h + picture.GAP
    assert image.getpixel((picture.GAP, top)) == picture.PROBE  # probe outline
    first_left = picture.GAP + cell_w + picture.SEPARATOR
    expected = picture.MATCH if results[0]["results"][0]["pid"] == 1 else picture.MISMATCH
    assert image.getpixel((first_left, top)) == expected


def test_outline_colours() -> None:
    from mclnet_cli.index.picture import MATCH, MISMATCH, UNKNOWN, outline_colour

    assert outline_colour(3, 3) == MATCH and outline_colour(3, 4) == MISMATCH
    assert outline_colour(None, 3) == UNKNOWN and outline_colour(3, None) == UNKNOWN


def test_query_with_another_checkpoint_is_refused(
    tmp_path: Path, gallery: Path, probes: Path, checkpoint: Path, make_checkpoint: CheckpointFactory
) -> None:
    out = tmp_path / "idx"
    _index(gallery, checkpoint, out)
    other = make_checkpoint(tmp_path / "other.pt", seed=1)
    result = runner.invoke(app, ["query", str(probes), "-i", str(out), "-m", "infrared", "-c", str(other), "--device", "cpu"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "is not the one that built" in result.output and len(result.output.strip().splitlines()) == 1
    # the same file moved elsewhere is accepted
    moved = shutil.copy(checkpoint, tmp_path / "moved.pt")
    assert len(_query(out, str(probes), "-m", "infrared", "-c", str(moved))) == 4


def test_query_hashes_the_checkpoint_once(
    tmp_path: Path, gallery: Path, probes: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mclnet_cli.engine import checkpoint as checkpoint_module

    _index(gallery, checkpoint, tmp_path / "idx")
    hashed: list[str] = []
    real = checkpoint_module.file_fingerprint

    def counting(path, *args, **kwargs):
        hashed.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "file_fingerprint", counting)
    assert len(_query(tmp_path / "idx", str(probes), "-m", "infrared")) == 4
    assert len(hashed) == 1


def test_query_refuses_a_feature_dimension_mismatch(tmp_path: Path, probes: Path, checkpoint: Path) -> None:
    records = [IndexRecord(f"/g/{i}.jpg", "visible") for i in range(4)]
    extra = {"modality": "visible", "checkpoint": {"path": str(checkpoint)}}  # no fingerprint recorded
    GalleryIndex.build(np.eye(4, 16), records, extra=extra).save(tmp_path / "idx16")
    result = runner.invoke(app, ["query", str(probes), "-i", str(tmp_path / "idx16"), "-m", "ir", "--device", "cpu"])
    assert result.exit_code == 1 and f"{_dim(checkpoint)}-d features" in result.output and "16-d" in result.output


def test_query_errors_are_one_line(tmp_path: Path, gallery: Path, probes: Path, checkpoint: Path) -> None:
    out = tmp_path / "idx"
    _index(gallery, checkpoint, out)
    (tmp_path / "readme.txt").write_text("x")
    cases = [
        (["query", str(probes), "-i", str(tmp_path / "none"), "-m", "ir"], "index not found"),
        (["query", str(tmp_path / "missing.jpg"), "-i", str(out), "-m", "ir"], "probe not found"),
        (["query", str(tmp_path / "readme.txt"), "-i", str(out), "-m", "ir"], "not an image file"),
    ]
    for args, message in cases:
        result = runner.invoke(app, [*args, "--device", "cpu"])
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output and "Traceback" not in result.output


# --------------------------------------------------------------------------- Python API


def test_service_api_without_the_cli(tmp_path: Path, gallery: Path, probes: Path, checkpoint: Path) -> None:
    report = build_gallery_index(checkpoint, gallery, "visible", tmp_path / "idx", device="cpu", batch_size=3)
    assert report.count == 8 and report.skipped == [] and not report.appended
    found = search_gallery(tmp_path / "idx", [probes / "cam3" / "0004" / "0001.jpg"], "infrared", top_k=2, device="cpu")
    (result,) = found.results
    assert result.pid == 4 and result.cam == 3 and len(result.hits) == 2
    assert result.hits[0].pid == 4 and found.notices == []
