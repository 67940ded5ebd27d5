"""One synthetic scene: background, distractors, an optional crowd and placed people, then its COCO annotations.

Annotated people are only placed where a bottom-up decoder can recover them (:func:`_recoverable`,
:func:`_separated`); see docs/data.md, "Placement rules".
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from posekit.data.synthetic.person import RENDERED_JOINTS, SKIN, Person, hsv_color, limb, rotate, sample_person

_POLYGON_TOLERANCE = 1.0  # px: Douglas-Peucker tolerance of the segmentation polygons (people >= 100 px)


# ---------------------------------------------------------------------------------------------- placement rules
# Annotated people are placed so that a bottom-up codec (heatmaps + PAFs at stride 8) can recover them from
# perfect maps, as COCO leaves barely visible people unannotated (see docs/data.md, "Placement rules").
_TORSO = ("left_shoulder", "right_shoulder", "left_hip", "right_hip")
# Each joint's neighbours on the way to the torso (the skeleton's limbs; the neck is the shoulders' midpoint, so
# the nose hangs off the torso and an ear off its eye or shoulder). Listed parents first.
_PARENTS: dict[str, tuple[str, ...]] = {
    **{name: () for name in _TORSO},
    "nose": _TORSO[:2], "left_eye": ("nose",), "right_eye": ("nose",),
    "left_ear": ("left_eye", "left_shoulder"), "right_ear": ("right_eye", "right_shoulder"),
    "left_elbow": ("left_shoulder",), "right_elbow": ("right_shoulder",),
    "left_wrist": ("left_elbow",), "right_wrist": ("right_elbow",),
    "left_knee": ("left_hip",), "right_knee": ("right_hip",),
    "left_ankle": ("left_knee",), "right_ankle": ("right_knee",),
}  # fmt: skip
_CHECKED = (*RENDERED_JOINTS, "neck")  # the neck is a network joint too: its heatmap peaks can merge as well
# Corresponding joints of two annotated people stay this far apart (fraction of the image's longer side).
# 0.05 x 512 px = 25.6 px, i.e. 19 px = 2.7 heatmap sigmas (7 px) at the default 288x384 network input: the
# two peaks stay apart on the stride-8 grid instead of merging into one (the encoder takes the max of them).
MIN_JOINT_GAP = 0.05
_PLACEMENT_TRIES = 30  # resamples of an annotated person before the scene does without it


def _check_points(joints: Mapping[str, np.ndarray], h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Joints in :data:`_CHECKED` order: ((J, 2) pixel coordinates, (J,) bool inside the image)."""
    xy = np.stack([joints[n] for n in RENDERED_JOINTS] + [(joints["left_shoulder"] + joints["right_shoulder"]) / 2])
    inside = (xy[:, 0] >= 0) & (xy[:, 0] <= w - 1) & (xy[:, 1] >= 0) & (xy[:, 1] <= h - 1)
    return xy, inside


def _recoverable(inside: np.ndarray) -> bool:
    """Whether the joints inside the frame form one skeleton a decoder can assemble: the whole torso (so the
    neck exists and joins arms, legs and head) and every other labeled joint linked to it through labeled
    joints (a wrist whose elbow left the frame would be a stray fragment). At least 4 torso joints + the neck
    are labeled, more than the decoder's ``min_parts``."""
    on = dict(zip(_CHECKED, inside.tolist()))
    if not all(on[n] for n in _TORSO):
        return False
    linked: dict[str, bool] = {}
    for name, parents in _PARENTS.items():  # parents come first
        linked[name] = on[name] and (not parents or any(linked[p] for p in parents))
    return linked == {n: on[n] for n in _PARENTS}


def _separated(xy: np.ndarray, inside: np.ndarray, others: list[tuple[np.ndarray, np.ndarray]], gap: float) -> bool:
    """Whether every labeled joint of a person ((J, 2), (J,) from :func:`_check_points`) is at least ``gap`` px
    from the same joint of each of ``others``. Bodies may still overlap and occlude each other."""
    for oxy, oin in others:
        both = inside & oin
        if both.any() and np.hypot(*(xy[both] - oxy[both]).T).min() < gap:
            return False
    return True


