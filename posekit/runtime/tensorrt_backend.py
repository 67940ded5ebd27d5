"""TensorRT backend: a serialized engine (``model.<H>.<W>.<precision>.engine``) behind the Backend interface.

TensorRT buffers are torch CUDA tensors: no pycuda context, no compile step. Inputs and outputs are bound by
name (``set_input_shape`` / ``set_tensor_address``, the TensorRT 10/11 I/O API) and the engine is enqueued with
``execute_async_v3`` on a dedicated torch stream (the default stream makes TensorRT add synchronizations).
``infer_cuda`` returns device tensors for GPU-side timing (the bench stage wraps it in CUDA events).

**Not run in this repository's CI** (no TensorRT there); written against the documented API.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from posekit.errors import UserError
from posekit.export.artifacts import precision_from_name
from posekit.runtime.backends import Backend


class TrtBackend(Backend):
    name = "tensorrt"

    def __init__(self, path: str | os.PathLike, *, device: str = "cuda"):
        import torch

        try:
            import tensorrt as trt
        except Exception as e:
            raise UserError(f"{path}: TensorRT engines need the tensorrt package ({e}); evaluate an ONNX "
                            "artifact instead, or install tensorrt on a GPU machine") from e
        if not torch.cuda.is_available():
            raise UserError(f"{path}: TensorRT engines need a CUDA GPU")
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"engine not found: {self.path}. Build it with stage=export export.engine=true.")
        self.torch, self.trt = torch, trt
        self.device = torch.device(device if str(device).startswith("cuda") else "cuda")
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(self.device)  # TensorRT deserializes onto the current device
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise UserError(f"{self.path}: TensorRT could not deserialize it (built by another TensorRT version "
                            "or GPU? engines are not portable: rebuild it on this machine)")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream(device=self.device)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(self.inputs) != 1:
            raise UserError(f"{self.path}: expected one input tensor, got {self.inputs}")
        self.input_name = self.inputs[0]
        shape = list(self.engine.get_tensor_shape(self.input_name))
        self.channels_last = shape[3] == 3 and shape[1] != 3
        h, w = (shape[1], shape[2]) if self.channels_last else (shape[2], shape[3])
        self.input_hw = (int(h), int(w)) if h > 0 and w > 0 else None
        self.batch = int(shape[0]) if shape[0] > 0 else None  # static batch (the predictor pads to it)
        self.max_batch = self.batch or self._max_batch()
        self.heat_name = _pick(self.outputs, "heatmaps", "heat")
        self.paf_name = _pick(self.outputs, "pafs", "paf")
        self.paf_upsample = _paf_factor(self.paf_name)  # deployable engines: nearest-upsampled PAFs
        self.meta: dict[str, Any] = {
            "path": str(self.path),
            "format": "tensorrt",
            "precision": precision_from_name(self.path.name) or "unknown",
            "tensorrt": trt.__version__,
            "device": torch.cuda.get_device_name(self.device),
            "input_shape": shape,
        }

    @classmethod
    def from_path(cls, path: str | os.PathLike, runtime_cfg: Any = None) -> "TrtBackend":
        """``runtime_cfg``: ``cfg.runtime`` (``device``: auto | cuda[:N]), or None for the current GPU."""
        device = str(getattr(runtime_cfg, "device", None) or "cuda") if runtime_cfg is not None else "cuda"
        return cls(path, device=device if device.startswith("cuda") else "cuda")

    # ------------------------------------------------------------------ inference
    def _dtype(self, name: str):
        t, trt = self.torch, self.trt
        table = {trt.DataType.FLOAT: t.float32, trt.DataType.HALF: t.float16, trt.DataType.INT8: t.int8,
                 trt.DataType.INT32: t.int32, trt.DataType.BOOL: t.bool}
        if hasattr(trt.DataType, "BF16"):
            table[trt.DataType.BF16] = t.bfloat16
        if hasattr(trt.DataType, "INT64"):
            table[trt.DataType.INT64] = t.int64
        return table[self.engine.get_tensor_dtype(name)]

    def infer_cuda(self, x: "Any") -> dict[str, Any]:
        """x: (N, 3, H, W) float tensor (any device) -> {output name: CUDA tensor}, enqueued on ``self.stream``.

        The returned tensors are ready once ``self.stream`` is synchronized (the caller's current stream is
        made to wait for it, so torch ops that follow are ordered correctly).
        """
        torch = self.torch
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.permute(0, 2, 3, 1)
        x = x.to(self._dtype(self.input_name)).contiguous()
        ctx = self.context
        ctx.set_input_shape(self.input_name, tuple(x.shape))
        ctx.set_tensor_address(self.input_name, x.data_ptr())
        outs = {}
        for name in self.outputs:
            outs[name] = torch.empty(tuple(ctx.get_tensor_shape(name)), dtype=self._dtype(name), device=self.device)
            ctx.set_tensor_address(name, outs[name].data_ptr())
        self.stream.wait_stream(torch.cuda.current_stream(self.device))  # x was produced on the current stream
        if not ctx.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError(f"{self.path.name}: TensorRT execution failed")
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        x.record_stream(self.stream)  # keep the input alive until TensorRT has read it
        return outs

    def run(self, batch: Any) -> tuple[Any, Any]:
        """batch (N, 3, H, W) float32 normalized (numpy or tensor) -> heatmaps (N, J+1, H/8, W/8) and PAFs
        (N, 2L, H/8, W/8) as float32 CUDA tensors (the predictor decodes on the GPU; no host copy)."""
        torch = self.torch
        x = torch.as_tensor(batch)
        if self.input_hw is not None and tuple(x.shape[2:]) != tuple(self.input_hw):
            raise ValueError(f"{self.path.name} takes {self.input_hw} inputs, got {tuple(x.shape[2:])}")
        if x.device.type == "cpu":
            x = x.pin_memory()
        n, step = len(x), self.max_batch
        if self.batch and n % step:  # static batch: pad the last chunk
            x = torch.cat([x, x.new_zeros((step - n % step, *x.shape[1:]))])
        heats, pafs = [], []
        for i in range(0, len(x), step):
            outs = self.infer_cuda(x[i : i + step])
            paf = outs[self.paf_name]
            if self.paf_upsample > 1:
                paf = paf[:, :, :: self.paf_upsample, :: self.paf_upsample]
            heats.append(outs[self.heat_name].float())
            pafs.append(paf.float().contiguous())
        return torch.cat(heats)[:n], torch.cat(pafs)[:n]

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """batch (N, 3, H, W) float32 normalized -> heatmaps (N, J+1, H/8, W/8), PAFs (N, 2L, H/8, W/8) numpy."""
        heat, paf = self.run(batch)
        return heat.cpu().numpy(), paf.cpu().numpy()

    def _max_batch(self) -> int:
        """A dynamic-batch engine's largest batch (optimization profile 0)."""
        _, _, max_shape = self.engine.get_tensor_profile_shape(self.input_name, 0)
        return int(max_shape[0])


def _pick(names: list[str], exact: str, part: str) -> str:
    found = next((n for n in names if n == exact), None) or next((n for n in names if part in n.lower()), None)
    if found is None:
        raise UserError(f"engine outputs {names}: cannot find the {exact} output")
    return found


def _paf_factor(name: str) -> int:
    """``pafs_x4 -> 4`` (posekit's deployable model names its upsampled PAF output this way)."""
    tail = name.rsplit("_x", 1)
    return int(tail[1]) if len(tail) == 2 and tail[1].isdigit() else 1
