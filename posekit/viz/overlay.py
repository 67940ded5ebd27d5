"""Skeleton overlays: limbs coloured by body side (``skeleton.side``), joints as dots, line widths scaled to the
image. Used by the infer stage and the docs."""

from __future__ import annotations

import cv2
import numpy as np

from posekit.codec.decode import People
from posekit.skeleton import Skeleton

# RGB; left/right chosen to stay distinguishable for the common colour-vision deficiencies (blue vs orange)
SIDE_COLORS = {"left": (0, 114, 178), "right": (230, 159, 0), "center": (0, 158, 115)}
JOINT_COLOR = (255, 255, 255)


def limb_side(skeleton: Skeleton, limb: tuple[int, int]) -> str:
    """'left'/'right' if either end is on that side (shoulder->elbow...), else 'center' (neck->nose...)."""
    sides = {skeleton.side(limb[0]), skeleton.side(limb[1])}
    return "left" if "left" in sides else "right" if "right" in sides else "center"


def draw_people(image_rgb: np.ndarray, people: People, skeleton: Skeleton, min_joint_score: float = 0.0,
                thickness: int | None = None) -> np.ndarray:
    """A copy of ``image_rgb`` (H, W, 3) uint8 with every person's skeleton drawn.

    ``people.keypoints`` (N, J, 3) are in this image's pixels; joints with score <= ``min_joint_score`` are
    treated as missing. ``thickness`` defaults to ~0.4% of the image diagonal."""
    out = np.ascontiguousarray(image_rgb).copy()
    if thickness is None:
        thickness = max(1, int(round(0.004 * float(np.hypot(*out.shape[:2])))))
    radius = thickness + 1
    shift = 4  # sub-pixel drawing: coordinates are floats
    scale = 1 << shift
    colors = [SIDE_COLORS[limb_side(skeleton, limb)] for limb in skeleton.limbs]
    for kps in people.keypoints:
        ok = kps[:, 2] > min_joint_score
        pts = np.round(kps[:, :2] * scale).astype(np.int64)
        for (a, b), color in zip(skeleton.limbs, colors):
            if ok[a] and ok[b]:
                cv2.line(out, tuple(map(int, pts[a])), tuple(map(int, pts[b])), color, thickness, cv2.LINE_AA, shift)
        for j in np.flatnonzero(ok):
            cv2.circle(out, tuple(map(int, pts[j])), radius * scale, JOINT_COLOR, -1, cv2.LINE_AA, shift)
            cv2.circle(out, tuple(map(int, pts[j])), radius * scale, SIDE_COLORS[skeleton.side(j)], max(1, thickness // 2),
                       cv2.LINE_AA, shift)
    return out
