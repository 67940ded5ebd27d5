"""``stage=export``: ONNX (FP32 / FP16 / INT8), TensorRT engines and the deployable model (docs/export.md).

    python launch.py stage=export                                  # FP32 ONNX of the experiment's latest model
    python launch.py stage=export precision=fp16
    python launch.py stage=export precision=int8                   # + Q/DQ, CPU INT8, cal.bin (one calibration)
    python launch.py stage=export precision=int8 export.engine=true export.deploy=true
    python launch.py stage=export export.model=path/to/model.pt export.data_format=channels_last

Writes ``<experiment>/export/<source>/`` (``<source>``: trained | pruned-<pth> | retrained-<pth> | the model
file's name) with the artifacts named in :mod:`posekit.export.artifacts` and a ``summary.json`` listing each
with its precision, format, input shape, size and sha256, the ONNX Runtime vs torch parity figures and the
FP16/INT8 output errors against FP32 on validation images.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from omegaconf import DictConfig

from posekit.errors import MissingArtifactError, UserError
from posekit.experiment import Experiment
from posekit.export import artifacts as names
from posekit.export.artifacts import WRITTEN, Artifact, artifact_record
from posekit.export.onnx_export import input_shape
from posekit.table import Column, text_table

log = logging.getLogger("posekit.export")

MAIN_METRIC = "parity_max_abs"  # ONNX Runtime vs torch, FP32 model (lower is better; fails above parity_atol)


# ------------------------------------------------------------------------------------------------ inputs
def model_to_export(cfg: DictConfig, exp: Experiment) -> tuple[Path, str]:
    """The PyTorch model to export and its model name (:meth:`~posekit.experiment.Experiment.model_name`; the
    export folder ``export/<model name>/``; ``tag`` in ``summary.json``'s ``source``)."""
    if not cfg.export.model:
        return exp.default_model("export")
    path = Path(os.path.expanduser(str(cfg.export.model))).resolve()
    if not path.is_file():
        raise MissingArtifactError(f"export.model not found: {path}. Check the path given on the command line.")
    return path, exp.model_name(path)


def validation_inputs(cfg: DictConfig, input_hw: tuple[int, int], count: int) -> np.ndarray | None:
    """Up to ``count`` val images, strict-preprocessed: (N, 3, H, W) float32; None (with a warning) if the
    dataset is unavailable."""
    from posekit.data.annotations import load_coco
    from posekit.data.images import CorruptImageError, read_image_rgb
    from posekit.data.paths import resolve_data
    from posekit.runtime.preprocess import preprocess

    if count <= 0:
        return None
    try:
        data = resolve_data(cfg, splits=("val",))
    except UserError as e:
        log.warning("no validation images for the parity check (%s); checking random inputs only", e)
        return None
    images = sorted(load_coco(data.val_ann).dataset["images"], key=lambda im: im["id"])
    batches = []
    for im in images:
        try:
            img = read_image_rgb(Path(data.val_images) / im["file_name"])
        except CorruptImageError:
            continue
        batches.append(preprocess(img, input_hw, "strict", str(cfg.runtime.interpolation)).batch)
        if len(batches) == count:
            break
    return np.concatenate(batches) if batches else None


def _load(path: Path):
    from posekit.model import FinalStage
    from posekit.model.io import load_model_for_stage

    model, info = load_model_for_stage(path, "export.model")
    return FinalStage(model).eval(), info


# ------------------------------------------------------------------------------------------------ steps
def _int8(cfg: DictConfig, exp: Experiment, out: Path, fp32: Path, hw: tuple[int, int], shape: list) -> dict[str, Any]:
    """Calibrate once (ORT) -> ranges.json, Q/DQ ONNX, CPU INT8 ONNX and the TensorRT calibration cache."""
    from posekit.export.calib_cache import DEFAULT_TRT_VERSION, write_calibration_cache
    from posekit.export.calibration import CalibrationReader
    from posekit.export.quantize import (
        calibrate, cpu_int8_variant, quantize_for_cpu, quantize_for_tensorrt, resolve_reduce_range, save_ranges,
    )
    from posekit.export.tensorrt import major, tensorrt_version
    from posekit.export.calibration_files import prepare_calibration

    ex, prec, cal = cfg.export, cfg.precision, cfg.precision.calibration
    data, records = prepare_calibration(cfg, exp)
    batch = int(cal.batch_size) if ex.dynamic_batch else 1
    reader = CalibrationReader(data.batches(), ex.input_name, batch, channels_last=ex.data_format == "channels_last")
    log.info("calibrating %s on %d images (%s)", fp32.name, len(data.images), cal.method)
    ranges = calibrate(fp32, reader, cal.method, percentile=cal.percentile, num_bins=cal.num_bins,
                       num_quantized_bins=cal.num_quantized_bins)
    ranges_path = save_ranges(ranges, out / names.ranges_name(hw))
    records["ranges"] = artifact_record(ranges_path, precision="int8", format="onnxruntime-tensors-data",
                                        method=cal.method, tensors=len(ranges.keys()))

    qdq = quantize_for_tensorrt(fp32, out / names.model_name(hw, "int8", "qdq"), ranges_path, cal.method,
                                float_outputs=prec.int8_float_outputs)
    records["int8_qdq"] = artifact_record(qdq, precision="int8", format="onnx-qdq-s8s8-tensorrt", input_shape=shape)
    if ex.cpu_int8:
        reduce_range = resolve_reduce_range(ex.cpu_reduce_range)
        cpu = quantize_for_cpu(fp32, out / names.model_name(hw, "int8", "cpu"), ranges_path, cal.method,
                               reduce_range=reduce_range, float_outputs=prec.int8_float_outputs)
        variant = cpu_int8_variant(reduce_range).removeprefix("cpu-")  # u8s7 / u8s8, as in the model's metadata
        records["int8_cpu"] = artifact_record(cpu, precision="int8", format=f"onnx-qdq-{variant}-onnxruntime",
                                              input_shape=shape, weight_bits=7 if reduce_range else 8)

    installed = tensorrt_version()
    trt_version = ex.trt_version or (installed if installed and major(installed) <= 10 else DEFAULT_TRT_VERSION)
    outputs = [o.name for o in onnx.load(str(fp32), load_external_data=False).graph.output]
    cache = write_calibration_cache(out / names.calib_cache_name(hw), ranges, trt_version,
                                    exclude=outputs if prec.int8_float_outputs else ())
    records["calib_cache"] = artifact_record(cache, precision="int8", format="tensorrt-calibration-cache",
                                             input_shape=shape, tensorrt=trt_version)
    return records


def _deploy(cfg: DictConfig, out: Path, fp32: Path, hw: tuple[int, int], shape: list, precision: str
            ) -> dict[str, Any]:
    from posekit import io
    from posekit.export.deploy import make_deployable, nvinfer_config
    from posekit.export.onnx_export import save_onnx

    ex = cfg.export
    model = make_deployable(onnx.load(str(fp32)), paf_upsample=ex.paf_upsample, peak_map=ex.peak_map,
                            peak_window=int(cfg.codec.decode.nms_window))
    path = save_onnx(model, out / names.deploy_name(hw))
    calib = names.calib_cache_name(hw) if precision == "int8" else None
    config = nvinfer_config(path.name, hw, precision, [o.name for o in model.graph.output], calib_file=calib,
                            channels_last=ex.data_format == "channels_last")
    cfg_path = io.write_text(out / names.nvinfer_config_name(hw, precision), config)
    return {
        "deploy": artifact_record(path, precision="fp32", format="onnx-deployable", input_shape=shape,
                                  outputs=[o.name for o in model.graph.output]),
        "nvinfer_config": artifact_record(cfg_path, precision=precision, format="deepstream-nvinfer-config"),
    }


def _engines(cfg: DictConfig, out: Path, hw: tuple[int, int], precision: str) -> tuple[dict, dict[str, str]]:
    """Build the TensorRT engine when asked and possible; always return the equivalent trtexec commands."""
    from posekit.export import tensorrt as trtx

    ex = cfg.export
    shape = input_shape(hw, ex.data_format)
    files = {"fp32_onnx": out / names.model_name(hw, "fp32"), "fp16_onnx": out / names.model_name(hw, "fp16"),
             "qdq_onnx": out / names.model_name(hw, "int8", "qdq"), "calib_cache": out / names.calib_cache_name(hw)}
    files = {k: (v if v.is_file() else None) for k, v in files.items()}
    engine = out / names.engine_name(hw, precision)
    common = dict(input_name=ex.input_name, input_shape=shape, dynamic_batch=ex.dynamic_batch,
                  max_batch=ex.max_batch, workspace_gb=ex.workspace_gb)
    commands = {}
    for trt_major in (10, 11):
        try:
            plan = trtx.plan_engine(precision, trt_major, int8_source=ex.trt_int8_source, **files)
        except UserError as e:
            commands[f"tensorrt{trt_major}"] = f"# not possible: {e}"
            continue
        commands[f"tensorrt{trt_major}"] = trtx.trtexec_command(plan, engine, trt_major=trt_major, **common)
    records = {}
    if ex.engine:
        version = trtx.tensorrt_version()
        try:
            if version is None:
                raise trtx.TensorRTUnavailable("tensorrt is not installed")
            plan = trtx.plan_engine(precision, trtx.major(version), int8_source=ex.trt_int8_source, **files)
            log.info("building TensorRT %s engine from %s", version, plan.onnx.name)
            trtx.build_engine(plan, engine, **common)
            records["engine"] = artifact_record(engine, precision=precision, format="tensorrt-engine",
                                                input_shape=shape, tensorrt=version, onnx=str(plan.onnx))
        except trtx.TensorRTUnavailable as e:
            print(f"export.engine=true: {e}; build the engine on the GPU machine with:", flush=True)
            for key, cmd in commands.items():
                print(f"  [{key}] {cmd}", flush=True)
    return records, commands


def _fidelity(reference: tuple[np.ndarray, np.ndarray], path: Path, batch: np.ndarray) -> dict[str, float]:
    """Output errors of the ONNX model at ``path`` against the FP32 outputs (same inputs)."""
    from posekit.export.onnx_export import output_errors
    from posekit.runtime.onnxruntime_backend import OrtBackend

    return output_errors(reference, OrtBackend(path, device="cpu")(batch))


def _size(size: int) -> str:
    return f"{size / 1e6:.2f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB"


ARTIFACT_COLUMNS = [Column("name", "artifact"), Column("precision", "precision"), Column("format", "format"),
                    Column("size_bytes", "size", _size, numeric=True)]


def format_artifacts(records: dict[str, dict]) -> str:
    """The export's files, one line each: name, precision, format, size."""
    return text_table([{**rec, "name": Path(rec["path"]).name} for rec in records.values()], ARTIFACT_COLUMNS)


# ------------------------------------------------------------------------------------------------ stage
def run(cfg: DictConfig) -> dict[str, Any]:
    from posekit.export.fp16 import convert_to_fp16
    from posekit.export.onnx_export import check_parity, export_onnx, torch_outputs

    ex = cfg.export
    precision = cfg.precision.name.value if hasattr(cfg.precision.name, "value") else str(cfg.precision.name)
    exp = Experiment(cfg)
    src, tag = model_to_export(cfg, exp)
    net, info = _load(src)
    hw = (int(cfg.model.input_shape[0]), int(cfg.model.input_shape[1]))
    out = exp.dir("export", tag)
    # this precision's record goes first and comes back last: until then its files are not a finished export
    (out / names.precision_record_name(hw, precision)).unlink(missing_ok=True)
    shape: list = input_shape(hw, ex.data_format)  # as recorded in summary.json; "batch" when dynamic
    if ex.dynamic_batch:
        shape[0] = "batch"
    log.info("exporting %s (%s) at %dx%d, %s, to %s", src, tag, *hw, precision, out)

    # FP32 ONNX + parity with torch on random and real inputs
    fp32 = export_onnx(net, out / names.model_name(hw, "fp32"), hw, data_format=ex.data_format, opset=ex.opset,
                       dynamic_batch=ex.dynamic_batch, input_name=ex.input_name,
                       metadata={"posekit.source": str(src), "posekit.keypoints": str(cfg.keypoints.name),
                                 "posekit.arch": str(info.get("arch"))})
    rng = np.random.default_rng(cfg.seed)
    inputs = {"random": rng.uniform(-0.5, 0.5, size=(1, 3, *hw)).astype(np.float32)}
    val = validation_inputs(cfg, hw, int(ex.parity_images))
    if val is not None:
        inputs["val"] = val
    parity = check_parity(fp32, net, inputs, float(ex.parity_atol), threads=int(cfg.runtime.ort_threads))
    records = {"fp32": artifact_record(fp32, precision="fp32", format="onnx", input_shape=shape,
                                       opset=int(ex.opset), data_format=ex.data_format)}

    # lower precisions, each compared with the FP32 model's outputs on the same (real when available) inputs
    probe = inputs.get("val", inputs["random"])
    reference = torch_outputs(net, probe)
    fidelity = {}
    if precision == "fp16":
        fp16 = convert_to_fp16(fp32, out / names.model_name(hw, "fp16"), keep_io_fp32=cfg.precision.keep_io_fp32)
        records["fp16"] = artifact_record(fp16, precision="fp16", format="onnx", input_shape=shape,
                                          io_dtype="float32" if cfg.precision.keep_io_fp32 else "float16")
        fidelity["fp16"] = _fidelity(reference, fp16, probe)
    elif precision == "int8":
        records.update(_int8(cfg, exp, out, fp32, hw, shape))
        for key in ("int8_qdq", "int8_cpu"):
            if key in records:
                fidelity[key] = _fidelity(reference, Path(records[key]["path"]), probe)

    if ex.deploy:
        records.update(_deploy(cfg, out, fp32, hw, shape, precision))
    engine_records, trtexec = _engines(cfg, out, hw, precision)
    records.update(engine_records)

    parity_max = max(r["max_abs"] for r in parity.values())
    metrics = {"parity_max_abs": parity_max, "artifacts": len(records),
               **{f"{k}_max_abs_vs_fp32": v["max_abs"] for k, v in fidelity.items()}}
    record = dict(artifacts=records, metrics=metrics, source={"path": str(src), "tag": tag}, precision=precision,
                  parity=parity, fidelity_vs_fp32=fidelity, trtexec=trtexec)
    exp.write_summary(out, "export", name=names.precision_record_name(hw, precision), **record)
    exp.write_summary(out, "export", **record)  # last: the export is complete (bench and eval use only these)
    print(format_artifacts(records), flush=True)
    print(f"parity (ONNX Runtime vs torch, FP32): max |diff| {parity_max:.2e} "
          f"(inputs: {', '.join(parity)}) -> {out}", flush=True)
    return {**metrics, WRITTEN: [Artifact.from_record(r, model=tag, source=src).to_record() for r in records.values()]}
