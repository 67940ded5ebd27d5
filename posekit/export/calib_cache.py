"""TensorRT's INT8 calibration cache (text format of ``IInt8EntropyCalibrator2``), written from ONNX Runtime ranges.

Format (TensorRT <= 10; TAO's ``cal.bin``, DeepStream's ``int8-calib-file``, ``trtexec --int8 --calib``)::

    TRT-100900-EntropyCalibration2
    input: 3c010204
    /net/backbone/block_1a/relu/Relu_output_0: 3d8e3b8a
    ...

One line per tensor: the ONNX value name (= TensorRT ITensor name) and the **scale** ``amax / 127`` as the
big-endian IEEE-754 float32 bit pattern, always 8 hex digits. The header's number is the TensorRT version the
cache is meant for: ``major*10000 + minor*100 + patch`` from TensorRT 10 on (``NV_TENSORRT_VERSION``), and
``major*1000 + minor*100 + patch`` before (TAO computes it this way for TensorRT 8).

Two bugs of public writers are avoided on purpose:
  * TAO and NVIDIA's qdq-translator write ``hex(...)[2:]``, which drops leading zeros (a 0.0 scale becomes
    ``"0"`` and breaks parsers that use ``bytes.fromhex``): we always write 8 digits.
  * a dead tensor (amax 0) would get scale 0; we clamp amax to ``eps``.
ONNX Runtime's own ``write_calibration_table`` is a different format (no header, decimal amax): not usable here.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from posekit import io
from posekit.errors import UserError

ALGORITHM = "EntropyCalibration2"
DEFAULT_TRT_VERSION = "10.9.0"  # DeepStream 8.0's TensorRT (x86); DeepStream 9.2 ships 10.16.0
INT8_MAX = 127.0


def trt_version_int(version: str) -> int:
    """``'10.9.0.34' -> 100900``, ``'8.6.1' -> 8601``: the number in the cache header for that TensorRT."""
    try:
        major, minor, patch = (int(p) for p in (str(version).split(".") + ["0", "0"])[:3])
    except ValueError as e:
        raise UserError(f"TensorRT version {version!r}: expected 'major.minor.patch', e.g. 10.9.0") from e
    return major * 10000 + minor * 100 + patch if major >= 10 else major * 1000 + minor * 100 + patch


def amax_from_ranges(ranges: Mapping[str, object]) -> dict[str, float]:
    """``{tensor: max(|low|, |high|)}`` from ONNX Runtime's ``TensorsData`` (or a mapping name -> (low, high))."""
    out = {}
    for name, td in ranges.items():
        low, high = td.range_value if hasattr(td, "range_value") else td
        out[name] = float(max(np.abs(np.asarray(low)).max(), np.abs(np.asarray(high)).max()))
    return out


def scales_from_amax(amax: Mapping[str, float], eps: float = 1e-8) -> dict[str, float]:
    """Symmetric INT8 scales ``max(amax, eps) / 127`` (TensorRT's convention and ORT's symmetric INT8)."""
    return {name: max(float(a), eps) / INT8_MAX for name, a in amax.items()}


def format_calibration_cache(scales: Mapping[str, float], trt_version: str = DEFAULT_TRT_VERSION) -> str:
    lines = [f"TRT-{trt_version_int(trt_version)}-{ALGORITHM}"]
    lines += [f"{name}: {struct.pack('>f', float(s)).hex()}" for name, s in scales.items()]
    return "\n".join(lines) + "\n"


def write_calibration_cache(
    path: str | os.PathLike,
    ranges: Mapping[str, object],
    trt_version: str = DEFAULT_TRT_VERSION,
    exclude: Iterable[str] = (),
    eps: float = 1e-8,
) -> Path:
    """Atomically write the cache for ``ranges`` (ORT ``TensorsData``); tensors in ``exclude`` are left out,
    so TensorRT keeps them in higher precision."""
    skip = set(exclude)
    amax = {k: v for k, v in amax_from_ranges(ranges).items() if k not in skip}
    return io.write_text(path, format_calibration_cache(scales_from_amax(amax, eps), trt_version))


def read_calibration_cache(path: str | os.PathLike) -> tuple[str, dict[str, float]]:
    """Parse a cache: ``(header, {tensor: scale})`` (the inverse of :func:`write_calibration_cache`)."""
    lines = Path(path).read_text().splitlines()
    if not lines or not lines[0].startswith("TRT-"):
        raise UserError(f"{path}: not a TensorRT calibration cache (first line must be 'TRT-<version>-<algorithm>')")
    scales = {}
    for line in filter(None, lines[1:]):
        # rsplit: tensor names may contain ': ' themselves (TAO's 'input_1:0')
        name, hexval = line.rsplit(": ", 1)
        scales[name] = struct.unpack(">f", bytes.fromhex(hexval))[0]
    return lines[0], scales
