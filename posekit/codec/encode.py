"""Encode: keypoints -> heatmap and PAF targets at the network's output stride: ``encode`` per image (vectorized
numpy, in the loader workers) and ``encode_batch``, the same for a batch in torch (on the training device).

Shapes: P people, J network joints, L limbs, output grid (h, w) = input (H/s, W/s).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

from posekit.skeleton import Skeleton


def cell_centers(n: int, stride: int) -> np.ndarray:
    """(n,) input-pixel coordinates of the output cells' centres: ``stride*i + (stride-1)/2``."""
    return np.arange(n, dtype=np.float32) * stride + (stride - 1) / 2.0


def encode(
    keypoints: np.ndarray,
    skeleton: Skeleton,
    out_hw: tuple[int, int],
    stride: int = 8,
    sigma: float = 7.0,
    paf_half_width: float = 8.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Make the training targets for one image.

    Args:
        keypoints: (P, J, 3) [x, y, v] in network-input pixel-index coordinates, network joint order;
            v > 0 means labeled (visible or occluded). Keypoints outside the input still contribute their
            Gaussian tail / PAF band inside it.
        skeleton: gives J and the limbs.
        out_hw: (h, w) of the output grid (input size / stride).
        sigma: heatmap Gaussian sigma in input pixels (TAO: 7).
        paf_half_width: PAF band half-width in input pixels (TAO: 8).

    Returns:
        heatmaps: (J + 1, h, w) float32; per joint the max over people of exp(-d^2 / 2 sigma^2) (values under
            0.001 zeroed, as TAO), last channel background = clip(1 - max_j H_j, 0, 1).
        pafs: (2L, h, w) float32; channel 2k/2k+1 = x/y of the unit vector from limb k's start to its end on
            cells within ``paf_half_width`` of the segment (and within half a cell past its ends); where people's
            limbs overlap the vectors are averaged (TAO overwrites them: quirk 2, fixed).
    """
    h, w = out_hw
    kps = np.asarray(keypoints, dtype=np.float32).reshape(-1, skeleton.num_joints, 3)
    gx, gy = cell_centers(w, stride), cell_centers(h, stride)
    heat = np.zeros((skeleton.num_heatmaps, h, w), dtype=np.float32)
    paf = np.zeros((skeleton.num_pafs, h, w), dtype=np.float32)
    if len(kps) == 0:
        heat[-1] = 1.0
        return heat, paf

    # --- heatmaps: separable Gaussians, (P, J, h, 1) * (P, J, 1, w), max over people
    labeled = kps[..., 2] > 0  # (P, J)
    ex = np.exp(-((gx[None, None, :] - kps[..., 0:1]) ** 2) / (2 * sigma**2))  # (P, J, w)
    ey = np.exp(-((gy[None, None, :] - kps[..., 1:2]) ** 2) / (2 * sigma**2))  # (P, J, h)
    g = ey[..., :, None] * ex[..., None, :] * labeled[..., None, None]  # (P, J, h, w)
    joints = g.max(axis=0)
    joints[joints < 1e-3] = 0.0
    heat[:-1] = joints
    heat[-1] = np.clip(1.0 - joints.max(axis=0), 0.0, 1.0)

    # --- PAFs: per limb, all people at once; average where bands overlap
    limbs = np.asarray(skeleton.limbs, dtype=np.int64)  # (L, 2)
    pa, pb = kps[:, limbs[:, 0]], kps[:, limbs[:, 1]]  # (P, L, 3)
    ok = (pa[..., 2] > 0) & (pb[..., 2] > 0)
    d = pb[..., :2] - pa[..., :2]  # (P, L, 2)
    length = np.linalg.norm(d, axis=-1)  # (P, L)
    ok &= length > 1e-3
    u = d / np.maximum(length, 1e-6)[..., None]  # (P, L, 2) unit vectors
    # grid offsets from each limb start: (P, L, h, w)
    rx = gx[None, None, None, :] - pa[..., 0, None, None]
    ry = gy[None, None, :, None] - pa[..., 1, None, None]
    along = rx * u[..., 0, None, None] + ry * u[..., 1, None, None]
    across = np.abs(rx * u[..., 1, None, None] - ry * u[..., 0, None, None])
    half_cell = stride / 2.0
    band = (
        (along >= -half_cell)
        & (along <= length[..., None, None] + half_cell)
        & (across <= paf_half_width)
        & ok[..., None, None]
    )  # (P, L, h, w)
    count = band.sum(axis=0).astype(np.float32)  # (L, h, w)
    vx = (band * u[..., 0, None, None]).sum(axis=0)
    vy = (band * u[..., 1, None, None]).sum(axis=0)
    nz = count > 0
    vx[nz] /= count[nz]
    vy[nz] /= count[nz]
    paf[0::2] = vx
    paf[1::2] = vy
    return heat, paf


@functools.lru_cache(maxsize=16)
def _limb_index(limbs: tuple[tuple[int, int], ...], device: torch.device) -> torch.Tensor:
    """(L, 2) long tensor of the limbs on ``device``, made once: a fresh host-to-device copy every step would be a
    blocking copy that waits for the GPU's queued work (the stall ``DeviceScalars`` avoids for logged numbers)."""
    return torch.tensor(limbs, dtype=torch.long, device=device)


def encode_batch(
    keypoints: torch.Tensor,
    skeleton: Skeleton,
    out_hw: tuple[int, int],
    stride: int = 8,
    sigma: float = 7.0,
    paf_half_width: float = 8.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`encode` for a whole batch in torch, on the keypoints' device (``data.targets_on_device``: the
    training device renders the targets, and the loader workers ship keypoints instead of maps).

    Args:
        keypoints: (B, P, J, 3) float [x, y, v] in input pixel coordinates; images with fewer people are padded
            with v = 0 rows, which contribute nothing (as unlabeled joints do in :func:`encode`).
    Returns:
        heatmaps (B, J + 1, h, w) and pafs (B, 2L, h, w), float32: the same numbers as :func:`encode` per image.
    Memory: a few (B, P, L, h, w) float temporaries (~40 MB each at B=32, P=10, 288x384).
    """
    h, w = out_hw
    kps = keypoints.float()
    dev = kps.device
    # cell_centers, made on the device: copying the numpy ones over would be a blocking copy every step
    gx = torch.arange(w, device=dev, dtype=torch.float32) * stride + (stride - 1) / 2.0
    gy = torch.arange(h, device=dev, dtype=torch.float32) * stride + (stride - 1) / 2.0

    # heatmaps: separable Gaussians (B, P, J, h, w), max over people
    labeled = (kps[..., 2] > 0).float()  # (B, P, J)
    ex = torch.exp(-((gx - kps[..., 0:1]) ** 2) / (2 * sigma**2))  # (B, P, J, w)
    ey = torch.exp(-((gy - kps[..., 1:2]) ** 2) / (2 * sigma**2))  # (B, P, J, h)
    g = ey[..., :, None] * ex[..., None, :] * labeled[..., None, None]
    joints = g.amax(dim=1) if kps.shape[1] else g.new_zeros(kps.shape[0], kps.shape[2], h, w)  # (B, J, h, w)
    joints = torch.where(joints < 1e-3, torch.zeros_like(joints), joints)
    background = (1.0 - joints.amax(dim=1, keepdim=True)).clamp(0.0, 1.0)
    heat = torch.cat([joints, background], dim=1)

    # PAFs: per limb, all people at once; average where bands overlap
    limbs = _limb_index(tuple(map(tuple, skeleton.limbs)), dev)  # (L, 2)
    pa, pb = kps[:, :, limbs[:, 0]], kps[:, :, limbs[:, 1]]  # (B, P, L, 3)
    ok = (pa[..., 2] > 0) & (pb[..., 2] > 0)
    d = pb[..., :2] - pa[..., :2]
    length = (d * d).sum(-1).sqrt()  # (B, P, L); numpy's norm, op for op (a band's edge cell depends on it)
    ok &= length > 1e-3
    u = d / length.clamp_min(1e-6)[..., None]
    rx = gx[None, None, None, None, :] - pa[..., 0, None, None]  # (B, P, L, 1, w)
    ry = gy[None, None, None, :, None] - pa[..., 1, None, None]  # (B, P, L, h, 1)
    ux, uy = u[..., 0, None, None], u[..., 1, None, None]
    along = rx * ux + ry * uy
    across = (rx * uy - ry * ux).abs()
    half_cell = stride / 2.0
    band = (
        (along >= -half_cell)
        & (along <= length[..., None, None] + half_cell)
        & (across <= paf_half_width)
        & ok[..., None, None]
    ).float()  # (B, P, L, h, w)
    count = band.sum(dim=1)  # (B, L, h, w)
    vx = (band * ux).sum(dim=1) / count.clamp_min(1.0)
    vy = (band * uy).sum(dim=1) / count.clamp_min(1.0)
    paf = torch.stack([vx, vy], dim=2).flatten(1, 2)  # (B, 2L, h, w): x, y interleaved per limb
    return heat, paf


class Encoder:
    """The encode half of the codec with its settings (``codec.stride``, ``sigma``, ``paf_half_width``) for one
    input size: one image in numpy (:func:`encode`, in the loader workers) or a batch in torch
    (:func:`encode_batch`, on the training device with ``data.targets_on_device``)."""

    def __init__(self, skeleton: Skeleton, input_hw: tuple[int, int], codec_cfg: Any):
        self.skeleton = skeleton
        self.stride = int(codec_cfg.stride)
        self.sigma = float(codec_cfg.sigma)
        self.paf_half_width = float(codec_cfg.paf_half_width)
        self.out_hw = (int(input_hw[0]) // self.stride, int(input_hw[1]) // self.stride)

    def __call__(self, keypoints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(P, J, 3) input-coordinate keypoints -> heatmaps (J+1, h, w), PAFs (2L, h, w)."""
        return encode(keypoints, self.skeleton, self.out_hw, self.stride, self.sigma, self.paf_half_width)

    def batch(self, keypoints: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, P, J, 3) on any device -> heatmaps (B, J+1, h, w), PAFs (B, 2L, h, w) on that device."""
        return encode_batch(keypoints, self.skeleton, self.out_hw, self.stride, self.sigma, self.paf_half_width)
