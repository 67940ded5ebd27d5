"""Which ReLU channels of a model are dead on real inputs: the probe for "a pruned model does not retrain".

    python -m benchmarks.dead_channels MODEL.pt [MODEL.pt ...] --images 'DIR/*.jpg' [--n 32] [--hw 128 128] [--lift 3]

For each model file (posekit ``.pt``: trained, pruned or retrained) it runs ``--n`` images through the network twice:
in eval mode (BatchNorm with its running statistics, as inference and the pruning decision see it) and in train mode
(BatchNorm with the batch's statistics, as the first retrain steps see it). Every ReLU output is hooked, and per
layer it prints the channel count, the share of channels that are zero on every pixel of every image (a dead
channel passes no signal forward and no gradient back), and the output RMS. The last two lines give the RMS of the
final heatmaps and PAFs. A layer whose channels are all dead cuts the network in two: everything after it sees a
constant, everything before it gets no gradient, and training stays on the all-background plateau.

For the BatchNorm before each ReLU, the train-mode pass also gives the batch standard deviation of the BN's input
per channel, against sqrt(eps): ``bn sd/sqrt(eps)`` is its median over the channels, and ``sd<sqrt(eps)`` the share
of channels below it. Where a channel's input varies less than sqrt(eps), BatchNorm no longer rescales it to unit
variance: it passes ``gamma * sd / sqrt(eps)`` of signal, and a negative ``beta`` then holds the ReLU at zero.

``--lift F`` probes each model a second time after ``retrain.lift_bn_inputs=F`` (posekit/prune/lift.py) on the
first 16 of the same images: what the first retrain step would see with the lift on.
"""

from __future__ import annotations

import argparse
import copy
import glob
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from posekit.data.images import read_image_rgb
from posekit.model.io import load_model
from posekit.prune.lift import batch_sd, lift_bn_inputs
from posekit.runtime.preprocess import preprocess


def relu_stats(net: nn.Module, x: torch.Tensor, train_mode: bool) -> tuple[dict[str, tuple], list]:
    """x (N, 3, H, W) -> {relu module name: (channels, dead share, rms, bn sd/sqrt(eps) median, share below 1)},
    and the final (heatmaps, PAFs) RMS. The two BN columns are NaN for a ReLU without a BatchNorm before it."""
    net = copy.deepcopy(net)
    net.train(train_mode)
    stats: dict[str, tuple] = {}
    bn_sd: dict[str, tuple[float, float]] = {}

    def hook(name: str):
        def fn(_mod: nn.Module, _inp, out: torch.Tensor) -> None:
            o = out.detach().float()
            dead = (o.amax(dim=(0, 2, 3)) <= 0).float().mean().item()
            stats[name] = (o.shape[1], dead, o.pow(2).mean().sqrt().item())
        return fn

    def bn_hook(name: str):
        def fn(mod: nn.BatchNorm2d, inp, _out) -> None:
            ratio = batch_sd(inp[0]) / math.sqrt(mod.eps)  # (C,)
            bn_sd[name] = (ratio.median().item(), (ratio < 1).double().mean().item())
        return fn

    bn_before: dict[str, str] = {}  # relu name -> the BatchNorm right before it (BpNetLite: <block>.bn, <block>.relu)
    previous_bn = None
    for name, mod in net.named_modules():
        if isinstance(mod, nn.BatchNorm2d):
            previous_bn = name
            if train_mode:  # the batch's spread is what train mode normalizes by; eval mode uses the running var
                mod.register_forward_hook(bn_hook(name))
        elif isinstance(mod, nn.ReLU):
            mod.inplace = False  # the hook must see the ReLU's own output
            mod.register_forward_hook(hook(name))
            if previous_bn is not None and previous_bn.rsplit(".", 1)[0] == name.rsplit(".", 1)[0]:
                bn_before[name] = previous_bn
    with torch.no_grad():
        out = net(x)
    nan = (float("nan"), float("nan"))
    stats = {name: (*row, *bn_sd.get(bn_before.get(name, ""), nan)) for name, row in stats.items()}
    finals = out[-1] if isinstance(out, (list, tuple)) and isinstance(out[-1], (list, tuple)) else out
    return stats, [float(t.float().pow(2).mean().sqrt()) for t in finals]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--images", required=True, help="a glob of image files (e.g. the synthetic val images)")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--hw", type=int, nargs=2, default=None, help="network input; default: the model's own")
    ap.add_argument("--lift", type=float, default=0.0, help="also probe after retrain.lift_bn_inputs=F; 0: no")
    args = ap.parse_args()

    files = sorted(glob.glob(args.images))[: args.n]
    if not files:
        raise SystemExit(f"no images match {args.images}")
    for path in args.models:
        net, info = load_model(path)
        shape = args.hw or (info.get("meta") or {}).get("input_shape")
        if not shape:
            raise SystemExit(f"{path} does not record its input shape: pass --hw H W (the training resolution)")
        hw = tuple(int(v) for v in shape[-2:])
        x = torch.from_numpy(np.concatenate([preprocess(read_image_rgb(f), hw).batch for f in files]))
        params = sum(p.numel() for p in net.parameters())
        print(f"\n== {Path(path)}  ({params:,} parameters, {len(files)} images at {hw[0]}x{hw[1]})")
        probe(net, x)
        if args.lift > 0:
            lift = lift_bn_inputs(net, x[:16], floor=args.lift)
            print(f"\n== the same after retrain.lift_bn_inputs={args.lift:g} on {min(16, len(x))} of the images: "
                  f"{lift['lifted_channels']} of {lift['channels']} BN input channels lifted")
            probe(net, x)


def probe(net: nn.Module, x: torch.Tensor) -> None:
    """Print the per-layer table of :func:`relu_stats` in eval and train mode."""
    ev, ev_out = relu_stats(net, x, train_mode=False)
    tr, tr_out = relu_stats(net, x, train_mode=True)
    print(f"{'layer':40s} {'ch':>5s} {'dead eval':>10s} {'dead train':>11s} {'rms eval':>9s} {'rms train':>10s} "
          f"{'bn sd/sqrt(eps)':>16s} {'sd<sqrt(eps)':>13s}")
    for name, (c, dead, rms, *_) in ev.items():
        _, dead_t, rms_t, sd_ratio, below = tr[name]
        bn_cols = f"{'-':>16s} {'-':>13s}" if math.isnan(sd_ratio) else f"{sd_ratio:16.3g} {below:13.1%}"
        print(f"{name:40s} {c:5d} {dead:10.1%} {dead_t:11.1%} {rms:9.3g} {rms_t:10.3g} {bn_cols}")
    print(f"{'final heatmaps / PAFs rms':40s} eval {ev_out[0]:.3g} / {ev_out[1]:.3g}   train {tr_out[0]:.3g} / "
          f"{tr_out[1]:.3g}")


if __name__ == "__main__":
    main()
