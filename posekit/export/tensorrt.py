"""TensorRT engines from posekit's ONNX artifacts, for TensorRT 10 and 11, and the equivalent ``trtexec`` lines.

**Not run in this repository's CI**: TensorRT is not installable there. The code follows the documented
TensorRT 10/11 Python API (docs/export.md lists what was and was not verified); ``tensorrt`` is imported lazily,
so everything else works without it.

Which ONNX feeds which engine (``plan_engine``):

    precision  TensorRT 10 (weak typing; DeepStream 8/9)              TensorRT 11 (always strongly typed)
    fp32       model.fp32.onnx                                        model.fp32.onnx
    fp16       model.fp32.onnx + BuilderFlag.FP16                     model.fp16.onnx (FP16 types in the graph)
    int8       model.int8.qdq.onnx + INT8|FP16 flags (explicit)       model.int8.qdq.onnx (explicit; the
               or, export.trt_int8_source=cache: model.fp32.onnx      unquantized rest runs in the ONNX's
               + INT8|FP16 + calibrator reading cal.bin (implicit,    FP32)
               deprecated since 10.1, TAO's path)

TensorRT 11 removed the calibrator classes, ``BuilderFlag.FP16/INT8`` and trtexec's ``--fp16/--int8/--calib``
(deploy-and-tooling §1.1): the precision lives in the ONNX.
"""

from __future__ import annotations

import logging
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from posekit import io
from posekit.errors import UserError

log = logging.getLogger(__name__)


class TensorRTUnavailable(UserError):
    """TensorRT is not importable or no CUDA GPU is present (the export prints trtexec commands instead)."""


def tensorrt_version() -> str | None:
    """The installed TensorRT's version string, or None when ``import tensorrt`` fails."""
    try:
        import tensorrt as trt  # noqa: PLC0415
    except Exception:  # ImportError, or a stub wheel that fails to load its libraries
        return None
    return str(trt.__version__)


def cuda_available() -> bool:
    try:
        import torch  # noqa: PLC0415

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def major(version: str | None) -> int | None:
    return int(str(version).split(".")[0]) if version else None


@dataclass(frozen=True)
class EnginePlan:
    """What to build: the ONNX to parse and how (flags only apply to TensorRT 10)."""

    precision: str
    onnx: Path
    fp16_flag: bool = False
    int8_flag: bool = False
    calib_cache: Path | None = None  # TensorRT 10 implicit INT8


def plan_engine(
    precision: str,
    trt_major: int,
    *,
    fp32_onnx: Path,
    fp16_onnx: Path | None = None,
    qdq_onnx: Path | None = None,
    calib_cache: Path | None = None,
    int8_source: str = "qdq",
) -> EnginePlan:
    """Choose the ONNX and builder flags for ``precision`` on TensorRT ``trt_major`` (see the module table)."""
    if precision == "fp32":
        return EnginePlan("fp32", fp32_onnx)
    if precision == "fp16":
        if trt_major >= 11:
            if fp16_onnx is None:
                raise UserError("TensorRT 11 builds FP16 only from an FP16 ONNX: export with precision=fp16")
            return EnginePlan("fp16", fp16_onnx)
        return EnginePlan("fp16", fp32_onnx, fp16_flag=True)
    if precision == "int8":
        if int8_source == "cache":
            if trt_major >= 11:
                raise UserError(
                    "export.trt_int8_source=cache needs TensorRT <= 10 (TensorRT 11 removed implicit INT8 and "
                    "calibration caches); use export.trt_int8_source=qdq"
                )
            if calib_cache is None:
                raise UserError("export.trt_int8_source=cache: no calibration cache (run with precision=int8)")
            return EnginePlan("int8", fp32_onnx, fp16_flag=True, int8_flag=True, calib_cache=calib_cache)
        if qdq_onnx is None:
            raise UserError("an INT8 engine needs the Q/DQ ONNX: export with precision=int8")
        return EnginePlan("int8", qdq_onnx, fp16_flag=trt_major < 11, int8_flag=trt_major < 11)
    raise UserError(f"precision {precision!r}: allowed values are fp32, fp16, int8")


