"""Backends: one interface for every artifact (torch model/checkpoint, ONNX, TensorRT engine).

eval, infer and bench build a backend with :func:`load_backend` and never branch on its kind::

    backend = load_backend("experiments/x/train/model.pt", cfg.runtime)
    heat, paf = backend(batch)     # (N, 3, H, W) float32 -> (N, J+1, H/8, W/8), (N, 2L, H/8, W/8) numpy

``backend.run(batch)`` is the same call without the copy to numpy (a torch backend on a GPU returns device
tensors, so the decoder finds peaks on the GPU and only the peaks cross to the CPU).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from posekit.config import RuntimeConfig
from posekit.errors import MissingArtifactError, UserError

log = logging.getLogger(__name__)

# suffix -> "module:class"; imported only when used, so torch-only installs never import onnxruntime/tensorrt
BACKENDS: dict[str, str] = {
    ".pt": "posekit.runtime.backends:TorchBackend",
    ".pth": "posekit.runtime.backends:TorchBackend",
    ".ckpt": "posekit.runtime.backends:TorchBackend",
    ".onnx": "posekit.runtime.onnxruntime_backend:OrtBackend",
    ".engine": "posekit.runtime.tensorrt_backend:TrtBackend",
    ".plan": "posekit.runtime.tensorrt_backend:TrtBackend",
}


class Backend:
    """The runtime interface (docs/architecture.md).

    Attributes:
        name: "torch" | "onnxruntime" | "tensorrt".
        input_hw: the artifact's fixed (H, W), or None when any multiple of 8 works. A fixed input forces the
            predictor into ``strict`` mode and a single scale (as TAO does for engines).
        batch: the artifact's static batch size (the predictor pads short batches to it), or None for any.
        meta: artifact path, format, precision, device...
    """

    name: str = "backend"
    input_hw: tuple[int, int] | None = None
    batch: int | None = None
    meta: dict

    def run(self, batch: np.ndarray) -> tuple[Any, Any]:
        """Like ``__call__`` but may return torch tensors on the backend's device (no host copy)."""
        return self(batch)

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """batch (N, 3, H, W) float32 normalized NCHW -> final-stage heatmaps (N, J+1, H/8, W/8) and PAFs
        (N, 2L, H/8, W/8), float32 numpy."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(input_hw={self.input_hw}, meta={self.meta})"


class TorchBackend(Backend):
    """A BpNetLite (or any module returning per-stage lists, or a final ``(heatmaps, pafs)`` pair) in PyTorch.

    Args:
        model: the network. An in-memory training model is used as is: it is not moved, converted or cast
            (validation during training shares it); its train/eval mode is restored after each call.
        device: "auto" (the model's device; for a loaded file, CUDA when available) | "cpu" | "cuda[:N]".
        precision: "fp32" | "fp16" | "bf16"; reduced precisions run under ``torch.autocast``, outputs are fp32.
        channels_last: feed NHWC-strided inputs (faster convolutions on GPUs and recent CPUs).
        cuda_graphs: on CUDA, capture one graph per input shape and replay it (launch overhead gone); needs
            repeated shapes (strict mode). Ignored on CPU.
        input_hw: declare a fixed input (H, W) (forces strict mode in the predictor); None = any.
    """

    name = "torch"
    max_graphs = 4  # distinct input shapes captured; more shapes run eagerly

    def __init__(self, model: nn.Module, device: str = "auto", precision: str = "fp32", channels_last: bool = True,
                 cuda_graphs: bool = True, input_hw: tuple[int, int] | None = None, meta: dict | None = None):
        if precision not in ("fp32", "fp16", "bf16"):
            raise UserError(f"runtime.torch_precision={precision!r}: allowed values are fp32, fp16, bf16")
        self.model = model
        param = next(model.parameters(), None)
        model_device = param.device if param is not None else torch.device("cpu")
        want = model_device if device == "auto" else torch.device(device)
        self.device = model_device  # "cuda" means the model's CUDA device (cuda:0 ...)
        if want.type != model_device.type or (want.index is not None and want.index != model_device.index):
            raise UserError(
                f"TorchBackend: the model is on {model_device} but device={device!r}; move the model first or "
                "load it with TorchBackend.from_path(path, runtime_cfg)"
            )
        self.dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        self.channels_last = channels_last
        self.cuda_graphs = bool(cuda_graphs) and self.device.type == "cuda" and torch.cuda.is_available()
        self.input_hw = tuple(int(v) for v in input_hw) if input_hw is not None else None  # type: ignore[assignment]
        self.meta = {"format": "torch", "precision": precision, "device": str(self.device), **(meta or {})}
        self._graphs: dict[tuple[int, ...], tuple[torch.cuda.CUDAGraph, torch.Tensor, tuple]] = {}

    @classmethod
    def from_path(cls, path: str | os.PathLike, runtime_cfg: RuntimeConfig | None = None) -> "TorchBackend":
        """Load a posekit model file (``.pt``) or a Lightning checkpoint (``.ckpt``) for inference;
        ``runtime_cfg``: the ``runtime`` section (None: its defaults)."""
        from posekit.model import load_model

        runtime_cfg = RuntimeConfig() if runtime_cfg is None else runtime_cfg
        dev = str(runtime_cfg.device)
        device = ("cuda" if torch.cuda.is_available() else "cpu") if dev == "auto" else dev
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"runtime.device={dev!r} but CUDA is not available; use runtime.device=cpu or auto")
        try:
            model, info = load_model(path, map_location=device)
        except FileNotFoundError as e:
            raise MissingArtifactError(str(e)) from e
        except (ValueError, KeyError, RuntimeError) as e:
            raise UserError(f"cannot load model {path}: {e}") from e
        channels_last = bool(runtime_cfg.channels_last)
        model = model.to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        # CUDA graphs need repeated shapes: strict mode gives every image the same input
        strict = runtime_cfg.mode == "strict"
        graphs = bool(runtime_cfg.cuda_graphs) and strict
        return cls(
            model,
            device=device,
            precision=str(runtime_cfg.torch_precision),
            channels_last=channels_last,
            cuda_graphs=graphs,
            meta={"artifact": str(path), "arch": info["arch"], "model_meta": info["meta"]},
        )

    # ------------------------------------------------------------------ forward
    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # no autocast weight cache: it would be captured into CUDA graphs (and one forward gains nothing from it)
        ctx = (
            torch.autocast(self.device.type, dtype=self.dtype, cache_enabled=False)
            if self.dtype is not None
            else contextlib.nullcontext()
        )
        with ctx:
            heat, paf = self.model(x)
        if isinstance(heat, (list, tuple)):  # BpNetLite: per-stage lists; the last stage is the prediction
            heat, paf = heat[-1], paf[-1]
        return heat.float(), paf.float()

    def _graph_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = tuple(x.shape)
        if key not in self._graphs:
            if len(self._graphs) >= self.max_graphs:
                return self._forward(x)
            static_in = x.clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm-up on a side stream, as torch.cuda.graphs documents
                for _ in range(3):
                    self._forward(static_in)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._forward(static_in)
            self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = self._graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out[0].clone(), static_out[1].clone()

    def run(self, batch: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, H, W) float32 -> heatmaps, PAFs as float32 torch tensors on ``self.device``."""
        x = torch.as_tensor(batch).to(self.device, torch.float32, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                return self._graph_forward(x) if self.cuda_graphs else self._forward(x)
        finally:
            self.model.train(was_training)

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        heat, paf = self.run(batch)
        return heat.cpu().numpy(), paf.cpu().numpy()


def _check_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in BACKENDS:
        raise UserError(
            f"don't know how to run {path}: unsupported file type {suffix or '(none)'!r}. Supported: "
            f"{', '.join(sorted(BACKENDS))} (posekit model/checkpoint, ONNX model, TensorRT engine)."
        )
    return suffix


def backend_class(path: str | os.PathLike) -> type:
    """The backend class for an artifact's suffix (imports its module lazily)."""
    suffix = _check_suffix(Path(path))
    module_name, cls_name = BACKENDS[suffix].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):  # the backend module itself is missing
            raise UserError(f"no runtime backend for {suffix} files in this install ({module_name} missing)") from e
        raise UserError(
            f"running {suffix} artifacts needs the Python package {e.name!r}, which is not installed "
            f"(e.g. `pip install posekit[tensorrt]` for TensorRT engines)"
        ) from e
    return getattr(module, cls_name)


def load_backend(path: str | os.PathLike, runtime_cfg: RuntimeConfig | None = None) -> Backend:
    """Open any artifact as a :class:`Backend`: ``.pt``/``.ckpt`` -> torch, ``.onnx`` -> ONNX Runtime,
    ``.engine``/``.plan`` -> TensorRT. Missing files and unknown suffixes raise :class:`UserError`."""
    path = Path(os.path.expanduser(str(path)))
    _check_suffix(path)
    if not path.is_file():
        raise MissingArtifactError(
            f"artifact not found: {path}. Check the path, or run the stage that writes it (train/prune/retrain "
            "for models, export for ONNX/engines)."
        )
    cls = backend_class(path)
    backend = cls.from_path(path, runtime_cfg)
    backend.meta.setdefault("artifact", str(path))
    log.info("backend %s for %s", backend.name, path)
    return backend
