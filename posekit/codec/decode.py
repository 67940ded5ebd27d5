"""Decode: heatmaps + PAFs -> people. The inverse of :func:`posekit.codec.encode`: same skeleton, same stride,
same coordinates (output cell i is centred at input pixel ``stride*i + (stride-1)/2``).

Shapes for one image: J joints, L limbs, output grid (h, w), K peaks, C accepted limb connections.

1. **Peaks** (torch, so on a GPU only the peaks leave the device): optional bicubic upsampling of the J joint
   heatmaps, optional Gaussian smoothing, ``nms_window`` max-pool NMS with a deterministic tie-break on
   plateaus, threshold, and sub-pixel refinement by a parabola through the *log* of the 3-point neighbourhood
   on each axis (exact for a Gaussian peak, which is what the encoder draws).
2. **Limbs** (numba): every (start, end) candidate pair of every limb is scored by the PAF line integral
   (``paf_samples`` bilinear samples on the stride-s PAF maps: no PAF upsampling is needed), filtered by
   ``paf_min_score`` / ``paf_min_ratio``, then matched one-to-one greedily by score.
3. **People** (numba): connections are assembled limb by limb (OpenPose): a connection extends the person
   that owns one of its peaks, merges two partial people that share no joint type, or starts a person
   (unless its limb is in ``skeleton.no_new_person_limbs``). People with fewer than ``min_parts`` joints or a
   mean score under ``min_mean_score`` are dropped; the ``max_people`` best are kept.

Person score: ``1 - 1/score_sum`` as TAO, where ``score_sum`` adds the peak scores and the limb scores of the
person. COCO AP only depends on the ranking of detections, and this is a monotonic squash of ``score_sum``
into [0, 1): people with more and surer parts rank first, fragments last.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import torch
import torch.nn.functional as F

from posekit.config import ConfigError, DecodeConfig
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


def _cfg_value(cfg: Any, key: str) -> Any:
    return cfg[key] if isinstance(cfg, Mapping) else getattr(cfg, key)


class Decoder:
    """Maps -> :class:`People` for one skeleton.

    Args:
        skeleton: joints and limbs (the same as the encoder's).
        decode_cfg: a :class:`posekit.config.DecodeConfig` (or the ``codec.decode`` DictConfig); None = defaults.
        stride: the network's output stride (8).
    """

    def __init__(self, skeleton: Skeleton, decode_cfg: Any = None, stride: int = 8):
        cfg = DecodeConfig() if decode_cfg is None else decode_cfg
        self.skeleton = skeleton
        self.stride = int(stride)
        self.upsample = int(_cfg_value(cfg, "upsample"))
        self.smooth_sigma = float(_cfg_value(cfg, "smooth_sigma"))
        self.nms_window = int(_cfg_value(cfg, "nms_window"))
        self.peak_threshold = float(_cfg_value(cfg, "peak_threshold"))
        self.subpixel = bool(_cfg_value(cfg, "subpixel"))
        self.paf_samples = int(_cfg_value(cfg, "paf_samples"))
        self.paf_min_score = float(_cfg_value(cfg, "paf_min_score"))
        self.paf_min_ratio = float(_cfg_value(cfg, "paf_min_ratio"))
        self.min_parts = int(_cfg_value(cfg, "min_parts"))
        self.min_mean_score = float(_cfg_value(cfg, "min_mean_score"))
        self.max_people = int(_cfg_value(cfg, "max_people"))
        self.max_peaks = int(_cfg_value(cfg, "max_peaks"))
        if self.upsample < 1:
            raise ConfigError(f"codec.decode.upsample={self.upsample}: must be >= 1 (1 = decode on the stride-8 maps)")
        if self.nms_window < 3 or self.nms_window % 2 == 0:
            raise ConfigError(f"codec.decode.nms_window={self.nms_window}: must be an odd number >= 3")
        if self.paf_samples < 2:
            raise ConfigError(f"codec.decode.paf_samples={self.paf_samples}: must be >= 2")
        # "at least paf_min_ratio of the samples" (TAO's `> 0.8 * 10` is paf_min_ratio=0.9 here)
        self.min_count = max(1, math.ceil(self.paf_min_ratio * self.paf_samples - 1e-9))
        self.limbs = np.asarray(skeleton.limbs, dtype=np.int64).reshape(-1, 2)
        self.can_start = np.ones(skeleton.num_limbs, dtype=np.bool_)
        self.can_start[list(skeleton.no_new_person_limbs)] = False
        self._kernels: dict[tuple[str, str], torch.Tensor] = {}

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
        joint, xy, score = self.find_peaks(heatmaps)
        if score.size == 0:
            return People.empty(J)
        offsets = np.zeros(J + 1, dtype=np.int64)
        np.cumsum(np.bincount(joint, minlength=J), out=offsets[1:])
        paf = pafs.detach().float().cpu().numpy() if isinstance(pafs, torch.Tensor) else pafs
        paf = np.ascontiguousarray(paf, dtype=np.float32)
        conn_limb, conn_a, conn_b, conn_score = _connect_limbs(
            paf, self.limbs, xy, offsets, float(self.stride), self.paf_samples, self.paf_min_score, self.min_count
        )
        slots, total, count = _group(conn_limb, conn_a, conn_b, conn_score, self.limbs, score, self.can_start, J)
        return self._people(slots, total, count, xy, score)

    # ------------------------------------------------------------------ 1. peaks
    def find_peaks(self, heatmaps: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Joint peaks of (J+1, h, w) heatmaps (background ignored).

        Returns joint (K,) int64 sorted ascending (within a joint by decreasing score, at most ``max_peaks``),
        xy (K, 2) float32 network-input pixels, score (K,) float32 heatmap values at the peaks.
        """
        heat = torch.as_tensor(heatmaps)[: self.skeleton.num_joints].float()[None]  # (1, J, h, w)
        u = self.upsample
        if u > 1:
            heat = F.interpolate(heat, scale_factor=u, mode="bicubic", align_corners=False)
        smooth = self._smooth(heat) if self.smooth_sigma > 0 else heat
        k, pad = self.nms_window, self.nms_window // 2
        peak = (smooth == F.max_pool2d(smooth, k, stride=1, padding=pad)) & (heat > self.peak_threshold)
        # Plateaus (equal neighbours: a joint midway between two cells, or quantized FP16/INT8 outputs) give
        # several maxima per window; keep the first in raster order so each peak is reported once.
        H, W = heat.shape[-2:]
        raster = -torch.arange(H * W, device=heat.device, dtype=torch.float32).view(1, 1, H, W)
        rank = torch.where(peak, raster, torch.full_like(raster, -math.inf))
        peak &= F.max_pool2d(rank, k, stride=1, padding=pad) == rank
        j, py, px = peak[0].nonzero(as_tuple=True)
        score = heat[0, j, py, px]
        fx, fy = px.float(), py.float()
        if self.subpixel:
            fx = fx + _log_parabola_offset(smooth[0], j, py, px, axis=2)
            fy = fy + _log_parabola_offset(smooth[0], j, py, px, axis=1)
        # peak-map pixel -> stride-s grid index (bicubic with align_corners=False keeps pixel centres) -> input px
        gx, gy = (fx + 0.5) / u - 0.5, (fy + 0.5) / u - 0.5
        c = (self.stride - 1) / 2.0
        xy = torch.stack([gx * self.stride + c, gy * self.stride + c], dim=1)
        joint = j.cpu().numpy().astype(np.int64)
        xy_np = xy.cpu().numpy().astype(np.float32)
        score_np = score.cpu().numpy().astype(np.float32)
        order = np.lexsort((-score_np, joint))
        joint, xy_np, score_np = joint[order], xy_np[order], score_np[order]
        first = np.searchsorted(joint, joint, side="left")  # index of each joint's best peak
        keep = np.arange(joint.size) - first < self.max_peaks
        return joint[keep], np.ascontiguousarray(xy_np[keep]), score_np[keep]

    def _smooth(self, heat: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian; ``smooth_sigma`` is in input pixels (TAO's sigma 3 on its x8 map = 3 px)."""
        sigma = self.smooth_sigma * self.upsample / self.stride  # in peak-map pixels
        key = (str(heat.device), f"{sigma:.6f}")
        if key not in self._kernels:
            r = max(1, math.ceil(2.5 * sigma))
            t = torch.arange(-r, r + 1, dtype=torch.float32, device=heat.device)
            g = torch.exp(-(t**2) / (2 * sigma**2))
            self._kernels[key] = g / g.sum()
        g = self._kernels[key]
        C, r = heat.shape[1], g.numel() // 2
        # replicate padding: zero padding would pull down (and shift inwards) peaks on the border
        x = F.pad(heat, (r, r, 0, 0), mode="replicate")
        x = F.conv2d(x, g.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
        x = F.pad(x, (0, 0, r, r), mode="replicate")
        return F.conv2d(x, g.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)

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


def decode(heatmaps: ArrayLike, pafs: ArrayLike, skeleton: Skeleton, decode_cfg: Any = None,
           stride: int = 8) -> People:
    """One-off decode (builds a :class:`Decoder`; keep a Decoder around when decoding many images)."""
    return Decoder(skeleton, decode_cfg, stride)(heatmaps, pafs)


def _log_parabola_offset(m: torch.Tensor, j: torch.Tensor, py: torch.Tensor, px: torch.Tensor,
                         axis: int) -> torch.Tensor:
    """Sub-pixel offset in [-0.5, 0.5] of peaks (j, py, px) of map m (J, H, W) along ``axis`` (1 = y, 2 = x).

    A parabola through log(m) at -1, 0, +1: exact for Gaussian blobs. Border peaks (no neighbour on one side)
    and flat or non-concave neighbourhoods get 0."""
    n = m.shape[axis]
    pos = px if axis == 2 else py
    lo, hi = (pos - 1).clamp(min=0), (pos + 1).clamp(max=n - 1)
    if axis == 2:
        vm, v0, vp = m[j, py, lo], m[j, py, px], m[j, py, hi]
    else:
        vm, v0, vp = m[j, lo, px], m[j, py, px], m[j, hi, px]
    lm, l0, lp = (torch.log(v.clamp(min=1e-6)) for v in (vm, v0, vp))
    curvature = lm - 2 * l0 + lp
    ok = (pos > 0) & (pos < n - 1) & (curvature < -1e-6)
    offset = 0.5 * (lm - lp) / torch.where(ok, curvature, torch.ones_like(curvature))
    return torch.where(ok, offset.clamp(-0.5, 0.5), torch.zeros_like(offset))


# ---------------------------------------------------------------------------------------------- numba kernels
@numba.njit(cache=True, nogil=True)
def _bilinear(paf: np.ndarray, ch: int, gx: float, gy: float) -> float:
    """Bilinear sample of paf[ch] at grid coordinates (gx, gy), clamped to the map."""
    h, w = paf.shape[1], paf.shape[2]
    gx = min(max(gx, 0.0), w - 1.0)
    gy = min(max(gy, 0.0), h - 1.0)
    x0, y0 = int(gx), int(gy)
    x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
    fx, fy = gx - x0, gy - y0
    top = paf[ch, y0, x0] * (1.0 - fx) + paf[ch, y0, x1] * fx
    bottom = paf[ch, y1, x0] * (1.0 - fx) + paf[ch, y1, x1] * fx
    return top * (1.0 - fy) + bottom * fy


@numba.njit(cache=True, nogil=True)
def _connect_limbs(paf, limbs, xy, offsets, stride, n_samples, min_score, min_count):
    """Score every candidate pair of every limb and match them one-to-one greedily.

    Args:
        paf: (2L, h, w) float32. limbs: (L, 2) int64 joint indices. xy: (K, 2) float32 peaks (input px),
        grouped by joint: joint j's peaks are ``offsets[j]:offsets[j+1]``.
    Returns:
        (limb, a, b, score) arrays of the C accepted connections (a, b: peak indices), ordered by limb and,
        within a limb, by decreasing score.
    """
    c = (stride - 1.0) / 2.0
    cap = 0
    for k in range(limbs.shape[0]):
        ja, jb = limbs[k, 0], limbs[k, 1]
        cap += min(offsets[ja + 1] - offsets[ja], offsets[jb + 1] - offsets[jb])
    out_limb = np.empty(cap, np.int64)
    out_a = np.empty(cap, np.int64)
    out_b = np.empty(cap, np.int64)
    out_score = np.empty(cap, np.float32)
    n_out = 0
    for k in range(limbs.shape[0]):
        a0, a1 = offsets[limbs[k, 0]], offsets[limbs[k, 0] + 1]
        b0, b1 = offsets[limbs[k, 1]], offsets[limbs[k, 1] + 1]
        na, nb = a1 - a0, b1 - b0
        if na == 0 or nb == 0:
            continue
        cand_score = np.empty(na * nb, np.float32)
        cand_a = np.empty(na * nb, np.int64)
        cand_b = np.empty(na * nb, np.int64)
        m = 0
        for i in range(a0, a1):
            ax, ay = xy[i, 0], xy[i, 1]
            for j in range(b0, b1):
                dx, dy = xy[j, 0] - ax, xy[j, 1] - ay
                norm = math.sqrt(dx * dx + dy * dy)
                if norm < 1e-6:
                    continue
                ux, uy = dx / norm, dy / norm
                acc, cnt = 0.0, 0
                for s in range(n_samples):
                    t = s / (n_samples - 1.0)
                    gx = (ax + t * dx - c) / stride
                    gy = (ay + t * dy - c) / stride
                    dot = _bilinear(paf, 2 * k, gx, gy) * ux + _bilinear(paf, 2 * k + 1, gx, gy) * uy
                    if dot > min_score:
                        acc += dot
                        cnt += 1
                if cnt >= min_count and acc > 0.0:
                    cand_score[m] = acc / cnt  # mean over the samples that passed (TAO, OpenPose)
                    cand_a[m] = i
                    cand_b[m] = j
                    m += 1
        order = np.argsort(-cand_score[:m], kind="mergesort")
        used_a = np.zeros(na, np.bool_)
        used_b = np.zeros(nb, np.bool_)
        taken, limit = 0, min(na, nb)
        for o in order:
            i, j = cand_a[o], cand_b[o]
            if used_a[i - a0] or used_b[j - b0]:
                continue
            used_a[i - a0] = True
            used_b[j - b0] = True
            out_limb[n_out] = k
            out_a[n_out] = i
            out_b[n_out] = j
            out_score[n_out] = cand_score[o]
            n_out += 1
            taken += 1
            if taken == limit:
                break
    return out_limb[:n_out], out_a[:n_out], out_b[:n_out], out_score[:n_out]


@numba.njit(cache=True, nogil=True)
def _group(conn_limb, conn_a, conn_b, conn_score, limbs, peak_score, can_start, num_joints):
    """Assemble connections into people (OpenPose order: limb by limb, best connection first).

    Each peak belongs to at most one person (``owner``). A connection whose two peaks are unowned starts a
    person (if its limb may); one owned end extends that person if the other joint's slot is free; two
    owners are merged when they share no joint type. Returns slots (P, J) peak indices (-1 = missing),
    score_sum (P,) = peak scores + limb scores, count (P,) joints, for the P people alive at the end.
    """
    n = conn_limb.shape[0]
    owner = np.full(peak_score.shape[0], -1, np.int64)
    slots = np.full((n + 1, num_joints), -1, np.int64)
    total = np.zeros(n + 1, np.float64)
    count = np.zeros(n + 1, np.int64)
    alive = np.zeros(n + 1, np.bool_)
    people = 0
    for c in range(n):
        k, a, b, s = conn_limb[c], conn_a[c], conn_b[c], conn_score[c]
        ja, jb = limbs[k, 0], limbs[k, 1]
        ha, hb = owner[a], owner[b]
        if ha < 0 and hb < 0:
            if not can_start[k]:
                continue
            p = people
            people += 1
            slots[p, ja], slots[p, jb] = a, b
            owner[a], owner[b] = p, p
            total[p] = peak_score[a] + peak_score[b] + s
            count[p] = 2
            alive[p] = True
        elif hb < 0:
            if slots[ha, jb] < 0:
                slots[ha, jb] = b
                owner[b] = ha
                total[ha] += peak_score[b] + s
                count[ha] += 1
        elif ha < 0:
            if slots[hb, ja] < 0:
                slots[hb, ja] = a
                owner[a] = hb
                total[hb] += peak_score[a] + s
                count[hb] += 1
        elif ha != hb:
            disjoint = True
            for j in range(num_joints):
                if slots[ha, j] >= 0 and slots[hb, j] >= 0:
                    disjoint = False
                    break
            if disjoint:
                for j in range(num_joints):
                    if slots[hb, j] >= 0:
                        slots[ha, j] = slots[hb, j]
                        owner[slots[hb, j]] = ha
                total[ha] += total[hb] + s
                count[ha] += count[hb]
                alive[hb] = False
    keep = alive[:people]
    return slots[:people][keep], total[:people][keep], count[:people][keep]
