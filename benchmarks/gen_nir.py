"""A third synthetic cross-spectrum person set ("nir"), for tests and benchmarks only.

It shares no code or drawing rule with ``mclnet_cli.data.synthetic`` or
``benchmarks/alt_synthetic.py``; only the output layout is the same (SYSU-MM01:
``camN/<pid>/<index>.jpg`` and ``exp/{train,val,test}_id.txt``, visible cameras
1, 2, 4, 5 and infrared 3, 6). What it models:

- bodies are stacks of anti-aliased rounded boxes (signed-distance coverage):
  head, neck, torso, pelvis, thighs, shins, shoes, upper arms, forearms, hands,
  with identity proportions, short/long sleeves and hair, shorts, an optional
  long coat and an accessory (backpack, shoulder bag with a slanted strap, none);
  each image picks a view (front, back, side: narrower torso, one arm hidden),
  a scale (the person fills 55-100% of the height), an offset and sometimes a
  crop (feet or head outside the frame);
- garments are flat per-part materials with identity bands (0-3 horizontal
  bands of their own widths) and a chest logo (circle, square, diamond,
  triangle, cross or ring) that only the front view shows;
- visible cameras: a street of boxes (facades, windows, poles, wires, kerb
  lines, foliage) drawn fresh per image, an occluder (pole or grey blob covering
  10-30% of the person) in some images, per-camera white balance, exposure,
  gamma and a linear illumination gradient;
- infrared cameras model ACTIVE near-infrared (not thermal): every material has
  a NIR reflectance that, for dyed fabrics, is drawn independently of its
  colour, while black synthetics, leather and asphalt stay dark in both and
  foliage and skin are bright; an on-camera lamp lights the scene with a radial
  fall-off, the far background gets less of it (lower contrast), and the sensor
  adds photon (Poisson) noise, read noise, fixed column noise, automatic gain
  and a binomial blur. Cameras 3 and 6 differ in lamp strength, spread and noise.

    python benchmarks/gen_nir.py OUT --ids 90 --seed 0
    mclnet prepare sysu OUT --out PREPARED
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sysu_layout import INFRARED, VISIBLE, generator_main, split_ids, write_layout

H, W = 128, 64
ACCESSORIES = ("none", "backpack", "bag")
LOGOS = ("circle", "square", "diamond", "triangle", "cross", "ring")
VIEWS = ("front", "back", "side")
FABRICS = ("dyed", "black_synthetic", "denim", "wool", "nylon", "leather")
FABRIC_P = (0.4, 0.16, 0.13, 0.11, 0.12, 0.08)
JPEG_QUALITY = 90

# Pixel centres, shared by every drawing call.
YY, XX = (g.astype(np.float32) + 0.5 for g in np.mgrid[0:H, 0:W])


@dataclass(frozen=True)
class Material:
    rgb: tuple[float, float, float]  # linear visible reflectance
    nir: float  # near-infrared reflectance (~850 nm)
    kind: str = "dyed"


def _hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    return tuple(float(c) for c in colorsys.hsv_to_rgb(h % 1.0, s, v))


def fabric(rng: np.random.Generator, kind: str | None = None) -> Material:
    """A garment material; the visible -> NIR mapping depends on what the fabric is."""
    if kind is None:
        kind = FABRICS[int(rng.choice(len(FABRICS), p=FABRIC_P))]
    if kind == "dyed":  # most textile dyes are transparent at 850 nm: NIR unrelated to the colour
        rgb, nir = _hsv(rng.uniform(), rng.uniform(0.25, 1.0), rng.uniform(0.2, 1.0)), rng.uniform(0.4, 0.92)
    elif kind == "black_synthetic":  # carbon black absorbs NIR too
        v = rng.uniform(0.02, 0.1)
        rgb, nir = (v, v, v * rng.uniform(0.9, 1.3)), rng.uniform(0.03, 0.14)
    elif kind == "denim":  # indigo: dark blue, mid NIR
        rgb, nir = _hsv(rng.uniform(0.58, 0.66), rng.uniform(0.35, 0.8), rng.uniform(0.15, 0.55)), rng.uniform(0.3, 0.55)
    elif kind == "wool":
        rgb, nir = _hsv(rng.uniform(), rng.uniform(0.05, 0.4), rng.uniform(0.15, 0.85)), rng.uniform(0.25, 0.7)
    elif kind == "nylon":
        rgb, nir = _hsv(rng.uniform(), rng.uniform(0.6, 1.0), rng.uniform(0.35, 1.0)), rng.uniform(0.1, 0.88)
    elif kind == "leather":  # tanned or black: NIR follows the lightness
        v = rng.uniform(0.04, 0.35)
        rgb, nir = _hsv(rng.uniform(0.03, 0.1), rng.uniform(0.3, 0.8), v), 0.5 * v + rng.uniform(0.04, 0.16)
    else:
        raise ValueError(kind)
    return Material(rgb, float(nir), kind)


def _contrasting(rng: np.random.Generator, base: Material, gap: float) -> Material:
    """A fabric whose NIR reflectance differs from ``base`` by at least ``gap`` (a shape that survives NIR)."""
    for _ in range(30):
        candidate = fabric(rng)
        if abs(candidate.nir - base.nir) >= gap:
            return candidate
    return Material(candidate.rgb, float(0.08 if base.nir > 0.5 else 0.85), candidate.kind)


def skin(rng: np.random.Generator) -> Material:
    """Skin: visible tone varies widely; NIR is bright for every tone (weakly lower for darker skin)."""
    t = rng.uniform()
    light, dark = np.array([0.78, 0.58, 0.46]), np.array([0.22, 0.12, 0.08])
    rgb = tuple(float(c) for c in light + t * (dark - light))
    return Material(rgb, float(rng.uniform(0.66, 0.84) - 0.08 * t), "skin")


def hair(rng: np.random.Generator) -> Material:
    v = rng.uniform(0.02, 0.45)
    return Material(_hsv(rng.uniform(0.04, 0.12), rng.uniform(0.2, 0.7), v), float(0.12 + 0.6 * v + rng.uniform(0, 0.1)), "hair")


@dataclass(frozen=True)
class Identity:
    pid: int
    # proportions, fractions of the person's height
    head_h: float
    head_w: float
    shoulder: float  # half width
    depth: float  # torso half depth (side view)
    hip: float  # half width
    legs: float  # hip to sole
    arm: float  # half thickness
    arm_len: float
    # clothing and carried things
    upper: Material
    lower: Material
    shoes: Material
    skin: Material
    hair: Material
    long_hair: bool
    long_sleeves: bool
    shorts: bool
    coat: Material | None
    coat_len: float  # below the hip, fraction of the leg
    bands: tuple[tuple[float, float], ...]  # (centre, half width), fractions of the garment length
    band: Material
    logo: str
    logo_mat: Material
    logo_size: float
    logo_dx: float  # across the chest, fraction of the shoulder half width
    accessory: str
    acc_mat: Material
    acc_side: int  # +1 the person's right, -1 left
    acc_w: float
    acc_h: float


def draw_identity(pid: int, seed: int) -> Identity:
    rng = np.random.default_rng([seed, pid, 401])
    head_h = rng.uniform(0.115, 0.14)
    shoulder = rng.uniform(0.09, 0.135)
    upper = fabric(rng)
    coat = fabric(rng, ("wool", "nylon", "dyed", "black_synthetic", "leather")[int(rng.integers(5))]) if rng.random() < 0.3 else None
    garment = coat or upper
    n_bands = int(rng.choice(4, p=[0.35, 0.3, 0.2, 0.15]))
    bands = tuple(sorted((float(rng.uniform(0.12, 0.9)), float(rng.uniform(0.018, 0.09))) for _ in range(n_bands)))
    logo_mat = _contrasting(rng, garment, 0.22) if rng.random() < 0.85 else fabric(rng)
    accessory = ACCESSORIES[int(rng.integers(len(ACCESSORIES)))]
    return Identity(
        pid=pid,
        head_h=float(head_h),
        head_w=float(head_h * rng.uniform(0.6, 0.78)),
        shoulder=float(shoulder),
        depth=float(shoulder * rng.uniform(0.5, 0.66)),
        hip=float(shoulder * rng.uniform(0.72, 0.98)),
        legs=float(rng.uniform(0.44, 0.52)),
        arm=float(rng.uniform(0.021, 0.031)),
        arm_len=float(rng.uniform(0.35, 0.41)),
        upper=upper,
        lower=fabric(rng),
        shoes=fabric(rng, ("leather", "black_synthetic", "nylon", "dyed")[int(rng.integers(4))]),
        skin=skin(rng),
        hair=hair(rng),
        long_hair=bool(rng.random() < 0.3),
        long_sleeves=bool(coat is not None or rng.random() < 0.6),
        shorts=bool(coat is None and rng.random() < 0.2),
        coat=coat,
        coat_len=float(rng.uniform(0.35, 0.65)),
        bands=bands,
        band=_contrasting(rng, garment, 0.2),
        logo=LOGOS[int(rng.integers(len(LOGOS)))],
        logo_mat=logo_mat,
        logo_size=float(rng.uniform(0.032, 0.055)),
        logo_dx=float(rng.choice([0.0, 0.45])),
        accessory=accessory,
        acc_mat=fabric(rng, ("nylon", "black_synthetic", "leather", "dyed")[int(rng.integers(4))]),
        acc_side=1 if rng.random() < 0.5 else -1,
        acc_w=float(rng.uniform(0.5, 0.85) if accessory == "backpack" else rng.uniform(0.045, 0.075)),
        acc_h=float(rng.uniform(0.18, 0.28) if accessory == "backpack" else rng.uniform(0.045, 0.075)),
    )


# --- coverage from signed distances (pixels; negative inside) -------------------------------------------------

def _box(cy: float, cx: float, hy: float, hx: float, radius: float = 0.0) -> np.ndarray:
    """Signed distance to an axis-aligned box with rounded corners."""
    hy, hx = max(hy, 0.5), max(hx, 0.5)
    r = min(radius, hy, hx)
    qy = np.abs(YY - cy) - (hy - r)
    qx = np.abs(XX - cx) - (hx - r)
    return np.hypot(np.maximum(qy, 0), np.maximum(qx, 0)) + np.minimum(np.maximum(qy, qx), 0) - r


def _cover(distance: np.ndarray) -> np.ndarray:
    """One-pixel anti-aliased coverage."""
    return np.clip(0.5 - distance, 0.0, 1.0).astype(np.float32)


def _logo_distance(shape: str, cy: float, cx: float, r: float) -> np.ndarray:
    dy, dx = YY - cy, XX - cx
    if shape == "circle":
        return np.hypot(dy, dx) - r
    if shape == "square":
        return _box(cy, cx, r * 0.85, r * 0.85)
    if shape == "diamond":
        return (np.abs(dy) + np.abs(dx) - r * 1.2) * 0.7071
    if shape == "triangle":  # apex up: three half-planes
        return np.maximum.reduce([dy - r * 0.7, -0.866 * dx - 0.5 * dy - r * 0.6, 0.866 * dx - 0.5 * dy - r * 0.6])
    if shape == "cross":
        return np.minimum(_box(cy, cx, r, r * 0.32), _box(cy, cx, r * 0.32, r))
    return np.abs(np.hypot(dy, dx) - r * 0.75) - max(r * 0.28, 0.6)  # ring


def _strap(y0: float, x0: float, y1: float, x1: float, half: float) -> np.ndarray:
    """A slanted strip between two heights: distance to the line, cut by the horizontal slab y0..y1."""
    ny, nx = x1 - x0, -(y1 - y0)
    norm = float(np.hypot(ny, nx)) or 1.0
    across = np.abs((YY - y0) * ny + (XX - x0) * nx) / norm - half
    slab = np.abs(YY - (y0 + y1) / 2) - abs(y1 - y0) / 2
    return np.maximum(across, slab)


@dataclass
class Layer:
    alpha: np.ndarray
    mat: Material
    group: str  # "bg", "person" or "occluder"
    shade: float = 1.0


class Scene:
    def __init__(self) -> None:
        self.layers: list[Layer] = []

    def add(self, alpha: np.ndarray, mat: Material, group: str, shade: float = 1.0) -> np.ndarray:
        self.layers.append(Layer(alpha, mat, group, shade))
        return alpha


# --- street background --------------------------------------------------------------------------------------

def _street_material(rng: np.random.Generator, what: str) -> Material:
    if what == "concrete":
        v = rng.uniform(0.25, 0.6)
        return Material(_hsv(rng.uniform(0.05, 0.15), rng.uniform(0.0, 0.15), v), float(v * rng.uniform(0.9, 1.1)), what)
    if what == "brick":
        return Material(_hsv(rng.uniform(0.0, 0.06), rng.uniform(0.4, 0.7), rng.uniform(0.25, 0.55)), float(rng.uniform(0.45, 0.65)), what)
    if what == "glass":
        return Material(_hsv(rng.uniform(0.5, 0.65), rng.uniform(0.1, 0.4), rng.uniform(0.05, 0.25)), float(rng.uniform(0.03, 0.12)), what)
    if what == "asphalt":
        v = rng.uniform(0.06, 0.2)
        return Material((v, v, v * 1.05), float(v * 0.8), what)
    if what == "foliage":  # chlorophyll: dark green in visible, bright in NIR
        return Material(_hsv(rng.uniform(0.22, 0.36), rng.uniform(0.4, 0.8), rng.uniform(0.1, 0.4)), float(rng.uniform(0.6, 0.85)), what)
    if what == "metal":
        v = rng.uniform(0.1, 0.45)
        return Material(_hsv(rng.uniform(0.3, 0.6), rng.uniform(0.0, 0.3), v), float(v * rng.uniform(0.8, 1.2)), what)
    return Material(_hsv(rng.uniform(), rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8)), float(rng.uniform(0.2, 0.8)), "paint")


def _street(scene: Scene, rng: np.random.Generator) -> None:
    horizon = H * rng.uniform(0.35, 0.62)
    full = np.ones((H, W), np.float32)
    scene.add(full, _street_material(rng, ("concrete", "paint", "brick")[int(rng.integers(3))]), "bg")
    scene.add(_cover(horizon - YY), _street_material(rng, ("asphalt", "concrete")[int(rng.integers(2))]), "bg")
    # facades with window grids
    for _ in range(int(rng.integers(2, 6))):
        x0, width = rng.uniform(-10, W), rng.uniform(8, 40)
        top = rng.uniform(-5, horizon - 8)
        facade = _cover(_box((top + horizon) / 2, x0 + width / 2, (horizon - top) / 2, width / 2))
        scene.add(facade, _street_material(rng, ("concrete", "brick", "paint", "glass")[int(rng.integers(4))]), "bg")
        if rng.random() < 0.6:
            py, px = rng.uniform(7, 16), rng.uniform(6, 13)
            wy, wx = py * rng.uniform(0.35, 0.7), px * rng.uniform(0.35, 0.7)
            grid = (((YY - top) % py) < wy) & (((XX - x0) % px) < wx)
            scene.add(facade * grid, _street_material(rng, "glass"), "bg")
    # foliage
    for _ in range(int(rng.integers(0, 3))):
        hy, hx = rng.uniform(5, 16), rng.uniform(6, 18)
        scene.add(_cover(_box(rng.uniform(0, horizon + 10), rng.uniform(0, W), hy, hx, min(hy, hx))), _street_material(rng, "foliage"), "bg")
    # kerb and road lines below the horizon, closer together further away
    step = rng.uniform(6, 14)
    y = horizon + rng.uniform(1, 4)
    while y < H:
        scene.add(_cover(np.abs(YY - y) - rng.uniform(0.3, 1.2)), _street_material(rng, "concrete"), "bg")
        y += step
        step *= rng.uniform(1.3, 1.8)
    # poles
    for _ in range(int(rng.integers(0, 3))):
        bottom = rng.uniform(horizon, H)
        top = rng.uniform(-5, horizon)
        scene.add(_cover(_box((top + bottom) / 2, rng.uniform(0, W), (bottom - top) / 2, rng.uniform(0.5, 1.8))), _street_material(rng, "metal"), "bg")
    # wires
    for _ in range(int(rng.integers(0, 3))):
        y0, y1 = rng.uniform(-5, horizon), rng.uniform(-5, horizon)
        line = np.abs((YY - y0) * W - (XX * (y1 - y0))) / np.hypot(W, y1 - y0) - 0.4
        scene.add(_cover(line), _street_material(rng, "metal"), "bg")


# --- the person ---------------------------------------------------------------------------------------------

def _person(scene: Scene, p: Identity, rng: np.random.Generator) -> np.ndarray:
    """Add the person's layers; returns the union of their coverage."""
    hp = H * rng.uniform(0.55, 1.0)
    crop = rng.random()
    if crop < 0.14:  # feet below the frame
        top = H - hp + hp * rng.uniform(0.06, 0.2)
    elif crop < 0.24:  # head above the frame
        top = -hp * rng.uniform(0.05, 0.15)
    else:
        top = (H - hp) * rng.uniform(0.2, 0.95)
    cx = W / 2 + rng.uniform(-0.16, 0.16) * W
    view = VIEWS[int(rng.choice(3, p=[0.4, 0.35, 0.25]))]
    facing = 1 if rng.random() < 0.5 else -1  # side view: +1 walks to the image right
    swing = rng.uniform(-1.0, 1.0)

    def Y(f: float) -> float:
        return top + f * hp

    def S(f: float) -> float:
        return f * hp

    person = np.zeros((H, W), np.float32)

    def put(distance: np.ndarray, mat: Material, shade: float = 1.0) -> np.ndarray:
        nonlocal person
        alpha = _cover(distance)
        person = np.maximum(person, alpha)
        return scene.add(alpha, mat, "person", shade)

    side = view == "side"
    y_sh = p.head_h + 0.022
    y_hip = 1.0 - p.legs
    y_knee = y_hip + p.legs * 0.5
    y_sole = 1.0
    shoe_h = 0.035
    half = p.depth if side else p.shoulder
    hip = p.depth * 1.05 if side else p.hip
    garment = p.coat or p.upper
    sleeve = p.coat or p.upper
    # the accessory's side in the image: the person's right is the image left in the front view
    img_side = -p.acc_side if view == "front" else p.acc_side if view == "back" else 0
    bag_near = side and (p.acc_side == (1 if facing < 0 else -1))  # in a side view, the bag side faces the camera

    # behind the body (side view): backpack, far bag
    if p.accessory == "backpack" and side:
        put(_box(Y(y_sh + 0.02 + p.acc_h / 2), cx - facing * S(p.depth + 0.04), S(p.acc_h / 2), S(0.045), S(0.02)), p.acc_mat)
    if p.accessory == "bag" and side and not bag_near:
        put(_box(Y(y_hip + 0.01), cx - facing * S(p.depth + p.acc_w * 0.4), S(p.acc_h), S(p.acc_w * 0.6), S(0.01)), p.acc_mat, 0.8)
    # long hair behind the head (front and side)
    if p.long_hair and view != "back":
        put(_box(Y((y_sh + 0.08) / 2), cx - facing * S(p.head_w * 0.15) if side else cx,
                 S((y_sh + 0.08) / 2), S(p.head_w * 0.58), S(p.head_w * 0.3)), p.hair)
    # far arm in a side view is hidden; legs
    stride = swing * 0.06
    if side:
        legs = [(-stride, 0.82), (stride, 1.0)]  # (offset along the walk, shade): far leg first
    else:
        legs = [(-p.hip * 0.5, 1.0), (p.hip * 0.5, 1.0)]
    thigh, shin = p.hip * 0.46, p.hip * 0.4
    if side:
        thigh, shin = p.depth * 0.55, p.depth * 0.45
    for offset, shade in legs:
        if side:
            kx, fx = cx + facing * S(offset * 0.5), cx + facing * S(offset)
        else:
            kx = fx = cx + S(offset) + S(0.004 * swing)
        put(_box(Y((y_hip + y_knee) / 2), kx, S((y_knee - y_hip) / 2 + 0.01), S(thigh), S(thigh * 0.5)), p.lower, shade)
        put(_box(Y((y_knee + y_sole - shoe_h) / 2), fx, S((y_sole - shoe_h - y_knee) / 2 + 0.01), S(shin), S(shin * 0.5)),
            p.skin if p.shorts else p.lower, shade)
        toe = facing * S(0.03) if side else 0.0
        put(_box(Y(y_sole - shoe_h / 2), fx + toe, S(shoe_h / 2), S(shin * 1.1) + abs(toe) * 0.6, S(0.012)), p.shoes, shade)
    # pelvis, coat skirt, torso
    put(_box(Y(y_hip + 0.02), cx, S(0.05), S(hip), S(0.02)), p.lower)
    garment_alpha = np.zeros((H, W), np.float32)
    garment_bottom = y_hip + 0.03
    if p.coat is not None:
        garment_bottom = y_hip + p.legs * p.coat_len
        wide = max(hip, half * 0.95) * 1.06
        garment_alpha = np.maximum(garment_alpha, put(
            _box(Y((y_hip - 0.06 + garment_bottom) / 2), cx, S((garment_bottom - y_hip + 0.06) / 2), S(wide), S(0.02)), p.coat))
    garment_alpha = np.maximum(garment_alpha, put(
        _box(Y((y_sh + y_hip + 0.03) / 2), cx, S((y_hip + 0.03 - y_sh) / 2), S(half), S(half * 0.3)), garment))
    # bands around the garment
    length = garment_bottom - y_sh
    for centre, width in p.bands:
        band = _cover(np.abs(YY - Y(y_sh + centre * length)) - max(S(width * length), 0.6))
        scene.add(band * garment_alpha, p.band, "person")
    # logo: front only
    if view == "front":
        r = max(S(p.logo_size), 1.2)
        logo = _cover(_logo_distance(p.logo, Y(y_sh + 0.075), cx + p.logo_dx * S(p.shoulder) * 0.6, r))
        scene.add(logo * garment_alpha, p.logo_mat, "person")
    # backpack on the back, straps from the front
    if p.accessory == "backpack" and view == "back":
        put(_box(Y(y_sh + 0.02 + p.acc_h / 2), cx, S(p.acc_h / 2), S(p.shoulder * p.acc_w), S(0.025)), p.acc_mat)
    if p.accessory == "backpack" and view == "front":
        for sign in (-1, 1):
            put(_box(Y(y_sh + 0.07), cx + sign * S(p.shoulder * 0.55), S(0.075), max(S(p.arm * 0.45), 0.7), 0.3), p.acc_mat)
    # arms: both from the front or back, the near one in a side view
    sleeve_len = p.arm_len if p.long_sleeves else p.arm_len * 0.38
    hand_h = 0.045
    arms = [(cx + facing * S(swing * 0.05), 0.0)] if side else [
        (cx + sign * S(p.shoulder + p.arm * 0.6), sign * swing * 0.01) for sign in (-1, 1)]
    for ax, drift in arms:
        upper_len = p.arm_len * 0.5
        put(_box(Y(y_sh + upper_len / 2), ax, S(upper_len / 2), S(p.arm), S(p.arm * 0.8)),
            sleeve if sleeve_len >= upper_len else p.skin)
        if sleeve_len < upper_len:  # short sleeve over the top of the upper arm
            put(_box(Y(y_sh + sleeve_len / 2), ax, S(sleeve_len / 2), S(p.arm * 1.15), S(p.arm * 0.6)), sleeve)
        fore_x = ax + S(drift) + (facing * S(swing * 0.04) if side else 0.0)
        put(_box(Y(y_sh + upper_len + (p.arm_len - upper_len) / 2), fore_x, S((p.arm_len - upper_len) / 2), S(p.arm * 0.9), S(p.arm * 0.7)),
            sleeve if p.long_sleeves else p.skin)
        put(_box(Y(y_sh + p.arm_len + hand_h / 2), fore_x, S(hand_h / 2), S(p.arm * 0.95), S(p.arm * 0.8)), p.skin)
    # shoulder bag with its strap across the chest or back
    if p.accessory == "bag" and (not side or bag_near):
        bx = cx + img_side * S(p.hip + p.acc_w * 0.6) if not side else cx - facing * S(p.depth * 0.3)
        by = Y(y_hip + 0.01)
        put(_box(by, bx, S(p.acc_h), S(p.acc_w), S(0.01)), p.acc_mat)
        sx = cx - img_side * S(p.shoulder * 0.7) if not side else cx
        put(_strap(Y(y_sh), sx, by - S(p.acc_h), bx, max(S(0.008), 0.55)), p.acc_mat)
    # neck, head, hair
    put(_box(Y(p.head_h + 0.005), cx, S(0.02), S(p.head_w * 0.22), 0.5), p.skin)
    head_cx = cx + (facing * S(p.head_w * 0.08) if side else 0.0)
    head_w = p.head_w * (0.92 if side else 1.0)
    head = _box(Y(p.head_h / 2), head_cx, S(p.head_h / 2), S(head_w / 2), S(head_w * 0.42))
    if view == "back":
        put(head, p.hair)
        put(_box(Y(p.head_h * 0.93), head_cx, S(p.head_h * 0.08), S(head_w * 0.38), 0.5), p.skin)
        if p.long_hair:
            put(_box(Y((y_sh + 0.09) / 2 + 0.005), cx, S((y_sh + 0.09) / 2), S(p.head_w * 0.6), S(p.head_w * 0.3)), p.hair)
    else:
        put(head, p.skin)
        cap_h = p.head_h * 0.32
        if side:  # hair covers the top and the back of the head
            put(_box(Y(p.head_h * 0.35), head_cx - facing * S(head_w * 0.2), S(p.head_h * 0.35), S(head_w * 0.34), S(head_w * 0.3)), p.hair)
        put(_box(Y(cap_h / 2), head_cx, S(cap_h / 2), S(head_w * 0.53), S(head_w * 0.4)), p.hair)
    return person


