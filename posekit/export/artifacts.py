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

This module is the only one that builds or parses these names: everything else asks it (:func:`parse_model_name`,
:func:`is_runnable`, :func:`precision_from_name`) or passes :class:`Artifact` records around.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

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


DEPLOY_VARIANT = "deploy"  # model.<H>.<W>.deploy.onnx: DeepStream's graph, not run by posekit's backends


def deploy_name(input_hw: HW) -> str:
    return f"model.{_hw(input_hw)}.{DEPLOY_VARIANT}.onnx"


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
    return Artifact.from_file(path, precision=precision, format=format, input_shape=input_shape, **extra).to_record()


# ------------------------------------------------------------------------------------------------ parsing
# model.<H>.<W>.<precision>[.<variant>].<suffix>; the deploy graph parses with precision "deploy", variant None
_MODEL_NAME = re.compile(r"^model\.(\d+)\.(\d+)\.([a-z0-9]+)(?:\.([A-Za-z0-9_-]+))?\.(onnx|engine|plan)$")
RUNNABLE_SUFFIXES = (".onnx", ".engine", ".plan")
PRECISIONS = ("int8", "fp16", "fp32")


class ModelName(NamedTuple):
    """The parts of ``model.<H>.<W>.<precision>[.<variant>].<suffix>``."""

    input_hw: HW
    precision: str
    variant: str | None
    suffix: str


def parse_model_name(name: str) -> ModelName | None:
    """The parts of an exported model's file name (``model_name``'s inverse), None for any other name."""
    m = _MODEL_NAME.match(name)
    if m is None:
        return None
    h, w, precision, variant, suffix = m.groups()
    return ModelName((int(h), int(w)), precision, variant, suffix)


def is_deployable(name: str) -> bool:
    """Whether ``name`` is the deployable graph (post-processing folded in: DeepStream's, not posekit's)."""
    return f".{DEPLOY_VARIANT}." in name


def is_runnable(path: str | os.PathLike) -> bool:
    """Whether posekit's backends run the file at ``path``: ONNX or an engine, not the deployable graph."""
    name = Path(path).name
    return name.endswith(RUNNABLE_SUFFIXES) and not is_deployable(name)


def precision_from_name(name: str) -> str | None:
    """``int8`` | ``fp16`` | ``fp32`` as the file name says (``.<precision>.`` anywhere in it), else None."""
    return next((p for p in PRECISIONS if f".{p}." in name), None)


def file_format(path: str | os.PathLike) -> str:
    """What runs the file: ``onnx`` | ``engine`` (TensorRT engine or plan) | ``torch`` (a posekit .pt/.ckpt)."""
    suffix = Path(path).suffix
    return "onnx" if suffix == ".onnx" else "engine" if suffix in (".engine", ".plan") else "torch"


