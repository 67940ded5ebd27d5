"""What pruning did: channels, parameters and conv MACs per layer, before and after, as a dict and a table.

Operation count: multiply-accumulates of every ``nn.Conv2d`` at the configured input resolution, batch 1
(``out_h * out_w * out_c * in_c / groups * kh * kw``). BN, ReLU, bias adds and concats are not counted; they are
well under 1 % of BpNetLite's work. FLOPs = 2 * MACs. Output sizes come from a forward pass on the ``meta``
device, so counting costs no compute even at 288x384.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from posekit.model.bpnet import count_parameters
from posekit.table import Column, text_table

OPS_NOTE = "conv multiply-accumulates at input_hw, batch 1 (BN/ReLU/bias/concat not counted); FLOPs = 2 x MACs"


@dataclass(frozen=True)
class ConvLayer:
    """One ``nn.Conv2d``: channel counts, its parameters (kernel + bias) and MACs at the report resolution."""

    name: str
    kernel: str  # "3x3"
    in_channels: int
    out_channels: int
    params: int
    macs: int


def conv_layers(model: nn.Module, input_hw: Sequence[int]) -> dict[str, ConvLayer]:
    """Every conv of ``model`` (by ``named_modules`` name, in forward order) with its MACs for a
    ``(1, 3, H, W)`` input."""
    shadow = copy.deepcopy(model).to("meta")
    names = {m: n for n, m in shadow.named_modules()}
    layers: dict[str, ConvLayer] = {}

    def record(conv: nn.Conv2d, _inputs: Any, out: torch.Tensor) -> None:
        kh, kw = conv.kernel_size
        params = conv.weight.numel() + (conv.bias.numel() if conv.bias is not None else 0)
        macs = out.shape[-2] * out.shape[-1] * conv.out_channels * (conv.in_channels // conv.groups) * kh * kw
        layers[names[conv]] = ConvLayer(names[conv], f"{kh}x{kw}", conv.in_channels, conv.out_channels, params, macs)

    hooks = [m.register_forward_hook(record) for m in shadow.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            shadow(torch.empty(1, 3, *input_hw, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return layers


def _change(before: float, after: float) -> dict[str, float]:
    return {"before": before, "after": after, "ratio": after / before if before else 1.0}


def pruning_report(
    model_before: nn.Module,
    model_after: nn.Module,
    input_hw: Sequence[int],
    notes: Mapping[str, str] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Compare two versions of a network (same module names) at ``input_hw``.

    Returns ``{"input_hw", "ops", "settings", "layers": [per-conv row], "totals": {params, keras_params, macs,
    flops: {before, after, ratio}}}``. A row has ``name, kernel, in/out/params/macs _before/_after, note``;
    ``notes`` maps a conv name to why it was not pruned (output head, excluded, coupled to an excluded layer).
    """
    before, after = conv_layers(model_before, input_hw), conv_layers(model_after, input_hw)
    notes = notes or {}
    rows = []
    for name, b in before.items():
        a = after[name]
        rows.append(
            {
                "name": name,
                "kernel": b.kernel,
                "in_before": b.in_channels,
                "in_after": a.in_channels,
                "out_before": b.out_channels,
                "out_after": a.out_channels,
                "params_before": b.params,
                "params_after": a.params,
                "macs_before": b.macs,
                "macs_after": a.macs,
                "note": notes.get(name, "pruned" if a.out_channels < b.out_channels else ""),
            }
        )
    pb, pa = count_parameters(model_before), count_parameters(model_after)
    macs_b, macs_a = sum(c.macs for c in before.values()), sum(c.macs for c in after.values())
    return {
        "input_hw": [int(v) for v in input_hw],
        "ops": OPS_NOTE,
        "settings": dict(settings or {}),
        "layers": rows,
        "totals": {
            "params": _change(pb["trainable"], pa["trainable"]),
            "keras_params": _change(pb["keras_count"], pa["keras_count"]),
            "macs": _change(macs_b, macs_a),
            "flops": _change(2 * macs_b, 2 * macs_a),
        },
    }


LAYER_COLUMNS = [Column("name", "layer"), Column("kernel", "k", numeric=True), Column("in", "in"),
                 Column("out", "out"), Column("params", "params", numeric=True), Column("macs", "MMACs", numeric=True),
                 Column("note", "note", str)]


def format_table(report: Mapping[str, Any]) -> str:
    """The report as a fixed-width text table (one row per conv, then the totals)."""
    cells = [{
        "name": r["name"], "kernel": r["kernel"], "in": f"{r['in_before']}->{r['in_after']}",
        "out": f"{r['out_before']}->{r['out_after']}", "params": f"{r['params_before']:,}->{r['params_after']:,}",
        "macs": f"{r['macs_before'] / 1e6:.1f}->{r['macs_after'] / 1e6:.1f}", "note": r["note"],
    } for r in report["layers"]]
    table = text_table(cells, LAYER_COLUMNS, sep="  ")
    head, *body = table.splitlines()
    rule = "-" * len(head)
    lines = [head, rule, *body]
    t = report["totals"]
    h, wd = report["input_hw"]
    lines += [
        rule,
        f"parameters (trainable): {t['params']['before']:,} -> {t['params']['after']:,} "
        f"({100 * t['params']['ratio']:.1f} %)",
        f"parameters (Keras/TAO count, + BN running stats): {t['keras_params']['before']:,} -> "
        f"{t['keras_params']['after']:,} ({100 * t['keras_params']['ratio']:.1f} %)",
        f"GFLOPs at {h}x{wd} (2 x conv MACs): {t['flops']['before'] / 1e9:.2f} -> {t['flops']['after'] / 1e9:.2f} "
        f"({100 * t['flops']['ratio']:.1f} %)",
    ]
    return "\n".join(lines)


__all__ = ["ConvLayer", "OPS_NOTE", "conv_layers", "format_table", "pruning_report"]
