"""Checkpoints (atomic, weights_only, rebuilt from their config) and feature extraction."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from mclnet_cli.config import load_config
from mclnet_cli.data.transforms import test_transform as make_test_transform
from mclnet_cli.engine.checkpoint import (
    checkpoint_payload,
    file_fingerprint,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from mclnet_cli.engine.extract import extract_features
from mclnet_cli.errors import CheckpointError, DataError
from mclnet_cli.model import build_model


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = load_config("tiny")
    model = build_model(cfg.model, num_classes=3).eval()
    return cfg, model


def _images(folder, n, seed=0):
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, (40, 20, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_round_trip_rebuilds_the_same_model(tmp_path, tiny):
    cfg, model = tiny
    path = save_checkpoint(tmp_path / "m.pt", checkpoint_payload(model, cfg, {10: 0, 20: 1, 30: 2}, epoch=4))
    loaded = load_model(path)
    assert loaded.config == cfg and loaded.label_map == {10: 0, 20: 1, 30: 2}
    assert loaded.payload["epoch"] == 4 and not loaded.model.training
    x = torch.randn(2, 3, cfg.data.height, cfg.data.width)
    with torch.no_grad():
        assert torch.allclose(loaded.model.embed(x, "ir"), model.embed(x, "ir"), atol=1e-6)
    assert loaded.fingerprint == file_fingerprint(path) and len(loaded.fingerprint) == 16


def test_failed_save_keeps_previous_file(tmp_path, tiny, monkeypatch):
    cfg, model = tiny
    path = save_checkpoint(tmp_path / "m.pt", checkpoint_payload(model, cfg, {1: 0}))
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        save_checkpoint(path, checkpoint_payload(model, cfg, {1: 0}, epoch=99))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temp file left behind


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_untrusted_and_foreign_files_are_refused(tmp_path):
    evil = tmp_path / "evil.pt"
    with evil.open("wb") as handle:
        pickle.dump({"format": "mclnet-checkpoint/1", "x": Evil()}, handle)
    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        load_checkpoint(evil)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not an mclnet checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_mismatched_weights_are_refused(tmp_path, tiny):
    cfg, model = tiny
    payload = checkpoint_payload(model, cfg, {1: 0, 2: 1, 3: 2})
    payload["config"]["model"]["arch"] = "resnet34"
    save_checkpoint(tmp_path / "m.pt", payload)
    with pytest.raises(CheckpointError, match="weights do not match"):
        load_model(tmp_path / "m.pt")


def test_extract_matches_embed_and_skips_bad_files(tmp_path, tiny):
    cfg, model = tiny
    paths = _images(tmp_path, 5)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    order = paths[:2] + [str(bad)] + paths[2:]
    seen = []
    out = extract_features(
        model, order, "visible", height=cfg.data.height, width=cfg.data.width, batch_size=2,
        feature=("bn", "pool"), skip_bad=True, on_progress=seen.append,
    )
    assert out.paths == paths and [p for p, _ in out.failed] == [str(bad)]
    assert sum(seen) == len(order)
    transform = make_test_transform(cfg.data.height, cfg.data.width)
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        for name in ("bn", "pool"):
            expected = model.embed(batch, "visible", feature=name).numpy()
            np.testing.assert_allclose(out.by_name[name], expected, atol=1e-5)
    assert out.features is out.by_name["bn"]
    np.testing.assert_allclose(np.linalg.norm(out.features, axis=1), 1.0, atol=1e-5)
    with pytest.raises(Exception, match="cannot decode"):
        extract_features(model, order, "visible", height=cfg.data.height, width=cfg.data.width)


def test_flip_averages_with_the_mirror(tmp_path, tiny):
    cfg, model = tiny
    paths = _images(tmp_path, 2, seed=1)
    kw = dict(height=cfg.data.height, width=cfg.data.width)
    plain = extract_features(model, paths, "infrared", **kw).features
    flipped = extract_features(model, paths, "infrared", flip=True, **kw).features
    transform = make_test_transform(cfg.data.height, cfg.data.width)
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        mirror = model.embed(torch.flip(batch, dims=[3]), "infrared").numpy()
    expected = plain + mirror
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(flipped, expected, atol=1e-5)
    assert not np.allclose(flipped, plain, atol=1e-4)


def test_bad_image_in_a_worker_is_one_clean_error(tmp_path, tiny):
    cfg, model = tiny
    paths = _images(tmp_path, 2)
    missing = str(tmp_path / "gone.jpg")
    with pytest.raises(DataError) as info:
        extract_features(model, paths + [missing], "visible", height=cfg.data.height, width=cfg.data.width, workers=1)
    assert "gone.jpg" in str(info.value) and "\n" not in str(info.value)
    assert "DataLoader worker" not in str(info.value)


def test_workers_are_capped_at_the_usable_cpus():
    import os

    from mclnet_cli.data.workers import usable_workers

    cpus = len(os.sched_getaffinity(0))
    assert usable_workers(0) == 0
    assert usable_workers(cpus + 7) == cpus
    assert usable_workers(1) == min(1, cpus)
