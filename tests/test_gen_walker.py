"""The articulated-walker generator of benchmarks/gen_walker.py: readable by ``prepare sysu``, deterministic, physical."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from gen_walker import draw_walker, generate_walker, render_with_mask  # noqa: E402


def test_walker_set_prepares_with_the_sysu_reader(tmp_path, check_generated_sysu_set) -> None:
    check_generated_sysu_set(generate_walker, tmp_path)


def test_walker_set_is_deterministic(tmp_path) -> None:
    generate_walker(tmp_path / "a", ids=10, seed=1, images_per_camera=1)
    generate_walker(tmp_path / "b", ids=10, seed=1, images_per_camera=1)
    generate_walker(tmp_path / "c", ids=10, seed=2, images_per_camera=1)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    jpgs = [f for f in files if f.suffix == ".jpg" and (tmp_path / "c" / f).is_file()]
    assert jpgs and any((tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes() for f in jpgs)


def _person_contrast(image: Image.Image, mask: np.ndarray) -> float:
    """Mean grey of the person minus the mean grey of the background."""
    grey = np.asarray(image.convert("L"), dtype=np.float64)
    return float(grey[mask > 0.9].mean() - grey[mask < 0.01].mean())


def test_camera_3_is_white_hot_and_camera_6_black_hot() -> None:
    for pid in range(1, 13):
        person = draw_walker(pid, np.random.default_rng([7, pid]))
        for cam, sign in ((3, 1), (6, -1)):
            image, mask = render_with_mask(person, cam, np.random.default_rng([7, pid, cam]))
            assert mask.shape == (128, 64) and (mask > 0.9).sum() > 300
            assert sign * _person_contrast(image, mask) > 10, (pid, cam)


def test_infrared_ignores_garment_colours_and_shows_insulation() -> None:
    person = draw_walker(4, np.random.default_rng([11, 4]))
    recoloured = dataclasses.replace(
        person, jacket_rgb=(1.0, 0.0, 0.0), shirt_rgb=(0.0, 1.0, 0.0), lower_rgb=(0.0, 0.0, 1.0),
        shoe_rgb=(1.0, 1.0, 1.0), print_rgb=(0.0, 0.0, 0.0), carry_rgb=(0.5, 0.5, 0.0), hair_rgb=(1.0, 0.0, 1.0),
        skin_rgb=(0.1, 0.1, 0.1),
    )
    for cam in (3, 6):
        a, _ = render_with_mask(person, cam, np.random.default_rng([11, cam]))
        b, _ = render_with_mask(recoloured, cam, np.random.default_rng([11, cam]))
        assert np.array_equal(np.asarray(a), np.asarray(b))
    a, _ = render_with_mask(person, 1, np.random.default_rng([11, 1]))
    b, _ = render_with_mask(recoloured, 1, np.random.default_rng([11, 1]))
    assert not np.array_equal(np.asarray(a), np.asarray(b))
    # A thicker jacket insulates more: its surface gets cooler, so the person gets darker on the white-hot camera.
    thin = dataclasses.replace(person, jacket="closed", jacket_clo=0.3, carry="none")
    thick = dataclasses.replace(thin, jacket_clo=2.5)
    means = []
    for who in (thin, thick):
        image, mask = render_with_mask(who, 3, np.random.default_rng([11, 3, 1]))
        means.append(float(np.asarray(image.convert("L"), dtype=np.float64)[mask > 0.9].mean()))
    assert means[0] > means[1] + 3
