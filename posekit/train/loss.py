"""Training loss: TAO BodyPoseNet's masked L2 over every stage, plus optional L1 kernel regularization.

TAO (``losses/bpnet_loss.py``, ``trainers/bpnet_trainer.py``)::

    L = (1/B) * sum_s [ l2(M * (H_s - H)) + l2(M * (P_s - P)) ]  +  lambda * sum_conv |W|
    l2(x) = 1/2 * sum(x^2)      (over batch, channels, rows, columns)

We keep that scale (sum over cells and channels, one half, divided by the batch size) for both optimizer
recipes: it is the scale TAO's SGD learning rate (2e-5) and its L1 factor (5e-4) were tuned for, and AdamW is
invariant to a constant loss scale (its update divides the gradient by its own running RMS; only ``eps``
notices), so the same loss serves AdamW unchanged. The loss of one image therefore grows with the output
grid (h*w) -- compare runs at the same resolution, or use the per-cell mean that is also logged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn


def masked_l2(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """TAO's ``l2(M * (pred - target))`` summed over everything, divided by the batch size.

    Args:
        pred, target: (B, C, h, w).
        mask: (B, 1, h, w) in [0, 1]; 0 where unlabeled people or crowds make the target unreliable. It
            multiplies the difference before squaring, as TAO does (so a soft mask value m weighs by m^2).
    Returns:
        scalar: ``0.5 * sum((mask * (pred - target))^2) / B`` in float32 (safe under bf16 autocast).
    """
    diff = (pred.float() - target.float()) * mask.float()
    return 0.5 * diff.pow(2).sum() / pred.shape[0]


def pose_loss(
    heatmaps: Sequence[torch.Tensor],
    pafs: Sequence[torch.Tensor],
    target_heatmaps: torch.Tensor,
    target_pafs: torch.Tensor,
    mask: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Masked L2 summed over every stage's heatmaps and PAFs (intermediate supervision, as TAO/OpenPose).

    Args:
        heatmaps: per stage (B, J+1, h, w); pafs: per stage (B, 2L, h, w) -- ``BpNetLite``'s outputs.
        target_heatmaps: (B, J+1, h, w); target_pafs: (B, 2L, h, w); mask: (B, 1, h, w).
    Returns:
        ``(total, parts)``: the scalar loss and its detached terms ``stage{k}/heat``, ``stage{k}/paf``
        (k from 1) for logging.
    """
    if len(heatmaps) != len(pafs):
        raise ValueError(f"got {len(heatmaps)} heatmap stages but {len(pafs)} PAF stages")
    total = heatmaps[0].new_zeros((), dtype=torch.float32)
    parts: dict[str, torch.Tensor] = {}
    for k, (h, p) in enumerate(zip(heatmaps, pafs), start=1):
        lh = masked_l2(h, target_heatmaps, mask)
        lp = masked_l2(p, target_pafs, mask)
        parts[f"stage{k}/heat"] = lh.detach()
        parts[f"stage{k}/paf"] = lp.detach()
        total = total + lh + lp
    return total, parts


def conv_kernels(net: nn.Module, scope: str = "all") -> list[torch.Tensor]:
    """The Conv2d kernels of ``net`` that ``optim.l1_kernel_reg`` regularizes.

    ``scope="all"``: every one (TAO: backbone and output convs alike). ``"unnormalized"``: only the kernels whose
    output does not go straight into a BatchNorm (:func:`normalized_convs`). Why: BatchNorm makes such a kernel
    scale-invariant, so L1 cannot switch its filters off (the BN scale decides that, under ``optim.l1_bn_gamma``);
    it can only shrink the kernel, and under Adam the kernels of the channels the BN has switched off (whose loss
    gradient scales with gamma ~ 0) shrink toward zero at a growing rate (measured: docs/training.md, "The kernels
    of switched-off channels collapse").
    """
    if scope not in ("all", "unnormalized"):
        raise ValueError(f"unknown kernel L1 scope {scope!r}: use 'all' or 'unnormalized'")
    skip = {id(c) for c in normalized_convs(net)} if scope == "unnormalized" else set()
    return [m.weight for m in net.modules() if isinstance(m, nn.Conv2d) and id(m) not in skip]


def normalized_convs(net: nn.Module) -> list[nn.Conv2d]:
    """The Conv2d layers of ``net`` whose next sibling module is a BatchNorm (``conv_bn_relu``'s pattern: the conv
    feeds that BN alone)."""
    found = []
    for parent in net.modules():
        kids = list(parent.children())
        found += [a for a, b in zip(kids, kids[1:])
                  if isinstance(a, nn.Conv2d) and isinstance(b, nn.modules.batchnorm._BatchNorm)]
    return found


def bn_scales(net: nn.Module) -> list[torch.Tensor]:
    """Every BatchNorm scale (gamma, (C,)) of ``net``: what ``optim.l1_bn_gamma`` regularizes.

    Why (posekit's addition to TAO's recipe): a conv followed by BN is scale-invariant, so TAO's kernel L1 only
    shrinks all of a layer's filters together and their norms, relative to the layer's max, settle in proportion to
    each filter's usefulness instead of collapsing; threshold pruning then finds few filters to remove in the
    backbone. L1 on gamma (Liu et al., "Network Slimming", ICCV 2017) switches whole channels off. Their kernels
    then get no gradient from the loss and shrink under the kernel L1, but slowly: after a 7-minute H200 run TAO's
    kernel-norm criterion still kept 89% of the backbone's filters, the BN-folded one (``prune.fold_bn``) 18%.
    """
    return [m.weight for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]


def l1_penalty(kernels: Iterable[torch.Tensor]) -> torch.Tensor:
    """``sum_k sum |W_k|`` over the given tensors (conv kernels, BN scales), without gradient (for logging: the
    training applies the term through :func:`add_l1_subgradient`); multiply by the factor yourself."""
    kernels = [w.detach() for w in kernels]
    if not kernels:
        return torch.zeros(())
    with torch.no_grad():
        return torch.stack(torch._foreach_norm(kernels, 1)).sum()


@torch.no_grad()
def add_l1_subgradient(params: Iterable[torch.Tensor], factor: float) -> None:
    """``grad += factor * sign(W)`` for each tensor that has a gradient: the (sub)gradient of
    ``factor * sum|W|``, exactly what autograd gives for that term (``sign(0) = 0``)."""
    params = [p for p in params if p.grad is not None]
    if params and factor != 0:
        torch._foreach_add_([p.grad for p in params], torch._foreach_sign(params), alpha=factor)
