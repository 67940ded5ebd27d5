"""retrain.lift_bn_inputs (posekit/prune/lift.py): a conv whose BN input has shrunk to the size of sqrt(eps) is
scaled back up, layer by layer, and nothing else changes."""

from __future__ import annotations

import math

import torch
from torch import nn

from posekit.model.bpnet import BpNetLite
from posekit.prune.lift import batch_sd, lift_bn_inputs

X = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _bn_input_sd(net: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """(C,) batch sd of the input of BatchNorm ``name`` in train mode."""
    seen = {}
    bn = dict(net.named_modules())[name]
    h = bn.register_forward_pre_hook(lambda _m, inp: seen.setdefault("z", inp[0].detach()))
    was = net.training
    net.train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        net(x)
    net.load_state_dict(state)  # the probe must not move running statistics
    net.train(was)
    h.remove()
    return batch_sd(seen["z"])


def _train_mode_outputs(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    state = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
    with torch.no_grad():
        heatmaps, pafs = net(x)
    net.load_state_dict(state)
    return torch.cat([heatmaps[-1].flatten(), pafs[-1].flatten()])


def test_lift_is_the_identity_where_bn_inputs_are_far_above_eps():
    torch.manual_seed(0)
    net = BpNetLite(stages=2, width=0.25)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    report = lift_bn_inputs(net, X, floor=3.0)
    assert report["channels"] > 0 and report["lifted_channels"] == 0
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_lift_undoes_a_kernel_shrink_that_batchnorm_cannot():
    torch.manual_seed(1)
    net = BpNetLite(stages=2, width=0.25)
    reference = _train_mode_outputs(net, X)
    # weight decay's end point: two consecutive backbone convs shrunk until their BN inputs vary far less than eps
    for name in ("backbone.block_2a.conv", "backbone.block_2b.conv"):
        dict(net.named_modules())[name].weight.data *= 1e-3
    bn = "backbone.block_2b.bn"
    eps = dict(net.named_modules())[bn].eps
    assert _bn_input_sd(net, bn, X).max() < 0.5 * math.sqrt(eps)
    shrunk = _train_mode_outputs(net, X)
    assert (shrunk - reference).abs().max() > 0.1 * reference.abs().max()  # eps now dominates: the net changed

    running = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    report = lift_bn_inputs(net, X, floor=100.0)
    assert report["layers"]["backbone.block_2a.bn"]["lifted"] == report["layers"]["backbone.block_2a.bn"]["channels"]
    assert report["layers"][bn]["lifted"] == report["layers"][bn]["channels"]
    # untouched layers stay as they were (at init every BN input varies by > 130 sqrt(eps) on these images)
    assert report["layers"]["backbone.block_1a.bn"]["lifted"] == 0

    # every lifted BN input now varies by floor * sqrt(eps) on the lifting images (the layers after it see the lift)
    sd = _bn_input_sd(net, bn, X)
    assert torch.allclose(sd, torch.full_like(sd, 100.0 * math.sqrt(eps)), rtol=1e-3)
    # and the network computes what it did before the shrink, up to eps / (floor^2 eps)
    lifted = _train_mode_outputs(net, X)
    assert (lifted - reference).abs().max() < 1e-3 * reference.abs().max()
    # the running statistics were scaled with the kernels, not updated by the lifting pass
    for key, value in net.state_dict().items():
        if key.startswith("backbone.block_1a") and key in running:
            assert torch.equal(value, running[key]), key
    assert not torch.equal(net.state_dict()[f"{bn}.running_var"], running[f"{bn}.running_var"])


def test_lift_leaves_a_constant_channel_alone():
    torch.manual_seed(2)
    net = BpNetLite(stages=2, width=0.25)
    conv = dict(net.named_modules())["backbone.block_2a.conv"]
    conv.weight.data[0] = 0  # a dead filter: nothing to lift, and no factor from dividing by zero
    report = lift_bn_inputs(net, X, floor=3.0)
    assert torch.all(conv.weight[0] == 0)
    assert all(math.isfinite(v["max_factor"]) for v in report["layers"].values())