def _occluder(scene: Scene, person: np.ndarray, rng: np.random.Generator) -> None:
    """A pole or a grey blob in front of the person, covering 10-30% of the person's pixels."""
    area = float(person.sum())
    if area < 20:
        return
    cols = np.nonzero(person.max(axis=0) > 0.5)[0]
    rows = np.nonzero(person.max(axis=1) > 0.5)[0]
    x0, x1, y0, y1 = float(cols.min()), float(cols.max() + 1), float(rows.min()), float(rows.max() + 1)
    pole = rng.random() < 0.5
    for _ in range(8):
        if pole:
            hx = rng.uniform(0.06, 0.2) * (x1 - x0) + 0.6
            alpha = _cover(_box(H / 2, rng.uniform(x0, x1), H, hx))
            mat = _street_material(rng, "metal")
        else:
            hy, hx = rng.uniform(0.12, 0.3) * (y1 - y0), rng.uniform(0.3, 0.7) * W
            cy = rng.uniform(y0 + (y1 - y0) * 0.55, y1 + hy * 0.4)
            alpha = _cover(_box(cy, rng.uniform(-0.1, 1.1) * W, hy, hx, min(hy, hx) * rng.uniform(0.2, 0.9)))
            v = rng.uniform(0.2, 0.6)
            mat = Material((v, v, v * rng.uniform(0.95, 1.08)), float(v * rng.uniform(0.85, 1.15)), "grey")
        covered = float((alpha * person).sum()) / area
        if 0.1 <= covered <= 0.3:
            scene.add(alpha, mat, "occluder")
            return


