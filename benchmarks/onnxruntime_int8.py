"""ONNX Runtime CPU latency: FP32 vs the two INT8 exports (S8S8 Q/DQ for TensorRT, U8S8 for the CPU).

    python -m benchmarks.onnxruntime_int8                       # unpruned 3-stage model, 3 resolutions
    python -m benchmarks.onnxruntime_int8 --model experiments/x/train/model.pt \\
        --model experiments/x/retrain/pth-0.2/model.pt --threads 2 --out ort_int8.json
    python -m benchmarks.onnxruntime_int8 --kept docs/measurements/gpu_run3_pruned_channels.json \\
        --threads 2 --resolutions 288x384                 # unpruned vs the shapes of the GPU run's pruned models

For each model x resolution: export the FP32 ONNX, calibrate once (min-max: the method does not change speed),
write the INT8 variants, then time ``session.run`` (batch 1, warm-up, median of ``--iters``) for:

    fp32         model.fp32.onnx
    int8-s8s8    model.int8.qdq.onnx     (symmetric, the TensorRT artifact)
    int8-u8s8    model.int8.cpu.onnx     (posekit's CPU artifact)
    int8-u8s8-rr model.int8.cpu.onnx with reduce_range (7-bit weights: for CPUs without VNNI)

Speed-ups are against the FP32 latency of the first ``--model`` at the same resolution. Without ``--model``
the unpruned TAO-size network is used with random weights (latency does not depend on the values). Before
2026-12-07 those random networks had fresh BatchNorms (mean 0, variance 1, shift 0), which fold into bias-free
convolutions whose zero biases the exporter drops: figures measured before then timed graphs without them.
``--kept FILE`` adds, after the unpruned network, one network per pth of FILE (``{"pth": {pth: {layer: [filters,
kept]}}}``, e.g. the per-layer report of a prune run): the same architecture as that pruned model, random weights.
Calibration inputs: ``--calib-images`` (a folder or list file) or uniform noise in the normalized range.
Run it on an otherwise idle machine: the figures are only as quiet as the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from posekit.runtime.host import cpu_flags, cpu_name


def time_session(path: Path, x: np.ndarray, threads: int, warmup: int, iters: int) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    for _ in range(warmup):
        sess.run(None, {name: x})
    samples = []
    for _ in range(iters):
        t = time.perf_counter()
        sess.run(None, {name: x})
        samples.append((time.perf_counter() - t) * 1e3)
    return statistics.median(samples)


def build_net(model: str | dict | None):
    """A posekit model file, ``{layer: kept filters}`` (the default network pruned to that shape), or None. The
    random networks are the sweep's rebuilds (posekit/sweep/rebuild.py): random BatchNorm statistics and biases
    too, so the exported graph keeps the biases a trained network's has."""
    from posekit.model import BpNetLite, load_model
    from posekit.sweep.rebuild import build

    if isinstance(model, str):
        return load_model(model)[0]
    return build({"arch": BpNetLite(stages=3, width=1.0).arch, "convs": dict(model or {})})


def variants(model: str | dict | None, hw: tuple[int, int], calib: np.ndarray | None, folder: Path) -> dict[str, Path]:
    from posekit.export.calibration import CalibrationReader
    from posekit.export.onnx_export import export_onnx
    from posekit.export.quantize import calibrate, quantize_for_cpu, quantize_for_tensorrt, save_ranges
    from posekit.model import FinalStage

    net = build_net(model)
    fp32 = export_onnx(FinalStage(net).eval(), folder / "fp32.onnx", hw)
    data = calib if calib is not None else np.random.default_rng(0).uniform(-0.5, 0.5, (8, 3, *hw)).astype(np.float32)
    ranges = calibrate(fp32, CalibrationReader(data, "input", 1), "minmax")
    rj = save_ranges(ranges, folder / "ranges.json")
    return {
        "fp32": fp32,
        "int8-s8s8": quantize_for_tensorrt(fp32, folder / "qdq.onnx", rj, "minmax"),
        "int8-u8s8": quantize_for_cpu(fp32, folder / "cpu.onnx", rj, "minmax"),
        "int8-u8s8-rr": quantize_for_cpu(fp32, folder / "cpu_rr.onnx", rj, "minmax", reduce_range=True),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", help="posekit model file(s); default: unpruned, random weights")
    ap.add_argument("--resolutions", nargs="+", default=["224x320", "288x384", "320x448"])
    ap.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0 = ORT default)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--calib-images", help="folder or list file of calibration images")
    ap.add_argument("--kept", help="JSON of pruned shapes per pth (see above): benchmarked after the unpruned net")
    ap.add_argument("--out", help="write the rows as JSON here")
    args = ap.parse_args()

    from posekit.data.images import read_image_rgb
    from posekit.export.calibration import read_image_list
    from posekit.runtime.preprocess import preprocess

    # (label, what build_net takes): model files, else the unpruned network; then the --kept shapes
    models: list[tuple[str, str | dict | None]] = [
        (Path(m).parent.name + "/" + Path(m).name, m) for m in args.model or []
    ] or [("unpruned (random weights)", None)]
    if args.kept:
        for pth, layers in json.loads(Path(args.kept).read_text())["pth"].items():
            models.append((f"pruned-{pth} shape (random)", {name: int(k) for name, (_, k) in layers.items()}))
    rows = []
    print(f"CPU: {cpu_name()} ({os.cpu_count()} logical CPUs; {' '.join(cpu_flags()) or 'no VNNI/AMX'}), "
          f"ORT threads: {args.threads or 'default'}", flush=True)
    print(f"{'model':<28} {'input':>8} {'variant':<13} {'median ms':>10} {'speed-up':>9}", flush=True)
    for res in args.resolutions:
        hw = tuple(int(v) for v in res.lower().split("x"))
        calib = None
        if args.calib_images:
            calib = np.concatenate([preprocess(read_image_rgb(p), hw, "strict").batch
                                    for p in read_image_list(args.calib_images, 16)])
        x = np.random.default_rng(1).uniform(-0.5, 0.5, (1, 3, *hw)).astype(np.float32)
        baseline = None
        for label, model in models:
            with tempfile.TemporaryDirectory(prefix="posekit-ortbench-") as tmp:
                for variant, path in variants(model, hw, calib, Path(tmp)).items():
                    ms = time_session(path, x, args.threads, args.warmup, args.iters)
                    baseline = baseline or ms
                    rows.append({"model": label, "input": res, "variant": variant, "median_ms": round(ms, 2),
                                 "speedup_vs_first_fp32": round(baseline / ms, 2)})
                    print(f"{label:<28} {res:>8} {variant:<13} {ms:>10.2f} {baseline / ms:>8.2f}x", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"cpu": cpu_name(), "flags": cpu_flags(), "threads": args.threads,
                                              "iters": args.iters, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
