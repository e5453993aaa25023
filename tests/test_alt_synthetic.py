"""The independent generator of benchmarks/alt_synthetic.py writes what ``mclnet prepare sysu`` reads."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from alt_synthetic import generate_alt  # noqa: E402


def test_alt_set_prepares_with_the_sysu_reader(tmp_path) -> None:
    from mclnet_cli.data.prepare import prepare_dataset
    from mclnet_cli.data.records import Modality, load_prepared

    summary = generate_alt(tmp_path / "raw", ids=12, seed=3, images_per_camera=1)
    report = prepare_dataset("sysu", tmp_path / "raw", tmp_path / "prepared", workers=1)
    assert not report.bad and not report.single_modality_ids
    samples = load_prepared(tmp_path / "prepared").samples
    assert len(samples) == summary["images"]
    splits = {split: {s.pid for s in samples if s.split == split} for split in ("train", "val", "test")}
    assert sum(len(v) for v in splits.values()) == 12 and not (splits["train"] & splits["test"])
    for pid in {s.pid for s in samples}:
        mods = {s.modality for s in samples if s.pid == pid}
        assert mods == {Modality.VISIBLE, Modality.INFRARED}
    infrared = [s for s in samples if s.modality is Modality.INFRARED]
    pixels = np.asarray(Image.open(infrared[0].path).convert("RGB"), dtype=np.int16)
    assert np.abs(pixels[..., 0] - pixels[..., 1]).max() <= 3  # grayscale (up to JPEG rounding)


def test_alt_set_is_deterministic(tmp_path) -> None:
    generate_alt(tmp_path / "a", ids=10, seed=1, images_per_camera=1)
    generate_alt(tmp_path / "b", ids=10, seed=1, images_per_camera=1)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
