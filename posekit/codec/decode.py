"""Decode: heatmaps + PAFs -> people. The inverse of :func:`posekit.codec.encode`: same skeleton, same stride,
same coordinates (output cell i is centred at input pixel ``stride*i + (stride-1)/2``).

Shapes for one image: J joints, L limbs, output grid (h, w), K peaks, C accepted limb connections.

1. **Peaks** (OpenCV on the host; torch for device tensors that are upsampled, so on a GPU only the peaks and
   their 3x3 neighbourhoods leave the device): optional bicubic upsampling of the J joint heatmaps, optional Gaussian
   smoothing, ``nms_window`` max-pool NMS, threshold, one peak per plateau, and sub-pixel refinement by a
   parabola through the *log* of the 3-point neighbourhood on each axis (exact for a Gaussian peak, which is
   what the encoder draws; also on the map border, with the curvature of the other axis).
2. **Limbs** (numba, :mod:`posekit.codec.grouping`): every (start, end) candidate pair of every limb is scored by the PAF line integral
   (``paf_samples`` bilinear samples on the stride-s PAF maps: no PAF upsampling is needed), filtered by
   ``paf_min_score`` / ``paf_min_ratio``, then matched one-to-one greedily by score.
3. **People** (numba, :mod:`posekit.codec.grouping`): connections are assembled limb by limb (OpenPose): a connection extends the person
   that owns one of its peaks, merges two partial people that share no joint type, or starts a person
   (unless its limb is in ``skeleton.no_new_person_limbs``). People with fewer than ``min_parts`` joints or a
   mean score under ``min_mean_score`` are dropped; the ``max_people`` best are kept.

Person score: ``1 - 1/score_sum`` as TAO, where ``score_sum`` adds the peak scores and the limb scores of the
person. COCO AP only depends on the ranking of detections, and this is a monotonic squash of ``score_sum``
into [0, 1): people with more and surer parts rank first, fragments last.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from posekit.codec.grouping import connect_limbs, group_people
from posekit.config import DecodeConfig
from posekit.skeleton import Skeleton

ArrayLike = np.ndarray | torch.Tensor


@dataclass
class People:
    """Decoded people of one image.

    keypoints: (N, J, 3) float32 ``[x, y, score]`` in network-joint order; a missing joint is ``[0, 0, 0]``.
    scores: (N,) float32 person scores in [0, 1), sorted in decreasing order.
    Coordinates are network-input pixels out of the decoder, original-image pixels out of the predictor.
    """

    keypoints: np.ndarray
    scores: np.ndarray

    @classmethod
    def empty(cls, num_joints: int) -> "People":
        return cls(np.zeros((0, num_joints, 3), np.float32), np.zeros((0,), np.float32))

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def transformed(self, affine: np.ndarray) -> "People":
        """The same people with present joints mapped by a 2x3 affine (missing joints stay at 0)."""
        kps = self.keypoints.copy()
        present = kps[..., 2] > 0
        xy = kps[..., :2].astype(np.float64) @ np.asarray(affine, np.float64)[:, :2].T + np.asarray(affine)[:, 2]
        kps[..., :2] = np.where(present[..., None], xy, 0.0)
        return People(kps, self.scores.copy())

    def select(self, keep: np.ndarray) -> "People":
        return People(self.keypoints[keep], self.scores[keep])


class Decoder:
    """Maps -> :class:`People` for one skeleton.

    Args:
        skeleton: joints and limbs (the same as the encoder's).
        decode_cfg: the ``codec.decode`` section (:class:`posekit.config.DecodeConfig`, e.g.
            ``OmegaConf.to_object(cfg.codec.decode)``), checked by ``posekit.config.validate``; None = defaults.
        stride: the network's output stride (8).
    """

    def __init__(self, skeleton: Skeleton, decode_cfg: DecodeConfig | None = None, stride: int = 8):
        cfg = DecodeConfig() if decode_cfg is None else decode_cfg
        self.skeleton = skeleton
        self.stride = int(stride)
        self.upsample = int(cfg.upsample)
        self.smooth_sigma = float(cfg.smooth_sigma)
        self.nms_window = int(cfg.nms_window)
        self.peak_threshold = float(cfg.peak_threshold)
        self.subpixel = bool(cfg.subpixel)
        self.paf_samples = int(cfg.paf_samples)
        self.paf_min_score = float(cfg.paf_min_score)
        self.paf_min_ratio = float(cfg.paf_min_ratio)
        self.min_parts = int(cfg.min_parts)
        self.min_mean_score = float(cfg.min_mean_score)
        self.max_people = int(cfg.max_people)
        self.max_peaks = int(cfg.max_peaks)
        # "at least paf_min_ratio of the samples" (TAO's `> 0.8 * 10` is paf_min_ratio=0.9 here)
        self.min_count = max(1, math.ceil(self.paf_min_ratio * self.paf_samples - 1e-9))
        self.limbs = np.asarray(skeleton.limbs, dtype=np.int64).reshape(-1, 2)
        self.can_start = np.ones(skeleton.num_limbs, dtype=np.bool_)
        self.can_start[list(skeleton.no_new_person_limbs)] = False

    # ------------------------------------------------------------------ entry point
    def __call__(self, heatmaps: ArrayLike, pafs: ArrayLike) -> People:
        """heatmaps (J+1, h, w) with background last, pafs (2L, h, w): numpy arrays or torch tensors on any
        device. Returns people in network-input pixel coordinates."""
        J = self.skeleton.num_joints
        if tuple(heatmaps.shape[:1]) != (J + 1,) or tuple(pafs.shape[:1]) != (self.skeleton.num_pafs,):
            raise ValueError(
                f"decode: got heatmaps {tuple(heatmaps.shape)} and PAFs {tuple(pafs.shape)}; skeleton "
                f"{self.skeleton.name!r} needs ({J + 1}, h, w) and ({self.skeleton.num_pafs}, h, w)"
            )
        if self.upsample == 1 and _on_device(heatmaps) and _on_device(pafs):
            # Stride-8 maps are small (57 channels of 36x48 at 288x384: 0.4 MB): one copy to the host, then OpenCV,
            # beats a dozen small kernels and their synchronizations on the device (docs/eval-infer.md, decoder).
            both = torch.cat([heatmaps[:J].float(), pafs.float()]).cpu().numpy()
            heatmaps, pafs = both[:J], both[J:]
        joint, xy, score = self.find_peaks(heatmaps)
        if score.size == 0:
            return People.empty(J)
        offsets = np.zeros(J + 1, dtype=np.int64)
        np.cumsum(np.bincount(joint, minlength=J), out=offsets[1:])
        paf = pafs.detach().float().cpu().numpy() if isinstance(pafs, torch.Tensor) else pafs
        paf = np.ascontiguousarray(paf, dtype=np.float32)
        conn_limb, conn_a, conn_b, conn_score = connect_limbs(
            paf, self.limbs, xy, offsets, float(self.stride), self.paf_samples, self.paf_min_score, self.min_count
        )
        slots, total, count = group_people(
            conn_limb, conn_a, conn_b, conn_score, self.limbs, score, self.can_start, J
        )
        return self._people(slots, total, count, xy, score)

    # ------------------------------------------------------------------ 1. peaks
    def find_peaks(self, heatmaps: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Joint peaks of (J+1, h, w) heatmaps (background ignored).

        Device tensors are searched with torch on their device (only the peaks and their 3x3 neighbourhoods
        cross to the host); host arrays with OpenCV, an order of magnitude faster than torch on one CPU core.
        Both paths compute the same thing. (``__call__`` hands device maps to the host first when they are not
        upsampled: then the copy is cheaper than the device path.)

        Returns joint (K,) int64 sorted ascending (within a joint by decreasing score, at most ``max_peaks``),
        xy (K, 2) float32 network-input pixels, score (K,) float32 heatmap values at the peaks.
        """
        J = self.skeleton.num_joints
        if _on_device(heatmaps):
            joint, py, px, score, nb, hw = self._peaks_torch(heatmaps[:J].float())
        else:
            heat = heatmaps.detach().numpy() if isinstance(heatmaps, torch.Tensor) else np.asarray(heatmaps)
            joint, py, px, score, nb, hw = self._peaks_cv2(heat[:J].astype(np.float32, copy=False))
        keep = _first_of_plateaus(joint, py, px, nb[:, 0], self.nms_window // 2, hw[1])
        joint, py, px, score, nb = joint[keep], py[keep], px[keep], score[keep], nb[keep]
        fx, fy = px.astype(np.float32), py.astype(np.float32)
        if self.subpixel:
            dx, dy = _subpixel_offsets(nb, py, px, hw)
            fx, fy = fx + dx, fy + dy
        # peak-map pixel -> stride-s grid index (cubic upsampling keeps pixel centres aligned) -> input pixel
        u, c = self.upsample, (self.stride - 1) / 2.0
        xy = np.stack([((fx + 0.5) / u - 0.5) * self.stride + c, ((fy + 0.5) / u - 0.5) * self.stride + c], axis=1)
        order = np.lexsort((-score, joint))
        joint, xy, score = joint[order], xy[order], score[order]
        first = np.searchsorted(joint, joint, side="left")  # index of each joint's best peak
        keep = np.arange(joint.size) - first < self.max_peaks
        return joint[keep], np.ascontiguousarray(xy[keep], dtype=np.float32), score[keep].astype(np.float32)

    def _gaussian_kernel(self) -> np.ndarray:
        """1-D smoothing kernel; ``smooth_sigma`` is in input pixels (TAO's sigma 3 on its x8 map = 3 px)."""
        sigma = self.smooth_sigma * self.upsample / self.stride  # in peak-map pixels
        t = np.arange(-max(1, math.ceil(2.5 * sigma)), max(1, math.ceil(2.5 * sigma)) + 1, dtype=np.float64)
        g = np.exp(-(t**2) / (2 * sigma**2))
        return (g / g.sum()).astype(np.float32)

    def _peaks_cv2(self, heat: np.ndarray) -> tuple:
        """OpenCV path on a host (J, h, w) array, in (H, W, J) layout (OpenCV filters channels independently)."""
        x = np.ascontiguousarray(heat.transpose(1, 2, 0))  # single-channel results come back 2-D: reshaped
        u = self.upsample
        if u > 1:
            x = cv2.resize(x, None, fx=u, fy=u, interpolation=cv2.INTER_CUBIC).reshape(
                x.shape[0] * u, x.shape[1] * u, -1)
        smooth = x
        if self.smooth_sigma > 0:
            # replicate borders: zero padding would pull down (and shift inwards) peaks on the border
            g = self._gaussian_kernel()
            smooth = cv2.sepFilter2D(x, -1, g, g, borderType=cv2.BORDER_REPLICATE).reshape(x.shape)
        kernel = np.ones((self.nms_window, self.nms_window), np.uint8)
        # dilation = max-pool with the window centred; outside the map counts as -inf (as max_pool2d's padding)
        peak = (smooth == cv2.dilate(smooth, kernel).reshape(x.shape)) & (x > self.peak_threshold)
        H, W = x.shape[:2]
        py, px, joint = np.nonzero(peak)
        ym, yp = np.maximum(py - 1, 0), np.minimum(py + 1, H - 1)
        xm, xp = np.maximum(px - 1, 0), np.minimum(px + 1, W - 1)
        nb = np.stack([smooth[py, px, joint], smooth[py, xm, joint], smooth[py, xp, joint],
                       smooth[ym, px, joint], smooth[yp, px, joint]], axis=1)
        return joint.astype(np.int64), py, px, x[py, px, joint], nb, (H, W)

    def _peaks_torch(self, heat: torch.Tensor) -> tuple:
        """torch path on a device (J, h, w) tensor; the same operations as :meth:`_peaks_cv2`."""
        x = heat[None]
        u, k, pad = self.upsample, self.nms_window, self.nms_window // 2
        if u > 1:
            x = F.interpolate(x, scale_factor=u, mode="bicubic", align_corners=False)
        smooth = x
        if self.smooth_sigma > 0:
            g = torch.as_tensor(self._gaussian_kernel(), device=x.device)
            C, r = x.shape[1], g.numel() // 2
            smooth = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), g.view(1, 1, 1, -1).expand(C, 1, 1, -1),
                              groups=C)
            smooth = F.conv2d(F.pad(smooth, (0, 0, r, r), mode="replicate"),
                              g.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)
        peak = (smooth == F.max_pool2d(smooth, k, stride=1, padding=pad)) & (x > self.peak_threshold)
        H, W = x.shape[-2:]
        j, py, px = peak[0].nonzero(as_tuple=True)
        m = smooth[0]
        ym, yp = (py - 1).clamp(min=0), (py + 1).clamp(max=H - 1)
        xm, xp = (px - 1).clamp(min=0), (px + 1).clamp(max=W - 1)
        # one (K, 9) table, one copy to the host: j, py, px (exact in float32 below 2^24), value, 5 neighbours
        table = torch.stack([j.float(), py.float(), px.float(), x[0, j, py, px].float(), m[j, py, px], m[j, py, xm],
                             m[j, py, xp], m[j, ym, px], m[j, yp, px]], dim=1).cpu().numpy()
        index = table[:, :3].astype(np.int64)
        return index[:, 0], index[:, 1], index[:, 2], table[:, 3], table[:, 4:], (H, W)

    # ------------------------------------------------------------------ 3. people -> arrays
    def _people(self, slots: np.ndarray, total: np.ndarray, count: np.ndarray, xy: np.ndarray,
                score: np.ndarray) -> People:
        J = self.skeleton.num_joints
        with np.errstate(divide="ignore", invalid="ignore"):
            keep = (count >= self.min_parts) & (total / np.maximum(count, 1) >= self.min_mean_score)
        slots, total = slots[keep], total[keep]
        if slots.shape[0] == 0:
            return People.empty(J)
        person_score = (1.0 - 1.0 / total).astype(np.float32)
        order = np.argsort(-person_score, kind="stable")[: self.max_people]
        slots, person_score = slots[order], person_score[order]
        present = slots >= 0
        idx = np.where(present, slots, 0)
        kps = np.zeros((slots.shape[0], J, 3), np.float32)
        kps[..., :2] = np.where(present[..., None], xy[idx], 0.0)
        kps[..., 2] = np.where(present, score[idx], 0.0)
        return People(kps, person_score)


