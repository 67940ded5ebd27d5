"""Runtime: preprocess -> backend (torch / ONNX Runtime / TensorRT) -> decode, one interface for all artifacts."""

from posekit.runtime.backends import BACKENDS, Backend, TorchBackend, load_backend
from posekit.runtime.predictor import Predictor
from posekit.runtime.preprocess import Prepared, apply_affine, invert_affine, preprocess

__all__ = [
    "BACKENDS",
    "Backend",
    "Prepared",
    "Predictor",
    "TorchBackend",
    "apply_affine",
    "invert_affine",
    "load_backend",
    "preprocess",
]