# --- cameras ------------------------------------------------------------------------------------------------

def camera_traits(cam: int, seed: int) -> dict:
    rng = np.random.default_rng([seed, cam, 1789])
    if cam in INFRARED:
        # camera 3: strong wide lamp, clean sensor; camera 6: weaker, tighter lamp, noisy sensor
        strong = cam == 3
        return {
            "lamp": (1.0 if strong else 0.55) * rng.uniform(0.92, 1.08),
            "spread": (0.6 if strong else 0.38) * rng.uniform(0.92, 1.08),
            "well": (110.0 if strong else 25.0) * rng.uniform(0.9, 1.1),  # electrons at full scale
            "read": (0.02 if strong else 0.05),
            "columns": rng.normal(0, 0.012 if strong else 0.03, size=W).astype(np.float32),
            "blur": 2 if strong else 1,
            "ambient": rng.uniform(0.02, 0.07),
            "far": rng.uniform(0.3, 0.5),  # the lamp light reaching the background
            "flatten": rng.uniform(0.35, 0.6),  # background contrast kept
            "gamma": 1.35 if strong else 1.15,
        }
    gains = np.exp(rng.normal(0, 0.13, size=3))
    return {
        "white": gains / gains[1],
        "exposure": rng.uniform(0.75, 1.35),
        "gamma": rng.uniform(1.8, 2.5),
        "gradient": rng.uniform(0.15, 0.6),
        "angle": rng.uniform(0, 2 * np.pi),
    }


