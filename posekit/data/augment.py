"""Geometry and colour augmentation: TAO's person-centric affine (one 2x3 matrix for image, mask and keypoints)
and albumentations' colour jitter.

All matrices map *source pixel-index* coordinates to *network-input pixel-index* coordinates (pixel k's centre at
k, the posekit convention, which is also ``cv2.warpAffine``'s), so a keypoint drawn on pixel (x, y) of the source
lands on the pixel the image content lands on.

The geometric part is a hand-built matrix + ``cv2.warpAffine`` rather than albumentations ``Affine``: the
transform is centred on a chosen person (not on the image) and scaled from that person's box height, which
``Affine`` cannot express, and the same matrix must also warp the loss mask and be returned to the caller.

A sample's randomness is one :class:`AugmentDraws` (``Augmenter.draw``): the geometric draws and the colour
jitter's draws. The CPU path here applies them with OpenCV and albumentations; the device path
(``posekit.data.device_augment``, ``data.augment_on_device``) applies the very same draws with torch ops, so a test
can feed one set of draws to both and compare the results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import albumentations as A
import cv2
import numpy as np

from posekit.skeleton import Skeleton


# ---------------------------------------------------------------------------------------------- matrices
def _affine(a: np.ndarray) -> np.ndarray:
    """(2, 3) -> (3, 3) homogeneous."""
    return np.vstack([a, [0.0, 0.0, 1.0]])


def person_centric_matrix(
    center: np.ndarray,
    person_height: float,
    input_hw: tuple[int, int],
    target_scale: float = 0.6,
    zoom: float = 1.0,
    angle_deg: float = 0.0,
    shift: tuple[float, float] = (0.0, 0.0),
    flip: bool = False,
) -> np.ndarray:
    """TAO's person-centric affine, (2, 3): ``T(out centre + shift) . Flip . S(z) . R(angle) . T(-center)``.

    Args:
        center: (2,) the main person's box centre, source pixel-index coordinates.
        person_height: the main person's box height in source pixels (TAO's person "scale").
        input_hw: (H, W) network input.
        target_scale: the person's box height as a fraction of the input height after scaling (TAO: 0.6).
        zoom: multiplies the scale (scale jitter; TAO: 1).
        angle_deg: in-plane rotation about the person's centre.
        shift: (dx, dy) translation in *input* pixels. TAO shifts the centre in source pixels, which makes the
            displacement the network sees depend on the person's size; here it does not.
        flip: mirror left-right about the input's vertical centre line (pixel k -> W - 1 - k exactly). The
            caller swaps left/right joint labels (``Skeleton.flip_perm``).
    """
    H, W = input_hw
    z = target_scale * H / max(float(person_height), 1.0) * zoom
    t = math.radians(angle_deg)
    c, s = math.cos(t), math.sin(t)
    to_origin = np.array([[1.0, 0.0, -center[0]], [0.0, 1.0, -center[1]], [0.0, 0.0, 1.0]])
    rot_scale = np.array([[z * c, -z * s, 0.0], [z * s, z * c, 0.0], [0.0, 0.0, 1.0]])
    mirror = np.diag([-1.0 if flip else 1.0, 1.0, 1.0])
    to_out = np.array([[1.0, 0.0, (W - 1) / 2.0 + shift[0]], [0.0, 1.0, (H - 1) / 2.0 + shift[1]], [0.0, 0.0, 1.0]])
    return (to_out @ mirror @ rot_scale @ to_origin)[:2]


def transform_keypoints(keypoints: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(P, J, 3) [x, y, v] -> the same with labeled (v > 0) points mapped by ``matrix``; unlabeled stay 0.

    Points that land outside the input are kept (their Gaussian tail and PAF band still reach into it).
    """
    out = np.array(keypoints, dtype=np.float32, copy=True)
    xy = out[..., :2] @ matrix[:, :2].T.astype(np.float32) + matrix[:, 2].astype(np.float32)
    out[..., :2] = np.where(out[..., 2:3] > 0, xy, 0.0)
    return out


# Below this scale bilinear sampling aliases, so the source is area-resized first (warp_plan).
AREA_SHRINK_BELOW = 0.6


def warp_plan(src_hw: tuple[int, int], matrix: np.ndarray) -> tuple[tuple[int, int] | None, np.ndarray]:
    """How :func:`warp_image` warps a (H_src, W_src) source with ``matrix``: ``(shrink_hw, warp_matrix)``.

    Bilinear sampling aliases when shrinking, so for scales under :data:`AREA_SHRINK_BELOW` the source is first
    area-resized to ``shrink_hw`` (h, w), about the output scale, and ``warp_matrix`` (2, 3) is ``matrix`` with
    that resize folded in (exact); otherwise ``shrink_hw`` is None and ``warp_matrix`` is ``matrix``. The device
    path (``posekit.data.device_augment``) follows the same plan, computed by this function on the workers.
    """
    scale = math.sqrt(abs(np.linalg.det(matrix[:, :2])))
    if scale >= AREA_SHRINK_BELOW:
        return None, matrix
    h, w = (int(v) for v in src_hw[:2])
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    fx, fy = nw / w, nh / h
    resize = np.array([[fx, 0.0, 0.5 * fx - 0.5], [0.0, fy, 0.5 * fy - 0.5]])  # pixel-index convention
    return (nh, nw), (_affine(matrix) @ np.linalg.inv(_affine(resize)))[:2]


