"""Data-free compensation for pruned channels (``prune.compensate``, posekit's addition; TAO has none).

A pruned channel does not output zero before it goes: after its BatchNorm (or bias) and ReLU it emits a roughly
constant value, and the next layer has learned with it. Cutting the channel removes that constant from every
consumer. Here the constant is estimated without data and folded into what follows each consumer, so the network
right after pruning computes nearly what it did before (exactly, away from the zero-padded borders, for a channel
that BN had switched off: gamma = 0, the case ``optim.l1_bn_gamma`` produces).

Estimate of channel c's output once its filter is gone, per producer kind:

    conv -> BN -> ReLU     E[ReLU(N(beta_c, gamma_c^2))] = beta Phi(beta/|gamma|) + |gamma| phi(beta/|gamma|)
                           (BN's output is distributed as N(beta, gamma^2) on the data its statistics came from)
    conv (+ bias) -> ReLU  ReLU(bias_c)  (exact for a zero kernel, the filter TAO's L1 drives out)

Folded, for a consumer conv W (C_out', C_in, kh, kw) reading channel c at input index i:
``t = sum_{kh,kw} W[:, i] * r_c`` is added to the consumer's bias, or subtracted from the running mean of the
BatchNorm right after a bias-free consumer. Consumers of any other kind are left alone (with a warning).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

from posekit.prune.history import following_bn

log = logging.getLogger("posekit")


def _is_relu(node: Any) -> bool:
    return "relu" in str(getattr(node, "name", "")).lower() or isinstance(getattr(node, "module", None), nn.ReLU)


def removed_channel_output(graph: Any, conv: nn.Conv2d) -> torch.Tensor | None:
    """(C_out,) float64 estimate of what each output channel of ``conv`` emits after its BN and ReLU, or None when
    ``conv`` is not followed by (BN and) ReLU alone (then no estimate is made)."""
    bn = following_bn(graph, conv)
    node = graph.module2node.get(bn if bn is not None else conv)
    after = [] if node is None else node.outputs
    if len(after) != 1 or not _is_relu(after[0]):
        return None
    if bn is not None:
        mean = bn.bias.detach().double() if bn.bias is not None else torch.zeros(bn.num_features, dtype=torch.float64)
        std = bn.weight.detach().double().abs() if bn.weight is not None else torch.ones_like(mean)
        z = mean / std.clamp_min(1e-12)
        cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
        pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        return torch.where(std > 1e-12, mean * cdf + std * pdf, mean.clamp_min(0))
    if conv.bias is None:
        return torch.zeros(conv.out_channels, dtype=torch.float64)
    return conv.bias.detach().double().clamp_min(0)


def fold_into_consumers(graph: Any, group: Any, constants: torch.Tensor) -> None:
    """Before ``group.prune()``: add what the group's pruned channels (root indices, values ``constants[root_idx]``)
    fed each consumer conv to that conv's bias, or to the running mean of its BatchNorm."""
    for item in group:
        conv = item.dep.target.module
        if not (isinstance(conv, nn.Conv2d) and graph.is_in_channel_pruning_fn(item.dep.handler)):
            continue
        bn = None if conv.bias is not None else following_bn(graph, conv)
        if conv.groups != 1 or (conv.bias is None and (bn is None or bn.running_mean is None)):
            log.warning("prune.compensate: %s is left as is (grouped, or no bias and no BatchNorm after it)", conv)
            continue
        idxs = torch.as_tensor(item.idxs, dtype=torch.long)
        r = constants[torch.as_tensor(item.root_idxs, dtype=torch.long)].to(conv.weight.dtype)
        with torch.no_grad():
            t = conv.weight[:, idxs].sum(dim=(2, 3)) @ r  # (C_out',)
            if conv.bias is not None:
                conv.bias += t
            else:
                bn.running_mean -= t  # BN(z - t) with mean - t == BN(z) with mean
