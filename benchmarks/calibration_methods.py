"""INT8 calibration methods compared on one FP32 ONNX: the table behind docs/export.md ("Why not entropy").

    python -m benchmarks.calibration_methods preset=cpu_demo            # the README main job's model
    python -m benchmarks.calibration_methods preset=cpu_demo resolution=288x384 --methods minmax entropy

Arguments are the Hydra overrides of the experiment (as given to ``launch.py``); the FP32 ONNX is that
experiment's latest export at the configured resolution (``stage=export`` first), or ``--onnx``. For each method:
calibrate on the experiment's calibration images (the export's own data file), write the ONNX Runtime CPU INT8
model, and report

* the largest |INT8 - FP32| of the heatmaps and PAFs on those images;
* how far the ranges clip the ReLU outputs: ``amax(method) / amax(minmax)`` over every ``*relu*`` tensor;
* COCO AP through the eval stage (``stage=eval eval.artifact=<that model>``: same data, mode and limits).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from posekit.export.quantize import METHODS


def relu_clipping(ranges, reference) -> tuple[float, float]:
    """(min, max) over ReLU output tensors of amax(ranges) / amax(reference)."""
    from posekit.export.calib_cache import amax_from_ranges

    amax, ref = amax_from_ranges(ranges), amax_from_ranges(reference)
    ratios = [amax[n] / ref[n] for n in amax if "relu" in n and ref.get(n, 0) > 0]
    return min(ratios), max(ratios)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the experiment, e.g. preset=cpu_demo")
    ap.add_argument("--onnx", help="the FP32 ONNX (default: the experiment's latest export at its resolution)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = ap.parse_args()

    from posekit.config import compose
    from posekit.experiment import Experiment
    from posekit.export.calibration import CalibrationReader
    from posekit.export.quantize import calibrate, quantize_for_cpu, save_ranges
    from posekit.runtime.onnxruntime_backend import OrtBackend
    from posekit.stages import eval as eval_stage
    from posekit.export.calibration_files import prepare_calibration

    cfg = compose([*args.overrides, "precision=int8"])
    exp = Experiment(cfg)
    h, w = (int(v) for v in cfg.model.input_shape)
    if args.onnx:
        fp32 = Path(args.onnx)
    else:
        found = sorted(exp.dir("export").glob(f"*/model.{h}.{w}.fp32.onnx"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise SystemExit(f"no model.{h}.{w}.fp32.onnx under {exp.dir('export')}: run stage=export first")
        fp32 = found[-1]
    data, _ = prepare_calibration(cfg, exp)
    batches = data.batches()
    cal = cfg.precision.calibration
    reference = OrtBackend(fp32)(batches[:8])
    out = Path(tempfile.mkdtemp(prefix="posekit-calib-methods-"))
    print(f"FP32 ONNX: {fp32}; {len(batches)} calibration images; INT8 models in {out}")

    ranges = {m: calibrate(fp32, CalibrationReader(batches, cfg.export.input_name, 1), m, percentile=cal.percentile,
                           num_bins=cal.num_bins, num_quantized_bins=cal.num_quantized_bins)
              for m in dict.fromkeys(["minmax", *args.methods])}
    rows = []
    for method in args.methods:
        ranges_json = save_ranges(ranges[method], out / f"{method}.json")
        model = quantize_for_cpu(fp32, out / f"{method}.int8.cpu.onnx", ranges_json, method)
        q = OrtBackend(model)(batches[:8])
        err = [float(np.abs(a - b).max()) for a, b in zip(q, reference)]
        lo, hi = relu_clipping(ranges[method], ranges["minmax"])
        metrics = eval_stage.run(compose([*args.overrides, f"eval.artifact={model}", f"eval.tag=calib-{method}"]))
        rows.append((method, err, lo, hi, metrics["AP"]))
    fp32_ap = eval_stage.run(compose([*args.overrides, f"eval.artifact={fp32}", "eval.tag=calib-fp32"]))["AP"]
    print(f"\nFP32 ONNX AP {fp32_ap:.4f}")
    print("| calibration | max abs error vs FP32 (heatmaps / PAFs) | ReLU amax / min-max amax | AP |")
    print("|---|---:|---:|---:|")
    for method, err, lo, hi, ap_ in rows:
        print(f"| `{method}` | {err[0]:.3f} / {err[1]:.3f} | {lo:.2f}-{hi:.2f} | {ap_:.4f} |")


if __name__ == "__main__":
    main()