def _visible(scene: Scene, traits: dict, rng: np.random.Generator) -> np.ndarray:
    canvas = np.zeros((H, W, 3), np.float32)
    for layer in scene.layers:
        value = np.asarray(layer.mat.rgb, np.float32) * layer.shade
        canvas += layer.alpha[..., None] * (value - canvas)
    angle = traits["angle"] + rng.normal(0, 0.35)
    ramp = np.cos(angle) * (XX / W - 0.5) + np.sin(angle) * (YY / H - 0.5)
    light = traits["exposure"] * np.exp(rng.normal(0, 0.12)) * (1 + traits["gradient"] * 2 * ramp)
    canvas = canvas * light[..., None] * traits["white"][None, None, :].astype(np.float32)
    canvas = canvas + rng.normal(0, 0.006, size=canvas.shape).astype(np.float32)
    return np.clip(canvas, 0, 1) ** (1 / traits["gamma"])


def _binomial(image: np.ndarray, passes: int) -> np.ndarray:
    for _ in range(passes):
        padded = np.pad(image, 1, mode="edge")
        image = (padded[:-2, 1:-1] + 2 * padded[1:-1, 1:-1] + padded[2:, 1:-1]) / 4
        padded = np.pad(image, 1, mode="edge")
        image = (padded[1:-1, :-2] + 2 * padded[1:-1, 1:-1] + padded[1:-1, 2:]) / 4
    return image


