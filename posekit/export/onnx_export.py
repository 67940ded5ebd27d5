"""torch -> ONNX for the final stage of a BpNetLite, and the ONNX Runtime vs torch parity check.

The exported graph::

    input     float32 (N, 3, H, W)  [channels_first, default]  or (N, H, W, 3) [channels_last: TAO's input_1:0]
              RGB, normalized x/256 - 0.5 (DeepStream: net-scale-factor=1/256, offsets=128;128;128)
    heatmaps  float32 (N, J+1, H/8, W/8)   final stage, background channel last   (TAO: heatmap_out/BiasAdd:0)
    pafs      float32 (N, 2L, H/8, W/8)    final stage, limb k = channels 2k (x), 2k+1 (y)   (TAO: paf_out/BiasAdd:0)

TAO's ONNX is NHWC throughout (Keras channels_last); posekit's outputs are always NCHW, and only the input layout
is selectable (``export.data_format``): a channels_last export starts with one Transpose node.

The exporter is torch's ``torch.export``-based one (the TorchScript exporter is deprecated since torch 2.9).
Intermediate tensors are renamed after the module that produced them (``backbone.block_1a.relu``), so the
TensorRT calibration cache and the Q/DQ graph are readable; BatchNorm is folded into the convolutions.
"""

from __future__ import annotations

import ast
import contextlib
import io as _io
import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from posekit import io
from posekit.errors import UserError

log = logging.getLogger(__name__)

OUTPUT_NAMES = ("heatmaps", "pafs")
DATA_FORMATS = ("channels_first", "channels_last")  # export.data_format, checked by posekit.config.validate
NORMALIZATION = "RGB, x/256 - 0.5"


class ParityError(UserError, RuntimeError):
    """ONNX Runtime's outputs differ from torch's beyond the tolerance (the message carries the numbers)."""


class ChannelsLastInput(nn.Module):
    """Takes TAO's NHWC layout ``(N, H, W, 3)`` and feeds the wrapped NCHW network (one Transpose in the graph)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(x.permute(0, 3, 1, 2))


def input_shape(input_hw: tuple[int, int], data_format: str, batch: int = 1) -> list[int]:
    h, w = (int(v) for v in input_hw)
    return [batch, 3, h, w] if data_format == "channels_first" else [batch, h, w, 3]


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_hw: tuple[int, int],
    *,
    data_format: str = "channels_first",
    opset: int = 18,
    dynamic_batch: bool = False,
    input_name: str = "input",
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Export ``model`` (``FinalStage``: NCHW x -> (heatmaps, pafs)) to ``path`` atomically; returns the path.

    The input has a fixed (H, W) and a fixed batch of 1 unless ``dynamic_batch`` (then a ``batch`` dim).
    ``metadata`` is stored in the model's ``metadata_props`` next to posekit's own keys (``posekit.*``).
    """
    module = (ChannelsLastInput(model) if data_format == "channels_last" else model).eval()
    # a dynamic batch is traced with batch 2: torch.export specializes dimensions of size 0 and 1
    example = torch.zeros(input_shape(input_hw, data_format, batch=2 if dynamic_batch else 1), dtype=torch.float32)
    dynamic = ({0: torch.export.Dim("batch", min=1, max=1024)},) if dynamic_batch else None
    with torch.no_grad(), _quiet():
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[input_name],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=dynamic,
            optimize=True,  # folds BatchNorm into Conv, removes no-op nodes
            verbose=False,
        )
    proto = program.model_proto
    _name_tensors_after_modules(proto)
    _set_metadata(
        proto,
        {
            "posekit.data_format": data_format,
            "posekit.normalization": NORMALIZATION,
            "posekit.input_hw": f"{int(input_hw[0])},{int(input_hw[1])}",
            "posekit.precision": "fp32",
            **(metadata or {}),
        },
    )
    onnx.checker.check_model(proto)
    return save_onnx(proto, path)


