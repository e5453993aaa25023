"""A fifth synthetic cross-spectrum person set ("crowd"), for tests and benchmarks only.

Written as the HELD-OUT generator of issue 31 (2026-12-07): a training recipe
is tuned on the other generators (``mclnet_cli.data.synthetic``,
``benchmarks/alt_synthetic.py``, ``gen_nir.py``, ``gen_walker.py``) and judged
on this one, so its drawing rules are its own. It shares only the output
layout (SYSU-MM01: ``camN/<pid>/<index>.jpg`` and ``exp/{train,val,test}_id.txt``,
visible cameras 1, 2, 4, 5 and infrared 3, 6) and the 60/10/30 id split.

- people are 2.5-D shaded solids: every body part (tapered limb capsules, an
  ellipsoid head, a torso whose half width runs hip -> waist -> shoulder with
  rounded shoulders) carries a surface-normal field, and each image lights it
  with its own direction (Lambert + ambient), so a garment's brightness runs
  across it with the light. The body is laid out in metres (height above the
  feet, lateral offset) and each camera maps that to pixels;
- identity: build (stature, shoulder and hip width, head size, leg length,
  limb thickness), an upper-garment layout (plain, a vertical zip splitting it
  into two colours by the wearer's left and right, a shoulder yoke, a diagonal
  colour block), long or short sleeves, trousers / shorts / skirt, a scarf or a
  belt, a hat or a hood, a shoulder bag on the left or right hip with its strap
  across the chest, hair (bald, short, long) and a garment texture from
  families the other generators do not use: an oriented grating (identity
  angle and frequency), a tartan of two crossing gratings, or a camouflage of
  thresholded sums of identity plane waves, printed on the upper or the lower
  garment in body coordinates;
- crowd: in many images one or two OTHER pedestrians (other identities of the
  person's own split, so a held-out identity never appears in a training image; the
  first version drew them from the whole set: ``passers_by="any"``) stand beside the person, behind (smaller, feet
  higher on the ground plane) or in front at the frame edge (larger, cut by the
  border, overlapping the person), plus street furniture (bollards, lamp posts,
  bins) at their own depths, all painted far to near. The person stays the
  largest, centred figure;
- viewpoint: ground-level cameras (1, 5, 6) see a facade, windows and sky above
  a horizon; high CCTV cameras (2, 3, 4) see only pavement, squash the figure
  vertically and magnify it with height (top-down perspective: the head is
  larger relative to the legs). Per image: scale, offset, sometimes a crop
  through the head or the feet, a front or back view and a body turn;
- visible: cameras 1 and 2 film by day (sun and sky light, building shadows on
  the pavement, the person lit or shaded by where it stands), cameras 4 and 5
  at dusk (a sodium-lamp orange key light and a lamp pool, lit shop windows,
  low exposure: shot and read noise amplified by the gain, desaturation).
  Per-camera white balance, per-image JPEG quality, and sometimes rolling-
  shutter skew or defocus blur;
- infrared, two different physics: camera 3 is active NIR under an overhead
  IR floodlight, where a dyed garment's reflectance is a fixed, identity-
  independent but NONLINEAR function of its dye's hue (a periodic lookup with
  random knots; greys follow their lightness) and synthetic fibres are dark;
  camera 6 is thermal LWIR where brightness is temperature: skin is warm, a
  garment's surface cools towards the air with its thickness
  (``T = T_air + (T_skin - T_air) exp(-mm / 6)``), hair and hats insulate, a
  bag is colder than the air, sun-heated pavement and facades are warm and the
  sky is cold, emissivity falls at grazing angles, warm bodies bloom into a
  halo, the detector has fixed-pattern column noise, and a level-tracking gain
  follows the scene median. Colour never enters the thermal image. Both are
  drawn on a coarse grid (56x28 and 40x20) and upsampled, each with its gain.

    python benchmarks/gen_crowd.py OUT --ids 90 --seed 0
    mclnet prepare sysu OUT --out PREPARED
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageFilter

from sysu_layout import check_arguments, generator_main, passed_cameras, split_ids, write_layout

H, W = 128, 64
REF_HEIGHT = 1.75  # metres: the camera tilt is the scale gain over this height
INSULATION_MM = 6.0  # e-folding thickness of garment insulation
UPPER_LAYOUTS = ("plain", "zip", "yoke", "diagonal")
TEXTURES = ("none", "grating", "tartan", "camo")
LOWER = ("trousers", "shorts", "skirt")
ACCESSORIES = ("none", "scarf", "belt")
HEADWEAR = ("none", "hat", "hood")
BAGS = ("none", "left", "right")  # the wearer's side
FURNITURE = ("bollard", "post", "bin")
# The NIR lookup from dye hue to reflectance: fixed for every seed and identity (a property of dyes, not people).
NIR_KNOTS = np.random.default_rng(0x31_2026_1207).uniform(0.05, 0.92, size=11)


@dataclass(frozen=True)
class Dye:
    """A dyed fabric: visible colour by hue, saturation and value; NIR follows from the dye and the fibre."""

    hue: float
    sat: float
    val: float
    synthetic: bool = False

    @property
    def rgb(self) -> np.ndarray:
        r, g, b = colorsys.hsv_to_rgb(self.hue % 1.0, self.sat, self.val)
        return np.array([r * r, g * g, b * b], np.float32)  # roughly linear light

    @property
    def nir(self) -> float:
        return nir_reflectance(self)


def nir_reflectance(dye: Dye) -> float:
    """Reflectance at ~850 nm: greys by their lightness, saturated dyes by a fixed nonlinear lookup of hue."""
    pos = (dye.hue % 1.0) * len(NIR_KNOTS)
    i = int(pos) % len(NIR_KNOTS)
    frac = pos - int(pos)
    dyed = float(NIR_KNOTS[i] * (1 - frac) + NIR_KNOTS[(i + 1) % len(NIR_KNOTS)] * frac)
    r = (1.0 - dye.sat) * (0.06 + 0.8 * dye.val) + dye.sat * dyed
    return r * 0.22 if dye.synthetic else r


@dataclass(frozen=True)
class Rig:
    """A fixed camera: spectrum, how high it hangs (tilt, squash), colour balance, sensor grid, how busy its street is."""

    spectrum: str  # "day", "dusk", "nir" or "lwir"
    tilt: float  # scale gain from the feet to REF_HEIGHT (0: ground level)
    squash: float  # vertical compression of the figure
    horizon: tuple[float, float]  # range of the horizon row, fraction of H (negative: above the frame)
    wb: tuple[float, float, float]
    sensor: tuple[int, int]
    crowd: float  # chance of at least one other pedestrian
    gain: float


RIGS = {
    1: Rig("day", 0.0, 1.0, (0.3, 0.5), (1.0, 1.0, 0.93), (H, W), 0.45, 1.0),
    2: Rig("day", 0.55, 0.78, (-0.7, -0.15), (0.9, 1.0, 1.14), (H, W), 0.7, 1.0),
    3: Rig("nir", 0.4, 0.84, (-0.5, -0.05), (1.0, 1.0, 1.0), (56, 28), 0.55, 0.95),
    4: Rig("dusk", 0.45, 0.82, (-0.6, -0.1), (1.06, 1.0, 0.88), (H, W), 0.65, 1.0),
    5: Rig("dusk", 0.05, 0.97, (0.32, 0.52), (0.95, 1.0, 1.08), (H, W), 0.5, 1.0),
    6: Rig("lwir", 0.1, 0.95, (0.3, 0.5), (1.0, 1.0, 1.0), (40, 20), 0.55, 1.0),
}


@dataclass(frozen=True)
class Pedestrian:
    """One identity: build, garments (dyes, layout, texture, thickness), headwear, neckwear, bag, hair."""

    pid: int
    stature: float  # metres
    shoulder_hw: float  # half shoulder width
    hip_hw: float
    head_r: float  # half head width
    leg_frac: float  # hip height / stature
    limb_r: float  # thigh radius
    arm_r: float
    skin_rgb: tuple[float, float, float]
    skin_nir: float
    skin_temp: float  # deg C
    hair: Dye
    hair_mm: float  # 0: bald
    long_hair: bool
    layout: str
    upper_a: Dye
    upper_b: Dye
    upper_mm: float
    long_sleeves: bool
    yoke: float  # yoke depth, metres
    slope: float  # diagonal block slope
    texture: str
    texture_on: str  # "upper" or "lower"
    ink: Dye
    tex_angle: float
    tex_freq: float  # cycles per metre
    tex_angle2: float
    tex_freq2: float
    tex_duty: float
    camo: tuple[tuple[float, float, float], ...]  # plane waves (k_x, k_h, phase), radians per metre
    camo_level: float
    lower: str
    lower_dye: Dye
    lower_mm: float
    shoe: Dye
    accessory: str
    accessory_dye: Dye
    accessory_mm: float
    headwear: str
    head_dye: Dye
    head_mm: float
    bag: str
    bag_dye: Dye
    bag_size: float


def _pick(rng: np.random.Generator, options: Sequence[str], p: Sequence[float] | None = None) -> str:
    return str(options[int(rng.choice(len(options), p=p))])


def _dye(rng: np.random.Generator, val: tuple[float, float] = (0.12, 0.95)) -> Dye:
    return Dye(float(rng.random()), float(rng.uniform(0.05, 0.95)), float(rng.uniform(*val)), bool(rng.random() < 0.25))


def draw_pedestrian(pid: int, rng: np.random.Generator) -> Pedestrian:
    """Sample one identity."""
    stature = float(rng.uniform(1.52, 1.95))
    build = float(rng.uniform(0.85, 1.25))
    tone = float(rng.uniform(0.22, 1.0))
    hair_mm = 0.0 if rng.random() < 0.12 else float(rng.uniform(1.0, 12.0))
    camo = tuple(
        (float(k * math.cos(a)), float(k * math.sin(a)), float(ph))
        for k, a, ph in zip(rng.uniform(14.0, 40.0, 4), rng.uniform(0, 2 * math.pi, 4), rng.uniform(0, 2 * math.pi, 4))
    )
    return Pedestrian(
        pid=pid,
        stature=stature,
        shoulder_hw=float(rng.uniform(0.17, 0.23)) * (0.85 + 0.15 * build),
        hip_hw=float(rng.uniform(0.135, 0.19)) * build,
        head_r=stature * float(rng.uniform(0.056, 0.07)),
        leg_frac=float(rng.uniform(0.45, 0.53)),
        limb_r=float(rng.uniform(0.058, 0.078)) * build,
        arm_r=float(rng.uniform(0.036, 0.05)) * build,
        skin_rgb=(0.78 * tone, 0.55 * tone * float(rng.uniform(0.9, 1.05)), 0.42 * tone * float(rng.uniform(0.85, 1.05))),
        skin_nir=float(rng.uniform(0.5, 0.66)),
        skin_temp=float(rng.uniform(33.0, 35.5)),
        hair=Dye(float(rng.uniform(0.03, 0.12)), float(rng.uniform(0.3, 0.8)), float(rng.uniform(0.04, 0.75)) ** 1.3),
        hair_mm=hair_mm,
        long_hair=bool(rng.random() < 0.3) and hair_mm > 0,
        layout=_pick(rng, UPPER_LAYOUTS),
        upper_a=_dye(rng),
        upper_b=_dye(rng),
        upper_mm=float(rng.uniform(0.8, 14.0)),
        long_sleeves=bool(rng.random() < 0.65),
        yoke=float(rng.uniform(0.08, 0.16)),
        slope=float(rng.uniform(-1.6, 1.6)),
        texture=_pick(rng, TEXTURES, (0.25, 0.25, 0.25, 0.25)),
        texture_on="upper" if rng.random() < 0.75 else "lower",
        ink=_dye(rng),
        tex_angle=float(rng.uniform(0, math.pi)),
        tex_freq=float(rng.uniform(5.0, 14.0)),
        tex_angle2=float(rng.uniform(-0.35, 0.35) + math.pi / 2),
        tex_freq2=float(rng.uniform(4.0, 12.0)),
        tex_duty=float(rng.uniform(0.18, 0.4)),
        camo=camo,
        camo_level=float(rng.uniform(-0.35, 0.35)),
        lower=_pick(rng, LOWER, (0.6, 0.2, 0.2)),
        lower_dye=_dye(rng),
        lower_mm=float(rng.uniform(0.5, 6.0)),
        shoe=_dye(rng, (0.05, 0.8)),
        accessory=_pick(rng, ACCESSORIES, (0.45, 0.3, 0.25)),
        accessory_dye=_dye(rng),
        accessory_mm=float(rng.uniform(2.0, 10.0)),
        headwear=_pick(rng, HEADWEAR, (0.55, 0.25, 0.2)),
        head_dye=_dye(rng),
        head_mm=float(rng.uniform(2.0, 8.0)),
        bag=_pick(rng, BAGS, (0.4, 0.3, 0.3)),
        bag_dye=_dye(rng),
        bag_size=float(rng.uniform(0.8, 1.3)),
    )


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Pose:
    """Per image: which side faces the camera, how far the body is turned, arm and leg angles."""

    front: bool
    width: float  # torso width factor (a turned body looks narrower)
    arms: tuple[float, float, float, float]  # upper / lower angle, image-left arm then image-right arm
    legs: tuple[float, float]  # ankle spread, left then right


def _draw_pose(rng: np.random.Generator) -> Pose:
    front = bool(rng.random() < 0.5)
    width = float(rng.uniform(0.72, 1.0))
    a = rng.uniform(0.03, 0.32, 2)
    bend = rng.uniform(-0.12, 0.35, 2)
    legs = rng.uniform(-0.03, 0.1, 2)
    return Pose(front, width, (float(a[0]), float(a[0] + bend[0]), float(a[1]), float(a[1] + bend[1])), (float(legs[0]), float(legs[1])))


class _Place:
    """Per-pixel body coordinates (metres) of something standing at ``feet_y``, ``cx`` with ``s0`` px/m at the feet.

    The camera tilt makes the scale grow with height, ``s(h) = s0 (1 + tilt h / REF_HEIGHT)``; the vertical
    extent is further squashed by ``squash``. Rows are inverted in closed form (a quadratic in h).
    """

    def __init__(self, gy: np.ndarray, gx: np.ndarray, grid: float, feet_y: float, cx: float, s0: float, rig: Rig):
        d = feet_y - gy  # (rows, 1): pixels above the feet
        b = rig.squash * s0
        if rig.tilt > 1e-6:
            a = b * rig.tilt / (2 * REF_HEIGHT)
            h = (-b + np.sqrt(np.maximum(b * b + 4 * a * d, 0.0))) / (2 * a)
        else:
            h = d / b
        s = s0 * np.maximum(1.0 + rig.tilt * h / REF_HEIGHT, 0.3)  # far below the feet the inversion has no root
        self.h = h.astype(np.float32)
        self.x = ((gx - cx) / s).astype(np.float32)
        self.pxm = (s * grid).astype(np.float32)  # grid pixels per metre


def _cov(sd: np.ndarray, pxm: np.ndarray) -> np.ndarray:
    return np.clip(0.5 - sd * pxm, 0.0, 1.0)


def _capsule(f: _Place, a: tuple[float, float], b: tuple[float, float], ra: float, rb: float):
    """Coverage and normal of a tapered capsule from ``a`` to ``b`` ((x, h), metres)."""
    (ax, ah), (bx, bh) = a, b
    dx, dh = bx - ax, bh - ah
    l2 = dx * dx + dh * dh
    t = np.clip(((f.x - ax) * dx + (f.h - ah) * dh) / max(l2, 1e-9), 0.0, 1.0)
    ex, eh = f.x - ax - t * dx, f.h - ah - t * dh
    dist = np.sqrt(ex * ex + eh * eh)
    r = ra + (rb - ra) * t
    nx, nh = ex / r, eh / r
    return _cov(dist - r, f.pxm), (nx, nh, np.sqrt(np.clip(1.0 - nx * nx - nh * nh, 0.0, 1.0)))


def _ellipsoid(f: _Place, cx: float, ch: float, rx: float, rh: float, power: float = 2.0):
    """Coverage and normal of an ellipsoid (``power`` > 2: a rounded box, like a bag)."""
    u, v = (f.x - cx) / rx, (f.h - ch) / rh
    if power == 2.0:
        rho2 = u * u + v * v
        rho = np.sqrt(rho2)
        nx, nh = u, v
    else:
        rho = (np.abs(u) ** power + np.abs(v) ** power) ** (1.0 / power)
        rho2 = rho * rho
        nx, nh = np.sign(u) * np.abs(u) ** (power - 1), np.sign(v) * np.abs(v) ** (power - 1)
    n = (np.clip(nx, -1, 1), np.clip(nh, -1, 1), np.sqrt(np.clip(1.0 - rho2, 0.0, 1.0)))
    return _cov((rho - 1.0) * min(rx, rh), f.pxm), n


def _trunk(f: _Place, h0: float, h1: float, widths: tuple[float, float, float], round_r: float):
    """A vertical solid from h0 to h1 whose half width runs through ``widths`` (bottom, 45%, top), rounded on top."""
    frac = np.clip((f.h - h0) / (h1 - h0), 0.0, 1.0)
    hw = np.interp(frac, (0.0, 0.45, 1.0), widths).astype(np.float32)
    over = np.clip(f.h - (h1 - round_r), 0.0, None)
    hw_eff = np.maximum(hw - round_r + np.sqrt(np.clip(round_r * round_r - over * over, 0.0, None)), 1e-3)
    sd = np.maximum(np.abs(f.x) - hw_eff, np.maximum(h0 - f.h, f.h - h1))
    u = np.clip(f.x / hw_eff, -1.0, 1.0)
    nv = np.clip(over / round_r, 0.0, 1.0)
    return _cov(sd, f.pxm), (u, nv, np.sqrt(np.clip(1.0 - u * u - nv * nv, 0.0, 1.0)))


def _soft(x: np.ndarray, pxm: np.ndarray) -> np.ndarray:
    """0 -> 1 across x = 0 over one grid pixel (x in metres)."""
    return np.clip(0.5 + x * pxm, 0.0, 1.0)


# --------------------------------------------------------------------------- painting


@dataclass(frozen=True)
class _Mat:
    rgb: np.ndarray  # linear visible reflectance (or emitted radiance when emit)
    nir: float
    temp: object  # deg C, a float or an array over the grid
    emit: bool = False


FLAT_UP = (0.0, 1.0, 0.0)
FLAT_FRONT = (0.0, 0.0, 1.0)


class _Canvas:
    """Paints coverage layers far to near in one spectrum ("rgb", "nir" or "lwir") and tracks who is on top."""

    def __init__(self, mode: str, shape: tuple[int, int], light: np.ndarray, sun: np.ndarray, sky: np.ndarray, env_t: float):
        self.mode = mode
        self.value = np.zeros(shape + ((3,) if mode == "rgb" else (1,)), np.float32)
        self.person = np.zeros(shape, np.float32)
        self.crowd = np.zeros(shape, np.float32)
        self.light, self.sun, self.sky, self.env_t = light, sun, sky, env_t

    def lay(self, cov, mat: _Mat, normal, who: int = 0, direct=1.0, mix=None, ink: _Mat | None = None) -> None:
        if self.mode == "lwir":
            eps = 0.97 - 0.3 * (1.0 - normal[2]) ** 2  # emissivity drops at grazing angles, reflecting the cold sky
            val = np.asarray(eps * mat.temp + (1.0 - eps) * self.env_t, np.float32)[..., None]
        else:
            if self.mode == "rgb":
                refl = mat.rgb if mix is None or ink is None else mat.rgb + np.asarray(mix)[..., None] * (ink.rgb - mat.rgb)
            else:
                refl = np.float32(mat.nir) if mix is None or ink is None else mat.nir + mix * (ink.nir - mat.nir)
                refl = np.asarray(refl, np.float32)[..., None]
            if mat.emit:
                val = np.broadcast_to(refl, self.value.shape)
            else:
                lx, ly, lz = self.light
                lam = np.clip(normal[0] * lx + normal[1] * ly + normal[2] * lz, 0.0, None) * direct
                val = refl * (self.sky + np.asarray(lam, np.float32)[..., None] * self.sun)
        c = cov[..., None]
        self.value += c * (val - self.value)
        self.person += cov * (float(who == 1) - self.person)
        self.crowd += cov * (float(who == 2) - self.crowd)


def _texture(p: Pedestrian, u: np.ndarray, v: np.ndarray) -> np.ndarray | None:
    """Ink coverage of the identity's garment texture at body coordinates (u = the wearer's left, v = up)."""
    if p.texture == "grating":
        ph = 2 * np.pi * p.tex_freq * (u * math.cos(p.tex_angle) + v * math.sin(p.tex_angle))
        return np.clip(0.5 + 1.6 * np.cos(ph), 0.0, 1.0)
    if p.texture == "tartan":
        bands = []
        for ang, freq in ((p.tex_angle, p.tex_freq), (p.tex_angle + p.tex_angle2, p.tex_freq2)):
            ph = 2 * np.pi * freq * (u * math.cos(ang) + v * math.sin(ang))
            bands.append(np.clip((np.cos(ph) - (1.0 - 2.0 * p.tex_duty)) * 3.0, 0.0, 1.0))
        return 1.0 - (1.0 - 0.65 * bands[0]) * (1.0 - 0.65 * bands[1])
    if p.texture == "camo":
        field = sum(np.cos(kx * u + kh * v + ph) for kx, kh, ph in p.camo) * 0.5
        low = np.clip((field - p.camo_level) * 5.0 + 0.5, 0.0, 1.0)
        high = np.clip((field - p.camo_level - 0.55) * 5.0 + 0.5, 0.0, 1.0)
        return 0.5 * low + 0.5 * high  # three tones: base, half ink, ink
    return None


def _paint_person(cv: _Canvas, f: _Place, p: Pedestrian, pose: Pose, who: int, t_air: float, exertion: float, direct: float) -> None:
    S = p.stature
    mirror = -1.0 if pose.front else 1.0  # the wearer's left, in image x (seen from the front it is image right)
    hry = p.head_r * 1.18
    head_c = S - hry
    chin = S - 2 * hry
    sh_h = chin - 0.045 * S
    hip_h = p.leg_frac * S
    knee_h = 0.5 * hip_h
    shw, hhw = p.shoulder_hw * pose.width, p.hip_hw * pose.width

    skin_t = p.skin_temp + exertion
    limb_t = skin_t - 0.15 * (skin_t - t_air)

    def surf(mm: float, base: float = skin_t) -> float:
        return t_air + (base - t_air) * math.exp(-mm / INSULATION_MM)

    skin = np.array(p.skin_rgb, np.float32)
    face = _Mat(skin, p.skin_nir, skin_t)
    limb = _Mat(skin, p.skin_nir, limb_t)
    up_a = _Mat(p.upper_a.rgb, p.upper_a.nir, surf(p.upper_mm))
    up_b = _Mat(p.upper_b.rgb, p.upper_b.nir, surf(p.upper_mm))
    sleeve_a = _Mat(p.upper_a.rgb, p.upper_a.nir, surf(0.8 * p.upper_mm, limb_t))
    sleeve_b = _Mat(p.upper_b.rgb, p.upper_b.nir, surf(0.8 * p.upper_mm, limb_t))
    lower = _Mat(p.lower_dye.rgb, p.lower_dye.nir, surf(p.lower_mm, limb_t))
    shoe = _Mat(p.shoe.rgb, p.shoe.nir, surf(9.0, limb_t))
    hair = _Mat(p.hair.rgb, 0.1 + 0.55 * p.hair.val, surf(p.hair_mm))
    head_wear = _Mat(p.head_dye.rgb, p.head_dye.nir, surf(p.head_mm + p.hair_mm))
    hood = _Mat(p.upper_a.rgb, p.upper_a.nir, surf(p.head_mm + p.hair_mm))
    acc = _Mat(p.accessory_dye.rgb, p.accessory_dye.nir, surf(p.accessory_mm))
    metal = _Mat(np.array([0.35, 0.35, 0.33], np.float32), 0.45, t_air + 2.0)
    bag = _Mat(p.bag_dye.rgb, p.bag_dye.nir, t_air - 1.5)  # evaporation and no body contact: colder than the air
    ink = _Mat(p.ink.rgb, p.ink.nir, 0.0)
    mix = None if cv.mode == "lwir" else _texture(p, mirror * f.x, f.h)
    mix_up = mix if p.texture_on == "upper" else None
    mix_lo = mix if p.texture_on == "lower" else None

    def lay(cov_n, mat, **kw):
        cv.lay(cov_n[0], mat, cov_n[1], who, direct=direct, **kw)

    long_hair = _capsule(f, (0.0, head_c), (0.0, sh_h - 0.1), p.head_r * 0.98, p.head_r * 0.85) if p.long_hair else None
    if long_hair is not None and pose.front:  # seen from the front, long hair falls beside the face and neck
        for s in (-1.0, 1.0):
            lay(_capsule(f, (s * 0.92 * p.head_r, head_c), (s * 0.95 * p.head_r, sh_h - 0.06), 0.28 * p.head_r, 0.24 * p.head_r), hair)

    # Legs: skin or garment capsules from the hip joints to the ankles, the pelvis, the shoes.
    for k, s in enumerate((-1.0, 1.0)):
        hip, ankle = (s * 0.45 * hhw, hip_h), (s * (0.42 * hhw + pose.legs[k]), 0.075)
        if p.lower == "trousers":
            lay(_capsule(f, hip, ankle, p.limb_r * 1.05, 0.052), lower, mix=mix_lo, ink=ink)
        else:
            lay(_capsule(f, hip, ankle, p.limb_r, 0.045), limb)
            if p.lower == "shorts":
                t = (hip_h - (knee_h + 0.07)) / (hip_h - 0.075)
                knee = (hip[0] + t * (ankle[0] - hip[0]), knee_h + 0.07)
                lay(_capsule(f, hip, knee, p.limb_r * 1.18, p.limb_r * 1.1), lower, mix=mix_lo, ink=ink)
        lay(_ellipsoid(f, ankle[0] + s * 0.012, 0.045, 0.062, 0.05), shoe)
    if p.lower == "skirt":
        lay(_trunk(f, knee_h - 0.03, hip_h + 0.04, (hhw * 1.35, hhw * 1.12, hhw), 0.02), lower, mix=mix_lo, ink=ink)
    else:
        lay(_ellipsoid(f, 0.0, hip_h - 0.02, hhw * 0.92, 0.12), lower, mix=mix_lo, ink=ink)

    # Torso: garment A (textured), the layout's B region, the zip seen from the front.
    torso = _trunk(f, hip_h - 0.07, sh_h, (hhw * 1.02, min(hhw, shw) * 0.92, shw), 0.35 * shw)
    lay(torso, up_a, mix=mix_up, ink=ink)
    u, v = mirror * f.x, f.h
    if p.layout == "zip":
        region = _soft(u, f.pxm)
    elif p.layout == "yoke":
        region = _soft(v - (sh_h - p.yoke), f.pxm)
    elif p.layout == "diagonal":
        region = _soft((v - 0.5 * (hip_h + sh_h)) - p.slope * u, f.pxm)
    else:
        region = None
    if region is not None:
        lay((torso[0] * region, torso[1]), up_b)
    if p.layout == "zip" and pose.front:
        lay((torso[0] * _soft(0.011 - np.abs(u), f.pxm), torso[1]), metal)
    if p.accessory == "belt":
        band = _soft(v - hip_h, f.pxm) * _soft(hip_h + 0.045 - v, f.pxm)
        lay((torso[0] * band, torso[1]), acc)
        if pose.front:
            lay((torso[0] * band * _soft(0.028 - np.abs(u), f.pxm), torso[1]), metal)

    # The bag strap runs from the far shoulder across the chest to the bag on the wearer's side.
    bag_x = 0.0
    if p.bag != "none":
        side = mirror * (1.0 if p.bag == "left" else -1.0)  # image side of the bag
        bag_x = side * (hhw + 0.06 * p.bag_size)
        lay(_capsule(f, (-side * shw * 0.55, sh_h - 0.01), (side * hhw * 0.9, hip_h + 0.11 * p.bag_size), 0.017, 0.017), bag)

    # Arms: sleeves (by the layout: a zip makes the wearer's left sleeve B), skin, hands.
    for k, s in enumerate((-1.0, 1.0)):
        a1, a2 = pose.arms[2 * k], pose.arms[2 * k + 1]
        sh = (s * (shw - 0.4 * p.arm_r), sh_h - 0.035)
        el = (sh[0] + s * 0.185 * S * math.sin(a1), sh[1] - 0.185 * S * math.cos(a1))
        wr = (el[0] + s * 0.15 * S * math.sin(a2), el[1] - 0.15 * S * math.cos(a2))
        sleeve = sleeve_b if p.layout == "zip" and mirror * s > 0 else sleeve_a
        if p.long_sleeves:
            lay(_capsule(f, sh, el, p.arm_r * 1.28, p.arm_r * 1.12), sleeve)
            lay(_capsule(f, el, wr, p.arm_r * 1.12, p.arm_r * 0.92), sleeve)
        else:
            lay(_capsule(f, sh, el, p.arm_r, p.arm_r * 0.85), limb)
            lay(_capsule(f, el, wr, p.arm_r * 0.85, p.arm_r * 0.7), limb)
            mid = (sh[0] + 0.5 * (el[0] - sh[0]), sh[1] + 0.5 * (el[1] - sh[1]))
            lay(_capsule(f, sh, mid, p.arm_r * 1.32, p.arm_r * 1.22), sleeve)
        hand = (wr[0] + s * 0.04 * math.sin(a2), wr[1] - 0.045)
        lay(_ellipsoid(f, hand[0], hand[1], 0.042, 0.05), limb)
    if p.bag != "none":
        bag_shape = _ellipsoid(f, bag_x, hip_h + 0.01, 0.12 * p.bag_size, 0.1 * p.bag_size, power=4.0)
        cv.lay(bag_shape[0], bag, bag_shape[1], 0, direct=direct)  # not part of the person's mask

    # Neck, head, hair (long hair hangs over the neck and back when seen from behind), hood or hat, scarf.
    lay(_capsule(f, (0.0, sh_h - 0.02), (0.0, chin + 0.03), 0.052, 0.05), face)
    if long_hair is not None and not pose.front:
        lay(long_hair, hair)
    head = _ellipsoid(f, 0.0, head_c, p.head_r, hry)
    if p.headwear == "hood" and pose.front:
        lay(_ellipsoid(f, 0.0, head_c + 0.015, p.head_r * 1.32, hry * 1.2), hood)
        lay(_ellipsoid(f, 0.0, head_c - 0.01, p.head_r * 0.8, hry * 0.84), face)
    else:
        if pose.front:
            lay(head, face)
            if p.hair_mm > 0:
                cap = _ellipsoid(f, 0.0, head_c + 0.01, p.head_r * 1.06, hry * 1.05)
                line = _soft(v - (head_c + 0.32 * hry), f.pxm)
                if p.long_hair:
                    line = np.maximum(line, _soft(np.abs(f.x) - 0.72 * p.head_r, f.pxm) * _soft(v - chin - 0.3 * hry, f.pxm))
                lay((cap[0] * line, cap[1]), hair)
        else:
            covered = p.hair_mm > 0
            lay(_ellipsoid(f, 0.0, head_c + 0.005, p.head_r * (1.04 if covered else 1.0), hry * 1.03), hair if covered else face)
        if p.headwear == "hood":
            lay(_ellipsoid(f, 0.0, head_c + 0.015, p.head_r * 1.32, hry * 1.2), hood)
        elif p.headwear == "hat":
            crown = _ellipsoid(f, 0.0, head_c + 0.5 * hry, p.head_r * 1.0, hry * 0.58)
            lay((crown[0] * _soft(v - (head_c + 0.3 * hry), f.pxm), crown[1]), head_wear)
            lay(_ellipsoid(f, 0.0, head_c + 0.32 * hry, p.head_r * 1.55, hry * 0.13), head_wear)
    if p.accessory == "scarf":
        lay(_ellipsoid(f, 0.0, sh_h + 0.005, shw * 0.58, 0.065), acc)
        if pose.front:
            lay(_capsule(f, (mirror * 0.06, sh_h - 0.02), (mirror * 0.075, sh_h - 0.32), 0.036, 0.034), acc)


def _paint_item(cv: _Canvas, f: _Place, kind: str, mat: _Mat, lamp: _Mat, direct: float) -> None:
    if kind == "bollard":
        cov, n = _capsule(f, (0.0, 0.0), (0.0, 0.82), 0.1, 0.1)
        cv.lay(cov, mat, n, direct=direct)
    elif kind == "bin":
        cov, n = _capsule(f, (0.0, 0.22), (0.0, 0.78), 0.24, 0.24)
        cv.lay(cov, mat, n, direct=direct)
    else:
        cov, n = _capsule(f, (0.0, 0.0), (0.0, 5.2), 0.07, 0.055)
        cv.lay(cov, mat, n, direct=direct)
        cov, n = _capsule(f, (0.0, 5.1), (0.45, 5.25), 0.03, 0.03)
        cv.lay(cov, mat, n, direct=direct)
        cov, n = _ellipsoid(f, 0.55, 5.2, 0.28, 0.09)
        cv.lay(cov, lamp, n, direct=direct)


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with edge padding (numpy only)."""
    r = max(1, int(math.ceil(2.5 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k = (k / k.sum()).astype(np.float32)
    out = a
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, r)
        padded = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        acc = np.zeros_like(out)
        for i, w in enumerate(k):
            acc += w * (padded[i:i + n] if axis == 0 else padded[:, i:i + n])
        out = acc
    return out


def _upsample(a: np.ndarray, method) -> np.ndarray:
    if a.shape == (H, W):
        return a.astype(np.float32)
    return np.asarray(Image.fromarray(a.astype(np.float32), mode="F").resize((W, H), method), dtype=np.float32)


# --------------------------------------------------------------------------- rendering


@dataclass
class Frame:
    """One rendered image with what is where: the target's and the other pedestrians' visible coverage."""

    image: Image.Image
    person: np.ndarray  # (128, 64) coverage of the target (bag excluded), after occlusion
    crowd: np.ndarray  # (128, 64) coverage of the other pedestrians
    others: int  # how many other pedestrians were placed
    quality: int  # JPEG quality to save it with


def render_frame(p: Pedestrian, cam: int, rng: np.random.Generator, crowd: Sequence[Pedestrian] = ()) -> Frame:
    """One 128x64 image of ``p`` from camera ``cam``; other pedestrians are taken from ``crowd`` (or drawn anew)."""
    rig = RIGS[cam]
    # All per-image randomness, in one fixed order; nothing here depends on a colour.
    pose = _draw_pose(rng)
    crop = bool(rng.random() < 0.18)
    fill = float(rng.uniform(1.0, 1.14) if crop else rng.uniform(0.74, 0.95))
    head_out = bool(rng.random() < 0.5)
    margin = float(rng.random())
    dx = float(rng.uniform(-4.0, 4.0))
    horizon = float(rng.uniform(*rig.horizon)) * H
    light = np.array([rng.uniform(-0.9, 0.9), rng.uniform(0.15, 0.9), rng.uniform(0.25, 1.0)])
    ambient = float(rng.uniform(0.22, 0.45))
    exposure = float(rng.uniform(0.8, 1.2))
    tint = rng.uniform(0.96, 1.04, size=3).astype(np.float32)
    sunny = bool(rng.random() < 0.65)
    shadow_line = (float(rng.uniform(-1.5, 1.5)), float(rng.uniform(0.1, 0.9)) * W, float(rng.uniform(-0.5, 0.5)))
    sun_heat = float(rng.uniform(4.0, 14.0))
    wall = Dye(float(rng.random()), float(rng.uniform(0.0, 0.35)), float(rng.uniform(0.3, 0.8)))
    paving = Dye(float(rng.uniform(0.05, 0.15)), float(rng.uniform(0.0, 0.2)), float(rng.uniform(0.35, 0.7)))
    facade_h = float(rng.uniform(0.25, 0.7)) * H
    windows = (float(rng.uniform(9.0, 22.0)), float(rng.uniform(0.0, 20.0)), float(rng.uniform(0.35, 0.7)),
               float(rng.uniform(8.0, 18.0)), float(rng.uniform(0.0, 12.0)), float(rng.uniform(0.35, 0.7)))
    kerb = float(rng.uniform(0.3, 0.85))
    joint = float(rng.uniform(0.45, 0.8))  # paving slab length, metres
    pool = (float(rng.uniform(0.0, W)), float(rng.uniform(0.6, 1.0)), float(rng.uniform(15.0, 40.0)))
    items = [(_pick(rng, FURNITURE), float(rng.uniform(0.45, 1.25)), float(rng.uniform(-0.25, 1.25)) * W,
              Dye(float(rng.random()), float(rng.uniform(0.0, 0.5)), float(rng.uniform(0.08, 0.45))))
             for _ in range(int(rng.integers(0, 4)))]
    n_others = int(rng.random() < rig.crowd) + int(rng.random() < 0.35 * rig.crowd)
    others = []
    for _ in range(2):
        in_front = bool(rng.random() < 0.35)
        ratio = float(rng.uniform(1.02, 1.15) if in_front else rng.uniform(0.55, 0.9))
        offset = float(rng.uniform(0.58, 0.8) if in_front else rng.uniform(0.25, 0.7)) * W
        others.append((ratio, offset, 1.0 if rng.random() < 0.5 else -1.0, _draw_pose(rng), int(rng.integers(1 << 30))))
    t_air = float(rng.uniform(4.0, 26.0))
    exertion = float(rng.uniform(-0.4, 0.5))
    skew = float(rng.uniform(-0.12, 0.12)) if rng.random() < 0.2 else 0.0
    defocus = float(rng.uniform(0.6, 1.4)) if rng.random() < 0.2 else 0.0
    quality = int(rng.integers(55, 96))
    noise = np.random.default_rng(int(rng.integers(1 << 31)))

    # The sensor grid (image pixel units); rolling shutter shears it row by row.
    rows, cols = rig.sensor
    grid = rows / H
    gy = ((np.arange(rows, dtype=np.float32) + 0.5) / grid)[:, None]
    gx = ((np.arange(cols, dtype=np.float32) + 0.5) * (W / cols))[None, :] - skew * (gy - H / 2)

    # The target: its stature spans ``fill`` of the frame; a crop pushes the head or the feet out.
    span = fill * H
    s0 = span / (rig.squash * p.stature * (1.0 + rig.tilt * p.stature / (2 * REF_HEIGHT)))
    if crop:
        feet_y = H - 1.0 - 2.0 * margin if head_out else span + 2.0 * margin
    else:
        feet_y = (0.01 + margin * max(0.99 - fill - 0.01, 0.0)) * H + span
    horizon = min(horizon, feet_y - 20.0)
    cx = W / 2 + dx

    # Lights per spectrum.
    if rig.spectrum == "day":
        mode, sun, sky = "rgb", np.array([1.0, 0.96, 0.88], np.float32), ambient * np.array([0.85, 0.95, 1.15], np.float32)
    elif rig.spectrum == "dusk":
        mode, sun, sky = "rgb", np.array([1.0, 0.56, 0.18], np.float32), 0.45 * ambient * np.array([0.5, 0.55, 0.85], np.float32)
        light = np.array([0.45 * light[0], 0.9, 0.4])
        sunny = False
    elif rig.spectrum == "nir":
        mode, sun, sky = "nir", np.array([1.0], np.float32), np.array([0.22], np.float32)
        light = np.array([0.25 + 0.2 * light[0], 0.75, 0.6])  # the IR floodlight on a mast above the camera
        sunny = False
    else:
        mode, sun, sky = "lwir", np.ones(1, np.float32), np.ones(1, np.float32)
    light = light / np.linalg.norm(light)
    cv = _Canvas(mode, (rows, cols), light, sun, sky, t_air - 12.0)

    # Street: sky, facade with windows, road beyond the kerb, paving with perspective joints.
    below = np.maximum(gy - horizon, 0.5)
    ground = _soft(gy - horizon, np.float32(grid))
    slope, x0, at = shadow_line  # a building's shadow edge across the pavement
    edge = horizon + (feet_y - horizon) * (0.5 + at) + slope * (gx - x0)
    sunlit = (np.clip(0.5 + np.sign(slope + 1e-6) * (gy - edge) * grid, 0.0, 1.0).astype(np.float32)
              if sunny else np.zeros((rows, cols), np.float32))
    facade_sun = sunny and slope > 0
    dusk = rig.spectrum == "dusk"
    ones = np.ones((rows, cols), np.float32)
    sky_mat = _Mat(np.array([0.55, 0.68, 0.92] if not dusk else [0.1, 0.09, 0.14], np.float32), 0.45, t_air - 30.0, emit=True)
    cv.lay(ones, sky_mat, FLAT_FRONT)
    wall_t = t_air + 1.5 + (sun_heat * 0.6 if facade_sun else 0.0)
    facade = ones * _soft(gy - (horizon - facade_h), np.float32(grid))
    cv.lay(facade, _Mat(wall.rgb, wall.nir, wall_t), FLAT_FRONT, direct=0.7 if facade_sun else 0.15)
    wx, wox, wfx, wy, woy, wfy = windows
    cx_w, cy_w = (gx - wox) / wx, (gy - (horizon - facade_h) - woy) / wy
    in_facade = (gy > horizon - facade_h + woy) & (gy < horizon - 6.0)
    win = ((cx_w - np.floor(cx_w)) < wfx) & ((cy_w - np.floor(cy_w)) < wfy) & in_facade
    win = win.astype(np.float32)
    glass = _Mat(np.array([0.03, 0.04, 0.06], np.float32), 0.07, t_air - 7.0)
    cv.lay(win, glass, FLAT_FRONT)
    if dusk:  # some shop windows are lit
        lit = (np.sin(np.floor(cx_w) * 12.9898 + np.floor(cy_w) * 78.233 + wox) * 43758.5453) % 1.0 < 0.45
        cv.lay(win * lit, _Mat(np.array([0.55, 0.42, 0.22], np.float32), 0.3, t_air - 7.0, emit=True), FLAT_FRONT)
    kerb_y = horizon + (feet_y - horizon) * kerb
    depth = (feet_y - horizon) / below  # ground depth, in target distances
    road = ground * (1.0 - _soft(gy - kerb_y, np.float32(grid)))
    road_t = t_air + 2.0 + sun_heat * sunlit
    on_ground = sunlit if sunny else 0.0
    cv.lay(ones * ground, _Mat(paving.rgb, paving.nir, t_air + 0.5 + 0.8 * sun_heat * sunlit), FLAT_UP, direct=on_ground)
    slab = 6.0 * depth / joint
    seam = np.clip(1.0 - np.abs(slab - np.round(slab)) * (joint * below / (6.0 * depth)) * 1.2, 0.0, 1.0)
    fade = np.clip(joint * below / (6.0 * depth) / 3.0 - 1.0, 0.0, 1.0)
    cv.lay(ground * (1 - road) * seam * fade * ones, _Mat(paving.rgb * 0.45, paving.nir * 0.6, t_air), FLAT_UP, direct=on_ground)
    cv.lay(road * ones, _Mat(np.array([0.05, 0.05, 0.055], np.float32), 0.1, road_t), FLAT_UP, direct=on_ground)
    kerb_band = _soft(gy - kerb_y, np.float32(grid)) * _soft(kerb_y + 2.5 - gy, np.float32(grid))
    kerb_mat = _Mat(np.array([0.4, 0.4, 0.38], np.float32), 0.45, t_air + 1.0)
    cv.lay(kerb_band * ground * ones, kerb_mat, FLAT_FRONT, direct=1.0 if sunny else 0.2)
    if dusk:  # the sodium lamp's pool of light on the ground
        px0, py0, pr = pool
        py = horizon + (feet_y - horizon) * py0
        glow = np.exp(-(((gx - px0) / (1.6 * pr)) ** 2 + ((gy - py) / pr) ** 2)) * ground
        cv.value *= (1.0 + 2.2 * glow)[..., None]

    # Who stands where: every object on the ground plane, painted far (small depth ratio) to near.
    sun_at = float(sunlit[min(int(feet_y * grid), rows - 1), min(max(int(cx * grid), 0), cols - 1)]) if sunny else 0.0
    direct_people = sun_at if sunny else (1.0 if rig.spectrum in ("dusk", "nir") else 0.0)
    scene: list[tuple[float, int, object]] = []
    lamp = _Mat(np.array([0.8, 0.75, 0.6], np.float32), 0.5, t_air + 8.0, emit=dusk)
    for kind, ratio, x, dye in items:
        if ratio > 1.0 and (kind != "bollard" or abs(x - cx) < 0.3 * W):
            ratio = 1.0 / ratio  # only a bollard off to the side may stand between the camera and the person
        elif ratio > 1.0:
            ratio = 1.0 + 0.4 * (ratio - 1.0)
        scene.append((ratio, 0, (kind, x, _Mat(dye.rgb, dye.nir, t_air - 1.0))))
    chosen = []
    for ratio, offset, side, opose, pick in others[:n_others]:
        other = crowd[pick % len(crowd)] if crowd else draw_pedestrian(0, np.random.default_rng(pick))
        chosen.append(other)
        scene.append((ratio, 2, (other, cx + side * offset, opose)))
    scene.append((1.0, 1, None))
    for ratio, who, what in sorted(scene, key=lambda item: (item[0], item[1] != 1)):
        fy = horizon + (feet_y - horizon) * ratio
        if who == 0:
            kind, x, mat = what
            _paint_item(cv, _Place(gy, gx, grid, fy, x, s0 * ratio, rig), kind, mat, lamp, direct_people)
        elif who == 2:
            other, x, opose = what
            _paint_person(cv, _Place(gy, gx, grid, fy, x, s0 * ratio, rig), other, opose, 2, t_air, exertion, direct_people)
        else:
            _paint_person(cv, _Place(gy, gx, grid, feet_y, cx, s0, rig), p, pose, 1, t_air, exertion, direct_people)

    # The sensor.
    if rig.spectrum in ("day", "dusk"):
        img = cv.value * np.array(rig.wb, np.float32) * tint * exposure
        if dusk:
            level = 0.28
            electrons = np.clip(img * level, 0.0, None) * 1100.0  # few photons: shot noise, then read noise
            electrons = electrons + np.sqrt(electrons) * noise.standard_normal(img.shape) + 4.0 * noise.standard_normal(img.shape)
            img = electrons / (1100.0 * level)  # the gain brings it back up, noise and all
            lum = img @ np.array([0.3, 0.59, 0.11], np.float32)
            img = lum[..., None] + 0.5 * (img - lum[..., None])  # mesopic desaturation
            img = img * np.array([1.2, 0.93, 0.6], np.float32)  # the sodium cast the white balance leaves
        else:
            electrons = np.clip(img, 0.0, None) * 6000.0
            img = (electrons + np.sqrt(electrons) * noise.standard_normal(img.shape)) / 6000.0
        pixels = (np.clip(img, 0.0, 1.0) ** (1 / 2.2) * 255 + 0.5).astype(np.uint8)
        image = Image.fromarray(pixels, mode="RGB")
        if defocus > 0:
            image = image.filter(ImageFilter.GaussianBlur(defocus))
    elif rig.spectrum == "nir":
        sig = cv.value[..., 0] * rig.gain * exposure * (1.15 - 0.35 * (gy / H - 0.7) ** 2)
        electrons = np.clip(sig, 0.0, None) * 900.0
        sig = (electrons + np.sqrt(electrons) * noise.standard_normal(sig.shape) + 5.0 * noise.standard_normal(sig.shape)) / 900.0
        grey = _upsample(np.clip(sig, 0.0, 1.0) ** (1 / 1.8), Image.BICUBIC)
        image = Image.fromarray(np.repeat((np.clip(grey, 0, 1) * 255 + 0.5).astype(np.uint8)[..., None], 3, axis=2), mode="RGB")
    else:
        temp = cv.value[..., 0]
        warm = np.clip(temp - (t_air + 5.0), 0.0, None)
        temp = temp + 0.45 * _blur(warm, 1.6)  # halo around warm bodies
        columns = np.random.default_rng([cam, 0xF9]).normal(0.0, 0.55, size=(1, cols)).astype(np.float32)
        temp = temp + columns * float(noise.uniform(0.7, 1.3)) + 0.15 * noise.standard_normal(temp.shape).astype(np.float32)
        level = float(np.median(temp))
        grey = 0.38 + (temp - level) * rig.gain / 30.0  # a fixed span of 30 K around the scene level
        grey = _upsample(grey, Image.BILINEAR)
        image = Image.fromarray(np.repeat((np.clip(grey, 0, 1) * 255 + 0.5).astype(np.uint8)[..., None], 3, axis=2), mode="RGB")
    person = np.clip(_upsample(cv.person, Image.BILINEAR), 0.0, 1.0)
    others_mask = np.clip(_upsample(cv.crowd, Image.BILINEAR), 0.0, 1.0)
    return Frame(image, person, others_mask, len(chosen), quality)


def render(p: Pedestrian, cam: int, rng: np.random.Generator, crowd: Sequence[Pedestrian] = ()) -> Image.Image:
    """One image of ``p`` from camera ``cam``."""
    return render_frame(p, cam, rng, crowd).image


def crowd_cameras(rng: np.random.Generator) -> list[int]:
    """The cameras a person passed: at least one visible and one infrared."""
    return passed_cameras(rng, 0.8, 0.8)


def generate_crowd(
    root: Path | str, *, ids: int = 90, seed: int = 0, images_per_camera: int = 3, passers_by: str = "split"
) -> dict:
    """Write the set under ``root`` in the SYSU-MM01 layout; returns a short summary.

    ``passers_by``: ``split`` (other people of the person's own train/val/test split) or ``any``
    (anyone in the set, test identities in training images included: the first version, kept to
    reproduce the numbers drawn with it).
    """
    if passers_by not in ("split", "any"):
        raise SystemExit(f"passers_by must be split or any, got {passers_by!r}")
    root = Path(root)
    check_arguments(root, ids, images_per_camera)
    pids = list(range(1, ids + 1))
    splits = split_ids(pids, np.random.default_rng([seed, 0xC5]))
    people = {pid: draw_pedestrian(pid, np.random.default_rng([seed, pid, 0xD1])) for pid in pids}
    images, crowded = 0, 0
    for pid in pids:
        own = next(members for members in splits.values() if pid in members)
        pool = [q for q in people.values() if q.pid != pid and (passers_by == "any" or q.pid in own)]
        for cam in crowd_cameras(np.random.default_rng([seed, pid, 0xCA])):
            folder = root / f"cam{cam}" / f"{pid:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(1, images_per_camera + 1):
                frame = render_frame(people[pid], cam, np.random.default_rng([seed, pid, cam, index, 0xE3]), pool)
                frame.image.save(folder / f"{index:04d}.jpg", quality=frame.quality)
                images += 1
                crowded += frame.others > 0
    write_layout(root, splits, pids)
    return {"root": str(root), "ids": ids, "images": images, "with_others": crowded,
            "splits": {k: len(v) for k, v in splits.items()}}


def main() -> None:
    generator_main(generate_crowd, "Draw the crowded-street synthetic set (SYSU-MM01 layout), held out for issue 31.")


if __name__ == "__main__":
    main()