def _infrared(scene: Scene, traits: dict, rng: np.random.Generator) -> np.ndarray:
    reflect = np.zeros((H, W), np.float32)
    reach = np.zeros((H, W), np.float32)  # how much of the lamp's light gets there (distance)
    background = [layer.mat.nir for layer in scene.layers if layer.group == "bg"]
    bg_mean = float(np.mean(background)) if background else 0.3
    for layer in scene.layers:
        if layer.group == "bg":
            value = bg_mean + (layer.mat.nir - bg_mean) * traits["flatten"]
            near = traits["far"]
        else:
            value = layer.mat.nir * layer.shade
            near = 1.0 if layer.group == "person" else 1.15
        reflect += layer.alpha * (value - reflect)
        reach += layer.alpha * (near - reach)
    cy, cx = H * rng.uniform(0.4, 0.55), W * rng.uniform(0.4, 0.6)
    r = np.hypot(YY - cy, XX - cx) / H
    lamp = traits["lamp"] / (1 + (r / traits["spread"]) ** 2) ** 2
    signal = reflect * (traits["ambient"] + reach * lamp)
    signal *= (0.8 / max(float(np.percentile(signal, 99.5)), 1e-3)) ** 0.7  # automatic gain, partial
    well = traits["well"]
    signal = rng.poisson(np.clip(signal, 0, 2) * well).astype(np.float32) / well
    signal += rng.normal(0, traits["read"], size=signal.shape).astype(np.float32) + traits["columns"][None, :]
    signal = _binomial(signal, traits["blur"])
    return np.clip(signal, 0, 1) ** (1 / traits["gamma"])


