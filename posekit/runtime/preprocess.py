"""Image -> network input, as one 2x3 affine (original pixel -> input pixel) and one ``cv2.warpAffine``.

Coordinates are pixel-index coordinates (pixel k's centre is at k), the convention ``cv2.warpAffine`` uses, so
the inverse affine maps decoded keypoints back to the original image exactly.

Modes:
  * ``strict``: the image is scaled to fit the network input (H, W) keeping its aspect ratio and centred on a
    gray (128) canvas: TAO's ``pad_image_input``, done as one warp (TAO pads with integer-truncated borders,
    then resizes). Every image gives the same input shape, so images batch and fixed-shape engines work.
  * ``adjust``: the same scale (the image fits the configured input), anchored at the top-left, with the
    canvas trimmed to the content rounded up to a multiple of the stride (8). The input shape varies per image
    and no compute is spent on padding. (TAO's ``adjust_network_input`` instead matches the *short* side, so
    the other side exceeds the configured input.)
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from posekit.data.images import normalize

MODES = ("strict", "adjust")  # runtime.mode and runtime.interpolation are checked by posekit.config.validate
INTERPOLATIONS = {"linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}
BORDER_VALUE = 128  # TAO's pad colour; normalizes to ~0


@dataclass
class Prepared:
    """One preprocessed image.

    batch: (1, 3, H, W) float32, normalized (x / 256 - 0.5), RGB.
    affine: (2, 3) float64, original-image pixel -> network-input pixel.
    image_hw: (h, w) of the original image.
    """

    batch: np.ndarray
    affine: np.ndarray
    image_hw: tuple[int, int]

    @property
    def input_hw(self) -> tuple[int, int]:
        return int(self.batch.shape[-2]), int(self.batch.shape[-1])


def round_up(v: float, multiple: int) -> int:
    """The smallest multiple of ``multiple`` >= v (float noise tolerated: 288.0000001 -> 288)."""
    return int(np.ceil(v / multiple - 1e-6)) * multiple


def fit_scale(image_hw: tuple[int, int], input_hw: tuple[int, int]) -> float:
    """The largest scale at which the whole image fits in ``input_hw``."""
    return min(input_hw[0] / image_hw[0], input_hw[1] / image_hw[1])


def strict_affine(image_hw: tuple[int, int], input_hw: tuple[int, int]) -> np.ndarray:
    """(2, 3): scale to fit and centre (the image centre lands on the input centre, sub-pixel exact)."""
    s = fit_scale(image_hw, input_hw)
    (h, w), (H, W) = image_hw, input_hw
    return np.array([[s, 0.0, (W - 1) / 2 - s * (w - 1) / 2], [0.0, s, (H - 1) / 2 - s * (h - 1) / 2]])


def adjust_affine(image_hw: tuple[int, int], input_hw: tuple[int, int], multiple: int = 8
                  ) -> tuple[np.ndarray, tuple[int, int]]:
    """((2, 3), out_hw): scale to fit, top-left anchored (pixel edges at 0 stay at 0, as ``cv2.resize``);
    the output is the scaled content rounded up to ``multiple``."""
    s = fit_scale(image_hw, input_hw)
    h, w = image_hw
    out_hw = (max(multiple, round_up(h * s, multiple)), max(multiple, round_up(w * s, multiple)))
    off = (s - 1) / 2  # x' = s (x + 0.5) - 0.5
    return np.array([[s, 0.0, off], [0.0, s, off]]), out_hw


def scaled_input_hw(input_hw: tuple[int, int], scale: float, multiple: int = 8) -> tuple[int, int]:
    """The network input of one multi-scale pass: ``scale * input_hw`` rounded to a multiple of the stride."""
    h, w = (max(multiple, int(round(v * scale / multiple)) * multiple) for v in input_hw)
    return h, w


def invert_affine(affine: np.ndarray) -> np.ndarray:
    """The inverse of a 2x3 affine, as a 2x3 affine."""
    return cv2.invertAffineTransform(np.asarray(affine, np.float64))


def apply_affine(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """points (..., 2) -> (..., 2) under a 2x3 affine."""
    a = np.asarray(affine, np.float64)
    return np.asarray(points, np.float64) @ a[:, :2].T + a[:, 2]


def preprocess(image_rgb: np.ndarray, input_hw: tuple[int, int], mode: str = "strict",
               interpolation: str = "linear", multiple: int = 8) -> Prepared:
    """(h, w, 3) uint8 RGB -> :class:`Prepared` for a network input of (at most, in ``adjust``) ``input_hw``."""
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"preprocess: expected an (H, W, 3) RGB image, got shape {image_rgb.shape}")
    image_hw = (int(image_rgb.shape[0]), int(image_rgb.shape[1]))
    input_hw = (int(input_hw[0]), int(input_hw[1]))
    if mode == "strict":
        affine, out_hw = strict_affine(image_hw, input_hw), input_hw
    else:
        affine, out_hw = adjust_affine(image_hw, input_hw, multiple)
    warped = cv2.warpAffine(
        image_rgb,
        affine,
        (out_hw[1], out_hw[0]),
        flags=INTERPOLATIONS[interpolation],
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(BORDER_VALUE,) * 3,
    )
    return Prepared(normalize(warped)[None], affine, image_hw)
