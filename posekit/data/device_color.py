"""The colour half of the device augmentation (``data.augment_on_device``): albumentations ``ColorJitter`` on
uint8 images, for a batch in torch, on any device.

The CPU path applies ``ColorJitter`` to each uint8 image; each of its four adjustments rounds back to uint8, and
which rounding (truncation, half to even) matters for the result, so these functions redo albumentations' and
OpenCV's uint8 arithmetic, not a float approximation of it:

* brightness: ``trunc(clip(x * f))`` as a 256-entry lookup table in float32 (albucore ``multiply``);
* contrast: ``trunc(clip(x * f + mean * (1 - f)))``, ``mean`` the mean of OpenCV's uint8 grey image (albucore
  ``multiply_add``);
* saturation: ``round(x * f + grey * (1 - f))`` (``cv2.addWeighted``);
* hue: OpenCV's uint8 RGB -> HSV (integer arithmetic, hue in 0..179), the hue shifted by a lookup table, and back.

Brightness, contrast and saturation equal the CPU path exactly; hue to 1 grey level: OpenCV's own uint8
HSV -> RGB truncates in its vectorized loop and rounds in the scalar loop that finishes each row (how many pixels
that is depends on the CPU's vector width), and this follows the vectorized loop.

Shapes: B samples, (H, W) image; colour draws are rows ``[brightness, contrast, saturation, hue, order x 4]``
(``augment.ColorDraws.as_row``).
"""

from __future__ import annotations

import functools

import torch

BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)
HSV_SHIFT = 12  # OpenCV's RGB2HSV_b fixed point
IDENTITY_ROW = (1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 2.0, 3.0)  # no colour change (a sample without colour jitter)


@functools.lru_cache(maxsize=8)
def _hsv_tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV's ``sdiv_table`` and ``hdiv_table180`` (256,) int32: round((255 << 12) / v), round((180 << 12) / 6d)."""
    i = torch.arange(1, 256, dtype=torch.float64)
    zero = torch.zeros(1, dtype=torch.float64)
    sdiv = torch.cat([zero, torch.round((255 << HSV_SHIFT) / i)])
    hdiv = torch.cat([zero, torch.round((180 << HSV_SHIFT) / (6.0 * i))])
    return sdiv.int().to(device), hdiv.int().to(device)


def gray_u8(x: torch.Tensor) -> torch.Tensor:
    """int32 (B, 3, H, W) RGB -> int32 (B, H, W): ``cv2.cvtColor(RGB2GRAY)`` on uint8 (its 15-bit fixed point)."""
    return (x[:, 0] * 9798 + x[:, 1] * 19235 + x[:, 2] * 3735 + (1 << 14)) >> 15


