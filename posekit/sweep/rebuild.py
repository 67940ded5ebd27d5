"""Re-make a sweep point's network with random weights, to time it where its file is not.

Why: the accuracy-latency map times its ``cpu`` target on the 2-core VM, but the sweep runs on the GPU machine,
and the ONNX files that target runs (over 1 GB for the 108-point map, by the models' sizes) may not be copied
back. Nor can a sweep that needs more than one GPU lease keep its models between leases, while its GPU latencies
should all come from one card in one sitting. A network's latency depends on its graph (operators, tensor shapes,
channel counts, where the Q/DQ pairs sit and their types), not on its weight values: neither ONNX Runtime's CPU
kernels nor cuDNN's have value-dependent paths (no sparsity shortcut; trained weights are normal floats, as random
ones are). So when the sweep defers a target it records, per entry, what the network is (:func:`record`): its
``arch``, the output channels of every convolution of the pruned network, the model file's metadata, and for an
INT8 file its variant. ``python -m posekit.sweep.report <dir> --bench <target> --rebuild`` then builds that network
here with random weights (:func:`rebuild`): a PyTorch model file for the torch backend, else the export at the
file's input shape with the point's export settings, quantized for an INT8 entry with the same quantizer and
variant. The ordinary bench stage times it, the network alone (end-to-end time includes decoding, which depends on
the peaks the weights produce, so it is not timed on a rebuild). A sidecar ``<file>.rebuilt.json`` marks the file:
the report notes the rows, and a relaunch of the sweep does not take the file for the model or export it stands
in for (``posekit.chain.is_done``).

What differs from the original: the weight values, and for INT8 the ranges, taken min-max on random inputs
(ranges set the scales, not the graph). ``tests/test_sweeps.py`` checks at tiny scale that a rebuilt ONNX file has
the exported file's graph (the same operators in the same order, every initializer of the same shape and type)
and that a rebuilt model file has the model's parameter shapes.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from posekit.chain import rebuilt_sidecar
from posekit.export.artifacts import parse_model_name

VARIANT_KEY = "posekit.int8_variant"


def record(path: str | os.PathLike, model_path: str | os.PathLike) -> dict[str, Any]:
    """What :func:`rebuild` needs to re-make the file at ``path`` (a PyTorch model file, or an ONNX file exported
    from the model at ``model_path``): ``{"arch", "convs": {conv name: output channels}, "meta", "int8_variant"}``
    (the variant: INT8 files only)."""
    from torch import nn

    from posekit.model import load_model

    net, info = load_model(model_path)
    rec: dict[str, Any] = {
        "arch": dict(info["arch"]),
        "convs": {name: int(m.out_channels) for name, m in net.named_modules() if isinstance(m, nn.Conv2d)},
        "meta": {k: v for k, v in info["meta"].items() if isinstance(v, (str, int, float, bool, list))},
    }
    name = parse_model_name(Path(path).name)
    if name is not None and name.precision == "int8" and Path(path).suffix == ".onnx":  # the variant: INT8 only
        import onnx

        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        if VARIANT_KEY in meta:
            rec["int8_variant"] = meta[VARIANT_KEY]
    return rec


def rebuild(cfg: DictConfig, rec: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Re-make the file at ``path`` from ``rec`` (:func:`record`) with random weights, atomically, and mark it
    (:func:`posekit.chain.rebuilt_sidecar`); ``cfg`` is the point's config (export settings)."""
    from posekit import io

    path = Path(path)
    if path.suffix == ".pt":
        rebuild_model(rec, path)
    else:
        rebuild_onnx(cfg, rec, path)
    io.write_json(rebuilt_sidecar(path), {"weights": "random", "record": dict(rec),
                                  "why": "the original was not on this machine; latency depends on the graph, not "
                                         "on the weights (posekit/sweep/rebuild.py)"})
    return path


def rebuild_model(rec: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """A posekit model file of the network ``rec`` describes, with random weights (``load_model`` reads it)."""
    from posekit.model import BpNetLite, save_model
    from posekit.prune.history import history_for_kept

    history = history_for_kept(BpNetLite(**rec["arch"]), rec["convs"])
    return save_model(path, build(rec), pruning_history=history or None, **{**rec.get("meta", {}), "rebuilt": True})


def build(rec: Mapping[str, Any], seed: int = 0):
    """The network ``rec`` describes (:func:`record`), its weights random (seeded, so a rebuild repeats)."""
    import torch

    from posekit.model import BpNetLite
    from posekit.prune.history import apply_pruning_history, history_for_kept

    with torch.random.fork_rng():  # leave the caller's RNG stream alone
        torch.manual_seed(seed)
        net = BpNetLite(**rec["arch"])
        apply_pruning_history(net, history_for_kept(net, rec["convs"]))
        # No zeros where a trained network has none: a fresh BatchNorm (mean 0, var 1, shift 0) and a zero bias fold
        # into convolutions without a bias, and the exporter drops them, so the graph would lose its biases (and the
        # INT8 graph their quantization): not the trained network's graph.
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.1, 0.1)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
            elif isinstance(m, torch.nn.Conv2d) and m.bias is not None:
                m.bias.data.uniform_(-0.1, 0.1)
    return net.eval()


def rebuild_onnx(cfg: DictConfig, rec: Mapping[str, Any], path: str | os.PathLike, *, calib_images: int = 8) -> Path:
    """Write, atomically at ``path``, the exported file ``path`` names (``model.<H>.<W>.<precision>[.cpu].onnx``)
    for the network ``rec`` describes, with random weights and ``cfg``'s export settings (a point's config)."""
    from posekit.export.calibration import CalibrationReader
    from posekit.export.onnx_export import export_onnx
    from posekit.export.quantize import calibrate, quantize_for_cpu, save_ranges
    from posekit.model import FinalStage

    path = Path(path)
    name = parse_model_name(path.name)
    if name is None or name.precision not in ("fp32", "int8") or name.variant not in (None, "cpu"):
        raise ValueError(f"{path.name}: only the FP32 ONNX and the INT8 ONNX Runtime model are rebuilt")
    ex = cfg.export
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="posekit-rebuild-", dir=path.parent) as tmp:
        fp32 = export_onnx(FinalStage(build(rec)).eval(), Path(tmp) / "fp32.onnx", name.input_hw,
                           data_format=ex.data_format, opset=int(ex.opset), dynamic_batch=bool(ex.dynamic_batch),
                           input_name=ex.input_name)
        if name.precision == "fp32":
            os.replace(fp32, path)  # the temporary folder is beside it: one file system, an atomic rename
            return path
        data = np.random.default_rng(0).uniform(-0.5, 0.5, (calib_images, 3, *name.input_hw)).astype(np.float32)
        reader = CalibrationReader(data, ex.input_name, 1, channels_last=ex.data_format == "channels_last")
        ranges = save_ranges(calibrate(fp32, reader, "minmax"), Path(tmp) / "ranges.json")
        variant = str(rec.get("int8_variant", ""))
        if variant not in ("cpu-u8s8", "cpu-u8s7"):
            raise ValueError(f"{path.name}: its record has no INT8 CPU variant ({variant!r})")
        out = quantize_for_cpu(fp32, Path(tmp) / "int8.onnx", ranges, "minmax", reduce_range=variant == "cpu-u8s7",
                               float_outputs=bool(cfg.precision.int8_float_outputs))
        os.replace(out, path)
        return path
