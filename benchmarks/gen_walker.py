"""A third synthetic cross-spectrum person set ("walker"), for tests and benchmarks only.

Its design is its own. It shares only the output layout (SYSU-MM01:
``camN/<pid>/<index>.jpg`` and ``exp/{train,val,test}_id.txt``, visible
cameras 1, 2, 4, 5 and infrared 3, 6) with ``mclnet_cli.data.synthetic`` and
``benchmarks/alt_synthetic.py``:

- a 3-D articulated skeleton (hips, knees, ankles, shoulders, elbows, wrists,
  neck, head) in metres. Each identity has its own limb lengths, widths,
  stoop and gait (stride, knee lift, arm swing). Each image picks a phase of the
  walking cycle and a heading (towards / away / left / right);
- a pinhole camera at a camera-specific height projects it. High cameras
  foreshorten the legs and squash the body once it is cropped to the person
  box. The painter's algorithm orders body parts by their depth. Limbs are
  tapered capsules and the torso is an oriented rounded trapezoid, all
  anti-aliased from their signed distance;
- garments are typed (open or closed jacket, long or short sleeves, trousers or
  shorts, shoes). Each print is placed by its angle around the torso cylinder:
  vertical stripes, an open-jacket placket seen only from the front, and a
  7-segment number seen only from behind. Hair style (bald, short, long,
  ponytail) and a carried object (umbrella, phone at the ear, box) complete
  the identity;
- visible: per-camera colour temperature (mired shift), wall/floor or
  sky/ground gradients split at the projected floor line, soft floor shadows
  plus the person's own shadow projected along the light, and motion smear
  along the projected walking direction;
- infrared (LWIR): the surface temperature of each garment comes from a
  skin-to-air thermal-resistance divider, ``T = T_air + (T_skin - T_air) *
  R_air / (R_air + R_clo)``, with clo values by garment type and an identity
  thickness. Hair insulates the head, extremities cool in the cold, and carried
  objects sit at air temperature. Colour never enters. Radiance ~ T^4 is
  integrated over a coarse sensor grid, plus fixed-pattern column noise of the
  camera. Camera 3 is white-hot with a fixed temperature window; camera 6 is
  black-hot with AGC (2-98 percentile stretch).

    python benchmarks/gen_walker.py OUT --ids 90 --seed 0
    mclnet prepare sysu OUT --out PREPARED
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sysu_layout import check_arguments, generator_main, passed_cameras, split_ids, write_layout

H, W = 128, 64
HEADINGS = ("towards", "away", "left", "right")
HAIR = ("bald", "short", "long", "ponytail")
CARRY = ("none", "umbrella", "phone", "box")
JACKET = ("none", "open", "closed")
PRINT = ("none", "stripes", "glyph")
R_AIR = 0.7  # clo: the still-air layer outside the outermost garment
# 7-segment glyphs: segments a (top), b (top right), c (bottom right), d (bottom), e, f, g (middle)
SEGMENTS = ("abcdef", "bc", "abdeg", "abcdg", "bcfg", "acdfg", "acdefg", "abc", "abcdefg", "abcdfg")
HAIR_RGB = ((0.03, 0.025, 0.02), (0.08, 0.05, 0.03), (0.2, 0.12, 0.06), (0.55, 0.42, 0.22), (0.42, 0.42, 0.42), (0.32, 0.1, 0.04))


@dataclass(frozen=True)
class Rig:
    """A fixed camera: where it hangs, what it sees, how it records."""

    infrared: bool
    outdoor: bool
    height: float  # metres above the floor
    kelvin: float  # illuminant colour temperature (visible only)
    upper: tuple[tuple[float, float, float], tuple[float, float, float]]  # wall / sky gradient, top to bottom
    floor: tuple[float, float, float]
    light: tuple[float, float, float]  # direction the light travels (x, y<0, z), for the cast shadow
    sensor: tuple[int, int] = (H, W)  # thermal detector grid covering the crop


RIGS = {
    1: Rig(False, False, 2.4, 3200, ((0.62, 0.6, 0.55), (0.42, 0.4, 0.37)), (0.28, 0.26, 0.24), (0.25, -1.0, 0.35)),
    2: Rig(False, False, 1.5, 4300, ((0.5, 0.56, 0.64), (0.36, 0.4, 0.46)), (0.42, 0.35, 0.28), (-0.3, -1.0, 0.2)),
    3: Rig(True, False, 2.8, 0, ((0, 0, 0), (0, 0, 0)), (0, 0, 0), (0.0, -1.0, 0.3), sensor=(44, 22)),
    4: Rig(False, True, 3.6, 5600, ((0.66, 0.74, 0.84), (0.44, 0.46, 0.47)), (0.34, 0.35, 0.33), (0.9, -0.7, 0.5)),
    5: Rig(False, True, 1.1, 7500, ((0.5, 0.6, 0.45), (0.26, 0.34, 0.22)), (0.4, 0.37, 0.33), (-0.8, -0.9, -0.3)),
    6: Rig(True, True, 1.9, 0, ((0, 0, 0), (0, 0, 0)), (0, 0, 0), (0.7, -0.8, 0.4), sensor=(36, 18)),
}


@dataclass(frozen=True)
class Walker:
    """One identity: body, gait, garments (types, colours, insulation), hair, carried object."""

    pid: int
    stature: float  # metres
    hip_height: float
    torso: float  # hip centre to neck base
    neck: float
    head_r: float
    thigh: float
    shin: float
    upper_arm: float
    forearm: float
    shoulder_hw: float  # half distance between the shoulder joints
    hip_hw: float  # half hip width (outline)
    chest_d: float  # half chest depth (outline seen from the side)
    limb_r: tuple[float, float, float, float]  # thigh, shin, upper arm, forearm radii
    stoop: float  # forward lean of the spine (radians)
    stride: float  # hip flexion amplitude (radians)
    knee_lift: float
    arm_swing: float
    elbow: float  # resting elbow bend
    hair: str
    hair_rgb: tuple[float, float, float]
    skin_rgb: tuple[float, float, float]
    skin_temp: float  # deg C at the face
    vaso: float  # how much the extremities cool towards the air
    jacket: str
    jacket_rgb: tuple[float, float, float]
    jacket_clo: float
    jacket_drop: float  # how far the jacket hangs below the waist, fraction of the torso
    shirt_rgb: tuple[float, float, float]
    short_sleeves: bool
    shirt_clo: float
    shorts: bool
    lower_rgb: tuple[float, float, float]
    lower_clo: float
    shoe_rgb: tuple[float, float, float]
    print: str
    print_rgb: tuple[float, float, float]
    stripes: int
    stripe_width: float  # fraction of a stripe period
    digit: int
    carry: str
    carry_side: int  # +1 the person's right hand, -1 the left
    carry_rgb: tuple[float, float, float]


def _garment_rgb(rng: np.random.Generator) -> tuple[float, float, float]:
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.1, 0.9), rng.uniform(0.12, 0.95))
    return (r * r, g * g, b * b)  # roughly linear light


def draw_walker(pid: int, rng: np.random.Generator) -> Walker:
    """Sample one identity."""
    stature = float(rng.uniform(1.5, 1.95))
    hip_height = stature * float(rng.uniform(0.47, 0.53))
    head_r = stature * float(rng.uniform(0.06, 0.07))
    neck = stature * float(rng.uniform(0.035, 0.055))
    leg = hip_height - 0.08
    knee_at = float(rng.uniform(0.5, 0.56))
    arm = float(rng.uniform(0.92, 1.08))
    build = float(rng.uniform(0.85, 1.3))
    tone = float(rng.uniform(0.25, 1.0))
    return Walker(
        pid=pid,
        stature=stature,
        hip_height=hip_height,
        torso=stature - hip_height - 2 * head_r - neck,
        neck=neck,
        head_r=head_r,
        thigh=leg * knee_at,
        shin=leg * (1 - knee_at),
        upper_arm=stature * 0.186 * arm,
        forearm=stature * 0.146 * arm,
        shoulder_hw=float(rng.uniform(0.16, 0.22)) * (0.8 + 0.2 * build),
        hip_hw=float(rng.uniform(0.13, 0.18)) * build,
        chest_d=float(rng.uniform(0.09, 0.13)) * build,
        limb_r=tuple(float(rng.uniform(lo, hi) * build) for lo, hi in ((0.065, 0.08), (0.045, 0.055), (0.04, 0.05), (0.032, 0.04))),
        stoop=float(rng.uniform(0.0, 0.22)),
        stride=float(rng.uniform(0.2, 0.45)),
        knee_lift=float(rng.uniform(0.3, 0.9)),
        arm_swing=float(rng.uniform(0.05, 0.55)),
        elbow=float(rng.uniform(0.05, 0.45)),
        hair=HAIR[int(rng.integers(len(HAIR)))],
        hair_rgb=tuple(float(c) * float(rng.uniform(0.8, 1.2)) for c in HAIR_RGB[int(rng.integers(len(HAIR_RGB)))]),
        skin_rgb=(0.8 * tone, 0.55 * tone * float(rng.uniform(0.9, 1.05)), 0.42 * tone * float(rng.uniform(0.85, 1.05))),
        skin_temp=float(rng.uniform(33.0, 35.5)),
        vaso=float(rng.uniform(0.05, 0.3)),
        jacket=JACKET[int(rng.integers(len(JACKET)))],
        jacket_rgb=_garment_rgb(rng),
        jacket_clo=float(rng.uniform(0.6, 1.8)),
        jacket_drop=float(rng.uniform(0.0, 0.25)),
        shirt_rgb=_garment_rgb(rng),
        short_sleeves=bool(rng.random() < 0.45),
        shirt_clo=float(rng.uniform(0.12, 0.4)),
        shorts=bool(rng.random() < 0.3),
        lower_rgb=_garment_rgb(rng),
        lower_clo=float(rng.uniform(0.2, 0.6)),
        shoe_rgb=_garment_rgb(rng),
        print=PRINT[int(rng.integers(len(PRINT)))],
        print_rgb=_garment_rgb(rng),
        stripes=int(rng.integers(6, 14)),
        stripe_width=float(rng.uniform(0.2, 0.45)),
        digit=int(rng.integers(10)),
        carry=CARRY[int(rng.integers(len(CARRY)))],
        carry_side=1 if rng.random() < 0.5 else -1,
        carry_rgb=_garment_rgb(rng),
    )


# --------------------------------------------------------------------------- skeleton


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-9)


def pose(p: Walker, phase: float) -> dict[str, np.ndarray]:
    """Joint positions (metres; x = the person's right, y = up, z = forward) at ``phase`` of the gait cycle."""
    s = 2 * np.pi * phase
    j: dict[str, np.ndarray] = {}
    for side, name, ph in ((1, "r", s + np.pi), (-1, "l", s)):
        flex = p.stride * np.sin(ph)
        knee = 0.06 + p.knee_lift * max(0.0, np.cos(ph)) ** 1.5  # the knee bends while the leg swings forward
        hip = np.array([side * p.hip_hw * 0.55, 0.0, 0.0])
        kn = hip + p.thigh * np.array([0.0, -np.cos(flex), np.sin(flex)])
        an = kn + p.shin * np.array([0.0, -np.cos(flex - knee), np.sin(flex - knee)])
        j[f"hip_{name}"], j[f"knee_{name}"], j[f"ankle_{name}"] = hip, kn, an
        j[f"toe_{name}"] = an + np.array([0.0, -0.05, 0.1 * p.stature])
    lift = 0.08 - min(j["ankle_r"][1], j["ankle_l"][1])  # the lower ankle sits 8 cm above the floor
    for key in list(j):
        j[key] = j[key] + np.array([0.0, lift, 0.0])
    pelvis = np.array([0.0, lift, 0.0])
    spine = np.array([0.0, np.cos(p.stoop), np.sin(p.stoop)])
    neck = pelvis + p.torso * spine
    tilt = 1.6 * p.stoop
    head_dir = np.array([0.0, np.cos(tilt), np.sin(tilt)])
    j["pelvis"], j["neck"], j["head"] = pelvis, neck, neck + (p.neck + p.head_r) * head_dir
    for side, name, ph in ((1, "r", s), (-1, "l", s + np.pi)):
        swing = p.arm_swing * np.sin(ph)  # opposite to the leg on the same side
        if p.carry == "umbrella" and side == p.carry_side:
            swing *= 0.3
        sh = neck + np.array([side * p.shoulder_hw, -0.035, -0.01])
        el = sh + p.upper_arm * _unit(np.array([side * 0.08, -np.cos(swing), np.sin(swing)]))
        bend = swing + p.elbow + 0.5 * max(0.0, swing)
        wr = el + p.forearm * _unit(np.array([side * 0.05, -np.cos(bend), np.sin(bend)]))
        if p.carry == "phone" and side == p.carry_side:
            el = sh + np.array([side * 0.12, -0.2, 0.1])
            wr = j["head"] + np.array([side * p.head_r * 1.05, -0.02, 0.03])
        elif p.carry == "box":
            el = sh + np.array([side * 0.04, -0.24, 0.1])
            wr = neck + np.array([side * 0.14, -0.55 * p.torso, 0.3])
        j[f"shoulder_{name}"], j[f"elbow_{name}"], j[f"wrist_{name}"] = sh, el, wr
    return j


# --------------------------------------------------------------------------- 2-D signed distances


def _capsule(gy: np.ndarray, gx: np.ndarray, a, b, ra: float, rb: float) -> tuple[np.ndarray, np.ndarray]:
    """Signed distance (px, negative inside) to a tapered capsule a-b, and a cylinder normal (1 on the axis)."""
    (ay, ax), (by, bx) = a, b
    dy, dx = by - ay, bx - ax
    l2 = dy * dy + dx * dx
    t = np.clip(((gy - ay) * dy + (gx - ax) * dx) / l2, 0.0, 1.0) if l2 > 1e-6 else np.zeros_like(gy)
    ey, ex = gy - ay - t * dy, gx - ax - t * dx
    dist = np.sqrt(ey * ey + ex * ex)
    r = np.maximum(ra + (rb - ra) * t, 1e-3)
    return dist - r, np.sqrt(np.clip(1.0 - (dist / r) ** 2, 0.0, 1.0))


def _cover(sd: np.ndarray, soft: float = 1.0) -> np.ndarray:
    """Pixel coverage from a signed distance (one-pixel, or ``soft``-pixel, anti-aliased edge)."""
    return np.clip(0.5 - sd / soft, 0.0, 1.0)


def _round_box(qy: np.ndarray, qx: np.ndarray, rho: float) -> np.ndarray:
    """Rounded-box distance from the per-axis excess (|coordinate| - half size)."""
    ay, ax = qy + rho, qx + rho
    outside = np.sqrt(np.maximum(ay, 0.0) ** 2 + np.maximum(ax, 0.0) ** 2)
    return outside + np.minimum(np.maximum(ay, ax), 0.0) - rho


def _smooth_step(x: np.ndarray) -> np.ndarray:
    return np.clip(x + 0.5, 0.0, 1.0)


# --------------------------------------------------------------------------- thermal model


def _surface(skin: float, air: float, clo: float) -> float:
    """Outer surface temperature of a garment layer stack of ``clo`` over skin at ``skin`` in air at ``air``."""
    return air + (skin - air) * R_AIR / (R_AIR + clo)


def _radiance(t_c: np.ndarray | float) -> np.ndarray:
    """In-band radiance proxy (Stefan-Boltzmann shape), 1 at 27 deg C."""
    return ((np.asarray(t_c, dtype=np.float32) + 273.15) / 300.15) ** 4


# --------------------------------------------------------------------------- rendering


@dataclass
class _Part:
    alpha: np.ndarray
    shade: np.ndarray
    rgb: tuple[float, float, float]
    temp: float
    person: bool = True


def _mired_gains(kelvin: float) -> np.ndarray:
    shift = 1e6 / kelvin - 1e6 / 5500.0
    return np.exp(np.array([0.0028, 0.0, -0.0028]) * shift).astype(np.float32)


def render_with_mask(p: Walker, cam: int, rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    """One 128x64 image of ``p`` from camera ``cam``, and the person's coverage mask (carried objects excluded)."""
    rig = RIGS[cam]
    # All per-image randomness, drawn in one fixed order (nothing below depends on a colour).
    heading = HEADINGS[int(rng.integers(4))]
    yaw = {"away": 0.0, "towards": np.pi, "right": np.pi / 2, "left": -np.pi / 2}[heading] + rng.uniform(-0.35, 0.35)
    phase = rng.random()
    distance = rng.uniform(4.0, 9.0)
    cam_h = rig.height + rng.uniform(-0.15, 0.15)
    offset = rng.uniform(-0.6, 0.6)
    fill = rng.uniform(0.82, 0.94)
    top_margin = rng.uniform(0.02, 0.08) * H
    dx_px = rng.uniform(-3.0, 3.0)
    wall_at = rng.uniform(1.0, 5.0)
    ambient = float((0.0 if rig.outdoor else 20.0) + rng.uniform(0.0, 10.0 if rig.outdoor else 5.0))  # deg C
    exertion = rng.uniform(-0.3, 0.4)
    exposure = rng.uniform(0.8, 1.2)
    tint = rng.uniform(0.93, 1.07, size=3)
    blobs = [(rng.uniform(0.55, 1.0), rng.uniform(0, W), rng.uniform(4, 12), rng.uniform(8, 30), rng.uniform(0.1, 0.3)) for _ in range(3)]
    smear = int(rng.integers(0, 6)) if rng.random() < 0.4 else 0
    netd = rng.normal(0.0, 0.06, size=rig.sensor).astype(np.float32)

    # World: the person stands at the origin; the camera is behind -z, aiming at the hips.
    fwd = np.array([np.sin(yaw), 0.0, np.cos(yaw)])
    lat = np.array([np.cos(yaw), 0.0, -np.sin(yaw)])
    up = np.array([0.0, 1.0, 0.0])
    joints = {k: v[0] * lat + v[1] * up + v[2] * fwd for k, v in pose(p, phase).items()}
    eye = np.array([offset, cam_h, -distance])
    c_f = _unit(np.array([0.0, 0.95, 0.0]) - eye)
    c_r = _unit(np.cross(up, c_f))
    c_u = np.cross(c_f, c_r)
    c_h = _unit(c_f * np.array([1.0, 0.0, 1.0]))  # painter's order: horizontal distance (bodies are upright)

    def project(pt: np.ndarray) -> tuple[float, float, float]:
        rel = pt - eye
        z = float(rel @ c_f)
        return float(-(rel @ c_u) / z), float((rel @ c_r) / z), z

    proj = {k: project(v) for k, v in joints.items()}
    top = proj["head"][0] - p.head_r * 1.1 / proj["head"][2]
    bottom = max(proj[f"toe_{s}"][0] + 0.05 / proj[f"toe_{s}"][2] for s in "rl")
    scale = fill * H / (bottom - top)
    y0, x0 = top_margin - top * scale, W / 2 + dx_px - proj["pelvis"][1] * scale

    def px(key_or_pt) -> tuple[float, float]:
        yn, xn, _ = proj[key_or_pt] if isinstance(key_or_pt, str) else project(key_or_pt)
        return y0 + yn * scale, x0 + xn * scale

    def rad(r_m: float, key: str) -> float:
        return r_m * scale / proj[key][2]

    def depth(*keys: str) -> float:
        return float(np.mean([(joints[k] - eye) @ c_h for k in keys]))

    gy, gx = np.mgrid[0:H, 0:W].astype(np.float32)
    gy, gx = gy + 0.5, gx + 0.5

    # Temperatures (infrared) of every material; colours (visible) come straight from the identity.
    skin_t = p.skin_temp + exertion
    limb_t = skin_t - p.vaso * (skin_t - ambient)  # hands, forearms and legs cool towards the air
    shirt_t = _surface(skin_t, ambient, p.shirt_clo)
    jacket_t = _surface(skin_t, ambient, p.shirt_clo + p.jacket_clo)
    sleeve_t = _surface(limb_t, ambient, p.jacket_clo if p.jacket != "none" else p.shirt_clo * (0.7 if p.short_sleeves else 1.0))
    lower_t = _surface(limb_t, ambient, p.lower_clo)
    shoe_t = _surface(limb_t, ambient, 1.0)
    hair_t = _surface(skin_t, ambient, {"bald": 0.0, "short": 0.25, "long": 0.5, "ponytail": 0.4}[p.hair])
    mass_t = _surface(skin_t, ambient, 1.4)  # a hanging mass of hair barely touches the skin
    outer_rgb = p.jacket_rgb if p.jacket != "none" else p.shirt_rgb
    outer_t = jacket_t if p.jacket != "none" else shirt_t
    sleeve_rgb = p.jacket_rgb if p.jacket != "none" else p.shirt_rgb

    groups: list[tuple[float, list[_Part]]] = []

    def capsule_part(a: str, b: str, ra: float, rb: float, rgb, temp, *, upto: float = 1.0, person: bool = True) -> _Part:
        pa, pb = np.array(px(a)), np.array(px(b))
        sd, sh = _capsule(gy, gx, pa, pa + upto * (pb - pa), rad(ra, a), rad(rb, b))
        return _Part(_cover(sd), sh, rgb, temp, person)

    # Legs: skin under shorts, the garment over it, then the shoe.
    r_th, r_sh, r_ua, r_fa = p.limb_r
    for s in "rl":
        parts = []
        if p.shorts:
            parts += [capsule_part(f"hip_{s}", f"knee_{s}", r_th * 0.9, r_sh, p.skin_rgb, limb_t),
                      capsule_part(f"knee_{s}", f"ankle_{s}", r_sh, r_sh * 0.75, p.skin_rgb, limb_t),
                      capsule_part(f"hip_{s}", f"knee_{s}", r_th * 1.08, r_th * 0.95, p.lower_rgb, lower_t, upto=0.55)]
        else:
            parts += [capsule_part(f"hip_{s}", f"knee_{s}", r_th, r_sh * 1.05, p.lower_rgb, lower_t),
                      capsule_part(f"knee_{s}", f"ankle_{s}", r_sh * 1.05, r_sh * 0.9, p.lower_rgb, lower_t)]
        parts.append(capsule_part(f"ankle_{s}", f"toe_{s}", 0.045, 0.04, p.shoe_rgb, shoe_t))
        groups.append((depth(f"hip_{s}", f"knee_{s}", f"ankle_{s}"), parts))

    # Arms: skin, then the sleeve (short sleeves stop half way down the upper arm), then the hand.
    for s, side in (("r", 1), ("l", -1)):
        parts = [capsule_part(f"shoulder_{s}", f"elbow_{s}", r_ua, r_fa, p.skin_rgb, limb_t),
                 capsule_part(f"elbow_{s}", f"wrist_{s}", r_fa, r_fa * 0.8, p.skin_rgb, limb_t)]
        if p.jacket == "none" and p.short_sleeves:
            parts.append(capsule_part(f"shoulder_{s}", f"elbow_{s}", r_ua * 1.2, r_ua * 1.1, sleeve_rgb, sleeve_t, upto=0.45))
        else:
            thick = 1.25 if p.jacket != "none" else 1.08
            parts += [capsule_part(f"shoulder_{s}", f"elbow_{s}", r_ua * thick, r_fa * thick, sleeve_rgb, sleeve_t),
                      capsule_part(f"elbow_{s}", f"wrist_{s}", r_fa * thick, r_fa * 0.95, sleeve_rgb, sleeve_t)]
        hand = np.array(px(f"wrist_{s}"))
        sd, sh = _capsule(gy, gx, hand, hand, rad(0.045, f"wrist_{s}"), rad(0.045, f"wrist_{s}"))
        parts.append(_Part(_cover(sd), sh, p.skin_rgb, limb_t))
        if p.carry == "phone" and side == p.carry_side:
            ph = joints[f"wrist_{s}"]
            a, b = np.array(px(ph + np.array([0.0, 0.06, 0.0]))), np.array(px(ph - np.array([0.0, 0.05, -0.02])))
            r = rad(0.024, f"wrist_{s}")
            sd, sh = _capsule(gy, gx, a, b, r, r)
            parts.append(_Part(_cover(sd), sh * 0.3, p.carry_rgb, ambient, False))
        groups.append((depth(f"shoulder_{s}", f"elbow_{s}", f"wrist_{s}") - 0.04, parts))

    # Torso: an oriented rounded trapezoid from the hip line to the neck base, with garment decals.
    p0, p1 = np.array(px("pelvis")), np.array(px("neck"))
    length = max(float(np.linalg.norm(p1 - p0)), 1.0)
    ay, ax = (p1 - p0) / length
    v = (gy - p0[0]) * ay + (gx - p0[1]) * ax  # along the spine, up
    w = (gy - p0[0]) * ax - (gx - p0[1]) * ay  # across, image right
    lr, fr = float(lat @ c_r), float(fwd @ c_r)
    hw_sh = rad(float(np.hypot(p.shoulder_hw * 0.95 * lr, p.chest_d * fr)), "neck")
    hw_hip = rad(float(np.hypot(p.hip_hw * lr, p.chest_d * 0.95 * fr)), "pelvis")
    hw_waist = min(hw_sh, hw_hip) * 0.93
    hw = np.interp(v / length, (0.0, 0.4, 0.85, 1.0), (hw_hip, hw_waist, hw_sh, hw_sh)).astype(np.float32)
    sd = _round_box(np.abs(v - length * 0.46) - length * 0.56, np.abs(w) - hw, 0.35 * hw_sh)
    torso_a = _cover(sd)
    torso_sh = np.sqrt(np.clip(1.0 - (w / np.maximum(hw, 1e-3)) ** 2, 0.0, 1.0))
    # Angle around the body at each pixel: the torso is an elliptic cylinder, x = A sin(th) + B cos(th).
    big_a, big_b = p.shoulder_hw * lr, p.chest_d * fr
    phi0 = np.arctan2(big_b, big_a)
    u = np.clip(w / np.maximum(hw, 1e-3), -1.0, 1.0)
    th1, th2 = np.arcsin(u) - phi0, np.pi - np.arcsin(u) - phi0
    cam_dir = -c_f
    facing1 = (np.sin(th1) / p.shoulder_hw) * float(lat @ cam_dir) + (np.cos(th1) / p.chest_d) * float(fwd @ cam_dir)
    theta = np.angle(np.exp(1j * np.where(facing1 > 0, th1, th2))).astype(np.float32)  # 0 = chest centre, pi = back
    dtheta = 1.0 / (np.maximum(hw, 1.0) * np.sqrt(np.maximum(1.0 - u * u, 0.05)))  # radians per pixel
    cut = length * (0.14 - (p.jacket_drop if p.jacket != "none" else 0.0))
    upper = _smooth_step(v - cut)
    parts = [_Part(torso_a, torso_sh, outer_rgb, outer_t),
             _Part(torso_a * (1.0 - upper), torso_sh, p.lower_rgb, lower_t)]
    if p.print == "stripes":
        k = theta * p.stripes / (2 * np.pi)
        off = np.abs(k - np.round(k))
        stripe = np.clip((p.stripe_width / 2 - off) / (dtheta * p.stripes / (2 * np.pi)) + 0.5, 0.0, 1.0)
        parts.append(_Part(torso_a * upper * stripe, torso_sh, p.print_rgb, outer_t))  # ink: no thermal contrast
    if p.jacket == "open":
        band = np.clip((0.38 - np.abs(theta)) / dtheta + 0.5, 0.0, 1.0)
        parts.append(_Part(torso_a * upper * band, torso_sh, p.shirt_rgb, shirt_t))
    if p.print == "glyph":
        back = np.angle(np.exp(1j * (theta - np.pi)))
        gxl = -back * rad(p.shoulder_hw, "neck")  # arc length across the back, un-mirrored
        gyl = length * 0.62 - v  # down the back
        gw, gh, stroke = 0.5 * hw_sh, 0.2 * length, max(0.07 * length, 0.8)
        ends = {"a": ((-gh, -gw), (-gh, gw)), "b": ((-gh, gw), (0, gw)), "c": ((0, gw), (gh, gw)), "d": ((gh, -gw), (gh, gw)),
                "e": ((0, -gw), (gh, -gw)), "f": ((-gh, -gw), (0, -gw)), "g": ((0, -gw), (0, gw))}
        ink = np.zeros_like(gy)
        for seg in SEGMENTS[p.digit]:
            (sy0, sx0), (sy1, sx1) = ends[seg]
            ink = np.maximum(ink, _cover(_capsule(gyl, gxl, (sy0, sx0), (sy1, sx1), stroke, stroke)[0]))
        parts.append(_Part(torso_a * upper * ink * (np.cos(back) > 0.2), torso_sh, p.print_rgb, outer_t))
    groups.append((depth("pelvis", "neck") - 0.03, parts))

    # Head: neck, face, hair cap; long hair and ponytails hang behind as their own depth layer.
    head_y, head_x = px("head")
    r_head = rad(p.head_r, "head")
    parts = [capsule_part("neck", "head", 0.05, 0.05, p.skin_rgb, skin_t)]
    sd, sh = _capsule(gy, gx, (head_y, head_x), (head_y, head_x), r_head, r_head)
    parts.append(_Part(_cover(sd), sh, p.skin_rgb, skin_t))
    if p.hair != "bald":
        front = float(fwd @ cam_dir)  # 1 seen from the front, -1 from behind
        side_x = float(fwd @ c_r)  # which image side the face points to
        line = head_y + r_head * (-0.35 * (1 + front) / 2 + 0.55 * (1 - front) / 2)
        nape = _smooth_step(-(gx - head_x) * side_x - 0.15 * r_head) * _smooth_step(head_y + 0.6 * r_head - gy) * abs(side_x)
        cap = np.maximum(_smooth_step(line - gy), nape)
        sd, sh = _capsule(gy, gx, (head_y - 0.05 * r_head, head_x), (head_y - 0.05 * r_head, head_x), r_head * 1.07, r_head * 1.07)
        parts.append(_Part(_cover(sd) * cap, sh, p.hair_rgb, hair_t))
    groups.append((depth("head") - 0.06, parts))
    if p.hair in ("long", "ponytail"):
        hc = joints["head"]
        if p.hair == "long":
            a, b, ra, rb = hc - 0.4 * p.head_r * fwd, hc - 2.3 * p.head_r * up - 0.7 * p.head_r * fwd, p.head_r * 0.95, p.head_r * 0.8
        else:
            a, b, ra, rb = hc + 0.2 * p.head_r * up - 1.0 * p.head_r * fwd, hc - 1.8 * p.head_r * up - 1.4 * p.head_r * fwd, 0.035, 0.022
        za, zb = project(a)[2], project(b)[2]
        sd, sh = _capsule(gy, gx, px(a), px(b), ra * scale / za, rb * scale / zb)
        groups.append((float((0.5 * (a + b) - eye) @ c_h), [_Part(_cover(sd), sh, p.hair_rgb, mass_t)]))

    # Carried objects (at air temperature).
    if p.carry == "umbrella":
        s = "r" if p.carry_side == 1 else "l"
        grip = joints[f"wrist_{s}"]
        tip = np.array([grip[0], 0.02, grip[2]]) + 0.3 * fwd
        pa, pb = np.array(px(grip)), np.array(px(tip))
        pole = _capsule(gy, gx, pa, pb, rad(0.012, f"wrist_{s}"), rad(0.01, f"wrist_{s}"))[0]
        parts = [_Part(_cover(pole), np.ones_like(gy), (0.05, 0.05, 0.05), ambient, False)]
        sd, sh = _capsule(gy, gx, pa + 0.2 * (pb - pa), pa + 0.8 * (pb - pa), rad(0.05, f"wrist_{s}"), rad(0.025, f"wrist_{s}"))
        parts.append(_Part(_cover(sd), sh, p.carry_rgb, ambient, False))
        groups.append((float((0.5 * (grip + tip) - eye) @ c_h) - 0.02, parts))
    elif p.carry == "box":
        centre = 0.5 * (joints["wrist_r"] + joints["wrist_l"]) + 0.06 * fwd
        cy, cx, cz = project(centre)
        bw = float(np.hypot(0.2 * lr, 0.14 * fr)) * scale / cz
        sd = _round_box(np.abs(gy - (y0 + cy * scale)) - 0.14 * scale / cz, np.abs(gx - (x0 + cx * scale)) - bw, 1.0)
        groups.append((float((centre - eye) @ c_h), [_Part(_cover(sd), np.ones_like(gy), p.carry_rgb, ambient, False)]))

    # Background: the projected floor line splits wall (or sky) from floor (or ground).
    horizon = px(np.array([0.0, 0.0, 40.0 if rig.outdoor else wall_at]))[0]
    floor = _smooth_step(gy - horizon)
    # The person's cast shadow: joints slid along the light onto the floor, drawn soft.
    light = np.array(rig.light)
    on_floor = {k: v - light * (v[1] / light[1]) for k, v in joints.items()}
    shadow = np.zeros_like(gy)
    for a, b, r in (("pelvis", "neck", p.hip_hw), ("hip_r", "ankle_r", r_th), ("hip_l", "ankle_l", r_th), ("neck", "head", p.head_r)):
        pa, pb = px(on_floor[a]), px(on_floor[b])
        rr = r * scale / project(on_floor[a])[2]
        shadow = np.maximum(shadow, _cover(_capsule(gy, gx, pa, pb, rr, rr)[0], soft=3.0))
    soft = np.zeros_like(gy)
    for fy, fx, ry, rx, dark in blobs:
        yy = horizon + fy * max(H - horizon, 4.0)
        soft = np.maximum(soft, dark * np.exp(-(((gy - yy) / ry) ** 2 + ((gx - fx) / rx) ** 2)))
    shadow = np.clip(shadow * floor, 0.0, 1.0)

    ordered = sorted(groups, key=lambda g: -g[0])  # far first (stable for ties)
    mask = np.zeros_like(gy)
    if rig.infrared:
        vert = np.clip(gy / max(horizon, 1.0), 0.0, 1.0)
        if rig.outdoor:
            temp = (ambient - 6.0 + 5.0 * vert) * (1 - floor) + (ambient + 1.5 - 1.5 * shadow - 1.0 * soft) * floor
        else:
            temp = (ambient + 1.2 * (1 - vert)) * (1 - floor) + (ambient - 0.8 + 2.0 * soft) * floor
        temp = temp.astype(np.float32)
        for _, parts in ordered:
            for part in parts:
                seen = ambient + (part.temp - ambient) * (0.82 + 0.18 * part.shade)  # grazing view loses contrast
                temp += part.alpha * (seen - temp)
                mask += part.alpha * (float(part.person) - mask)
        # The detector integrates radiance over its coarse pixels, with a column pattern fixed per camera.
        rows, cols = rig.sensor
        low = np.asarray(Image.fromarray(_radiance(temp), mode="F").resize((cols, rows), Image.BOX), dtype=np.float32)
        columns = np.random.default_rng([cam, 0xF1]).normal(0.0, 0.35, size=(1, cols)).astype(np.float32)
        low = low + (columns + netd) * (4.0 / 300.15)  # kelvin -> radiance (dL/dT near 300 K)
        full = np.asarray(Image.fromarray(low, mode="F").resize((W, H), Image.BICUBIC), dtype=np.float32)
        if cam == 3:  # white-hot, fixed span 15..37 deg C
            lo, hi = float(_radiance(15.0)), float(_radiance(37.0))
            grey = (full - lo) / (hi - lo)
        else:  # black-hot, automatic gain on the image's own 2-98 percentiles
            lo, hi = np.percentile(full, [2.0, 98.0])
            grey = 1.0 - (full - lo) / max(float(hi - lo), 1e-6)
        pixels = (np.clip(grey, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
        image = Image.fromarray(np.repeat(pixels[..., None], 3, axis=2), mode="RGB")
    else:
        vert = np.clip(gy / max(horizon, 1.0), 0.0, 1.0)[..., None]
        top_c, bot_c = np.array(rig.upper[0], np.float32), np.array(rig.upper[1], np.float32)
        wall = top_c * (1 - vert) + bot_c * vert
        ground = np.array(rig.floor, np.float32) * (1.1 - 0.2 * np.clip((gy - horizon) / H, 0, 1))[..., None]
        ground = ground * (1.0 - 0.5 * shadow - soft)[..., None]
        canvas = (wall * (1 - floor[..., None]) + ground * floor[..., None]) * tint.astype(np.float32)
        for _, parts in ordered:
            for part in parts:
                colour = np.asarray(part.rgb, np.float32) * (0.5 + 0.5 * part.shade)[..., None]
                canvas += part.alpha[..., None] * (colour - canvas)
                mask += part.alpha * (float(part.person) - mask)
        canvas = canvas * _mired_gains(rig.kelvin) * exposure
        if smear > 1:  # motion blur along the projected walking direction
            (ya, xa), (yb, xb) = px(joints["pelvis"]), px(joints["pelvis"] + 0.3 * fwd)
            step = np.array([yb - ya, xb - xa])
            step = step / max(float(np.linalg.norm(step)), 1e-6)
            pad = smear + 1
            padded = np.pad(canvas, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
            acc = np.zeros_like(canvas)
            for k in range(smear):
                oy, ox = int(round(k * step[0])), int(round(k * step[1]))
                acc += padded[pad + oy:pad + oy + H, pad + ox:pad + ox + W]
            canvas = acc / smear
        pixels = (np.clip(canvas, 0.0, 1.0) ** (1 / 2.2) * 255 + 0.5).astype(np.uint8)
        image = Image.fromarray(pixels, mode="RGB")
    return image, np.clip(mask, 0.0, 1.0)


def render(p: Walker, cam: int, rng: np.random.Generator) -> Image.Image:
    """One image of ``p`` from camera ``cam`` (infrared cameras give a thermal rendering)."""
    return render_with_mask(p, cam, rng)[0]


def walker_cameras(rng: np.random.Generator) -> list[int]:
    """The cameras a person walked past: at least one visible and one infrared."""
    return passed_cameras(rng, 0.75, 0.8)


def generate_walker(root: Path | str, *, ids: int = 90, seed: int = 0, images_per_camera: int = 3) -> dict:
    """Write the set under ``root`` in the SYSU-MM01 layout; returns a short summary."""
    root = Path(root)
    check_arguments(root, ids, images_per_camera)
    pids = list(range(1, ids + 1))
    splits = split_ids(pids, np.random.default_rng([seed, 0x5E]))
    images = 0
    for pid in pids:
        person = draw_walker(pid, np.random.default_rng([seed, pid, 0xA1]))
        for cam in walker_cameras(np.random.default_rng([seed, pid, 0xC0])):
            folder = root / f"cam{cam}" / f"{pid:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(1, images_per_camera + 1):
                render(person, cam, np.random.default_rng([seed, pid, cam, index, 0xB2])).save(folder / f"{index:04d}.jpg", quality=92)
                images += 1
    write_layout(root, splits, pids)
    return {"root": str(root), "ids": ids, "images": images, "splits": {k: len(v) for k, v in splits.items()}}


def main() -> None:
    generator_main(generate_walker, "Draw the articulated-walker synthetic set (SYSU-MM01 layout).")


if __name__ == "__main__":
    main()
