"""FP32 ONNX -> FP16 ONNX with ONNX Runtime's converter (``onnxruntime.transformers.float16``).

Why an FP16 *ONNX* and not only TensorRT's FP16 flag: TensorRT 11 removed the precision builder flags (every
network is strongly typed), so FP16 execution there means FP16 types in the ONNX itself. The same file runs on
ONNX Runtime's CUDA provider in half precision, and on TensorRT 10 (weakly or strongly typed).

``keep_io_fp32`` (``precision.keep_io_fp32``, default on) keeps the graph input and outputs FP32 with Cast nodes
at the boundary, so callers never handle half-precision arrays; TensorRT folds these casts into its first and
last layers.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from posekit.export.onnx_export import save_onnx, set_metadata


def convert_to_fp16(src: str | os.PathLike, dst: str | os.PathLike, keep_io_fp32: bool = True) -> Path:
    """Write the FP16 version of ONNX model ``src`` to ``dst`` (atomically); returns ``dst``."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(src))
    # every posekit op (Conv, Relu, Concat, Transpose, Resize, MaxPool) has FP16 kernels: nothing stays FP32
    fp16 = convert_float_to_float16(model, keep_io_types=keep_io_fp32, op_block_list=[])
    # the converter appends its boundary Casts at the end of the node list; ONNX (and TensorRT's parser) want
    # nodes in topological order
    OnnxModel(fp16).topological_sort(is_deterministic=True)
    set_metadata(fp16, **{"posekit.precision": "fp16", "posekit.io_dtype": "float32" if keep_io_fp32 else "float16"})
    onnx.checker.check_model(fp16)
    return save_onnx(fp16, dst)
