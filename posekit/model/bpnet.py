"""BpNetLite: TAO BodyPoseNet's default network (modified VGG19 backbone + fused PAF/heatmap stages).

Layout (TAO ``bpnet_lite_model.py``; see docs/architecture.md):

    x (N, 3, H, W), normalized x/256 - 0.5, RGB
    backbone: 11 x [3x3 conv (no bias) -> BN -> ReLU], stride-2 convs instead of pooling -> (N, 256, H/8, W/8)
    channel_reduction_conv: 3x3, 128, bias, ReLU                                         -> feat (N, 128, H/8, W/8)
    stage1: 3 x 3x3/128 -> {paf: 1x1/512 -> 1x1/2L, heat: 1x1/512 -> 1x1/(J+1)}
    stage t>=2: concat[feat, heat_{t-1}, paf_{t-1}] -> 5 x 7x7/128 -> {paf: 1x1/128 -> 1x1/2L, heat: ...}

With ``stages=3``, ``width=1`` and the 18-joint skeleton: 16,772,459 trainable parameters + 5,376 BN running
statistics = 16,777,835, TAO's (Keras) count.

``width`` scales every hidden channel count (rounded to a multiple of 8, at least 8) for small CPU presets;
output channel counts always follow the skeleton.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

# (name, out channels, stride) of TAO's modified VGG19 (use_pooling=False) backbone.
BACKBONE = (
    ("block_1a", 64, 1),
    ("block_1b", 64, 1),
    ("block_2a", 128, 2),
    ("block_2b", 128, 1),
    ("block_3a", 256, 2),
    ("block_3b", 256, 1),
    ("block_3c", 256, 1),
    ("block_3d", 256, 1),
    ("block_4a", 512, 2),
    ("block_4b", 512, 1),
    ("block_6a", 256, 1),  # TAO's "non-VGG" layer
)


HEAD_INITS = ("kaiming", "tao")


def scaled(channels: int, width: float) -> int:
    """Hidden channel count under a width multiplier: a multiple of 8, at least 8 (exact at width 1)."""
    if width == 1.0:
        return channels
    return max(8, int(round(channels * width / 8.0)) * 8)


def conv_bn_relu(cin: int, cout: int, stride: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
            bn=nn.BatchNorm2d(cout),
            relu=nn.ReLU(inplace=True),
        )
    )


def conv_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(cin, cout, k, padding=k // 2), relu=nn.ReLU(inplace=True)))


class Branch(nn.Module):
    """1x1 hidden conv + ReLU -> 1x1 linear output conv (``out`` is never pruned)."""

    def __init__(self, cin: int, hidden: int, cout: int):
        super().__init__()
        self.hidden = conv_relu(cin, hidden, 1)
        self.out = nn.Conv2d(hidden, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(x))


class Stage(nn.Module):
    """One prediction stage: ``n_convs`` k x k convs (+ BatchNorm if ``bn``), then a PAF branch and a heatmap
    branch."""

    def __init__(
        self, cin: int, width: int, k: int, n_convs: int, hidden: int, num_heatmaps: int, num_pafs: int,
        bn: bool = False,
    ):
        super().__init__()
        layers, c = [], cin
        for i in range(n_convs):
            layers.append((f"conv{i + 1}", conv_bn_relu(c, width, 1, k) if bn else conv_relu(c, width, k)))
            c = width
        self.trunk = nn.Sequential(OrderedDict(layers))
        self.paf = Branch(width, hidden, num_pafs)
        self.heat = Branch(width, hidden, num_heatmaps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.trunk(x)
        return self.heat(y), self.paf(y)


class BpNetLite(nn.Module):
    """TAO BodyPoseNet ``BpNetLiteModel``.

    Args:
        stages: initial stage + (stages - 1) refinement stages, in [2, 7] (TAO default 3).
        num_heatmaps: J + 1 (joints + background), from the skeleton.
        num_pafs: 2L, from the skeleton.
        width: hidden-channel multiplier (1.0 = TAO).
        refinement_bn: BatchNorm after each trunk conv of the refinement stages (posekit option, off = TAO). The
            five stacked 7x7 convs of a refinement stage have no normalisation in TAO's network.

    ``forward(x)`` with x (N, 3, H, W), H and W multiples of 8, returns ``(heatmaps, pafs)``: two lists of
    length ``stages`` with tensors (N, J+1, H/8, W/8) and (N, 2L, H/8, W/8); the last entries are the final
    prediction. The loss supervises every stage.
    """

    def __init__(
        self, stages: int = 3, num_heatmaps: int = 19, num_pafs: int = 38, width: float = 1.0,
        refinement_bn: bool = False,
    ):
        super().__init__()
        if not 2 <= stages <= 7:
            raise ValueError(f"model.stages={stages}: allowed values are 2..7")
        self.arch = {"stages": stages, "num_heatmaps": num_heatmaps, "num_pafs": num_pafs, "width": float(width)}
        if refinement_bn:  # only when on, so TAO-architecture checkpoints keep their arch record
            self.arch["refinement_bn"] = True
        blocks, c = [], 3
        for name, cout, stride in BACKBONE:
            cout = scaled(cout, width)
            blocks.append((name, conv_bn_relu(c, cout, stride)))
            c = cout
        self.backbone = nn.Sequential(OrderedDict(blocks))
        feat = scaled(128, width)
        self.channel_reduction = conv_relu(c, feat, 3)
        self.stages = nn.ModuleList(
            [Stage(feat, feat, 3, 3, scaled(512, width), num_heatmaps, num_pafs)]
            + [
                Stage(feat + num_heatmaps + num_pafs, feat, 7, 5, feat, num_heatmaps, num_pafs, bn=refinement_bn)
                for _ in range(stages - 1)
            ]
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Backbone: He init (we train from scratch; TAO loads ImageNet-style VGG weights that are not public).
        # Heads: N(0, 0.01) kernels and zero biases, as TAO's ``random_normal`` head initializer.
        for m in self.backbone.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.init_heads("tao")

    def init_heads(self, scheme: str = "tao") -> None:
        """(Re-)initialize the prediction heads: channel reduction and every stage (``train.head_init``).

        ``tao``: N(0, 0.01) kernels, zero biases (TAO's ``random_normal``). TAO pairs it with a pretrained
        backbone; from scratch, the ~10 stacked convs of a stage with std-0.01 kernels shrink signals and
        gradients by orders of magnitude and the heads learn very slowly.
        ``kaiming``: He (fan-in, ReLU) normal for every hidden head conv, so activations keep their scale through
        the stages; the output convs keep N(0, 0.01) so the first predictions are near zero. Biases zero.
        """
        if scheme not in HEAD_INITS:
            raise ValueError(f"train.head_init={scheme!r}: allowed values are {list(HEAD_INITS)}")
        outputs = {id(m) for m in self.output_convs()}
        for block in [self.channel_reduction, *self.stages]:
            for m in block.modules():
                if not isinstance(m, nn.Conv2d):
                    continue
                if scheme == "kaiming" and id(m) not in outputs:
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                else:
                    nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        feat = self.channel_reduction(self.backbone(x))
        heat, paf = self.stages[0](feat)
        heats, pafs = [heat], [paf]
        for stage in self.stages[1:]:
            heat, paf = stage(torch.cat([feat, heat, paf], dim=1))
            heats.append(heat)
            pafs.append(paf)
        return heats, pafs

    def output_convs(self) -> list[nn.Conv2d]:
        """The heatmap/PAF output convs of every stage (their channels are semantic: never pruned)."""
        return [m for s in self.stages for m in (s.heat.out, s.paf.out)]


class FinalStage(nn.Module):
    """Inference/export view of a network: ``x -> (heatmaps, pafs)`` of the final stage only."""

    def __init__(self, net: BpNetLite):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        heats, pafs = self.net(x)
        return heats[-1], pafs[-1]


def build_model(arch: Mapping[str, Any]) -> BpNetLite:
    """Build from a plain ``arch`` mapping (``BpNetLite.arch``, or ``cfg.model`` plus skeleton channel counts)."""
    return BpNetLite(
        stages=int(arch["stages"]),
        num_heatmaps=int(arch["num_heatmaps"]),
        num_pafs=int(arch["num_pafs"]),
        width=float(arch.get("width", 1.0)),
        refinement_bn=bool(arch.get("refinement_bn", False)),
    )


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Trainable parameters and the Keras/TAO count (which adds BN running mean and variance)."""
    trainable = sum(p.numel() for p in model.parameters())
    running = sum(
        m.running_mean.numel() + m.running_var.numel()
        for m in model.modules()
        if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None
    )
    return {"trainable": trainable, "bn_running_stats": running, "keras_count": trainable + running}
