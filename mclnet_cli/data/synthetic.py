"""A small procedural cross-spectrum person dataset, written in the SYSU-MM01 layout.

Identity lives in cues that survive the change of spectrum: body height and
build, the garment pattern (stripes or checks at an identity-specific
frequency), the garment material (its infrared brightness) and a carried
object. Colour is a visible-only cue: the infrared brightness of a garment is
drawn independently of its colour. Pose, position, scale, background and
illumination change per image and camera; infrared images are grayscale
(replicated to 3 channels) with blur and noise. Everything is deterministic for
a seed, so tests and demos can rely on it.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image, ImageFilter

from mclnet_cli.atomic import PROCESS_START, readdress
from mclnet_cli.data.sources.sysu import CAMERAS, INFRARED_CAMS, SPLIT_FILES
from mclnet_cli.errors import DataError

HEIGHT, WIDTH = 128, 64
MARKER = ".mclnet-synthetic"
STAGING_PREFIX = ".mclnet-synthetic-partial."  # the tree is drawn in DIR/.mclnet-synthetic-partial.<random>.tmp
PATTERNS = ("hstripes", "vstripes", "checks", "solid")
CARRIED = ("none", "backpack", "handbag", "box")
SPLIT_FRACTIONS = {"train": 0.6, "val": 0.1}  # the rest is test


@dataclass(frozen=True)
class Identity:
    """Appearance of one synthetic person; fractions are relative to the image size."""

    pid: int
    height: float  # head top to feet, fraction of image height
    shoulder: float  # half shoulder width, fraction of image width
    head: float  # head radius, fraction of image width
    legs: float  # leg length, fraction of body height
    pattern: str
    frequency: float  # pattern cycles over the torso
    top_ir: tuple[float, float]  # infrared brightness of the two pattern materials
    top_rgb: tuple[tuple[float, float, float], tuple[float, float, float]]
    bottom_ir: float
    bottom_rgb: tuple[float, float, float]
    skin_rgb: tuple[float, float, float]
    skin_ir: float
    carried: str
    carried_side: int  # -1 left, +1 right
    carried_ir: float
    carried_rgb: tuple[float, float, float]


def draw_identity(pid: int, rng: np.random.Generator) -> Identity:
    """Sample the appearance of one person."""
    pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
    low = float(rng.uniform(0.05, 0.45))
    high = float(min(1.0, low + rng.uniform(0.35, 0.6)))
    top_ir = (high, low) if rng.random() < 0.5 else (low, high)
    if pattern == "solid":
        top_ir = (top_ir[0], top_ir[0])
    colour = lambda: tuple(float(c) for c in rng.uniform(0.05, 0.95, size=3))  # noqa: E731
    return Identity(
        pid=pid,
        height=float(rng.uniform(0.62, 0.9)),
        shoulder=float(rng.uniform(0.14, 0.26)),
        head=float(rng.uniform(0.07, 0.1)),
        legs=float(rng.uniform(0.4, 0.52)),
        pattern=pattern,
        frequency=float(rng.integers(2, 9)),
        top_ir=top_ir,
        top_rgb=(colour(), colour()),
        bottom_ir=float(rng.uniform(0.05, 0.9)),
        bottom_rgb=colour(),
        skin_rgb=tuple(float(c) for c in np.array([0.9, 0.72, 0.6]) * rng.uniform(0.45, 1.05)),
        skin_ir=float(rng.uniform(0.7, 0.9)),
        carried=CARRIED[int(rng.integers(len(CARRIED)))],
        carried_side=1 if rng.random() < 0.5 else -1,
        carried_ir=float(rng.uniform(0.0, 1.0)),
        carried_rgb=colour(),
    )


def _segment_mask(yy: np.ndarray, xx: np.ndarray, p0: tuple[float, float], p1: tuple[float, float], radius: float) -> np.ndarray:
    """Pixels within ``radius`` of the segment p0-p1 (points as (y, x))."""
    (y0, x0), (y1, x1) = p0, p1
    dy, dx = y1 - y0, x1 - x0
    length2 = dy * dy + dx * dx or 1.0
    t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / length2, 0.0, 1.0)
    return (yy - (y0 + t * dy)) ** 2 + (xx - (x0 + t * dx)) ** 2 <= radius * radius


def _background(yy: np.ndarray, channels: int, cam: int, rng: np.random.Generator) -> np.ndarray:
    """A camera-specific scene [H, W, channels], varied per image, with a few clutter boxes."""
    H, W = yy.shape
    scene = np.random.default_rng(cam * 7919)
    base = scene.uniform(0.15, 0.55, size=channels) + rng.normal(0, 0.06, size=channels)
    slope = rng.normal(0, 0.25, size=channels)
    canvas = base[None, None, :] + slope[None, None, :] * (yy[..., None] / H - 0.5)
    for _ in range(int(rng.integers(1, 4))):
        y0, x0 = rng.integers(0, H - 10), rng.integers(0, W - 8)
        h, w = rng.integers(8, 40), rng.integers(6, 24)
        canvas[y0 : y0 + h, x0 : x0 + w] = rng.uniform(0.05, 0.8, size=channels)
    return canvas


def _pattern(person: Identity, v: np.ndarray, u: np.ndarray, phase: float) -> np.ndarray:
    """Where the garment shows its first colour, in torso coordinates ``v`` (down) and ``u`` (across)."""
    if person.pattern == "hstripes":
        return np.sin(2 * np.pi * (person.frequency * v + phase)) > 0
    if person.pattern == "vstripes":
        return np.sin(2 * np.pi * (person.frequency * u * 0.5 + phase)) > 0
    if person.pattern == "checks":
        return (np.sin(2 * np.pi * person.frequency * v) > 0) ^ (np.sin(np.pi * person.frequency * u) > 0)
    return np.zeros_like(v, dtype=bool)


def _camera(canvas: np.ndarray, infrared: bool, mirror: bool, rng: np.random.Generator) -> Image.Image:
    """Illumination, sensor noise, mirroring and blur; infrared comes out as replicated grayscale."""
    if infrared:
        canvas = canvas * rng.uniform(0.75, 1.15) + rng.uniform(-0.08, 0.08)
        canvas = canvas + rng.normal(0, rng.uniform(0.03, 0.07), size=canvas.shape)
        blur = rng.uniform(0.7, 1.4)
    else:
        canvas = canvas * rng.uniform(0.6, 1.25, size=3)[None, None, :] * rng.uniform(0.8, 1.1)
        canvas = canvas + rng.normal(0, 0.015, size=canvas.shape)
        blur = rng.uniform(0.0, 0.6)
    pixels = (np.clip(canvas, 0, 1) * 255 + 0.5).astype(np.uint8)
    if infrared:
        pixels = np.repeat(pixels, 3, axis=2)
    image = Image.fromarray(pixels, mode="RGB")
    if mirror:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    if blur > 0.2:
        image = image.filter(ImageFilter.GaussianBlur(blur))
    return image


def render(person: Identity, infrared: bool, cam: int, rng: np.random.Generator) -> Image.Image:
    """One image of ``person`` from camera ``cam``: RGB, infrared as replicated grayscale."""
    H, W = HEIGHT, WIDTH
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    canvas = _background(yy, 1 if infrared else 3, cam, rng)

    def paint(mask: np.ndarray, value: np.ndarray | tuple[float, ...] | float) -> None:
        value = np.asarray(value, dtype=np.float32)
        if value.ndim == 1 and infrared:  # colour given for visible; not used in infrared
            value = value.mean(keepdims=True)
        canvas[mask] = value if value.ndim < 2 else value[mask]

    # Geometry, with per-image scale, position and pose.
    scale = rng.uniform(0.93, 1.05)
    body = person.height * H * scale
    feet = H * rng.uniform(0.9, 0.98)
    top = feet - body
    cx = W / 2 + rng.uniform(-6, 6)
    head_r = person.head * W * scale
    shoulder = person.shoulder * W * scale
    hip_y = feet - person.legs * body
    neck_y = top + 2 * head_r
    waist = shoulder * 0.8
    stride = rng.uniform(-0.12, 0.12) * body * 0.5
    limb = shoulder * 0.38
    mirror = rng.random() < 0.5
    side = -person.carried_side if mirror else person.carried_side

    top_value = np.array(person.top_ir, dtype=np.float32)[:, None] if infrared else np.array(person.top_rgb, dtype=np.float32)
    bottom = (person.bottom_ir,) if infrared else person.bottom_rgb
    skin = (person.skin_ir,) if infrared else person.skin_rgb
    carried = (person.carried_ir,) if infrared else person.carried_rgb

    if person.carried == "backpack":
        paint((np.abs(xx - (cx + side * shoulder * 0.95)) < shoulder * 0.45) & (yy > neck_y + 2) & (yy < neck_y + (hip_y - neck_y) * 0.8), carried)
    # Legs (two capsules, spread by the stride) and shoes.
    for sign in (-1, 1):
        foot = (feet - limb, cx + sign * (waist * 0.45) + sign * stride)
        paint(_segment_mask(yy, xx, (hip_y, cx + sign * waist * 0.45), foot, limb), bottom)
        paint(_segment_mask(yy, xx, foot, (foot[0] + limb * 0.6, foot[1] + limb * 0.6), limb * 0.7), (0.08, 0.08, 0.08) if not infrared else (0.15,))
    # Torso: a trapezoid from shoulders to hips, with the identity's garment pattern.
    v = (yy - neck_y) / max(hip_y - neck_y, 1.0)
    half = shoulder + (waist - shoulder) * np.clip(v, 0, 1)
    torso = (v >= 0) & (v <= 1.05) & (np.abs(xx - cx) <= half)
    u = (xx - cx) / (2 * shoulder) + 0.5
    which = _pattern(person, v, u, rng.uniform(-0.08, 0.08))
    colours = np.where(which[..., None], top_value[0][None, None, :], top_value[1][None, None, :])
    paint(torso, colours)
    # Arms swing opposite to the legs.
    for sign in (-1, 1):
        shoulder_pt = (neck_y + limb, cx + sign * (shoulder + limb * 0.3))
        hand = (hip_y + limb, shoulder_pt[1] + sign * limb * 0.3 - sign * stride * 0.6)
        paint(_segment_mask(yy, xx, shoulder_pt, hand, limb * 0.8), top_value[1])
        paint(_segment_mask(yy, xx, hand, hand, limb * 0.75), skin)
    if person.carried == "handbag":
        hx = cx + side * (shoulder + limb * 1.2)
        paint((np.abs(xx - hx) < limb * 1.3) & (yy > hip_y) & (yy < hip_y + body * 0.12), carried)
    elif person.carried == "box":
        paint((np.abs(xx - cx) < shoulder * 0.7) & (np.abs(yy - (neck_y + (hip_y - neck_y) * 0.6)) < body * 0.06), carried)
    # Head.
    paint((yy - (top + head_r)) ** 2 + (xx - cx) ** 2 <= head_r**2, skin)
    hair = ((yy - (top + head_r * 0.7)) ** 2 / 0.6 + (xx - cx) ** 2 <= head_r**2 * 0.9) & (yy < top + head_r * 0.8)
    paint(hair, (0.1, 0.07, 0.05) if not infrared else (0.3,))

    return _camera(canvas, infrared, mirror, rng)


def assign_splits(pids: list[int], rng: np.random.Generator) -> dict[str, list[int]]:
    """Shuffle ids into train (60%), val (10%) and test (the rest); each list sorted."""
    order = [int(p) for p in rng.permutation(pids)]
    n_train = max(1, round(len(order) * SPLIT_FRACTIONS["train"]))
    n_val = max(1, round(len(order) * SPLIT_FRACTIONS["val"]))
    return {
        "train": sorted(order[:n_train]),
        "val": sorted(order[n_train : n_train + n_val]),
        "test": sorted(order[n_train + n_val :]),
    }


def person_cameras(rng: np.random.Generator) -> list[int]:
    """Cameras that saw a person: always 1, 2, 3, 6; at least one of the outdoor visible cams 4, 5."""
    outdoor = [cam for cam in (4, 5) if rng.random() < 0.8] or [int(rng.choice([4, 5]))]
    return sorted([1, 2, 3, 6, *outdoor])


def _is_staging(path: Path) -> bool:
    return path.is_dir() and path.name.startswith(STAGING_PREFIX) and path.name.endswith(".tmp")


def _clear_target(root: Path) -> None:
    """Refuse a ``root`` that holds something other than a synthetic dataset; remove staging folders of killed runs."""
    if not root.exists():
        return
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; choose a new folder for the synthetic dataset")
    for child in root.iterdir():
        if _is_staging(child) and child.stat().st_mtime < PROCESS_START:  # a killed run's; a newer one may be alive
            shutil.rmtree(child, ignore_errors=True)
    others = [child for child in root.iterdir() if not _is_staging(child)]
    if others and not (root / MARKER).is_file():
        raise DataError(f"{root} exists and is not empty; choose a new folder for the synthetic dataset")


def generate_synthetic(
    root: Path | str,
    *,
    ids: int = 100,
    seed: int = 0,
    images_per_camera: int = 4,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, object]:
    """Draw and write the dataset under ``root`` (SYSU-MM01 layout); returns a short summary.

    Everything is drawn into a hidden staging folder inside ``root`` and moved into place
    only when complete: an interruption (Ctrl-C) or a failure (full disk) removes it and
    leaves ``root`` as it was -- the previous synthetic dataset, or nothing (a ``root``
    this call created is removed). A full disk is a :class:`StorageError` naming the file
    under ``root`` that could not be written.
    """
    if ids < 10:
        raise DataError(f"--ids must be at least 10 (got {ids}) so that train, val and test all get identities")
    if images_per_camera < 1:
        raise DataError(f"--images-per-camera must be at least 1 (got {images_per_camera})")
    root = Path(root)
    _clear_target(root)
    created = not root.exists()
    staging: Path | None = None
    moved = False
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, suffix=".tmp", dir=root))
        summary = _draw(staging, ids=ids, seed=seed, images_per_camera=images_per_camera, on_progress=on_progress)
        with _interrupt_deferred():  # the few renames of the swap are not cut in the middle by a Ctrl-C
            _move_into_place(staging, root)
            moved = True
    except BaseException as exc:
        if moved:  # a Ctrl-C held back during the swap: the new tree is complete, keep it
            raise
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if created:
            shutil.rmtree(root, ignore_errors=True)  # only the staging folder was ever in it
        translated = _user_error(exc, staging, root)
        if translated is not exc:
            raise translated from exc
        raise
    return {"root": str(root.resolve()), **summary}


def _draw(
    folder: Path, *, ids: int, seed: int, images_per_camera: int, on_progress: Callable[[int], None] | None
) -> dict[str, object]:
    """Write the whole tree (cameras, split files, marker) into ``folder``."""
    rng = np.random.default_rng(seed)
    pids = list(range(1, ids + 1))
    people = [draw_identity(pid, rng) for pid in pids]
    splits = assign_splits(pids, rng)
    images = 0
    for person in people:
        cams = person_cameras(np.random.default_rng([seed, person.pid, 0]))
        for cam in cams:
            person_dir = folder / f"cam{cam}" / f"{person.pid:04d}"
            person_dir.mkdir(parents=True, exist_ok=True)
            for index in range(1, images_per_camera + 1):
                image_rng = np.random.default_rng([seed, person.pid, cam, index])
                image = render(person, cam in INFRARED_CAMS, cam, image_rng)
                _save(image, person_dir / f"{index:04d}.jpg")
                images += 1
        if on_progress is not None:
            on_progress(1)
    for cam in CAMERAS:
        (folder / f"cam{cam}").mkdir(exist_ok=True)
    exp = folder / "exp"
    exp.mkdir(exist_ok=True)
    for split, name in SPLIT_FILES.items():
        (exp / name).write_text(",".join(str(p) for p in splits[split]) + "\n", encoding="utf-8")
    (exp / "available_id.txt").write_text(",".join(str(p) for p in pids) + "\n", encoding="utf-8")
    (folder / MARKER).write_text(f"seed={seed} ids={ids} images_per_camera={images_per_camera}\n", encoding="utf-8")
    return {"ids": ids, "seed": seed, "images": images, "splits": {k: len(v) for k, v in splits.items()}}


def _save(image: Image.Image, path: Path) -> None:
    """``image.save(path)``; an OS error of the encoder (which names no file) names ``path``."""
    try:
        image.save(path, quality=92)
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise


def _move_into_place(staging: Path, root: Path) -> None:
    """Replace ``root``'s synthetic tree by the complete one in ``staging``; the marker last.

    ``root``'s marker says "incomplete" while the folders move, so a run killed in between
    is recognised (and replaced) by the next; the split files come after the images, so a
    half-moved tree is never read as a dataset (the SYSU reader needs them).
    """
    (root / MARKER).write_text("incomplete: generation was interrupted; run it again\n", encoding="utf-8")
    for child in root.iterdir():
        if child.is_dir() and not _is_staging(child) and (child.name == "exp" or child.name.startswith("cam")):
            shutil.rmtree(child)
    for name in [*(f"cam{cam}" for cam in CAMERAS), "exp"]:
        os.replace(staging / name, root / name)
    os.replace(staging / MARKER, root / MARKER)
    staging.rmdir()


def _user_error(exc: BaseException, staging: Path | None, root: Path) -> BaseException:
    """``exc`` naming the path under ``root`` it concerns, never the staging folder."""
    name = getattr(exc, "filename", None)
    target = root
    if name is not None and staging is not None:
        text = os.fspath(name)
        if text == str(staging) or text.startswith(str(staging) + os.sep):
            target = root / os.path.relpath(text, staging)
    elif name is not None and not Path(os.fspath(name)).name.startswith(STAGING_PREFIX):
        target = Path(os.fspath(name))
    elif name is not None:  # the staging folder itself could not be made: that is ``root`` refusing it
        return readdress(exc, name, root)
    return readdress(exc, staging, target)


@contextmanager
def _interrupt_deferred() -> Iterator[None]:
    """Hold back a Ctrl-C (SIGINT) until the block is done, then raise it (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: caught.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt
