"""ONNX Runtime backend: any posekit ONNX artifact (FP32, FP16, INT8 Q/DQ, CPU INT8, deployable) behind the
:class:`~posekit.runtime.backends.Backend` interface.

CPU always; the CUDA execution provider when onnxruntime-gpu is installed and ``runtime.device`` allows it.
The batch the caller passes is always NCHW float32 normalized (docs/architecture.md); this backend adapts it
to the artifact: NHWC input (TAO layout, ``export.data_format=channels_last``) is transposed, FP16 I/O
(``precision.keep_io_fp32=false``) is cast, a fixed batch dimension (``batch``) is served in chunks (the last
one zero-padded), and a deployable
model's upsampled PAFs are strided back to the stride-8 grid (nearest upsampling, so this is exact).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from posekit.config import RuntimeConfig
from posekit.errors import UserError
from posekit.export.artifacts import precision_from_name
from posekit.runtime.backends import Backend

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
log = logging.getLogger(__name__)


def _warn_if_int8_saturates(path: Path) -> None:
    """An INT8 CPU model with 8-bit weights on an x86 CPU without VNNI/AMX: ORT's kernels can saturate there and
    give wrong outputs (docs/export.md), so say so and how to re-export."""
    from posekit.runtime.host import cpu_name, int8_products_saturate

    if int8_products_saturate():
        log.warning(
            "%s has 8-bit weights, and this CPU (%s) has no VNNI or AMX: ONNX Runtime's int8 kernels can saturate "
            "on it and give wrong heatmaps. Re-export it here (export.cpu_reduce_range=null decides on the "
            "exporting host) or with export.cpu_reduce_range=true (docs/export.md).", path.name, cpu_name())


class OrtBackend(Backend):
    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, *, device: str = "auto", threads: int = 0):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"ONNX model not found: {self.path}. Run `python launch.py stage=export` first.")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = int(threads)
        opts.log_severity_level = 3  # errors only: ORT warns about every Q/DQ node it cannot fuse on CUDA
        self.providers = self._providers(device, ort.get_available_providers())
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=self.providers)
        except Exception as e:
            if not type(e).__module__.startswith("onnxruntime"):
                raise
            reason = str(e).split("failed:", 1)[-1].strip().splitlines()[0][:160] if str(e) else type(e).__name__
            size = self.path.stat().st_size
            raise UserError(
                f"cannot load ONNX model {self.path} ({size} bytes): {reason} It is empty, truncated or not an ONNX "
                "model. Re-export it (python launch.py stage=export) or point eval.artifact / infer.artifact / "
                "bench.artifacts at a good file."
            ) from None
        self.device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"

        meta = self.session.get_modelmeta().custom_metadata_map
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = list(inp.shape)
        if len(shape) != 4:
            raise UserError(f"{self.path.name}: expected a 4-D image input, got {inp.name} with shape {shape}")
        self.channels_last = meta.get("posekit.data_format") == "channels_last" or (
            shape[3] == 3 and shape[1] != 3
        )
        h, w = (shape[1], shape[2]) if self.channels_last else (shape[2], shape[3])
        self.input_hw = (h, w) if isinstance(h, int) and isinstance(w, int) else None
        self.batch = shape[0] if isinstance(shape[0], int) else None
        self.input_dtype = _ORT_DTYPES.get(inp.type, np.float32)
        self.heat_name, self.paf_name = self._output_names([o.name for o in self.session.get_outputs()])
        self.paf_upsample = int(meta.get("posekit.paf_upsample", 1))
        if meta.get("posekit.int8_variant") == "cpu-u8s8" and self.device == "cpu":
            _warn_if_int8_saturates(self.path)
        self.meta: dict[str, Any] = {
            "path": str(self.path),
            "format": "onnx",
            "precision": meta.get("posekit.precision", precision_from_name(self.path.name) or "fp32"),
            "data_format": "channels_last" if self.channels_last else "channels_first",
            "providers": self.session.get_providers(),
            "input_shape": shape,
        }

    @classmethod
    def from_path(cls, path: str | os.PathLike, runtime_cfg: RuntimeConfig | None = None) -> "OrtBackend":
        """``runtime_cfg``: the ``runtime`` section (``device``, ``ort_threads``); None for its defaults."""
        runtime_cfg = RuntimeConfig() if runtime_cfg is None else runtime_cfg
        return cls(path, device=str(runtime_cfg.device), threads=int(runtime_cfg.ort_threads))

    # ------------------------------------------------------------------ inference
    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """batch (N, 3, H, W) float32 normalized -> heatmaps (N, J+1, H/8, W/8), PAFs (N, 2L, H/8, W/8)."""
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected an NCHW batch (N, 3, H, W), got shape {batch.shape}")
        if self.input_hw is not None and tuple(batch.shape[2:]) != tuple(self.input_hw):
            raise ValueError(
                f"{self.path.name} takes {self.input_hw[0]}x{self.input_hw[1]} inputs, got "
                f"{batch.shape[2]}x{batch.shape[3]} (use runtime.mode=strict, which pads to the network input)"
            )
        x = batch.transpose(0, 2, 3, 1) if self.channels_last else batch
        x = np.ascontiguousarray(x, dtype=self.input_dtype)
        n, step = len(x), self.batch or len(x)
        if n % step:  # a static batch: pad the last chunk
            x = np.concatenate([x, np.zeros((step - n % step, *x.shape[1:]), x.dtype)])
        outs = [
            self.session.run([self.heat_name, self.paf_name], {self.input_name: x[i : i + step]})
            for i in range(0, len(x), step)
        ]
        heat = (np.concatenate([o[0] for o in outs]) if len(outs) > 1 else outs[0][0])[:n]
        paf = (np.concatenate([o[1] for o in outs]) if len(outs) > 1 else outs[0][1])[:n]
        if self.paf_upsample > 1:  # deployable model: nearest x f upsampled PAFs -> every f-th cell is exact
            paf = paf[:, :, :: self.paf_upsample, :: self.paf_upsample]
        return heat.astype(np.float32, copy=False), np.ascontiguousarray(paf, dtype=np.float32)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _providers(device: str, available: list[str]) -> list[Any]:
        device = str(device)
        has_cuda = "CUDAExecutionProvider" in available
        if device == "cpu" or (device == "auto" and not has_cuda):
            return ["CPUExecutionProvider"]
        if not has_cuda:
            raise UserError(
                f"runtime.device={device} but this onnxruntime has no CUDA provider (available: {available}). "
                "Install onnxruntime-gpu, or use runtime.device=cpu."
            )
        device_id = int(device.split(":")[1]) if ":" in device else 0
        return [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]

    def _output_names(self, names: list[str]) -> tuple[str, str]:
        def pick(exact: tuple[str, ...], part: str) -> str | None:
            return next((n for n in names if n in exact), None) or next((n for n in names if part in n.lower()), None)

        heat, paf = pick(("heatmaps",), "heat"), pick(("pafs", "pafs_up"), "paf")
        if heat is None or paf is None:
            raise UserError(
                f"{self.path.name}: cannot tell the heatmap and PAF outputs apart among {names}; posekit exports "
                "name them 'heatmaps' and 'pafs'."
            )
        return heat, paf
