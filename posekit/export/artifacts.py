"""Artifact file names (TAO's ``model.<H>.<W>.<precision>`` scheme) and their summary records.

Everything the export stage writes to ``<experiment>/export/<source>/`` is named here, so the bench, eval and
infer stages can find artifacts by pattern and a user can tell the resolution and precision from the name::

    model.288.384.fp32.onnx        FP32 ONNX (the base of everything else)
    model.288.384.fp16.onnx        FP16 ONNX (FP32 I/O by default)
    model.288.384.int8.qdq.onnx    INT8 Q/DQ ONNX for TensorRT (symmetric, zero point 0)
    model.288.384.int8.cpu.onnx    INT8 Q/DQ ONNX tuned for ONNX Runtime on CPU (U8S8)
    cal.288.384.bin                TensorRT calibration cache (TensorRT <= 10, DeepStream)
    ranges.288.384.json            the calibrated ranges (ONNX Runtime's TensorsData JSON; all of the above)
    model.288.384.int8.engine      TensorRT engine (export.engine=true, on a GPU machine with TensorRT)
    model.288.384.deploy.onnx      FP32 graph + folded post-processing (export.deploy=true)
    nvinfer.288.384.int8.txt       DeepStream Gst-nvinfer config for the deployable model

The calibration data (``calib.<H>.<W>.npz``, TAO's tensorfile) depends on the images and the resolution only,
so it lives in ``<experiment>/calibrate/`` and serves every exported model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from posekit import io

HW = tuple[int, int]


def _hw(input_hw: HW) -> str:
    h, w = (int(v) for v in input_hw)
    return f"{h}.{w}"


def model_name(input_hw: HW, precision: str, variant: str | None = None, suffix: str = "onnx") -> str:
    """``model.<H>.<W>.<precision>[.<variant>].<suffix>``, e.g. ``model.288.384.int8.qdq.onnx``."""
    parts = ["model", _hw(input_hw), precision] + ([variant] if variant else []) + [suffix]
    return ".".join(parts)


def engine_name(input_hw: HW, precision: str) -> str:
    """TAO's engine name: ``model.<H>.<W>.<precision>.engine``."""
    return model_name(input_hw, precision, suffix="engine")


def deploy_name(input_hw: HW) -> str:
    return f"model.{_hw(input_hw)}.deploy.onnx"


def nvinfer_config_name(input_hw: HW, precision: str) -> str:
    return f"nvinfer.{_hw(input_hw)}.{precision}.txt"


def calib_cache_name(input_hw: HW) -> str:
    """TensorRT calibration cache (TAO: ``cal.bin``)."""
    return f"cal.{_hw(input_hw)}.bin"


def calib_data_name(input_hw: HW) -> str:
    """Preprocessed calibration batches (TAO's tensorfile ``calibration.tensor``)."""
    return f"calib.{_hw(input_hw)}.npz"


def ranges_name(input_hw: HW) -> str:
    return f"ranges.{_hw(input_hw)}.json"


def precision_record_name(input_hw: HW, precision: str) -> str:
    """The record of one precision's export (``summary.json`` is the latest export's, whatever its precision)."""
    return f"summary.{_hw(input_hw)}.{precision}.json"


def recorded_artifacts(folder: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """``{file name: record}`` of the artifacts that the finished exports of ``folder`` recorded (every
    ``summary*.json``) and that are still the exact files recorded (sha256). A killed export writes no record,
    and what it rewrote no longer matches, so its files are not listed: bench and eval use only these."""
    folder = Path(folder)
    records: dict[str, dict[str, Any]] = {}
    for rec_path in sorted(folder.glob("summary*.json")):
        try:
            artifacts = io.read_json(rec_path).get("artifacts", {})
        except (OSError, ValueError, AttributeError):
            continue
        for rec in artifacts.values() if isinstance(artifacts, dict) else ():
            if isinstance(rec, dict) and rec.get("path") and rec.get("sha256"):
                records.setdefault(Path(rec["path"]).name, rec)
    complete = {}
    for name, rec in records.items():
        path = folder / name
        if path.is_file() and path.stat().st_size == rec.get("size_bytes") and io.sha256(path) == rec["sha256"]:
            complete[name] = rec
    return complete


def check_complete_export(path: str | os.PathLike, export_root: str | os.PathLike) -> None:
    """Raise :class:`~posekit.errors.UserError` if ``path`` lies in an export folder under ``export_root`` but no
    finished export recorded it (a killed export's leftover, or a file changed since)."""
    from posekit.errors import UserError

    path, export_root = Path(path).resolve(), Path(export_root).resolve()
    if path.parent.parent != export_root or path.name.startswith(("summary", "ranges.", "calib.")):
        return
    if path.name not in recorded_artifacts(path.parent):
        raise UserError(
            f"{path} is not part of a finished export (no summary*.json in {path.parent} records this file: the "
            "export was killed, or the file changed since). Re-run the export (python launch.py stage=export "
            "precision=...) and use what it lists."
        )


def artifact_record(
    path: str | os.PathLike, *, precision: str, format: str, input_shape: list[int] | None = None, **extra: Any
) -> dict[str, Any]:
    """One ``summary.json`` entry: path, precision, format, input shape, size on disk and sha256."""
    path = Path(path)
    return {
        "path": str(path),
        "precision": precision,
        "format": format,
        "input_shape": list(input_shape) if input_shape is not None else None,
        "size_bytes": path.stat().st_size,
        "sha256": io.sha256(path),
        **extra,
    }