def shape_flags(input_name: str, input_shape: list[int], dynamic_batch: bool, max_batch: int) -> list[str]:
    """``--shapes`` for a static model, ``--min/opt/maxShapes`` (batch 1 / max/2 / max) for a dynamic batch."""
    rest = "x".join(str(int(v)) for v in input_shape[1:])
    if not dynamic_batch:
        return [f"--shapes={input_name}:{int(input_shape[0])}x{rest}"]
    opt = max(1, max_batch // 2)
    return [f"--minShapes={input_name}:1x{rest}", f"--optShapes={input_name}:{opt}x{rest}",
            f"--maxShapes={input_name}:{max_batch}x{rest}"]


def trtexec_command(
    plan: EnginePlan,
    engine: Path,
    *,
    trt_major: int,
    input_name: str,
    input_shape: list[int],
    dynamic_batch: bool = False,
    max_batch: int = 1,
    workspace_gb: float = 2.0,
) -> str:
    """The ``trtexec`` line that builds the same engine as :func:`build_engine` with ``plan``."""
    args = ["trtexec", f"--onnx={plan.onnx}", f"--saveEngine={engine}",
            f"--memPoolSize=workspace:{int(workspace_gb * 1024)}M"]
    args += shape_flags(input_name, input_shape, dynamic_batch, max_batch)
    if trt_major < 11:
        args += ["--fp16"] if plan.fp16_flag else []
        args += ["--int8"] if plan.int8_flag else []
        args += [f"--calib={plan.calib_cache}"] if plan.calib_cache else []
    return shlex.join(args)


# ------------------------------------------------------------------------------------------------ build
def build_engine(
    plan: EnginePlan,
    engine: str | os.PathLike,
    *,
    input_name: str,
    input_shape: list[int],
    dynamic_batch: bool = False,
    max_batch: int = 1,
    workspace_gb: float = 2.0,
) -> Path:
    """Parse ``plan.onnx`` and write a serialized engine atomically. Raises :class:`TensorRTUnavailable`."""
    if not cuda_available():
        raise TensorRTUnavailable("no CUDA GPU: TensorRT engines are built on the machine that runs them")
    try:
        import tensorrt as trt  # noqa: PLC0415
    except Exception as e:
        raise TensorRTUnavailable(f"tensorrt is not importable ({e}); pip install 'tensorrt-cu12>=10,<11'") from e
    trt_major = major(trt.__version__)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 11 networks are always strongly typed (the flag is deprecated/ignored); 10 stays weakly typed so
    # the precision flags below apply. Never pass EXPLICIT_BATCH: a no-op in 10, gone in 11.
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(plan.onnx)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {plan.onnx}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    profile = builder.create_optimization_profile()
    rest = tuple(int(v) for v in input_shape[1:])
    if dynamic_batch:
        profile.set_shape(input_name, (1, *rest), (max(1, max_batch // 2), *rest), (max_batch, *rest))
    else:
        shape = (int(input_shape[0]), *rest)
        profile.set_shape(input_name, shape, shape, shape)
    config.add_optimization_profile(profile)
    if trt_major < 11:
        if plan.fp16_flag:
            config.set_flag(trt.BuilderFlag.FP16)
        if plan.int8_flag:
            config.set_flag(trt.BuilderFlag.INT8)
        if plan.calib_cache is not None:
            config.int8_calibrator = _cache_calibrator(trt, plan.calib_cache)
            config.set_calibration_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {plan.onnx} (see its log above)")
    return io.write_bytes(engine, bytes(serialized))


def _cache_calibrator(trt, cache: Path):
    """A TensorRT 10 ``IInt8EntropyCalibrator2`` that only reads ``cache`` (it has no data to calibrate with)."""

    class CacheCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names):  # no data: TensorRT must take every range from the cache
            return None

        def read_calibration_cache(self) -> bytes:
            return Path(cache).read_bytes()

        def write_calibration_cache(self, data) -> None:
            pass

    return CacheCalibrator()
