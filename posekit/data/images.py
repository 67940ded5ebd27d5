"""Image reading shared by training, evaluation, inference and calibration."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from posekit.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


class CorruptImageError(UserError):
    """An image file that is missing, unreadable or not an image. Callers skip it and count it."""


def read_image_bytes(path: str | os.PathLike) -> np.ndarray:
    """The file's bytes, (N,) uint8. Raises :class:`CorruptImageError` for a missing or empty file."""
    path = Path(path)
    data = np.fromfile(path, dtype=np.uint8) if path.is_file() else None
    if data is None or data.size == 0:
        raise CorruptImageError(f"cannot read image {path}: file missing or empty")
    return data


def decode_image_rgb(data: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """Encoded bytes (N,) uint8 -> (H, W, 3) uint8 RGB; :class:`CorruptImageError` naming ``path`` if they are not
    an image."""
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if img is None:
        raise CorruptImageError(f"cannot decode image {path}: not an image or corrupt")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_image_rgb(path: str | os.PathLike) -> np.ndarray:
    """(H, W, 3) uint8 RGB. Raises :class:`CorruptImageError` (never returns None like ``cv2.imread``)."""
    return decode_image_rgb(read_image_bytes(path), path)


def normalize(img: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, 3) RGB -> float32 (..., 3, H, W) as TAO: x / 256 - 0.5."""
    x = img.astype(np.float32) * (1.0 / 256.0) - 0.5
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def to_chw_uint8(img: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) RGB -> uint8 (3, H, W): the training loader ships images as bytes (4x less than float32
    through worker shared memory and pinned copies) and :func:`normalize_tensor` runs on the training device."""
    return np.ascontiguousarray(np.moveaxis(img, -1, -3))


def normalize_tensor(x):
    """torch uint8 (B, 3, H, W) -> float32 x / 256 - 0.5 (the same numbers as :func:`normalize`); float passes."""
    if x.dtype.is_floating_point:
        return x
    return x.float().mul_(1.0 / 256.0).sub_(0.5)
