"""Lift the inputs of BatchNorm layers whose batch spread has fallen to the size of ``sqrt(eps)``
(``retrain.lift_bn_inputs``, posekit's addition; TAO has none).

Why: a conv followed by BatchNorm is scale-invariant, so weight decay shrinks its kernel for free until the BN's
input varies by about ``sqrt(eps)``. Only there does eps start to push back. That is where a trained network's
backbone sits (docs/pruning.md). Threshold pruning then removes most of a conv's inputs. Its output variance drops
below ``eps``, and the BN in train mode computes ``(z - mean) / sqrt(var + eps)``, which is far from unit variance.
That is ``sd / sqrt(eps)`` of the signal it should pass. A negative ``beta`` then holds the ReLU at zero on every
pixel. Layer by layer the signal vanishes, no gradient reaches the backbone, and retraining stays on the
all-background plateau.

The fix is to scale each such conv's output channel ``k`` by ``c_k >= 1``, so that the BN's batch input sd is at
least ``floor * sqrt(eps)``. The scale goes into the kernel (and bias), with ``running_mean * c`` and
``running_var * c^2`` to match. For a channel already far above eps this is the identity (``c = 1``). For the others
the BN computes what it would with ``eps / c^2`` in place of eps. One forward pass in train mode on real images applies it layer by
layer in network order, so each BN sees the lifted output of the layers before it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def batch_sd(z: torch.Tensor) -> torch.Tensor:
    """z (N, C, H, W) -> (C,) float64: each channel's standard deviation over the batch and the pixels, the spread a
    BatchNorm in train mode divides by (with eps)."""
    return z.detach().double().var(dim=(0, 2, 3), unbiased=False).sqrt()


@torch.no_grad()
def lift_bn_inputs(net: nn.Module, images: torch.Tensor, floor: float = 3.0, max_factor: float = 1e4) -> dict[str, Any]:
    """Scale every conv that feeds a BatchNorm so that, on ``images`` (N, 3, H, W) in train mode, each BN input
    channel has a batch sd of at least ``floor * sqrt(eps)``; in place.

    Only a conv whose output goes straight into the BN and nowhere else (``conv -> bn``, BpNetLite's layout in
    the backbone and, with ``model.refinement_bn``, the refinement stages) is touched; a channel whose input is constant (sd 0: nothing to lift) is left alone, and no factor
    exceeds ``max_factor``. The BN running statistics are left as they were before the pass, scaled by ``c`` and
    ``c^2``, so eval mode sees the same lift.

    Returns ``{"layers": {bn name: {"channels", "lifted", "median_factor", "max_factor"}}, "lifted_channels",
    "channels"}``.
    """
    if floor <= 0:
        raise ValueError(f"floor must be > 0, got {floor}")
    was_training = net.training
    net.train()
    last: list = [None, None]  # the latest conv and its output: a BN fed straight by a conv gets that very tensor
    saved: dict[nn.BatchNorm2d, tuple[torch.Tensor, ...]] = {}  # running statistics before the pass
    factors: dict[str, tuple[nn.BatchNorm2d, nn.Conv2d, torch.Tensor]] = {}
    handles = []

    def conv_hook(mod: nn.Conv2d, _inp, out: torch.Tensor) -> None:
        last[0], last[1] = mod, out

    def bn_pre_hook(name: str):
        def fn(mod: nn.BatchNorm2d, inp: tuple[torch.Tensor, ...]):
            z = inp[0]
            conv = last[0]
            if z is not last[1] or conv.out_channels != mod.num_features:
                return None
            sd = batch_sd(z)
            target = floor * math.sqrt(mod.eps)
            live = sd > 1e-6 * math.sqrt(mod.eps)
            c = torch.where(live, (target / sd.clamp_min(1e-300)).clamp(1.0, max_factor), torch.ones_like(sd))
            factors[name] = (mod, conv, c)
            return (z * c.to(z.dtype).view(1, -1, 1, 1),)
        return fn

    for name, mod in net.named_modules():
        if isinstance(mod, nn.Conv2d):
            handles.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, nn.BatchNorm2d) and mod.track_running_stats:
            saved[mod] = (mod.running_mean.clone(), mod.running_var.clone(), mod.num_batches_tracked.clone())
            handles.append(mod.register_forward_pre_hook(bn_pre_hook(name)))
    try:
        net(images)
    finally:
        last[0] = last[1] = None
        for h in handles:
            h.remove()
        for mod, (mean, var, count) in saved.items():  # the pass must not move the running statistics
            mod.running_mean.copy_(mean)
            mod.running_var.copy_(var)
            mod.num_batches_tracked.copy_(count)
        net.train(was_training)

    layers: dict[str, dict[str, Any]] = {}
    for name, (bn, conv, c) in factors.items():
        w = c.to(conv.weight.dtype)
        conv.weight.mul_(w.view(-1, *([1] * (conv.weight.dim() - 1))))
        if conv.bias is not None:
            conv.bias.mul_(w)
        bn.running_mean.mul_(c.to(bn.running_mean.dtype))
        bn.running_var.mul_(c.square().to(bn.running_var.dtype))
        lifted = c > 1
        layers[name] = {
            "channels": int(c.numel()),
            "lifted": int(lifted.sum()),
            "median_factor": float(c.median()),
            "max_factor": float(c.max()),
        }
    return {
        "layers": layers,
        "lifted_channels": sum(v["lifted"] for v in layers.values()),
        "channels": sum(v["channels"] for v in layers.values()),
    }