def _on_device(x: ArrayLike) -> bool:
    return isinstance(x, torch.Tensor) and x.device.type != "cpu"


def decode(heatmaps: ArrayLike, pafs: ArrayLike, skeleton: Skeleton, decode_cfg: DecodeConfig | None = None,
           stride: int = 8) -> People:
    """One-off decode (builds a :class:`Decoder`; keep a Decoder around when decoding many images)."""
    return Decoder(skeleton, decode_cfg, stride)(heatmaps, pafs)


def _first_of_plateaus(joint: np.ndarray, py: np.ndarray, px: np.ndarray, value: np.ndarray, radius: int,
                       width: int) -> np.ndarray:
    """(K,) bool: drop repeated maxima of one plateau.

    Equal neighbours (a joint midway between two cells; quantized FP16/INT8 outputs) pass the ``map == max
    pool`` test together. Two candidates within one NMS window are both window maxima only if their values
    are equal, so only runs of equal (joint, value) need a look; in each, a candidate with an earlier (raster
    order) candidate within ``radius`` is dropped, as a max-pool over raster ranks would."""
    keep = np.ones(joint.shape[0], bool)
    order = np.lexsort((py * width + px, value, joint))
    j, v = joint[order], value[order]
    tied = np.flatnonzero((j[1:] == j[:-1]) & (v[1:] == v[:-1]))
    if tied.size == 0:
        return keep
    starts = tied[np.r_[True, np.diff(tied) > 1]]  # each run of ties: order[start : end + 1]
    ends = tied[np.r_[np.diff(tied) > 1, True]] + 1
    for a, b in zip(starts, ends):
        run = order[a : b + 1]  # raster order within the run
        near = (np.abs(py[run, None] - py[None, run]) <= radius) & (np.abs(px[run, None] - px[None, run]) <= radius)
        keep[run] = ~np.tril(near, k=-1).any(axis=1)  # any earlier candidate of the run in the window
    return keep


