"""The synthetic dataset: layout, determinism, and a real cross-modality signal."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mclnet_cli.cli.app import app
from mclnet_cli.data.sources import read_sysu
from mclnet_cli.data.synthetic import generate_synthetic
from mclnet_cli.errors import DataError


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "raw"
    generate_synthetic(root, ids=30, seed=0, images_per_camera=2)
    return root


def test_layout_and_splits(dataset: Path) -> None:
    samples = read_sysu(dataset)
    splits = {split: {s.pid for s in samples if s.split == split} for split in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [18, 3, 9]
    assert set().union(*splits.values()) == set(range(1, 31))
    for pid in splits["test"]:
        cams = {s.cam for s in samples if s.pid == pid}
        assert {1, 2, 3, 6} <= cams and cams & {4, 5}
    for s in samples:
        assert Path(s.path).name.endswith(".jpg") and len(Path(s.path).stem) == 4 and len(Path(s.path).parent.name) == 4
    ir = np.asarray(Image.open(next(s.path for s in samples if s.cam == 3)), dtype=np.int16)
    vis = np.asarray(Image.open(next(s.path for s in samples if s.cam == 1)), dtype=np.int16)
    assert np.abs(ir[..., 0] - ir[..., 1]).max() <= 3  # grayscale replicated (JPEG chroma rounding aside)
    assert np.abs(vis[..., 0] - vis[..., 2]).mean() > 5  # visible keeps colour


def test_same_seed_same_files_other_seed_differs(tmp_path: Path) -> None:
    generate_synthetic(tmp_path / "a", ids=10, seed=3, images_per_camera=1)
    generate_synthetic(tmp_path / "b", ids=10, seed=3, images_per_camera=1)
    generate_synthetic(tmp_path / "c", ids=10, seed=4, images_per_camera=1)
    a, b, c = (tree_digest(tmp_path / n) for n in "abc")
    assert a == b
    shared = set(a) & set(c)
    assert sum(a[k] != c[k] for k in shared) > 0.9 * len(shared)


def test_refuses_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(DataError, match="not empty"):
        generate_synthetic(tmp_path, ids=10)


def _load(samples, cams):
    pairs = [(s.pid, np.asarray(Image.open(s.path).convert("L"), dtype=np.float32) / 255) for s in samples if s.cam in cams]
    return np.array([p for p, _ in pairs]), np.stack([x for _, x in pairs])


def stripe_spectrum(images: np.ndarray) -> np.ndarray:
    """A hand-made feature: magnitude spectrum of the row profile of vertical edges (shift and sign invariant)."""
    edges = np.abs(np.diff(images, axis=1))[:, :, images.shape[2] // 4 : 3 * images.shape[2] // 4].mean(axis=2)
    edges -= edges.mean(axis=1, keepdims=True)
    spectrum = np.abs(np.fft.rfft(edges, axis=1))[:, 1:40]
    return spectrum / np.linalg.norm(spectrum, axis=1, keepdims=True)


def test_cross_modality_signal_beats_chance(dataset: Path) -> None:
    samples = read_sysu(dataset)
    query_ids, queries = _load(samples, (3, 6))
    gallery_ids, gallery = _load(samples, (1, 2, 4, 5))
    best = (stripe_spectrum(queries) @ stripe_spectrum(gallery).T).argmax(axis=1)
    rank1 = float((gallery_ids[best] == query_ids).mean())
    chance = 1 / 30
    assert rank1 > 4 * chance, rank1
    # Raw pixels do not transfer as well: colour and material brightness differ across spectra.
    flat_q = queries.reshape(len(queries), -1)
    flat_g = gallery.reshape(len(gallery), -1)
    raw = (gallery_ids[(-((flat_q[:, None, :] - flat_g[None]) ** 2).sum(-1)).argmax(axis=1)] == query_ids).mean()
    assert rank1 > raw, (rank1, raw)


def test_cli_synthetic_json(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["--quiet", "prepare", "synthetic", str(tmp_path / "syn"), "--ids", "10", "--images-per-camera", "1", "--seed", "5", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["dataset"] == "synthetic" and payload["seed"] == 5
    assert payload["out"] == str((tmp_path / "syn" / "prepared").resolve())
    meta = json.loads((tmp_path / "syn" / "prepared" / "meta.json").read_text())
    assert meta["dataset"] == "synthetic" and meta["counts"] == payload["counts"]
    assert sum(v["ids"] for v in (payload["counts"][s]["infrared"] for s in ("train", "val", "test"))) == 10
    again = CliRunner().invoke(app, ["--quiet", "prepare", "synthetic", str(tmp_path / "syn"), "--ids", "3"])
    assert again.exit_code != 0 and "Traceback" not in again.output