def save_onnx(proto: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Atomically write ``proto`` (a single file: posekit's models are far below protobuf's 2 GB limit)."""
    with io.atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp))
    return Path(path)


def read_metadata(path_or_proto: str | os.PathLike | onnx.ModelProto) -> dict[str, str]:
    proto = path_or_proto if isinstance(path_or_proto, onnx.ModelProto) else onnx.load(str(path_or_proto))
    return {p.key: p.value for p in proto.metadata_props}


def _set_metadata(proto: onnx.ModelProto, items: Mapping[str, str]) -> None:
    merged = {p.key: p.value for p in proto.metadata_props} | {k: str(v) for k, v in items.items()}
    del proto.metadata_props[:]
    for k, v in merged.items():
        proto.metadata_props.add(key=k, value=v)


def set_metadata(proto: onnx.ModelProto, **items: str) -> onnx.ModelProto:
    """Add or replace ``metadata_props`` (keys with dots: pass a dict via ``**{'posekit.x': ...}``)."""
    _set_metadata(proto, items)
    return proto


def _name_tensors_after_modules(proto: onnx.ModelProto) -> None:
    """Rename intermediate values after the torch module that produced them and drop the exporter's per-node
    metadata (stack traces: large, and they make checksums depend on the checkout path)."""
    graph = proto.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output} | {i.name for i in graph.initializer}
    rename: dict[str, str] = {}
    used: set[str] = set(keep)
    for node in graph.node:
        props = {p.key: p.value for p in node.metadata_props}
        scopes = _module_scopes(props.get("pkg.torch.onnx.name_scopes"))
        del node.metadata_props[:]
        if not scopes or len(node.output) != 1 or node.output[0] in keep:
            continue
        base = scopes[-1].removeprefix("net.net.").removeprefix("net.") if len(scopes) > 1 else scopes[-1]
        base = base or node.op_type.lower()
        name, k = base, 1
        while name in used:
            k += 1
            name = f"{base}_{k}"
        used.add(name)
        rename[node.output[0]] = name
    for node in graph.node:
        node.input[:] = [rename.get(n, n) for n in node.input]
        node.output[:] = [rename.get(n, n) for n in node.output]
    for vi in graph.value_info:
        vi.name = rename.get(vi.name, vi.name)


def _module_scopes(raw: str | None) -> list[str]:
    """The exporter's ``name_scopes`` list without its last entry (the aten op), e.g. ['net.backbone.block_1a']."""
    if not raw:
        return []
    try:
        scopes = [s for s in ast.literal_eval(raw) if s]
    except (ValueError, SyntaxError):
        return []
    return scopes[:-1] if len(scopes) > 1 else scopes


_CHATTY_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx", "torch.export", "torch._dynamo", "torch._export")


@contextlib.contextmanager
def _quiet():
    """The torch.export-based exporter prints progress lines to stdout and logs every optimizer pass at INFO
    (which Hydra's logging shows); keep the stage's output readable. Warnings and errors still show."""
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(_io.StringIO()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)  # torch-internal
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# ------------------------------------------------------------------------------------------------ parity
def output_errors(reference: tuple[np.ndarray, ...], other: tuple[np.ndarray, ...]) -> dict[str, float]:
    """Max absolute error per output and the max relative to each reference output's peak magnitude."""
    errs: dict[str, float] = {}
    for name, a, b in zip(OUTPUT_NAMES, reference, other):
        diff = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
        errs[f"{name}_max_abs"] = diff
        errs[f"{name}_max_rel"] = diff / max(float(np.abs(a).max()), 1e-12)
    errs["max_abs"] = max(v for k, v in errs.items() if k.endswith("_max_abs"))
    return errs


@torch.no_grad()
def torch_outputs(model: nn.Module, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``model`` (FinalStage) on an NCHW float32 batch -> (heatmaps, pafs) as numpy."""
    heat, paf = model.eval()(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
    return heat.numpy(), paf.numpy()


def check_parity(
    onnx_path: str | os.PathLike,
    model: nn.Module,
    inputs: Mapping[str, np.ndarray],
    atol: float,
    threads: int = 0,
) -> dict[str, dict[str, float]]:
    """Run the ONNX model (ONNX Runtime, CPU) and ``model`` (torch) on each named NCHW batch in ``inputs``.

    Returns ``{input kind: errors}``; raises :class:`ParityError` if any max abs error exceeds ``atol``.
    """
    from posekit.runtime.onnxruntime_backend import OrtBackend

    backend = OrtBackend(onnx_path, device="cpu", threads=threads)
    report, failures = {}, []
    for kind, batch in inputs.items():
        errs = output_errors(torch_outputs(model, batch), backend(batch))
        report[kind] = errs
        if errs["max_abs"] > atol:
            failures.append(f"{kind} inputs: heatmaps max |diff| {errs['heatmaps_max_abs']:.3g}, "
                            f"pafs max |diff| {errs['pafs_max_abs']:.3g}")
    if failures:
        raise ParityError(
            f"{Path(onnx_path).name}: ONNX Runtime and torch outputs differ beyond export.parity_atol={atol}: "
            + "; ".join(failures)
            + ". The export is wrong (please report it) or the tolerance is too tight for this model; "
            "rerun with a larger export.parity_atol only if the difference is acceptable."
        )
    return report