def render(person: Identity, cam: int, rng: np.random.Generator, traits: dict) -> Image.Image:
    """One image of ``person`` from camera ``cam`` (infrared cameras: active NIR, grey stored as RGB)."""
    scene = Scene()
    _street(scene, rng)
    union = _person(scene, person, rng)
    if rng.random() < 0.3:
        _occluder(scene, union, rng)
    if cam in INFRARED:
        grey = (_infrared(scene, traits, rng) * 255 + 0.5).astype(np.uint8)
        pixels = np.stack([grey, grey, grey], axis=-1)
    else:
        pixels = (_visible(scene, traits, rng) * 255 + 0.5).astype(np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def person_cameras(pid: int, seed: int) -> list[int]:
    """At least one infrared and one visible camera per person."""
    rng = np.random.default_rng([seed, pid, 2203])
    infrared = [c for c in INFRARED if rng.random() < 0.8] or [int(rng.choice(INFRARED))]
    visible = [c for c in VISIBLE if rng.random() < 0.65] or [int(rng.choice(VISIBLE))]
    return sorted(visible + infrared)


def generate_nir(root: Path | str, *, ids: int = 90, seed: int = 0, images_per_camera: int = 3) -> dict:
    """Write the set under ``root`` in the SYSU-MM01 layout; returns a short summary."""
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise SystemExit(f"{root} is not empty")
    if ids < 3 or images_per_camera < 1:
        raise SystemExit("need --ids >= 3 and --images-per-camera >= 1")
    people = [draw_identity(pid, seed) for pid in range(1, ids + 1)]
    splits = split_ids(list(range(1, ids + 1)), np.random.default_rng([seed, 9]))
    traits = {cam: camera_traits(cam, seed) for cam in (*VISIBLE, *INFRARED)}
    images = 0
    for person in people:
        for cam in person_cameras(person.pid, seed):
            folder = root / f"cam{cam}" / f"{person.pid:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(1, images_per_camera + 1):
                image = render(person, cam, np.random.default_rng([seed, person.pid, cam, index, 613]), traits[cam])
                image.save(folder / f"{index:04d}.jpg", quality=JPEG_QUALITY)
                images += 1
    write_layout(root, splits, range(1, ids + 1))
    return {"root": str(root), "ids": ids, "images": images, "splits": {k: len(v) for k, v in splits.items()}}


def main() -> None:
    generator_main(generate_nir, "Draw the active-NIR synthetic set (SYSU-MM01 layout).")


if __name__ == "__main__":
    main()