def warp_image(img: np.ndarray, matrix: np.ndarray, input_hw: tuple[int, int], border_value: int = 128) -> np.ndarray:
    """Warp (H_src, W_src, C) uint8 into ``input_hw`` with ``matrix`` (bilinear, constant border).

    Bilinear sampling aliases when shrinking, so for scales under 0.6 the source is first area-resized to about
    the output scale (exact: the resize is folded into the matrix, :func:`warp_plan`), then warped at a scale
    near 1.
    """
    H, W = input_hw
    shrink_hw, matrix = warp_plan(img.shape[:2], matrix)
    if shrink_hw is not None:
        img = cv2.resize(img, (shrink_hw[1], shrink_hw[0]), interpolation=cv2.INTER_AREA)
    border = (border_value,) * (img.shape[2] if img.ndim == 3 else 1)
    return cv2.warpAffine(
        img, matrix, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=border
    )


# ---------------------------------------------------------------------------------------------- draws
@dataclass(frozen=True)
class ColorDraws:
    """albumentations ``ColorJitter``'s draws for one sample: the four factors and the order the four
    adjustments run in (0 brightness, 1 contrast, 2 saturation, 3 hue). A factor of 1 (0 for hue) is no change."""

    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    hue: float = 0.0
    order: tuple[int, int, int, int] = (0, 1, 2, 3)

    def as_params(self) -> dict[str, Any]:
        """The keyword arguments of ``ColorJitter.apply``."""
        return {"brightness": self.brightness, "contrast": self.contrast, "saturation": self.saturation,
                "hue": self.hue, "order": list(self.order)}

    def as_row(self) -> list[float]:
        """[brightness, contrast, saturation, hue, order...]: one row of the device path's (B, 8) colour draws."""
        return [self.brightness, self.contrast, self.saturation, self.hue, *map(float, self.order)]


@dataclass(frozen=True)
class AugmentDraws:
    """Every random number one training sample's augmentation uses (drawn by :meth:`Augmenter.draw`).

    ``zoom`` multiplies the person-centric scale, ``angle_deg`` rotates about the person, ``shift`` (dx, dy) moves
    it in input pixels, ``flip`` mirrors left-right (joint labels swapped), ``color`` is the colour jitter's draws
    (None: no colour jitter).
    """

    zoom: float = 1.0
    angle_deg: float = 0.0
    shift: tuple[float, float] = (0.0, 0.0)
    flip: bool = False
    color: ColorDraws | None = None


# ---------------------------------------------------------------------------------------------- augmenter
class Augmenter:
    """Samples the random person-centric affine and applies colour jitter (``AugmentConfig``).

    ``cfg=None`` or ``cfg.enabled=False`` gives the deterministic person-centric crop (no jitter, no flip).
    All randomness comes from the ``np.random.Generator`` passed in, so a seeded generator reproduces a sample.
    """

    def __init__(self, cfg: Any | None, skeleton: Skeleton, input_hw: tuple[int, int]):
        self.enabled = bool(cfg is not None and cfg.enabled)
        self.input_hw = tuple(int(v) for v in input_hw)
        self.flip_perm = skeleton.flip_perm
        self.target_scale = float(cfg.target_person_scale) if cfg is not None else 0.6
        self.border_value = int(cfg.border_value) if cfg is not None else 128
        self.cfg = cfg
        self._color = None
        if self.enabled and (cfg.color_jitter > 0 or cfg.hue_jitter > 0):
            cj = float(cfg.color_jitter)
            self._color = A.ColorJitter(brightness=cj, contrast=cj, saturation=cj, hue=float(cfg.hue_jitter), p=1.0)

    def draw(self, rng: np.random.Generator) -> AugmentDraws:
        """One sample's draws, taken from ``rng`` in a fixed order (zoom, angle, shift, flip, then the colour
        jitter's seed), so a seeded generator reproduces a sample whichever path applies the draws. Disabled:
        the identity draws, and ``rng`` is not touched."""
        if not self.enabled:
            return AugmentDraws()
        c = self.cfg
        zoom = float(rng.uniform(*c.scale_jitter))
        angle = float(rng.uniform(-c.rotate_deg, c.rotate_deg))
        shift = tuple(float(v) for v in rng.uniform(-c.translate_px, c.translate_px, 2))
        flip = bool(rng.random() < c.flip_prob)
        return AugmentDraws(zoom, angle, shift, flip, self.draw_color(rng))

    def draw_color(self, rng: np.random.Generator) -> ColorDraws | None:
        """The colour jitter's draws (None when it is off): albumentations ``ColorJitter.get_params`` seeded
        from ``rng``, exactly what ``ColorJitter(image=...)`` would draw with that seed (its ``p`` is 1, so it
        draws nothing else)."""
        if self._color is None:
            return None
        self._color.set_random_seed(int(rng.integers(2**31)))  # albumentations draws from our stream
        p = self._color.get_params()
        return ColorDraws(float(p["brightness"]), float(p["contrast"]), float(p["saturation"]), float(p["hue"]),
                          tuple(int(i) for i in p["order"]))

    def matrix(self, draws: AugmentDraws, center: np.ndarray, person_height: float) -> np.ndarray:
        """(2, 3) source -> input matrix for a main person with box ``center`` (2,) and ``person_height`` (px)."""
        return person_centric_matrix(center, person_height, self.input_hw, self.target_scale, draws.zoom,
                                     draws.angle_deg, draws.shift, draws.flip)

    def flip_joints(self, keypoints: np.ndarray) -> np.ndarray:
        """(P, J, 3) -> left/right joint labels swapped (after a mirroring transform)."""
        return keypoints[:, self.flip_perm]

    def apply_color(self, img: np.ndarray, draws: ColorDraws | None) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> the colour jitter of ``draws`` applied by albumentations; None: unchanged."""
        if draws is None or self._color is None:
            return img
        return self._color.apply(img, **draws.as_params())