# ---------------------------------------------------------------------------------------------- scene
class Scene:
    """One image being rendered: background, distractors, crowd, people; then its COCO annotations."""

    def __init__(self, rng: np.random.Generator, h: int, w: int, params: Mapping):
        self.rng, self.h, self.w, self.params = rng, h, w, params
        self.people: list[Person] = []
        self.crowd: np.ndarray | None = None  # (H, W) bool region of the crowd, if any
        self.ids = np.full((h, w), -1, np.int32)  # index of the person drawn last at each pixel

    # ------------------------------------------------------------------ layers
    def _background(self) -> np.ndarray:
        rng, h, w = self.rng, self.h, self.w
        # gradient + low-frequency colour blotches, both smooth: computed on a coarse grid and upsampled
        gh, gw = h // 8 + 1, w // 8 + 1
        c0, c1 = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
        t = math.radians(rng.uniform(0, 360))
        ramp = (np.arange(gw)[None, :] * math.cos(t) + np.arange(gh)[:, None] * math.sin(t)).astype(np.float32)
        ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1.0)
        coarse = c0 + ramp[..., None] * (c1 - c0)
        blotch = rng.uniform(-1, 1, (int(rng.integers(2, 8)), int(rng.integers(2, 8)), 3)).astype(np.float32)
        coarse += rng.uniform(10, 60) * cv2.resize(blotch, (gw, gh), interpolation=cv2.INTER_CUBIC)
        img = cv2.resize(np.clip(coarse, 0, 255).astype(np.uint8), (w, h), interpolation=cv2.INTER_LINEAR)
        for _ in range(int(rng.integers(4, 14))):  # clutter: rectangles, circles, ellipses, triangles
            color = hsv_color(rng, (0.0, 1.0), (0.1, 1.0))
            c = rng.uniform([0, 0], [w, h])
            s = rng.uniform(0.03, 0.3) * min(h, w)
            kind = rng.integers(4)
            thick = -1 if rng.random() < 0.7 else int(rng.integers(1, 4))
            if kind == 0:
                p0, p1 = (c - s).astype(int), (c + s * rng.uniform(0.3, 1.5, 2)).astype(int)
                cv2.rectangle(img, tuple(map(int, p0)), tuple(map(int, p1)), color, thick)
            elif kind == 1:
                cv2.circle(img, tuple(map(int, c)), int(s), color, thick, cv2.LINE_AA)
            elif kind == 2:
                axes = (int(s), int(s * rng.uniform(0.2, 1.0)))
                cv2.ellipse(img, tuple(map(int, c)), axes, rng.uniform(0, 180), 0, 360, color, thick, cv2.LINE_AA)
            else:
                tri = (c + rng.uniform(-s, s, (3, 2))).astype(np.int32)
                cv2.fillConvexPoly(img, tri, color, cv2.LINE_AA)
        return img

    def _distractors(self, img: np.ndarray) -> None:
        """Limb-like strokes (skin and cloth colours, limb widths, some bent) that are not people."""
        rng, h = self.rng, self.h
        lo, hi = self.params["person_height"]
        for _ in range(int(self.params["distractors"])):
            size = rng.uniform(lo, hi) * h
            color = (
                tuple(int(c) for c in SKIN[rng.integers(len(SKIN))])
                if rng.random() < 0.4
                else hsv_color(rng, (0.3, 1.0), (0.2, 1.0))
            )
            a = rng.uniform([0, 0], [self.w, self.h])
            direction = rng.uniform(0, 360)
            pts = [a]
            for _ in range(int(rng.integers(1, 3))):
                direction += rng.uniform(-100, 100)
                pts.append(pts[-1] + 0.2 * size * rotate(np.array([1.0, 0.0]), direction))
            width = rng.uniform(0.03, 0.08) * size
            for p, q in zip(pts[:-1], pts[1:]):
                for prim in limb(p, q, width, width * rng.uniform(0.6, 1.0), color):
                    prim.draw(img)

    def _crowd(self, img: np.ndarray) -> None:
        """A cluster of small people, annotated as one iscrowd region (COCO style), behind everyone else."""
        rng, h, w = self.rng, self.h, self.w
        n = int(rng.integers(4, 10))
        center = rng.uniform([0.2 * w, 0.2 * h], [0.8 * w, 0.8 * h])
        spread = rng.uniform(0.1, 0.25) * np.array([w, h * 0.4])
        region = np.zeros((h, w), np.uint8)
        heights = rng.uniform(0.07, 0.14, n) * h
        for k in np.argsort(heights):
            c = center + rng.uniform(-1, 1, 2) * spread
            person = sample_person(rng, heights[k], c, rng.normal(0, 5), mode="standing")
            for p in person.prims:
                p.draw(img)
                p.draw(region, 1, aa=False)
        k = max(3, int(0.03 * h)) | 1  # close the gaps between the small people: one region, like COCO's
        region = cv2.morphologyEx(region, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
        self.crowd = region.astype(bool)

    def _place_people(self, num_people: int, max_total: int | None) -> None:
        """Pose, scale, rotate and place the people; annotated ones only where a bottom-up decoder can find them.

        An annotated person is resampled (up to ``_PLACEMENT_TRIES`` times, then left out) unless it is
        :func:`_recoverable` in the frame and :func:`_separated` from the annotated people already placed.
        Unannotated people (masked out of the loss, absent from the eval) may go anywhere.
        """
        rng, h, w = self.rng, self.h, self.w
        lo, hi = self.params["person_height"]
        extra = 0
        if rng.random() < self.params["unannotated_prob"]:
            extra = 1 + int(rng.random() < 0.3)
        total = num_people + extra if max_total is None else min(num_people + extra, max_total)
        annotated = np.ones(total, bool)
        if extra:
            annotated[rng.choice(total, min(extra, total - 1), replace=False)] = False
        heights = rng.uniform(lo, hi, total) * h
        rotations = np.where(rng.random(total) < 0.85, rng.normal(0, 8, total), rng.uniform(-60, 60, total))
        gap = MIN_JOINT_GAP * max(h, w)
        placed: list[tuple[float, np.ndarray, Person]] = []  # (depth key, centre, person)
        kept: list[tuple[np.ndarray, np.ndarray]] = []  # (joints, in-frame) of the annotated people placed
        for i in range(total):
            for _ in range(_PLACEMENT_TRIES if annotated[i] else 1):
                if placed and rng.random() < 0.35:  # next to someone already placed: overlaps are common
                    anchor = placed[int(rng.integers(len(placed)))][1]
                    c = anchor + rng.normal(0, 0.25, 2) * heights[i]
                else:
                    c = rng.uniform([0.05 * w, 0.15 * h], [0.95 * w, 0.85 * h])
                person = sample_person(rng, heights[i], c, float(rotations[i]))
                person.annotated = bool(annotated[i])
                if not person.annotated:
                    break
                xy, inside = _check_points(person.joints, h, w)
                if _recoverable(inside) and _separated(xy, inside, kept, gap):
                    kept.append((xy, inside))
                    break
            else:
                continue  # no recoverable placement in crowded scenes: one person fewer
            placed.append((heights[i] + rng.normal(0, 0.1 * h), c, person))
        order = np.argsort([depth for depth, _, _ in placed], kind="stable")  # roughly: smaller (farther) behind
        self.people = [placed[k][2] for k in order]

    def render(self, num_people: int, max_total: int | None = None) -> np.ndarray:
        """Draw the scene; returns (H, W, 3) uint8 RGB. People are drawn in ``self.people`` order (back first)."""
        img = self._background()
        self._distractors(img)
        if self.rng.random() < self.params["crowd_prob"]:
            self._crowd(img)
        self._place_people(num_people, max_total)
        for k, person in enumerate(self.people):
            for p in person.prims:
                p.draw(img)
                p.draw(self.ids, k, aa=False)
        noise = self.rng.integers(-6, 7, img.shape, dtype=np.int16)
        img = np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        if self.rng.random() < 0.3:
            img = cv2.GaussianBlur(img, (3, 3), 0.6)
        return img

    # ------------------------------------------------------------------ annotations
    def annotations(self, dataset_joints: list[str]) -> list[dict]:
        """COCO annotations (without ``id``/``image_id``): one per visible person, then the crowd region."""
        h, w, anns = self.h, self.w, []
        for k, person in enumerate(self.people):
            visible = (self.ids == k).view(np.uint8)
            area = cv2.countNonZero(visible)
            if area < 16:  # hidden behind later people: nothing to annotate
                continue
            kps = np.zeros((len(dataset_joints), 3), np.float64)
            if person.annotated:
                for d, name in enumerate(dataset_joints):
                    x, y = person.joints[name]
                    if 0 <= x <= w - 1 and 0 <= y <= h - 1:
                        covered = self.ids[int(round(y)), int(round(x))] > k  # a later person is on top
                        kps[d] = (round(float(x), 2), round(float(y), 2), 1 if covered else 2)
            x0, y0, bw, bh = cv2.boundingRect(visible)
            anns.append({
                "category_id": 1,
                "iscrowd": 0,
                "num_keypoints": int((kps[:, 2] > 0).sum()),
                "keypoints": [float(v) if i % 3 < 2 else int(v) for i, v in enumerate(kps.ravel())],
                "bbox": [x0, y0, bw, bh],
                "area": float(area),
                "segmentation": _polygons(visible),
            })  # fmt: skip
        if self.crowd is not None and self.crowd.any():
            rle = mask_utils.encode(np.asfortranarray(self.crowd.astype(np.uint8)))
            bbox = [float(v) for v in mask_utils.toBbox(rle)]
            anns.append({
                "category_id": 1,
                "iscrowd": 1,
                "num_keypoints": 0,
                "keypoints": [0] * (3 * len(dataset_joints)),
                "bbox": bbox,
                "area": float(mask_utils.area(rle)),
                "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
            })  # fmt: skip
        return anns


def _polygons(mask: np.ndarray) -> list[list[float]]:
    """(H, W) uint8 {0, 1} mask -> COCO polygons of its outer contours, in COCO's continuous coordinates
    (pixel k spans [k, k+1]).

    Contours through boundary-pixel centres would lose half of every boundary pixel when pycocotools rasterizes
    them (a third of a 3 px limb), so they are traced on the mask upsampled 2x: the outline then runs a quarter
    pixel inside the true edge, and rasterizes back to the mask. Douglas-Peucker with a 1 px tolerance (in
    image pixels) keeps ~55 vertices per person instead of ~280, and the JSON small (mean IoU with the mask 0.96).
    """
    x0, y0, w, h = cv2.boundingRect(mask)
    up = cv2.resize(mask[y0 : y0 + h, x0 : x0 + w], (2 * w, 2 * h), interpolation=cv2.INTER_NEAREST)
    up = cv2.copyMakeBorder(up, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    # small people have 1-3 px limbs, which a 1 px tolerance would shave off: their tolerance shrinks with them
    tol = float(np.clip(max(w, h) / 100, 0.5, 1.0)) * _POLYGON_TOLERANCE
    polys = []
    for c in contours:
        c = cv2.approxPolyDP(c, 2 * tol, True).reshape(-1, 2)  # 2x: upsampled units
        if len(c) >= 3:
            xy = (c - 1 + 0.5) / 2.0 + (x0, y0)  # upsampled pixel u (after the pad) is centred at (u + 0.5) / 2
            polys.append([round(float(v), 2) for v in xy.ravel()])
    if not polys:  # a 1-2 px sliver: its bounding box
        polys.append([float(v) for v in (x0, y0, x0 + w, y0, x0 + w, y0 + h, x0, y0 + h)])
    return polys
