"""A second, independent synthetic cross-spectrum person set, for tests and benchmarks only.

It shares no code or rule with ``mclnet_cli.data.synthetic`` beyond the output
layout (SYSU-MM01: ``camN/<pid>/<index>.jpg`` and ``exp/{train,val,test}_id.txt``,
visible cameras 1, 2, 4, 5 and infrared 3, 6), so a model that only learns
this project's own drawing rules shows it here. What differs:

- bodies are built from ellipses and polygons (a torso ellipse, a tapered skirt
  or trousers, a neck, a head ellipse with an optional hat), seen from the front
  or back, with per-image lean and arm pose;
- garments carry smooth procedural textures (value noise at an identity
  frequency, diagonal bands, dots or a two-tone split), not stripes/checks;
- backgrounds are a wall/floor scene with value-noise texture and a camera
  colour cast; cameras add vignetting, shot noise, motion blur and a random JPEG
  quality;
- the infrared image is a thermal rendering: each material has an emissivity and
  a temperature (skin is warm, clothes sit between skin and the scene), so
  intensity = emissivity x temperature + (1 - emissivity) x reflected ambient,
  drawn independently of colour; infrared cameras see at a lower resolution
  (drawn small, upsampled) with a camera gain and a white-hot/black-hot flip
  per camera.

    python benchmarks/alt_synthetic.py OUT --ids 90 --seed 0
    mclnet prepare sysu OUT --out PREPARED
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from sysu_layout import INFRARED, generator_main, split_ids, write_layout

TEXTURES = ("noise", "bands", "dots", "split")
HATS = ("none", "cap", "beanie")


@dataclass(frozen=True)
class Material:
    colour: tuple[float, float, float]  # linear RGB, visible only
    emissivity: float  # 0..1, infrared only
    temperature: float  # 0..1 (scene ambient ~0.3, skin ~0.9)


@dataclass(frozen=True)
class Person:
    pid: int
    stature: float  # fraction of the image height
    girth: float  # torso half width, fraction of the image width
    hip: float  # hip half width relative to girth
    head: float  # head half height, fraction of the image height
    skirt: bool
    texture: str
    scale: float  # texture frequency
    angle: float  # texture orientation (radians)
    upper: tuple[Material, Material]
    lower: Material
    skin: Material
    hat: str
    hat_mat: Material
    scarf: Material | None


def _material(rng: np.random.Generator, warm: tuple[float, float] = (0.35, 0.75)) -> Material:
    hsv = (rng.uniform(0, 1), rng.uniform(0.2, 1.0), rng.uniform(0.15, 1.0))
    colour = tuple(float(c) for c in _hsv_to_rgb(*hsv))
    return Material(colour, float(rng.uniform(0.1, 0.98)), float(rng.uniform(*warm)))


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    return v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)


def draw_person(pid: int, rng: np.random.Generator) -> Person:
    return Person(
        pid=pid,
        stature=float(rng.uniform(0.7, 0.92)),
        girth=float(rng.uniform(0.16, 0.3)),
        hip=float(rng.uniform(0.7, 1.2)),
        head=float(rng.uniform(0.055, 0.075)),
        skirt=bool(rng.random() < 0.3),
        texture=TEXTURES[int(rng.integers(len(TEXTURES)))],
        scale=float(rng.uniform(1.5, 6.0)),
        angle=float(rng.uniform(0, np.pi)),
        upper=(_material(rng), _material(rng)),
        lower=_material(rng),
        skin=Material(
            tuple(float(c) for c in np.array([0.85, 0.65, 0.5]) * rng.uniform(0.35, 1.1)),
            0.97, float(rng.uniform(0.85, 1.0)),
        ),
        hat=HATS[int(rng.integers(len(HATS)))],
        hat_mat=_material(rng),
        scarf=_material(rng) if rng.random() < 0.35 else None,
    )


def _value_noise(shape: tuple[int, int], cells: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth noise in [0, 1]: a random grid, bilinearly upsampled."""
    h, w = shape
    gh, gw = max(2, int(np.ceil(cells * h / max(h, w))) + 2), max(2, int(np.ceil(cells * w / max(h, w))) + 2)
    grid = rng.random((gh, gw)).astype(np.float32)
    img = Image.fromarray((grid * 255).astype(np.uint8), mode="L").resize((w, h), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32) / 255.0


