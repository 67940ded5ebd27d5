"""The geometric half of the device augmentation (``data.augment_on_device``): the person-centric warp, the area
pre-shrink and the keypoints, for a batch in torch, on any device.

The CPU path (``posekit.data.augment``) runs ``cv2.resize(INTER_AREA)`` then ``cv2.warpAffine(INTER_LINEAR,
BORDER_CONSTANT)`` on uint8 images. These functions compute what OpenCV computes, not a look-alike:

* :func:`warp_affine_u8` is OpenCV's fixed-point bilinear warp: the inverse matrix and the per-row/per-column
  offsets in float64 rounded to 1/1024 px, source positions quantized to 1/32 px, integer bilinear weights
  (sum 1024) and integer rounding. It equals ``cv2.warpAffine`` bit for bit (tested), so the image the network
  sees does not depend on which path made it. (``grid_sample`` at exact positions differs from it by up to a
  few grey levels at sharp edges: OpenCV's 1/32-px quantization.)
* :func:`area_shrink` is ``INTER_AREA`` with OpenCV's coverage weights (``computeResizeAreaTab``) summed in
  float32 in OpenCV's order. Its rounding ties are many (the weights are simple fractions), so the order of the
  float32 sums decides them; a few pixels OpenCV handles in another loop can still land one grey level apart
  (tested: within 1 level).

Shapes: B samples, C = 3 channels, (H, W) network input, P people, J joints.
"""

from __future__ import annotations

import torch

# OpenCV's warpAffine fixed point: offsets in 1/2^AB_BITS px, source positions in 1/2^INTER_BITS px.
AB_BITS, INTER_BITS = 10, 5
AB_SCALE = 1 << AB_BITS
INTER_TAB = 1 << INTER_BITS
ROUND_DELTA = AB_SCALE // INTER_TAB // 2
WEIGHT_BITS = 2 * INTER_BITS  # bilinear weights (32 - fx) * (32 - fy) etc. sum to 1 << WEIGHT_BITS


def invert_affine_like_cv2(m: torch.Tensor) -> torch.Tensor:
    """(B, 2, 3) -> (B, 2, 3) float64 inverses, with ``cv2.invertAffineTransform``'s operations in its order (the
    warp rounds these numbers to 1/1024 px, so a last-bit difference could move a rounding)."""
    m = m.to(torch.float64)
    m0, m1, m2, m3, m4, m5 = m.reshape(-1, 6).unbind(1)
    d = m0 * m4 - m1 * m3
    d = torch.where(d != 0, 1.0 / d, torch.zeros_like(d))
    a0, a1, a3, a4 = m4 * d, m1 * -d, m3 * -d, m0 * d
    b1 = -a0 * m2 - a1 * m5
    b2 = -a3 * m2 - a4 * m5
    return torch.stack([a0, a1, b1, a3, a4, b2], 1).reshape(-1, 2, 3)


