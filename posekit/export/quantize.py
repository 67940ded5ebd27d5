"""Post-training INT8 with ONNX Runtime: calibrate once, then write every INT8 artifact from the same ranges.

    ranges = calibrate(fp32.onnx, reader)                  # ORT calibrator (entropy | minmax | percentile)
    save_ranges(ranges, ranges.json)                       # ORT's own JSON (TensorsData)
    quantize_for_tensorrt(fp32.onnx, int8.qdq.onnx, ranges.json)   # S8S8 symmetric Q/DQ (TensorRT 10/11)
    quantize_for_cpu(fp32.onnx, int8.cpu.onnx, ranges.json)        # U8S8 Q/DQ (ONNX Runtime CPU)
    calib_cache.write_calibration_cache(cal.bin, ranges)            # TensorRT <= 10 implicit INT8

The ranges are collected **asymmetric** (per-tensor [low, high]); each consumer derives what it needs:
TensorRT and the Q/DQ model take ``amax = max(|low|, |high|)`` and scale ``amax / 127`` (zero point 0), the
CPU model keeps [low, high] (U8 activations with a zero point use the full range after a ReLU, where a
symmetric range wastes half of it).

TensorRT requirements for the Q/DQ model (deploy-and-tooling §1.2): symmetric INT8 activations and weights
(``ActivationSymmetric``/``WeightSymmetric``: zero point 0; ORT's symmetric INT8 range is [-127, 127]),
per-channel weight scales (axis 0 of Conv), **float** biases (``QuantizeBias=False``: TensorRT's parser rejects
ORT's INT32 bias + DequantizeLinear) and one Q/DQ pair per consumer (``DedicatedQDQPair``).

ONNX Runtime's entropy calibrator defaults to 128 histogram bins and 128 quantized bins, which leaves exactly
one candidate threshold (the full range: entropy degenerates to min-max). posekit passes
``precision.calibration.num_bins`` (default 2048, TensorRT's histogram size) so the KL search has candidates.
"""

from __future__ import annotations

import contextlib
import io as _io
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import onnx
from tqdm import tqdm

from posekit import io
from posekit.export.calibration import CalibrationReader

log = logging.getLogger(__name__)

METHODS = ("entropy", "minmax", "percentile")


class _DropPreprocessAdvice(logging.Filter):
    """ORT advises ``quant_pre_process`` on every call; posekit skips it on purpose: its graph optimizer renames
    and fuses tensors, and the TensorRT cache must use the FP32 ONNX's names (BN is already folded)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _quiet_ort():
    """ORT's calibrators ``print`` progress lines and its quantizer logs the advice above to the root logger."""
    root, flt = logging.getLogger(), _DropPreprocessAdvice()
    root.addFilter(flt)
    try:
        with contextlib.redirect_stdout(_io.StringIO()):
            yield
    finally:
        root.removeFilter(flt)


def _method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    table = {"entropy": CalibrationMethod.Entropy, "minmax": CalibrationMethod.MinMax,
             "percentile": CalibrationMethod.Percentile}
    return table[name]  # precision.calibration.method: checked by posekit.config.validate