def _texture(person: Person, yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Which of the two upper materials each pixel shows (float weight of material 0)."""
    u = np.cos(person.angle) * xx + np.sin(person.angle) * yy
    if person.texture == "bands":
        return (np.sin(u * person.scale * 0.35 + rng.uniform(-0.3, 0.3)) > 0).astype(np.float32)
    if person.texture == "dots":
        period = 14.0 / person.scale * 3
        gy, gx = (yy % period) - period / 2, (xx % period) - period / 2
        return (gy * gy + gx * gx < (period * 0.3) ** 2).astype(np.float32)
    if person.texture == "split":
        return (xx < np.median(xx)).astype(np.float32) if xx.size else np.zeros_like(xx)
    # "noise": identity-specific smooth blotches; the pattern seed is the identity, not the image
    field = _value_noise((64, 32), person.scale * 2, np.random.default_rng(person.pid * 104729))
    iy = np.clip((yy / yy.max() if yy.max() > 0 else yy) * 63, 0, 63).astype(int)
    ix = np.clip((xx / xx.max() if xx.max() > 0 else xx) * 31, 0, 31).astype(int)
    return (field[iy, ix] > 0.5).astype(np.float32)


def render(person: Person, cam: int, rng: np.random.Generator) -> Image.Image:
    """One image of ``person`` from camera ``cam`` (infrared cameras give a thermal rendering)."""
    infrared = cam in INFRARED
    out_h, out_w = (112, 48) if infrared else (136, 56)
    factor = 0.6 if infrared else 1.0  # infrared: fewer sensor pixels, upsampled afterwards
    H, W = int(out_h * factor), int(out_w * factor)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    scene = np.random.default_rng(1000 + cam)
    ambient = float(scene.uniform(0.2, 0.45))

    # Each layer: a material id map; values are resolved per spectrum at the end.
    layers: list[tuple[np.ndarray, Material | np.ndarray]] = []

    # Background: wall and floor with a horizon, textured.
    horizon = H * scene.uniform(0.55, 0.75) + rng.uniform(-4, 4)
    wall_col = scene.uniform(0.2, 0.8, size=3)
    floor_col = scene.uniform(0.1, 0.6, size=3)
    tex = _value_noise((H, W), 5, rng) * 0.3 + 0.85
    bg_vis = np.where((yy < horizon)[..., None], wall_col, floor_col) * tex[..., None]
    bg_ir = np.where(yy < horizon, ambient, ambient * 0.8) * (0.9 + 0.2 * _value_noise((H, W), 3, rng))

    # Geometry
    s = person.stature * H * rng.uniform(0.94, 1.04)
    feet = H * rng.uniform(0.92, 0.99)
    top = feet - s
    cx = W / 2 + rng.uniform(-0.12, 0.12) * W
    lean = rng.uniform(-0.08, 0.08)
    head_h = person.head * H
    head_cy = top + head_h
    shoulder_y = head_cy + head_h * 1.6
    waist_y = shoulder_y + s * 0.3
    girth = person.girth * W
    x_at = lambda y: cx + lean * (y - feet)  # noqa: E731  (body axis)

    def ellipse(cy: float, cxx: float, ry: float, rx: float) -> np.ndarray:
        return ((yy - cy) / ry) ** 2 + ((xx - cxx) / rx) ** 2 <= 1.0

    # Legs / skirt
    if person.skirt:
        t = np.clip((yy - waist_y) / max(feet - waist_y, 1), 0, 1)
        half = girth * person.hip * (0.8 + 0.6 * t)
        skirt = (yy >= waist_y) & (yy <= waist_y + (feet - waist_y) * 0.6) & (np.abs(xx - x_at(yy)) <= half)
        legs = (yy > waist_y + (feet - waist_y) * 0.6) & (yy <= feet) & (
            (np.abs(xx - x_at(yy) - girth * 0.35) < girth * 0.18) | (np.abs(xx - x_at(yy) + girth * 0.35) < girth * 0.18)
        )
        layers += [(legs, person.skin), (skirt, person.lower)]
    else:
        gait = rng.uniform(-0.25, 0.25) * girth
        for sign in (-1, 1):
            off = sign * girth * person.hip * 0.45 + sign * gait * np.clip((yy - waist_y) / max(feet - waist_y, 1), 0, 1)
            leg = (yy >= waist_y) & (yy <= feet) & (np.abs(xx - x_at(yy) - off) < girth * person.hip * 0.32)
            layers.append((leg, person.lower))
    # Torso: an ellipse from shoulders to waist, textured with the two upper materials.
    torso = ellipse((shoulder_y + waist_y) / 2, x_at((shoulder_y + waist_y) / 2), (waist_y - shoulder_y) * 0.62, girth)
    weight = _texture(person, yy - shoulder_y, xx - cx + girth, rng)
    layers.append((torso & (weight > 0.5), person.upper[0]))
    layers.append((torso & (weight <= 0.5), person.upper[1]))
    # Arms: thin slanted rectangles from the shoulders, per-image swing.
    for sign in (-1, 1):
        swing = rng.uniform(-0.15, 0.2)
        ax = x_at(shoulder_y) + sign * girth * 0.95
        along = (yy - shoulder_y)
        arm = (along >= 0) & (along <= s * 0.36) & (np.abs(xx - ax - sign * swing * along) < girth * 0.2)
        layers.append((arm, person.upper[1]))
        hand = ellipse(shoulder_y + s * 0.38, ax + sign * swing * s * 0.38, girth * 0.18, girth * 0.18)
        layers.append((hand, person.skin))
    # Neck, scarf, head, hat
    layers.append((ellipse(shoulder_y - head_h * 0.4, x_at(shoulder_y), head_h * 0.5, girth * 0.25), person.skin))
    if person.scarf is not None:
        layers.append((ellipse(shoulder_y, x_at(shoulder_y), head_h * 0.45, girth * 0.6), person.scarf))
    layers.append((ellipse(head_cy, x_at(head_cy), head_h, head_h * 0.78), person.skin))
    if person.hat == "cap":
        layers.append((ellipse(head_cy - head_h * 0.55, x_at(head_cy), head_h * 0.5, head_h * 0.95), person.hat_mat))
    elif person.hat == "beanie":
        layers.append(((yy < head_cy - head_h * 0.1) & ellipse(head_cy, x_at(head_cy), head_h * 1.1, head_h * 0.85), person.hat_mat))

    if infrared:
        canvas = bg_ir.copy()
        for mask, mat in layers:
            canvas[mask] = mat.emissivity * mat.temperature + (1 - mat.emissivity) * ambient
        scene_gain = scene.uniform(0.8, 1.3)
        canvas = (canvas - ambient) * scene_gain * rng.uniform(0.85, 1.15) + 0.45
        if scene.random() < 0.5:  # this camera shows black-hot
            canvas = 1.0 - canvas
        canvas = canvas + rng.normal(0, 0.04, size=canvas.shape)
        pixels = (np.clip(canvas, 0, 1) * 255).astype(np.uint8)
        image = Image.fromarray(pixels, mode="L").convert("RGB")
    else:
        canvas = bg_vis.copy()
        for mask, mat in layers:
            canvas[mask] = mat.colour
        cast = scene.uniform(0.75, 1.2, size=3) * rng.uniform(0.7, 1.2)
        canvas = canvas * cast
        # vignetting and shot noise
        r2 = ((yy - H / 2) / H) ** 2 + ((xx - W / 2) / W) ** 2
        canvas = canvas * (1 - 0.6 * r2)[..., None]
        canvas = canvas + rng.normal(0, 1, size=canvas.shape) * np.sqrt(np.clip(canvas, 0, 1)) * 0.04
        pixels = (np.clip(canvas, 0, 1) ** (1 / 2.2) * 255).astype(np.uint8)
        image = Image.fromarray(pixels, mode="RGB")
    if rng.random() < 0.5:  # seen from the other side
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    image = image.resize((out_w, out_h), Image.BILINEAR)
    if rng.random() < 0.3:  # motion blur (horizontal box)
        image = image.filter(ImageFilter.BoxBlur(1))
    elif infrared:
        image = image.filter(ImageFilter.GaussianBlur(0.8))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(rng.integers(60, 95)))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def generate_alt(root: Path | str, *, ids: int = 90, seed: int = 0, images_per_camera: int = 3) -> dict:
    """Write the set under ``root`` in the SYSU-MM01 layout; returns a short summary."""
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise SystemExit(f"{root} is not empty")
    rng = np.random.default_rng([seed, 77])
    people = [draw_person(pid, rng) for pid in range(1, ids + 1)]
    splits = split_ids(list(range(1, ids + 1)), rng)
    images = 0
    for person in people:
        pick = np.random.default_rng([seed, person.pid, 1])
        cams = [c for c in (1, 2, 3, 4, 5, 6) if c in (2, 3, 6) or pick.random() < 0.7]
        for cam in cams:
            folder = root / f"cam{cam}" / f"{person.pid:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(1, images_per_camera + 1):
                image = render(person, cam, np.random.default_rng([seed, person.pid, cam, index, 5]))
                image.save(folder / f"{index:04d}.jpg", quality=95)
                images += 1
    write_layout(root, splits, range(1, ids + 1))
    return {"root": str(root), "ids": ids, "images": images, "splits": {k: len(v) for k, v in splits.items()}}


def main() -> None:
    generator_main(generate_alt, "Draw the alternative synthetic set (SYSU-MM01 layout).")


if __name__ == "__main__":
    main()