def _lookup(lut: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample lookup table (B, 256) applied to int32 (B, ...) values in 0..255."""
    offset = torch.arange(lut.shape[0], device=x.device).reshape(-1, *([1] * (x.dim() - 1))) * lut.shape[1]
    return lut.reshape(-1).take(x.long() + offset)


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """int32 (B, 3, H, W), factor (B,) -> albumentations ``adjust_brightness_torchvision``."""
    lut = torch.arange(256, device=x.device, dtype=torch.float32) * factor.float()[:, None]
    return _lookup(lut.clamp(0, 255).trunc().int(), x)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """int32 (B, 3, H, W), factor (B,) -> albumentations ``adjust_contrast_torchvision``."""
    g = gray_u8(x)
    mean = g.sum(dim=(1, 2), dtype=torch.int64).double() / (g.shape[1] * g.shape[2])  # exact, as numpy's mean
    offset = mean * (1.0 - factor.double())  # in float64, then float32: albucore's python-float arithmetic
    lut = torch.arange(256, device=x.device, dtype=torch.float32) * factor.float()[:, None] + offset.float()[:, None]
    return _lookup(lut.clamp(0, 255).trunc().int(), x)


def saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """int32 (B, 3, H, W), factor (B,) -> albumentations ``adjust_saturation_torchvision`` (cv2.addWeighted)."""
    f = factor.float()[:, None, None, None]
    g = gray_u8(x)[:, None].float()
    return torch.round(x.float() * f + g * (1.0 - f)).clamp(0, 255).int()


def rgb_to_hsv_u8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """int32 (B, 3, H, W) RGB -> (h 0..179, s, v) int32 (B, H, W): ``cv2.cvtColor(RGB2HSV)`` on uint8."""
    sdiv, hdiv = _hsv_tables(x.device)
    r, g, b = x.unbind(1)
    v = torch.maximum(torch.maximum(r, g), b)
    diff = v - torch.minimum(torch.minimum(r, g), b)
    half = 1 << (HSV_SHIFT - 1)
    s = (diff * sdiv.take(v.long()) + half) >> HSV_SHIFT
    h = torch.where(v == r, g - b, torch.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * hdiv.take(diff.long()) + half) >> HSV_SHIFT
    return torch.where(h < 0, h + 180, h), s, v


def hsv_to_rgb_u8(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(h 0..179, s, v) int32 (B, H, W) -> int32 (B, 3, H, W) RGB: ``cv2.cvtColor(HSV2RGB)``'s vectorized loop
    (float32, each step as OpenCV writes it, truncated to uint8)."""
    hf = h.float() * torch.tensor(6.0 / 180.0, dtype=torch.float32)  # OpenCV: hscale = 6.f / 180
    sf = s.float() * torch.tensor(1.0 / 255.0, dtype=torch.float32)
    vf = v.float() * torch.tensor(1.0 / 255.0, dtype=torch.float32)
    whole = torch.trunc(hf)
    hf = hf - whole
    t0, t1 = vf, vf * (1.0 - sf)
    t2, t3 = vf * (1.0 - sf * hf), vf * (1.0 - sf * (1.0 - hf))
    sector = whole - torch.trunc(whole * torch.tensor(1.0 / 6.0, dtype=torch.float32)) * 6.0
    blue = torch.where(sector < 2, t1, torch.where(sector == 2, t3, torch.where(sector <= 4, t0, t2)))
    green = torch.where(sector < 1, t3, torch.where(sector <= 2, t0, torch.where(sector == 3, t2, t1)))
    red = torch.where(sector < 1, t0, torch.where(sector == 1, t2, torch.where(sector <= 3, t1,
                      torch.where(sector == 4, t3, t0))))
    return (torch.stack([red, green, blue], 1) * 255.0).trunc().clamp(0, 255).int()


def hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """int32 (B, 3, H, W), factor (B,) -> albumentations ``adjust_hue_torchvision`` (uint8: an OpenCV HSV round
    trip with the hue shifted by ``180 * factor`` through a truncating table). Factor 0 leaves a sample as it is
    (the round trip alone is lossy, and albumentations skips it)."""
    h, s, v = rgb_to_hsv_u8(x)
    shifted = torch.arange(256, device=x.device, dtype=torch.float64) + 180.0 * factor.double()[:, None]
    lut = torch.remainder(shifted, 180.0).trunc().int()
    out = hsv_to_rgb_u8(_lookup(lut, h), s, v)
    return torch.where((factor == 0)[:, None, None, None], x, out)


ADJUSTMENTS = {BRIGHTNESS: brightness, CONTRAST: contrast, SATURATION: saturation, HUE: hue}


def order_plan(rows: torch.Tensor) -> tuple[torch.Tensor, list[list[int]]]:
    """For :func:`color_jitter`, from the (B, 8) draws on the CPU (the loader's collate makes it, so the device
    needs no host round trip): ``perm`` (4, B) long, at each step the samples sorted by the adjustment they run
    then, and ``counts`` [step][adjustment], how many run each."""
    order = rows[:, 4:8].long()
    perm = torch.argsort(order.T, dim=1, stable=True)
    counts = [[int((order[:, k] == a).sum()) for a in range(4)] for k in range(4)]
    return perm, counts


def color_jitter(images: torch.Tensor, rows: torch.Tensor, perm: torch.Tensor, counts: list[list[int]]
                 ) -> torch.Tensor:
    """albumentations ``ColorJitter.apply`` for a batch: uint8 (B, 3, H, W), draws (B, 8), and the
    :func:`order_plan` -> uint8 (B, 3, H, W).

    Each sample runs its four adjustments in its own order. At each of the four steps the batch is gathered by
    the adjustment its samples run, each adjustment runs once on its slice, and the results are put back: every
    adjustment costs one pass over the batch in all, and nothing waits for the device (the plan's counts are
    host numbers).
    """
    x = images.int()
    rows = rows.to(x.device)
    for step in range(4):
        idx = perm[step].to(x.device)
        xs, rs = x.index_select(0, idx), rows.index_select(0, idx)
        parts, start = [], 0
        for adjustment, n in enumerate(counts[step]):
            if n:
                parts.append(ADJUSTMENTS[adjustment](xs[start:start + n], rs[start:start + n, adjustment]))
                start += n
        x = torch.empty_like(x).index_copy_(0, idx, torch.cat(parts))
    return x.to(torch.uint8)
