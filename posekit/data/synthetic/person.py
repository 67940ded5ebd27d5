"""The synthetic person: a kinematic model (pose modes, body proportions) dressed in filled cv2 shapes.

:func:`sample_person` poses one person and returns its joints (COCO-17 names, pixel-index coordinates) and the
:class:`Prim` shapes that draw it, back to front.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

_SHIFT = 4  # cv2 drawing with 4 fractional bits: coordinates are placed to 1/16 px
_ONE = 1 << _SHIFT

# The joints the renderer draws (COCO-17 names); a skeleton's dataset_joints must be among them.
RENDERED_JOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip


@dataclass
class Prim:
    """A filled shape in pixel-index coordinates: ``poly`` (pts (N, 2)), ``circle`` (c, r) or ``ellipse``."""

    kind: str
    pts: np.ndarray  # poly: (N, 2); circle / ellipse: (1, 2) centre
    color: tuple[int, int, int]
    size: tuple[float, float] = (0.0, 0.0)  # circle: (r, r); ellipse: semi-axes
    angle: float = 0.0  # ellipse rotation, degrees

    def draw(self, img: np.ndarray, value: Any = None, aa: bool = True) -> None:
        color = self.color if value is None else value
        line = cv2.LINE_AA if aa else cv2.LINE_8
        fixed = np.round(self.pts * _ONE).astype(np.int32)
        if self.kind == "poly":
            cv2.fillConvexPoly(img, fixed, color, line, _SHIFT)
        elif self.kind == "circle":
            r = max(1, round(self.size[0] * _ONE))
            cv2.circle(img, (int(fixed[0, 0]), int(fixed[0, 1])), r, color, -1, line, _SHIFT)
        else:
            axes = (max(1, round(self.size[0] * _ONE)), max(1, round(self.size[1] * _ONE)))
            cv2.ellipse(img, (int(fixed[0, 0]), int(fixed[0, 1])), axes, self.angle, 0, 360, color, -1, line, _SHIFT)


def limb(a: np.ndarray, b: np.ndarray, wa: float, wb: float, color) -> list[Prim]:
    """A tapered segment from a (width wa) to b (width wb) with rounded ends."""
    d = b - a
    n = np.array([-d[1], d[0]]) / max(float(np.hypot(*d)), 1e-6)
    quad = np.stack([a + n * wa / 2, b + n * wb / 2, b - n * wb / 2, a - n * wa / 2])
    return [
        Prim("poly", quad, color),
        Prim("circle", a[None], color, (wa / 2, wa / 2)),
        Prim("circle", b[None], color, (wb / 2, wb / 2)),
    ]


def rotate(v: np.ndarray, deg: float) -> np.ndarray:
    t = math.radians(deg)
    c, s = math.cos(t), math.sin(t)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def hsv_color(rng: np.random.Generator, s: tuple[float, float], v: tuple[float, float]) -> tuple[int, int, int]:
    hsv = np.uint8([[[rng.integers(0, 180), rng.uniform(*s) * 255, rng.uniform(*v) * 255]]])
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


SKIN = np.array([[255, 224, 196], [241, 194, 155], [224, 172, 105], [198, 134, 66], [141, 85, 36], [90, 56, 37]])


# ---------------------------------------------------------------------------------------------- kinematic model
# Pose modes: (probability, joint-angle ranges in degrees). Limb angles are abduction angles: 0 = hanging along
# the torso axis, +90 = horizontal away from the body, 180 = straight up, negative = across the body.
_MODES = {
    "standing": (0.3, dict(lean=(-6, 6), arm=(-10, 35), elbow=(-30, 30), hip=(-4, 14), knee=(-10, 10))),
    "walking": (0.25, dict(lean=(-10, 10), arm=(-25, 45), elbow=(-70, 70), hip=(-22, 35), knee=(-45, 45))),
    "arms_up": (0.15, dict(lean=(-10, 10), arm=(95, 180), elbow=(-90, 90), hip=(-4, 20), knee=(-15, 15))),
    "bent": (0.15, dict(lean=(-45, 45), arm=(-20, 90), elbow=(-120, 120), hip=(10, 75), knee=(-140, -50))),
    "free": (0.15, dict(lean=(-30, 30), arm=(-30, 180), elbow=(-150, 150), hip=(-25, 90), knee=(-130, 130))),
}
# Segment lengths as fractions of the person's height (head top to ankle ~ 1.0).
_BODY = dict(
    torso=0.29, shoulder=0.105, hip=0.075, upper_arm=0.165, forearm=0.145, thigh=0.24, shin=0.235,
    neck=0.045, head_ry=0.065, head_rx=0.05,
)  # fmt: skip


@dataclass
class Person:
    joints: dict[str, np.ndarray]  # COCO-17 name -> (2,) pixel-index coordinates
    prims: list[Prim] = field(default_factory=list)
    annotated: bool = True


def sample_person(
    rng: np.random.Generator, height: float, center: np.ndarray, rotation: float, mode: str | None = None
) -> Person:
    """A posed, dressed person of ``height`` px whose bounding box is centred at ``center``, rotated in-plane."""
    if mode is None:
        names = list(_MODES)
        mode = names[rng.choice(len(names), p=[_MODES[m][0] for m in names])]
    ang = _MODES[mode][1]
    L = {k: v * rng.uniform(0.92, 1.08) for k, v in _BODY.items()}  # body proportions vary per person

    def u(key: str) -> float:
        return float(rng.uniform(*ang[key]))

    lean = u("lean")
    up = rotate(np.array([0.0, -1.0]), lean)  # torso axis (y points down)
    lat = rotate(np.array([1.0, 0.0]), lean)  # towards image right = the person's left (facing the camera)

    def direction(angle: float, side: int) -> np.ndarray:  # side -1: person's right (image left), +1: left
        t = math.radians(angle)
        return math.cos(t) * -up + math.sin(t) * side * lat

    j: dict[str, np.ndarray] = {}
    pelvis = np.zeros(2)
    shoulders = pelvis + L["torso"] * up
    for side, name in ((-1, "right"), (1, "left")):
        j[f"{name}_hip"] = pelvis + side * L["hip"] * lat
        j[f"{name}_shoulder"] = shoulders + side * L["shoulder"] * lat
        a_arm, a_hip = u("arm"), u("hip")
        j[f"{name}_elbow"] = j[f"{name}_shoulder"] + L["upper_arm"] * direction(a_arm, side)
        j[f"{name}_wrist"] = j[f"{name}_elbow"] + L["forearm"] * direction(a_arm + u("elbow"), side)
        j[f"{name}_knee"] = j[f"{name}_hip"] + L["thigh"] * direction(a_hip, side)
        j[f"{name}_ankle"] = j[f"{name}_knee"] + L["shin"] * direction(a_hip + u("knee"), side)
    # head: tilted on the neck, face turned a little (yaw shifts the eyes and nose sideways)
    head_up = rotate(up, rng.uniform(-20, 20))
    head_lat = np.array([-head_up[1], head_up[0]])
    head = shoulders + (L["neck"] + L["head_ry"]) * head_up
    rx, ry, yaw = L["head_rx"], L["head_ry"], rng.uniform(-0.3, 0.3)
    for side, name in ((-1, "right"), (1, "left")):
        j[f"{name}_eye"] = head + 0.15 * ry * head_up + (side * 0.42 + yaw) * rx * head_lat
        j[f"{name}_ear"] = head + side * 0.97 * rx * head_lat
    j["nose"] = head - 0.28 * ry * head_up + 1.25 * yaw * rx * head_lat

    # clothes and skin
    skin = tuple(int(c) for c in np.clip(SKIN[rng.integers(len(SKIN))] + rng.integers(-12, 13, 3), 0, 255))
    dark_skin = tuple(int(c * 0.8) for c in skin)
    shirt = hsv_color(rng, (0.35, 1.0), (0.3, 1.0))
    pants = hsv_color(rng, (0.2, 0.9), (0.15, 0.8))
    shoes = hsv_color(rng, (0.0, 0.5), (0.05, 0.4))
    hair = hsv_color(rng, (0.2, 0.8), (0.05, 0.45))
    forearm_color = skin if rng.random() < 0.5 else shirt  # short or long sleeves
    shin_color = skin if rng.random() < 0.2 else pants  # shorts or trousers

    prims: list[Prim] = []
    for name in ("right", "left"):  # legs first: the torso covers the hip joints
        hip, knee, ankle = j[f"{name}_hip"], j[f"{name}_knee"], j[f"{name}_ankle"]
        prims += limb(hip, knee, 0.085, 0.062, pants)
        prims += limb(knee, ankle, 0.062, 0.042, shin_color)
        toe = ankle + 0.05 * rotate(-up, rng.uniform(-30, 30)) + 0.03 * (lat if name == "left" else -lat)
        prims += limb(ankle, toe, 0.042, 0.036, shoes)
    pad = 0.035
    torso = np.stack([
        j["right_shoulder"] - pad * lat + 0.02 * up, j["left_shoulder"] + pad * lat + 0.02 * up,
        j["left_hip"] + (pad + 0.01) * lat - 0.03 * up, j["right_hip"] - (pad + 0.01) * lat - 0.03 * up,
    ])  # fmt: skip
    prims.append(Prim("poly", torso, shirt))
    prims += limb(shoulders, head, 0.05, 0.05, skin)  # neck
    for name in ("right", "left"):
        sh, el, wr = j[f"{name}_shoulder"], j[f"{name}_elbow"], j[f"{name}_wrist"]
        prims += limb(sh, el, 0.058, 0.046, shirt)
        prims += limb(el, wr, 0.046, 0.034, forearm_color)
        hand_dir = (wr - el) / max(float(np.hypot(*(wr - el))), 1e-6)
        prims.append(Prim("circle", (wr + 0.022 * hand_dir)[None], skin, (0.025, 0.025)))
    angle = math.degrees(math.atan2(head_up[0], -head_up[1]))
    for name in ("right", "left"):
        prims.append(Prim("ellipse", j[f"{name}_ear"][None], dark_skin, (0.2 * rx, 0.32 * ry), angle))
    prims.append(Prim("ellipse", head[None], skin, (rx, ry), angle))
    if rng.random() < 0.85:  # hair: a cap over the top of the head
        prims.append(Prim("ellipse", (head + 0.45 * ry * head_up)[None], hair, (0.95 * rx, 0.6 * ry), angle))
    eye_color = (int(rng.integers(0, 60)),) * 3
    for name in ("right", "left"):
        prims.append(Prim("circle", j[f"{name}_eye"][None], eye_color, (0.15 * rx, 0.15 * rx)))
    prims.append(Prim("circle", j["nose"][None], dark_skin, (0.13 * rx, 0.13 * rx)))

    # local body units -> image: scale to height, rotate in-plane, centre the bounding box of the joints
    pts = np.stack(list(j.values()))
    local_center = (pts.min(0) + pts.max(0)) / 2 + np.array([0.0, -0.5 * L["head_ry"]])
    t = math.radians(rotation)
    R = height * np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])

    def to_img(p: np.ndarray) -> np.ndarray:
        return (p - local_center) @ R.T + center

    for p in prims:
        p.pts = to_img(p.pts)
        p.size = (p.size[0] * height, p.size[1] * height)
        p.angle += rotation
    return Person({k: to_img(v) for k, v in j.items()}, prims)