def warp_affine_u8(canvas: torch.Tensor, matrices: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """``cv2.warpAffine(src, M, (W, H), INTER_LINEAR, BORDER_CONSTANT)`` for a batch, bit for bit.

    Args:
        canvas: uint8 (B, C, Hc, Wc): sample b's source image at ``[1 : 1 + h_b, 1 : 1 + w_b]`` and the border
            value everywhere else (a ring of at least one pixel all round: taps outside the image read it, which
            is OpenCV's constant border).
        matrices: (B, 2, 3) source pixel-index -> output pixel-index (the source's pixel (0, 0) is canvas (1, 1)).
        out_hw: (H, W).
    Returns:
        uint8 (B, C, H, W).
    """
    B, C, Hc, Wc = canvas.shape
    H, W = out_hw
    dev = canvas.device
    inv = invert_affine_like_cv2(matrices.to(dev))
    xs = torch.arange(W, device=dev, dtype=torch.float64)
    ys = torch.arange(H, device=dev, dtype=torch.float64)
    # per column and per row, rounded to 1/1024 px (torch.round and OpenCV's cvRound both round half to even)
    adelta = torch.round(inv[:, 0, 0, None] * xs * AB_SCALE).long()  # (B, W)
    bdelta = torch.round(inv[:, 1, 0, None] * xs * AB_SCALE).long()
    x0 = torch.round((inv[:, 0, 1, None] * ys + inv[:, 0, 2, None]) * AB_SCALE).long() + ROUND_DELTA  # (B, H)
    y0 = torch.round((inv[:, 1, 1, None] * ys + inv[:, 1, 2, None]) * AB_SCALE).long() + ROUND_DELTA
    X = (x0[:, :, None] + adelta[:, None, :]) >> (AB_BITS - INTER_BITS)  # (B, H, W) in 1/32 px
    Y = (y0[:, :, None] + bdelta[:, None, :]) >> (AB_BITS - INTER_BITS)
    fx, fy = (X & (INTER_TAB - 1)).int(), (Y & (INTER_TAB - 1)).int()
    # canvas coordinates of the four taps (the source's pixel k is canvas k + 1); any tap off the canvas reads
    # its border ring
    xi, yi = (X >> INTER_BITS) + 1, (Y >> INTER_BITS) + 1
    cx, cx1 = xi.clamp(0, Wc - 1), (xi + 1).clamp(0, Wc - 1)
    cy, cy1 = yi.clamp(0, Hc - 1), (yi + 1).clamp(0, Hc - 1)
    flat = canvas.reshape(B, C, Hc * Wc)

    def tap(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        idx = (yy * Wc + xx).reshape(B, 1, H * W).expand(B, C, H * W)
        return flat.gather(2, idx).reshape(B, C, H, W).int()

    wx1, wy1 = fx[:, None], fy[:, None]
    wx0, wy0 = INTER_TAB - wx1, INTER_TAB - wy1
    total = (tap(cy, cx) * (wx0 * wy0) + tap(cy, cx1) * (wx1 * wy0)
             + tap(cy1, cx) * (wx0 * wy1) + tap(cy1, cx1) * (wx1 * wy1))
    return ((total + (1 << (WEIGHT_BITS - 1))) >> WEIGHT_BITS).to(torch.uint8)


def _area_taps(src: torch.Tensor, dst: torch.Tensor, dst_max: int, taps: int, whole: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One axis of ``INTER_AREA``, per sample: ``(index, weight)``, each (S, dst_max, taps), the source pixels
    output pixel d sums and their float32 weights, in OpenCV's order (``computeResizeAreaTab``: a partial first
    pixel, whole pixels, a partial last pixel; slivers under 1e-3 dropped). Unused taps have weight 0.

    ``whole`` (S,) bool: OpenCV's fast path (both factors whole numbers), which sums with weight 1 and scales after.
    """
    dev = src.device
    n_src, n_dst = src.double()[:, None], dst.double()[:, None]
    scale = 1.0 / (n_dst / n_src)  # OpenCV: scale_x = 1. / inv_scale_x
    d = torch.arange(dst_max, device=dev, dtype=torch.float64)[None, :]
    fs1 = d * scale
    fs2 = fs1 + scale
    cell = torch.minimum(scale, n_src - fs1)
    s2 = torch.minimum(torch.floor(fs2), n_src - 1)
    s1 = torch.minimum(torch.ceil(fs1), s2)
    head = (s1 - fs1 > 1e-3) & ~whole[:, None]
    tail = (fs2 - s2 > 1e-3) & ~whole[:, None]
    first = torch.where(whole[:, None], fs1, s1 - head.double())
    last = torch.where(whole[:, None], fs1 + torch.round(scale) - 1, torch.where(tail, s2, s2 - 1))
    t = torch.arange(taps, device=dev, dtype=torch.float64)[None, None, :]
    index = first[..., None] + t
    valid = (index <= last[..., None]) & (d < n_dst)[..., None]
    tail_w = torch.minimum(torch.clamp(fs2 - s2, max=1.0), cell) / cell
    weight = torch.where((t == 0) & head[..., None], ((s1 - fs1) / cell)[..., None],
                         torch.where((index == s2[..., None]) & tail[..., None], tail_w[..., None],
                                     (1.0 / cell)[..., None]))
    weight = torch.where(whole[:, None, None], torch.ones_like(weight), weight)
    return torch.where(valid, index, 0.0).long(), torch.where(valid, weight, 0.0).float()


def area_shrink(images: torch.Tensor, src_hw: torch.Tensor, dst_hw: torch.Tensor, dst_max: tuple[int, int],
                taps: int) -> torch.Tensor:
    """``cv2.resize(img, (w', h'), interpolation=INTER_AREA)`` (a shrink) for a batch of different sizes.

    OpenCV's arithmetic: each source row summed along x in float32, tap by tap in its order, then the rows summed
    with their weights, rounded half to even; when both factors are whole numbers, its fast path (integer sums;
    2x2 blocks round half up). It rounds the few remaining ties like OpenCV except in the scalar loop OpenCV
    uses for the last pixels of a row of its 2x2 path.

    Args:
        images: uint8 (S, C, Hs, Ws): sample s's image at ``[:h_s, :w_s]`` (whatever lies beyond is ignored).
        src_hw, dst_hw: (S, 2) long (h, w) before and after; dst <= src.
        dst_max: (h, w) of the output tensor (>= every dst_hw).
        taps: at least the most source pixels an output pixel covers along an axis, ceil(src / dst) + 1.
    Returns:
        float32 (S, C, *dst_max) holding whole grey levels: sample s's shrunk image at ``[:h'_s, :w'_s]``.
    """
    S, C, Hs, Ws = images.shape
    n_src, n_dst = src_hw.double(), dst_hw.double()
    ratio = 1.0 / (n_dst / n_src)
    whole = ((ratio - torch.round(ratio)).abs() < 2.220446049250313e-16).all(1)  # OpenCV: < DBL_EPSILON
    iy, wy = _area_taps(src_hw[:, 0], dst_hw[:, 0], dst_max[0], taps, whole)  # (S, h', taps)
    ix, wx = _area_taps(src_hw[:, 1], dst_hw[:, 1], dst_max[1], taps, whole)  # (S, w', taps)
    x = images.float()
    rows = torch.zeros(S, C, Hs, dst_max[1], device=x.device)
    for t in range(taps):  # along x, tap by tap (float32 sums in OpenCV's order)
        idx = ix[:, None, None, :, t].expand(S, C, Hs, dst_max[1])
        rows = rows + x.gather(3, idx) * wx[:, None, None, :, t]
    out = torch.zeros(S, C, dst_max[0], dst_max[1], device=x.device)
    for t in range(taps):  # then along y
        idx = iy[:, None, :, None, t].expand(S, C, dst_max[0], dst_max[1])
        out = out + wy[:, None, :, None, t] * rows.gather(2, idx)
    area = (torch.round(ratio[:, 0]) * torch.round(ratio[:, 1])).float()[:, None, None, None]
    halving = (whole & (torch.round(ratio) == 2).all(1))[:, None, None, None]
    fast = torch.where(halving, torch.floor((out + 2.0) / 4.0), torch.round(out * (1.0 / area)))
    return torch.where(whole[:, None, None, None], fast, torch.round(out)).clamp(0, 255)


def transform_keypoints(keypoints: torch.Tensor, matrices: torch.Tensor, flipped: torch.Tensor,
                        flip_perm: torch.Tensor) -> torch.Tensor:
    """``augment.transform_keypoints`` then the flip's label swap, for a batch.

    Args:
        keypoints: (B, P, J, 3) [x, y, v] in source pixel-index coordinates, network order; v = 0 rows (unlabeled
            joints, padding) stay 0.
        matrices: (B, 2, 3) source -> input.
        flipped: (B,) bool: left/right labels are swapped (``flip_perm``, (J,) long) where True.
    Returns:
        (B, P, J, 3) float32 in input coordinates.
    """
    k = keypoints.float()
    m = matrices.to(k.device, torch.float32)
    x, y = k[..., 0], k[..., 1]
    mm = m[:, None, None]  # (B, 1, 1, 2, 3)
    nx = x * mm[..., 0, 0] + y * mm[..., 0, 1] + mm[..., 0, 2]
    ny = x * mm[..., 1, 0] + y * mm[..., 1, 1] + mm[..., 1, 2]
    labeled = k[..., 2] > 0
    out = torch.stack([torch.where(labeled, nx, 0.0), torch.where(labeled, ny, 0.0), k[..., 2]], -1)
    swapped = out[:, :, flip_perm.to(k.device)]
    return torch.where(flipped.to(k.device)[:, None, None, None], swapped, out)
