"""The crowded-street generator of benchmarks/gen_crowd.py: readable by ``prepare sysu``, deterministic, physical."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from gen_crowd import (  # noqa: E402
    RIGS,
    Dye,
    _Place,
    draw_pedestrian,
    generate_crowd,
    nir_reflectance,
    render_frame,
)


def _people(seed: int, n: int = 12):
    return [draw_pedestrian(pid, np.random.default_rng([seed, pid])) for pid in range(1, n + 1)]


def test_crowd_set_prepares_with_the_sysu_reader(tmp_path, check_generated_sysu_set) -> None:
    summary, _ = check_generated_sysu_set(generate_crowd, tmp_path, every_visible_in_colour=True)
    assert 0 < summary["with_others"] < summary["images"]  # other pedestrians in some images, not all


def test_crowd_set_is_deterministic(tmp_path) -> None:
    generate_crowd(tmp_path / "a", ids=10, seed=1, images_per_camera=1)
    generate_crowd(tmp_path / "b", ids=10, seed=1, images_per_camera=1)
    generate_crowd(tmp_path / "c", ids=10, seed=2, images_per_camera=1)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) > 30
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    jpgs = [f for f in files if f.suffix == ".jpg" and (tmp_path / "c" / f).is_file()]
    assert jpgs and all((tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes() for f in jpgs)


def test_other_pedestrians_appear_in_some_frames_and_never_dominate() -> None:
    people = _people(5)
    crowded = empty = 0
    for i, person in enumerate(people):
        for cam in RIGS:
            frame = render_frame(person, cam, np.random.default_rng([5, i, cam]), people)
            assert frame.person.shape == frame.crowd.shape == (128, 64)
            area = float(frame.person.sum())
            assert area > 600, (i, cam)
            assert float(frame.crowd.sum()) < area, (i, cam)  # the person stays the largest figure
            ys, xs = np.nonzero(frame.person > 0.5)
            assert 20 < xs.mean() < 44, (i, cam)  # and the centred one
            if frame.others == 0:
                assert frame.crowd.max() == 0.0
                empty += 1
            elif frame.crowd.sum() > 50:
                crowded += 1
    assert crowded >= 10 and empty >= 10


def test_thermal_ignores_garment_colours_that_visible_and_nir_see() -> None:
    people = _people(11)
    person = people[3]
    recoloured = dataclasses.replace(
        person, upper_a=Dye(0.0, 1.0, 1.0), upper_b=Dye(0.33, 1.0, 0.5, True), lower_dye=Dye(0.66, 1.0, 0.8),
        shoe=Dye(0.1, 0.0, 1.0), accessory_dye=Dye(0.5, 0.9, 0.9), head_dye=Dye(0.8, 0.9, 0.3), bag_dye=Dye(0.2, 1.0, 1.0),
        ink=Dye(0.9, 1.0, 0.1, True), hair=Dye(0.8, 1.0, 1.0), skin_rgb=(0.1, 0.1, 0.1),
    )
    for cam, same in ((6, True), (1, False), (4, False), (3, False)):
        a = render_frame(person, cam, np.random.default_rng([11, cam]), people)
        b = render_frame(recoloured, cam, np.random.default_rng([11, cam]), people)
        assert np.array_equal(a.person, b.person)  # the same geometry
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image)) is same, cam


def test_thicker_garments_are_cooler_on_the_thermal_camera() -> None:
    base = dataclasses.replace(_people(13)[2], texture="none", long_sleeves=True, bag="none")
    means = []
    for mm in (0.5, 14.0):
        who = dataclasses.replace(base, upper_mm=mm, lower_mm=mm)
        frame = render_frame(who, 6, np.random.default_rng([13, 6]))
        grey = np.asarray(frame.image.convert("L"), dtype=np.float64)
        means.append(float(grey[frame.person > 0.9].mean()))
    assert means[0] > means[1] + 8


def test_nir_reflectance_is_a_fixed_nonlinear_function_of_hue() -> None:
    hues = np.linspace(0.0, 1.0, 200, endpoint=False)
    r = np.array([nir_reflectance(Dye(float(h), 1.0, 0.6)) for h in hues])
    # saturated dyes: the value does not matter, the hue does, and not monotonically or linearly
    assert all(nir_reflectance(Dye(float(h), 1.0, 0.1)) == pytest.approx(x, abs=1e-9) for h, x in zip(hues[::20], r[::20]))
    assert r.max() - r.min() > 0.3
    steps = np.sign(np.diff(r))
    assert (steps > 0).any() and (steps < 0).any()
    assert np.abs(r - np.polyval(np.polyfit(hues, r, 1), hues)).max() > 0.1
    # greys follow their lightness; synthetic fibres are dark
    assert nir_reflectance(Dye(0.3, 0.0, 0.9)) > nir_reflectance(Dye(0.3, 0.0, 0.2)) + 0.4
    assert all(nir_reflectance(Dye(float(h), 0.7, 0.7, True)) < 0.5 * nir_reflectance(Dye(float(h), 0.7, 0.7)) + 1e-9 for h in hues)
    # ... and the camera shows it: a synthetic upper garment makes the person darker on camera 3
    person = dataclasses.replace(_people(17)[1], layout="plain", texture="none", upper_a=Dye(0.0, 0.0, 0.9), upper_mm=3.0)
    dark = dataclasses.replace(person, upper_a=Dye(0.0, 0.0, 0.9, True))
    means = []
    for who in (person, dark):
        frame = render_frame(who, 3, np.random.default_rng([17, 3]))
        means.append(float(np.asarray(frame.image.convert("L"), dtype=np.float64)[frame.person > 0.9].mean()))
    assert means[0] > means[1] + 10


def test_high_cameras_magnify_the_head_relative_to_the_legs() -> None:
    gy = (np.arange(128, dtype=np.float32) + 0.5)[:, None]
    gx = (np.arange(64, dtype=np.float32) + 0.5)[None, :]

    def rows(cam: int) -> tuple[float, float, np.ndarray]:
        place = _Place(gy, gx, 1.0, 120.0, 32.0, 55.0, RIGS[cam])
        h = place.h[:, 0]
        at = lambda level: float(np.interp(level, h[::-1], gy[::-1, 0]))  # noqa: E731 - h falls down the rows
        legs, head = at(0.0) - at(0.85), at(1.5) - at(1.75)
        return head / legs, float(place.pxm[int(at(1.7)), 0] / place.pxm[int(at(0.05)), 0]), h

    flat_ratio, flat_gain, h1 = rows(1)
    high_ratio, high_gain, h2 = rows(2)
    assert abs(flat_gain - 1.0) < 1e-6 and high_gain > 1.3
    assert high_ratio > 1.3 * flat_ratio
    assert np.all(np.diff(h1) < 0) and np.all(np.diff(h2) < 0)  # height above the feet falls down the image


def test_passers_by_come_from_the_persons_own_split(tmp_path, monkeypatch) -> None:
    """No held-out identity appears in a training image (``passers_by="any"``: the first version did)."""
    import gen_crowd

    seen: dict[int, set[int]] = {}
    real = gen_crowd.render_frame

    def recording(p, cam, rng, crowd=()):
        seen.setdefault(p.pid, set()).update(q.pid for q in crowd)
        return real(p, cam, rng, crowd)

    monkeypatch.setattr(gen_crowd, "render_frame", recording)
    splits = {}
    for mode in ("split", "any"):
        seen.clear()
        root = tmp_path / mode
        gen_crowd.generate_crowd(root, ids=20, seed=2, images_per_camera=1, passers_by=mode)
        splits = {name: {int(v) for v in (root / "exp" / name).read_text().strip().split(",")}
                  for name in ("train_id.txt", "val_id.txt", "test_id.txt")}
        own = {pid: members for members in splits.values() for pid in members}
        crossing = {pid for pid, pool in seen.items() if pool - own[pid]}
        if mode == "split":
            assert seen and not crossing and all(pool for pid, pool in seen.items() if len(own[pid]) > 1)
        else:
            assert crossing  # the first version's draw: other splits' people in the pool
    with pytest.raises(SystemExit, match="passers_by"):
        gen_crowd.generate_crowd(tmp_path / "bad", ids=12, seed=0, images_per_camera=1, passers_by="train")