def _subpixel_offsets(nb: np.ndarray, py: np.ndarray, px: np.ndarray, hw: tuple[int, int]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel offsets (dx, dy) in [-0.5, 0.5] of K peaks at (py, px) of an (H, W) map.

    nb: (K, 5) map values at the peak, x-1, x+1, y-1, y+1 (border-clamped). Per axis, a parabola through the
    log of the three values: exact for Gaussian blobs (the encoder's targets). On the map border one neighbour
    is missing; the curvature is then borrowed from the other axis (the blobs are isotropic) and the offset
    solved from the one remaining difference. Flat or non-concave neighbourhoods get 0."""
    H, W = hw
    lg = np.log(np.maximum(nb.astype(np.float64), 1e-6))
    l0 = lg[:, 0]
    axes = []
    for lm, lp, has_m, has_p in ((lg[:, 1], lg[:, 2], px > 0, px < W - 1), (lg[:, 3], lg[:, 4], py > 0, py < H - 1)):
        curv = lm - 2 * l0 + lp  # second difference; < 0 at a proper maximum
        axes.append((lm, lp, has_m, has_p, curv, has_m & has_p & (curv < -1e-6)))
    offsets = []
    for (lm, lp, has_m, has_p, curv, proper), other in zip(axes, axes[::-1]):
        c = np.where(proper, curv, np.where(other[5], other[4], 0.0))
        ok = c < -1e-6
        c = np.where(ok, c, -1.0)
        two_sided = 0.5 * (lm - lp) / c
        # one side only: l(+-1) - l(0) = c/2 (1 -+ 2d)  =>  d = +-(1/2 - (l(+-1) - l(0)) / c)
        d = np.where(has_m & has_p, two_sided, np.where(has_p, 0.5 - (lp - l0) / c, (lm - l0) / c - 0.5))
        offsets.append(np.where(ok, np.clip(d, -0.5, 0.5), 0.0).astype(np.float32))
    return offsets[0], offsets[1]
