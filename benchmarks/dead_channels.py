"""Which ReLU channels of a model are dead on real inputs: the probe for "a pruned model does not retrain".

    python -m benchmarks.dead_channels MODEL.pt [MODEL.pt ...] --images 'DIR/*.jpg' [--n 32] [--hw 128 128]

For each model file (posekit ``.pt``: trained, pruned or retrained) it runs ``--n`` images through the network twice:
in eval mode (BatchNorm with its running statistics, as inference and the pruning decision see it) and in train mode
(BatchNorm with the batch's statistics, as the first retrain steps see it). Every ReLU output is hooked, and per
layer it prints the channel count, the share of channels that are zero on every pixel of every image (a dead
channel passes no signal forward and no gradient back), and the output RMS. The last two lines give the RMS of the
final heatmaps and PAFs. A layer whose channels are all dead cuts the network in two: everything after it sees a
constant, everything before it gets no gradient, and training stays on the all-background plateau.
"""

from __future__ import annotations

import argparse
import copy
import glob
from pathlib import Path

import numpy as np
import torch
from torch import nn

from posekit.data.images import read_image_rgb
from posekit.model.io import load_model
from posekit.runtime.preprocess import preprocess


def relu_stats(net: nn.Module, x: torch.Tensor, train_mode: bool) -> tuple[dict[str, tuple[int, float, float]], list]:
    """x (N, 3, H, W) -> {relu module name: (channels, dead share, rms)}, and the final (heatmaps, PAFs) RMS."""
    net = copy.deepcopy(net)
    net.train(train_mode)
    stats: dict[str, tuple[int, float, float]] = {}

    def hook(name: str):
        def fn(_mod: nn.Module, _inp, out: torch.Tensor) -> None:
            o = out.detach().float()
            dead = (o.amax(dim=(0, 2, 3)) <= 0).float().mean().item()
            stats[name] = (o.shape[1], dead, o.pow(2).mean().sqrt().item())
        return fn

    for name, mod in net.named_modules():
        if isinstance(mod, nn.ReLU):
            mod.inplace = False  # the hook must see the ReLU's own output
            mod.register_forward_hook(hook(name))
    with torch.no_grad():
        out = net(x)
    finals = out[-1] if isinstance(out, (list, tuple)) and isinstance(out[-1], (list, tuple)) else out
    return stats, [float(t.float().pow(2).mean().sqrt()) for t in finals]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--images", required=True, help="a glob of image files (e.g. the synthetic val images)")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--hw", type=int, nargs=2, default=None, help="network input; default: the model's own")
    args = ap.parse_args()

    files = sorted(glob.glob(args.images))[: args.n]
    if not files:
        raise SystemExit(f"no images match {args.images}")
    for path in args.models:
        net, meta = load_model(path)
        hw = tuple(args.hw or meta.get("input_shape", [3, 128, 128])[-2:])
        x = torch.from_numpy(np.concatenate([preprocess(read_image_rgb(f), hw).batch for f in files]))
        params = sum(p.numel() for p in net.parameters())
        print(f"\n== {Path(path)}  ({params:,} parameters, {len(files)} images at {hw[0]}x{hw[1]})")
        ev, ev_out = relu_stats(net, x, train_mode=False)
        tr, tr_out = relu_stats(net, x, train_mode=True)
        print(f"{'layer':40s} {'ch':>5s} {'dead eval':>10s} {'dead train':>11s} {'rms eval':>9s} {'rms train':>10s}")
        for name, (c, dead, rms) in ev.items():
            print(f"{name:40s} {c:5d} {dead:10.1%} {tr[name][1]:11.1%} {rms:9.3g} {tr[name][2]:10.3g}")
        print(f"{'final heatmaps / PAFs rms':40s} eval {ev_out[0]:.3g} / {ev_out[1]:.3g}   train {tr_out[0]:.3g} / "
              f"{tr_out[1]:.3g}")


if __name__ == "__main__":
    main()
