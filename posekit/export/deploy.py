"""The deployable model (TAO's ``--sdk_compatible_model``) and its DeepStream ``nvinfer`` config.

TAO folds one post-processing layer into the exported graph: the PAFs are upsampled x4 by a
``Conv2DTranspose`` whose kernel is the per-channel identity (nearest-neighbour upsampling), so the PAF output
has stride 2 while the heatmaps keep stride 8. posekit does the same with a ``Resize`` (nearest, asymmetric,
floor: each cell becomes an f x f block, bit-identical to TAO's identity deconvolution and cheaper), and can add
a **peak map**: the heatmaps with every non-maximum of its ``k x k`` neighbourhood zeroed (MaxPool + Equal +
Where), which turns a downstream parser's NMS into a threshold.

The graph edit appends nodes to an existing ONNX model and keeps every existing tensor name, so the TensorRT
calibration cache of the FP32 model applies to the deployable one unchanged (new tensors have no range and
run in higher precision).

Outputs::

    heatmaps   (N, J+1, H/8, W/8)
    pafs_x4    (N, 2L, 4H/8, 4W/8)     (f = export.paf_upsample)
    peaks      (N, J+1, H/8, W/8)      (export.peak_map)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from posekit.export.onnx_export import set_metadata

NETWORK_MODE = {"fp32": 0, "int8": 1, "fp16": 2}  # Gst-nvinfer: 0=FP32, 1=INT8, 2=FP16


def make_deployable(
    model: onnx.ModelProto, *, paf_upsample: int = 4, peak_map: bool = True, peak_window: int = 3
) -> onnx.ModelProto:
    """A copy of ``model`` (outputs ``heatmaps``, ``pafs``) with the post-processing folded in (see module doc)."""
    if paf_upsample < 1:
        raise ValueError(f"export.paf_upsample={paf_upsample}: must be >= 1")
    if peak_window < 1 or peak_window % 2 == 0:
        raise ValueError(f"peak window {peak_window}: must be odd (a centred k x k neighbourhood)")
    m = copy.deepcopy(model)
    g = m.graph
    outputs = {o.name: o for o in g.output}
    if set(outputs) != {"heatmaps", "pafs"}:
        raise ValueError(f"expected a posekit model with outputs heatmaps and pafs, got {sorted(outputs)}")
    heat_vi, paf_vi = outputs["heatmaps"], outputs["pafs"]
    dtype = heat_vi.type.tensor_type.elem_type
    new_outputs = [heat_vi]

    f = int(paf_upsample)
    paf_out = "pafs"
    if f > 1:
        paf_out = f"pafs_x{f}"
        g.initializer.append(numpy_helper.from_array(np.array([1, 1, f, f], np.float32), "deploy.paf_scales"))
        g.node.append(
            helper.make_node(
                "Resize", ["pafs", "", "deploy.paf_scales"], [paf_out], name="deploy/paf_upsample",
                mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor",
            )
        )
    new_outputs.append(_value_info(paf_out, paf_vi, spatial_scale=f))

    if peak_map:
        k = int(peak_window)
        zero = np.zeros((), helper.tensor_dtype_to_np_dtype(dtype))  # the heatmaps' dtype (FP16 graphs too)
        g.initializer.append(numpy_helper.from_array(zero, "deploy.zero"))
        g.node.extend(
            [
                helper.make_node("MaxPool", ["heatmaps"], ["deploy.heatmaps_max"], name="deploy/peak_maxpool",
                                 kernel_shape=[k, k], strides=[1, 1], pads=[k // 2] * 4),
                helper.make_node("Equal", ["heatmaps", "deploy.heatmaps_max"], ["deploy.is_peak"],
                                 name="deploy/peak_eq"),
                helper.make_node("Where", ["deploy.is_peak", "heatmaps", "deploy.zero"], ["peaks"],
                                 name="deploy/peaks"),
            ]
        )
        new_outputs.append(_value_info("peaks", heat_vi, spatial_scale=1))

    del g.output[:]
    g.output.extend(new_outputs)
    set_metadata(m, **{"posekit.paf_upsample": str(f), "posekit.peak_map": str(bool(peak_map)).lower(),
                       "posekit.deployable": "true"})
    onnx.checker.check_model(m)
    return m


def _value_info(name: str, like: onnx.ValueInfoProto, spatial_scale: int) -> onnx.ValueInfoProto:
    dims = []
    for i, d in enumerate(like.type.tensor_type.shape.dim):
        if d.HasField("dim_value"):
            dims.append(d.dim_value * (spatial_scale if i >= 2 else 1))
        else:
            dims.append(d.dim_param or None)
    return helper.make_tensor_value_info(name, like.type.tensor_type.elem_type, dims)


def nvinfer_config(
    onnx_file: str,
    input_hw: tuple[int, int],
    precision: str,
    output_names: Sequence[str],
    *,
    calib_file: str | None = None,
    channels_last: bool = False,
    batch_size: int = 1,
) -> str:
    """A DeepStream Gst-nvinfer ``[property]`` config for the deployable ONNX (paths relative to the config).

    Preprocessing: nvinfer computes ``net-scale-factor * (x - offsets)`` = (x - 128) / 256 = x/256 - 0.5 on RGB
    (``model-color-format=0``), letterboxed with ``maintain-aspect-ratio=1`` + ``symmetric-padding=1`` (centred,
    like posekit's strict mode; nvinfer pads with black where posekit and TAO pad with gray 128).
    ``network-type=100`` + ``output-tensor-meta=1`` hand the raw outputs to the application's parser.
    """
    if precision not in NETWORK_MODE:
        raise ValueError(f"precision {precision!r}: allowed values are {list(NETWORK_MODE)}")
    h, w = (int(v) for v in input_hw)
    lines = [
        "# DeepStream Gst-nvinfer config written by posekit (python launch.py stage=export export.deploy=true).",
        "# The application parses heatmaps / PAFs / peaks itself (network-type=100, output-tensor-meta=1).",
        "[property]",
        "gpu-id=0",
        f"onnx-file={onnx_file}",
        f"infer-dims=3;{h};{w}",
        f"network-input-order={1 if channels_last else 0}",
        f"batch-size={int(batch_size)}",
        "## 0=FP32, 1=INT8, 2=FP16",
        f"network-mode={NETWORK_MODE[precision]}",
    ]
    if precision == "int8":
        if not calib_file:
            raise ValueError("an INT8 nvinfer config needs the TensorRT calibration cache (int8-calib-file)")
        lines.append(f"int8-calib-file={calib_file}")
    lines += [
        f"output-blob-names={';'.join(output_names)}",
        "net-scale-factor=0.00390625",
        "offsets=128;128;128",
        "## 0=RGB 1=BGR 2=GRAY",
        "model-color-format=0",
        "maintain-aspect-ratio=1",
        "symmetric-padding=1",
        "network-type=100",
        "output-tensor-meta=1",
        "process-mode=1",
        "gie-unique-id=1",
    ]
    return "\n".join(lines) + "\n"