# ------------------------------------------------------------------------------------------------ the record
@dataclass
class Artifact:
    """A file a stage wrote and hands on to the next stage.

    Names (one meaning each):

    * ``path``: the file.
    * ``model``: the short name of the PyTorch model the file is or was exported from: ``trained``,
      ``pruned-<pth>``, ``retrained-<pth>`` or, for a model given by path, its file's name. The export stage writes
      to ``export/<model>/``.
    * ``source``: the path of that PyTorch model (the file itself for a .pt; None when unknown).
    * ``label`` (property): unique within an experiment: ``<model>`` for a PyTorch model,
      ``<model>/<file name>`` for an exported one, e.g. ``retrained-0.2/model.288.384.int8.cpu.onnx``.
    * ``slug`` (property): ``label`` made safe for file and folder names (``/`` -> ``.``).

    ``precision`` is the numeric precision: ``fp32`` | ``fp16`` | ``int8`` (a torch model: the torch backend's,
    e.g. ``bf16``). ``variant`` tells apart files of one precision: ``qdq`` (INT8 for TensorRT), ``cpu`` (INT8 for
    ONNX Runtime), else None. ``display_precision`` joins them (``int8.qdq``) for tables. ``format`` is what
    ``summary.json`` records (``onnx``, ``onnx-qdq-s8s8-tensorrt``, ``tensorrt-engine``, ``torch``...);
    :func:`file_format` is the coarse kind (onnx | engine | torch). ``input_shape`` is as recorded (layout-dependent,
    ``"batch"`` when dynamic); ``input_hw`` is (H, W). ``size_bytes`` and ``sha256`` identify the exact file a
    finished export wrote; ``extra`` keeps the other keys of its ``summary.json`` entry.
    """

    path: Path
    precision: str
    format: str
    variant: str | None = None
    input_shape: list | None = None
    model: str = ""
    source: Path | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_file(cls, path: str | os.PathLike, *, precision: str, format: str, input_shape: list | None = None,
                  model: str = "", source: str | os.PathLike | None = None, **extra: Any) -> Artifact:
        """The record of the file at ``path`` as written now (size and sha256 read from disk); the variant comes
        from its name."""
        path = Path(path)
        parsed = parse_model_name(path.name)
        return cls(path, precision, format, parsed.variant if parsed else None,
                   list(input_shape) if input_shape is not None else None, model,
                   Path(source) if source is not None else None, path.stat().st_size, io.sha256(path), extra)

    @classmethod
    def torch_model(cls, path: str | os.PathLike, model: str) -> Artifact:
        """The record of a PyTorch model file a stage wrote (train, prune, retrain), named ``model``."""
        return cls.from_file(path, precision="fp32", format="torch", model=model, source=path)

    @classmethod
    def from_record(cls, record: dict[str, Any], *, model: str = "", source: str | os.PathLike | None = None
                    ) -> Artifact:
        """The inverse of :meth:`to_record` (an entry of a ``summary.json``'s ``artifacts``, or of a stage's
        :data:`WRITTEN`); ``model`` and ``source`` apply where the record does not name them."""
        rec = dict(record)
        path = Path(rec.pop("path"))
        parsed = parse_model_name(path.name)
        model = rec.pop("model", None) or model
        source = rec.pop("source", None) or source
        return cls(path, rec.pop("precision"), rec.pop("format"), parsed.variant if parsed else None,
                   rec.pop("input_shape", None), model, Path(source) if source is not None else None,
                   rec.pop("size_bytes", None), rec.pop("sha256", None), rec)

    def to_record(self) -> dict[str, Any]:
        """The ``summary.json`` entry: path, precision, format, input shape, size on disk, sha256, the extra keys,
        and the model and source when known (the variant is in the name)."""
        named = {"model": self.model} if self.model else {}
        if self.source is not None:
            named["source"] = str(self.source)
        return {"path": str(self.path), "precision": self.precision, "format": self.format,
                "input_shape": self.input_shape, "size_bytes": self.size_bytes, "sha256": self.sha256, **self.extra,
                **named}

    @property
    def input_hw(self) -> HW | None:
        parsed = parse_model_name(self.path.name)
        if parsed is not None:
            return parsed.input_hw
        return tuple(int(v) for v in self.input_shape[-2:]) if self.input_shape else None  # type: ignore[return-value]

    @property
    def display_precision(self) -> str:
        return f"{self.precision}.{self.variant}" if self.variant else self.precision

    @property
    def runnable(self) -> bool:
        return is_runnable(self.path)

    @property
    def label(self) -> str:
        return self.model if self.source is not None and self.path == self.source else f"{self.model}/{self.path.name}"

    @property
    def slug(self) -> str:
        return slug(self.label)


WRITTEN = "written"  # the key under which a stage's result lists the artifacts it wrote (``to_record`` dicts)


def written(result: dict[str, Any], *, model: str = "", source: str | os.PathLike | None = None) -> list[Artifact]:
    """The artifacts a stage's result lists under :data:`WRITTEN` (the result as returned, or as a step record
    kept it), given ``model`` and ``source`` when the result does not say (an export's)."""
    records = result.get(WRITTEN, []) if isinstance(result, dict) else []
    return [Artifact.from_record(r, model=model, source=source) for r in records]


def slug(label: str) -> str:
    """``label`` safe for file and folder names: ``/`` -> ``.``, anything else odd -> ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label.replace("/", "."))