def calibrate(
    fp32_onnx: str | os.PathLike,
    reader: CalibrationReader,
    method: str = "entropy",
    *,
    percentile: float = 99.99,
    num_bins: int = 2048,
    num_quantized_bins: int = 128,
    images_per_pass: int = 4,
):
    """Collect activation ranges of every float tensor of ``fp32_onnx`` over ``reader``'s batches.

    Returns ONNX Runtime's ``TensorsData`` (name -> ``TensorData`` with ``range_value = (low, high)``); tensor
    names are the ONNX value names of ``fp32_onnx`` itself (no pre-processing pass renames them), which is
    what TensorRT's calibration cache must be keyed by.

    ORT's calibrators keep every intermediate tensor of every batch they are given before building histograms
    (about 250 MB per image for the full model at 288x384), so the data is fed ``images_per_pass`` images at a
    time; the histograms and ranges accumulate across passes.
    """
    from onnxruntime.quantization import create_calibrator

    options: dict[str, Any] = {"symmetric": False}  # asymmetric ranges: see the module docstring
    if method in ("entropy", "percentile"):
        options["num_bins"] = int(num_bins)
    if method == "entropy":
        options["num_quantized_bins"] = int(num_quantized_bins)
    if method == "percentile":
        options["percentile"] = float(percentile)
    with tempfile.TemporaryDirectory(prefix="posekit-calib-") as tmp, _quiet_ort():
        calibrator = create_calibrator(
            Path(fp32_onnx),
            op_types_to_calibrate=None,  # every float tensor, the graph input included
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=_method(method),
            extra_options=options,
        )
        n = reader.num_samples
        step = max(reader.batch_size, images_per_pass // reader.batch_size * reader.batch_size)
        with tqdm(total=n, desc="calibration", unit="img", leave=False) as bar:
            for start in range(0, n, step):
                reader.set_range(start, start + step)
                calibrator.collect_data(reader)
                bar.update(min(step, n - start))
        reader.set_range(0, n)
        log.info("calibration: computing %s ranges%s", method,
                 " (one KL search per tensor: about a second each at 2048 bins)" if method == "entropy" else "")
        ranges = calibrator.compute_data()
        del calibrator  # its session holds the augmented model open inside ``tmp``
    return _in_graph_order(ranges, fp32_onnx)


def _in_graph_order(ranges: Any, fp32_onnx: str | os.PathLike) -> Any:
    """The same ranges ordered like the graph (input first, then each node's output), for readable files."""
    from onnxruntime.quantization import TensorsData

    model = onnx.load(str(fp32_onnx), load_external_data=False)
    order = [v.name for v in model.graph.input] + [o for n in model.graph.node for o in n.output]
    names = [n for n in order if n in ranges] + sorted(set(ranges.keys()) - set(order))
    return TensorsData(ranges.calibration_method, {n: ranges[n] for n in names})


def save_ranges(ranges: Any, path: str | os.PathLike) -> Path:
    """ORT's ``save_tensors_data`` JSON, written atomically (``quantize_static`` reads it back as its cache)."""
    from onnxruntime.quantization import save_tensors_data

    with io.atomic_path(path) as tmp:
        save_tensors_data(ranges, tmp)
    return Path(path)


def output_nodes(fp32_onnx: str | os.PathLike) -> list[str]:
    """Names of the nodes that produce the graph outputs (the final heatmap and PAF convolutions)."""
    model = onnx.load(str(fp32_onnx), load_external_data=False)
    outs = {o.name for o in model.graph.output}
    return [n.name for n in model.graph.node if set(n.output) & outs]


def _quantize(
    fp32_onnx: str | os.PathLike,
    out: str | os.PathLike,
    ranges_json: str | os.PathLike,
    method: str,
    *,
    activation_type,
    reduce_range: bool,
    extra_options: dict[str, Any],
    nodes_to_exclude: Iterable[str],
    precision_tag: str,
) -> Path:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from posekit.export.onnx_export import set_metadata

    with io.atomic_path(out) as tmp, _quiet_ort():
        quantize_static(
            str(fp32_onnx),
            str(tmp),
            calibration_data_reader=None,  # ranges come from the cache: one calibration serves all artifacts
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=reduce_range,
            activation_type=activation_type,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(nodes_to_exclude),
            calibrate_method=_method(method),
            calibration_cache_path=str(ranges_json),
            extra_options=extra_options,
        )
        model = onnx.load(str(tmp))
        set_metadata(model, **{"posekit.precision": "int8", "posekit.int8_variant": precision_tag,
                               "posekit.calibration": method})
        onnx.save_model(model, str(tmp))
    return Path(out)


def quantize_for_tensorrt(
    fp32_onnx: str | os.PathLike,
    out: str | os.PathLike,
    ranges_json: str | os.PathLike,
    method: str = "entropy",
    *,
    float_outputs: bool = True,
) -> Path:
    """The TensorRT-ready Q/DQ model: S8S8 symmetric, zero point 0, per-channel weights, float bias.

    ``float_outputs`` leaves the final heatmap/PAF convolutions unquantized (they are tiny 1x1 convs, and an
    INT8 heatmap quantizes the peaks the decoder thresholds at 0.1).
    """
    from onnxruntime.quantization import QuantType

    return _quantize(
        fp32_onnx, out, ranges_json, method,
        activation_type=QuantType.QInt8,
        reduce_range=False,
        extra_options={
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            "QuantizeBias": False,
            "DedicatedQDQPair": True,
        },
        nodes_to_exclude=output_nodes(fp32_onnx) if float_outputs else (),
        precision_tag="qdq-tensorrt",
    )


def resolve_reduce_range(setting: bool | None) -> bool:
    """``export.cpu_reduce_range``: None decides on this host (7-bit weights where int8 products saturate)."""
    from posekit.runtime.host import int8_products_saturate

    return int8_products_saturate() if setting is None else bool(setting)


def cpu_int8_variant(reduce_range: bool) -> str:
    """The CPU model's ``posekit.int8_variant`` tag: ``cpu-u8s7`` (7-bit weights) or ``cpu-u8s8``."""
    return "cpu-u8s7" if reduce_range else "cpu-u8s8"


def quantize_for_cpu(
    fp32_onnx: str | os.PathLike,
    out: str | os.PathLike,
    ranges_json: str | os.PathLike,
    method: str = "entropy",
    *,
    reduce_range: bool | None = None,
    float_outputs: bool = True,
) -> Path:
    """The ONNX Runtime CPU model: U8 activations (asymmetric, ReLU folded into the range) x S8 per-channel
    weights, the QDQ form ORT fuses into QLinearConv. ``reduce_range`` (7-bit weights) is for x86 CPUs
    without VNNI or AMX, where 8-bit products saturate (ORT's advice); None decides it on this host
    (:func:`~posekit.runtime.host.int8_products_saturate`). The model's metadata records the choice
    (``posekit.int8_variant``: ``cpu-u8s8`` or ``cpu-u8s7``), which :class:`OrtBackend` checks at load time.
    """
    from onnxruntime.quantization import QuantType

    reduce_range = resolve_reduce_range(reduce_range)
    return _quantize(
        fp32_onnx, out, ranges_json, method,
        activation_type=QuantType.QUInt8,
        reduce_range=reduce_range,
        extra_options={"WeightSymmetric": True},
        nodes_to_exclude=output_nodes(fp32_onnx) if float_outputs else (),
        precision_tag=cpu_int8_variant(reduce_range),
    )
