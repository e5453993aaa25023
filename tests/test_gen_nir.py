"""The active-NIR generator of benchmarks/gen_nir.py writes what ``mclnet prepare sysu`` reads, and draws what it claims."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gen_nir  # noqa: E402
from gen_nir import generate_nir  # noqa: E402


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_nir_set_prepares_with_the_sysu_reader(tmp_path) -> None:
    from mclnet_cli.data.prepare import prepare_dataset
    from mclnet_cli.data.records import Modality, load_prepared

    summary = generate_nir(tmp_path / "raw", ids=12, seed=3, images_per_camera=1)
    report = prepare_dataset("sysu", tmp_path / "raw", tmp_path / "prepared", workers=1)
    assert not report.bad and not report.single_modality_ids
    samples = load_prepared(tmp_path / "prepared").samples
    assert len(samples) == summary["images"]
    splits = {split: {s.pid for s in samples if s.split == split} for split in ("train", "val", "test")}
    assert [len(v) for v in splits.values()] == [7, 1, 4]
    assert not (splits["train"] & splits["val"]) and not (splits["train"] & splits["test"]) and not (splits["val"] & splits["test"])
    for pid in range(1, 13):
        mods = {s.modality for s in samples if s.pid == pid}
        assert mods == {Modality.VISIBLE, Modality.INFRARED}
    infrared = [s for s in samples if s.modality is Modality.INFRARED]
    visible = [s for s in samples if s.modality is Modality.VISIBLE]
    for sample in infrared:
        pixels = _pixels(Path(sample.path))
        assert pixels.shape == (128, 64, 3)
        assert np.abs(pixels[..., 0] - pixels[..., 1]).max() <= 3 and np.abs(pixels[..., 1] - pixels[..., 2]).max() <= 3
    # visible frames are in colour
    assert max(np.abs(_pixels(Path(s.path))[..., 0] - _pixels(Path(s.path))[..., 2]).mean() for s in visible) > 5
    exp = tmp_path / "raw" / "exp"
    assert (exp / "train_id.txt").read_text() == ",".join(str(p) for p in sorted(splits["train"])) + "\n"


def test_nir_set_is_deterministic(tmp_path) -> None:
    generate_nir(tmp_path / "a", ids=10, seed=1, images_per_camera=1)
    generate_nir(tmp_path / "b", ids=10, seed=1, images_per_camera=1)
    generate_nir(tmp_path / "c", ids=10, seed=2, images_per_camera=1)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) > 40
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    shared = [f for f in files if (tmp_path / "c" / f).is_file() and f.suffix == ".jpg"]
    assert shared and all((tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes() for f in shared)


def test_images_vary_within_and_between_identities(tmp_path) -> None:
    generate_nir(tmp_path / "raw", ids=6, seed=0, images_per_camera=2)
    root = tmp_path / "raw"
    for pid in range(1, 7):
        for cam in gen_nir.INFRARED:
            folder = root / f"cam{cam}" / f"{pid:04d}"
            if folder.is_dir():  # two shots of one person in NIR differ (pose, crop, noise)
                a, b = _pixels(folder / "0001.jpg"), _pixels(folder / "0002.jpg")
                assert np.abs(a - b).mean() > 3
    firsts = [next(iter(sorted(root.glob(f"cam[1245]/{pid:04d}/0001.jpg")))) for pid in range(1, 7)]
    for i in range(len(firsts)):
        for j in range(i + 1, len(firsts)):
            assert np.abs(_pixels(firsts[i]) - _pixels(firsts[j])).mean() > 5


def test_nir_reflectance_is_material_based() -> None:
    rng = np.random.default_rng(0)
    luminance = lambda m: float(np.dot(m.rgb, (0.2126, 0.7152, 0.0722)))  # noqa: E731
    dyed = [gen_nir.fabric(rng, "dyed") for _ in range(400)]
    r = np.corrcoef([luminance(m) for m in dyed], [m.nir for m in dyed])[0, 1]
    assert abs(r) < 0.2  # the colour of a dyed fabric says nothing about its NIR
    black = [gen_nir.fabric(rng, "black_synthetic") for _ in range(100)]
    assert all(m.nir < 0.15 and luminance(m) < 0.12 for m in black)  # dark in both
    skins = [gen_nir.skin(rng) for _ in range(200)]
    tones = [luminance(m) for m in skins]
    assert max(tones) - min(tones) > 0.3 and min(m.nir for m in skins) > 0.55  # every tone is bright in NIR
    leather = [gen_nir.fabric(rng, "leather") for _ in range(200)]
    assert np.corrcoef([luminance(m) for m in leather], [m.nir for m in leather])[0, 1] > 0.5


def test_lamp_falls_off_and_cameras_differ() -> None:
    scene = gen_nir.Scene()
    scene.add(np.ones((gen_nir.H, gen_nir.W), np.float32), gen_nir.Material((0.5, 0.5, 0.5), 0.5), "person")
    out = {}
    for cam in gen_nir.INFRARED:
        traits = gen_nir.camera_traits(cam, 0)
        shots = [gen_nir._infrared(scene, traits, np.random.default_rng(k)) for k in range(2)]
        centre = float(shots[0][48:80, 24:40].mean())
        corners = float(np.mean([shots[0][:12, :8].mean(), shots[0][:12, -8:].mean(), shots[0][-12:, :8].mean(), shots[0][-12:, -8:].mean()]))
        assert centre > corners + 0.1  # the on-camera lamp lights the middle
        out[cam] = (corners / centre, float(np.std(shots[0] - shots[1])))
    assert out[6][0] < out[3][0]  # camera 6's lamp is tighter
    assert out[6][1] > out[3][1]  # and its sensor noisier


def test_occluder_covers_a_part_of_the_person() -> None:
    hits = 0
    for k in range(20):
        rng = np.random.default_rng([k, 5])
        scene = gen_nir.Scene()
        person = gen_nir._person(scene, gen_nir.draw_identity(k + 1, 0), rng)
        gen_nir._occluder(scene, person, rng)
        occluders = [layer for layer in scene.layers if layer.group == "occluder"]
        if occluders:
            hits += 1
            covered = float((occluders[0].alpha * person).sum() / person.sum())
            assert 0.1 <= covered <= 0.3
    assert hits >= 10
